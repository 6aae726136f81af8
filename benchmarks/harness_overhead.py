"""Does torchao_nb's timer agree with torch.utils.benchmark? Interleaved medians on one compiled model.

    python benchmarks/harness_overhead.py [--model mlp] [--rounds 10]

Prints, per round, torchao_nb's median and Timer.adaptive_autorange()'s median; then the spread
of torchao_nb's five repeated measurements of the same cell (relative IQR of the medians);
then the spread of five repeated *interleaved* A/A ratios (two compiled copies of the model timed
in alternating samples, as the sweep times a mode against its baseline); the last line is
`ratio=` (median of torchao_nb / Timer over the rounds). Targets: ratio within 0.95–1.05 and
relative IQR under 5 %. On a VM whose speed drifts, absolute medians can spread more than that;
the interleaved ratio is what the sweep's speedups rest on (the median of round-by-round ratios, rounds
rotating which function goes first).
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch
from torch.utils import benchmark

from torchao_nb import env, measure, models, ratios
from torchao_nb._torchao import quiet_logs


def _rel_iqr(values: list[float]) -> float:
    q = statistics.quantiles(values, n=4, method="inclusive")
    return (q[2] - q[0]) / statistics.median(values)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=models.DEFAULT_MODEL)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    device = env.resolve_device(args.device)
    dtype = env.default_dtype(env.device_info(device))
    threads = torch.get_num_threads()
    spec = models.get(args.model)
    module, inputs = spec.build(device, dtype, 1, spec.seq_len)
    with torch.no_grad(), quiet_logs():
        fn = torch.compile(module)
        models.call(fn, inputs)
        call = lambda: models.call(fn, inputs)  # noqa: E731
        sync = measure.sync_for(device)
        ours, theirs = [], []
        timer = benchmark.Timer(stmt="call()", globals={"call": call}, num_threads=threads)
        # Short rounds in alternating order: this VM's speed drifts by tens of percent over seconds, so the
        # two timers are compared round by round, each going first half of the time.
        for i in range(args.rounds):
            measure_ours = lambda: measure.time_calls(call, measure.TimingPolicy(max_time_s=0.5), sync=sync)  # noqa: E731
            measure_theirs = lambda: timer.adaptive_autorange(min_run_time=0.5)  # noqa: E731
            if i % 2:
                t, m = measure_theirs(), measure_ours()
            else:
                m, t = measure_ours(), measure_theirs()
            ours.append(m.median_ms)
            theirs.append(t.median * 1e3)
            print(f"round {i}: torchao_nb {m.median_ms:.4f} ms (IQR {m.iqr_ms:.4f}, {len(m.samples_ms)} samples x "
                  f"{m.calls_per_sample})   torch.utils.benchmark {t.median * 1e3:.4f} ms (IQR {t.iqr * 1e3:.4f})")
        twin = torch.compile(copy.deepcopy(module))
        models.call(twin, inputs)
        aa, intervals = [], []
        for _ in range(5):
            a, b = measure.time_paired(call, lambda: models.call(twin, inputs), measure.TimingPolicy(), sync=sync)
            r = ratios.paired_ratio(a, b)  # round-by-round ratios, as the sweep's speedups
            aa.append(r.value)
            intervals.append(f"{r.lo:.3f}-{r.hi:.3f}")
    rel_iqr = _rel_iqr(ours)
    ratio = statistics.median(a / b for a, b in zip(ours, theirs))
    print(f"device={device} dtype={env.dtype_name(dtype)} threads={threads} model={args.model}")
    print(f"repeated torchao_nb medians: {', '.join(f'{v:.4f}' for v in ours)} ms; relative IQR {100 * rel_iqr:.2f}%")
    print(f"repeated interleaved A/A ratios: {', '.join(f'{v:.3f}' for v in aa)} (95 % intervals {', '.join(intervals)}); "
          f"relative IQR {100 * _rel_iqr(aa):.2f}%")
    print(f"ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
