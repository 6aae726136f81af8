"""`--diagnose`: where one step of a compiled model spends its time, as a table of its top kernels (torch.profiler)."""

from __future__ import annotations

import functools
from typing import Any, Callable


@functools.lru_cache(maxsize=None)
def prepare_for_cuda_graphs() -> None:
    """A profiler started only after CUDA graphs were captured may miss their kernels: start one first."""
    from torch.profiler import _utils

    init = getattr(_utils, "_init_for_cuda_graphs", None)
    if init is not None:
        init()


def top_kernels(fn: Callable[[], Any], device: str, calls: int = 10, limit: int = 12) -> str | None:
    """The `limit` kernels (GPU) or operators (CPU) with the most self time over `calls` steps, per step;
    None when the profiler saw no GPU kernel (CUDA-graph replays can hide them)."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fn()
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        sync()
    wanted = DeviceType.CUDA if cuda else DeviceType.CPU
    events = [e for e in prof.key_averages() if e.device_type == wanted]

    def self_us(e) -> float:
        for name in ("self_device_time_total", "self_cuda_time_total") if cuda else ("self_cpu_time_total",):
            if hasattr(e, name):
                return float(getattr(e, name))
        return 0.0

    events = [e for e in events if self_us(e) > 0]
    if not events:
        return None
    events.sort(key=self_us, reverse=True)
    total = sum(self_us(e) for e in events)
    lines = [f"{'kernel' if cuda else 'operator':80s} {'calls/step':>10s} {'us/step':>10s} {'share':>7s}"]
    for e in events[:limit]:
        lines.append(f"{e.key[:80]:80s} {e.count / calls:10.1f} {self_us(e) / calls:10.1f} {100 * self_us(e) / total:6.1f}%")
    lines.append(f"{'total (' + str(len(events)) + ' kinds)':80s} {'':10s} {total / calls:10.1f} {100.0:6.1f}%")
    return "\n".join(lines)
