"""The seed's `setup_baseline()` compiler settings, as data applied only inside a context manager."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any, Iterator

_MISSING = object()


@dataclass(frozen=True)
class Setting:
    key: str  # dotted path, e.g. "torch._dynamo.config.cache_size_limit"
    value: Any
    why: str
    apply: bool = True  # False: recorded for fidelity to the seed, deliberately not set


# Order and values follow PyTorch's benchmarks/dynamo/torchao_backend.py.
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
            "Let parameter shapes be treated like other inputs (seed's choice)."),
    Setting("torch._dynamo.config.cache_size_limit", 10000,
            "Avoid dynamo giving up and running eager after 8 recompiles."),
    Setting("torch._inductor.config.force_fuse_int_mm_with_mul", True,
            "Fuse int8 matmul with its dequantizing multiply (helps int8 dynamic)."),
    Setting("torch._inductor.config.use_mixed_mm", True,
            "Allow mixed-dtype matmul kernels for weight-only quantization."),
)


# torchao's `recommended_inductor_config_setter()`, which its configs apply process-wide by
# default (set_inductor_config=True). torchao_nb applies it, when asked, to every compiled
# cell alike (the unquantized baseline included) so the comparison stays fair. Coordinate
# descent tuning is what makes inductor's int8 weight-only GEMV fast on GPUs; it costs
# compile time.
TORCHAO_TUNING: tuple[Setting, ...] = (
    Setting("torch._inductor.config.coordinate_descent_tuning", True, "Tune the block sizes of generated Triton kernels."),
    Setting("torch._inductor.config.coordinate_descent_check_all_directions", True, "Search the tuning space more widely."),
    Setting("torch._inductor.config.force_fuse_int_mm_with_mul", True, "Fuse int8 matmul with its dequantizing multiply."),
    Setting("torch._inductor.config.fx_graph_cache", True, "Re-use compiled graphs across runs."),
)


@dataclass(frozen=True)
class SettingState:
    key: str
    old: Any
    new: Any
    applied: bool
    note: str  # why it was not applied, or the setting's reason


def _resolve(key: str) -> tuple[Any, str]:
    """Return (owner object, attribute name) for a dotted key, importing modules as needed."""
    path, attr = key.rsplit(".", 1)
    return importlib.import_module(path), attr


def _current(owner: Any, attr: str) -> Any:
    try:
        return getattr(owner, attr)
    except AttributeError:
        return _MISSING


def describe(settings: tuple[Setting, ...] = BASELINE_SETTINGS) -> list[SettingState]:
    """Each setting with its current → baseline value and whether this torch lets it apply."""
    states = []
    for s in settings:
        try:
            owner, attr = _resolve(s.key)
            old = _current(owner, attr)
        except ImportError:
            old = _MISSING
        if not s.apply:
            states.append(SettingState(s.key, None if old is _MISSING else old, s.value, False, s.why))
        elif old is _MISSING:
            states.append(SettingState(s.key, None, s.value, False, "this torch has no such setting; skipped"))
        else:
            states.append(SettingState(s.key, old, s.value, True, s.why))
    return states


def describe_dicts(settings: tuple[Setting, ...] = BASELINE_SETTINGS) -> list[dict[str, Any]]:
    """`describe` as JSON-ready records (environment.json keeps them beside the results)."""
    return [dataclasses.asdict(s) for s in describe(settings)]


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
        except ImportError:
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
