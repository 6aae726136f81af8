"""The unquantized side of a group of cells: the model source, its reference output, and the rows cells start from."""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from . import compiling, measure, models
from . import env as envmod
from . import modes as modes_mod
from ._torchao import torchao_version
from .checks import nonfinite
from .config import SweepConfig, mode_settings_text
from .extras import extra_text
from .results import Row
from .spec import CellSpec

Phase = Callable[[str], None]  # told what the cell is doing now, for progress and crash reports


def no_phase(_: str) -> None:
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

    def compile_settings(self, cfg: SweepConfig) -> compiling.CompileSettings:
        """Built-in models compile as one graph (a break would be our bug); a user's module as they asked."""
        fullgraph = self.spec.fullgraph if self.spec is not None else cfg.compile.fullgraph
        return dataclasses.replace(cfg.compile, fullgraph=fullgraph)

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

    It is not timed here: a group's cells time it again, in the same rounds as their modes (see rounds.time_modes); its
    compiled form is made once, by the first cell that needs it, and kept for the group.
    """

    name: str
    module: nn.Module
    inputs: models.Inputs
    output: Any
    tokens_per_call: int | None
    layers_total: int
    copy_gbs: float | None = None  # the device's copy bandwidth, for the roofline column
    quality: models.Quality | None = None  # the model's own quality measure (a task's score, an LM's perplexity)
    quality_reference: Any = None  # what it measured on the unquantized model
    seq_len: int | None = None  # a registry model's sequence length; None for a user's module
    layer_rows: tuple[tuple[str, int], ...] = ()  # each Linear's fewest rows (batch x tokens) in one call
    compile: compiling.CompileSettings = compiling.EAGER  # how this model's cells compile
    cache_bytes: int | None = None  # the device's last-level cache (CPU) or L2 (GPU)
    compiled_baselines: list = dataclasses.field(default_factory=list)  # made by the first compiled cell, re-used
    builtin: bool = False  # a registry model: its code is torchao_nb's
    signature: str = ""  # a user's module: ModelSource.signature
    prequantized: str = ""  # a user's module that is already quantized: ModelSource.prequantized


def _rows_per_layer(module: nn.Module, inputs: models.Inputs) -> tuple[Any, tuple[tuple[str, int], ...]]:
    """The output of one forward pass, and the fewest rows each Linear got in it (its input's numel / in_features)."""
    seen: dict[str, int] = {}

    def see(fqn: str, x: torch.Tensor) -> None:
        if x.dim():
            rows = x.numel() // max(1, x.shape[-1])
            seen[fqn] = min(rows, seen.get(fqn, rows))

    with modes_mod.seeing_linear_inputs(module, see):
        out = models.call(module, inputs)
    return out, tuple(seen.items())


def build_reference(cfg: SweepConfig, source: ModelSource, batch: int, copy_gbs: float | None,
                    on_phase: Phase = no_phase) -> Reference:
    """Build the model and record its unquantized output (the accuracy reference); raises if the model fails."""
    on_phase("building the model")
    module, inputs, tokens = source.build(cfg, batch)
    spec = source.spec
    quality = spec.quality if spec is not None else None
    on_phase("computing the unquantized output")
    with torch.no_grad():
        output, rows = _rows_per_layer(module, inputs)
        bad = nonfinite(output)
        if bad:
            raise ValueError(f"its output has {bad} NaN or infinite values, so no mode can be compared with it")
        if quality is not None:
            on_phase("measuring the unquantized model's quality")
            quality_reference = quality.reference(module, cfg.device, cfg.dtype)
    return Reference(source.name, module, inputs, output, tokens, len(modes_mod.linear_layers(module)),
                     copy_gbs, quality, quality_reference if quality else None, source.seq_len(cfg), rows,
                     source.compile_settings(cfg), envmod.cache_bytes(cfg.device), builtin=spec is not None,
                     signature=source.signature, prequantized=source.prequantized)


# ---- rows ----------------------------------------------------------------------------------------------

def _where(device: str) -> dict[str, str]:
    """What every row records about the machine and versions that produced it."""
    return dict(device_name=envmod.device_info(device).name, torch_version=torch.__version__,
                torchao_version=torchao_version() or "")


def _spec(cfg: SweepConfig, name: str, mode: str, batch: int, seq_len: int | None, signature: str) -> CellSpec:
    return CellSpec(model=name, mode=mode, batch_size=batch, seq_len=seq_len, model_signature=signature,
                    mode_settings=mode_settings_text(cfg, mode), device=cfg.device,
                    dtype=envmod.dtype_name(cfg.dtype), compile=cfg.compile.enabled, baseline=cfg.compile.baseline,
                    compile_mode=cfg.compile.label, tuning=cfg.compile.tuning if cfg.compile.enabled else "off",
                    threads=cfg.threads, timing=measure.policy_name(cfg.policy), cache=cfg.cache, **_where(cfg.device))


def cell_spec(cfg: SweepConfig, source: ModelSource, mode: str, batch: int) -> CellSpec:
    """The spec of this cell (its row's `spec`, the resume key), known before it runs."""
    return _spec(cfg, source.name, mode, batch, source.seq_len(cfg), source.signature)


def new_row(cfg: SweepConfig, ref: Reference, mode: str, batch: int, status: str, reason: str = "", **kw) -> Row:
    spec = _spec(cfg, ref.name, mode, batch, ref.seq_len, ref.signature)
    return Row.of(spec, status, reason, layers_total=ref.layers_total, **kw)


def error_row(cfg: SweepConfig, source: ModelSource, mode: str, batch: int, why: str, extra: dict | None = None) -> Row:
    """A cell that failed before it could say anything about its model (a crash, a time limit); `extra`: the
    JSON of its extras (a worker's log: extras.WorkerLog)."""
    return Row.of(cell_spec(cfg, source, mode, batch), "error", why[:500], extra=extra_text((), extra))


def failed_reference_row(cfg: SweepConfig, source: ModelSource, mode: str, batch: int, why: str,
                         extra: dict | None = None) -> Row:
    also = f" ({source.prequantized})" if source.prequantized else ""
    return error_row(cfg, source, mode, batch, f"the unquantized model failed: {why}{also}", extra)
