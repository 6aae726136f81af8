"""What running autoquant's candidates in a child process (crash isolation) costs the search.

    python benchmarks/autoquant_sandbox.py --repeat 2

Searches the demo model (mlp, bf16, batch 1, compiled, no timing cache) with each shape's candidates in a
child of executors.Zygote and right here, alternating, and prints each search's time and the overhead of
the median. Exits 1 when the overhead is 10 % or more.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from torchao_nb import autoquant, compiling, models, sandbox  # noqa: E402

TARGET = 0.10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--model", default="mlp")
    args = parser.parse_args()
    zygote = sandbox.Zygote()  # before any torch work, as the worker makes it

    import torch

    from torchao_nb import env, measure
    from torchao_nb.modes import ApplyContext

    spec = models.get(args.model)
    module, inputs = spec.build("cpu", torch.bfloat16, 1, None)
    info = env.device_info("cpu")
    settings = compiling.CompileSettings(enabled=True)
    times: dict[str, list[float]] = {"child process": [], "in process": []}
    with tempfile.TemporaryDirectory() as cache, torch.no_grad():
        for r in range(args.repeat):
            for name, sandbox in (("child process", zygote.call), ("in process", None))[:: 1 if r % 2 == 0 else -1]:
                ctx = ApplyContext("cpu", compile=settings, policy=measure.TimingPolicy(),
                                   settings=autoquant.SearchSettings(cache_dir=cache, use_cache=False), sandbox=sandbox)
                table = autoquant.search(module, info, torch.bfloat16, inputs, ctx)
                times[name].append(table["search_s"])
                print(f"run {r + 1}: {name:14s} {table['search_s']:6.1f} s", flush=True)
    child, here = (statistics.median(times[k]) for k in ("child process", "in process"))
    overhead = child / here - 1
    print(f"median: child process {child:.1f} s, in process {here:.1f} s, overhead {overhead:+.1%} "
          f"(target < {TARGET:.0%})")
    return 0 if overhead < TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
