"""Does torchao_nb's timer agree with torch.utils.benchmark? Interleaved medians on one compiled model.

    python benchmarks/harness_overhead.py [--model mlp] [--rounds 5]

Prints, per round, torchao_nb's median and Timer.adaptive_autorange()'s median; then the spread
of torchao_nb's five repeated measurements of the same cell (relative IQR of the medians);
the last line is `ratio=` (median of torchao_nb / Timer over the rounds). Targets: ratio within
0.95–1.05 and relative IQR under 5 %.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch.utils import benchmark

from torchao_nb import env, measure, models
from torchao_nb._torchao import quiet_logs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=models.DEFAULT_MODEL)
    p.add_argument("--rounds", type=int, default=5)
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
        for i in range(args.rounds):
            m = measure.time_calls(call, measure.TimingPolicy(), sync=sync)
            t = timer.adaptive_autorange(min_run_time=1.0)
            ours.append(m.median_ms)
            theirs.append(t.median * 1e3)
            print(f"round {i}: torchao_nb {m.median_ms:.4f} ms (IQR {m.iqr_ms:.4f}, {len(m.samples_ms)} samples x "
                  f"{m.calls_per_sample})   torch.utils.benchmark {t.median * 1e3:.4f} ms (IQR {t.iqr * 1e3:.4f})")
    q = statistics.quantiles(ours, n=4, method="inclusive")
    rel_iqr = (q[2] - q[0]) / statistics.median(ours)
    ratio = statistics.median(a / b for a, b in zip(ours, theirs))
    print(f"device={device} dtype={env.dtype_name(dtype)} threads={threads} model={args.model}")
    print(f"repeated torchao_nb medians: {', '.join(f'{v:.4f}' for v in ours)} ms; relative IQR {100 * rel_iqr:.2f}%")
    print(f"ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
