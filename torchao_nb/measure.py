"""Timing, memory, size and accuracy metrics. The clock and the device sync are injectable."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

Clock = Callable[[], float]


@dataclass(frozen=True)
class TimingPolicy:
    """How samples are taken and how many; bounded so a sweep's time is predictable."""

    min_warmup: int = 3  # calls, at least
    warmup_s: float = 0.05  # and at least this long (each sample's untimed lead warms a function again)
    # A sample is a burst: untimed calls, then timed back-to-back calls, as a generation loop calls a model.
    # Switching from another function slows the next 3-5 calls (the demo on a 2-core Xeon: int4 -> noquant
    # read 3.2, 2.7, 2.4, 1.9 ms before its steady 1.8; on an H200, CUDA-graph trees switching graphs added
    # ~0.15 ms to a 0.89 ms decode step). With 10 ms untimed, a 10 ms burst after a switch reads 0.4-1.3 %
    # over a steady one (benchmarks/switching.py; target < 2 %).
    lead_s: float = 0.01  # untimed calls at the start of each sample (at least one)
    burst_s: float = 0.01  # timed calls per sample (at least one)
    # Each side is timed on this many independently allocated copies, so memory-placement luck widens the
    # interval instead of hiding in it: 4 copies of int8 weight-only in one process read 2.315-2.387x, as far
    # apart as 5 fresh processes (2.310-2.386x), while each process's rounds alone claimed +-0.5 %. Copies
    # are also slow for seconds at a time, two of three at once in 1 of 5 processes (the A/A read 1.34x with
    # three); five, so that the median over copies outvotes two unlucky ones (see paired_ratio).
    replicates: int = 5
    min_samples: int = 10  # rounds; with five copies per side the copies, not the rounds, set the interval
    max_samples: int = 300
    max_time_s: float = 1.5  # per function and measurement, after warm-up
    settle_rel: float = 0.01  # stop once the median moved < 1% over the last block
    block: int = 10  # rounds between stability checks
    noisy_rel_iqr: float = 0.10  # IQR/median above this flags the row as noisy


FAST_POLICY = TimingPolicy(min_warmup=1, warmup_s=0.0, lead_s=0.0, burst_s=0.0, replicates=1, min_samples=3, max_samples=5,
                           max_time_s=0.5, block=3)


def policy_name(policy: TimingPolicy) -> str:
    """The row's `timing`: "bursts" (the default), "quick" (FAST_POLICY), or "custom-" and a hash of the fields, so
    a resumed sweep never mixes rows timed under different policies (rows of the old 2 ms samples read "default")."""
    named = {TimingPolicy(): "bursts", FAST_POLICY: "quick"}
    if policy in named:
        return named[policy]
    import dataclasses
    import hashlib
    import json

    text = json.dumps(dataclasses.asdict(policy), sort_keys=True)
    return "custom-" + hashlib.sha1(text.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Measurement:
    """Per-call times of one function; median over mean because stragglers (GC, other processes) skew means."""

    samples_ms: tuple[float, ...]
    calls_per_sample: int

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def iqr_ms(self) -> float:
        if len(self.samples_ms) < 4:
            return max(self.samples_ms) - min(self.samples_ms)
        q = statistics.quantiles(self.samples_ms, n=4, method="inclusive")
        return q[2] - q[0]

    @property
    def rel_iqr(self) -> float:
        return self.iqr_ms / self.median_ms if self.median_ms > 0 else math.inf

    def noisy(self, policy: TimingPolicy = TimingPolicy()) -> bool:
        return self.rel_iqr > policy.noisy_rel_iqr


def no_sync() -> None:
    return None


def sync_for(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device == "cuda" else no_sync


def time_calls(fn: Callable[[], Any], policy: TimingPolicy = TimingPolicy(), clock: Clock = time.perf_counter,
               sync: Callable[[], None] = no_sync, window: "Window | None" = None) -> Measurement:
    """Warm up, then take samples until the median settles or the time budget runs out."""
    return time_interleaved([fn], policy, clock, sync, window)[0]


@dataclass(frozen=True)
class Window:
    """How one sample is taken: `run(fn, lead, n)` → ms per call of n timed back-to-back calls, after `lead`
    untimed ones."""

    run: Callable[[Callable[[], Any], int, int], float]
    one_call: bool = False  # a sample is one call (the cache is flushed before each: repeats would hit it)
    what: str = "host clock around bursts of back-to-back calls"
    cache: str = "warm"  # "cold": the caches are flushed before each call


CACHES = ("warm", "cold")  # what a row's `cache` says: the model's data stay in the caches between calls, or not


def host_window(clock: Clock = time.perf_counter, sync: Callable[[], None] = no_sync) -> Window:
    def run(fn, lead, n):
        for _ in range(max(1, lead)):  # untimed: see TimingPolicy.lead_s
            fn()
        sync()
        t0 = clock()
        for _ in range(n):
            fn()
        sync()
        return (clock() - t0) * 1e3 / n
    return Window(run)


def host_cold_window(flush_bytes: int, clock: Clock = time.perf_counter, sync: Callable[[], None] = no_sync) -> Window:
    """One call per sample, each after a buffer of `flush_bytes` (2x the last-level cache) is read and
    written, so a model that fits in the cache reads its weights from memory as a larger one would."""
    scratch = torch.zeros(max(1, flush_bytes // 4), dtype=torch.int32)

    def run(fn, lead, n):
        scratch.add_(1)  # reads and writes every line: the cache holds the scratch, not the model
        sync()
        t0 = clock()
        fn()
        sync()
        return (clock() - t0) * 1e3
    return Window(run, one_call=True, what="host clock around one call, last-level cache flushed before each",
                  cache="cold")


def cuda_window(flush_bytes: int = 0) -> Window:
    """Bursts of back-to-back calls between two CUDA events, as a generation loop runs them (no host round
    trip per call). With `flush_bytes` (2x the L2), a buffer is zeroed before each single call instead, so a
    model that fits in L2 reads its weights from memory as a larger one would."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    scratch = torch.empty(max(1, flush_bytes // 4), dtype=torch.int32, device="cuda") if flush_bytes else None

    def run(fn, lead, n):
        for _ in range(1 if scratch is not None else max(1, lead)):  # untimed: see TimingPolicy.lead_s
            fn()
        if scratch is not None:
            scratch.zero_()  # on the stream before the start event: not timed
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / n

    if flush_bytes:
        return Window(run, one_call=True, what="CUDA events around one call, L2 flushed before each", cache="cold")
    return Window(run, what="CUDA events around bursts of back-to-back calls")


def time_interleaved(fns: Sequence[Callable[[], Any]], policy: TimingPolicy = TimingPolicy(),
                     clock: Clock = time.perf_counter, sync: Callable[[], None] = no_sync,
                     window: Window | None = None, sides: Sequence[Sequence[int]] | None = None,
                     leads_s: Sequence[float] | None = None) -> list[Measurement]:
    """Time several functions in rounds: each round takes one sample (a burst) of every function.

    A speedup is a ratio of two timings; on a shared machine (a VM's neighbours, clock changes)
    the speed drifts by tens of percent over seconds, so timings taken one after the other
    compare different machines. Rounds expose all of them to the same drift, and sample i of every
    function comes from round i, so ratios can be taken round by round (`paired_ratio`). The order
    rotates each round, so every function takes every position equally often: a function that
    always came last would always meet the machine in the same state (measured: 2-7 % faster under
    load). Stops when every median settles (checked after whole rotations) or when the time budget
    (one measurement's per function, checked every round) runs out. With `sides` (groups of indices: copies of one function), what must
    settle is each side's median over rounds of its per-round median over copies, the number reported. `leads_s`: each
    function's untimed lead before its burst (default the policy's; see `settling`).
    """
    window = window or host_window(clock, sync)
    sides = sides or [[i] for i in range(len(fns))]
    leads_s = leads_s or [policy.lead_s] * len(fns)

    def calibrate(fn, lead_s: float) -> tuple[int, int]:
        start, calls, last = clock(), 0, 0.0
        while calls < policy.min_warmup or clock() - start < policy.warmup_s:
            t0 = clock()
            fn()
            sync()
            last = clock() - t0
            calls += 1
        if window.one_call:
            return 1, 1
        return tuple(max(1, math.ceil(s / last - 1e-6)) if last > 0 else 1 for s in (lead_s, policy.burst_s))

    k = len(fns)
    shape = [calibrate(fn, lead) for fn, lead in zip(fns, leads_s)]
    samples: list[list[float]] = [[] for _ in fns]
    begin, settled, rounds = clock(), [None] * len(sides), 0
    while rounds < policy.max_samples:
        for j in range(k):
            i = (rounds + j) % k
            samples[i].append(window.run(fns[i], *shape[i]))
        rounds += 1
        if rounds < policy.min_samples:
            continue
        # The budget is checked every round: with a whole group's copies in the rounds (the demo: 46 functions) a
        # whole rotation is 46 rounds, and waiting for one doubled the timing on a quiet machine and stretched it
        # without bound on a loaded one.
        if clock() - begin >= k * policy.max_time_s:
            break
        if rounds % k:
            continue
        if rounds % policy.block < k:  # once per block of rounds
            meds = [statistics.median(statistics.median(samples[i][r] for i in side) for r in range(rounds))
                    for side in sides]
            if all(old is not None and abs(m - old) <= policy.settle_rel * m for m, old in zip(meds, settled)):
                break
            settled = meds
    return [Measurement(tuple(s), n) for s, (_, n) in zip(samples, shape)]


SETTLE_S = 0.1  # how long a function runs on before its settled burst (see after_switch)
# A burst after a switch slower than a settled one by more than this: its side gets a SETTLE_S lead. The 2 %
# switching cost a sample may have; on the quiet Xeon float8 weight-only read 4.7-14.8 % slower after a burst of
# every other side, steady models -1.1 to +1.3 % (int8dq-int4 1.2-3.8 %).
STEADY_REL = 0.02


def after_switch(fn: Callable[[], Any], other: Callable[[], Any], per_call_ms: float, policy: TimingPolicy = TimingPolicy(),
                 window: Window | None = None, repeats: int = 3) -> tuple[float, float]:
    """(ms per call of a burst taken as the rounds take it, right after one call of `other` (in rounds: a burst of
    every other side's); ms per call of the same burst after SETTLE_S more of fn's calls), medians of `repeats`.
    Most compiled models settle within the burst's untimed lead; one whose speed still depends on what ran before
    it (float8 weight-only on a CPU: 6.5 ms per call after the baseline, 6.0 after 12 calls, 5.2 after a second)
    reads slower in the first."""
    window = window or host_window()
    one = max(per_call_ms / 1e3, 1e-9)
    lead, n = (max(1, math.ceil(s / one - 1e-6)) for s in (policy.lead_s, policy.burst_s))
    switched, settled = [], []
    for _ in range(repeats):
        other()
        switched.append(window.run(fn, lead, n))
        settled.append(window.run(fn, max(lead, math.ceil(SETTLE_S / one)), n))
    return statistics.median(switched), statistics.median(settled)


@dataclass(frozen=True)
class Settling:
    """How a function's bursts are led in rounds: the untimed lead, and the check that chose it."""

    lead_s: float
    switched_ms: float  # ms per call of a burst right after another function's, with the policy's lead
    settled_ms: float  # the same burst after SETTLE_S more of its own calls
    lengthened: bool  # the lead is SETTLE_S: with the policy's, a burst read slower right after a switch


def settling(fn: Callable[[], Any], other: Callable[[], Any], per_call_ms: float, policy: TimingPolicy = TimingPolicy(),
             window: Window | None = None) -> Settling:
    """The untimed lead fn's bursts need in rounds: the policy's when a burst right after `other` reads as a settled
    one does (most compiled models), else SETTLE_S, so that a sample times fn's steady state even when its speed
    depends on what ran before it (float8 weight-only on a CPU). About 0.5 s, once per side."""
    if per_call_ms <= 0:  # a clock that did not move (a test's) can't size the bursts
        return Settling(policy.lead_s, 0.0, 0.0, False)
    switched, settled = after_switch(fn, other, per_call_ms, policy, window)
    slow = switched > settled * (1 + STEADY_REL)
    return Settling(max(policy.lead_s, SETTLE_S) if slow else policy.lead_s, switched, settled, slow)


def time_paired(fn_a: Callable[[], Any], fn_b: Callable[[], Any], policy: TimingPolicy = TimingPolicy(),
                clock: Clock = time.perf_counter, sync: Callable[[], None] = no_sync) -> tuple[Measurement, Measurement]:
    """`time_interleaved` of two functions."""
    a, b = time_interleaved([fn_a, fn_b], policy, clock, sync)
    return a, b


def time_once(fn: Callable[[], Any], clock: Clock = time.perf_counter, sync: Callable[[], None] = no_sync) -> tuple[Any, float]:
    """One call's result and its seconds (used for compile + first call)."""
    sync()
    t0 = clock()
    out = fn()
    sync()
    return out, clock() - t0


# ---- accuracy -----------------------------------------------------------------------------

def tensors_of(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a nested output or input: tensors, tuples/lists, dicts (HF ModelOutput is a dict)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensors_of(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from tensors_of(v)


def flat_output(out: Any) -> torch.Tensor:
    """All floating tensors of a model's output (tensor, tuple, dict, HF ModelOutput) as one fp64 vector."""
    parts = [t.detach().reshape(-1).to("cpu", torch.float64) for t in tensors_of(out) if t.is_floating_point()]
    if not parts:
        raise ValueError("the model's output holds no floating-point tensor to compare")
    return torch.cat(parts)


@dataclass(frozen=True)
class Accuracy:
    sqnr_db: float | None  # signal-to-quantization-noise ratio; None when identical (infinite)
    cosine: float
    max_abs_err: float


def accuracy(reference: Any, output: Any) -> Accuracy:
    ref, out = flat_output(reference), flat_output(output)
    if ref.shape != out.shape:
        raise ValueError(f"output shape changed: {tuple(ref.shape)} vs {tuple(out.shape)}")
    noise = torch.linalg.vector_norm(ref - out).item()
    signal = torch.linalg.vector_norm(ref).item()
    sqnr = None if noise == 0 else (20 * math.log10(signal / noise) if signal > 0 else -math.inf)
    denom = torch.linalg.vector_norm(ref) * torch.linalg.vector_norm(out)
    cosine = 1.0 if denom == 0 and noise == 0 else float((ref @ out / denom).item()) if denom > 0 else 0.0
    return Accuracy(sqnr, cosine, float((ref - out).abs().max().item()) if ref.numel() else 0.0)


# ---- size and memory ------------------------------------------------------------------------

def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor really holds; torchao's subclasses are opened up to their packed parts."""
    if hasattr(t, "__tensor_flatten__") and type(t) not in (torch.Tensor, nn.Parameter):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names if isinstance(getattr(t, n), torch.Tensor))
    return t.numel() * t.element_size()


def packed_bytes(model: nn.Module) -> int:
    """Bytes torch.ao's quantized Linears hold outside parameters and buffers: their int8 weight and bias live in
    a packed C++ object (`_packed_params`), which parameters() never shows."""
    total = 0
    for m in model.modules():
        if isinstance(getattr(m, "_packed_params", None), torch.ScriptObject) and hasattr(m, "_weight_bias"):
            weight, bias = m._weight_bias()
            parts = [weight] + ([] if bias is None else [bias])
            if weight.is_quantized and weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                parts += [weight.q_per_channel_scales(), weight.q_per_channel_zero_points()]
            total += sum(t.numel() * t.element_size() for t in parts)
    return total


def weight_bytes(model: nn.Module, skip: set[int] = frozenset()) -> int:
    """Bytes of every parameter and buffer (each counted once), but those whose id is in `skip`, and of
    torch.ao's packed weights."""
    seen: set[int] = set(skip)
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += tensor_bytes(t)
    return total + packed_bytes(model)


def streamed_weight_bytes(model: nn.Module) -> int:
    """Weight and buffer bytes one step reads: an embedding table is looked up (a few rows), not streamed,
    unless another layer (a tied lm_head) reads the same tensor whole."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    read_whole = {id(m.weight) for m in model.modules() if not isinstance(m, nn.Embedding) and
                  isinstance(getattr(m, "weight", None), torch.Tensor)}
    return weight_bytes(model, skip=tables - read_whole)


def _proc_status_kb(field: str) -> int | None:
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    return None


def _settle_heap() -> None:
    """Free what is already garbage and hand free heap pages back to the OS, before RSS is read.

    Otherwise garbage of earlier work (tensors in reference cycles) can be collected inside the measured
    block: RSS falls, the block's own allocation grows it back, and the peak growth reads 0.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # malloc_trim is glibc's alone
        ctypes.CDLL(None).malloc_trim(0)  # the process's own symbols: no library search (find_library forks)


class PeakMemory:
    """Peak memory of the block: CUDA allocated/reserved, or on CPU the growth of peak RSS."""

    def __init__(self, device: str):
        self.device = device
        self.peak_bytes: int | None = None
        self.reserved_bytes: int | None = None

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            _settle_heap()
            # Writing 5 to clear_refs resets VmHWM (peak RSS) to the current RSS (Linux >= 4.0).
            with contextlib.suppress(OSError):
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            self._rss0 = _proc_status_kb("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated()
            self.reserved_bytes = torch.cuda.max_memory_reserved()
        else:
            hwm = _proc_status_kb("VmHWM")
            if hwm is not None and self._rss0 is not None:
                self.peak_bytes = max(0, hwm - self._rss0) * 1024
        return False


# ---- distance to the memory roofline --------------------------------------------------------

def copy_buffer_mib(cache_bytes: int | None) -> int:
    """A copy buffer several times the last-level cache, so the copy measures memory, not the cache."""
    return max(256, math.ceil(4 * (cache_bytes or 0) / 2**20))


def copy_bandwidth_gbs(device: str, mib: int = 256, policy: TimingPolicy | None = None) -> float:
    """The device's achievable copy bandwidth, counting bytes read plus written (GB/s)."""
    n = mib * 1024 * 1024 // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    # Every sample repeats the copy untimed first, and on a 504 MiB-L3 Xeon the buffer is 2 GiB: five samples read
    # 33.0-33.7 GB/s where ten read 33.9-34.4 (three of each), in 2.1 s instead of 3.6 s of every sweep's start.
    policy = policy or TimingPolicy(min_warmup=1, warmup_s=0.0, min_samples=5, max_time_s=1.0, block=5)
    m = time_calls(lambda: dst.copy_(src), policy, sync=sync_for(device))
    moved = 2 * src.numel() * src.element_size()
    return moved / (m.median_ms / 1e3) / 1e9


def activation_bytes(inputs: Any, output: Any) -> int:
    """Bytes of every tensor in the inputs and the output: what a step must read and write besides weights."""
    return sum(t.numel() * t.element_size() for t in tensors_of((inputs, output)))
