"""One cell of a sweep: build the unquantized reference, then quantize a fresh copy, compile, check, time → one Row."""

from __future__ import annotations

import copy
import dataclasses
import functools
import gc
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from . import compiling, measure, models
from .checks import nonfinite, wrongness
from . import env as envmod
from ._torchao import torchao_version
from . import modes as modes_mod
from .config import SweepConfig, mode_settings_text
from .errors import UserError, error_text
from .results import Row

Phase = Callable[[str], None]


def _no_phase(_: str) -> None:
    return None


@dataclass(frozen=True)
class ModelSource:
    """A registered model (by name, so it travels to a worker as a name), or a user's module with its inputs."""

    name: str
    module: nn.Module | None = None
    inputs: models.Inputs | None = None

    def __reduce__(self):  # travels without the cached spec: a registry model is rebuilt from its name
        return (ModelSource, (self.name, self.module, self.inputs))

    @functools.cached_property
    def spec(self) -> models.ModelSpec | None:
        return None if self.module is not None else models.get(self.name)

    @functools.cached_property
    def signature(self) -> str:
        """A user's module: a hash of its structure, its tensors' names, shapes and dtypes and its inputs' shapes, so
        a resumed sweep re-uses a row only for the same module (its class name alone can't tell two apart)."""
        if self.module is None:
            return ""
        parts = [repr(self.module)]
        parts += [f"{n}:{tuple(t.shape)}:{t.dtype}" for n, t in self.module.state_dict().items()
                  if isinstance(t, torch.Tensor)]
        values = self.inputs.items() if isinstance(self.inputs, dict) else enumerate(self.inputs)
        parts += [f"{k}={tuple(v.shape)}:{v.dtype}" if isinstance(v, torch.Tensor) else f"{k}={v!r}" for k, v in values]
        return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:12]

    @functools.cached_property
    def prequantized(self) -> str:
        """Why a user's module is already quantized ("" when it isn't): its Linear weights are torchao tensors."""
        if self.module is None:
            return ""
        layers = modes_mod.linear_layers(self.module)
        done = {fqn: type(lin.weight).__name__ for fqn, lin in layers.items() if modes_mod.is_quantized(lin)}
        if not done:
            return ""
        fqn, kind = next(iter(done.items()))
        return (f"the model is already quantized ({len(done)} of {len(layers)} Linear layers hold torchao tensors, "
                f"e.g. {fqn}.weight is a {kind}): give the unquantized model to compare modes; noquant measures it "
                "as given")

    def batch_sizes(self, cfg: SweepConfig) -> tuple[int, ...]:
        return cfg.batch_sizes if self.module is None else (models.batch_of(self.inputs),)

    def seq_len(self, cfg: SweepConfig) -> int | None:
        spec = self.spec
        return None if spec is None else cfg.seq_len or spec.seq_len

    def build(self, cfg: SweepConfig, batch: int) -> tuple[nn.Module, models.Inputs, int | None]:
        spec = self.spec
        if spec is not None:
            seq = self.seq_len(cfg)
            module, inputs = spec.build(cfg.device, cfg.dtype, batch, seq)
            return module, inputs, spec.tokens_per_call(batch, seq)
        # The user's module is copied before anything touches it: it is never mutated.
        module = copy.deepcopy(self.module).to(device=cfg.device, dtype=cfg.dtype).eval()
        return module, models.convert_inputs(self.inputs, cfg.device, cfg.dtype), None


@dataclass
class Reference:
    """The unquantized model of one (model, batch size) and its output, shared by its cells.

    It is not timed here: each cell times it again, interleaved with the mode (see run_cell).
    """

    name: str
    module: nn.Module
    inputs: models.Inputs
    output: Any
    tokens_per_call: int | None
    layers_total: int
    copy_gbs: float | None = None  # the device's copy bandwidth, for the roofline column
    task: models.Task | None = None  # a task-level accuracy that fills `cosine` instead of the raw output's
    task_inputs: Any = None
    task_output: Any = None
    seq_len: int | None = None  # a registry model's sequence length; None for a user's module
    signature: str = ""  # a user's module: ModelSource.signature
    prequantized: str = ""  # a user's module that is already quantized: ModelSource.prequantized


def build_reference(cfg: SweepConfig, source: ModelSource, batch: int, copy_gbs: float | None,
                    on_phase: Phase = _no_phase) -> Reference:
    """Build the model and record its unquantized output (the accuracy reference); raises if the model fails."""
    on_phase("building the model")
    module, inputs, tokens = source.build(cfg, batch)
    spec = source.spec
    task = spec.task if spec is not None else None
    on_phase("computing the unquantized output")
    with torch.no_grad():
        output = models.call(module, inputs)
        bad = nonfinite(output)
        if bad:
            raise ValueError(f"its output has {bad} NaN or infinite values, so no mode can be compared with it")
        task_inputs = task.inputs(cfg.device, cfg.dtype) if task else None
        task_output = task.run(module, task_inputs) if task else None
    return Reference(source.name, module, inputs, output, tokens, len(modes_mod.linear_layers(module)),
                     copy_gbs, task, task_inputs, task_output, source.seq_len(cfg), source.signature,
                     source.prequantized)


def _stub(cfg: SweepConfig, source: ModelSource) -> Reference:
    """What a row needs to know about a model that was not (or could not be) built."""
    return Reference(source.name, None, None, None, None, None, seq_len=source.seq_len(cfg),
                     signature=source.signature, prequantized=source.prequantized)


def error_row(cfg: SweepConfig, source: ModelSource, mode: str, batch: int, why: str, extra: dict | None = None) -> Row:
    """A cell that failed before it could say anything about its model (a crash, a time limit)."""
    return _row(cfg, _stub(cfg, source), mode, batch, "error", why[:500], extra=json.dumps(extra) if extra else "")


def failed_reference_row(cfg: SweepConfig, source: ModelSource, mode: str, batch: int, why: str,
                         extra: dict | None = None) -> Row:
    also = f" ({source.prequantized})" if source.prequantized else ""
    return error_row(cfg, source, mode, batch, f"the unquantized model failed: {why}{also}", extra)


@functools.lru_cache(maxsize=None)
def _where(device: str) -> dict[str, str]:
    """What every row records about the machine and versions that produced it."""
    return dict(device_name=envmod.device_info(device).name, torch_version=torch.__version__,
                torchao_version=torchao_version() or "")


def _row(cfg: SweepConfig, ref: Reference, mode: str, batch: int, status: str, reason: str = "", **kw) -> Row:
    return Row(model=ref.name, mode=mode, batch_size=batch, device=cfg.device, dtype=envmod.dtype_name(cfg.dtype),
               compile=cfg.compile.enabled, baseline=cfg.compile.baseline, status=status, reason=reason,
               layers_total=ref.layers_total, threads=cfg.threads, compile_mode=cfg.compile.label,
               seq_len=ref.seq_len, torchao_tuning=cfg.compile.enabled and cfg.compile.torchao_tuning,
               timing=measure.policy_name(cfg.policy), mode_settings=mode_settings_text(cfg, mode),
               model_signature=ref.signature, **_where(cfg.device), **kw)


def cell_key(cfg: SweepConfig, source: ModelSource, mode: str, batch: int) -> tuple:
    """The key the row of this cell will have (Row.key), known before it runs."""
    return _row(cfg, _stub(cfg, source), mode, batch, "ok").key


def free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# ---- a wrong output -----------------------------------------------------------------------------

def _wrong_reason(cfg: SweepConfig, mode: str, why: str, eager_why: str | None, eager: measure.Accuracy | None) -> str:
    if not cfg.compile.enabled:
        return f"output wrong: {why}"
    if eager_why is None:
        db = "identical" if eager is None or eager.sqnr_db is None else f"{eager.sqnr_db:.1f} dB"
        return (f"compiled output wrong ({why}), eager {db}: a compiler or kernel bug on this machine, "
                f"not an accuracy of {mode}")
    return f"output wrong, compiled ({why}) and eager ({eager_why}): {mode} breaks this model's output"


def _task_accuracy(ref: Reference, model: nn.Module, acc: measure.Accuracy, extra: dict) -> measure.Accuracy:
    """The model's task-level score takes the `cosine` column; the raw-output cosine moves to extra."""
    score = ref.task.score(ref.task_output, ref.task.run(model, ref.task_inputs))  # eager: the task's shapes differ
    extra.update(cosine=ref.task.metric, task_min_cosine=score["min"], output_cosine=acc.cosine)
    return dataclasses.replace(acc, cosine=score["mean"])


# ---- one cell ------------------------------------------------------------------------------------

def run_cell(cfg: SweepConfig, ref: Reference, mode: str, batch: int, clock=time.perf_counter,
             on_phase: Phase = _no_phase) -> Row:
    """Quantize a fresh copy, compile, check the output, time: one Row, never an exception."""
    spec = modes_mod.get(mode)
    info = envmod.device_info(cfg.device)
    reason = spec.unsupported_reason(info, cfg.dtype)
    if reason:
        return _row(cfg, ref, mode, batch, "skipped", reason)
    if ref.prequantized and mode != "noquant":  # torchao can't quantize its own tensors again (aten.view fails)
        return _row(cfg, ref, mode, batch, "skipped", ref.prequantized)
    if ref.layers_total == 0 and mode != "noquant":
        return _row(cfg, ref, mode, batch, "skipped", "nothing to quantize: the model has no nn.Linear layer")
    sync = measure.sync_for(cfg.device)
    try:
        on_phase("quantizing")
        model = copy.deepcopy(ref.module)
        context = modes_mod.ApplyContext(device=cfg.device, compile=cfg.compile, policy=cfg.policy, clock=clock,
                                         progress=cfg.progress, settings=cfg.settings_for(mode))
        report, quantize_s = measure.time_once(
            lambda: modes_mod.quantize(model, spec, info, cfg.dtype, ref.inputs, context), clock, sync)
        extra = dict(report.extra)
        if report.skipped_layers:
            extra["layers_left_alone"] = report.skipped_layers
        # A mode with its own search (autoquant) may rightly leave every layer alone: that is its result.
        if mode != "noquant" and report.layers_quantized == 0 and spec.apply is None:
            why = next(iter(report.skipped_layers.values()), "torchao changed no layer")
            return _row(cfg, ref, mode, batch, "skipped", f"no Linear layer fits this mode ({why})",
                        layers_quantized=0, recipe=json.dumps(report.recipe), extra=json.dumps(extra))
        common = dict(layers_quantized=report.layers_quantized, quantize_s=quantize_s,
                      search_s=report.extra.get("search_s"), recipe=json.dumps(report.recipe))
        with torch.no_grad(), compiling.maybe_compiled(cfg.compile):
            on_phase("compiling" if cfg.compile.enabled else "running")
            fn = compiling.compiled(model, cfg.compile)
            graphs0 = compiling.graphs_compiled()
            out, compile_s = measure.time_once(lambda: models.call(fn, ref.inputs), clock, sync)
            graphs = compiling.graphs_compiled() - graphs0 if cfg.compile.enabled else None
            if cfg.compile.enabled and graphs == 0:
                raise RuntimeError("torch.compile captured no graph: the model ran eager, so its timing would be mislabelled")
            on_phase("checking the output")
            why, acc = wrongness(ref.output, out)
            if why is not None:
                return _wrong_row(cfg, ref, mode, batch, model, why, acc, extra, common)
            if ref.task is not None:
                acc = _task_accuracy(ref, model, acc, extra)
            on_phase("measuring memory")
            with measure.PeakMemory(cfg.device) as mem:  # the mode alone, before the baseline copy exists
                for _ in range(3):
                    models.call(fn, ref.inputs)
            on_phase("timing")
            timed = _time_against_references(cfg, ref, fn, clock, sync)
        m, eager_ms = timed[-1], timed[-2].median_ms
        median = m.median_ms
        baseline_ms = timed[0].median_ms  # the compiled baseline, or eager when compile is off
        wbytes = measure.weight_bytes(model)
        step_bytes = wbytes + measure.activation_bytes(ref.inputs, out)
        achieved = step_bytes / (median / 1e3) / 1e9
        return _row(
            cfg, ref, mode, batch, "ok",
            median_ms=median, iqr_ms=m.iqr_ms, samples=len(m.samples_ms), noisy=m.noisy(cfg.policy),
            baseline_ms=baseline_ms, speedup=baseline_ms / median,
            eager_ms=eager_ms, speedup_vs_eager=eager_ms / median,
            compile_s=compile_s if cfg.compile.enabled else None,
            sqnr_db=acc.sqnr_db, cosine=acc.cosine, max_abs_err=acc.max_abs_err,
            bytes_per_step=step_bytes, achieved_gbs=achieved,
            roofline_pct=None if not ref.copy_gbs else 100 * achieved / ref.copy_gbs,
            weight_bytes=wbytes, peak_mem_bytes=mem.peak_bytes, peak_reserved_bytes=mem.reserved_bytes,
            graphs=graphs,
            tokens_per_s=None if ref.tokens_per_call is None else ref.tokens_per_call / (median / 1e3),
            extra=json.dumps(extra) if extra else "", **common,
        )
    except UserError as e:
        return _row(cfg, ref, mode, batch, "error", str(e)[:500])
    except Exception as e:  # one failing cell must not end the sweep: it becomes an error row
        hint = modes_mod.explain_failure(str(e))
        return _row(cfg, ref, mode, batch, "error", error_text(e) + (f" ({hint})" if hint else ""))
    finally:
        free_memory(cfg.device)


def _wrong_row(cfg, ref, mode, batch, model, why, acc, extra, common) -> Row:
    """A wrong output is never timed; for a compiled cell the eager quantized model says which side is wrong."""
    eager_why = eager = None
    if cfg.compile.enabled:
        eager_out = models.call(model, ref.inputs)
        eager_why, eager = wrongness(ref.output, eager_out)
        extra["eager_sqnr_db"] = None if eager is None else eager.sqnr_db
    numbers = {} if acc is None else dict(sqnr_db=acc.sqnr_db, cosine=acc.cosine, max_abs_err=acc.max_abs_err)
    return _row(cfg, ref, mode, batch, "wrong", _wrong_reason(cfg, mode, why, eager_why, eager),
                extra=json.dumps(extra), **numbers, **common)


def _time_against_references(cfg: SweepConfig, ref: Reference, fn, clock, sync) -> list[measure.Measurement]:
    """[baseline, eager, mode]: the unquantized references timed interleaved with the mode, so both
    speedups compare timings taken under the same machine state (the baseline's compile is a cache hit)."""
    calls = [lambda: models.call(ref.module, ref.inputs), lambda: models.call(fn, ref.inputs)]
    if cfg.compile.enabled:
        base = compiling.compiled(copy.deepcopy(ref.module), cfg.compile)
        models.call(base, ref.inputs)
        calls.insert(0, lambda: models.call(base, ref.inputs))
    return measure.time_interleaved(calls, cfg.policy, clock, sync)

