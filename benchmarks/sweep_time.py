"""Wall time of the demo sweep cold, warm (inductor caches), and resumed (result cache).

    python benchmarks/sweep_time.py [--modes all] [--model mlp]

Each run is a fresh `python -m torchao_nb run` process. Cold uses an empty inductor cache folder;
warm re-uses it; resume re-uses the results folder with --resume (nothing left to measure).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from torchao_nb.results import ResultSet


def run(out: str, cache: str, extra: list[str], args) -> tuple[float, ResultSet]:
    envv = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TRITON_CACHE_DIR=os.path.join(cache, "triton"))
    cmd = [sys.executable, "-m", "torchao_nb", "run", "--model", args.model, "--modes", args.modes, "--device", args.device,
           "--quiet", "--out", out, *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=envv, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0, ResultSet.load(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="mlp")
    p.add_argument("--modes", default="all")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "inductor")
        results = [("cold", *run(os.path.join(tmp, "a"), cache, [], args)),
                   ("warm (inductor cache)", *run(os.path.join(tmp, "b"), cache, [], args)),
                   ("resume (result cache)", *run(os.path.join(tmp, "b"), cache, ["--resume"], args))]
    print(f"{'run':24s} {'wall s':>8s} {'sum compile_s':>14s} {'rows':>5s}")
    for name, wall, rs in results:
        compile_s = sum(r.compile_s or 0 for r in rs)
        print(f"{name:24s} {wall:8.1f} {compile_s:14.1f} {len(rs):5d}")
    cold, warm = results[0][1], results[1][1]
    print(f"warm speed-up over cold: {cold / warm:.2f}x")


if __name__ == "__main__":
    main()
