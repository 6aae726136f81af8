"""The results columns, each defined once (header, value, format); the CLI table, the panel and the report pick from them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from .results import Row

INFINITE = "∞"  # an SQNR of identical outputs


def _mb(value: int | None) -> float | None:
    return None if value is None else value / 1e6


def note(row: Row) -> str:
    """Why a cell has no numbers, or what to be careful about when it has them."""
    if row.status != "ok":
        return row.reason or "no reason recorded"
    return "noisy (IQR > 10% of the median)" if row.noisy else ""


@dataclass(frozen=True)
class Column:
    label: str  # the header
    value: Callable[[Row], Any]  # a number for numeric columns; None when the cell has none
    fmt: str = "{}"
    numeric: bool = False

    def text(self, row: Row) -> str:
        v = self.value(row)
        if v is None:
            return ""
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
    "vs_eager": Column("vs eager", lambda r: r.speedup_vs_eager, "{:.2f}×", True),
    "sqnr": Column("SQNR dB", lambda r: r.sqnr_value, "{:.1f}", True),
    "cosine": Column("cosine", lambda r: r.cosine, "{:.4f}", True),
    "tokens_per_s": Column("tok/s", lambda r: r.tokens_per_s, "{:.1f}", True),
    "weights_mb": Column("weights MB", lambda r: _mb(r.weight_bytes), "{:.1f}", True),
    "peak_mb": Column("peak MB", lambda r: _mb(r.peak_mem_bytes), "{:.1f}", True),
    "roofline": Column("roofline %", lambda r: r.roofline_pct, "{:.0f}", True),
    "layers": Column("layers", lambda r: None if r.layers_quantized is None else f"{r.layers_quantized}/{r.layers_total}"),
    "compile_s": Column("compile s", lambda r: r.compile_s, "{:.1f}", True),
    "note": Column("note", note),
}

# Which columns each view shows, in order.
TERMINAL = ("model", "mode", "batch", "status", "median_ms", "iqr_ms", "speedup", "vs_eager", "sqnr", "cosine",
            "tokens_per_s", "weights_mb", "roofline", "layers", "note")
PANEL = ("model", "mode", "batch", "status", "median_ms", "speedup", "vs_eager", "sqnr", "weights_mb", "layers", "note")
REPORT = ("model", "mode", "batch", "status", "median_ms", "iqr_ms", "speedup", "vs_eager", "sqnr", "cosine",
          "weights_mb", "peak_mb", "layers", "compile_s", "note")
