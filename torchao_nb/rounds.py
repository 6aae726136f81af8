"""Timing a group's cells: the unquantized model's compiled copies, the eager model and every mode's copies, in
one set of rotated rounds, so every row's speedup divides the same baseline samples, taken over the whole
group's time rather than over one cell's seconds."""

from __future__ import annotations

import copy
import math
from typing import Any

from torch import nn

from . import compiling, measure, models, ratios
from . import env as envmod
from .config import SweepConfig
from .extras import TimingNotes
from .reference import Reference

# A shared VM's speed moves over tens of seconds (on the 2-core AMD EPYC the baseline read 2.7-4.0 ms across
# 140 s in one process, and every speedup over it moved with it, docs/timing.md): a cell timed alone saw ~10 s
# of that and claimed +-3 %, while the next cell or run met another machine. Timed together, each ratio is
# sampled over the group's whole minute and its interval (a block bootstrap, ratios.paired_ratio) widens with
# the drift it saw.
# The rounds are resampled in blocks of at least DRIFT_S (ratios.paired_ratio): on that VM the machine's state
# lasted 10-30 s (benchmarks/drift.py), so neighbouring rounds within it are not independent evidence, and
# five fresh runs' intervals held their median in 3 of 5 with blocks chosen from the autocorrelation alone.
DRIFT_S = 15.0
MIN_TOGETHER_COPIES = 2  # fewer copies per side than this (memory): each cell is timed alone, with more copies


def window(cfg: SweepConfig, ref: Reference, clock, sync) -> measure.Window:
    """Warm: bursts of back-to-back calls, as a generation loop runs a model. Cold: the last-level cache (CPU)
    or L2 (CUDA) flushed before each single call, so a model that fits there reads its weights from memory."""
    flush = 2 * ref.cache_bytes if cfg.cache == "cold" and ref.cache_bytes else 0
    if cfg.device == "cuda":
        return measure.cuda_window(flush)
    return measure.host_cold_window(flush, clock, sync) if flush else measure.host_window(clock, sync)


def copies(cfg: SweepConfig, ref: Reference, modes: int) -> int:
    """Copies per side when `modes` modes' copies and the baseline's are in memory at once: the policy's, fewer
    when they would take more than half the free memory (a row's `replicates` says how many)."""
    free = envmod.free_memory_bytes(cfg.device)
    one = measure.weight_bytes(ref.module)  # a mode's copy is at most as large as a baseline copy
    if free is None or one == 0:
        return cfg.policy.replicates
    made = len(ref.compiled_baselines) * one  # already in memory
    return max(1, min(cfg.policy.replicates, int((free // 2 + made) // (one * (modes + 1)))))


def together(cfg: SweepConfig, ref: Reference, modes: int) -> str | None:
    """None when the group's modes can be timed together; else why each cell is timed alone."""
    if modes < 2:
        return None
    n = copies(cfg, ref, modes)
    if n >= min(MIN_TOGETHER_COPIES, cfg.policy.replicates):
        return None
    return (f"timed alone, not with its group's other modes: {modes} modes' copies would not fit in half the free "
            "memory")


def baselines(ref: Reference, n: int) -> list:
    """`n` compiled unquantized models, each from a copy of its own, made once per group (later cells and the
    quality measure get them back from the group)."""
    # A copy of its own, as every mode gets: sharing the eager reference's memory made the A/A read
    # 0.95-0.99 on a 2-core CPU (the mode's copy was the one paying for fresh memory).
    while len(ref.compiled_baselines) < n:
        ref.compiled_baselines.append(compiled_copy(ref, ref.module, "baseline"))
    return ref.compiled_baselines[:n]


def compiled_copy(ref: Reference, module: nn.Module, label: str):
    """`module` deep-copied into memory of its own (torchao's packed tensors are copied too), compiled, called once."""
    fn = compiling.compiled(copy.deepcopy(module), ref.compile, label)
    models.call(fn, ref.inputs)
    return fn


def replicas(ref: Reference, model: nn.Module, fn, n: int, label: str) -> list:
    """`fn` and n-1 more compiled copies of the quantized model, ready before timing starts."""
    return [fn] + [compiled_copy(ref, model, label) for _ in range(n - 1)]


def time_modes(cfg: SweepConfig, ref: Reference, sides: dict[str, list], clock,
               sync) -> dict[str, tuple[dict[str, Any], TimingNotes]]:
    """Each mode's copies (`sides`: mode → its compiled copies) timed in the same rounds as the unquantized model
    (as many compiled baseline copies as the most copied mode, and the eager model): per mode, the row's numbers
    and the notes for its extras (slow to settle, a busy machine)."""
    win = window(cfg, ref, clock, sync)
    n = max(len(fns) for fns in sides.values())
    bases = baselines(ref, n) if ref.compile.enabled else []
    fns = [*bases, ref.module, *(f for copies_ in sides.values() for f in copies_)]
    calls = [lambda f=f: models.call(f, ref.inputs) for f in fns]
    groups, start = [list(range(len(bases))), [len(bases)]], len(bases) + 1  # base, eager, then each mode
    for copies_ in sides.values():
        groups.append(list(range(start, start + len(copies_))))
        start += len(copies_)
    sides_ = [g for g in groups if g]
    leads, settles = _leads(cfg, calls, sides_, win, clock, sync)
    with envmod.OtherLoad() as load:
        began = clock()
        timed = measure.time_interleaved(calls, cfg.policy, clock, sync, win, sides_, leads)
        per_round = (clock() - began) / max(1, len(timed[0].samples_ms))
    block = max(1, math.ceil(DRIFT_S / per_round)) if per_round > 0 else 1
    eager_m = timed[len(bases)]
    base_ms = timed[:len(bases)] or [eager_m]
    base = ratios.per_round(base_ms)
    moved = ratios.drift(base.samples_ms)
    out = {}
    for mode, members in zip(sides, groups[2:]):
        ms = [timed[i] for i in members]
        speedup, vs_eager = (ratios.across_runs(ratios.paired_ratio(den, ms, min_block=block))
                             for den in (base_ms, eager_m))
        m = ratios.per_round(ms)
        out[mode] = (dict(median_ms=m.median_ms, iqr_ms=m.iqr_ms, samples=len(m.samples_ms), replicates=len(ms),
                          noisy=m.noisy(cfg.policy), baseline_ms=base.median_ms, eager_ms=eager_m.median_ms,
                          speedup=speedup.value, speedup_lo=speedup.lo, speedup_hi=speedup.hi,
                          speedup_vs_eager=vs_eager.value, speedup_vs_eager_lo=vs_eager.lo,
                          speedup_vs_eager_hi=vs_eager.hi, sampling=win.what),
                     TimingNotes(settles=_settles(settles.get(members[0])), busy=_busy(load),
                                 together=len(sides) if len(sides) > 1 else None,
                                 base_range_ms=None if moved is None else [round(x, 6) for x in moved],
                                 between_runs=ratios.BETWEEN_RUNS_REL))
    return out


def _leads(cfg: SweepConfig, calls: list, sides: list[list[int]], win: measure.Window, clock,
           sync) -> tuple[list[float], dict[int, measure.Settling]]:
    """Each function's untimed lead in the rounds, and each side's check (by its first copy's index). A side's first
    copy is checked right after a burst of every other side's, as the rounds run them between two of its bursts
    (one neighbour alone left float8 weight-only's 12 % on the threshold); the side's copies all get the lead it
    needs. A cold window flushes before every call, so there is no steady state to reach."""
    leads = [cfg.policy.lead_s] * len(calls)
    if win.one_call:
        return leads, {}
    per_burst = cfg.policy.lead_s + cfg.policy.burst_s
    one_s = {}
    for g in sides:  # one call of each side's first copy: how long a call is, and so how many make a burst
        t0 = clock()
        calls[g[0]]()
        sync()
        one_s[g[0]] = clock() - t0
    in_burst = {i: max(1, math.ceil(per_burst / s)) if s > 0 else 1 for i, s in one_s.items()}

    def the_others(g):
        bursts = [(calls[h[0]], in_burst[h[0]]) for h in sides if h is not g]
        return lambda: [f() for f, k in bursts for _ in range(k)]

    settles = {g[0]: measure.settling(calls[g[0]], the_others(g), one_s[g[0]] * 1e3, cfg.policy, win) for g in sides}
    for g in sides:
        for i in g:
            leads[i] = settles[g[0]].lead_s
    return leads, settles


def _busy(load: envmod.OtherLoad) -> str | None:
    """A note when other processes took a good share of the CPU while the cell was timed."""
    if load.share is None or load.share <= envmod.BUSY_SHARE:
        return None
    return (f"other processes used {load.cores:.1f} cores ({load.share:.0%}) while this cell was timed: "
            "its numbers move with their load")


def _settles(settle: measure.Settling | None) -> str | None:
    """What the row says when its bursts needed a longer lead to reach their steady state (measure.settling)."""
    if settle is None or not settle.lengthened:
        return None
    return (f"slow to settle: a burst right after the other models' read {settle.switched_ms:.3f} ms per call, "
            f"{settle.settled_ms:.3f} ms after {measure.SETTLE_S:g} s more of its own calls, so each of its bursts "
            f"was led by {settle.lead_s:g} s of untimed calls (timed at its steady state)")
