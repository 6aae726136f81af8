"""torchao_nb's own autoquant (torchao deleted its own): time every mode on each Linear's real input, keep the
fastest one that stays accurate. Importing this package registers the `autoquant` mode."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .. import measure, models, modes
from .._torchao import quiet_logs
from ..env import DeviceInfo
from ..extras import Autoquant
from ..modes import ApplyContext, ApplyReport
from ..results import sqnr_or_inf
from .cache import CACHE_ENV, TimingCache, cache_entries, cache_root, clear_cache
from .per_layer import (MAX_COPIES, STREAM_BYTES_MAX, STREAM_BYTES_MIN, Copies, capture_inputs, choose, copies_for,
                     search, time_modules)
from .settings import DEFAULT_MARGIN, DEFAULT_SQNR_FLOOR_DB, NOQUANT, SearchSettings, searchable_modes

__all__ = ["SearchSettings", "DEFAULT_SQNR_FLOOR_DB", "DEFAULT_MARGIN", "apply", "search", "choose",
           "hold_model_floor", "apply_choices", "capture_inputs", "time_modules", "Copies", "copies_for",
           "STREAM_BYTES_MIN", "STREAM_BYTES_MAX", "MAX_COPIES", "TimingCache", "CACHE_ENV", "cache_root",
           "clear_cache", "cache_entries", "searchable_modes"]


def apply_choices(model: nn.Module, choices: dict[str, str], info: DeviceInfo, dtype: torch.dtype) -> dict[str, Any]:
    """quantize_ each chosen mode onto exactly its layers (filter_fn by fqn); returns fqn → config dict."""
    from torchao.quantization import quantize_

    by_mode: dict[str, set[str]] = {}
    for fqn, mode in choices.items():
        if mode != NOQUANT:
            by_mode.setdefault(mode, set()).add(fqn)
    applied, layers = {}, dict(model.named_modules())
    for mode, fqns in by_mode.items():
        for config, group in _configs(modes.MODES[mode], layers, fqns, info, dtype):
            with quiet_logs():
                quantize_(model, config, filter_fn=lambda mod, fqn, group=group: fqn in group)
            applied.update({f: modes.config_dict(config) for f in group})
    return applied


def _configs(mode, layers: dict[str, nn.Module], fqns: set[str], info: DeviceInfo, dtype: torch.dtype):
    """(config, its layers) for one chosen mode, as the search quantized them: a mode with a per-layer config
    (int4's group size) gives each layer the one that fits it (a 192-wide layer takes group 64, not 128)."""
    if mode.layer_config is None:
        return [(mode.config(info, dtype), fqns)]
    by_label: dict[str, tuple[Any, set[str]]] = {}
    for fqn in sorted(fqns):
        config, label = mode.layer_config(layers[fqn], info, dtype, None)
        by_label.setdefault(label, (config, set()))[1].add(fqn)
    return list(by_label.values())


def _changed(model: nn.Module, fqns) -> int:
    """Layers torchao changed: a swapped weight, or a module that is no longer a plain Linear."""
    modules = dict(model.named_modules())
    return sum(1 for f in fqns if not isinstance(modules.get(f), nn.Linear) or modes.is_quantized(modules[f]))


def _model_sqnr(model, choices, info, dtype, example_inputs, reference) -> float | None:
    trial = copy.deepcopy(model)
    apply_choices(trial, choices, info, dtype)
    with torch.no_grad():
        return measure.accuracy(reference, models.call(trial, example_inputs)).sqnr_db


def hold_model_floor(model: nn.Module, table: dict, info: DeviceInfo, dtype: torch.dtype, example_inputs) -> dict:
    """Layer errors add up: while the whole model's SQNR is under the floor, the quantized layer with the
    lowest SQNR falls back to its next more accurate candidate (or noquant). Updates `table` in place."""
    floor, margin = table["sqnr_floor_db"], table["margin"]
    rows = {row["layer"]: row for row in table["layers"]}
    with torch.no_grad():
        reference = models.call(model, example_inputs)
    while True:
        choices = {f: row["choice"] for f, row in rows.items()}
        sqnr = _model_sqnr(model, choices, info, dtype, example_inputs, reference)
        table["model_sqnr_db"] = sqnr
        quantized = [row for row in rows.values() if row["choice"] != NOQUANT]
        if sqnr is None or sqnr >= floor or not quantized:
            return table
        worst = min(quantized, key=lambda row: sqnr_or_inf(row["candidates"][row["choice"]]["sqnr_db"]))
        old = worst["choice"]
        old_sqnr = sqnr_or_inf(worst["candidates"][old]["sqnr_db"])
        better = {m: c for m, c in worst["candidates"].items()
                  if c.get("ms") is not None and (m == NOQUANT or sqnr_or_inf(c["sqnr_db"]) > old_sqnr)}
        choice, why = choose({m: c["ms"] for m, c in better.items()}, {m: c["sqnr_db"] for m, c in better.items()}, floor, margin)
        worst["candidates"][old]["status"] = "demoted"
        if choice != NOQUANT:
            worst["candidates"][choice]["status"] = "chosen"
        elif NOQUANT in worst["candidates"]:
            worst["candidates"][NOQUANT]["status"] = "chosen"
        worst["choice"] = choice
        worst["why"] = f"{why}; {old} was dropped: the whole model's SQNR with it was {sqnr:.1f} dB < {floor:g} dB"


def apply(model: nn.Module, info: DeviceInfo, dtype: torch.dtype, example_inputs, ctx: ApplyContext | None = None) -> ApplyReport:
    """The `autoquant` mode: search, hold the floor for the whole model, then quantize each layer with its choice (in place)."""
    ctx = ctx or ApplyContext(device=info.type)
    start = ctx.clock()
    table = search(model, info, dtype, example_inputs, ctx)
    hold_model_floor(model, table, info, dtype, example_inputs)
    table["search_s"] = ctx.clock() - start
    choices = {row["layer"]: row["choice"] for row in table["layers"]}
    applied = apply_choices(model, choices, info, dtype)
    left = {row["layer"]: row["why"] for row in table["layers"] if row["choice"] == NOQUANT}
    recipe = {"_type": "torchao_nb.autoquant", "sqnr_floor_db": table["sqnr_floor_db"], "margin": table["margin"],
              "fqn_to_config": applied}
    return ApplyReport(_changed(model, applied), len(choices), left, recipe,
                       Autoquant(table, table["search_s"]).to_json())




modes.register(modes.Mode(
    "autoquant", "Per-layer search: times each mode on each Linear's real shapes and keeps the fastest accurate one.",
    lambda info, dtype: None, apply=apply, settings=SearchSettings,
))
