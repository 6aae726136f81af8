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
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, Pipe
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .errors import UserError, error_text
from .sandbox import _signal_name
from .sending import SENDING_HELP, with_sending_help
from .results import Row

if TYPE_CHECKING:
    from .config import SweepConfig
    from .reference import ModelSource

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

    cfg: SweepConfig
    source: ModelSource
    batch: int
    modes: tuple[str, ...]
    together: bool = True  # its modes timed in one set of rounds (off: each alone, as after a crash while timing)


class Executor(Protocol):
    def environment(self, cfg: SweepConfig) -> dict: ...

    def run(self, group: Group, on_row: OnRow, on_phase: OnPhase = _no_phase,
            stop: threading.Event | None = None) -> None: ...

    def close(self) -> None: ...


# ---- in this process ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _copy_gbs(device: str, threads: int) -> float:
    """Measured once per process and setting: the memory roofline every row is judged against."""
    from . import compiling, env, measure

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

    def __init__(self, clock: Callable[[], float] = time.perf_counter, sandbox: Sandbox | None = None,
                 spawn: Callable | None = None):
        self.clock = clock
        self.sandbox = sandbox  # where work that may crash runs (autoquant's candidates); None: right here
        self.spawn = spawn  # starts a compile helper (sandbox.Zygote.spawn); None: no helpers (warmup.py)

    def environment(self, cfg) -> dict:
        return device_environment(cfg)

    def run(self, group: Group, on_row: OnRow, on_phase: OnPhase = _no_phase,
            stop: threading.Event | None = None) -> None:
        import torch

        from . import cell, compile_cache, compiling, profiling
        from ._torchao import quiet_logs

        cfg = group.cfg
        if cfg.diagnose and cfg.device == "cuda":
            profiling.prepare_for_cuda_graphs()
        with compiling.torch_threads(cfg.threads), torch.no_grad(), quiet_logs(), compile_cache.around_group(cfg):
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
                    cell.run_group(cfg, ref, group.modes, group.batch, on_row, self.clock, on_phase, self.sandbox,
                                   stop, group.together and cfg.time_together,
                                   None if group.together else cell.AFTER_CRASH, self.spawn)
            finally:
                del ref
                cell.free_memory(cfg.device)

    def close(self) -> None:
        return None


# ---- what a worker and its supervisor say: one frozen dataclass per kind, pickled over the pipe -------------

@dataclass(frozen=True)
class ReadEnvironment:  # supervisor → worker: describe the machine for this sweep
    cfg: SweepConfig


@dataclass(frozen=True)
class RunGroup:  # supervisor → worker: run these cells, reporting each row, then GroupDone
    group: Group


@dataclass(frozen=True)
class Ready:  # worker → supervisor: started, torch and torchao imported
    pid: int


@dataclass(frozen=True)
class EnvironmentRead:
    environment: dict


@dataclass(frozen=True)
class Progress:
    mode: str | None  # None: the group's reference (the unquantized model)
    phase: str
    log_offset: int  # where the worker's log stood: a crash report is looked for from there


@dataclass(frozen=True)
class RowDone:
    row: dict  # Row.to_dict()


@dataclass(frozen=True)
class GroupDone:
    pass


@dataclass(frozen=True)
class Failed:  # the worker's own machinery failed (e.g. a user's module it could not load)
    error: str


# ---- in a worker process ---------------------------------------------------------------------------------

class _Dead(Exception):
    """The worker process is gone (crashed, killed, or closed its end)."""


# A worker's torch allocations go on transparent huge pages (contiguous 2 MiB), so a model's weights map onto the
# caches alike in every process instead of on 4 KiB pages placed anew each time. On the 2-core AMD EPYC VM (THP
# "madvise": nothing is on huge pages unless asked) five fresh runs of the demo read int4 weight-only 3.85-4.41x,
# its interval missing the others' median, and 13-18 % under torch.utils.benchmark; with this set, 4.19-4.47x, the
# spread of every mode but int8 weight-only 1.02-1.10 and the tool within 8 % of torch.utils.benchmark
# (docs/timing.md). torch's CPU allocator reads it once, at start: a worker gets it, a caller's own process not.
HUGE_PAGES_ENV = {"THP_MEM_ALLOC_ENABLE": "1"}



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
        for name, value in HUGE_PAGES_ENV.items():  # a user's own choice stays
            env.setdefault(name, value)
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
            if isinstance(message, Ready):
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


@dataclass
class _Watch:
    """What the worker is doing, as its messages tell: which cell (None: the reference, or between cells), since
    when, and where its log stood when the cell began (a crash report is looked for from there)."""

    log_from: int
    mode: str | None = None
    phase: str = "starting"
    since: float = dataclasses.field(default_factory=time.monotonic)

    def progress(self, message: Progress) -> None:
        if message.mode != self.mode:  # the worker says where its log stood: we may read this message late
            self.mode, self.since, self.log_from = message.mode, time.monotonic(), message.log_offset
        self.phase = message.phase + (f" {self.mode}" if self.mode else "")

    def between_cells(self) -> None:
        self.mode, self.phase, self.since = None, "between cells", time.monotonic()

    def overdue(self, timeout_s: float) -> str | None:
        """Why the worker is given up on, if it has been at this too long. The time limit is a cell's: building
        the model (a new worker rebuilds it after a crash) is not a cell, and gets at least REFERENCE_TIMEOUT_S."""
        limit = timeout_s if self.mode is not None else max(timeout_s, REFERENCE_TIMEOUT_S)
        if time.monotonic() - self.since <= limit:
            return None
        what = "the cell time limit" if self.mode is not None else "the model's time limit"
        return f"timed out after {limit:.0f} s while {self.phase} ({what})"


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

    def environment(self, cfg: SweepConfig) -> dict:
        worker = self._ready_worker()
        worker.send(ReadEnvironment(cfg))
        while True:
            try:
                message = worker.recv(1.0)
            except _Dead:
                raise RuntimeError(f"the worker process died ({worker.death()}) while reading the machine:\n"
                                   f"{worker.log_tail()}") from None
            if isinstance(message, EnvironmentRead):
                return message.environment
            if isinstance(message, Failed):
                raise RuntimeError(f"the worker could not read the machine: {message.error}")

    def run(self, group: Group, on_row: OnRow, on_phase: OnPhase = _no_phase,
            stop: threading.Event | None = None) -> None:
        from . import cell as cell_mod

        remaining = list(group.modes)  # the modes with no row yet
        while remaining and not (stop is not None and stop.is_set()):
            worker = self._ready_worker()
            worker.send(RunGroup(dataclasses.replace(group, modes=tuple(remaining))))
            watch = _Watch(log_from=worker.log_size())
            failure = self._follow(worker, watch, group, remaining, on_row, on_phase, stop)
            if failure is None:
                return
            if watch.mode == cell_mod.TOGETHER:  # whose calls crashed is unknown: time each alone, so it costs one row
                self._discard()
                group = dataclasses.replace(group, together=False)
                continue
            self._lost(worker, watch, failure, group, remaining, on_row)

    def _follow(self, worker: Worker, watch: _Watch, group: Group, remaining: list[str], on_row: OnRow,
                on_phase: OnPhase, stop: threading.Event | None) -> str | None:
        """Rows and phases as the worker sends them: None once the group is over or stopped; what happened
        (for the error row) when the worker dies or outlives its time limit."""
        while True:
            stopping = stop is not None and stop.is_set()
            try:
                message = worker.recv(0.0 if stopping else 0.2)
            except _Dead:
                return f"worker crashed ({worker.death()}) while {watch.phase}"
            if message is None and stopping:  # rows already sent are kept; the cell in progress leaves none
                self._discard()
                return None
            if message is None and (late := watch.overdue(self.timeout_s)):
                return late
            if isinstance(message, Progress):
                watch.progress(message)
                on_phase(message.mode, message.phase)
            elif isinstance(message, RowDone):
                row = with_sending_help(Row.from_dict(message.row))
                remaining.remove(row.mode)
                watch.between_cells()
                on_row(row)
            elif isinstance(message, Failed):
                from . import cell

                for mode in remaining:
                    on_row(cell.error_row(group.cfg, group.source, mode, group.batch,
                                          f"the worker process could not load this cell ({message.error}): "
                                          f"{SENDING_HELP}"))
                return None
            elif isinstance(message, GroupDone):
                return None

    def _lost(self, worker: Worker, watch: _Watch, failure: str, group: Group, remaining: list[str],
              on_row: OnRow) -> None:
        """The worker is gone or stuck: this cell (or the reference, and with it the group) is an error row."""
        from . import cell

        log = worker.log_tail(watch.log_from)
        self._discard()
        extra = {"worker_log": log} if log else {}
        if watch.mode is None:
            for mode in remaining:
                on_row(cell.failed_reference_row(group.cfg, group.source, mode, group.batch, failure, extra))
            remaining.clear()
            return
        remaining.remove(watch.mode)
        from . import repro

        on_row(repro.after_crash(group.cfg, group.source,
                                 cell.error_row(group.cfg, group.source, watch.mode, group.batch, failure, extra)))

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
