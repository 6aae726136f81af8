"""The GPU check (run by scripts/gpu_check.sh): the 8B-shaped proxy's batch-1 decode with every mode, then its
prefill with the modes that matter there, in one process, each sweep under a deadline; a summary beside
torchao's published ratios, an HTML report, and a packed copy for machines that hand back few files.

    python scripts/gpu_check.py RESULTS [--diagnose] [--dry-run] [--pack DIR]

--dry-run: print the plan for the GPU (which cells run, which are skipped before compiling, how many
compiles, an estimate against the 5-minute budget), then run the same pipeline on the CPU with
llama-tiny, eager and quick, so the whole path is tested without a GPU.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import torchao_nb  # noqa: E402
from torchao_nb import env, measure, models, tables  # noqa: E402
from torchao_nb import modes as modes_mod  # noqa: E402
from torchao_nb.autoquant import SearchSettings, searchable_modes  # noqa: E402

BUDGET_S = 300  # the check's target, cold, on one H100
# Most informative first: a sweep stopped at its deadline loses the last cells.
DECODE_MODES = ["noquant", "int4weightonly", "int8weightonly", "float8weightonly", "float8dynamic", "int8dynamic",
                "autoquant"]
PREFILL_MODES = ["int8dynamic", "float8dynamic", "int4weightonly"]  # the A/A control runs in decode
GPU = dict(decode="llama-8b-shapes", prefill="llama-8b-shapes:prefill", seq_len=256, batch=1)
CPU = dict(decode="llama-tiny", prefill="llama-tiny:prefill", seq_len=16, batch=1)
DEADLINES_S = {"decode": 360, "prefill": 460}  # since the start; rows finished before a deadline are kept
# torchao's published H100 ratios over bf16, Llama-3.1-8B batch-1 decode (torchao/_models/llama README).
PUBLISHED = {"int8weightonly": 1.57, "int4weightonly": 1.90, "float8weightonly": 1.41, "float8dynamic": 1.22}
TARGETS = {"int8weightonly": 1.35, "int4weightonly": 1.6, "float8weightonly": 1.2}
# The plan's estimate, from the first runs on an H200 (2026-11-28, torch 2.11, torchao 0.18, cold caches;
# docs/gpu/NVIDIA-H200): with torchao's coordinate-descent tuning every one-row matmul becomes a Triton
# reduction that is tuned config by config, serially, so a bf16 or weight-only graph of 4 layers took
# 146 s to compile (1 layer: 79 s); int4's graph (tinygemm, extern) 38 s. An autoquant candidate (one
# layer shape) and timing one cell (3 functions) are guesses.
EST_S = {"start": 20, "build": 5, "graph": 146, "graph_int4": 38, "candidate": 10, "timing": 6}
H100 = env.DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", (9, 0))
GPU_POLICY = measure.TimingPolicy(max_time_s=1.5)  # GPU timings settle fast; the budget is compile time


def linear_shapes(name: str, seq_len: int, batch: int) -> tuple[int, list[tuple[int, int]]]:
    """(rows per matmul, the distinct Linear shapes) of a llama model, built on the meta device (no memory)."""
    spec = models.get(name)
    args = models.llama.SIZES.get(name.split(":")[0])
    with torch.device("meta"):
        model = models.llama.Llama(args)
    rows = batch * (seq_len if spec.step == "prefill" else 1)
    shapes = sorted({(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)})
    return rows, shapes


def plan(step: str, modes: list[str]) -> tuple[list[str], int, float]:
    """Print what the GPU would do for one model; return (lines, compiles, estimated seconds)."""
    name = GPU[step]
    rows, shapes = linear_shapes(name, GPU["seq_len"], GPU["batch"])
    dtype = torch.bfloat16
    lines, compiles, seconds = [f"{name}, batch {GPU['batch']} ({rows} rows per matmul), bf16, cuda:"], 1, 0.0
    seconds += EST_S["build"] + EST_S["graph"]  # the model, and its baseline compiled once for the group
    for mode in modes:
        spec = modes_mod.get(mode)
        why = spec.unsupported_reason(H100, dtype) or spec.input_reason(H100, dtype, rows)
        if why:
            lines.append(f"  {mode:17s} skipped before compiling: {why}")
            continue
        if mode == "autoquant":
            cands = [m for m in searchable_modes() if not (modes_mod.get(m).unsupported_reason(H100, dtype)
                                                          or modes_mod.get(m).input_reason(H100, dtype, rows))]
            n = len(shapes) * len(cands) + 1
            seconds += len(shapes) * len(cands) * EST_S["candidate"] + EST_S["graph"] + EST_S["timing"]
            lines.append(f"  {mode:17s} runs: {len(shapes)} layer shapes x {len(cands)} candidates "
                         f"({', '.join(cands)}) + the chosen model = {n} compiles")
        else:
            n = 1
            seconds += EST_S["graph_int4" if mode == "int4weightonly" else "graph"] + EST_S["timing"]
            lines.append(f"  {mode:17s} runs: 1 compile")
        compiles += n
    lines.append(f"  {compiles} compiles (baseline included), ~{seconds:.0f} s")
    return lines, compiles, seconds


def print_plan() -> None:
    total_c, total_s = 0, float(EST_S["start"])
    for step, modes in (("decode", DECODE_MODES), ("prefill", PREFILL_MODES)):
        lines, c, s = plan(step, modes)
        print("\n".join(lines))
        total_c, total_s = total_c + c, total_s + s
    verdict = "fits" if total_s <= BUDGET_S else "does NOT fit"
    print(f"plan: {total_c} compiles, estimated {total_s:.0f} s of GPU time: {verdict} the {BUDGET_S} s budget "
          f"(estimate from {EST_S}; the deadlines {DEADLINES_S} s keep the rows finished by then)")


def sweep_until(deadline: float, **kw):
    """A sweep that is stopped (the cell in progress too) when the deadline passes; its finished rows are kept."""
    stop = threading.Event()
    timer = threading.Timer(max(0.0, deadline - time.monotonic()), stop.set)
    timer.start()
    try:
        return torchao_nb.sweep(stop=stop, progress=False, **kw)
    finally:
        timer.cancel()


def summary(results: dict[str, torchao_nb.ResultSet], wall_s: float) -> str:
    out = []
    for step, rs in results.items():
        out += [f"## {step}", tables.text(rs), ""]
    decode = {r.mode: r for r in results.get("decode", [])}
    if decode:
        out.append("## batch-1 decode vs torchao's published H100 ratios (Llama-3.1-8B)")
        out.append(f"{'mode':18s} {'here':>8s} {'95% CI':>13s} {'target':>7s} {'published':>9s}  note")
        for mode, published in PUBLISHED.items():
            r = decode.get(mode)
            here = "" if r is None or r.speedup is None else f"{r.speedup:.2f}x"
            ci = "" if r is None or r.speedup_lo is None else f"{r.speedup_lo:.2f}-{r.speedup_hi:.2f}"
            target = TARGETS.get(mode)
            note = "no row" if r is None else r.status if r.status != "ok" else (
                "meets the target" if target and r.speedup >= target else "below the target" if target else "")
            out.append(f"{mode:18s} {here:>8s} {ci:>13s} {'' if target is None else f'{target:.2f}':>7s} "
                       f"{published:9.2f}  {note}")
        aa = decode.get("noquant")
        if aa is not None and aa.speedup is not None:
            out.append(f"noquant A/A: {aa.speedup:.3f} ({aa.speedup_lo:.3f}-{aa.speedup_hi:.3f})")
        auto, best = decode.get("autoquant"), max((r for r in decode.values() if r.status == "ok" and r.mode not in
                                                  ("noquant", "autoquant")), key=lambda r: r.speedup, default=None)
        if auto is not None and auto.speedup is not None and best is not None:
            out.append(f"autoquant {auto.speedup:.2f}x vs the best single mode ({best.mode}) {best.speedup:.2f}x: "
                       f"{auto.speedup / best.speedup:.3f}")
    for step, rs in results.items():
        for r in rs:
            extra = r.extra_dict if r.extra else {}
            compiled = "eager" if r.compile_s is None else f"compile {r.compile_s:.1f} s"
            facts = (f"{compiled}, fx cache {r.fx_cache or 'none'}, breaks {r.graph_breaks}, "
                     f"recompiles {r.recompiles}, cudagraph skips {r.cudagraph_skips}, sampling: {r.sampling}"
                     if r.status == "ok" else r.reason)
            out.append(f"\n### {step} {r.mode}: {facts}")
            if extra.get("profile"):
                out.append(extra["profile"])
    out.append(f"\nwall time {wall_s:.0f} s")
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path)
    p.add_argument("--diagnose", action="store_true", help="a profiler table of top kernels for every cell")
    p.add_argument("--dry-run", action="store_true", help="print the GPU plan, then run the pipeline on the CPU")
    p.add_argument("--pack", type=Path, default=None, help="also write summary.txt and gpu_check.tar.gz here")
    p.add_argument("--layers", type=int, default=None, help="llama-8b-shapes with this many layers (default 4)")
    p.add_argument("--decode-modes", default=None, help=f"comma-separated (default {','.join(DECODE_MODES)})")
    p.add_argument("--prefill-modes", default=None,
                   help=f"comma-separated, or 'none' (default {','.join(PREFILL_MODES)})")
    p.add_argument("--deadline-s", type=float, default=None, help="one deadline for the whole check, since its start")
    args = p.parse_args()
    start = time.monotonic()
    if args.dry_run:
        print_plan()
        where = CPU
        common = dict(device="cpu", dtype="bfloat16", compile=False, policy=measure.FAST_POLICY, diagnose=args.diagnose)
    else:
        where = dict(GPU)
        if args.layers:
            where.update(decode=f"llama-8b-shapes-{args.layers}l", prefill=f"llama-8b-shapes-{args.layers}l:prefill")
        # save/reload would write ~4 GB per cell: the device time goes to compiles and timing instead
        common = dict(device="cuda", dtype="bfloat16", policy=GPU_POLICY, diagnose=args.diagnose, save_reload=False)
    common.update(batch_sizes=[where["batch"]], seq_len=where["seq_len"])
    decode_modes = args.decode_modes.split(",") if args.decode_modes else DECODE_MODES
    prefill_modes = [] if args.prefill_modes == "none" else (
        args.prefill_modes.split(",") if args.prefill_modes else PREFILL_MODES)
    steps = {
        "decode": dict(model=where["decode"], modes=decode_modes, compile_mode="reduce-overhead",
                       autoquant=SearchSettings(cache_dir=str(args.results / "cache" / "autoquant"))),
        "prefill": dict(model=where["prefill"], modes=prefill_modes),
    }
    steps = {step: kw for step, kw in steps.items() if kw["modes"]}
    deadlines = {step: args.deadline_s for step in steps} if args.deadline_s else DEADLINES_S
    results, failures = {}, []
    try:
        for step, kw in steps.items():
            try:
                results[step] = sweep_until(start + deadlines[step], out=args.results / step, **common, **kw)
            except Exception:  # one machine, one try: keep going, say what broke
                failures.append(f"## {step} failed\n{traceback.format_exc()}")
        try:
            from torchao_nb import report

            folders = [args.results / s for s, rs in results.items() if len(rs)]
            if folders:
                report.build(folders, args.results / "report.html")
        except Exception:
            failures.append(f"## the report failed\n{traceback.format_exc()}")
    finally:
        text = "\n".join([summary(results, time.monotonic() - start)] + failures)
        (args.results / "summary.txt").write_text(text + "\n")
        print(text)
        if args.pack:
            pack(args.results, args.pack)
    return 0 if any(r.status == "ok" for rs in results.values() for r in rs) else 1


def pack(results: Path, to: Path) -> None:
    """summary.txt, and everything but the caches in one archive: the device tool hands back a few files."""
    to.mkdir(parents=True, exist_ok=True)
    shutil.copy(results / "summary.txt", to / "summary.txt")
    with tarfile.open(to / "gpu_check.tar.gz", "w:gz") as tar:
        for f in sorted(results.rglob("*")):
            if f.is_file() and "cache" not in f.relative_to(results).parts:
                tar.add(f, arcname=str(f.relative_to(results)))


if __name__ == "__main__":
    raise SystemExit(main())
