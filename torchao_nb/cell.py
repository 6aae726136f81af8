"""One cell of a sweep: quantize a fresh copy of the reference, compile, check the output, time → one Row."""

from __future__ import annotations

import copy
import dataclasses
import functools
import gc
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import compile_cache, compiling, measure, models, profiling, repro, rounds, saving, warmup
from . import env as envmod
from . import modes as modes_mod
from .checks import wrongness
from .config import SweepConfig
from .errors import UserError, error_text
from .extras import (Autoquant, CompileNotes, EagerCheck, Extras, LayersLeftAlone, Profile, SaveReload, Warmed,
                     extra_text)
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
                         unquantized=ref.module, unquantized_step=rounds.baselines(ref, 1)[0] if ref.compile.enabled else ref.module)
    with compiling.watch() as watched:
        score = ref.quality.score(ref.quality_reference, model, probe)
    return score.fields, [CompileNotes(recompiles_while_scoring=watched.recompiles or None), score.extra]


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


@dataclass
class Prepared:
    """A cell quantized, compiled, checked and copied: what its row needs once its group's rounds have timed it."""

    mode: str
    model: nn.Module  # the quantized model (eager)
    copies: list  # its compiled copies, the first the one that was checked
    acc: measure.Accuracy
    compile_s: float
    graphs: int | None
    weight_bytes: int
    step_bytes: int
    memory: measure.PeakMemory
    first: compiling.CompileRecord  # the compile and first call
    later: compiling.CompileRecord  # the calls after it, before timing
    common: dict[str, Any]  # the row fields every outcome of this cell has
    said: Extras  # the mode's own extras
    left: LayersLeftAlone | None
    warmed: Warmed | None = None  # what a compile helper did for it (--compile-workers)

    def extra(self, *more) -> str:  # Row.extra: the mode's extras, then the cell's
        return extra_text(self.said, self.left, self.warmed, *more)


TOGETHER = "every mode"  # the `mode` of the phase in which a group's modes are timed together
AFTER_CRASH = "timed alone, not with its group's other modes: the worker crashed while they were timed together"


def run_group(cfg: SweepConfig, ref: Reference, modes: Sequence[str], batch: int, on_row: Callable[[Row], None],
              clock=time.perf_counter, on_phase: Callable[[str | None, str], None] = lambda mode, what: None,
              sandbox=None, stop=None, together: bool = True, why_alone: str | None = None, spawn=None) -> None:
    """The cells of one group: each quantized, compiled and checked in turn; then the ones that ran timed together
    in one set of rounds with the unquantized model (each alone when `together` is off, its note saying
    `why_alone`, or when memory says so); then each measured for the rest of its row. A failed, skipped or wrong
    cell's row comes at once. With `spawn` (sandbox.Zygote.spawn) and cfg.compile_workers, helper processes
    compile cells ahead of the worker (warmup.py); no cell's speed (nor autoquant's search) is timed while one runs:
    only the worker's own quantize and compile seconds may be."""
    why_alone = why_alone if not together else rounds.together(cfg, ref, len(modes))
    alone = not together or why_alone is not None
    n = rounds.copies(cfg, ref, 1 if alone else len(modes))
    sync = measure.sync_for(cfg.device)
    info = envmod.device_info(cfg.device)
    warm, unwarmed = warmup.start(cfg, ref, modes, spawn,
                                  lambda m: _not_here(cfg, ref, m, modes_mod.get(m), info) is None)
    # The cells no helper takes (autoquant's search, which times its candidates) go last, once no helper runs: on
    # the 2-core CPU a search beside two helpers took 65 s instead of 26, its timings taken on a busy machine.
    order = sorted(modes, key=lambda m: not warmup.takes(m)) if warm is not None else list(modes)
    ready: list[Prepared] = []
    try:
        for mode in order:
            if stop is not None and stop.is_set():
                return
            phase = functools.partial(on_phase, mode)
            if warm is not None and not warmup.takes(mode):
                warm.drain(phase)
            warmed = warm.claim(mode, phase) if warm is not None else unwarmed.get(mode)
            done = prepare_cell(cfg, ref, mode, batch, n, clock, phase, sandbox, warmed)
            if isinstance(done, Row):
                on_row(done)
            elif alone:
                if warm is not None:
                    warm.drain(phase)
                on_row(finish_cell(cfg, ref, done, batch,
                                   _time(cfg, ref, [done], clock, sync, on_phase, why_alone)[mode], clock, phase))
            else:
                ready.append(done)
    finally:
        if warm is not None:
            warm.close()
    if not ready or (stop is not None and stop.is_set()):
        return
    ready.sort(key=lambda p: list(modes).index(p.mode))
    timed = _time(cfg, ref, ready, clock, sync, on_phase, None)
    while ready and not (stop is not None and stop.is_set()):  # each row done frees its copies before the next
        done = ready.pop(0)
        on_row(finish_cell(cfg, ref, done, batch, timed.pop(done.mode), clock, functools.partial(on_phase, done.mode)))


def _time(cfg: SweepConfig, ref: Reference, ready: list[Prepared], clock, sync, on_phase,
          alone: str | None) -> dict[str, Any]:
    """The rounds of `ready`'s cells: per mode its numbers and notes, or the exception that stopped them."""
    label = ready[0].mode if len(ready) == 1 else TOGETHER
    on_phase(label, "timing" if len(ready) == 1 else f"timing {len(ready)} modes together")
    try:
        with compiling.watch() as during:
            timed = rounds.time_modes(cfg, ref, {p.mode: p.copies for p in ready}, clock, sync)
    except Exception as e:  # a failure of one cell's calls: every cell of these rounds says it
        return {p.mode: e for p in ready}
    recompiles = during.recompiles or None
    return {mode: (numbers, dataclasses.replace(notes, alone=alone), recompiles)
            for mode, (numbers, notes) in timed.items()}


def prepare_cell(cfg: SweepConfig, ref: Reference, mode: str, batch: int, copies: int, clock=time.perf_counter,
                 on_phase: Phase = no_phase, sandbox=None, warmed: Warmed | None = None) -> "Row | Prepared":
    """Quantize a fresh copy, compile, check the output, make its copies: ready to be timed, or its final Row
    (skipped, wrong, error), never an exception."""
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
                                         sandbox=sandbox, keep_compiles=bool(cfg.compile_cache_to))
        report, quantize_s = measure.time_once(
            lambda: modes_mod.quantize(model, spec, info, cfg.dtype, ref.inputs, context), clock, sync)
        said = Extras.from_json(report.extra)  # the mode's own extras (autoquant's table, per-layer configs)
        left = LayersLeftAlone(report.skipped_layers) if report.skipped_layers else None
        # A mode with its own search (autoquant) may rightly leave every layer alone: that is its result.
        if mode != "noquant" and report.layers_quantized == 0 and spec.apply is None:
            why = next(iter(report.skipped_layers.values()), "torchao changed no layer")
            return new_row(cfg, ref, mode, batch, "skipped", f"no Linear layer fits this mode ({why})",
                           layers_quantized=0, recipe=json.dumps(report.recipe), extra=extra_text(said, left))
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
                return _wrong_row(cfg, ref, mode, batch, model, why, acc, lambda *more: extra_text(said, left, *more),
                                  common)
            wbytes = measure.weight_bytes(model)
            step_bytes = measure.streamed_weight_bytes(model) + measure.activation_bytes(ref.inputs, out)
            with compiling.watch() as later:
                on_phase("measuring memory")
                with measure.PeakMemory(cfg.device) as mem:  # the mode alone, before the baseline is called
                    for _ in range(3):
                        models.call(fn, ref.inputs)
                on_phase("making copies")
                made = rounds.replicas(ref, model, fn, copies, mode)
        return Prepared(mode, model, made, acc, compile_s, graphs, wbytes, step_bytes, mem, first, later, common,
                        said, left, warmed)
    except Exception as e:
        return _error_row(cfg, ref, mode, batch, e, first, later)


def finish_cell(cfg: SweepConfig, ref: Reference, p: Prepared, batch: int, timed, clock=time.perf_counter,
                on_phase: Phase = no_phase) -> Row:
    """A timed cell's row: its numbers, then what is measured after timing (profile, save and reload, quality)."""
    sync = measure.sync_for(cfg.device)
    try:
        if isinstance(timed, Exception):
            raise timed
        numbers, notes, recompiles = timed
        fn = p.copies[0]
        del p.copies[1:]
        with torch.no_grad():
            if cfg.device == "cuda":
                numbers["synced_ms"] = measure.time_calls(lambda: models.call(fn, ref.inputs), SYNCED_POLICY,
                                                          clock, sync).median_ms
            profile = None
            if cfg.diagnose:
                on_phase("profiling")
                profile = Profile(_diagnose(cfg, ref, p.model, fn))
            # first: an LM's quality rewrites the KV cache the output used
            found, saved = _saved(cfg, ref, p.model, on_phase)
            scored, quality_extras = _quality(cfg, ref, p.model, fn, p.acc, clock, sync, on_phase)
        later = dataclasses.replace(p.later, recompiles=p.later.recompiles + (recompiles or []))
        compile_fields, compile_notes = _compile_fields(p.first, later, cfg.device)
        median = numbers["median_ms"]
        fits = ref.cache_bytes is not None and p.step_bytes <= ref.cache_bytes
        achieved = p.step_bytes / (median / 1e3) / 1e9
        fields = dict(sqnr_db=p.acc.sqnr_db, cosine=p.acc.cosine, max_abs_err=p.acc.max_abs_err) | found | scored
        return new_row(
            cfg, ref, p.mode, batch, "ok", **numbers, **compile_fields,
            compile_s=p.compile_s if ref.compile.enabled else None, **fields,
            bytes_per_step=p.step_bytes, achieved_gbs=achieved, fits_in_cache=fits if ref.cache_bytes else None,
            roofline_pct=None if fits or not ref.copy_gbs else 100 * achieved / ref.copy_gbs,
            weight_bytes=p.weight_bytes, peak_mem_bytes=p.memory.peak_bytes,
            peak_reserved_bytes=p.memory.reserved_bytes, graphs=p.graphs,
            tokens_per_s=None if ref.tokens_per_call is None else ref.tokens_per_call / (median / 1e3),
            extra=p.extra(notes, compile_notes, profile, saved, compile_cache.carried(cfg.compile_cache),
                          *quality_extras),
            **p.common,
        )
    except Exception as e:
        return _error_row(cfg, ref, p.mode, batch, e, p.first, p.later)
    finally:
        p.copies.clear()
        free_memory(cfg.device)


def _error_row(cfg: SweepConfig, ref: Reference, mode: str, batch: int, e: Exception,
               first: compiling.CompileRecord, later: compiling.CompileRecord) -> Row:
    """One failing cell must not end the sweep: it becomes an error row (a user's mistake: its own line)."""
    if isinstance(e, UserError):
        return new_row(cfg, ref, mode, batch, "error", str(e)[:500])
    log = CompileNotes(compile_log=(first.log + later.log)[-LOG_LINES:]) if first.log else None
    row = new_row(cfg, ref, mode, batch, "error", _failure_text(e, ref), extra=extra_text(log))
    return repro.for_reference(cfg, ref, row, "error") if repro.inside_torch(e) else row


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
