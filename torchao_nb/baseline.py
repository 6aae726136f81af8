"""The seed's `setup_baseline()` compiler settings, as data applied only inside a context manager."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import re
from dataclasses import dataclass
from typing import Any, Iterator

_MISSING = object()


@dataclass(frozen=True)
class Setting:
    key: str  # dotted path, e.g. "torch._dynamo.config.cache_size_limit"
    value: Any
    why: str
    apply: bool = True  # False: recorded for fidelity to the seed, deliberately not set
    inert: str = ""  # known to change nothing on today's torch, and why (read in its source)
    cuda_only: bool = False  # changes nothing on a CPU


# Order and values follow PyTorch's benchmarks/dynamo/torchao_backend.py. `why` says what each one
# does on today's torch (2.11-2.13, read in their source), so a reader sees which still matter.
BASELINE_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "torch._dynamo.epilogue_fusion", False,
        "The seed sets this, but it is a plain attribute on the torch._dynamo module that nothing "
        "reads, so upstream it changes nothing. torchao_nb keeps that behaviour (records, does not "
        "set) so its numbers stay comparable with PyTorch's harness; inductor's own "
        "torch._inductor.config.epilogue_fusion is left at its default.",
        apply=False,
    ),
    Setting("torch._dynamo.config.automatic_dynamic_shapes", False,
            "Compile each batch size with static shapes instead of one dynamic-shape graph."),
    Setting("torch._dynamo.config.force_parameter_static_shapes", False,
            "Let parameter shapes be treated like other inputs (seed's choice); with automatic dynamic "
            "shapes off nothing becomes dynamic, so in practice no effect."),
    Setting("torch._dynamo.config.cache_size_limit", 10000,
            "Avoid dynamo giving up and running eager after 8 recompiles (an alias of recompile_limit)."),
    Setting("torch._inductor.config.force_fuse_int_mm_with_mul", True,
            "Meant to fuse int8 matmul with its dequantizing multiply; on torch 2.11-2.13 only a function "
            "nothing calls reads it: no effect.", inert="read by nothing in torch 2.11-2.13"),
    Setting("torch._inductor.config.use_mixed_mm", True,
            "Meant to allow mixed-dtype matmul kernels for weight-only quantization; today's inductor "
            "marks it deprecated and ignores it."),
)

# torchao's `recommended_inductor_config_setter()`, which its configs apply process-wide by
# default (set_inductor_config=True) and its published GPU numbers use for the bf16 baseline too.
# torchao_nb applies it to every compiled cell alike (the unquantized baseline included) so the
# comparison stays fair: by default on CUDA, where it matters, and off on CPU, where it changes
# nothing (see `why`).
TORCHAO_TUNING: tuple[Setting, ...] = (
    Setting("torch._inductor.config.coordinate_descent_tuning", True,
            "CUDA: rewrites a one-row matmul (batch-1 decode) as a fused reduction that reads int8/float8 "
            "weights directly (int8 and float8 weight-only have no kernel of their own and need it), and "
            "tunes every Triton kernel's block sizes (costs compile time). CPU: no effect.", cuda_only=True),
    Setting("torch._inductor.config.coordinate_descent_check_all_directions", True,
            "A wider coordinate-descent search (more compile time); only with the above.", cuda_only=True),
    Setting("torch._inductor.config.force_fuse_int_mm_with_mul", True,
            "No effect on torch 2.11-2.13 (read only by a function nothing calls); set as torchao does.",
            inert="read by nothing in torch 2.11-2.13"),
    Setting("torch._inductor.config.fx_graph_cache", True, "Re-use compiled graphs across runs (already the default)."),
    Setting("torch._inductor.config.triton.unique_kernel_names", True,
            "Kernel names that say what they compute, in profiles (already the default)."),
)

# torchao's settings without the wide search: the one-row-matmul rewrite that int8/float8 weight-only need
# comes from coordinate_descent_tuning alone (inductor's decomposition.py reads only that flag); what
# check_all_directions adds, once the one-field-at-a-time walk has converged, is a search of every
# combination of neighbouring block sizes, warps and stages (3^fields candidates, each compiled and
# benchmarked), for every Triton kernel.
FAST_TUNING: tuple[Setting, ...] = tuple(
    Setting(s.key, False, "Off: the search of every combination of neighbouring block sizes, warps and stages "
            "after the one-field-at-a-time walk (torchao's choice) costs the most compile time for the least speed; "
            "the walk itself still runs.", cuda_only=True)
    if s.key.endswith(".coordinate_descent_check_all_directions") else s for s in TORCHAO_TUNING)


@dataclass(frozen=True)
class Tuning:
    """One choice of inductor tuning for every compiled cell alike (the unquantized baseline included)."""

    name: str
    settings: tuple[Setting, ...]
    why: str


TUNINGS: dict[str, Tuning] = {t.name: t for t in (
    Tuning("torchao", TORCHAO_TUNING, "torchao's recommended inductor settings, as its published GPU numbers used "
           "them: the most compile time (one cold 4-layer 8B-shaped decode graph took 146 s on an H200)"),
    Tuning("fast", FAST_TUNING, "coordinate descent without check_all_directions: the one-row-matmul rewrite "
           "int8/float8 weight-only need, and a cheaper search of each kernel's block sizes"),
    Tuning("off", (), "inductor's defaults: the fastest compile; on CUDA int8/float8 weight-only lose their fused "
           "one-row kernels (an H100 gave int8 weight-only 0.10x with it off)"),
)}


def ignored_by_this_torch(key: str) -> bool:
    """True when the installed torch marks a setting as ignored (inductor's 'DEPRECATED. This setting is
    ignored.' comment right above it); torch has no flag for it that works on every version."""
    import inspect

    path, attr = key.rsplit(".", 1)
    try:
        source = inspect.getsource(importlib.import_module(path))
    except (ImportError, OSError, TypeError):
        return False
    return re.search(r"#\s*DEPRECATED\. This setting is ignored\.\s*\n\s*" + re.escape(attr) + r"\s*[:=]", source) is not None


@dataclass(frozen=True)
class SettingState:
    key: str
    old: Any
    new: Any
    applied: bool
    note: str  # why it was not applied, or the setting's reason
    effect: str = ""  # on the installed torch: "ignored by this torch", "already the default", or empty


def _resolve(key: str) -> tuple[Any, str]:
    """Return (owner object, attribute name) for a dotted key: the longest importable module, then attributes
    (torch._inductor.config.triton.unique_kernel_names lives on a class inside the config module)."""
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:-1]:
            owner = getattr(owner, name)
        return owner, parts[-1]
    raise ImportError(f"no module in {key!r}")


def _current(owner: Any, attr: str) -> Any:
    try:
        return getattr(owner, attr)
    except AttributeError:
        return _MISSING


def describe(settings: tuple[Setting, ...] = BASELINE_SETTINGS, device: str | None = None) -> list[SettingState]:
    """Each setting with its current → new value, whether this torch lets it apply, and whether it changes anything."""
    states = []
    for s in settings:
        try:
            owner, attr = _resolve(s.key)
            old = _current(owner, attr)
        except (ImportError, AttributeError):
            old = _MISSING
        if not s.apply:
            states.append(SettingState(s.key, None if old is _MISSING else old, s.value, False, s.why, "not set"))
        elif old is _MISSING:
            states.append(SettingState(s.key, None, s.value, False, "this torch has no such setting; skipped",
                                       "missing in this torch"))
        else:
            effect = ("ignored by this torch" if ignored_by_this_torch(s.key) else f"no effect: {s.inert}" if s.inert
                      else "no effect on a CPU" if s.cuda_only and device == "cpu"
                      else "already the default" if old == s.value else "")
            states.append(SettingState(s.key, old, s.value, True, s.why, effect))
    return states


def describe_dicts(settings: tuple[Setting, ...] = BASELINE_SETTINGS, device: str | None = None) -> list[dict[str, Any]]:
    """`describe` as JSON-ready records (environment.json keeps them beside the results)."""
    return [dataclasses.asdict(s) for s in describe(settings, device)]


@contextlib.contextmanager
def applied(enabled: bool = True, settings: tuple[Setting, ...] = BASELINE_SETTINGS) -> Iterator[list[SettingState]]:
    """Apply the settings for the duration of the block; every old value comes back, also on error."""
    states = describe(settings) if enabled else []
    restore: list[tuple[Any, str, Any]] = []
    try:
        for s, st in zip(settings, states):
            if not st.applied:
                continue
            owner, attr = _resolve(s.key)
            restore.append((owner, attr, getattr(owner, attr)))
            setattr(owner, attr, s.value)
        yield states
    finally:
        for owner, attr, old in reversed(restore):
            setattr(owner, attr, old)


def snapshot(keys: tuple[str, ...] = tuple(s.key for s in BASELINE_SETTINGS)) -> dict[str, Any]:
    """Current values of the keys (for tests and for checking nothing leaked)."""
    out = {}
    for key in keys:
        try:
            owner, attr = _resolve(key)
            out[key] = _current(owner, attr)
        except (ImportError, AttributeError):
            out[key] = _MISSING
    return out


def _config_modules():
    import torch._dynamo.config
    import torch._inductor.config

    return (torch._dynamo.config, torch._inductor.config)


@contextlib.contextmanager
def preserved_compiler_configs() -> Iterator[None]:
    """Put back every dynamo/inductor config value changed inside the block (by us or by a library)."""
    modules = _config_modules()
    saved = [m.get_config_copy() for m in modules]
    try:
        yield
    finally:
        for module, before in zip(modules, saved):
            now = module.get_config_copy()
            for key, value in before.items():
                if now.get(key, _MISSING) != value:
                    with contextlib.suppress(AttributeError):
                        setattr(module, key, value)
