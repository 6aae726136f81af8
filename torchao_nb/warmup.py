"""Cold compiles in parallel (--compile-workers N): before a group's cells are timed, helper processes quantize and
compile cells of it, filling the inductor caches on disk that every process of this machine shares; the worker
then compiles each cell again from those caches and times it with no helper left running.

A cold inductor compile is mostly one Python thread (tracing, code generation) and a C++ or Triton compiler, so
one process leaves a machine's other cores idle; a compile from the caches costs a fraction of it (the demo's
cells on a 2-core CPU: 0.2-1.2 s from the caches against 2-12 s cold in a helper, docs/compiler-settings.md).
A helper is a child of the worker's zygote (sandbox.Zygote.spawn): it starts in milliseconds with torch
imported, and its crash costs its cell a cold compile in the worker, never a row.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from . import compiling, measure, models
from . import env as envmod
from . import modes as modes_mod
from .config import SweepConfig, cpu_cores
from .errors import Crashed, error_text
from .extras import Warmed
from .reference import Reference

Spawn = Callable[[Callable, tuple], Any]  # sandbox.Zygote.spawn: fn(*args, phase=...) in a child; a Job back

# What one helper holds besides its process: the model it was sent, the quantized copy it makes and the compiler's
# work on them. Measured on the demo mlp (34.6 MB of bf16 weights, 2-core CPU): a helper's peak grew by 2.6x
# (noquant) to 4.7x (int8dynamic) the weights; planned at 5x, then at the largest growth a helper measured.
WEIGHT_FACTOR = 5
PROCESS_BYTES = {"cpu": 256 << 20, "cuda": 1 << 30}  # a helper's own: inductor's state; on a GPU its CUDA context
_in_helper = False


def in_helper() -> bool:
    """True inside a compile helper (a model can tell; tests/test_warmup.py makes one crash there)."""
    return _in_helper


def takes(mode: str) -> bool:
    """Whether a helper can warm this mode: not one with a search of its own (autoquant), which would run twice."""
    return modes_mod.get(mode).apply is None


def plan(cfg: SweepConfig, ref: Reference, cells: int, need: int | None = None,
         running: int = 0) -> tuple[int, str | None]:
    """How many helpers to run at once for `cells` cells, and why fewer than asked (None when as asked): at most the
    cores this process may use, and as many as fit in half the device's free memory at `need` bytes each (`running`
    helpers already hold theirs, so the free memory they took counts as theirs)."""
    need = need or WEIGHT_FACTOR * measure.weight_bytes(ref.module)
    return fits(min(cfg.compile_workers, cells), cpu_cores(), need + PROCESS_BYTES.get(cfg.device, 0),
                envmod.free_memory_bytes(cfg.device), running, cfg.device)


def fits(asked: int, cores: int, need: int, free: int | None, running: int = 0,
         device: str = "cpu") -> tuple[int, str | None]:
    """The rule of `plan`, on numbers (scripts/gpu_check.py plans a GPU machine with it)."""
    if asked <= 0:
        return 0, None
    n, why = asked, None
    if cores < n:
        n, why = cores, f"{cores} CPU core(s)"
    if free is not None:
        half = (free + running * need) // 2
        if need * n > half:
            n, why = int(half // need), (f"each needs ~{need / 2**30:.1f} GiB and half the free {device} memory is "
                                          f"{half / 2**30:.1f} GiB")
    return n, why


def _warm_cell(cfg: SweepConfig, module: torch.nn.Module, inputs: Any, layer_rows: tuple,
               settings: compiling.CompileSettings, mode: str, phase: Callable[[str], None]) -> dict[str, float]:
    """In a helper: quantize `module` (the helper's own copy) for `mode`, compile it and call it once, so that the
    caches on disk hold its graphs and kernels. Its compile seconds and its peak memory growth come back."""
    global _in_helper
    from ._torchao import quiet_logs

    _in_helper = True
    sent = measure.weight_bytes(module)  # already in this process when the block below starts counting
    info = envmod.device_info(cfg.device)
    context = modes_mod.ApplyContext(device=cfg.device, compile=settings, policy=cfg.policy,
                                     settings=cfg.settings_for(mode), mode_settings=cfg.mode_settings,
                                     layer_rows=layer_rows)
    with measure.PeakMemory(cfg.device) as memory, compiling.torch_threads(cfg.threads), torch.no_grad(), \
            quiet_logs(), compiling.maybe_compiled(settings):
        phase("quantizing")
        modes_mod.quantize(module, modes_mod.get(mode), info, cfg.dtype, inputs, context)
        phase("compiling")
        fn = compiling.compiled(module, settings, mode)
        _, seconds = measure.time_once(lambda: models.call(fn, inputs), sync=measure.sync_for(cfg.device))
    if cfg.device == "cuda":  # allocated memory: the sent weights are in it already
        return dict(compile_s=seconds, peak_bytes=memory.peak_bytes or 0)
    # On a CPU the growth after the module arrived, the module, and the pickled bytes it came in (still held)
    return dict(compile_s=seconds, peak_bytes=2 * sent + (memory.peak_bytes or 0))


@dataclass
class _Slot:
    job: Any
    deadline: float  # monotonic: a helper still compiling then is killed (cfg.cell_timeout_s)


class Warmup:
    """The helpers of one group: they take its cells in order, at most `n` at a time, from a thread of their own
    while the worker prepares cells; `claim` hands a cell to the worker, `drain` waits until none is left. Only that
    thread starts, polls, kills and reaps helpers."""

    def __init__(self, spawn: Spawn, cfg: SweepConfig, ref: Reference, modes: Sequence[str], n: int):
        self.spawn, self.cfg, self.ref, self.n = spawn, cfg, ref, n
        self.queue = list(modes)
        self.running: dict[str, _Slot] = {}
        self.done: dict[str, Warmed] = {}
        self.need: int | None = None  # the largest peak a helper measured
        self.cv = threading.Condition()
        self.closed = False
        with self.cv:
            self._start_more()  # before the worker claims its first cell
        self.thread = threading.Thread(target=self._run, name="compile helpers", daemon=True)
        self.thread.start()

    def _start_more(self) -> None:
        while self.queue and len(self.running) < self.n:
            if self.running and self.need is not None and \
                    len(self.running) >= plan(self.cfg, self.ref, self.n, self.need, len(self.running))[0]:
                return  # what a helper measured allows fewer at once (one always may run: the worker would too)
            mode = self.queue.pop(0)
            args = (self.cfg, self.ref.module, self.ref.inputs, self.ref.layer_rows, self.ref.compile, mode)
            try:
                job = self.spawn(_warm_cell, args)
            except Exception as e:  # no child to be had: the worker compiles this cell itself
                self.done[mode] = Warmed(f"not warmed: no helper could start ({error_text(e, 200)}); compiled cold here")
                continue
            self.running[mode] = _Slot(job, time.monotonic() + self.cfg.cell_timeout_s)

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as e:  # the worker must never wait on helpers nobody watches
            self._give_up(f"not warmed: the helpers' scheduler failed ({error_text(e, 200)}); compiled cold here")
        finally:
            self._give_up("not warmed: the group's helpers were stopped; compiled cold here")

    def _give_up(self, why: str) -> None:
        with self.cv:
            slots, self.running = list(self.running.values()), {}
            for mode in self.queue:
                self.done[mode] = Warmed(why)
            self.queue.clear()
            self.cv.notify_all()
        for slot in slots:
            with contextlib.suppress(Exception):
                slot.job.kill()

    def _loop(self) -> None:
        while True:
            with self.cv:
                if self.closed:
                    return
                self._start_more()
                if not self.queue and not self.running:
                    self.cv.notify_all()
                    return
                slots = list(self.running.items())
            for mode, slot in slots:
                outcome = self._poll(slot)
                if outcome is not None:
                    with self.cv:
                        self.running.pop(mode, None)
                        self.done[mode] = outcome
                        self.cv.notify_all()
            time.sleep(0.05)

    def _poll(self, slot: _Slot) -> Warmed | None:
        try:
            finished, value = slot.job.result(0.05)
        except Crashed as e:
            return Warmed(f"its helper {e.how} while {e.phase}: compiled cold here")
        except Exception as e:
            return Warmed(f"its helper failed ({error_text(e, 200)}): compiled cold here")
        if not finished:
            if time.monotonic() < slot.deadline:
                return None
            slot.job.kill()
            return Warmed(f"its helper was stopped after {self.cfg.cell_timeout_s:.0f} s (the cell timeout) while "
                          f"{slot.job.phase}: compiled cold here")
        self.need = max(self.need or 0, int(value["peak_bytes"]))
        return Warmed(f"compiled first in a helper process ({value['compile_s']:.1f} s), then here from the caches "
                      "it filled", helper_compile_s=round(value["compile_s"], 3),
                      helper_peak_bytes=int(value["peak_bytes"]))

    def _wait(self, busy: Callable[[], bool]) -> None:
        while busy() and self.thread.is_alive():
            self.cv.wait(0.5)

    def claim(self, mode: str, on_phase: Callable[[str], None]) -> Warmed | None:
        """Before the worker prepares `mode`: what its helper did (waiting for one still compiling it), or None
        when no helper took it (taken off the queue: the worker compiles it cold)."""
        with self.cv:
            if mode in self.queue:
                self.queue.remove(mode)
                return None
            if mode in self.running:
                on_phase("waiting for its compile helper")
            self._wait(lambda: mode in self.running)
            return self.done.get(mode)

    def drain(self, on_phase: Callable[[str], None]) -> None:
        """Wait until no helper runs and none is left to start: before timing, which must run alone. `on_phase`:
        the cell about to be timed (so a time limit here names it)."""
        with self.cv:
            if self.queue or self.running:
                on_phase(f"waiting for {len(self.queue) + len(self.running)} compile helper(s)")
            self._wait(lambda: bool(self.queue or self.running))

    def close(self) -> None:
        with self.cv:
            self.closed = True
            self.cv.notify_all()
        self.thread.join(30)


def start(cfg: SweepConfig, ref: Reference, modes: Sequence[str], spawn: Spawn | None,
          eligible: Callable[[str], bool]) -> tuple[Warmup | None, dict[str, Warmed]]:
    """The group's helpers, started (None when there are none), and a note for each cell none will warm."""
    if spawn is None or cfg.compile_workers <= 0 or not ref.compile.enabled:
        return None, {}
    cells = [m for m in modes if eligible(m) and takes(m)]
    n, why = plan(cfg, ref, len(cells))
    if n == 0:
        note = Warmed(f"not warmed: no compile helper could run ({why}); compiled cold here")
        return None, {m: note for m in cells}
    return Warmup(spawn, cfg, ref, cells, n), {}
