"""The results columns, each defined once (header, value, format); the CLI table, the panel and the report pick from them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from .extras import LayerConfigs, SaveReload, TimingNotes
from .results import Row

INFINITE = "∞"  # an SQNR of identical outputs


def _mb(value: int | None) -> float | None:
    return None if value is None else value / 1e6


def no_clear_difference(row: Row) -> bool:
    """The speedup's 95 % interval holds 1.0: the mode is not measurably faster or slower than the baseline."""
    return row.speedup_lo is not None and row.speedup_hi is not None and row.speedup_lo <= 1.0 <= row.speedup_hi


def _reload_note(row: Row) -> str | None:
    if row.reload_equal is False:
        return "reloaded from disk, its output differs from the quantized model's"
    if row.reload_equal is None and (said := row.extra_of(SaveReload)):
        why = said.save_reload
        return why if why and not why.startswith("torch.save") else None
    return None


def note(row: Row) -> str:
    """Why a cell has no numbers, or what to be careful about when it has them."""
    if row.status != "ok":
        return row.reason or "no reason recorded"
    notes = ["no clear difference (the 95 % interval holds 1.0)"] if no_clear_difference(row) else []
    if (reload := _reload_note(row)) is not None:
        notes.append(reload)
    if timing := row.extra_of(TimingNotes):
        notes += [said for said in (timing.not_steady, timing.busy) if said]
    for count, what in ((row.graph_breaks, "graph break"), (row.recompiles, "recompile while timing"),
                        (row.cudagraph_skips, "CUDA-graph skip")):
        if count:
            notes.append(f"{count} {what}{'s' * (count != 1)}")
    if row.noisy:
        notes.append("noisy (IQR > 10% of the median)")
    return "; ".join(notes)


_CACHE_TEXT = {"warm": "cache warm (bursts of back-to-back calls, as a generation loop calls a model)",
               "cold": "cache cold (the last-level cache or L2 flushed before each call)"}


def timing_note(rows) -> str:
    """How the speedups were measured, said once under a table: what `speedup` divides, and the cache state."""
    ok = [r for r in rows if r.status == "ok"]
    compiled = any(r.compile for r in ok) or not ok
    base = "the compiled unquantized model" if compiled else "the eager unquantized model (compile off)"
    copies = sorted({r.replicates for r in ok if r.replicates})
    caches = [_CACHE_TEXT.get(c, c) for c in dict.fromkeys(r.cache for r in ok if r.cache)]
    parts = [f"speedup = base ms / median ms, round by round: base ms is {base}, timed in the same rounds as the mode"]
    if copies:
        plural = "copy" if copies == [1] else "copies"
        parts.append(f"each side on {'/'.join(map(str, copies))} {plural} of its own (the 95% CI resamples copies, "
                     "then rounds)")
    return "; ".join(parts + caches)


def _interval(lo: float | None, hi: float | None) -> str | None:
    return None if lo is None or hi is None else f"{lo:.2f}–{hi:.2f}"


def _roofline(row: Row) -> float | str | None:
    return "in cache" if row.fits_in_cache else row.roofline_pct


def _reload(row: Row) -> str | None:
    return None if row.reload_equal is None else "equal" if row.reload_equal else "differs"


def layer_configs(row: Row) -> str | None:
    """How many layers took each per-layer config, e.g. int4's "group 64 ×121, group 128 ×90"."""
    configs = row.extra_of(LayerConfigs)
    if configs is None or not configs.layer_configs:
        return None
    return ", ".join(f"{label} ×{n}" for label, n in configs.counts())


@dataclass(frozen=True)
class Column:
    label: str  # the header
    value: Callable[[Row], Any]  # a number for numeric columns; None when the cell has none
    fmt: str = "{}"
    numeric: bool = False
    optional: bool = False  # shown only when some row has a value (columns of some models only)

    def text(self, row: Row) -> str:
        v = self.value(row)
        if v is None or isinstance(v, str):
            return v or ""
        if isinstance(v, float) and math.isinf(v):
            return INFINITE if v > 0 else "-" + INFINITE
        return self.fmt.format(v)


COLUMNS: dict[str, Column] = {
    "model": Column("model", lambda r: r.model),
    "mode": Column("mode", lambda r: r.mode),
    "batch": Column("batch", lambda r: r.batch_size, numeric=True),
    "status": Column("status", lambda r: r.status),
    "median_ms": Column("median ms", lambda r: r.median_ms, "{:.3f}", True),
    "iqr_ms": Column("IQR ms", lambda r: r.iqr_ms, "{:.3f}", True),
    "base_ms": Column("base ms", lambda r: r.baseline_ms, "{:.3f}", True),  # what the speedup divides
    "speedup": Column("speedup", lambda r: r.speedup, "{:.2f}×", True),
    "speedup_ci": Column("95% CI", lambda r: _interval(r.speedup_lo, r.speedup_hi)),
    "vs_eager": Column("vs eager", lambda r: r.speedup_vs_eager, "{:.2f}×", True),
    "synced_ms": Column("synced ms", lambda r: r.synced_ms, "{:.3f}", True),
    "sqnr": Column("SQNR dB", lambda r: r.sqnr_value, "{:.1f}", True),
    "cosine": Column("cosine", lambda r: r.cosine, "{:.4f}", True),
    "tokens_per_s": Column("tok/s", lambda r: r.tokens_per_s, "{:.1f}", True),
    "weights_mb": Column("weights MB", lambda r: _mb(r.weight_bytes), "{:.1f}", True),
    "peak_mb": Column("peak MB", lambda r: _mb(r.peak_mem_bytes), "{:.1f}", True),
    "roofline": Column("roofline %", _roofline, "{:.0f}", True),
    "perplexity": Column("perplexity", lambda r: r.perplexity, "{:.2f}", True, True),
    "ppl_change": Column("ppl Δ", lambda r: r.perplexity_change_pct, "{:+.1f}%", True, True),
    "agreement": Column("agree", lambda r: r.agreement, "{:.0%}", True, True),
    "ttft_ms": Column("TTFT ms", lambda r: r.ttft_ms, "{:.0f}", True, True),
    "decode_ms": Column("decode ms", lambda r: r.decode_ms, "{:.1f}", True, True),
    "gen_tokens_per_s": Column("gen tok/s", lambda r: r.gen_tokens_per_s, "{:.1f}", True, True),
    "disk_mb": Column("disk MB", lambda r: _mb(r.disk_bytes), "{:.1f}", True, True),
    "reload": Column("reload", _reload, optional=True),
    "layer_configs": Column("per-layer configs", layer_configs, optional=True),
    "layers": Column("layers", lambda r: None if r.layers_quantized is None else f"{r.layers_quantized}/{r.layers_total}"),
    "compile_s": Column("compile s", lambda r: r.compile_s, "{:.1f}", True),
    "note": Column("note", note),
}

# Which columns each view shows, in order (an optional column only when some row has a value).
TERMINAL = ("model", "mode", "batch", "status", "median_ms", "iqr_ms", "base_ms", "speedup", "speedup_ci", "vs_eager",
            "sqnr", "cosine", "tokens_per_s", "perplexity", "ppl_change", "agreement", "gen_tokens_per_s", "weights_mb",
            "disk_mb", "roofline", "layers", "layer_configs", "note")
PANEL = ("model", "mode", "batch", "status", "median_ms", "base_ms", "speedup", "speedup_ci", "vs_eager", "sqnr", "perplexity",
         "ppl_change", "agreement", "gen_tokens_per_s", "weights_mb", "layers", "note")
REPORT = ("model", "mode", "batch", "status", "median_ms", "iqr_ms", "synced_ms", "base_ms", "speedup", "speedup_ci", "vs_eager",
          "sqnr", "cosine", "tokens_per_s", "perplexity", "ppl_change", "agreement", "ttft_ms", "decode_ms",
          "gen_tokens_per_s", "weights_mb", "disk_mb", "reload", "peak_mb", "roofline", "layers", "layer_configs",
          "compile_s", "note")


def shown(keys, rows) -> list[Column]:
    """The columns of a view that these rows fill: an optional column none of them has a value for is left out."""
    rows = list(rows)
    return [COLUMNS[k] for k in keys if not COLUMNS[k].optional or any(COLUMNS[k].value(r) is not None for r in rows)]
