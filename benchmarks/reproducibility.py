"""Do the speedups reproduce? The demo sweep N times, each in a fresh process, beside an independent timing.

    python benchmarks/reproducibility.py --runs 5 [--load 1] [--device cpu|cuda] [--model mlp] [--modes all]

Run i is `python -m torchao_nb run --modes all` into its own folder, then, in another fresh process, the same
compiled models (same seed, same quantization: autoquant's per-layer choices read from the run's row; same
compiler settings) each timed alone, back to back, with `torch.utils.benchmark.Timer.blocked_autorange`, and
its speedup taken as baseline / mode. Prints, per mode: every run's speedup and 95 % interval, the spread
(max/min), in how many runs the interval holds the N-run median, the independent ratios, and the tool's
median speedup over the independent one. `--load K` keeps K busy processes (one core each) running throughout.

Criteria (exit 1 when one fails): for every mode that ran, the interval holds the N-run median in at least
80 % of the runs; the spread is at most 1.15 (or, when the independent timing itself spreads more between
fresh processes, at most that spread: the machine moved, not the tool); the tool's median speedup is within
10 % of the independent median; the A/A (noquant) reads 0.95-1.05 in every run.
"""

from __future__ import annotations

import argparse
import json
import math
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

SPREAD_MAX = 1.15
AGREE_REL = 0.10
COVERAGE_MIN = 0.8
AA_BOUNDS = (0.95, 1.05)
INDEPENDENT_REPEATS = 3  # each model's blocked_autorange, in turns, so a drift shows as a spread, not a bias


def _spin(stop) -> None:
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


# ---- the independent timing (runs in a fresh process of its own) ------------------------------------

def independent(run_dir: Path, min_run_time: float) -> dict[str, float]:
    """mode → median ms per call of the run's models, rebuilt here and timed alone with torch.utils.benchmark."""
    import copy

    import torch
    from torch.utils import benchmark

    from torchao_nb import autoquant, compiling, config, env, models, modes
    from torchao_nb.reference import ModelSource
    from torchao_nb.results import ResultSet

    rs = ResultSet.load(run_dir)
    ok = [r for r in rs.rows if r.status == "ok"]
    first = ok[0]
    cfg = config.build([r.mode for r in ok], False, False, device=first.device, dtype=first.dtype,
                       batch_sizes=[first.batch_size], threads=first.threads, compile=first.compile,
                       baseline=first.baseline, compile_mode=first.compile_mode or "default",
                       tuning=first.tuning)
    torch.set_num_threads(cfg.threads)
    info = env.device_info(cfg.device)
    source = ModelSource(first.model)
    module, inputs, _ = source.build(cfg, first.batch_size)
    settings = source.compile_settings(cfg)
    fns = {}
    with torch.no_grad(), compiling.maybe_compiled(settings):
        fns["baseline"] = compiling.compiled(copy.deepcopy(module), settings, "baseline")
        for r in ok:
            model = copy.deepcopy(module)
            if r.mode == "autoquant":
                layers = r.extra_dict["autoquant"]["layers"]
                autoquant.apply_choices(model, {d["layer"]: d["choice"] for d in layers}, info, cfg.dtype)
            else:
                modes.quantize(model, modes.get(r.mode), info, cfg.dtype, inputs,
                               modes.ApplyContext(device=cfg.device, compile=settings))
            fns[r.mode] = compiling.compiled(model, settings, r.mode)
        times: dict[str, list[float]] = {name: [] for name in fns}
        for name, fn in fns.items():
            models.call(fn, inputs)  # compile and first call
        for _ in range(INDEPENDENT_REPEATS):
            for name, fn in fns.items():
                timer = benchmark.Timer("call(fn, inputs)", globals=dict(call=models.call, fn=fn, inputs=inputs),
                                        num_threads=cfg.threads)
                if cfg.device == "cuda":
                    torch.cuda.synchronize()
                times[name].append(timer.blocked_autorange(min_run_time=min_run_time).median * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


# ---- the runs and the verdict -------------------------------------------------------------------------

def _run(i: int, root: Path, args) -> tuple[dict, dict[str, float], float]:
    from torchao_nb.results import ResultSet

    out = root / f"run{i}"
    t0 = time.perf_counter()
    py_env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torchao_nb", "run", "--model", args.model, "--modes", args.modes,
           "--device", args.device, "--quiet", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=py_env)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"run {i} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    rows = {r.mode: r for r in ResultSet.load(out).rows if r.status == "ok"}
    # the same memory as the sweep's worker gives its models (executors.HUGE_PAGES_ENV)
    from torchao_nb.executors import HUGE_PAGES_ENV

    done = subprocess.run([sys.executable, __file__, "--independent", str(out), "--min-run-time", str(args.min_run_time)],
                          capture_output=True, text=True, env=HUGE_PAGES_ENV | py_env)
    if done.returncode != 0:
        raise SystemExit(f"independent timing of run {i} failed:\n{done.stderr[-3000:]}")
    return rows, json.loads(done.stdout.strip().splitlines()[-1]), wall


def verdict(runs: list[tuple[dict, dict[str, float]]]) -> tuple[list[str], bool]:
    """The per-mode lines and whether every criterion held."""
    lines, ok = [], True
    modes = [m for m in runs[0][0] if all(m in rows for rows, _ in runs)]
    n = len(runs)
    indep_all = {m: [t["baseline"] / t[m] for _, t in runs if m in t] for m in modes}
    for mode in modes:
        rows = [r[mode] for r, _ in runs]
        sp = [r.speedup for r in rows]
        med = statistics.median(sp)
        covered = sum(r.speedup_lo <= med <= r.speedup_hi for r in rows)
        spread = max(sp) / min(sp)
        ind = indep_all[mode]
        ind_spread = max(ind) / min(ind) if ind else math.nan
        agree = med / statistics.median(ind) if ind else math.nan
        fails = []
        if covered < math.ceil(COVERAGE_MIN * n):
            fails.append(f"coverage {covered}/{n}")
        if spread > max(SPREAD_MAX, ind_spread):
            fails.append(f"spread {spread:.3f}")
        if not abs(agree - 1) <= AGREE_REL:
            fails.append(f"tool/independent {agree:.3f}")
        if mode == "noquant" and not all(AA_BOUNDS[0] <= v <= AA_BOUNDS[1] for v in sp):
            fails.append("A/A outside 0.95-1.05")
        ok &= not fails
        each = ", ".join(f"{r.speedup:.3f} [{r.speedup_lo:.3f}-{r.speedup_hi:.3f}]" for r in rows)
        lines.append(f"{mode}: {each}\n    median {med:.3f}, spread {spread:.3f}, interval holds the median in "
                     f"{covered}/{n}; independent {', '.join(f'{v:.3f}' for v in ind)} (spread {ind_spread:.3f}); "
                     f"tool/independent {agree:.3f}  {'FAIL: ' + ', '.join(fails) if fails else 'ok'}")
    return lines, ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--load", type=int, default=0, help="busy processes running alongside (each takes one core)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="mlp")
    p.add_argument("--modes", default="all")
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds of each blocked_autorange")
    p.add_argument("--out", default=None, help="keep the runs' folders here (default: a temporary folder)")
    p.add_argument("--independent", default=None, help=argparse.SUPPRESS)  # internal: one run's independent timing
    args = p.parse_args()
    if args.independent:
        print(json.dumps(independent(Path(args.independent), args.min_run_time)))
        return 0
    from torchao_nb import env
    from torchao_nb.extras import TimingNotes

    root = Path(args.out or tempfile.mkdtemp(prefix="repro-"))
    stop = multiprocessing.Event()
    load = [multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(args.load)]
    for proc in load:
        proc.start()
    runs = []
    try:
        for i in range(args.runs):
            rows, indep, wall = _run(i, root, args)
            runs.append((rows, indep))
            base = [r.baseline_ms for r in rows.values() if r.baseline_ms]
            seen = [x for r in rows.values() if (t := r.extra_of(TimingNotes)) and t.base_range_ms
                    for x in t.base_range_ms] + base
            print(f"run {i}: sweep {wall:.0f} s, base ms {min(base):.3f}-{max(base):.3f} across its cells "
                  f"({min(seen):.3f}-{max(seen):.3f} over its rounds); " + ", ".join(
                f"{m} {r.speedup:.3f} (indep {indep['baseline'] / indep[m]:.3f})" for m, r in rows.items()), flush=True)
    finally:
        stop.set()
        for proc in load:
            proc.join(5)
    lines, ok = verdict(runs)
    print(f"\n{args.model} on {args.device}: {env.cpu_model() if args.device == 'cpu' else env.device_info('cuda').name}, "
          f"{os.cpu_count()} cores, load: {args.load} busy process(es), {args.runs} runs, folders in {root}")
    print("\n".join(lines))
    print(f"{'PASS' if ok else 'FAIL'}: coverage >= {COVERAGE_MIN:.0%} of runs, spread <= {SPREAD_MAX} (or the "
          f"independent spread), within {AGREE_REL:.0%} of torch.utils.benchmark, A/A {AA_BOUNDS[0]}-{AA_BOUNDS[1]}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
