"""A worker process: `python -m torchao_nb._worker FD` (started by executors.Worker) runs the cells it is sent."""

import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection

from torchao_nb.errors import error_text
from torchao_nb.executors import (EnvironmentRead, Failed, GroupDone, InProcess, Progress, ReadEnvironment, Ready,
                                  RowDone, RunGroup)
from torchao_nb.sandbox import Zygote, _loads, received


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
    """The worker's main loop: run what the supervisor sends, report rows and phases, until the connection closes."""
    import faulthandler
    import types

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the supervisor's to handle: it stops us
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    # From here on `__main__` is the caller's (see sandbox._CallersMain). This loop runs in the module
    # torchao_nb._worker (see the end of this file), and nothing of torchao_nb looks `__main__` up.
    sys.modules["__main__"] = types.ModuleType("__main__", "the caller's __main__, as its functions sent here use it")

    import cloudpickle

    from torchao_nb import autoquant  # noqa: F401  (registers the autoquant mode)

    zygote = Zygote()  # now, while no torch work has run in this process (see Zygote)

    faulthandler.enable()  # a crash leaves the Python stack in the log the supervisor attaches to the row
    conn = Connection(fd)
    send = lambda message: conn.send_bytes(cloudpickle.dumps(message))  # noqa: E731
    executor = InProcess(sandbox=zygote.call, spawn=zygote.spawn)
    send(Ready(os.getpid()))
    for data in received(conn):
        try:
            message = _loads(data)
            if isinstance(message, ReadEnvironment):
                send(EnvironmentRead(executor.environment(message.cfg)))
            elif isinstance(message, RunGroup):
                executor.run(message.group, lambda row: send(RowDone(row.to_dict())),
                             lambda mode, phase: send(Progress(mode, phase, _log_offset())))
                send(GroupDone())
        except Exception as e:  # e.g. a user's module whose class this process can't import
            send(Failed(error_text(e)))


if __name__ == "__main__":
    # This file again, as the module torchao_nb._worker: the loop's globals must outlive the `__main__` it replaces.
    from torchao_nb._worker import serve as serve_in_module

    serve_in_module(int(sys.argv[1]))
