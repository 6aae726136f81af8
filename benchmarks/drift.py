"""Does the machine move under a cell? One process, the same compiled copies, the same cell measured again and again.

    python benchmarks/drift.py [--modes int8dynamic,int4weightonly] [--repeats 6]

Builds the demo MLP, five compiled copies of the unquantized model and five of each mode, then measures each
mode against the baseline exactly as a cell does (`measure.time_interleaved` over both sides' copies,
`ratios.paired_ratio`), in turn, `--repeats` times. Nothing changes between repeats but time, so a spread of the
speedups wider than their intervals is the machine moving on a time scale longer than a cell (other tenants of a
shared last-level cache, clocks): no single cell's interval can cover that. Prints each measurement and, per
mode, the spread of the speedups and of the baseline's ms. On a 2-core AMD EPYC VM (32 MiB L3) on 2026-12-03:
baseline 2.72-4.03 ms, int8dynamic 1.37-1.81x, int4weightonly 3.86-5.23x in 140 s, each interval +-3-5 %.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from torchao_nb import compiling, env, measure, modes, ratios  # noqa: E402
from torchao_nb.models import mlp  # noqa: E402

COPIES = measure.TimingPolicy().replicates


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--modes", default="int8dynamic,int4weightonly")
    p.add_argument("--repeats", type=int, default=6)
    args = p.parse_args()
    torch.manual_seed(0)
    model = mlp.init_small(mlp.MLP(dim=1024, hidden=2816, blocks=2)).to(torch.bfloat16).eval()
    x = torch.randn(1, 1024, dtype=torch.bfloat16)
    info, settings, policy = env.device_info("cpu"), compiling.CompileSettings(), measure.TimingPolicy()
    names = args.modes.split(",")
    with torch.no_grad(), compiling.compiled_cell(settings):
        def copies(m):
            fns = [compiling.compiled(copy.deepcopy(m), settings, "copy") for _ in range(COPIES)]
            for fn in fns:
                fn(x)
            return fns

        base = copies(model)
        quantized = {}
        for name in names:
            m = copy.deepcopy(model)
            modes.quantize(m, modes.get(name), info, torch.bfloat16, (x,), modes.ApplyContext())
            quantized[name] = copies(m)
        print(f"{env.cpu_model()}, {torch.get_num_threads()} threads, {COPIES} copies per side")
        seen: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        start = time.perf_counter()
        for _ in range(args.repeats):
            for name in names:
                calls = [lambda f=f: f(x) for f in base + quantized[name]]
                t = measure.time_interleaved(calls, policy, sides=[list(range(COPIES)), list(range(COPIES, 2 * COPIES))])
                r = ratios.paired_ratio(t[:COPIES], t[COPIES:])
                base_ms = ratios.per_round(t[:COPIES]).median_ms
                seen[name].append((r.value, base_ms))
                print(f"{time.perf_counter() - start:6.1f} s  {name:16s} base {base_ms:.3f} ms  "
                      f"mode {ratios.per_round(t[COPIES:]).median_ms:.3f} ms  speedup {r.value:.3f} [{r.lo:.3f}-{r.hi:.3f}]",
                      flush=True)
    for name, got in seen.items():
        sp, ms = [g[0] for g in got], [g[1] for g in got]
        print(f"{name}: speedup {min(sp):.3f}-{max(sp):.3f} (spread {max(sp) / min(sp):.3f}), "
              f"base {min(ms):.3f}-{max(ms):.3f} ms (spread {max(ms) / min(ms):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
