"""Does the A/A control hold? The full demo sweep N times, each in a fresh process, optionally under a CPU load.

    python benchmarks/aa_stability.py --runs 5 [--load 1] [--modes all] [--model mlp]

Each run is `python -m torchao_nb run --modes all --device cpu` into its own folder; the noquant row's
speedup (noquant against the compiled baseline: the same model) is the A/A ratio and must read
1.00 ± 0.05. `--load K` starts K busy processes (one core each) for the duration, as a user's other work
or a shared CI box would, and stops them after. Prints every A/A with its 95 % interval, the spread,
the wall time of each run, and PASS/FAIL.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from torchao_nb import env  # noqa: E402
from torchao_nb.results import ResultSet  # noqa: E402

BOUNDS = (0.95, 1.05)


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--load", type=int, default=0, help="busy processes running alongside (each takes one core)")
    p.add_argument("--modes", default="all")
    p.add_argument("--model", default="mlp")
    p.add_argument("--out", default=None, help="keep the runs' folders here (default: a temporary folder)")
    args = p.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="aa-"))
    stop = multiprocessing.Event()
    load = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.load)]
    for proc in load:
        proc.start()
    values, lines = [], []
    try:
        for i in range(args.runs):
            out = root / f"run{i}"
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "torchao_nb", "run", "--model", args.model, "--modes", args.modes,
                                   "--device", "cpu", "--quiet", "--out", str(out)], capture_output=True, text=True,
                                  env=dict(os.environ, PYTHONPATH=str(ROOT)))
            wall = time.perf_counter() - t0
            if done.returncode != 0:
                print(done.stdout[-2000:], done.stderr[-2000:])
                return 1
            row = ResultSet.load(out).where(mode="noquant").rows[0]
            values.append(row.speedup)
            lines.append(f"run {i}: A/A {row.speedup:.3f} (95 % interval {row.speedup_lo:.3f}-{row.speedup_hi:.3f}), "
                         f"{row.samples} rounds, wall {wall:.0f} s")
            print(lines[-1], flush=True)
    finally:
        stop.set()
        for proc in load:
            proc.join(5)
    inside = all(BOUNDS[0] <= v <= BOUNDS[1] for v in values)
    print(f"cpu: {env.cpu_model()}, {os.cpu_count()} cores, load: {args.load} busy process(es)")
    print(f"A/A values: {', '.join(f'{v:.3f}' for v in values)}; median {statistics.median(values):.3f}, "
          f"spread {max(values) - min(values):.3f}")
    print(f"{'PASS' if inside else 'FAIL'}: every A/A within {BOUNDS[0]}-{BOUNDS[1]}")
    return 0 if inside else 1


if __name__ == "__main__":
    raise SystemExit(main())
