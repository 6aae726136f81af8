"""The GPU check (run by scripts/gpu_check.sh): the 8B-shaped proxy's batch-1 decode and a serving-batch decode
(128 rows per matmul), each with every mode and float8 dynamic's per-tensor scales too, in one process, each sweep
under a deadline; a summary beside torchao's published ratios, an HTML report, the compile costs it measured, and
a packed copy for machines that hand back few files.

    python scripts/gpu_check.py RESULTS [--diagnose] [--dry-run] [--pack DIR] [--tuning T] [--layers N]
                                        [--compile-cache EARLIER_RESULTS] [--costs FILE]

--dry-run: print the GPU plan (which cells run, which are skipped before compiling, how many compiles, the
layer count and tuning chosen so the estimate fits the 8-minute budget cold, from docs/gpu/compile-costs.json
when a GPU run wrote one), then run the same pipeline on the CPU with llama-tiny, eager and quick, so the whole
path is tested without a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import tarfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import torchao_nb  # noqa: E402
from torchao_nb import UserError, compile_cache, compiling, env, measure, models, tables, warmup  # noqa: E402
import torchao_nb._torchao  # noqa: E402
from torchao_nb import modes as modes_mod  # noqa: E402
from torchao_nb.autoquant import SearchSettings, searchable_modes  # noqa: E402
from torchao_nb.extras import Warmed  # noqa: E402

BUDGET_S = 480  # issue 28: the whole check within 8 minutes of device time, cold, in one call
MARGIN_S = 30  # kept back from the budget for the report, the pack and the compile-costs file
DRY_RUN_BUDGET_S = 1200  # the CPU pipeline's deadlines, shared out the same way
# Most informative first: a sweep stopped at its deadline loses the last cells.
DECODE_MODES = ["noquant", "int4weightonly", "int8weightonly", "float8weightonly", "float8dynamic", "int8dynamic",
                "autoquant"]
PER_TENSOR = "float8dynamic"  # run again with per-tensor scales, in a folder of its own (a sweep takes one setting)
SERVING_BATCH = 128  # torchao's serving numbers: vLLM decode with 128 prompts in flight; > 16 rows: int8dynamic runs
GPU = dict(model="llama-8b-shapes", seq_len=256)
CPU = dict(model="llama-tiny", seq_len=16, serving_batch=4)
LAYER_CHOICES = (4, 2, 1)  # llama-8b-shapes-<N>l, most layers first (4: the shipped proxy)
# torchao's published H100 ratios over compiled bf16, Llama-3.1-8B. Batch-1 decode: the removed quantization
# README's table (tokens/s); serving: docs/source/workflows/inference.md (vLLM, decode with 128 prompts).
PUBLISHED = {"int8weightonly": 1.57, "int4weightonly": 1.90, "float8weightonly": 1.41, "float8dynamic": 1.22,
             "float8dynamic per-tensor": 0.92}
PUBLISHED_SERVING = {"float8dynamic": 1.21, "int8weightonly": 0.65}
TARGETS = {"int8weightonly": 1.35, "int4weightonly": 1.6, "float8weightonly": 1.2}
COSTS_FILE = ROOT / "docs" / "gpu" / "compile-costs.json"  # a GPU run writes RESULTS/compile-costs.json: copy it here
# When no measured costs are there: one cold compile (base_s + per_layer_s x layers) per graph kind and tuning.
# torchao: the H200 run of 2026-11-28 (torch 2.11, torchao 0.18; docs/gpu/NVIDIA-H200): the bf16 decode graph
# 146 s at 4 layers, 79 s at 1 (a line through both); int4 38 s at 4 layers (tinygemm is extern: its matmuls are
# not tuned), split like bf16's. off: the probe's untuned int4 compile, 6.2 s at 4 layers, measured; bf16 untuned
# twice that, a guess. fast: a guess until a GPU measures it: coordinate descent without check_all_directions
# keeps the one-field-at-a-time walk and drops the search of every neighbour combination, taken as about 55 % of
# the tuning's cost. An autoquant candidate (one Linear of one shape, in a sandbox) is a guess for every tuning.
FALLBACK_COSTS = {
    "torchao": {"bf16": (56.9, 22.3), "int4": (14.8, 5.8), "candidate": (10.0, 0.0)},
    "off": {"bf16": (5.0, 1.9), "int4": (2.5, 0.9), "candidate": (3.0, 0.0)},
}
FALLBACK_COSTS["fast"] = {kind: tuple(round(o + 0.45 * (t - o), 1) for o, t in zip(FALLBACK_COSTS["off"][kind], cost))
                          for kind, cost in FALLBACK_COSTS["torchao"].items()}
# guesses: the process's start, building a model, timing one cell, starting autoquant's sandbox process
OTHER_S = {"start": 20, "build": 5, "timing": 6, "sandbox": 15}
DEVICE_CORES, DEVICE_MEMORY_BYTES = 16, 139 * 2**30  # the lent H200 machine (../.library/device/README.md)
COMPILE_WORKERS = 6  # asked of the GPU check's sweeps: one per decode cell but autoquant's (its search runs after them)
WARM_S = 5  # one compile whose graph and kernels a carried compile cache holds (inductor still lowers the graph)
H100 = env.DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", (9, 0))
GPU_POLICY = measure.TimingPolicy(max_time_s=1.5)  # GPU timings settle fast; the budget is compile time


def graph_kind(mode: str) -> str:
    """What a mode's compile costs like: int4's matmuls are one extern kernel (tinygemm), nothing to tune."""
    return "int4" if mode == "int4weightonly" else "bf16"


@dataclass(frozen=True)
class Costs:
    """Seconds of one cold compile per graph kind and tuning, from measurements where there are some."""

    lines: dict  # (tuning, kind) → (base_s, per_layer_s)
    source: str  # where they came from, in words

    @classmethod
    def load(cls, path: Path | None) -> "Costs":
        lines = {(t, k): v for t, kinds in FALLBACK_COSTS.items() for k, v in kinds.items()}
        if path is None or not path.exists():
            return cls(lines, f"no {path.name if path else 'compile-costs file'}: the 2026-11-28 H200 run's "
                              "constants (torchao tuning), the probe's untuned int4, and guesses for the rest")
        data = json.loads(path.read_text())
        seen: dict = {}
        for m in data.get("compiles", []):
            seen.setdefault((m["tuning"], m["kind"]), {}).setdefault(int(m["layers"]), []).append(float(m["seconds"]))
        for key, by_layers in seen.items():
            points = sorted((n, statistics.median(v)) for n, v in by_layers.items())
            base, slope = lines.get(key, (0.0, 0.0))
            if len(points) >= 2:  # a line through the fewest and the most layers measured
                (n0, s0), (n1, s1) = points[0], points[-1]
                slope = (s1 - s0) / (n1 - n0)
                lines[key] = (s0 - slope * n0, slope)
            else:  # one layer count: the fallback's shape, scaled to go through it
                n, secs = points[0]
                scale = secs / max(base + slope * n, 1e-9)
                lines[key] = (base * scale, slope * scale)
        return cls(lines, f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} (measured on "
                          f"{data.get('device_name', '?')}, {data.get('date', '?')}, torch {data.get('torch', '?')}); "
                          "the constants where it has no number")

    def seconds(self, kind: str, tuning: str, layers: int) -> float:
        base, slope = self.lines[(tuning, kind)]
        return base + slope * layers


@dataclass(frozen=True)
class Step:
    """One sweep of the check: a regime (batch-1 or serving decode) and the modes it runs, in its own folder."""

    name: str
    batch: int
    modes: tuple[str, ...]
    tuning: str
    per_tensor: bool = False  # float8dynamic with per-tensor scales


def steps(tuning_b1: str, tuning_serving: str, serving_batch: int = SERVING_BATCH) -> list[Step]:
    """The check's sweeps, most important first: each regime with every mode, then float8's per-tensor scales."""
    return [Step("decode", 1, tuple(DECODE_MODES), tuning_b1),
            Step(f"serving-b{serving_batch}", serving_batch, tuple(DECODE_MODES), tuning_serving),
            Step("decode-per-tensor", 1, (PER_TENSOR,), tuning_b1, per_tensor=True),
            Step(f"serving-b{serving_batch}-per-tensor", serving_batch, (PER_TENSOR,), tuning_serving, per_tensor=True)]


def autoquant_candidates(rows: int, info: env.DeviceInfo = H100) -> tuple[str, ...]:
    """The single modes the check measures that run at this many rows: autoquant is held against the best of them."""
    return tuple(m for m in DECODE_MODES if m not in ("noquant", "autoquant") and not (
        modes_mod.get(m).unsupported_reason(info, torch.bfloat16) or modes_mod.get(m).input_reason(
            info, torch.bfloat16, rows)))


def linear_shapes(name: str, seq_len: int, batch: int) -> tuple[int, list[tuple[int, int]]]:
    """(rows per matmul, the distinct Linear shapes) of a llama model, built on the meta device (no memory)."""
    spec = models.get(name)
    args = models.llama.SIZES.get(name.split(":")[0]) or models.llama.SIZES["llama-8b-shapes"]
    with torch.device("meta"):
        model = models.llama.Llama(args)
    rows = batch * (seq_len if spec.step == "prefill" else 1)
    shapes = sorted({(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)})
    return rows, shapes


def helpers(layers: int, asked: int) -> tuple[int, str]:
    """Compile helpers the GPU machine runs at once for the proxy (warmup's rule, on the lent machine's cores and
    memory, all of it free at the start), and the sum behind it."""
    args = dataclasses.replace(models.llama.SIZES["llama-8b-shapes"], layers=layers)
    weights = 2 * args.params()  # bf16
    need = warmup.WEIGHT_FACTOR * weights + warmup.PROCESS_BYTES["cuda"]
    n, why = warmup.fits(asked, DEVICE_CORES, need, DEVICE_MEMORY_BYTES, device="cuda")
    return n, (f"{n} compile helper(s) of {asked} asked ({why or 'as asked'}): each ~{need / 2**30:.0f} GiB "
               f"({warmup.WEIGHT_FACTOR}x the {weights / 2**30:.1f} GiB of weights and a CUDA context), "
               f"{DEVICE_CORES} cores, {DEVICE_MEMORY_BYTES / 2**30:.0f} GiB of GPU memory")


def plan_step(step: Step, layers: int, costs: Costs, carried: bool = False,
              workers: int = 0) -> tuple[list[str], int, float, int]:
    """plan_step_with of as many helpers as the machine runs of `workers` asked, or of none where they would not
    shorten the step (a warm compile costs WARM_S, nearly an untuned cold one): (lines, compiles, seconds, helpers)."""
    alone = plan_step_with(step, layers, costs, carried, 0)
    n = helpers(layers, workers)[0] if workers and not carried else 0
    helped = plan_step_with(step, layers, costs, carried, n) if n else alone
    return (*helped, n) if helped[2] < alone[2] else (*alone, 0)


def plan_step_with(step: Step, layers: int, costs: Costs, carried: bool,
                   workers: int) -> tuple[list[str], int, float]:
    """What the GPU would do for one step: (lines, compiles, estimated seconds, cold unless `carried`). With
    `workers` compile helpers, every cell but autoquant's compiles in them
    first; the worker compiles each from the caches they filled (WARM_S), and autoquant's search runs after them
    (it times its candidates: never beside a helper)."""
    name = f"{GPU['model']}-{layers}l"
    rows, shapes = linear_shapes(name, GPU["seq_len"], step.batch)
    cold = (lambda kind: WARM_S) if carried else (lambda kind: costs.seconds(kind, step.tuning, layers))
    pool: list[float] = []  # what the helpers compile

    def compile_s(kind: str) -> float:
        if workers and not carried:
            pool.append(cold(kind))
            return WARM_S
        return cold(kind)

    lines = [f"{step.name}: {name}, batch {step.batch} ({rows} rows per matmul), bf16, cuda, tuning {step.tuning}"
             + (", float8dynamic per-tensor" if step.per_tensor else "") + ":"]
    # the model, and its baseline compiled once: by noquant's helper when the step has a noquant cell (the same
    # graph), else in the worker when the rounds first need it
    compiles = 1
    seconds = OTHER_S["build"] + (compile_s("bf16") if "noquant" in step.modes else cold("bf16"))
    serial = 0.0  # autoquant's search: in turn, after the helpers
    for mode in step.modes:
        spec = modes_mod.get(mode)
        why = spec.unsupported_reason(H100, torch.bfloat16) or spec.input_reason(H100, torch.bfloat16, rows)
        if why:
            lines.append(f"  {mode:17s} skipped before compiling: {why}")
            continue
        if mode == "autoquant":
            cands = autoquant_candidates(rows)
            n = len(shapes) * (len(cands) + 1)  # noquant is timed per shape too
            # the candidates compile in a sandbox, which hands them back to the carried file (compile_cache.adopt)
            candidate = costs.seconds("candidate", step.tuning, layers)
            serial += OTHER_S["sandbox"] + n * (min(WARM_S, candidate) if carried else candidate) + cold("bf16")
            seconds += OTHER_S["timing"]
            lines.append(f"  {mode:17s} runs: {len(shapes)} layer shapes x {len(cands) + 1} candidates (noquant, "
                         f"{', '.join(cands)}) + the chosen model = {n + 1} compiles")
            n += 1
        else:
            n = 1
            seconds += compile_s(graph_kind(mode)) + OTHER_S["timing"]
            lines.append(f"  {mode:17s} runs: 1 compile")
        compiles += n
    # Helpers take the cells in order, the longest one bounds them: the larger of an even share and that one.
    parallel = max(sum(pool) / workers, max(pool)) if pool else 0.0
    seconds += parallel + serial
    lines.append(f"  {compiles} compiles (baseline included), ~{seconds:.0f} s"
                 + (f" ({len(pool)} cold compiles by {workers} helpers in ~{parallel:.0f} s, then autoquant's "
                    f"~{serial:.0f} s)" if pool else ""))
    return lines, compiles, seconds


def plan_total(layers: int, tuning_b1: str, tuning_serving: str, costs: Costs, carried: bool = False,
               workers: int = 0) -> float:
    return OTHER_S["start"] + sum(plan_step(s, layers, costs, carried, workers)[2]
                                  for s in steps(tuning_b1, tuning_serving))


# The serving batch is planned untuned: inductor's one-row-matmul rewrite, the reason int8/float8 weight-only
# need torchao's tuning, never applies at 128 rows, and torchao's serving numbers are vLLM's, not inductor's.
SERVING_TUNING = "off"


def choose(costs: Costs, tuning: str | None = None, layers: int | None = None,
           workers: int = 0) -> tuple[int, str, list[str]]:
    """(layers, batch-1 tuning, why) of the most faithful plan that fits the budget cold: torchao's tuning first
    (what the published batch-1 numbers used), then fast, then off; for each, the most layers that fit."""
    tunings = (tuning,) if tuning else compiling.TUNINGS
    counts = (layers,) if layers else LAYER_CHOICES
    tried = []
    for t in tunings:
        for n in counts:
            total = plan_total(n, t, SERVING_TUNING, costs, workers=workers)
            tried.append(f"batch-1 tuning {t}, {n} layer{'s' * (n > 1)}: ~{total:.0f} s")
            if total <= BUDGET_S - MARGIN_S:
                return n, t, tried
    return counts[-1], tunings[-1], tried + ["none fits: the smallest plan is shown"]


def print_plan(costs: Costs, tuning: str | None, layers: int | None, carry: Path | None,
               workers: int = 0) -> tuple[int, str]:
    n, t, tried = choose(costs, tuning, layers, workers)
    print(f"compile costs: {costs.source}")
    print(f"compile helpers (--compile-workers {workers}): " + (helpers(n, workers)[1] if workers else "none"))
    print("plans tried, cold (most faithful first): " + "; ".join(tried))
    for step in steps(t, SERVING_TUNING):
        print("\n".join(plan_step(step, n, costs, workers=workers)[0]))
    cold = plan_total(n, t, SERVING_TUNING, costs, workers=workers)
    verdict = "fits" if cold <= BUDGET_S - MARGIN_S else "does NOT fit"
    why = {"torchao": "torchao's own settings, as its published batch-1 numbers used them",
           "fast": "torchao's tuning does not fit; fast keeps the one-row-matmul rewrite int8/float8 weight-only need",
           "off": "neither torchao's tuning nor fast fits: at batch 1 int8/float8 weight-only then lack their fused "
                  "one-row kernel, so their rows measure the unfused path"}[t] if tuning is None else "--tuning"
    print(f"plan: {n} layer{'s' * (n > 1)}, batch-1 tuning {t} ({why}); serving batch tuning {SERVING_TUNING} "
          f"(the one-row rewrite never applies at {SERVING_BATCH} rows); estimated {cold:.0f} s of GPU time cold: "
          f"{verdict} the {BUDGET_S} s budget ({MARGIN_S} s kept for the report)")
    if carry is not None:
        found = [s.name for s in steps(t, SERVING_TUNING) if (carry / s.name / compile_cache.FILE_NAME).exists()]
        if found:
            warm = OTHER_S["start"] + sum(plan_step(s, n, costs, s.name in found, workers)[2]
                                          for s in steps(t, SERVING_TUNING))
            print(f"with the compile caches carried from {carry} ({', '.join(found)}): ~{warm:.0f} s, if they were "
                  "saved by the same plan on this GPU kind with these versions (a sweep refuses one that wasn't)")
        else:
            print(f"--compile-cache {carry}: no <step>/{compile_cache.FILE_NAME} there; the plan runs cold")
    return n, t


def deadlines(plan: list[Step], layers: int, costs: Costs, budget_s: float, workers: int = 0) -> dict[str, float]:
    """Seconds since the start by which each step must end: the budget shared out in proportion to the estimates,
    so a step that overruns takes its own share, not the next step's."""
    est = [plan_step(s, layers, costs, workers=workers)[2] for s in plan]
    total, done, out = sum(est), 0.0, {}
    for s, e in zip(plan, est):
        done += e
        out[s.name] = OTHER_S["start"] + (budget_s - OTHER_S["start"]) * done / total
    return out


def measured_costs(results: dict[str, torchao_nb.ResultSet], plan: list[Step], layers: int,
                   info: env.DeviceInfo) -> dict:
    """compile-costs.json: each cold compile of this run (a row whose first call missed the FX-graph cache), and
    autoquant's search per candidate compile, for the next dry run's estimate."""
    out = {"written_by": "scripts/gpu_check.py", "device_name": info.name, "date": time.strftime("%Y-%m-%d"),
           "torch": torch.__version__, "torchao": torchao_nb._torchao.torchao_version() or "", "compiles": []}
    by_name = {s.name: s for s in plan}
    for name, rs in results.items():
        step = by_name[name]
        for r in rs:
            helper = r.extra_of(Warmed)
            # The cold compile was the helper's when the worker's then hit the caches (it ran beside other
            # helpers: an upper bound of one alone)
            if r.status == "ok" and helper is not None and helper.helper_compile_s and "hit" in r.fx_cache:
                out["compiles"].append(dict(kind=graph_kind(r.mode), tuning=step.tuning, layers=layers,
                                            batch=step.batch, mode=r.mode, seconds=round(helper.helper_compile_s, 2)))
                continue
            if r.status != "ok" or r.compile_s is None or "hit" in r.fx_cache:
                continue
            if r.mode == "autoquant":
                if r.search_s:
                    n = len(linear_shapes(f"{GPU['model']}-{layers}l", GPU["seq_len"], step.batch)[1]) * (
                        len(autoquant_candidates(step.batch, info)) + 1)
                    out["compiles"].append(dict(kind="candidate", tuning=step.tuning, layers=layers, batch=step.batch,
                                                mode=r.mode, seconds=round(r.search_s / n, 2)))
                continue
            out["compiles"].append(dict(kind=graph_kind(r.mode), tuning=step.tuning, layers=layers, batch=step.batch,
                                        mode=r.mode, seconds=round(r.compile_s, 2)))
    return out


def sweep_until(deadline: float, **kw):
    """A sweep that is stopped (the cell in progress too) when the deadline passes; its finished rows are kept."""
    stop = threading.Event()
    timer = threading.Timer(max(0.0, deadline - time.monotonic()), stop.set)
    timer.start()
    try:
        return torchao_nb.sweep(stop=stop, progress=False, **kw)
    finally:
        timer.cancel()


def ratio_table(title: str, published: dict, rows: dict, targets: dict) -> list[str]:
    out = [f"## {title}", f"{'mode':26s} {'here':>8s} {'95% CI':>13s} {'target':>7s} {'published':>9s}  note"]
    for mode, pub in published.items():
        r = rows.get(mode)
        here = "" if r is None or r.speedup is None else f"{r.speedup:.2f}x"
        ci = "" if r is None or r.speedup_lo is None else f"{r.speedup_lo:.2f}-{r.speedup_hi:.2f}"
        target = targets.get(mode)
        note = "no row" if r is None else r.status if r.status != "ok" else (
            "meets the target" if target and r.speedup >= target else "below the target" if target else "")
        out.append(f"{mode:26s} {here:>8s} {ci:>13s} {'' if target is None else f'{target:.2f}':>7s} {pub:9.2f}  {note}")
    return out


def regime_rows(results: dict[str, torchao_nb.ResultSet], step: Step, per_tensor: Step) -> dict:
    rows = {r.mode: r for r in results.get(step.name, [])}
    rows.update({f"{r.mode} per-tensor": r for r in results.get(per_tensor.name, [])})
    return rows


def summary(results: dict[str, torchao_nb.ResultSet], plan: list[Step], wall_s: float) -> str:
    out = []
    for step, rs in results.items():
        out += [f"## {step}", tables.text(rs), ""]
    decode, serving, decode_pt, serving_pt = plan
    for step, per_tensor, title, published, targets in (
            (decode, decode_pt, "batch-1 decode vs torchao's published H100 ratios (Llama-3.1-8B, tokens/s)",
             PUBLISHED, TARGETS),
            (serving, serving_pt, f"serving decode, batch {serving.batch}, vs torchao's published serving ratios "
             "(vLLM, H100, Llama-3.1-8B, 128 prompts in flight: a serving loop, ours one decode step)",
             PUBLISHED_SERVING, {})):
        rows = regime_rows(results, step, per_tensor)
        if not rows:
            continue
        out += ratio_table(title, published, rows, targets)
        aa = rows.get("noquant")
        if aa is not None and aa.speedup is not None:
            out.append(f"noquant A/A: {aa.speedup:.3f} ({aa.speedup_lo:.3f}-{aa.speedup_hi:.3f})")
        auto, best = rows.get("autoquant"), max((r for m, r in rows.items() if r.status == "ok" and r.speedup and m not in
                                                ("noquant", "autoquant")), key=lambda r: r.speedup, default=None)
        if auto is not None and auto.speedup is not None and best is not None:
            out.append(f"autoquant {auto.speedup:.2f}x vs the best single mode ({best.mode}) {best.speedup:.2f}x: "
                       f"{auto.speedup / best.speedup:.3f}")
        out.append("")
    for step, rs in results.items():
        for r in rs:
            extra = r.extra_dict if r.extra else {}
            compiled = "eager" if r.compile_s is None else f"compile {r.compile_s:.1f} s (tuning {r.tuning})"
            # what tells a host-bound row from a GPU-bound one: CUDA graphs kept or skipped (each skip is a
            # replay that goes back to the host per kernel), and back-to-back time against synced single calls
            host = "" if r.synced_ms is None or r.median_ms is None else (
                f", back-to-back {r.median_ms:.3f} ms vs synced {r.synced_ms:.3f} ms per call")
            facts = (f"{compiled}, fx cache {r.fx_cache or 'none'}, breaks {r.graph_breaks}, "
                     f"recompiles {r.recompiles}, cudagraph skips {r.cudagraph_skips}{host}, sampling: {r.sampling}"
                     if r.status == "ok" else r.reason)
            out.append(f"\n### {step} {r.mode}: {facts}")
            skips = [line for line in extra.get("compile_log", []) if "cudagraph" in line.lower()]
            out += [f"  {line[:300]}" for line in skips[:5]]
            if extra.get("profile"):
                out.append(extra["profile"])
    out.append(f"\nwall time {wall_s:.0f} s")
    return "\n".join(out)


def carried_cache(carry: Path | None, step: Step, device: str) -> str | None:
    """The earlier lend's compile cache of this step, when there is one this machine can load (else one line why)."""
    if carry is None or not (carry / step.name / compile_cache.FILE_NAME).exists():
        return None
    try:
        return compile_cache.check(carry / step.name / compile_cache.FILE_NAME, device)
    except UserError as e:
        print(f"{step.name}: not carrying the earlier compile cache: {e}", flush=True)
        return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", type=Path)
    p.add_argument("--diagnose", action="store_true", help="a profiler table of top kernels for every cell")
    p.add_argument("--dry-run", action="store_true", help="print the GPU plan, then run the pipeline on the CPU")
    p.add_argument("--pack", type=Path, default=None, help="also write summary.txt and gpu_check.tar.gz here")
    p.add_argument("--layers", type=int, default=None, help="llama-8b-shapes with this many layers (default: the "
                   f"most of {', '.join(map(str, LAYER_CHOICES))} that fit the budget)")
    p.add_argument("--tuning", choices=compiling.TUNINGS, default=None,
                   help="batch-1 decode's inductor tuning (default: the most faithful that fits the budget)")
    p.add_argument("--compile-cache", type=Path, default=None, metavar="EARLIER_RESULTS",
                   help=f"an earlier lend's RESULTS folder: each step loads its <step>/{compile_cache.FILE_NAME}")
    p.add_argument("--compile-workers", type=int, default=COMPILE_WORKERS,
                   help="compile helpers each sweep asks for (default %(default)s; 0: each cell compiles in turn)")
    p.add_argument("--costs", type=Path, default=COSTS_FILE, help="measured compile costs (default %(default)s)")
    p.add_argument("--decode-modes", default=None, help=f"comma-separated (default {','.join(DECODE_MODES)})")
    p.add_argument("--steps", default=None, help="comma-separated steps to run (default all)")
    p.add_argument("--deadline-s", type=float, default=None, help=f"the whole check's deadline (default {BUDGET_S} "
                   f"s less {MARGIN_S} s), shared out among the steps by their estimates")
    args = p.parse_args()
    start = time.monotonic()
    costs = Costs.load(args.costs)
    if args.dry_run:
        layers, tuning = print_plan(costs, args.tuning, args.layers, args.compile_cache, args.compile_workers)
        device, model, plan = "cpu", CPU["model"], steps(tuning, SERVING_TUNING, CPU["serving_batch"])
        common = dict(device="cpu", dtype="bfloat16", compile=False, policy=measure.FAST_POLICY, seq_len=CPU["seq_len"])
    else:
        layers, tuning, _ = choose(costs, args.tuning, args.layers, args.compile_workers)
        device, model, plan = "cuda", f"{GPU['model']}-{layers}l", steps(tuning, SERVING_TUNING)
        # save/reload would write ~4 GB per cell: the device time goes to compiles and timing instead
        common = dict(device="cuda", dtype="bfloat16", policy=GPU_POLICY, save_reload=False, seq_len=GPU["seq_len"],
                      compile_mode="reduce-overhead", save_compile_cache=True)  # CUDA graphs: decode is launch-bound
    info = env.device_info(device)
    chosen = set(args.steps.split(",")) if args.steps else {s.name for s in plan}
    modes = tuple(args.decode_modes.split(",")) if args.decode_modes else None
    todo = [dataclasses.replace(s, modes=modes) if modes and not s.per_tensor else s for s in plan if s.name in chosen]
    # the CPU's pipeline runs llama-tiny on a shared machine: the GPU's budget says nothing about its time
    budget = args.deadline_s or (DRY_RUN_BUDGET_S if args.dry_run else BUDGET_S - MARGIN_S)
    due = deadlines(todo, layers, costs, budget, 0 if args.dry_run else args.compile_workers) if todo else {}
    results, failures = {}, []
    try:
        for step in todo:
            kw = dict(model=model, modes=list(step.modes), batch_sizes=[step.batch], tuning=step.tuning, diagnose=args.diagnose, compile_cache=carried_cache(args.compile_cache, step,
                                                                                              device),
                      autoquant=SearchSettings(cache_dir=str(args.results / "cache" / "autoquant"),
                                               candidates=autoquant_candidates(step.batch, info)))
            if step.per_tensor:
                kw[PER_TENSOR] = {"granularity": "per-tensor"}
            if not args.dry_run:  # helpers where the plan says they shorten the step
                kw["compile_workers"] = plan_step(step, layers, costs, bool(kw["compile_cache"]), args.compile_workers)[3]
            try:
                results[step.name] = sweep_until(start + due[step.name], out=args.results / step.name, **common, **kw)
            except Exception:  # one machine, one try: keep going, say what broke
                failures.append(f"## {step.name} failed\n{traceback.format_exc()}")
        try:
            from torchao_nb import report

            folders = [args.results / s for s, rs in results.items() if len(rs)]
            if folders:
                report.build(folders, args.results / "report.html")
        except Exception:
            failures.append(f"## the report failed\n{traceback.format_exc()}")
        if not args.dry_run:
            (args.results / "compile-costs.json").write_text(
                json.dumps(measured_costs(results, plan, layers, info), indent=1) + "\n")
    finally:
        caches = [f"{f.relative_to(args.results)} {f.stat().st_size / 2**20:.1f} MiB"
                  for f in sorted(args.results.glob(f"*/{compile_cache.FILE_NAME}"))]
        text = "\n".join([f"plan: {model}, batch-1 tuning {tuning}, serving tuning {SERVING_TUNING}"]
                         + [summary(results, plan, time.monotonic() - start)]
                         + ([f"compile caches for the next lend (--compile-cache): {', '.join(caches)}"] if caches else [])
                         + failures)
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
