"""What does switching between two compiled models cost a sample? The basis of TimingPolicy.lead_s and burst_s.

    python benchmarks/switching.py [--model demo|large] [--lead-s 0.01] [--burst-s 0.02] [--repeats 20]

For pairs (A, B) of the demo's compiled models (noquant, int8 and int4 weight-only), prints B's first calls
right after a burst of A, call by call, against B's steady state, and then what that costs one sample as the
sweep takes it (`--lead-s` of untimed calls, then `--burst-s` of timed ones): the sample after a switch over
a sample after a sample of B itself. `--model large` uses LLaMA-8B-shaped feed-forward blocks (705 MB of bf16
weights: more than most last-level caches). PASS when every switch costs a sample under 2 %.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from torchao_nb import compiling, env, measure, modes  # noqa: E402
from torchao_nb.models import mlp  # noqa: E402

LIMIT = 0.02
SHAPES = {"demo": dict(dim=1024, hidden=2816, blocks=2), "large": dict(dim=4096, hidden=14336, blocks=2)}


def per_call(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(SHAPES), default="demo")
    p.add_argument("--lead-s", type=float, default=measure.TimingPolicy().lead_s)
    p.add_argument("--burst-s", type=float, default=measure.TimingPolicy().burst_s)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    torch.manual_seed(0)
    shape = SHAPES[args.model]
    model = mlp.init_small(mlp.MLP(**shape)).to(torch.bfloat16).eval()
    x = torch.randn(1, shape["dim"], dtype=torch.bfloat16)
    info, settings = env.device_info("cpu"), compiling.CompileSettings()
    policy = measure.TimingPolicy(lead_s=args.lead_s, burst_s=args.burst_s)
    window = measure.host_window()
    ok = True
    with torch.no_grad(), compiling.compiled_cell(settings):
        fns = {}
        for name in ("noquant", "int8weightonly", "int4weightonly"):
            m = copy.deepcopy(model)
            if name != "noquant":
                modes.quantize(m, modes.get(name), info, torch.bfloat16, (x,), modes.ApplyContext())
            fn = compiling.compiled(m, settings, name)
            for _ in range(5):
                fn(x)
            fns[name] = lambda fn=fn: fn(x)
        one = {name: statistics.median(per_call(f, 10)) / 1e3 for name, f in fns.items()}
        shape_of = {n: [max(1, round(s / one[n] + 0.5)) for s in (policy.lead_s, policy.burst_s)] for n in fns}
        print(f"{args.model}: {env.cpu_model()}; lead {args.lead_s * 1e3:.0f} ms, burst {args.burst_s * 1e3:.0f} ms; "
              + ", ".join(f"{n} {one[n] * 1e3:.3f} ms/call ({lead}+{burst} calls)" for n, (lead, burst) in shape_of.items()))
        for a, b in [("noquant", "int4weightonly"), ("int4weightonly", "noquant"),
                     ("noquant", "int8weightonly"), ("int8weightonly", "noquant")]:
            first, switched, steady = [], [], []
            for _ in range(args.repeats):
                window.run(fns[a], *shape_of[a])
                first.append(per_call(fns[b], 8))
                window.run(fns[a], *shape_of[a])
                switched.append(window.run(fns[b], *shape_of[b]))
                steady.append(window.run(fns[b], *shape_of[b]))
            calls = [statistics.median(c[i] for c in first) for i in range(8)]
            cost = statistics.median(switched) / statistics.median(steady) - 1
            ok &= cost < LIMIT
            print(f"  {a} -> {b}: first calls {' '.join(f'{c:.3f}' for c in calls)} ms; a sample after the switch "
                  f"{cost:+.1%} over a steady one")
    print(f"{'PASS' if ok else 'FAIL'}: every switch costs a sample under {LIMIT:.0%}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
