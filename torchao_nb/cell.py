"""One cell of a sweep: quantize a fresh copy of the reference, compile, check the output, time → one Row."""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import time
from typing import Any

import torch
from torch import nn

from . import compile_cache, compiling, measure, models, profiling, repro, saving
from . import env as envmod
from . import modes as modes_mod
from .checks import wrongness
from .config import SweepConfig
from .errors import UserError, error_text
from .extras import Autoquant, CompileNotes, EagerCheck, Extras, LayersLeftAlone, Profile, SaveReload, TimingNotes, \
    extra_text
from .reference import (ModelSource, Phase, Reference, build_reference, cell_spec, error_row,  # noqa: F401
                        failed_reference_row, new_row, no_phase)
from .results import Row

SYNCED_POLICY = measure.TimingPolicy(min_warmup=1, warmup_s=0.0, lead_s=0.0, burst_s=0.0, min_samples=15, max_samples=30,
                                     max_time_s=1.0, block=15)  # the per-call figure beside CUDA's back-to-back one
LOG_LINES = 40  # torch's warnings kept with a failing or suspicious row


def free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# ---- a wrong output -----------------------------------------------------------------------------

def _wrong_reason(settings: compiling.CompileSettings, mode: str, why: str, eager_why: str | None,
                  eager: measure.Accuracy | None) -> str:
    if not settings.enabled:
        return f"output wrong: {why}"
    if eager_why is None:
        db = "identical" if eager is None or eager.sqnr_db is None else f"{eager.sqnr_db:.1f} dB"
        return (f"compiled output wrong ({why}), eager {db}: a compiler or kernel bug on this machine, "
                f"not an accuracy of {mode}")
    return f"output wrong, compiled ({why}) and eager ({eager_why}): {mode} breaks this model's output"


def _wrong_row(cfg, ref, mode, batch, model, why, acc, extra, common) -> Row:
    """A wrong output is never timed; for a compiled cell the eager quantized model says which side is wrong."""
    eager_why = eager = check = None
    if ref.compile.enabled:
        eager_why, eager = wrongness(ref.output, models.call(model, ref.inputs))
        check = EagerCheck(None if eager is None else eager.sqnr_db)
    numbers = {} if acc is None else dict(sqnr_db=acc.sqnr_db, cosine=acc.cosine, max_abs_err=acc.max_abs_err)
    row = new_row(cfg, ref, mode, batch, "wrong", _wrong_reason(ref.compile, mode, why, eager_why, eager),
                  extra=extra(check), **numbers, **common)
    return repro.for_reference(cfg, ref, row, "wrong")


def _saved(cfg: SweepConfig, ref: Reference, model: nn.Module,
           on_phase: Phase) -> tuple[dict[str, Any], SaveReload | None]:
    """Save the quantized weights, load them into a fresh unquantized copy, compare: the row's disk fields."""
    if not cfg.save_reload:
        return {}, None
    on_phase("saving and reloading")
    done = saving.save_and_reload(model, lambda: copy.deepcopy(ref.module), ref.inputs)
    return dict(disk_bytes=done.disk_bytes, reload_equal=done.equal), SaveReload(done.note)


def _quality(cfg: SweepConfig, ref: Reference, model: nn.Module, fn, acc: measure.Accuracy,
             clock, sync, on_phase: Phase) -> tuple[dict[str, Any], list]:
    """The model's own quality measure (task score, perplexity, generations) of this copy: row fields, and extras.
    It may run the callable the cell timed again (an LM generates with it): a recompile there is named in extras."""
    if ref.quality is None:
        return {}, []
    probe = models.Probe(step=fn, output_cosine=acc.cosine, clock=clock, sync=sync, on_phase=on_phase,
                         unquantized=ref.module, unquantized_step=_baseline_fn(ref) if ref.compile.enabled else ref.module)
    with compiling.watch() as watched:
        score = ref.quality.score(ref.quality_reference, model, probe)
    return score.fields, [CompileNotes(recompiles_while_scoring=watched.recompiles or None), score.extra]


# ---- timing ------------------------------------------------------------------------------------

def _window(cfg: SweepConfig, ref: Reference, clock, sync) -> measure.Window:
    """Warm: bursts of back-to-back calls, as a generation loop runs a model. Cold: the last-level cache (CPU)
    or L2 (CUDA) flushed before each single call, so a model that fits there reads its weights from memory."""
    flush = 2 * ref.cache_bytes if cfg.cache == "cold" and ref.cache_bytes else 0
    if cfg.device == "cuda":
        return measure.cuda_window(flush)
    return measure.host_cold_window(flush, clock, sync) if flush else measure.host_window(clock, sync)


def _copy_count(cfg: SweepConfig, ref: Reference) -> int:
    """The policy's copies per side, fewer when both sides' copies would take more than half the free memory
    (a large model on a small machine times fewer copies, and its row's `replicates` says how many)."""
    free = envmod.free_memory_bytes(cfg.device)
    side = 2 * measure.weight_bytes(ref.module)  # a mode copy is at most as large as a baseline copy
    made = len(ref.compiled_baselines)  # already in memory
    if free is None or side == 0:
        return cfg.policy.replicates
    return max(1, min(cfg.policy.replicates, made + int(free // 2 // side)))


def _baselines(ref: Reference, n: int) -> list:
    """`n` compiled unquantized models, each from a copy of its own, made once per group (later cells and the
    quality measure get them back from the group)."""
    # A copy of its own, as every mode gets: sharing the eager reference's memory made the A/A read
    # 0.95-0.99 on a 2-core CPU (the mode's copy was the one paying for fresh memory).
    while len(ref.compiled_baselines) < n:
        ref.compiled_baselines.append(_compiled_copy(ref, ref.module, "baseline"))
    return ref.compiled_baselines[:n]


def _baseline_fn(ref: Reference):
    return _baselines(ref, 1)[0]


def _compiled_copy(ref: Reference, module: nn.Module, label: str):
    """`module` deep-copied into memory of its own (torchao's packed tensors are copied too), compiled, called once."""
    fn = compiling.compiled(copy.deepcopy(module), ref.compile, label)
    models.call(fn, ref.inputs)
    return fn


def _replicas(ref: Reference, model: nn.Module, fn, n: int, label: str) -> list:
    """`fn` and n-1 more compiled copies of the quantized model, ready before timing starts."""
    return [fn] + [_compiled_copy(ref, model, label) for _ in range(n - 1)]


def _timed(cfg: SweepConfig, ref: Reference, fns: list, window: measure.Window, clock,
           sync) -> tuple[dict[str, Any], TimingNotes]:
    """The mode's copies timed in rounds with the unquantized model (as many compiled baseline copies, the eager
    model), so both speedups come from samples taken under the same machine state, round by round: the row's
    numbers, and notes for its extras (not a steady state, a busy machine)."""
    n = len(fns)
    bases = _baselines(ref, n) if ref.compile.enabled else []
    calls = [lambda f=f: models.call(f, ref.inputs) for f in [*bases, ref.module, *fns]]
    sides = [list(range(len(bases))), [len(bases)], list(range(len(bases) + 1, len(calls)))]  # base, eager, mode
    with envmod.OtherLoad() as load:
        timed = measure.time_interleaved(calls, cfg.policy, clock, sync, window, [x for x in sides if x])
    eager_m, ms = timed[len(bases)], timed[len(bases) + 1:]
    base_ms = timed[:len(bases)] or [eager_m]
    speedup, vs_eager = measure.paired_ratio(base_ms, ms), measure.paired_ratio(eager_m, ms)
    m, base = measure.per_round(ms), measure.per_round(base_ms)
    unsteady = _not_steady(calls[-1], calls[0], m.median_ms, cfg, window)
    return dict(median_ms=m.median_ms, iqr_ms=m.iqr_ms, samples=len(m.samples_ms), replicates=n,
                noisy=m.noisy(cfg.policy), baseline_ms=base.median_ms, eager_ms=eager_m.median_ms,
                speedup=speedup.value, speedup_lo=speedup.lo, speedup_hi=speedup.hi,
                speedup_vs_eager=vs_eager.value, speedup_vs_eager_lo=vs_eager.lo, speedup_vs_eager_hi=vs_eager.hi,
                sampling=window.what), TimingNotes(not_steady=unsteady, busy=_busy(load))


def _busy(load: envmod.OtherLoad) -> str | None:
    """A note when other processes took a good share of the CPU while the cell was timed."""
    if load.share is None or load.share <= envmod.BUSY_SHARE:
        return None
    return (f"other processes used {load.cores:.1f} cores ({load.share:.0%}) while this cell was timed: "
            "its numbers move with their load")


def _not_steady(fn, other, per_call_ms: float, cfg: SweepConfig, window: measure.Window) -> str | None:
    """Why the mode's bursts are not its steady state, or None when they are (see measure.after_switch)."""
    if window.one_call:  # a cold window flushes before every call: there is no steady state to reach
        return None
    switched, settled = measure.after_switch(fn, other, per_call_ms, cfg.policy, window)
    if switched <= settled * (1 + measure.STEADY_REL):
        return None
    return (f"not a steady state: a burst right after the unquantized model read {switched:.3f} ms per call, "
            f"{settled:.3f} ms after {measure.SETTLE_S:g} s more of its calls; its speed depends on what ran "
            "before it, and the speedup with it")


def _diagnose(cfg: SweepConfig, ref: Reference, model: nn.Module, fn) -> str:
    """The mode's top kernels; when CUDA-graph replays hide them, those of the same model compiled without graphs."""
    table = profiling.top_kernels(lambda: models.call(fn, ref.inputs), cfg.device)
    if table is None and ref.compile.enabled and ref.compile.mode != "default":
        plain = compiling.compiled(model, dataclasses.replace(ref.compile, mode="default"))
        table = profiling.top_kernels(lambda: models.call(plain, ref.inputs), cfg.device)
        table = None if table is None else f"(CUDA-graph replays hid their kernels: the same model without graphs)\n{table}"
    return table or "the profiler saw no kernel"


def _compile_fields(first: compiling.CompileRecord, later: compiling.CompileRecord,
                    device: str) -> tuple[dict[str, Any], CompileNotes]:
    """Compiler facts of the row; breaks, recompiles while timing and CUDA-graph skips are named in its extras."""
    # On a CPU inductor always "skips" CUDA graphs: only a GPU's skips say something.
    skips = first.cudagraph_skips + later.cudagraph_skips if device == "cuda" else None
    log = first.log + later.log
    notes = CompileNotes(graph_breaks=first.graph_breaks or None, recompiles_while_timing=later.recompiles or None,
                         compile_log=log[-LOG_LINES:] if log and (first.graph_breaks or later.recompiles or skips)
                         else None)
    return dict(graph_breaks=len(first.graph_breaks), recompiles=len(later.recompiles), cudagraph_skips=skips,
                fx_cache=first.fx_cache_text), notes


# ---- one cell ------------------------------------------------------------------------------------

def _not_here(cfg: SweepConfig, ref: Reference, mode: str, spec: modes_mod.Mode, info) -> str | None:
    """Why this cell can't run, found before anything is quantized or compiled."""
    if ref.layers_total == 0 and mode != "noquant":
        return "nothing to quantize: the model has no nn.Linear layer"
    if ref.prequantized and mode != "noquant":  # torchao can't quantize its own tensors again (aten.view fails)
        return ref.prequantized
    # The layer that sees the most rows decides: when even it can't take the mode, no layer can.
    most = max((rows for _, rows in ref.layer_rows), default=None)
    return spec.unsupported_reason(info, cfg.dtype) or (
        None if most is None else spec.input_reason(info, cfg.dtype, most))


def run_cell(cfg: SweepConfig, ref: Reference, mode: str, batch: int, clock=time.perf_counter,
             on_phase: Phase = no_phase, sandbox=None) -> Row:
    """Quantize a fresh copy, compile, check the output, time: one Row, never an exception."""
    spec = modes_mod.get(mode)
    info = envmod.device_info(cfg.device)
    reason = _not_here(cfg, ref, mode, spec, info)
    if reason:
        return new_row(cfg, ref, mode, batch, "skipped", reason)
    sync = measure.sync_for(cfg.device)
    first = later = compiling.CompileRecord()
    try:
        on_phase("quantizing")
        model = copy.deepcopy(ref.module)
        context = modes_mod.ApplyContext(device=cfg.device, compile=ref.compile, policy=cfg.policy, clock=clock,
                                         progress=cfg.progress, settings=cfg.settings_for(mode),
                                         mode_settings=cfg.mode_settings, layer_rows=ref.layer_rows,
                                         sandbox=sandbox)
        report, quantize_s = measure.time_once(
            lambda: modes_mod.quantize(model, spec, info, cfg.dtype, ref.inputs, context), clock, sync)
        said = Extras.from_json(report.extra)  # the mode's own extras (autoquant's table, per-layer configs)
        left = LayersLeftAlone(report.skipped_layers) if report.skipped_layers else None

        def extra(*more) -> str:  # Row.extra: the mode's extras, then the cell's
            return extra_text(said, left, *more)

        # A mode with its own search (autoquant) may rightly leave every layer alone: that is its result.
        if mode != "noquant" and report.layers_quantized == 0 and spec.apply is None:
            why = next(iter(report.skipped_layers.values()), "torchao changed no layer")
            return new_row(cfg, ref, mode, batch, "skipped", f"no Linear layer fits this mode ({why})",
                           layers_quantized=0, recipe=json.dumps(report.recipe), extra=extra())
        search = said.of(Autoquant)
        common = dict(layers_quantized=report.layers_quantized, quantize_s=quantize_s,
                      search_s=search and search.search_s, recipe=json.dumps(report.recipe))
        with torch.no_grad():
            on_phase("compiling" if ref.compile.enabled else "running")
            fn = compiling.compiled(model, ref.compile, mode)
            graphs0 = compiling.graphs_compiled()
            with compiling.watch() as first:
                out, compile_s = measure.time_once(lambda: models.call(fn, ref.inputs), clock, sync)
            graphs = compiling.graphs_compiled() - graphs0 if ref.compile.enabled else None
            if ref.compile.enabled and graphs == 0:
                raise RuntimeError("torch.compile captured no graph: the model ran eager, so its timing would be mislabelled")
            on_phase("checking the output")
            why, acc = wrongness(ref.output, out)  # before another call: a CUDA-graph replay reuses `out`
            if why is not None:
                return _wrong_row(cfg, ref, mode, batch, model, why, acc, extra, common)
            wbytes = measure.weight_bytes(model)
            step_bytes = measure.streamed_weight_bytes(model) + measure.activation_bytes(ref.inputs, out)
            with compiling.watch() as later:
                on_phase("measuring memory")
                with measure.PeakMemory(cfg.device) as mem:  # the mode alone, before the baseline is called
                    for _ in range(3):
                        models.call(fn, ref.inputs)
                on_phase("timing")
                replicas = _replicas(ref, model, fn, _copy_count(cfg, ref), mode)
                numbers, notes = _timed(cfg, ref, replicas, _window(cfg, ref, clock, sync), clock, sync)
                del replicas[1:]
                if cfg.device == "cuda":
                    numbers["synced_ms"] = measure.time_calls(lambda: models.call(fn, ref.inputs), SYNCED_POLICY,
                                                              clock, sync).median_ms
            profile = None
            if cfg.diagnose:
                on_phase("profiling")
                profile = Profile(_diagnose(cfg, ref, model, fn))
            # first: an LM's quality rewrites the KV cache the output used
            found, saved = _saved(cfg, ref, model, on_phase)
            scored, quality_extras = _quality(cfg, ref, model, fn, acc, clock, sync, on_phase)
        compile_fields, compile_notes = _compile_fields(first, later, cfg.device)
        median = numbers["median_ms"]
        fits = ref.cache_bytes is not None and step_bytes <= ref.cache_bytes
        achieved = step_bytes / (median / 1e3) / 1e9
        fields = dict(sqnr_db=acc.sqnr_db, cosine=acc.cosine, max_abs_err=acc.max_abs_err) | found | scored
        return new_row(
            cfg, ref, mode, batch, "ok", **numbers, **compile_fields,
            compile_s=compile_s if ref.compile.enabled else None, **fields,
            bytes_per_step=step_bytes, achieved_gbs=achieved, fits_in_cache=fits if ref.cache_bytes else None,
            roofline_pct=None if fits or not ref.copy_gbs else 100 * achieved / ref.copy_gbs,
            weight_bytes=wbytes, peak_mem_bytes=mem.peak_bytes, peak_reserved_bytes=mem.reserved_bytes,
            graphs=graphs, tokens_per_s=None if ref.tokens_per_call is None else ref.tokens_per_call / (median / 1e3),
            extra=extra(notes, compile_notes, profile, saved, compile_cache.carried(cfg.compile_cache), *quality_extras),
            **common,
        )
    except UserError as e:
        return new_row(cfg, ref, mode, batch, "error", str(e)[:500])
    except Exception as e:  # one failing cell must not end the sweep: it becomes an error row
        log = CompileNotes(compile_log=(first.log + later.log)[-LOG_LINES:]) if first.log else None
        row = new_row(cfg, ref, mode, batch, "error", _failure_text(e, ref), extra=extra_text(log))
        return repro.for_reference(cfg, ref, row, "error") if repro.inside_torch(e) else row
    finally:
        free_memory(cfg.device)


def graph_break_text(message: str) -> str:
    """Dynamo's break message in one line: what failed, its explanation, and where in the user's code."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    head = " ".join(lines[:2]).replace("Explanation: ", "- ") if lines else "graph break"
    start = next((i for i, line in enumerate(lines) if line.startswith("from user code")), len(lines))
    frames = [line for line in lines[start:] if line.startswith("File ")]
    return head + (f" ({frames[-1]})" if frames else "")  # the innermost frame: the line that broke


def _failure_text(e: Exception, ref: Reference) -> str:
    if isinstance(e, torch._dynamo.exc.Unsupported) and ref.compile.fullgraph:
        first = graph_break_text(str(e))
        why = ("built-in models compile as one graph, so this is a bug in torchao_nb's model code" if ref.builtin
               else "compiled with fullgraph=True; without it the break is counted in the row instead")
        return f"graph break ({why}): {first}"[:500]
    hint = modes_mod.explain_failure(str(e))
    return error_text(e) + (f" ({hint})" if hint else "")
