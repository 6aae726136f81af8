"""Does autoquant pay off? Latency vs the best single mode and noquant, its SQNR, and its search time cold and warm.

    python benchmarks/autoquant_search.py                 # default CPU model (mlp), bf16, compiled
    python benchmarks/autoquant_search.py --repeat 3      # the CPU is shared: see how much the figures move
    python benchmarks/autoquant_search.py --threads 1     # on a CPU other processes load: 2-thread OpenMP
                                                          # regions stall when one thread is descheduled

Each repeat uses a fresh, empty cache folder (so "cold" means no stored timings; inductor's own
compile cache may still be warm), sweeps every mode plus autoquant, then sweeps autoquant again
with the cache now warm. Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from torchao_nb import autoquant, modes as modes_mod, plots, sweep, tables  # noqa: E402

TARGETS = {"vs_best": 1.05, "vs_noquant": 1.05, "cold_s": 60.0, "warm_s": 5.0}


def one_run(args, cache_dir: str) -> dict:
    settings = {"cache_dir": cache_dir}
    if args.floor is not None:
        settings["sqnr_floor_db"] = args.floor
    common = dict(model=args.model, device=args.device, dtype=args.dtype, batch_sizes=[args.batch_size],
                  compile=args.compile, progress=False, threads=args.threads, autoquant=settings)
    modes = list(modes_mod.MODES)
    result = sweep(modes=modes, **common)
    rows = {r.mode: r for r in result}
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        result.save(args.out)
        plots.autoquant_choices(result).savefig(Path(args.out) / "autoquant_choices.png", dpi=110)
    aq = rows["autoquant"]
    if aq.status != "ok":
        raise SystemExit(f"autoquant row is {aq.status}: {aq.reason}")
    floor = aq.extra_dict["autoquant"]["sqnr_floor_db"]
    singles = {m: r for m, r in rows.items() if m != "autoquant" and r.status == "ok"}
    best = min(singles, key=lambda m: singles[m].median_ms)
    accurate = {m: r for m, r in singles.items() if r.sqnr_db is None or r.sqnr_db >= floor}
    best_acc = min(accurate, key=lambda m: accurate[m].median_ms)
    warm = next(iter(sweep(modes=["autoquant"], **common)))
    print(tables.decision_table(aq).drop(columns=["why"]).to_string(float_format=lambda v: f"{v:.3f}"))
    for m, r in rows.items():
        sqnr = "inf" if r.status == "ok" and r.sqnr_db is None else ("" if r.sqnr_db is None else f"{r.sqnr_db:.1f}")
        ms = "" if r.median_ms is None else f"{r.median_ms:.3f}"
        print(f"  {m:17s} {r.status:8s} {ms:>8s} ms  SQNR {sqnr:>5s} dB  {r.reason[:60]}")
    return {
        "autoquant_ms": aq.median_ms, "best": best, "best_ms": singles[best].median_ms,
        "best_accurate": best_acc, "best_accurate_ms": accurate[best_acc].median_ms,
        "noquant_ms": rows["noquant"].median_ms, "sqnr_db": aq.sqnr_db, "floor_db": floor,
        "cold_s": aq.search_s, "warm_s": warm.search_s, "warm_hits": warm.extra_dict["autoquant"]["cache"]["hits"],
        "choices": ",".join(sorted({c for c in tables.decision_table(aq)["choice"]})),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mlp")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--floor", type=float, default=None, help=f"SQNR floor in dB (default {autoquant.DEFAULT_SQNR_FLOOR_DB})")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--out", default=None, help="also save the sweep's results and the choices figure here")
    args = p.parse_args()

    ok = True
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="autoquant-bench-") as cache_dir:
            print(f"--- run {i + 1}/{args.repeat}: {args.model}, {args.dtype}, batch {args.batch_size}, "
                  f"compile={'on' if args.compile else 'off'}, empty cache {cache_dir}")
            f = one_run(args, cache_dir)
        vs_best = f["autoquant_ms"] / f["best_ms"]
        vs_acc = f["autoquant_ms"] / f["best_accurate_ms"]
        vs_noquant = f["autoquant_ms"] / f["noquant_ms"]
        sqnr_ok = f["sqnr_db"] is None or f["sqnr_db"] >= f["floor_db"]
        checks = {
            f"latency {f['autoquant_ms']:.3f} ms / best single mode ({f['best']}, {f['best_ms']:.3f} ms) = {vs_best:.3f}"
            f" <= {TARGETS['vs_best']}": vs_best <= TARGETS["vs_best"],
            f"latency / best single mode at or above the floor ({f['best_accurate']}, {f['best_accurate_ms']:.3f} ms)"
            f" = {vs_acc:.3f} <= {TARGETS['vs_best']}": vs_acc <= TARGETS["vs_best"],
            f"latency / noquant ({f['noquant_ms']:.3f} ms) = {vs_noquant:.3f} <= {TARGETS['vs_noquant']}": vs_noquant <= TARGETS["vs_noquant"],
            f"model SQNR {'inf' if f['sqnr_db'] is None else format(f['sqnr_db'], '.1f')} dB >= floor {f['floor_db']:g} dB": sqnr_ok,
            f"search, empty cache {f['cold_s']:.1f} s < {TARGETS['cold_s']:g} s": f["cold_s"] < TARGETS["cold_s"],
            f"search, warm cache {f['warm_s']:.2f} s < {TARGETS['warm_s']:g} s ({f['warm_hits']} hits)": f["warm_s"] < TARGETS["warm_s"],
        }
        print(f"choices: {f['choices']}")
        for text, passed in checks.items():
            print(f"  {'PASS' if passed else 'FAIL'}  {text}")
            ok &= passed
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
