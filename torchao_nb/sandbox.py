"""Work that may crash, run where it can't take the caller along: a zygote forked before any torch work, whose
child runs each call; and the loading of what a supervisor sends a worker (the caller's `__main__` included)."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, Pipe
from typing import Any, Callable

from .errors import Crashed, error_text


def _signal_name(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            name = signal.Signals(-returncode).name
            return name + (" (often the out-of-memory killer)" if name == "SIGKILL" else "")
        return f"signal {-returncode}"
    return f"exit status {returncode}"


class _CallersMain(pickle.Unpickler):
    """Loads what the supervisor sent, with the caller's `__main__` functions living in a real `__main__` here.

    cloudpickle sends a class defined in a notebook cell or a script by value, and gives each of its functions a
    fresh globals dict that holds `__name__ = "__main__"` and only the names the function uses. torch.compile
    resolves a traced function's globals through `sys.modules[__name__]`, which in this process is a module that
    lacks them ("module '__main__' has no attribute 'torch'"). So every function built from the caller's `__main__`
    gets the globals of one stand-in `__main__` module instead, which cloudpickle then fills with the names they use:
    dynamo finds in `sys.modules["__main__"]` exactly what the function sees, as it does in the caller's process.
    """

    def find_class(self, module: str, name: str):
        found = super().find_class(module, name)
        if module.startswith("cloudpickle") and name == "_make_function":
            return _make_function_in_main(found)
        return found


def _make_function_in_main(make_function):
    def make(code, globals_, *rest):
        if globals_.get("__name__") == "__main__":
            globals_ = sys.modules["__main__"].__dict__
        return make_function(code, globals_, *rest)
    return make


def received(conn: Connection):
    """Each message the other end sends, as bytes, until it closes the connection."""
    while True:
        try:
            yield conn.recv_bytes()
        except (EOFError, OSError):
            return


def _loads(data: bytes):
    return _CallersMain(io.BytesIO(data)).load()


CALL_TIMEOUT_S = 900.0  # one step of sandboxed work (a cold compile on a GPU with tuning took 146 s) gets this long


# What the worker and a zygote's child say over their pipe: one frozen dataclass per kind.
@dataclass(frozen=True)
class Call:  # worker → child: fn(*args, phase=...)
    fn: Callable
    args: tuple


@dataclass(frozen=True)
class CallPhase:  # child → worker: what fn is doing now
    phase: str


@dataclass(frozen=True)
class CallFailed:  # fn raised
    error: str


@dataclass(frozen=True)
class CallResult:
    value: Any


class Zygote:
    """A fork of the worker made before it does any torch work, which forks the child that runs `call`s.

    autoquant times candidates whose kernels may crash; each shape's candidates run in such a child, so a crash
    costs that candidate only. A forked child starts in milliseconds with torch and torchao imported (a fresh
    process needs ~6 s). It is forked from this pristine copy, never from the worker itself: a process that has
    run an OpenMP parallel region hangs in its forked children's first parallel region (GNU libgomp; checked on
    torch 2.13), and CUDA can't be used in a fork of a process that initialized it.
    """

    def __init__(self):
        _warm_compiler()
        self.sock, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # the zygote: it only ever forks and reaps
            self.sock.close()
            _zygote_loop(theirs)
            os._exit(0)
        theirs.close()
        self.lock = threading.Lock()
        self.child: tuple[int, Connection] | None = None

    def _ask(self, text: str, fds: tuple[int, ...] = ()) -> int:
        with self.lock:
            socket.send_fds(self.sock, [text.encode()], list(fds))
            return int(self.sock.recv(64).decode())

    def _child(self) -> tuple[int, Connection]:
        """The child that serves calls: kept from call to call (its compiler warms up once), new after a crash."""
        if self.child is None:
            ours, theirs = Pipe(duplex=True)
            self.child = (self._ask("start", (theirs.fileno(),)), ours)
            theirs.close()
        return self.child

    def _end_child(self, kill: bool) -> int:
        pid, conn = self.child
        self.child = None
        if kill:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        conn.close()  # a healthy child exits when its connection closes
        return self._ask(f"wait {pid}")

    def call(self, fn: Callable, args: tuple, on_phase: Callable[[str], None],
             timeout_s: float = CALL_TIMEOUT_S) -> Any:
        """fn(*args, phase=report) in a child; its result, or Crashed naming the phase it died in."""
        import cloudpickle

        pid, conn = self._child()
        phase, deadline = "starting", time.monotonic() + timeout_s
        try:
            conn.send_bytes(cloudpickle.dumps(Call(fn, args)))
            while True:
                if not conn.poll(0.2):
                    if time.monotonic() < deadline:
                        continue
                    self._end_child(kill=True)
                    raise Crashed(f"timed out after {timeout_s:.0f} s", phase)
                message = pickle.loads(conn.recv_bytes())
                if isinstance(message, CallPhase):
                    phase, deadline = message.phase, time.monotonic() + timeout_s
                    on_phase(message.phase)
                elif isinstance(message, CallFailed):
                    raise RuntimeError(message.error)
                else:
                    return message.value
        except (EOFError, OSError):
            raise Crashed(f"crashed ({_signal_name(self._end_child(kill=False))})", phase) from None

    def spawn(self, fn: Callable, args: tuple) -> "Job":
        """fn(*args, phase=...) started in a child of its own, beside the worker and the child `call` uses: the
        caller goes on at once (warmup's compile helpers)."""
        import cloudpickle

        data = cloudpickle.dumps(Call(fn, args))  # first: what can't be pickled must not leave a child waiting
        ours, theirs = Pipe(duplex=True)
        pid = self._ask("start", (theirs.fileno(),))
        theirs.close()
        job = Job(self, pid, ours)
        try:
            ours.send_bytes(data)
        except OSError:
            job.kill()
            raise
        return job

    def close(self) -> None:
        if self.child is not None:
            self._end_child(kill=False)
        self.sock.close()


class Job:
    """One call running in a zygote's child of its own (Zygote.spawn): polled, never waited on blindly."""

    def __init__(self, zygote: Zygote, pid: int, conn: Connection):
        self.zygote, self.pid, self.conn = zygote, pid, conn
        self.phase = "starting"
        self.exit: int | None = None  # its exit status, once reaped

    def result(self, timeout_s: float = 0.0) -> tuple[bool, Any]:
        """(False, None) while it runs; (True, its value) once it returned. Raises RuntimeError when fn raised
        and Crashed when the child died; either way the child is gone afterwards."""
        try:
            while self.conn.poll(timeout_s):
                message = pickle.loads(self.conn.recv_bytes())
                if isinstance(message, CallPhase):
                    self.phase = message.phase
                    continue
                self._end(kill=False)
                if isinstance(message, CallFailed):
                    raise RuntimeError(message.error)
                return True, message.value
        except (EOFError, OSError):
            raise Crashed(f"crashed ({_signal_name(self._end(kill=False))})", self.phase) from None
        return False, None

    def _end(self, kill: bool) -> int:
        """Close and reap the child, once: a second call returns the first one's exit status."""
        if self.exit is None:
            if kill:
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGKILL)
            self.conn.close()  # a healthy child exits when its connection closes
            self.exit = self.zygote._ask(f"wait {self.pid}")
        return self.exit

    def kill(self) -> None:
        self._end(kill=True)


def _warm_compiler() -> None:
    """One tiny compile before the zygote forks: dynamo's and inductor's one-time set-up (seconds: lazy imports,
    tracing tables) is then paid once, not again in every child. One-element tensors never start an OpenMP
    team, and one compile thread starts no compile-worker pool, so the process stays safe to fork."""
    import torch
    import torch._inductor.config as inductor_config

    with inductor_config.patch(compile_threads=1), torch.no_grad():
        fn = torch.compile(lambda x: torch.relu(x) * 2 + 1)
        for dtype in (torch.float32, torch.bfloat16):
            fn(torch.ones(1, dtype=dtype))
    torch._dynamo.reset()


def _die_with_parent() -> None:
    """A zygote's child is killed when the zygote exits, as it does when its worker is gone (killed at a deadline
    or a timeout): a compile helper or a candidate must not go on holding memory beside the next worker's timing."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    if os.getppid() == 1:  # the zygote was gone before the line above
        os._exit(0)


def _zygote_loop(sock: socket.socket) -> None:
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, 64, 1)
        except OSError:
            return
        if not message:  # the worker is gone
            return
        kind, _, arg = message.decode().partition(" ")
        if kind == "start":
            child = os.fork()
            if child == 0:
                _die_with_parent()
                sock.close()
                _serve_call(Connection(fds[0]))
                os._exit(0)
            os.close(fds[0])
            sock.sendall(str(child).encode())
        elif kind == "wait":
            _, status = os.waitpid(int(arg), 0)
            sock.sendall(str(os.waitstatus_to_exitcode(status)).encode())


def _serve_call(conn: Connection) -> None:
    """A zygote's child: run each function it is sent, reporting its phases, until its connection closes."""
    import faulthandler

    import cloudpickle

    faulthandler.enable()  # a crash leaves its Python stack in the worker's log
    send = lambda message: conn.send_bytes(cloudpickle.dumps(message))  # noqa: E731
    for data in received(conn):
        try:
            call = _loads(data)
            send(CallResult(call.fn(*call.args, phase=lambda text: send(CallPhase(text)))))
        except Exception as e:
            send(CallFailed(error_text(e)))
