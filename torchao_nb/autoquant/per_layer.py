"""autoquant's search: every candidate mode timed on each Linear's real input, and the per-layer decision."""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from typing import Any

import torch
from torch import nn

from .. import _torchao, compile_cache, compiling, measure, models, modes
from .._torchao import quiet_logs
from ..checks import wrongness
from ..env import DeviceInfo, dtype_name
from ..errors import Crashed, UserError, error_text
from ..modes import ApplyContext, Mode
from .cache import TimingCache
from .settings import NOQUANT, SearchSettings, searchable_modes

# Each candidate is timed for at most this long after warm-up: one layer's kernel settles fast,
# and the search times (shapes x candidates) of them. The time is split into rounds that visit
# every candidate in turn, and a candidate's time is its fastest sample over all rounds, so a burst
# of load from another process can't single out one candidate.
SEARCH_MAX_TIME_S = 0.6
SEARCH_WARMUP_S = 0.05
SEARCH_BURST_S = 2e-3  # a layer's call is short: its samples stay this long, as before the run's bursts
SEARCH_ROUNDS = 3
# Timed alone, a layer's weights stay in the CPU caches (or a GPU's L2) from call to call, which a
# model whose weights outgrow the cache never enjoys: memory-bound weight-only modes would look no
# faster than noquant. So each candidate is timed as distinct copies of the layer called in turn,
# whose unquantized weights add up to the model's Linear weights (capped): weights stream from
# memory as they do in the model. A model whose Linears fit in cache is timed one layer at a time.
STREAM_BYTES_MIN = 16 * 2**20
STREAM_BYTES_MAX = 256 * 2**20
MAX_COPIES = 64


# ---- capturing the real inputs ------------------------------------------------------------------------

def capture_inputs(model: nn.Module, example_inputs: models.Inputs) -> dict[str, torch.Tensor]:
    """fqn → the input each Linear got in one forward pass of the example inputs (its first call)."""
    seen: dict[str, torch.Tensor] = {}

    def see(fqn: str, x: torch.Tensor) -> None:
        if fqn not in seen:
            seen[fqn] = x.detach().clone()

    with modes.seeing_linear_inputs(model, see), torch.no_grad():
        models.call(model, example_inputs)
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


def _quantized_copy(layer: nn.Linear, mode: Mode, info: DeviceInfo, dtype: torch.dtype, n: int = 1) -> Copies:
    holder = Copies(layer, n)  # quantize_ swaps children: the layers need a parent anyway
    modes.quantize(holder, mode, info, dtype)
    return holder


def _search_policy(policy: measure.TimingPolicy) -> measure.TimingPolicy:
    """The run's policy, shortened: a ranking by the fastest sample needs neither long bursts nor copies."""
    return dataclasses.replace(policy, max_time_s=min(policy.max_time_s, SEARCH_MAX_TIME_S) / SEARCH_ROUNDS,
                               warmup_s=min(policy.warmup_s, SEARCH_WARMUP_S), lead_s=0.0,
                               burst_s=min(policy.burst_s, SEARCH_BURST_S), replicates=1)


def time_modules(modules: dict[str, nn.Module], x: torch.Tensor, reference: torch.Tensor,
                 ctx: ApplyContext, phase=lambda text: None) -> dict[str, float | tuple[str, str]]:
    """name → ms of one call, or (status, note) when it failed or its compiled output is wrong.

    All candidates of one shape are compiled in one fresh dynamo state, the way the run compiles, then
    timed in rounds. A compiled output is checked against the unquantized layer's: a compiler bug must
    never win the search.
    """
    policy, sync = _search_policy(ctx.policy), measure.sync_for(ctx.device)
    out: dict[str, float | tuple[str, str]] = {}
    with torch.no_grad(), compiling.maybe_compiled(ctx.compile):
        fns = {}
        for name, module in modules.items():
            try:
                phase(f"{name}: compiling and calling")
                fns[name] = compiling.compiled(module, ctx.compile, name)
                why, _ = wrongness(reference, fns[name](x)[0])  # compile and first call, not timed
            except Exception as e:  # recorded; the other candidates still run
                fns.pop(name, None)
                out[name] = ("error", error_text(e, 300))
                continue
            if why is not None:
                fns.pop(name)
                out[name] = ("wrong", f"compiled output wrong: {why}")
        names = list(fns)
        for r in range(SEARCH_ROUNDS):
            for name in names[r % max(1, len(names)):] + names[:r % max(1, len(names))]:
                phase(f"{name}: timing")
                # Ranked by the fastest sample (timeit's rule): other processes only ever add time,
                # and on a shared CPU a stalled thread can multiply a median many times over.
                ms = min(measure.time_calls(lambda: fns[name](x), policy, ctx.clock, sync).samples_ms)
                out[name] = min(ms, out.get(name, ms))
    return out


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

def _candidates(settings: SearchSettings, info: DeviceInfo, dtype: torch.dtype) -> tuple[list[Mode], dict[str, str]]:
    names = settings.candidates if settings.candidates is not None else searchable_modes()
    names = [NOQUANT] + [n for n in names if n != NOQUANT]
    runnable, unsupported = [], {}
    for n in names:
        spec = modes.MODES[n]
        reason = spec.unsupported_reason(info, dtype) or (
            None if settings.candidates is not None or not spec.not_searched else f"not searched: {spec.not_searched}")
        if reason:
            unsupported[n] = reason
        else:
            runnable.append(modes.MODES[n])
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
    settings = SearchSettings.of(ctx.settings)
    start = ctx.clock()
    layers = modes.linear_layers(model)
    if not layers:
        raise UserError("autoquant found no nn.Linear layer in this model, so there is nothing to search; "
                        "it quantizes Linear layers only (use a model that has some, or mode noquant).")
    if example_inputs is None:
        raise UserError("autoquant needs example inputs: one forward pass shows each Linear's real input shape.")
    inputs = capture_inputs(model, example_inputs)
    cands, unsupported = _candidates(settings, info, dtype)
    linear_bytes = sum(lin.weight.numel() * lin.weight.element_size() for lin in layers.values())
    cache = TimingCache(settings.cache_dir, settings.use_cache)
    compiles: Counter = Counter()
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
            per_layer = _measure_group(key, fqns, cands, layers, inputs, info, dtype, ctx, cache, bar, n, compiles)
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
        "sqnr_floor_db": settings.sqnr_floor_db, "margin": settings.margin, "compile": ctx.compile.enabled,
        "candidates": [r.name for r in cands], "unsupported": unsupported,
        "cache": {"dir": str(cache.folder), "hits": cache.hits, "misses": cache.misses, "enabled": cache.enabled},
        "compiles": {k: compiles[k] for k in ("hit", "miss", "bypass")},  # the candidates' FX graphs
        "layers": [table[f] for f in layers], "search_s": ctx.clock() - start,
    }


def _measure_group(key, fqns, cands, layers, inputs, info, dtype, ctx, cache, bar, n,
                   compiles: Counter) -> dict[str, dict[str, dict]]:
    """Every candidate on one shape: each layer's SQNR (weights differ), one shared time (cached, of n copies).

    The candidates are quantized, checked and timed in ctx.sandbox (a child process) when there is one: a
    candidate whose kernel crashes or hangs there is recorded as `crashed`, never chosen, and the shape's other
    candidates run again without it. `compiles` adds up the candidates' FX graph cache hits and misses.
    """
    result: dict[str, dict[str, dict]] = {f: {} for f in fqns}

    def record(mode, **fields):
        for f in fqns:
            result[f][mode] = {**fields, **({"sqnr_db": fields["sqnr_db"][f]} if "sqnr_db" in fields else {})}

    rep, x = layers[fqns[0]], inputs[fqns[0]]
    keys, cached = {}, {}
    for cand in cands:
        reason = cand.layer_reason(rep, info, dtype) or cand.input_reason(info, dtype, x.numel() // max(1, x.shape[-1]))
        if reason:
            record(cand.name, ms=None, sqnr_db={f: None for f in fqns}, status="doesn't fit", note=reason)
            bar and bar.update(1)
            continue
        try:
            keys[cand.name] = {
                "device": info.name, "device_type": info.type, "dtype": dtype_name(dtype), "shape": list(key),
                "candidate": cand.name, "config": modes.config_dict(cand.config(info, dtype)),
                "compile": ctx.compile.enabled, "compile_mode": ctx.compile.mode,
                "tuning": ctx.compile.tuning, "baseline": ctx.compile.baseline,
                "threads": torch.get_num_threads(), "copies": n,
                **_versions(),
            }
        except Exception as e:
            record(cand.name, ms=None, sqnr_db={f: None for f in fqns}, status="error", note=error_text(e, 300))
            bar and bar.update(1)
            continue
        cached[cand.name] = cache.get(keys[cand.name])
    group = {f: layers[f] for f in fqns}
    group_inputs = {f: inputs[f] for f in fqns}
    refs = {f: layers[f](inputs[f]) for f in fqns}
    plain = dataclasses.replace(ctx, sandbox=None, progress=False)
    names = list(cached)
    while names:
        args = (group, group_inputs, refs, {m: cached[m] for m in names}, n, info, dtype, plain)
        label = f"{key[0]}x{key[1]}"
        show = lambda phase: bar and bar.set_postfix_str(f"{label} {phase}", refresh=True)  # noqa: E731
        try:
            counted = (ctx.sandbox is not None and ctx.keep_compiles, *args)  # hand back: only from a child
            measured, counts, handed = (ctx.sandbox(_evaluate_counted, counted, show) if ctx.sandbox is not None
                                        else _evaluate_counted(*counted, phase=show))
            compiles.update(counts)
            if handed is not None:
                compile_cache.adopt(handed)
        except Crashed as e:
            culprit = e.phase.partition(":")[0]
            lost = [culprit] if culprit in names else names
            for m in lost:
                record(m, ms=None, sqnr_db={f: None for f in fqns}, status="crashed",
                       note=f"{e.how} while {e.phase} on this layer's shape in a child process; never chosen")
                bar and bar.update(1)
            names = [m for m in names if m not in lost]
            continue
        for m, fields in measured.items():
            record(m, **fields)
            if fields.get("ms") is not None and not fields.get("cached"):
                cache.put(keys[m], fields["ms"])
            bar and bar.update(1)
        break
    return result


def _evaluate_shape(layers: dict[str, nn.Linear], inputs: dict[str, torch.Tensor], refs: dict[str, torch.Tensor],
                    cached: dict[str, float | None], n: int, info: DeviceInfo, dtype: torch.dtype, ctx: ApplyContext,
                    phase=lambda text: None) -> dict[str, dict]:
    """Quantize, score and time each candidate (`cached` holds the times already known) on one shape's layers;
    mode -> the fields of its table entry. `phase` reports "<mode>: <step>" before each step that may crash."""
    import torch._inductor.config as inductor_config

    fqns = list(layers)
    rep, x = layers[fqns[0]], inputs[fqns[0]]
    out: dict[str, dict] = {}
    to_time: dict[str, nn.Module] = {}
    # A child process starts its own compile workers (each a fresh python importing torch, seconds) unless
    # inductor compiles in-process; the generated code is the same.
    with torch.no_grad(), inductor_config.patch(compile_threads=1):
        for name, ms in cached.items():
            cand = modes.MODES[name]
            try:
                phase(f"{name}: quantizing")
                with quiet_logs():
                    # the n copies are only needed for timing; a cache hit needs one, for the SQNR
                    module = _quantized_copy(rep, cand, info, dtype, n if ms is None else 1)
                    sqnr = {fqns[0]: layer_sqnr(refs[fqns[0]], module, x)}
                    for f in fqns[1:]:
                        sqnr[f] = layer_sqnr(refs[f], _quantized_copy(layers[f], cand, info, dtype), inputs[f])
            except Exception as e:  # one failing candidate must not end the search: it is recorded, never chosen
                out[name] = dict(ms=None, sqnr_db={f: None for f in fqns}, status="error", note=error_text(e, 300))
                continue
            out[name] = dict(ms=ms, sqnr_db=sqnr, cached=ms is not None)
            if ms is None:
                to_time[name] = module
        if to_time:
            with quiet_logs():
                times = time_modules(to_time, x, refs[fqns[0]], ctx, phase)
            for name, timed in times.items():
                if isinstance(timed, tuple):
                    out[name].update(ms=None, status=timed[0], note=timed[1])
                else:
                    out[name]["ms"] = timed / n  # per layer call
    return out


def _evaluate_counted(hand_back: bool, *args, phase=lambda text: None) -> tuple[dict[str, dict], dict, tuple | None]:
    """_evaluate_shape where it runs (a child process, or here): its result, its compiles' FX graph cache hits and
    misses, and with `hand_back` what the child compiled, for the compile cache the worker saves."""
    before = compiling.fx_cache_counts()
    out = _evaluate_shape(*args, phase=phase)
    counts = {k: v - before[k] for k, v in compiling.fx_cache_counts().items()}
    return out, counts, compile_cache.hand_back() if hand_back else None


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


