"""The registry of quantization modes: name → description, torchao config per device, reasons it can't run."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ._torchao import quiet_logs, torchao
from .env import DeviceInfo, UserError
from .measure import TimingPolicy

GROUP_SIZE = 128  # torchao's default int4 group size; also what its published tables use most


@dataclass(frozen=True)
class ApplyReport:
    """What quantizing one model copy did."""

    layers_quantized: int
    layers_total: int
    skipped_layers: dict[str, str] = field(default_factory=dict)  # fqn → why it was left alone
    recipe: dict[str, Any] = field(default_factory=dict)  # the exact config, JSON-ready
    extra: dict[str, Any] = field(default_factory=dict)  # mode-specific details (autoquant's table)


@dataclass(frozen=True)
class ApplyContext:
    """What the sweep tells a recipe's own `apply` hook (autoquant's search times layers like the run does)."""

    device: str = "cpu"
    compile: bool = False  # the run's compile setting
    baseline: bool = True  # the run's baseline compiler settings
    policy: TimingPolicy = TimingPolicy()
    clock: Callable[[], float] = time.perf_counter
    progress: bool = False
    search: Any = None  # autoquant.SearchSettings (or a dict of its fields); None: the defaults
    compile_mode: str = "default"  # the run's torch.compile mode
    torchao_tuning: bool = False  # the run's torchao inductor settings


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    # (device, dtype) -> torchao config; None means "leave the model as it is".
    config: Callable[[DeviceInfo, torch.dtype], Any]
    # (device, dtype) -> why this mode can't run here, or None. Checked before anything runs.
    unsupported: Callable[[DeviceInfo, torch.dtype], str | None] = lambda info, dtype: None
    # (linear, device, dtype) -> why this layer can't take the mode, or None.
    layer_reason: Callable[[nn.Linear, DeviceInfo, torch.dtype], str | None] = lambda lin, info, dtype: None
    # (model, device, dtype, example_inputs, ApplyContext) -> ApplyReport: replaces the default
    # "quantize_ every fitting Linear" (autoquant's search).
    apply: Callable[..., ApplyReport] | None = None

    def unsupported_reason(self, info: DeviceInfo, dtype: torch.dtype) -> str | None:
        if self.name != "noquant" and torchao() is None:
            return "torchao is not installed (pip install 'torchao>=0.17,<0.19')"
        return self.unsupported(info, dtype)


def _ao(name: str, module: str = "torchao.quantization"):
    """A torchao class by name, or None when this torchao lacks it."""
    if torchao() is None:
        return None
    import importlib

    with quiet_logs():
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            return None


def _make(name: str, module: str = "torchao.quantization", **kwargs):
    cls = _ao(name, module)
    if cls is None:
        raise RuntimeError(f"this torchao ({torchao().__version__}) has no {module}.{name}")
    names = {f.name for f in dataclasses.fields(cls)}
    if "set_inductor_config" in names:
        # torchao would otherwise flip process-wide inductor flags for quantized modes only,
        # so baseline and quantized rows would be compiled under different settings.
        kwargs["set_inductor_config"] = False
    return cls(**kwargs)


def _needs(name: str, module: str = "torchao.quantization") -> str | None:
    if _ao(name, module) is None:
        return f"this torchao is too old or too new: it has no {module}.{name}"
    return None


def _has_mslk() -> bool:
    import importlib.util

    return importlib.util.find_spec("mslk") is not None


# ---- int4 ---------------------------------------------------------------------------------

def _int4_config(info: DeviceInfo, dtype: torch.dtype):
    if info.is_cuda:
        # The plain packing needs the separate mslk kernels; tinygemm's 4-d tile packing ships
        # with torch itself and runs on SM 8.x/9.x.
        from torchao.quantization.quantize_.workflows.int4.int4_packing_format import Int4PackingFormat

        packing = Int4PackingFormat.PLAIN if _has_mslk() else Int4PackingFormat.TILE_PACKED_TO_4D
        return _make("Int4WeightOnlyConfig", group_size=GROUP_SIZE, int4_packing_format=packing)
    if dtype == torch.bfloat16:
        # Measured on a 2-core AVX512-BF16 CPU: ~4x faster than bf16 noquant when compiled.
        return _make("PrototypeInt4WeightOnlyConfig", "torchao.prototype.quantization.int4", group_size=GROUP_SIZE)
    # In fp32 the prototype int4 kernel is slower than noquant here; Intx int4 (group-wise)
    # lowers to plain dequantize + matmul, which inductor fuses well.
    from torchao.quantization.granularity import PerGroup

    return _make("IntxWeightOnlyConfig", weight_dtype=torch.int4, granularity=PerGroup(GROUP_SIZE))


def _int4_unsupported(info: DeviceInfo, dtype: torch.dtype) -> str | None:
    if info.is_cuda:
        if dtype != torch.bfloat16:
            return "int4 weight-only on CUDA needs bfloat16 (tinygemm kernels); run with --dtype bfloat16"
        if info.capability and info.capability < (8, 0) and not _has_mslk():
            return f"int4 tinygemm kernels need compute capability >= 8.0 (this GPU: {info.capability[0]}.{info.capability[1]})"
        return _needs("Int4WeightOnlyConfig")
    if dtype == torch.bfloat16:
        return _needs("PrototypeInt4WeightOnlyConfig", "torchao.prototype.quantization.int4")
    return _needs("IntxWeightOnlyConfig")


def _int4_layer_reason(lin: nn.Linear, info: DeviceInfo, dtype: torch.dtype) -> str | None:
    if lin.in_features % GROUP_SIZE:
        return f"in_features {lin.in_features} is not divisible by the group size {GROUP_SIZE}"
    if not info.is_cuda and dtype == torch.bfloat16 and lin.out_features % 16:
        return f"out_features {lin.out_features} is not divisible by 16 (CPU int4 kernel)"
    if info.is_cuda and lin.out_features % 8:
        return f"out_features {lin.out_features} is not divisible by 8 (tinygemm)"
    return None


# ---- float8 -------------------------------------------------------------------------------

def _float8_needs_sm89(info: DeviceInfo) -> str | None:
    if info.is_cuda and info.capability and info.capability < (8, 9):
        cap = ".".join(map(str, info.capability))
        return f"float8 needs CUDA compute capability >= 8.9 (this GPU: {cap})"
    return None


def _float8wo_unsupported(info: DeviceInfo, dtype: torch.dtype) -> str | None:
    return _float8_needs_sm89(info) or _needs("Float8WeightOnlyConfig")


def _float8dyn_unsupported(info: DeviceInfo, dtype: torch.dtype) -> str | None:
    if not info.is_cuda:
        return "float8 dynamic activation needs a CUDA GPU with compute capability >= 8.9; torchao has no CPU kernel"
    return _float8_needs_sm89(info) or _needs("Float8DynamicActivationFloat8WeightConfig")


def _float8dyn_layer_reason(lin: nn.Linear, info: DeviceInfo, dtype: torch.dtype) -> str | None:
    if lin.in_features % 16 or lin.out_features % 16:
        return f"float8 matmul needs both dims divisible by 16 (got {lin.in_features}x{lin.out_features})"
    return None


def _float8dyn_config(info: DeviceInfo, dtype: torch.dtype):
    from torchao.quantization import PerRow

    return _make("Float8DynamicActivationFloat8WeightConfig", granularity=PerRow())


def _autoquant_apply(model, info, dtype, example_inputs, context) -> ApplyReport:
    from . import autoquant  # imported on use: it builds on this registry

    return autoquant.apply(model, info, dtype, example_inputs, context)


def _torchao_autoquant_apply(model, info, dtype, example_inputs, context) -> ApplyReport:
    from . import autoquant

    return autoquant.apply_torchao_autoquant(model, info, dtype, example_inputs, context)


def torchao_autoquant_recipe() -> Recipe | None:
    """The seed's own `torchao.autoquant`, only where the installed torchao still has it (< 0.17)."""
    mod = torchao()
    if mod is None or not callable(getattr(mod, "autoquant", None)):
        return None
    return Recipe("autoquant-torchao",
                  "torchao's own (deprecated) autoquant, as the seed calls it: error_on_unseen=False, one forward pass.",
                  lambda info, dtype: None, apply=_torchao_autoquant_apply)


# ---- the registry ---------------------------------------------------------------------------

RECIPES: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    if recipe.name in RECIPES or recipe.name == "all":
        raise ValueError(f"mode {recipe.name!r} is already registered or reserved")
    RECIPES[recipe.name] = recipe
    return recipe


register(Recipe("noquant", "No quantization: the model as it is (the A/A control).", lambda info, dtype: None))
register(Recipe(
    "int8dynamic", "int8 weights and per-token dynamically quantized int8 activations (int8 x int8 matmul).",
    lambda info, dtype: _make("Int8DynamicActivationInt8WeightConfig"),
    lambda info, dtype: _needs("Int8DynamicActivationInt8WeightConfig"),
))
register(Recipe(
    "int8weightonly", "int8 per-channel weights, activations stay in the model dtype.",
    lambda info, dtype: _make("Int8WeightOnlyConfig"),
    lambda info, dtype: _needs("Int8WeightOnlyConfig"),
))
register(Recipe(
    "int4weightonly",
    f"int4 group-wise (group {GROUP_SIZE}) weights; CUDA: tinygemm, CPU bf16: torchao's CPU int4 kernel, CPU fp32: Intx int4.",
    _int4_config, _int4_unsupported, _int4_layer_reason,
))
register(Recipe(
    "float8weightonly", "float8 (e4m3) per-channel weights, activations stay in the model dtype.",
    lambda info, dtype: _make("Float8WeightOnlyConfig"), _float8wo_unsupported,
))
register(Recipe(
    "float8dynamic", "float8 weights and dynamically quantized float8 activations, per row (CUDA >= 8.9).",
    _float8dyn_config, _float8dyn_unsupported, _float8dyn_layer_reason,
))
register(Recipe(
    "autoquant", "Per-layer search: times each mode on each Linear's real shapes and keeps the fastest accurate one.",
    lambda info, dtype: None, apply=_autoquant_apply,
))
if torchao_autoquant_recipe() is not None:
    register(torchao_autoquant_recipe())


# Errors torch/torchao raise with messages that don't say what to do: pattern → explanation.
KNOWN_FAILURES: tuple[tuple[str, str], ...] = (
    (r"self\.size\(0\) needs to be greater than 16",
     "torch._int_mm on CUDA needs more than 16 rows per matmul (batch x tokens); use a larger batch or a prefill"),
    (r"Requires mslk", "this packing needs the separate `mslk` kernel package"),
)


def explain_failure(message: str) -> str | None:
    import re

    return next((why for pattern, why in KNOWN_FAILURES if re.search(pattern, message)), None)


def mode_names() -> list[str]:
    return list(RECIPES)


def resolve_modes(spec: str | Iterable[str] | None) -> list[str]:
    """'all', 'a,b' or a list → validated mode names, in registry order for 'all'."""
    if spec is None:
        return mode_names()
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    names = [n for n in names if n]
    if not names:
        raise UserError(f"no mode given; choose from: all, {', '.join(RECIPES)}.")
    out: list[str] = []
    for n in names:
        if n == "all":
            out.extend(m for m in RECIPES if m not in out)
        elif n not in RECIPES:
            raise UserError(f"unknown mode {n!r}; valid modes: all, {', '.join(RECIPES)}.")
        elif n not in out:
            out.append(n)
    return out


def get(name: str) -> Recipe:
    return RECIPES[resolve_modes([name])[0]]


# ---- applying a recipe ------------------------------------------------------------------------

def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    return {fqn: m for fqn, m in model.named_modules() if isinstance(m, nn.Linear)}


def is_quantized(linear: nn.Linear) -> bool:
    """torchao swaps the weight for a tensor subclass; a plain Parameter means untouched."""
    return type(linear.weight) not in (torch.Tensor, nn.Parameter)


def config_dict(config: Any) -> dict[str, Any]:
    """The exact torchao config as JSON-ready data (torchao's own serialisation where it has one)."""
    if config is None:
        return {}
    try:
        from torchao.core.config import config_to_dict

        data = config_to_dict(config)
    except Exception:  # older torchao or a config it can't serialise: fall back to repr
        data = {"_type": type(config).__name__, "repr": repr(config)}
    return json.loads(json.dumps(data, default=str))


def quantize(model: nn.Module, recipe: Recipe, info: DeviceInfo, dtype: torch.dtype, example_inputs=None,
             context: ApplyContext | None = None) -> ApplyReport:
    """Quantize `model` in place with `recipe`; layers that don't fit are left alone and reported."""
    if recipe.apply is not None:
        return recipe.apply(model, info, dtype, example_inputs, context or ApplyContext(device=info.type))
    layers = linear_layers(model)
    skipped = {}
    for fqn, lin in layers.items():
        reason = recipe.layer_reason(lin, info, dtype)
        if reason:
            skipped[fqn] = reason
    config = recipe.config(info, dtype)
    if config is not None and len(skipped) < len(layers):
        from torchao.quantization import quantize_

        fits = lambda mod, fqn: isinstance(mod, nn.Linear) and fqn not in skipped  # noqa: E731
        with quiet_logs():
            quantize_(model, config, filter_fn=fits)
    done = sum(is_quantized(lin) for lin in linear_layers(model).values())
    return ApplyReport(done, len(layers), skipped, config_dict(config))


def availability(info: DeviceInfo, dtype: torch.dtype) -> dict[str, str | None]:
    """Every mode → None if it runs here, else the reason it can't."""
    return {name: r.unsupported_reason(info, dtype) for name, r in RECIPES.items()}
