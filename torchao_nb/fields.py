"""The field catalogue: each results column defined once (name, label, unit, scale, format, its v3 metric, its axis).

The CLI table, the panel, the report, the CSV, the plots and the v3 export all read this one table:
- the tables show the fields whose `views` name them, in catalogue order (`in_view`);
- the v3 export writes one metric record per field that has a `metric` (export.py);
- the plots take a field's Row attribute, scale and interval for a bar and its `axis` for an axis label;
- the CSV (results.csv) keeps one column per Row attribute, in the order it always had (PyTorch dynamo's
  columns first), and appends each *derived* field whose `views` hold CSV. Why not a CSV in catalogue order:
  the CSV is the row itself, what `ResultSet.load` reads back (timing internals, versions and the recipe are
  Row attributes but no column of a table), so every CSV written before still loads and dynamo's tooling still
  finds its columns; a derived number a spreadsheet wants gets a column of its own, which a reader skips.

A field is *stored* (`attr`: the Row attribute it shows, times `scale`) or *derived* (`compute`: its value from
the row); a stored field may still compute what it shows (SQNR shows ∞ for identical outputs). The functions
read a row by attribute only: this module imports nothing of the package, so results can write the CSV from it.
Columns that explain a row from its extras (the note, per-layer configs) are added by columns.py with `add`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

INFINITE = "∞"  # an SQNR of identical outputs

# The views a field can be in.
TERMINAL, PANEL, REPORT, CSV = "terminal", "panel", "report", "csv"
TABLES = frozenset({TERMINAL, PANEL, REPORT})
_NOT_PANEL = frozenset({TERMINAL, REPORT})
_REPORT = frozenset({REPORT})


@dataclass(frozen=True)
class Metric:
    """What the v3 export writes for a field: one record per ok row with a finite value (export.py)."""

    name: str  # with its unit, as the dashboards show it
    unit: str | None = None  # None: the field's unit
    scale: float | None = None  # None: the field's scale
    extra: Callable[[Any], dict[str, Any]] | None = None  # more metric.extra_info from the row


@dataclass(frozen=True)
class Field:
    name: str  # the key views, plots and the CSV use
    label: str  # a table's header
    attr: str | None = None  # the Row attribute it shows (times scale); None: derived
    compute: Callable[[Any], Any] | None = None  # what it shows, from the row: a number, a text or None
    fmt: str = "{}"
    unit: str = ""  # of the value shown (after scale)
    scale: float = 1.0  # Row attribute → value shown (bytes → MB: 1e-6)
    numeric: bool = False
    optional: bool = False  # a table shows it only when some row has a value (fields of some models only)
    views: frozenset[str] = TABLES
    interval: tuple[str, str] | None = None  # the Row attributes of its 95 % interval (error bars)
    metric: Metric | None = None  # its v3 record, if it has one
    axis: str = ""  # a plot's axis label

    def __post_init__(self):
        if self.attr is None and self.compute is None:
            raise ValueError(f"field {self.name!r}: give the Row attribute it shows (attr) or how to compute it")

    def value(self, row: Any) -> Any:
        """What the field shows for a row (None when the row has none)."""
        if self.compute is not None:
            return self.compute(row)
        raw = getattr(row, self.attr)
        return raw if raw is None or self.scale == 1.0 else raw * self.scale

    def text(self, row: Any) -> str:
        v = self.value(row)
        if v is None or isinstance(v, str):
            return v or ""
        if isinstance(v, float) and math.isinf(v):
            return INFINITE if v > 0 else "-" + INFINITE
        return self.fmt.format(v)


def _interval(lo: float | None, hi: float | None) -> str | None:
    return None if lo is None or hi is None else f"{lo:.2f}–{hi:.2f}"


def _roofline(row) -> float | str | None:
    return "in cache" if row.fits_in_cache else row.roofline_pct


def _reload(row) -> str | None:
    return None if row.reload_equal is None else "equal" if row.reload_equal else "differs"


def _layers(row) -> str | None:
    return None if row.layers_quantized is None else f"{row.layers_quantized}/{row.layers_total}"


def _per_sample_ms(row) -> float | None:
    return None if row.median_ms is None else row.median_ms / row.batch_size


# ---- what the v3 records say beside a value ----

def _latency_extra(r) -> dict[str, Any]:
    return {"iqr_ms": r.iqr_ms, "samples": r.samples, "noisy": r.noisy}


def _baseline_extra(r) -> dict[str, Any]:
    ref = "unquantized model, compiled alike" if r.compile else "unquantized model, eager"
    return {"reference": ref, "reference_ms": r.baseline_ms}


def _eager_extra(r) -> dict[str, Any]:
    return {"reference": "unquantized model, eager", "reference_ms": r.eager_ms}


def _accuracy_extra(r) -> dict[str, Any]:
    return {"cosine": r.cosine, "max_abs_err": r.max_abs_err, "reference": "unquantized eager output"}


_MB = 1e-6
_FIELDS = (
    Field("model", "model", "model"),
    Field("mode", "mode", "mode"),
    Field("batch", "batch", "batch_size", numeric=True),
    Field("status", "status", "status"),
    Field("median_ms", "median ms", "median_ms", fmt="{:.3f}", unit="ms", numeric=True, axis="latency per call (ms)",
          metric=Metric("median latency (ms)", extra=_latency_extra)),
    Field("per_sample_ms", "ms per sample", compute=_per_sample_ms, fmt="{:.3f}", unit="ms", numeric=True,
          views=frozenset(), axis="latency per sample (ms)"),
    Field("iqr_ms", "IQR ms", "iqr_ms", fmt="{:.3f}", unit="ms", numeric=True, views=_NOT_PANEL),
    Field("synced_ms", "synced ms", "synced_ms", fmt="{:.3f}", unit="ms", numeric=True, views=_REPORT),
    Field("base_ms", "base ms", "baseline_ms", fmt="{:.3f}", unit="ms", numeric=True),  # what the speedup divides
    # the seed's / dynamo's speedup
    Field("speedup", "speedup", "speedup", fmt="{:.2f}×", unit="×", numeric=True,
          interval=("speedup_lo", "speedup_hi"), axis="speedup vs baseline (×)", metric=Metric("speedup vs unquantized (x)", "x", extra=_baseline_extra)),
    Field("speedup_ci", "95% CI", compute=lambda r: _interval(r.speedup_lo, r.speedup_hi)),
    Field("vs_eager", "vs eager", "speedup_vs_eager", fmt="{:.2f}×", unit="×", numeric=True,
          interval=("speedup_vs_eager_lo", "speedup_vs_eager_hi"),
          metric=Metric("speedup vs eager (x)", "x", extra=_eager_extra)),
    # An ok row whose SQNR is None had an output identical to the reference (infinite SQNR): the tables show ∞;
    # JSON and the v3 Float32 column cannot carry inf, so that metric is left out for that row.
    Field("sqnr", "SQNR dB", "sqnr_db", compute=lambda r: r.sqnr_value, fmt="{:.1f}", unit="dB", numeric=True,
          axis="SQNR vs unquantized output (dB)", metric=Metric("SQNR (dB)", extra=_accuracy_extra)),
    Field("cosine", "cosine", "cosine", fmt="{:.4f}", numeric=True, views=_NOT_PANEL,
          axis="cosine similarity vs unquantized output"),
    Field("tokens_per_s", "tok/s", "tokens_per_s", fmt="{:.1f}", unit="tok/s", numeric=True, views=_NOT_PANEL,
          metric=Metric("tokens per second (tok/s)")),
    # causal LMs
    Field("perplexity", "perplexity", "perplexity", fmt="{:.2f}", numeric=True, optional=True,
          metric=Metric("perplexity", "perplexity")),
    Field("ppl_change", "ppl Δ", "perplexity_change_pct", fmt="{:+.1f}%", unit="%", numeric=True, optional=True,
          metric=Metric("perplexity change (%)")),
    Field("agreement", "agree", "agreement", fmt="{:.0%}", numeric=True, optional=True,  # a share, 0-1
          metric=Metric("greedy agreement (%)", "%", scale=100)),
    Field("ttft_ms", "TTFT ms", "ttft_ms", fmt="{:.0f}", unit="ms", numeric=True, optional=True, views=_REPORT),
    Field("decode_ms", "decode ms", "decode_ms", fmt="{:.1f}", unit="ms", numeric=True, optional=True, views=_REPORT),
    Field("gen_tokens_per_s", "gen tok/s", "gen_tokens_per_s", fmt="{:.1f}", unit="tok/s", numeric=True, optional=True,
          metric=Metric("generation tokens per second (tok/s)")),
    Field("weights_mb", "weights MB", "weight_bytes", fmt="{:.1f}", unit="MB", scale=_MB, numeric=True,
          metric=Metric("weights (MB)")),
    Field("disk_mb", "disk MB", "disk_bytes", fmt="{:.1f}", unit="MB", scale=_MB, numeric=True, optional=True,
          views=_NOT_PANEL, metric=Metric("size on disk (MB)")),
    Field("reload", "reload", compute=_reload, optional=True, views=_REPORT),
    Field("peak_mb", "peak MB", "peak_mem_bytes", fmt="{:.1f}", unit="MB", scale=_MB, numeric=True, views=_REPORT,
          metric=Metric("peak memory (MB)")),
    Field("roofline", "roofline %", "roofline_pct", compute=_roofline, fmt="{:.0f}", unit="%", numeric=True,
          views=_NOT_PANEL, axis="achieved bandwidth (% of copy bandwidth)"),
    Field("layers", "layers", compute=_layers),
    Field("compile_s", "compile s", "compile_s", fmt="{:.1f}", unit="s", numeric=True, views=_REPORT),
)
CATALOGUE: dict[str, Field] = {f.name: f for f in _FIELDS}


def add(field: Field, after: str | None = None) -> None:
    """Put a field in the catalogue, after the one named (else last); one of the same name is replaced."""
    items = [(k, f) for k, f in CATALOGUE.items() if k != field.name]
    at = len(items) if after is None else [k for k, _ in items].index(after) + 1
    items.insert(at, (field.name, field))
    CATALOGUE.clear()
    CATALOGUE.update(items)


def in_view(view: str) -> list[Field]:
    """The fields a view shows, in catalogue order."""
    return [f for f in CATALOGUE.values() if view in f.views]


def metric_fields() -> list[Field]:
    """The fields the v3 export writes a record for, in catalogue order."""
    return [f for f in CATALOGUE.values() if f.metric is not None]
