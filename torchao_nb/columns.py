"""The results columns, each defined once (header, value, format); the CLI table, the panel and the report pick from them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from .results import Row

INFINITE = "∞"  # an SQNR of identical outputs


def _mb(value: int | None) -> float | None:
    return None if value is None else value / 1e6


def no_clear_difference(row: Row) -> bool:
    """The speedup's 95 % interval holds 1.0: the mode is not measurably faster or slower than the baseline."""
    return row.speedup_lo is not None and row.speedup_hi is not None and row.speedup_lo <= 1.0 <= row.speedup_hi


def note(row: Row) -> str:
    """Why a cell has no numbers, or what to be careful about when it has them."""
    if row.status != "ok":
        return row.reason or "no reason recorded"
    notes = ["no clear difference (the 95 % interval holds 1.0)"] if no_clear_difference(row) else []
    for count, what in ((row.graph_breaks, "graph break"), (row.recompiles, "recompile while timing"),
                        (row.cudagraph_skips, "CUDA-graph skip")):
        if count:
            notes.append(f"{count} {what}{'s' * (count != 1)}")
    if row.noisy:
        notes.append("noisy (IQR > 10% of the median)")
    return "; ".join(notes)


def _interval(lo: float | None, hi: float | None) -> str | None:
    return None if lo is None or hi is None else f"{lo:.2f}–{hi:.2f}"


def _roofline(row: Row) -> float | str | None:
    return "in cache" if row.fits_in_cache else row.roofline_pct


@dataclass(frozen=True)
class Column:
    label: str  # the header
    value: Callable[[Row], Any]  # a number for numeric columns; None when the cell has none
    fmt: str = "{}"
    numeric: bool = False

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
    "layers": Column("layers", lambda r: None if r.layers_quantized is None else f"{r.layers_quantized}/{r.layers_total}"),
    "compile_s": Column("compile s", lambda r: r.compile_s, "{:.1f}", True),
    "note": Column("note", note),
}

# Which columns each view shows, in order.
TERMINAL = ("model", "mode", "batch", "status", "median_ms", "iqr_ms", "speedup", "speedup_ci", "vs_eager", "sqnr",
            "cosine", "tokens_per_s", "weights_mb", "roofline", "layers", "note")
PANEL = ("model", "mode", "batch", "status", "median_ms", "speedup", "speedup_ci", "vs_eager", "sqnr", "weights_mb",
         "layers", "note")
REPORT = ("model", "mode", "batch", "status", "median_ms", "iqr_ms", "synced_ms", "speedup", "speedup_ci", "vs_eager",
          "sqnr", "cosine", "tokens_per_s", "weights_mb", "peak_mb", "roofline", "layers", "compile_s", "note")
