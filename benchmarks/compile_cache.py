"""The compile phase of a cold sweep, and of a cold sweep that carries the first one's compile-cache.bin, or
(with --compile-workers N) of a cold sweep whose cells N helper processes compile first.

    python benchmarks/compile_cache.py [--modes all] [--model mlp] [--repeats 2] [--quick] [--compile-workers N]

Each run is a fresh `python -m torchao_nb run` process whose inductor and torchao_nb caches
(TORCHINDUCTOR_CACHE_DIR, TRITON_CACHE_DIR, TORCHAO_NB_CACHE_DIR) are empty folders: "cold" compiles
everything; "carried" starts as cold, with `--compile-cache` pointing at the cold run's file. The compile
phase is the sum of the rows' compile_s (each cell's first call) and, where autoquant searches, its
quantize_s (its candidates compile there); the wall time is the whole command's. Only run it on a quiet
machine: the load average is printed with each run. With --compile-workers, each pair also prints every mode's
speedup and interval in both runs: helpers only compile, so the speedups must agree within their intervals.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from torchao_nb import compile_cache, env
from torchao_nb.results import ResultSet


def run(work: Path, name: str, extra: list[str], args) -> dict:
    caches = work / f"{name}-caches"
    envv = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(caches / "inductor"), TRITON_CACHE_DIR=str(caches / "triton"),
                TORCHAO_NB_CACHE_DIR=str(caches / "torchao_nb"))
    out = work / name
    cmd = [sys.executable, "-m", "torchao_nb", "run", "--model", args.model, "--modes", args.modes, "--device", "cpu",
           "--quiet", "--save-compile-cache", "--out", str(out), *(["--quick"] if args.quick else []), *extra]
    load = Path("/proc/loadavg").read_text().split()[0]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=envv, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    rows = ResultSet.load(out).rows
    return dict(name=name, wall_s=wall, load=load, out=out, rows=len(rows), table=rows,
                compile_s=sum(r.compile_s or 0 for r in rows),
                search_s=sum(r.quantize_s or 0 for r in rows if r.mode == "autoquant"),
                hits=sum("hit" in r.fx_cache for r in rows), ok=sum(r.status == "ok" for r in rows))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="mlp")
    p.add_argument("--modes", default="all")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="the --quick timing policy (the compile phase is the same)")
    p.add_argument("--compile-workers", type=int, default=0,
                   help="compare a cold sweep with this many compile helpers against one without (not a carried cache)")
    args = p.parse_args()
    print(f"CPU: {env.cpu_model()}, {os.cpu_count()} cores; model {args.model}, modes {args.modes}"
          f"{', --quick' if args.quick else ''}")
    print(f"{'run':10s} {'load':>5s} {'wall s':>7s} {'compile_s':>9s} {'aq search s':>11s} {'ok':>3s} {'hits':>4s}")
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            cold = run(work, "cold", [], args)
            if args.compile_workers:
                helped = run(work, f"helpers={args.compile_workers}", ["--compile-workers", str(args.compile_workers)],
                             args)
                _compare(i, cold, helped)
                continue
            path = cold["out"] / compile_cache.FILE_NAME
            carried = run(work, "carried", ["--compile-cache", str(path)], args)
            size = path.stat().st_size
            for r in (cold, carried):
                print(f"{r['name']:10s} {r['load']:>5s} {r['wall_s']:7.1f} {r['compile_s']:9.1f} {r['search_s']:11.1f} "
                      f"{r['ok']:3d} {r['hits']:4d}")
            counts = compile_cache.read(path).valid_for["artifacts"]
            print(f"repeat {i + 1}: {path.name} {size / 2**20:.1f} MiB {counts}; carried/cold: compile_s "
                  f"{carried['compile_s'] / cold['compile_s']:.2f}x, compile_s + search "
                  f"{(carried['compile_s'] + carried['search_s']) / (cold['compile_s'] + cold['search_s']):.2f}x, "
                  f"wall {carried['wall_s'] / cold['wall_s']:.2f}x")


def _compare(i: int, cold: dict, helped: dict) -> None:
    for r in (cold, helped):
        print(f"{r['name']:10s} {r['load']:>5s} {r['wall_s']:7.1f} {r['compile_s']:9.1f} {r['search_s']:11.1f} "
              f"{r['ok']:3d} {r['hits']:4d}")
    both = {r.mode: [r] for r in cold["table"] if r.status == "ok"}
    for r in helped["table"]:
        if r.mode in both and r.status == "ok":
            both[r.mode].append(r)
    agree = []
    for mode, (a, *b) in both.items():
        if b:
            b = b[0]
            same = a.speedup_lo <= b.speedup <= a.speedup_hi or b.speedup_lo <= a.speedup <= b.speedup_hi
            agree.append(same)
            print(f"    {mode:20s} {a.speedup:.3f} [{a.speedup_lo:.3f}-{a.speedup_hi:.3f}]  "
                  f"{b.speedup:.3f} [{b.speedup_lo:.3f}-{b.speedup_hi:.3f}]  {'agree' if same else 'DIFFER'}")
    print(f"repeat {i + 1}: wall {helped['wall_s'] / cold['wall_s']:.2f}x with helpers; speedups agree within their "
          f"intervals in {sum(agree)}/{len(agree)} modes")


if __name__ == "__main__":
    main()
