"""torchao_nb's own autoquant: time every mode on each Linear's real input, keep the fastest one that stays accurate."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import _torchao, measure, models, recipes
from ._torchao import quiet_logs
from .env import DeviceInfo, UserError, dtype_name
from .recipes import ApplyContext, ApplyReport, Recipe
from .results import atomic_write

# 16.5 dB (RMS error 15% of the signal) is the bound torchao's own numerics tests hold quantized
# layers to. Measured here on LLaMA-shaped bf16 layers: int4 group-128 ~20 dB, float8 ~31 dB, int8
# dynamic 29-39 dB, int8 weight-only ~41 dB. Raise it to 25 to rule out int4, to 35 to keep int8 weight-only only.
DEFAULT_SQNR_FLOOR_DB = 16.5
# A candidate must be at least 5% faster than noquant on the layer: smaller wins are within the
# run-to-run noise of a shared CPU and would buy accuracy loss for nothing.
DEFAULT_MARGIN = 0.05
CACHE_ENV = "TORCHAO_NB_CACHE_DIR"  # overrides the cache folder (default ~/.cache/torchao_nb)
# Each candidate is timed for at most this long after warm-up: one layer's kernel settles fast,
# and the search times (shapes x candidates) of them. The time is split into rounds that visit
# every candidate in turn, and a candidate's time is its fastest sample over all rounds, so a burst
# of load from another process can't single out one candidate.
SEARCH_MAX_TIME_S = 0.6
SEARCH_WARMUP_S = 0.05
SEARCH_ROUNDS = 3
# Timed alone, a layer's weights stay in the CPU caches (or a GPU's L2) from call to call, which a
# model whose weights outgrow the cache never enjoys: memory-bound weight-only modes would look no
# faster than noquant. So each candidate is timed as distinct copies of the layer called in turn,
# whose unquantized weights add up to the model's Linear weights (capped): weights stream from
# memory as they do in the model. A model whose Linears fit in cache is timed one layer at a time.
STREAM_BYTES_MIN = 16 * 2**20
STREAM_BYTES_MAX = 256 * 2**20
MAX_COPIES = 64
NOQUANT = "noquant"


@dataclass(frozen=True)
class SearchSettings:
    """How the `autoquant` mode searches; pass to `sweep(autoquant=...)` (or a dict of these fields)."""

    sqnr_floor_db: float = DEFAULT_SQNR_FLOOR_DB  # reject a candidate whose layer output SQNR is lower
    margin: float = DEFAULT_MARGIN  # a candidate must beat noquant's time by this fraction (0.05 = 5%)
    candidates: tuple[str, ...] | None = None  # modes to try; None: every other mode this device runs
    cache_dir: str | None = None  # None: $TORCHAO_NB_CACHE_DIR, else ~/.cache/torchao_nb
    use_cache: bool = True  # False: time everything again and store nothing

    def __post_init__(self):
        try:
            object.__setattr__(self, "sqnr_floor_db", float(self.sqnr_floor_db))
            object.__setattr__(self, "margin", float(self.margin))
        except (TypeError, ValueError):
            raise UserError("autoquant's sqnr_floor_db and margin must be numbers, e.g. sqnr_floor_db=20, margin=0.05.") from None
        if self.sqnr_floor_db != self.sqnr_floor_db:
            raise UserError("autoquant's sqnr_floor_db is NaN; give a number of dB such as 20.")
        if not 0 <= self.margin < 1:
            raise UserError(f"autoquant's margin is a fraction in [0, 1) (0.05 = 5% faster), got {self.margin}.")
        if self.candidates is not None:
            names = (self.candidates.split(",") if isinstance(self.candidates, str) else self.candidates)
            names = tuple(dict.fromkeys(str(n).strip() for n in names if str(n).strip()))
            for n in names:
                if n not in recipes.RECIPES or recipes.RECIPES[n].apply is not None:
                    valid = ", ".join(searchable_modes())
                    raise UserError(f"autoquant can't try mode {n!r}; choose candidates from: {valid}.")
            object.__setattr__(self, "candidates", names)

    @classmethod
    def of(cls, value: Any) -> "SearchSettings":
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise UserError(f"unknown autoquant setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}.")
            return cls(**value)
        raise UserError(f"autoquant= takes SearchSettings or a dict of its fields, not {type(value).__name__}.")


def searchable_modes() -> list[str]:
    """Registered modes the search can try: those applied by a plain torchao config."""
    return [name for name, r in recipes.RECIPES.items() if r.apply is None]


# ---- the disk cache ------------------------------------------------------------------------------

def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torchao_nb"


def _timings_dir(cache_dir=None) -> Path:
    return cache_root(cache_dir) / "autoquant"


def clear_cache(cache_dir: str | os.PathLike | None = None) -> int:
    """Delete every stored autoquant timing; returns how many there were."""
    folder = _timings_dir(cache_dir)
    n = 0
    for f in folder.glob("*.json") if folder.is_dir() else ():
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
            n += 1
    return n


def cache_entries(cache_dir: str | os.PathLike | None = None) -> int:
    folder = _timings_dir(cache_dir)
    return len(list(folder.glob("*.json"))) if folder.is_dir() else 0


class TimingCache:
    """One JSON file per (device, dtype, shape, candidate, compile setting, versions): concurrent sweeps can't clash."""

    def __init__(self, cache_dir=None, enabled: bool = True):
        self.folder = _timings_dir(cache_dir)
        self.enabled = enabled
        self.hits = self.misses = 0

    @staticmethod
    def _name(key: dict) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32] + ".json"

    def get(self, key: dict) -> float | None:
        key = json.loads(json.dumps(key))  # as stored: tuples become lists
        if self.enabled:
            with contextlib.suppress(OSError, ValueError, KeyError):
                entry = json.loads((self.folder / self._name(key)).read_text())
                if entry["key"] == key:
                    self.hits += 1
                    return float(entry["ms"])
        self.misses += 1
        return None

    def put(self, key: dict, ms: float) -> None:
        if not self.enabled:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(self.folder / self._name(key), json.dumps({"key": key, "ms": ms}, indent=1))
        except OSError:  # a read-only cache only costs time next run: never fail the search for it
            pass


# ---- capturing the real inputs ------------------------------------------------------------------------

def capture_inputs(model: nn.Module, example_inputs: models.Inputs) -> dict[str, torch.Tensor]:
    """fqn → the input each Linear got in one forward pass of the example inputs (its first call)."""
    seen: dict[str, torch.Tensor] = {}

    def hook_for(fqn):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs.get("input")
            if fqn not in seen and isinstance(x, torch.Tensor):
                seen[fqn] = x.detach().clone()
        return hook

    handles = [lin.register_forward_pre_hook(hook_for(fqn), with_kwargs=True)
               for fqn, lin in recipes.linear_layers(model).items()]
    try:
        with torch.no_grad():
            models.call(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def _shape_key(lin: nn.Linear, x: torch.Tensor) -> tuple:
    return (lin.in_features, lin.out_features, lin.bias is not None, tuple(x.shape), dtype_name(x.dtype))


# ---- measuring one candidate ------------------------------------------------------------------------

class Copies(nn.Module):
    """`n` distinct copies of one layer, each called on the same input: one call costs n layer calls."""

    def __init__(self, layer: nn.Module, n: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(n))

    def forward(self, x):
        return tuple(layer(x) for layer in self.layers)


def copies_for(layer: nn.Linear, model_linear_bytes: int) -> int:
    """How many copies of `layer` hold as many weight bytes as the model's Linears (capped)."""
    if model_linear_bytes <= STREAM_BYTES_MIN:
        return 1
    layer_bytes = layer.weight.numel() * layer.weight.element_size()
    target = min(model_linear_bytes, STREAM_BYTES_MAX)
    return max(1, min(MAX_COPIES, round(target / max(1, layer_bytes))))


def _quantized_copy(layer: nn.Linear, recipe: Recipe, info: DeviceInfo, dtype: torch.dtype, n: int = 1) -> Copies:
    holder = Copies(layer, n)  # quantize_ swaps children: the layers need a parent anyway
    recipes.quantize(holder, recipe, info, dtype)
    return holder


def _search_policy(policy: measure.TimingPolicy) -> measure.TimingPolicy:
    return dataclasses.replace(policy, max_time_s=min(policy.max_time_s, SEARCH_MAX_TIME_S) / SEARCH_ROUNDS,
                               warmup_s=min(policy.warmup_s, SEARCH_WARMUP_S))


def time_modules(modules: dict[str, nn.Module], x: torch.Tensor, ctx: ApplyContext) -> dict[str, float | str]:
    """name → ms of one call (or the error text), compiled the way the run compiles.

    All candidates of one shape are compiled in one fresh dynamo state, then timed in rounds.
    """
    from .sweep import compiled, compiled_cell  # sweep imports the registry that imports this module on use

    policy, sync = _search_policy(ctx.policy), measure.sync_for(ctx.device)
    out: dict[str, float | str] = {}
    with torch.no_grad(), (compiled_cell(ctx) if ctx.compile else contextlib.nullcontext()), \
            torch._dynamo.config.patch(recompile_limit=max(torch._dynamo.config.recompile_limit, 2 * len(modules))):
        fns = {}
        for name, module in modules.items():
            try:
                fns[name] = compiled(module, ctx) if ctx.compile else module
                fns[name](x)  # compile and first call, not timed
            except Exception as e:  # recorded; the other candidates still run
                fns.pop(name, None)
                out[name] = _error_note(e)
        names = list(fns)
        for r in range(SEARCH_ROUNDS):
            for name in names[r % max(1, len(names)):] + names[:r % max(1, len(names))]:
                # Ranked by the fastest sample (timeit's rule): other processes only ever add time,
                # and on a shared CPU a stalled thread can multiply a median many times over.
                ms = min(measure.time_calls(lambda: fns[name](x), policy, ctx.clock, sync).samples_ms)
                out[name] = min(ms, out.get(name, ms))
    return out


def _error_note(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"[:300]


def layer_sqnr(reference: torch.Tensor, module: Copies, x: torch.Tensor) -> float | None:
    """SQNR (dB) of the candidate's eager output; None when identical (infinite)."""
    with torch.no_grad():
        return measure.accuracy(reference, module.layers[0](x)).sqnr_db


# ---- the decision ------------------------------------------------------------------------------

def choose(times_ms: dict[str, float | None], sqnr_db: dict[str, float | None], floor_db: float, margin: float) -> tuple[str, str]:
    """(mode, why) for one layer: the fastest candidate at or above the floor that beats noquant by the margin."""
    base = times_ms.get(NOQUANT)
    if base is None:
        return NOQUANT, "noquant could not be timed, so nothing can be compared"
    accurate = {m: t for m, t in times_ms.items()
                if m != NOQUANT and t is not None and (sqnr_db.get(m) is None or sqnr_db[m] >= floor_db)}
    fast = {m: t for m, t in accurate.items() if t <= base * (1 - margin)}
    if fast:
        best = min(fast, key=fast.get)
        return best, f"{base / fast[best]:.2f}x faster than noquant with SQNR >= {floor_db:g} dB"
    if not accurate:
        return NOQUANT, f"no candidate kept SQNR >= {floor_db:g} dB"
    return NOQUANT, f"no candidate with SQNR >= {floor_db:g} dB was {margin:.0%} faster than noquant"


def _status(mode: str, choice: str, ms, sqnr, base, floor_db, margin) -> str:
    if mode == choice:
        return "chosen"
    if mode == NOQUANT:
        return "reference"
    if sqnr is not None and sqnr < floor_db:
        return "below floor"
    if base is not None and ms > base * (1 - margin):
        return "not faster"
    return "slower"


# ---- the search --------------------------------------------------------------------------------

def _candidates(settings: SearchSettings, info: DeviceInfo, dtype: torch.dtype) -> tuple[list[Recipe], dict[str, str]]:
    names = settings.candidates if settings.candidates is not None else searchable_modes()
    names = [NOQUANT] + [n for n in names if n != NOQUANT]
    runnable, unsupported = [], {}
    for n in names:
        reason = recipes.RECIPES[n].unsupported_reason(info, dtype)
        if reason:
            unsupported[n] = reason
        else:
            runnable.append(recipes.RECIPES[n])
    return runnable, unsupported


def _versions() -> dict[str, str | None]:
    return {"torch": torch.__version__, "torchao": _torchao.torchao_version()}


def search(model: nn.Module, info: DeviceInfo, dtype: torch.dtype, example_inputs: models.Inputs,
           ctx: ApplyContext | None = None) -> dict[str, Any]:
    """Measure every candidate on every Linear; returns the decision table (JSON-ready). The model is not changed."""
    with torch.no_grad():
        return _search(model, info, dtype, example_inputs, ctx)


def _search(model, info, dtype, example_inputs, ctx) -> dict[str, Any]:
    ctx = ctx or ApplyContext(device=info.type)
    settings = SearchSettings.of(ctx.search)
    start = ctx.clock()
    layers = recipes.linear_layers(model)
    if not layers:
        raise UserError("autoquant found no nn.Linear layer in this model, so there is nothing to search; "
                        "it quantizes Linear layers only (use a model that has some, or mode noquant).")
    if example_inputs is None:
        raise UserError("autoquant needs example inputs: one forward pass shows each Linear's real input shape.")
    inputs = capture_inputs(model, example_inputs)
    cands, unsupported = _candidates(settings, info, dtype)
    linear_bytes = sum(lin.weight.numel() * lin.weight.element_size() for lin in layers.values())
    cache = TimingCache(settings.cache_dir, settings.use_cache)
    groups: dict[tuple, list[str]] = {}
    for fqn in layers:
        if fqn in inputs:
            groups.setdefault(_shape_key(layers[fqn], inputs[fqn]), []).append(fqn)

    table: dict[str, dict] = {}
    bar = None
    if ctx.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(groups) * len(cands), desc="autoquant search", unit="candidate", leave=False, dynamic_ncols=True)
    try:
        for key, fqns in groups.items():
            n = copies_for(layers[fqns[0]], linear_bytes)
            per_layer = _measure_group(key, fqns, cands, layers, inputs, info, dtype, ctx, cache, bar, n)
            for f in fqns:
                table[f] = _decide(f, key, per_layer[f], settings, n)
    finally:
        if bar is not None:
            bar.close()
    for fqn in layers:
        if fqn not in table:
            table[fqn] = {"layer": fqn, "in_features": layers[fqn].in_features, "out_features": layers[fqn].out_features,
                          "input_shape": None, "choice": NOQUANT, "candidates": {},
                          "why": "not called by one forward pass of the example inputs"}
    return {
        "sqnr_floor_db": settings.sqnr_floor_db, "margin": settings.margin, "compile": ctx.compile,
        "candidates": [r.name for r in cands], "unsupported": unsupported,
        "cache": {"dir": str(cache.folder), "hits": cache.hits, "misses": cache.misses, "enabled": cache.enabled},
        "layers": [table[f] for f in layers], "search_s": ctx.clock() - start,
    }


def _measure_group(key, fqns, cands, layers, inputs, info, dtype, ctx, cache, bar, n) -> dict[str, dict[str, dict]]:
    """Every candidate on one shape: each layer's SQNR (weights differ), one shared time (cached, of n copies)."""
    rep, x = layers[fqns[0]], inputs[fqns[0]]
    refs = {f: layers[f](inputs[f]) for f in fqns}
    result: dict[str, dict[str, dict]] = {f: {} for f in fqns}
    to_time: dict[str, nn.Module] = {}
    keys: dict[str, dict] = {}

    def record(mode, **fields):
        for f in fqns:
            result[f][mode] = {**fields, **({"sqnr_db": fields["sqnr_db"][f]} if "sqnr_db" in fields else {})}

    for recipe in cands:
        bar and bar.set_postfix_str(f"{key[0]}x{key[1]} {recipe.name}", refresh=False)
        reason = recipe.layer_reason(rep, info, dtype)
        if reason:
            record(recipe.name, ms=None, sqnr_db={f: None for f in fqns}, status="doesn't fit", note=reason)
            bar and bar.update(1)
            continue
        try:
            keys[recipe.name] = {
                "device": info.name, "device_type": info.type, "dtype": dtype_name(dtype), "shape": list(key),
                "candidate": recipe.name, "config": recipes.config_dict(recipe.config(info, dtype)),
                "compile": ctx.compile, "compile_mode": ctx.compile_mode, "torchao_tuning": ctx.torchao_tuning,
                "baseline": ctx.baseline, "threads": torch.get_num_threads(), "copies": n,
                **_versions(),
            }
            ms = cache.get(keys[recipe.name])
            with quiet_logs():
                # the n copies are only needed for timing; a cache hit needs one, for the SQNR
                module = _quantized_copy(rep, recipe, info, dtype, n if ms is None else 1)
                sqnr = {fqns[0]: layer_sqnr(refs[fqns[0]], module, x)}
                for f in fqns[1:]:
                    sqnr[f] = layer_sqnr(refs[f], _quantized_copy(layers[f], recipe, info, dtype), inputs[f])
        except Exception as e:  # one failing candidate must not end the search: it is recorded, never chosen
            record(recipe.name, ms=None, sqnr_db={f: None for f in fqns}, status="error", note=_error_note(e))
            bar and bar.update(1)
            continue
        record(recipe.name, ms=ms, sqnr_db=sqnr, cached=ms is not None)
        if ms is None:
            to_time[recipe.name] = module
        else:
            bar and bar.update(1)
    if to_time:
        bar and bar.set_postfix_str(f"{key[0]}x{key[1]} timing {len(to_time)} candidates", refresh=True)
        with quiet_logs():
            times = time_modules(to_time, x, ctx)
        for mode, ms in times.items():
            ms = ms if isinstance(ms, str) else ms / n  # per layer call
            for f in fqns:
                if isinstance(ms, str):
                    result[f][mode].update(ms=None, status="error", note=ms)
                else:
                    result[f][mode]["ms"] = ms
            if not isinstance(ms, str):
                cache.put(keys[mode], ms)
        bar and bar.update(len(to_time))
    return result


def _decide(fqn: str, key: tuple, cands: dict[str, dict], settings: SearchSettings, n: int = 1) -> dict:
    in_f, out_f, bias, x_shape, _ = key
    times = {m: c["ms"] for m, c in cands.items()}
    sqnrs = {m: c["sqnr_db"] for m, c in cands.items() if c["ms"] is not None}
    choice, why = choose(times, sqnrs, settings.sqnr_floor_db, settings.margin)
    base = times.get(NOQUANT)
    for m, c in cands.items():
        if c["ms"] is not None:
            c["status"] = _status(m, choice, c["ms"], c["sqnr_db"], base, settings.sqnr_floor_db, settings.margin)
    return {"layer": fqn, "in_features": in_f, "out_features": out_f, "input_shape": list(x_shape),
            "choice": choice, "why": why, "candidates": cands, "timed_copies": n}


def apply_choices(model: nn.Module, choices: dict[str, str], info: DeviceInfo, dtype: torch.dtype) -> dict[str, Any]:
    """quantize_ each chosen mode onto exactly its layers (filter_fn by fqn); returns fqn → config dict."""
    from torchao.quantization import quantize_

    by_mode: dict[str, set[str]] = {}
    for fqn, mode in choices.items():
        if mode != NOQUANT:
            by_mode.setdefault(mode, set()).add(fqn)
    applied = {}
    for mode, fqns in by_mode.items():
        config = recipes.RECIPES[mode].config(info, dtype)
        with quiet_logs():
            quantize_(model, config, filter_fn=lambda mod, fqn, fqns=fqns: fqn in fqns)
        applied.update({f: recipes.config_dict(config) for f in fqns})
    return applied


def _changed(model: nn.Module, fqns) -> int:
    """Layers torchao changed: a swapped weight, or a module that is no longer a plain Linear."""
    modules = dict(model.named_modules())
    return sum(1 for f in fqns if not isinstance(modules.get(f), nn.Linear) or recipes.is_quantized(modules[f]))


def _db(sqnr: float | None) -> float:
    return float("inf") if sqnr is None else sqnr  # None: identical output


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
        worst = min(quantized, key=lambda row: _db(row["candidates"][row["choice"]]["sqnr_db"]))
        old = worst["choice"]
        old_sqnr = _db(worst["candidates"][old]["sqnr_db"])
        better = {m: c for m, c in worst["candidates"].items()
                  if c.get("ms") is not None and (m == NOQUANT or _db(c["sqnr_db"]) > old_sqnr)}
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
                       {"autoquant": table, "search_s": table["search_s"]})


# ---- torchao's own autoquant (torchao < 0.17) ----------------------------------------------------------

def apply_torchao_autoquant(model: nn.Module, info: DeviceInfo, dtype: torch.dtype, example_inputs, ctx=None) -> ApplyReport:
    """As the seed does it: `torchao.autoquant(module, error_on_unseen=False)`, one forward pass, then insist it found layers."""
    ao = _torchao.torchao()
    if ao is None or not callable(getattr(ao, "autoquant", None)):
        raise RuntimeError("this torchao has no torchao.autoquant (deleted before 0.17); use mode autoquant")
    if example_inputs is None:
        raise UserError("autoquant-torchao needs example inputs for its one forward pass.")
    with quiet_logs(), torch.no_grad():
        ao.autoquant(model, error_on_unseen=False)
        models.call(model, example_inputs)
    found = getattr(importlib.import_module("torchao.quantization.autoquant"), "AUTOQUANT_CACHE", {})
    if len(found) == 0:
        raise RuntimeError(f"found no autoquantizable layers in model {type(model).__name__}, stopping autoquantization")
    layers = recipes.linear_layers(model)
    return ApplyReport(_changed(model, layers), len(layers), {}, {"_type": "torchao.autoquant", "error_on_unseen": False})


# ---- showing the decisions -------------------------------------------------------------------------------

def _tables(results) -> list[tuple[dict, dict]]:
    """(row identity, decision table) for every autoquant row in a Row, ResultSet, iterable of rows, or table dict."""
    if isinstance(results, dict):
        return [({}, results.get("autoquant", results))]
    rows = [results] if hasattr(results, "extra_dict") else list(results)
    out = []
    for r in rows:
        table = r.extra_dict.get("autoquant") if r.extra else None
        if table:
            out.append(({"model": r.model, "batch_size": r.batch_size, "device": r.device, "dtype": r.dtype,
                         "compile": r.compile}, table))
    if not out:
        raise ValueError("no autoquant decision table here: run a sweep with mode 'autoquant' (its row's extra holds it)")
    return out


def decision_table(results):
    """One line per layer: its shape, each candidate's ms and SQNR (dB, inf = identical), and the choice."""
    import pandas as pd

    records = []
    for ident, table in _tables(results):
        for layer in table["layers"]:
            rec = dict(ident)
            shape = layer.get("input_shape")
            rec.update(layer=layer["layer"], shape=f"{layer['in_features']}->{layer['out_features']}",
                       input_shape="x".join(map(str, shape)) if shape else "", choice=layer["choice"])
            for mode, c in layer["candidates"].items():
                rec[f"{mode} ms"] = c.get("ms")
                ok = c.get("ms") is not None
                rec[f"{mode} dB"] = (float("inf") if c.get("sqnr_db") is None else c["sqnr_db"]) if ok else None
            rec["why"] = layer["why"]
            records.append(rec)
    return pd.DataFrame.from_records(records)


_STATUS_STYLE = {"chosen": dict(edgecolor="black", linewidth=2.0), "below floor": dict(hatch="//", alpha=0.45),
                 "demoted": dict(hatch="xx", alpha=0.45), "not faster": dict(alpha=0.6), "slower": dict(alpha=0.6)}


def plot_choices(results, ax=None):
    """Per layer, each candidate's time relative to noquant; the chosen bar outlined, below-floor ones hatched."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from .plots import mode_color  # one colour per mode, the same as in every other figure

    tables = _tables(results)
    if ax is not None and len(tables) > 1:
        raise ValueError(f"{len(tables)} autoquant rows but one ax: pass a single row (results.where(...)) or no ax")
    if ax is None:
        # Figure() rather than pyplot: no global figure registry, safe from the panel's worker thread.
        fig = Figure(figsize=(9, 3.4 * len(tables)), layout="constrained")
        axes = [fig.add_subplot(len(tables), 1, i + 1) for i in range(len(tables))]
    else:
        fig, axes = ax.get_figure(root=True), [ax]
    for ax_, (ident, table) in zip(axes, tables):
        layers = [l for l in table["layers"] if l["candidates"].get(NOQUANT, {}).get("ms")]
        modes = list(dict.fromkeys(m for l in layers for m in l["candidates"]))
        width = 0.8 / max(1, len(modes))
        for j, mode in enumerate(modes):
            for i, layer in enumerate(layers):
                c = layer["candidates"].get(mode, {})
                if c.get("ms") is not None:
                    ax_.bar(i + (j - (len(modes) - 1) / 2) * width, c["ms"] / layer["candidates"][NOQUANT]["ms"], width,
                            color=mode_color(mode), **_STATUS_STYLE.get(c.get("status"), {}))
        ax_.axhline(1 - table["margin"], color="grey", linestyle=":", linewidth=1)
        ax_.set_xticks(range(len(layers)), [f"{l['layer']}\n→ {l['choice']}" for l in layers], fontsize=8)
        ax_.set_ylabel("time / noquant (lower is faster)")
        who = ", ".join(f"{ident[k]}" for k in ("model", "dtype") if k in ident)
        who += f", batch {ident['batch_size']}" if "batch_size" in ident else ""
        ax_.set_title(f"autoquant choices{': ' + who if who else ''}\n"
                      f"SQNR floor {table['sqnr_floor_db']:g} dB, margin {table['margin']:.0%} (dotted line)", fontsize=9)
        handles = [Patch(color=mode_color(m), label=m) for m in modes]
        handles += [Patch(facecolor="white", edgecolor="black", linewidth=2, label="chosen"),
                    Patch(facecolor="white", edgecolor="grey", hatch="//", label="below floor")]
        ax_.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig
