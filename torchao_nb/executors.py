"""Where cells run: in this process, or in a supervised worker process that a crash or a hang cannot take down.

An executor runs one `Group` (the cells of one model and batch size) and reports each finished row; the sweep
loop neither knows nor cares where that happens, so another executor (a cluster) only needs these methods.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, Pipe
from pathlib import Path
from typing import Any, Callable, Protocol

from .errors import UserError, error_text
from .sandbox import Zygote, _loads, _signal_name, received
from .results import Row

OnRow = Callable[[Row], None]
OnPhase = Callable[["str | None", str], None]  # (mode, or None for the reference; what it is doing)
Sandbox = Callable[..., Any]  # Zygote.call: (fn, args, on_phase) -> fn's result, or Crashed
START_TIMEOUT_S = 300.0  # importing torch and torchao in a fresh process takes seconds; a stuck one gets this long
LOG_TAIL_LINES = 40
LOG_TAIL_CHARS = 6000


def _no_phase(mode: str | None, phase: str) -> None:
    return None


@dataclass(frozen=True)
class Group:
    """The cells of one (model, batch size): built once, then each mode runs on a fresh copy."""

    cfg: Any  # config.SweepConfig
    source: Any  # cell.ModelSource
    batch: int
    modes: tuple[str, ...]


class Executor(Protocol):
    def environment(self, cfg) -> dict: ...

    def run(self, group: Group, on_row: OnRow, on_phase: OnPhase = _no_phase,
            stop: threading.Event | None = None) -> None: ...

    def close(self) -> None: ...


# ---- in this process ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _copy_gbs(device: str, threads: int) -> float:
    """Measured once per process and setting: the memory roofline every row is judged against."""
    from . import compiling, measure

    from . import env

    with compiling.torch_threads(threads):
        return measure.copy_bandwidth_gbs(device, measure.copy_buffer_mib(env.cache_bytes(device)))


def device_environment(cfg) -> dict:
    """What the machine that runs the cells knows: versions, device, which modes run, copy bandwidth."""
    from . import env as envmod
    from . import modes

    info = envmod.device_info(cfg.device)
    out = envmod.environment(cfg.device, cfg.dtype, cfg.threads)
    out["modes"] = {n: {"description": modes.MODES[n].description,
                        "unsupported": modes.MODES[n].unsupported_reason(info, cfg.dtype)} for n in cfg.modes}
    out["copy_gbs"] = _copy_gbs(cfg.device, cfg.threads)
    out["collect_env"] = envmod.collect_env_text()
    return out


class InProcess:
    """Cells run right here: fastest to start, and the only way to debug a cell; a crash takes the caller along."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter, sandbox: Sandbox | None = None):
        self.clock = clock
        self.sandbox = sandbox  # where work that may crash runs (autoquant's candidates); None: right here

    def environment(self, cfg) -> dict:
        return device_environment(cfg)

    def run(self, group: Group, on_row: OnRow, on_phase: OnPhase = _no_phase,
            stop: threading.Event | None = None) -> None:
        import torch

        from . import cell, compiling, profiling
        from ._torchao import quiet_logs

        cfg = group.cfg
        if cfg.diagnose and cfg.device == "cuda":
            profiling.prepare_for_cuda_graphs()
        with compiling.torch_threads(cfg.threads), torch.no_grad(), quiet_logs():
            try:
                ref = cell.build_reference(cfg, group.source, group.batch, _copy_gbs(cfg.device, cfg.threads),
                                           lambda phase: on_phase(None, phase))
            except Exception as e:  # the unquantized model itself fails: every cell says so
                for mode in group.modes:
                    on_row(cell.failed_reference_row(cfg, group.source, mode, group.batch, error_text(e)))
                return
            try:
                # One compiler state for the group: its baseline compiles once, for all its cells.
                with compiling.maybe_compiled(ref.compile):
                    for mode in group.modes:
                        if stop is not None and stop.is_set():
                            return
                        on_row(cell.run_cell(cfg, ref, mode, group.batch, self.clock,
                                             functools.partial(on_phase, mode), self.sandbox))
            finally:
                del ref
                cell.free_memory(cfg.device)

    def close(self) -> None:
        return None


# ---- in a worker process ---------------------------------------------------------------------------------

class _Dead(Exception):
    """The worker process is gone (crashed, killed, or closed its end)."""


class Worker:
    """One worker process: `python -m torchao_nb._worker FD`, messages over a socket pair, output to a log file."""

    def __init__(self):
        ours, theirs = Pipe(duplex=True)
        self.log_path = Path(tempfile.mkstemp(prefix="torchao_nb-worker-", suffix=".log")[1])
        env = dict(os.environ)
        # The worker imports this same torchao_nb, and whatever the caller could import (a user's modules).
        paths = [str(Path(__file__).resolve().parent.parent)] + [p for p in sys.path if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "torchao_nb._worker", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=os.getcwd())
        theirs.close()
        self.conn: Connection = ours
        self.ready = False

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, message: Any) -> None:
        import cloudpickle

        try:
            self.conn.send_bytes(cloudpickle.dumps(message))
        except OSError as e:
            raise _Dead() from e

    def recv(self, timeout: float) -> Any | None:
        """The next message, or None when none came within `timeout`; _Dead when the worker is gone."""
        import pickle

        try:
            if not self.conn.poll(timeout):
                if not self.alive:
                    raise _Dead()
                return None
            return pickle.loads(self.conn.recv_bytes())
        except (EOFError, OSError) as e:
            raise _Dead() from e

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready:
            try:
                message = self.recv(0.5)
            except _Dead:
                raise RuntimeError(f"the worker process could not start ({self.death()}):\n{self.log_tail()}\n"
                                   "Run with isolate=False (--in-process) to run the cells in this process.") from None
            if message is not None and message[0] == "ready":
                self.ready = True
            elif time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the worker process did not start within {timeout:.0f} s:\n{self.log_tail()}")

    def death(self) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        return _signal_name(self.proc.returncode) if self.proc.returncode is not None else "closed its connection"

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.conn.close()
        with contextlib.suppress(OSError):
            self.log_path.unlink()

    def log_size(self) -> int:
        with contextlib.suppress(OSError):
            return self.log_path.stat().st_size
        return 0

    def log_tail(self, since: int = 0) -> str:
        """The end of what the worker printed since `since`; from the crash report on, when there is one."""
        with contextlib.suppress(OSError):
            with open(self.log_path, "rb") as f:
                f.seek(since)
                text = f.read().decode("utf-8", "replace")
            crash = text.rfind("Fatal Python error")
            lines = text[crash:].splitlines() if crash >= 0 else text.strip().splitlines()
            return "\n".join(lines[:LOG_TAIL_LINES] if crash >= 0 else lines[-LOG_TAIL_LINES:])[:LOG_TAIL_CHARS]
        return ""


_IDLE: list[Worker] = []  # started workers waiting for a sweep: the next sweep skips the start-up


def prestart() -> None:
    """Start a worker now (it imports torch and torchao meanwhile), for the next sweep of this process."""
    if not any(w.alive for w in _IDLE):
        _IDLE.append(Worker())


def _take_worker() -> Worker:
    while _IDLE:
        w = _IDLE.pop()
        if w.alive:
            return w
        w.kill()
    return Worker()


@atexit.register
def _stop_idle_workers() -> None:
    while _IDLE:
        _IDLE.pop().kill()


REFERENCE_TIMEOUT_S = 600.0  # building a model and its unquantized output, before any cell


class WorkerExecutor:
    """Cells run in a worker process; a cell that kills it or outlives `timeout_s` becomes an error row,
    a new worker starts, and the group goes on with its other modes."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.worker: Worker | None = None

    def _ready_worker(self) -> Worker:
        if self.worker is None or not self.worker.alive:
            if self.worker is not None:
                self.worker.kill()
            self.worker = _take_worker()
        self.worker.wait_ready()
        return self.worker

    def _discard(self) -> None:
        if self.worker is not None:
            self.worker.kill()
            self.worker = None

    def environment(self, cfg) -> dict:
        worker = self._ready_worker()
        worker.send(("environment", cfg))
        while True:
            try:
                message = worker.recv(1.0)
            except _Dead:
                raise RuntimeError(f"the worker process died ({worker.death()}) while reading the machine:\n"
                                   f"{worker.log_tail()}") from None
            if message is not None and message[0] == "environment":
                return message[1]
            if message is not None and message[0] == "failed":
                raise RuntimeError(f"the worker could not read the machine: {message[1]}")

    def run(self, group: Group, on_row: OnRow, on_phase: OnPhase = _no_phase,
            stop: threading.Event | None = None) -> None:
        from . import cell

        remaining = list(group.modes)
        while remaining:
            if stop is not None and stop.is_set():
                return
            worker = self._ready_worker()
            worker.send(("run", dataclasses.replace(group, modes=tuple(remaining))))
            mode, phase, started, log_from = None, "starting", time.monotonic(), worker.log_size()
            while True:
                stopping = stop is not None and stop.is_set()
                try:
                    message = worker.recv(0.0 if stopping else 0.2)
                except _Dead:
                    failure = f"worker crashed ({worker.death()}) while {phase}"
                    break
                if message is None:
                    if stopping:  # rows already sent are kept; the cell in progress leaves none
                        self._discard()
                        return
                    # The time limit is a cell's: building the model (a new worker rebuilds it after a crash)
                    # is not a cell, and gets at least REFERENCE_TIMEOUT_S.
                    limit = self.timeout_s if mode is not None else max(self.timeout_s, REFERENCE_TIMEOUT_S)
                    if time.monotonic() - started > limit:
                        what = "the cell time limit" if mode is not None else "the model's time limit"
                        failure = f"timed out after {limit:.0f} s while {phase} ({what})"
                        break
                    continue
                kind = message[0]
                if kind == "phase":
                    if message[1] != mode:  # the worker says where its log stood: we may read this message late
                        mode, started, log_from = message[1], time.monotonic(), message[3]
                    phase = message[2] + (f" {mode}" if mode else "")
                    on_phase(message[1], message[2])
                elif kind == "row":
                    row = _with_sending_help(Row.from_dict(message[1]))
                    remaining.remove(row.mode)
                    mode, phase, started = None, "between cells", time.monotonic()
                    on_row(row)
                elif kind == "done":
                    return
                elif kind == "failed":  # the worker's own machinery failed (e.g. the module could not be loaded)
                    for m in remaining:
                        on_row(cell.error_row(group.cfg, group.source, m, group.batch,
                                              f"the worker process could not load this cell ({message[1]}): "
                                              f"{SENDING_HELP}"))
                    return
            # The worker is gone or stuck: this cell (or the reference, and with it the group) is an error row.
            log = worker.log_tail(log_from)
            self._discard()
            extra = {"worker_log": log} if log else {}
            if mode is None:
                for m in remaining:
                    on_row(cell.failed_reference_row(group.cfg, group.source, m, group.batch, failure, extra))
                return
            remaining.remove(mode)
            on_row(cell.error_row(group.cfg, group.source, mode, group.batch, failure, extra))

    def close(self) -> None:
        """An idle, healthy worker waits for the next sweep of this process; anything else is stopped."""
        if self.worker is not None and self.worker.alive and self.worker.ready:
            _IDLE.append(self.worker)
        elif self.worker is not None:
            self.worker.kill()
        self.worker = None


def for_config(cfg, clock: Callable[[], float] | None = None) -> Executor:
    if not cfg.isolate:
        return InProcess(clock or time.perf_counter)
    if clock is not None:
        raise UserError("clock= measures with a clock of this process: pass isolate=False with it.")
    return WorkerExecutor(cfg.cell_timeout_s)


SENDING_HELP = ("this is how the model was sent to the worker process, not torch or torchao: define its class in an "
                "importable file, or run its cells in this process with isolate=False (--in-process)")


def _with_sending_help(row: Row) -> Row:
    """An error that names the worker's `__main__` comes from sending the model there: the row says how around it."""
    if row.status == "error" and "'__main__'" in row.reason and SENDING_HELP not in row.reason:
        return dataclasses.replace(row, reason=f"{row.reason} ({SENDING_HELP})")
    return row


def _unsendable_part(module) -> str:
    """The first attribute of `module` (or of a submodule) that can't be pickled, as `path (type)`; "" if none found."""
    import cloudpickle

    for prefix, sub in module.named_modules():
        for name, value in vars(sub).items():
            if name in ("_parameters", "_buffers", "_modules"):
                continue
            try:
                cloudpickle.dumps(value)
            except Exception:
                return f"{prefix + '.' if prefix else ''}{name} ({type(value).__name__})"
    return ""


def check_copyable(sources) -> None:
    """Each cell quantizes a copy of a user's module: one that can't be deep-copied can't be measured at all,
    in a worker or not. A UserError naming the attribute, never a promised fallback that fails in every cell."""
    import copy

    for source in sources:
        if source.module is None:
            continue
        try:
            copy.deepcopy(source.module)
        except Exception as e:
            part = _unsendable_part(source.module)
            raise UserError(
                f"{source.name} can't be copied ({error_text(e, 120)}), and each cell quantizes a copy: "
                f"move {part or 'that attribute'} out of the module (keep it outside, or make it in forward)."
            ) from None


def check_sendable(sources) -> str | None:
    """Why the sources can't be sent to a worker process, or None when they can."""
    import cloudpickle

    for source in sources:
        if source.module is None:
            continue
        try:
            cloudpickle.dumps(source)
        except Exception as e:
            part = _unsendable_part(source.module)
            return f"{source.name} can't be sent to a worker process ({error_text(e, 200)}; {part or 'an attribute'})"
    return None


# ---- the worker's side -------------------------------------------------------------------------------

def _watch_parent(parent: int) -> None:
    """The worker ends when the process that started it is gone, even in the middle of a cell."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(3)


def _log_offset() -> int:
    """How much the worker has written to its log (stderr is the log file), so a crash report is found from there."""
    try:
        return os.fstat(2).st_size
    except OSError:
        return 0


def serve(fd: int) -> None:
    """The worker process's main loop: run what the supervisor sends, report rows and phases, until told to exit."""
    import faulthandler
    import types

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle: it stops us
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    # This process was started as `python -m torchao_nb._worker`; from here on `__main__` is the caller's (see
    # _CallersMain). The running loop keeps its own globals, and nothing of torchao_nb looks `__main__` up.
    sys.modules["__main__"] = types.ModuleType("__main__", "the caller's __main__, as its functions sent here use it")

    import cloudpickle

    from . import autoquant  # noqa: F401  (registers the autoquant mode)

    zygote = Zygote()  # now, while no torch work has run in this process (see Zygote)

    faulthandler.enable()  # a crash leaves the Python stack in the log the supervisor attaches to the row
    conn = Connection(fd)
    send = lambda message: conn.send_bytes(cloudpickle.dumps(message))  # noqa: E731
    executor = InProcess(sandbox=zygote.call)
    send(("ready", os.getpid()))
    for data in received(conn):
        try:
            message = _loads(data)
            if message[0] == "environment":
                send(("environment", executor.environment(message[1])))
            elif message[0] == "run":
                executor.run(message[1], lambda row: send(("row", row.to_dict())),
                             lambda mode, phase: send(("phase", mode, phase, _log_offset())))
                send(("done",))
            elif message[0] == "exit":
                return
        except Exception as e:  # e.g. a user's module whose class this process can't import
            send(("failed", error_text(e)))

