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
from .env import DeviceInfo
from .errors import UserError
from .compiling import EAGER, CompileSettings
from .measure import TimingPolicy
from .registry import Registry

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
    """What a mode's own `apply` hook is told about the run (autoquant's search times layers the way the run does)."""

    device: str = "cpu"
    compile: CompileSettings = EAGER
    policy: TimingPolicy = TimingPolicy()
    clock: Callable[[], float] = time.perf_counter
    progress: bool = False
    settings: object | None = None  # the mode's own settings object (Mode.settings), None for its defaults
    mode_settings: tuple[tuple[str, object], ...] = ()  # every mode's settings (autoquant quantizes candidates)
    # Linear name -> the fewest rows (batch x tokens) it sees in one call, for Mode.input_reason; empty: unknown.
    layer_rows: tuple[tuple[str, int], ...] = ()
    # Runs fn(*args, phase=...) where a crash can't reach the run (a child process; executors.Zygote.call),
    # raising errors.Crashed; None: work runs in this process.
    sandbox: Callable[..., Any] | None = None


@dataclass(frozen=True)
class Mode:
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
    # (linear, device, dtype, settings) -> (config, label): a config per layer (int4's group size), layers
    # with one label quantized together; None: `config` for every layer.
    layer_config: Callable[..., tuple[Any, str]] | None = None
    # (device, dtype, rows) -> why a Linear that sees `rows` (batch x tokens) in one call can't take the mode
    # (torch._int_mm on CUDA needs more than 16). Such layers are left alone; when no layer of the model has
    # enough rows, the cell is skipped before anything is quantized.
    input_reason: Callable[[DeviceInfo, torch.dtype, int], str | None] = lambda info, dtype, rows: None
    # The mode's own settings type: `settings.of(value)` turns None, a dict or an instance into one.
    settings: Any = None

    def unsupported_reason(self, info: DeviceInfo, dtype: torch.dtype) -> str | None:
        if self.name != "noquant" and torchao() is None:
            return "torchao is not installed (pip install 'torchao>=0.17,<0.19')"
        return self.unsupported(info, dtype)

    def parse_settings(self, value: Any) -> object | None:
        if self.settings is None:
            if value is not None:
                raise UserError(f"mode {self.name!r} takes no settings.")
            return None
        return self.settings.of(value)


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

INT4_GROUP_SIZES = (256, 128, 64, 32)  # what tinygemm takes; torchao's CPU int4 kernel takes 128 and below
# torchao's published GPU numbers use group 64 (int4wo-64); on CPU 128, its default, measures well.
INT4_DEFAULT_GROUP = {"cuda": 64, "cpu": 128}


@dataclass(frozen=True)
class Int4Settings:
    """int4weightonly's settings: `sweep(int4weightonly={"group_size": 64})` or `--int4-group-size 64`."""

    group_size: int | None = field(default=None, metadata=dict(
        flag="--int4-group-size", type=int, metavar="N",
        help="group size of int4 weight-only, one of 256/128/64/32 (default: 64 on CUDA, as torchao's published "
             "numbers; 128 on CPU); a layer whose in_features it doesn't divide takes the largest that does"))

    def __post_init__(self):
        if self.group_size is not None and self.group_size not in INT4_GROUP_SIZES:
            raise UserError(f"int4 group size must be one of {', '.join(map(str, INT4_GROUP_SIZES))}, "
                            f"got {self.group_size!r}.")

    @classmethod
    def of(cls, value: Any) -> "Int4Settings":
        if value is None or isinstance(value, cls):
            return value or cls()
        if isinstance(value, int):
            return cls(group_size=value)
        if isinstance(value, dict):
            unknown = set(value) - {"group_size"}
            if unknown:
                raise UserError(f"unknown int4weightonly setting(s) {', '.join(sorted(unknown))}; valid: group_size.")
            return cls(**value)
        raise UserError(f"int4weightonly= takes a group size or {{'group_size': N}}, not {type(value).__name__}.")


def _int4_sizes(info: DeviceInfo, dtype: torch.dtype) -> tuple[int, ...]:
    """Group sizes the int4 kernel for this device and dtype accepts, largest first."""
    cpu_kernel = not info.is_cuda and dtype == torch.bfloat16  # torchao's CPU int4 kernel asserts <= 128
    return tuple(g for g in INT4_GROUP_SIZES if not (cpu_kernel and g > 128))


def _int4_group(lin: nn.Linear, info: DeviceInfo, dtype: torch.dtype, settings: Int4Settings | None) -> int | None:
    """The requested group size if it divides in_features, else the largest accepted one that does."""
    sizes = _int4_sizes(info, dtype)
    wanted = (settings and settings.group_size) or INT4_DEFAULT_GROUP.get(info.type, 128)
    if wanted in sizes and lin.in_features % wanted == 0:
        return wanted
    return next((g for g in sizes if lin.in_features % g == 0), None)


def _int4_config(info: DeviceInfo, dtype: torch.dtype, group: int | None = None):
    group = group or INT4_DEFAULT_GROUP.get(info.type, 128)
    if info.is_cuda:
        # The plain packing needs the separate mslk kernels; tinygemm's 4-d tile packing ships
        # with torch itself and runs on SM 8.x/9.x.
        from torchao.quantization.quantize_.workflows.int4.int4_packing_format import Int4PackingFormat

        packing = Int4PackingFormat.PLAIN if _has_mslk() else Int4PackingFormat.TILE_PACKED_TO_4D
        return _make("Int4WeightOnlyConfig", group_size=group, int4_packing_format=packing)
    if dtype == torch.bfloat16:
        # Measured on a 2-core AVX512-BF16 CPU: ~4x faster than bf16 noquant when compiled.
        return _make("PrototypeInt4WeightOnlyConfig", "torchao.prototype.quantization.int4", group_size=group)
    # In fp32 the prototype int4 kernel is slower than noquant here; Intx int4 (group-wise)
    # lowers to plain dequantize + matmul, which inductor fuses well.
    from torchao.quantization.granularity import PerGroup

    return _make("IntxWeightOnlyConfig", weight_dtype=torch.int4, granularity=PerGroup(group))


def _int4_layer_config(lin: nn.Linear, info: DeviceInfo, dtype: torch.dtype, settings: Int4Settings | None):
    group = _int4_group(lin, info, dtype, settings)
    return _int4_config(info, dtype, group), f"group {group}"


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
    if _int4_group(lin, info, dtype, None) is None:
        sizes = "/".join(map(str, _int4_sizes(info, dtype)))
        return f"in_features {lin.in_features} is divisible by no int4 group size ({sizes})"
    if not info.is_cuda and dtype == torch.bfloat16 and lin.out_features % 16:
        return f"out_features {lin.out_features} is not divisible by 16 (CPU int4 kernel)"
    # CUDA: torchao pads out_features to a multiple of 8 itself.
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


# ---- the registry ---------------------------------------------------------------------------

# Plug-ins (autoquant) register themselves when imported: this module never imports them.
MODES: Registry = Registry("mode", reserved=("all",))
register = MODES.add


register(Mode("noquant", "No quantization: the model as it is (the A/A control).", lambda info, dtype: None))
def _one_column_reason(lin: nn.Linear, info: DeviceInfo, dtype: torch.dtype) -> str | None:
    # Checked on torchao 0.18: int8 and float8 per-channel quantization of a Linear(1, N) raise
    # "shape '[N, 1]' is invalid for input of size 1"; Linear(N, 1) and Linear(2, N) quantize fine.
    if lin.in_features < 2:
        return f"in_features {lin.in_features}: torchao's per-channel quantization fails on a one-column weight"
    return None


def _int8dyn_input_reason(info: DeviceInfo, dtype: torch.dtype, rows: int) -> str | None:
    if info.is_cuda and rows <= 16:
        return (f"int8 dynamic on CUDA calls torch._int_mm, which needs more than 16 rows per matmul; it would get "
                f"{rows} (batch x tokens): use a larger batch or a prefill (torchao measured 0.09x at batch-1 decode)")
    return None


register(Mode(
    "int8dynamic", "int8 weights and per-token dynamically quantized int8 activations (int8 x int8 matmul).",
    lambda info, dtype: _make("Int8DynamicActivationInt8WeightConfig"),
    lambda info, dtype: _needs("Int8DynamicActivationInt8WeightConfig"), _one_column_reason,
    input_reason=_int8dyn_input_reason,
))
register(Mode(
    "int8weightonly", "int8 per-channel weights, activations stay in the model dtype.",
    lambda info, dtype: _make("Int8WeightOnlyConfig"),
    lambda info, dtype: _needs("Int8WeightOnlyConfig"), _one_column_reason,
))
register(Mode(
    "int4weightonly",
    "int4 group-wise weights (group 64 on CUDA, 128 on CPU; --int4-group-size); CUDA: tinygemm, "
    "CPU bf16: torchao's CPU int4 kernel, CPU fp32: Intx int4.",
    _int4_config, _int4_unsupported, _int4_layer_reason, layer_config=_int4_layer_config, settings=Int4Settings,
))
register(Mode(
    "float8weightonly", "float8 (e4m3) per-channel weights, activations stay in the model dtype.",
    lambda info, dtype: _make("Float8WeightOnlyConfig"), _float8wo_unsupported, _one_column_reason,
))
register(Mode(
    "float8dynamic", "float8 weights and dynamically quantized float8 activations, per row (CUDA >= 8.9).",
    _float8dyn_config, _float8dyn_unsupported, _float8dyn_layer_reason,
))


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
    return list(MODES)


def resolve_modes(spec: str | Iterable[str] | None) -> list[str]:
    """'all', 'a,b' or a list → validated mode names, in registry order for 'all'."""
    if spec is None:
        return mode_names()
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    names = [n for n in names if n]
    if not names:
        raise UserError(f"no mode given; choose from: all, {', '.join(MODES)}.")
    out: list[str] = []
    for n in names:
        if n == "all":
            out.extend(m for m in MODES if m not in out)
        elif n not in MODES:
            raise UserError(f"unknown mode {n!r}; valid modes: all, {', '.join(MODES)}.")
        elif n not in out:
            out.append(n)
    return out


def get(name: str) -> Mode:
    return MODES[resolve_modes([name])[0]]


# ---- applying a mode ------------------------------------------------------------------------

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


def quantize(model: nn.Module, mode: Mode, info: DeviceInfo, dtype: torch.dtype, example_inputs=None,
             context: ApplyContext | None = None) -> ApplyReport:
    """Quantize `model` in place with `mode`; layers that don't fit are left alone and reported."""
    if mode.apply is not None:
        return mode.apply(model, info, dtype, example_inputs, context or ApplyContext(device=info.type))
    layers = linear_layers(model)
    config, groups = mode.config(info, dtype), {}
    if (config is not None or mode.layer_config is not None) and any(is_quantized(lin) for lin in layers.values()):
        raise UserError("this model is already quantized (its Linear weights are torchao tensors): pass the "
                        "unquantized model; torchao_nb quantizes a fresh copy for every mode")
    rows = dict(context.layer_rows) if context is not None else {}
    skipped = {fqn: why for fqn, lin in layers.items()
               if (why := mode.layer_reason(lin, info, dtype) or (
                   mode.input_reason(info, dtype, rows[fqn]) if fqn in rows else None))}
    fitting = [fqn for fqn in layers if fqn not in skipped]
    if mode.layer_config is not None:  # layers that need another config (int4's group size) go in their own call
        settings = context.settings if context is not None else None
        for fqn in fitting:
            layer_cfg, label = mode.layer_config(layers[fqn], info, dtype, settings)
            groups.setdefault(label, (layer_cfg, set()))[1].add(fqn)
    elif config is not None:
        groups[""] = (config, set(fitting))
    for layer_cfg, fqns in groups.values():
        if fqns:
            from torchao.quantization import quantize_

            with quiet_logs():
                quantize_(model, layer_cfg, filter_fn=lambda mod, fqn, fqns=fqns: isinstance(mod, nn.Linear) and fqn in fqns)
    if groups:  # the config most layers took is the row's recipe
        config = max(groups.values(), key=lambda g: len(g[1]))[0]
    done = sum(is_quantized(lin) for lin in linear_layers(model).values())
    extra = {"layer_configs": {label: sorted(f) for label, (_, f) in groups.items()}} if len(groups) > 1 or (
        groups and "" not in groups) else {}
    return ApplyReport(done, len(layers), skipped, config_dict(config), extra)


def availability(info: DeviceInfo, dtype: torch.dtype) -> dict[str, str | None]:
    """Every mode → None if it runs here, else the reason it can't."""
    return {name: r.unsupported_reason(info, dtype) for name, r in MODES.items()}
