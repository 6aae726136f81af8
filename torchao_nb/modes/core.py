"""What a mode is, where it can run, and how one is applied to a model; the registry the mode families fill."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from .._torchao import quiet_logs, torchao
from ..env import DeviceInfo
from ..errors import UserError
from ..extras import LayerConfigs
from ..compiling import EAGER, CompileSettings
from ..measure import TimingPolicy
from ..registry import Registry

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
    # The sweep saves a compile cache (compile_cache.save): what compiles in the sandbox's child process must be
    # handed back to be saved too, or a later sweep that carries the file compiles those graphs cold again.
    keep_compiles: bool = False


# ---- where a mode runs --------------------------------------------------------------------------

DTYPE_NAMES = ("bfloat16", "float16", "float32")
ANY_GPU = (0, 0)  # Where.cuda for "every CUDA GPU"
_SHORT = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def installed(package: str) -> bool:
    """Whether a kernel package a mode needs is here: a Python package (mslk), or cuSPARSELt, which torch's
    CUDA build carries inside it (the CPU build has none)."""
    if package == "cuSPARSELt":
        return bool(torch.backends.cusparselt.is_available())
    import importlib.util

    return importlib.util.find_spec(package) is not None


def _has_mslk() -> bool:
    return installed("mslk")


def _dtype_text(names: tuple[str, ...]) -> str:
    return "any dtype" if set(names) == set(DTYPE_NAMES) else "/".join(_SHORT[n] for n in names) + " only"


@dataclass(frozen=True)
class Where:
    """Where a mode can run, as data: `list-modes --all` prints it on any machine, and a test holds every mode's
    `unsupported` rules to it on made-up CPUs and GPUs, so the text can't drift from the rules."""

    cpu: tuple[str, ...] = DTYPE_NAMES  # dtypes it runs in on a CPU; (): not on a CPU
    cuda: tuple[int, int] | None = ANY_GPU  # the least CUDA compute capability it needs; None: not on CUDA
    cuda_dtypes: tuple[str, ...] = DTYPE_NAMES
    packages: tuple[str, ...] = ()  # what it needs on CUDA beyond torch and torchao (names `installed` knows)
    note: str = ""  # what the fields can't say

    def text(self) -> str:
        parts = [f"CPU ({_dtype_text(self.cpu)})"] if self.cpu else []
        if self.cuda is not None:
            cap = "" if self.cuda == ANY_GPU else f" compute capability >= {self.cuda[0]}.{self.cuda[1]}"
            needs = f", needs {' and '.join(self.packages)}" if self.packages else ""
            parts.append(f"CUDA{cap} ({_dtype_text(self.cuda_dtypes)}{needs})")
        return "; ".join(parts or ["nowhere"]) + (f"; {self.note}" if self.note else "")


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
    # Why autoquant's default candidate set leaves this mode out (it can't win the search by construction);
    # None: a candidate wherever it runs. Asking for it by name (candidates=[...]) still searches it.
    not_searched: str | None = None
    # Where it can run on any machine (list-modes --all); `unsupported` decides for this one.
    where: Where = Where()
    # (layers, device, dtype, settings) -> Python statements that quantize `model` (holding `layers`, name -> Linear,
    # "" for `model` itself) as this mode does, with torch and torchao only: what a repro script runs (repro.py).
    # None: the mode's torchao config(s) written as code; a mode with its own `apply` and none gets no repro.
    repro_code: Callable[..., str] | None = None

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
    # SemiSparseWeightConfig is a plain class, not a dataclass: it has no inductor flag to turn off
    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    if "set_inductor_config" in names:
        # torchao would otherwise flip process-wide inductor flags for quantized modes only,
        # so baseline and quantized rows would be compiled under different settings.
        kwargs["set_inductor_config"] = False
    return cls(**kwargs)


def _needs(name: str, module: str = "torchao.quantization") -> str | None:
    if _ao(name, module) is None:
        return f"this torchao is too old or too new: it has no {module}.{name}"
    return None


def _capability(info: DeviceInfo) -> str:
    return ".".join(map(str, info.capability)) if info.capability else "unknown"


def _needs_capability(info: DeviceInfo, least: tuple[int, int], what: str) -> str | None:
    """On CUDA: why a GPU below `least` can't run `what` (None when it can, or off CUDA)."""
    if info.is_cuda and info.capability and info.capability < least:
        return f"{what} needs CUDA compute capability >= {least[0]}.{least[1]} (this GPU: {_capability(info)})"
    return None


# ---- the registry ---------------------------------------------------------------------------

# The family modules (int8, int4, float8, ...) and plug-ins (autoquant) register their modes when imported:
# this module never imports them.
def settings_from(cls, value: Any, mode: str, one: type | None = None, what: str = ""):
    """A mode's settings (a frozen dataclass `cls`) from None, an instance, a dict of its fields, or (given `one`)
    one value of that type for its first field, which `what` names; anything else is a UserError saying what
    `mode` takes. Every settings type's `of` is this, so each takes the same forms with the same messages."""
    valid = [f.name for f in dataclasses.fields(cls)]
    if value is None or isinstance(value, cls):
        return value or cls()
    if one is not None and isinstance(value, one) and not isinstance(value, bool):
        return cls(**{valid[0]: value})
    if isinstance(value, dict):
        unknown = set(value) - set(valid)
        if unknown:
            raise UserError(f"unknown {mode} setting(s) {', '.join(sorted(unknown))}; valid: {', '.join(valid)}.")
        return cls(**value)
    single = f"{what}, " if one is not None else ""
    raise UserError(f"{mode} takes {single}{cls.__name__} or a dict of its fields ({', '.join(valid)}), "
                    f"not {type(value).__name__}.")


def flagged_settings() -> dict[str, tuple[dataclasses.Field, list[str]]]:
    """flag → (its settings field, the registered modes it sets), for the settings fields that have a flag: modes
    that share a settings type share its flag, so `--int4-group-size 64` sets int4weightonly's and
    int4weightonly-hqq's group size alike. The command line's flags and the panel's controls both read this. A field's
    metadata: flag, help, metavar, type (the parser's; default float), and for the panel label and choices."""
    flags: dict[str, tuple[dataclasses.Field, list[str]]] = {}
    for name, mode in MODES.items():
        for f in dataclasses.fields(mode.settings) if mode.settings is not None else ():
            if f.metadata.get("flag"):
                flags.setdefault(f.metadata["flag"], (f, []))[1].append(name)
    return flags


def one_column_reason(lin: nn.Linear, info: DeviceInfo, dtype: torch.dtype) -> str | None:
    """int8 and float8 per-channel modes: checked on torchao 0.18, quantizing a Linear(1, N) raises
    "shape '[N, 1]' is invalid for input of size 1"; Linear(N, 1) and Linear(2, N) quantize fine."""
    if lin.in_features < 2:
        return f"in_features {lin.in_features}: torchao's per-channel quantization fails on a one-column weight"
    return None


MODES: Registry = Registry("mode", reserved=("all",))
register = MODES.add


register(Mode("noquant", "No quantization: the model as it is (the A/A control).", lambda info, dtype: None))


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


@contextlib.contextmanager
def seeing_linear_inputs(model: nn.Module, see: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    """Inside the block, `see(fqn, x)` is told each Linear's input tensor on every call (given by position or
    as `input=`); the hooks are gone after it, also when the forward pass raised."""
    def hook_for(fqn):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs.get("input")
            if isinstance(x, torch.Tensor):
                see(fqn, x)
        return hook

    handles = [lin.register_forward_pre_hook(hook_for(fqn), with_kwargs=True)
               for fqn, lin in linear_layers(model).items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def is_quantized(linear: nn.Linear) -> bool:
    """torchao swaps the weight for a tensor subclass; a plain Parameter means untouched."""
    return type(linear.weight) not in (torch.Tensor, nn.Parameter)


def refuse_quantized(layers: dict[str, nn.Linear]) -> None:
    if any(is_quantized(lin) for lin in layers.values()):
        raise UserError("this model is already quantized (its Linear weights are torchao tensors): pass the "
                        "unquantized model; torchao_nb quantizes a fresh copy for every mode")


def layers_left_alone(layers: dict[str, nn.Linear], mode: Mode, info: DeviceInfo, dtype: torch.dtype,
                      context: ApplyContext | None) -> dict[str, str]:
    """fqn → why that Linear can't take the mode: its shape (layer_reason), or the rows it sees (input_reason)."""
    rows = dict(context.layer_rows) if context is not None else {}
    return {fqn: why for fqn, lin in layers.items()
            if (why := mode.layer_reason(lin, info, dtype) or (
                mode.input_reason(info, dtype, rows[fqn]) if fqn in rows else None))}


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
    if config is not None or mode.layer_config is not None:
        refuse_quantized(layers)
    skipped = layers_left_alone(layers, mode, info, dtype, context)
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
    extra = LayerConfigs({label: sorted(f) for label, (_, f) in groups.items()}).to_json() if len(groups) > 1 or (
        groups and "" not in groups) else {}
    return ApplyReport(done, len(layers), skipped, config_dict(config), extra)


def availability(info: DeviceInfo, dtype: torch.dtype) -> dict[str, str | None]:
    """Every mode → None if it runs here, else the reason it can't."""
    return {name: r.unsupported_reason(info, dtype) for name, r in MODES.items()}
