"""Result sets as small pandas tables for notebooks and the panel: the headline columns and the environment."""

from __future__ import annotations

import html
import json
import math

from .results import ResultSet

HEADLINE = ("model", "mode", "batch", "status", "median ms", "speedup", "vs eager", "SQNR dB", "weights MB", "layers", "note")


def headline(results: ResultSet):
    """One line per cell with the columns a reader looks at first; skipped/error cells keep their reason."""
    import pandas as pd

    lines = []
    for r in results:
        # SQNR None on an ok row means the output was bit-identical: infinite SQNR.
        sqnr = float("inf") if r.status == "ok" and r.sqnr_db is None and r.cosine is not None else r.sqnr_db
        lines.append({
            "model": r.model, "mode": r.mode, "batch": r.batch_size, "status": r.status,
            "median ms": r.median_ms, "speedup": r.speedup, "vs eager": r.speedup_vs_eager, "SQNR dB": sqnr,
            "weights MB": None if r.weight_bytes is None else r.weight_bytes / 1e6,
            "layers": "" if r.layers_quantized is None else f"{r.layers_quantized}/{r.layers_total}",
            "note": r.reason if r.status != "ok" else ("noisy" if r.noisy else ""),
        })
    return pd.DataFrame(lines, columns=list(HEADLINE))


FORMATS = {"median ms": "{:.3f}", "speedup": "{:.2f}×", "vs eager": "{:.2f}×", "SQNR dB": "{:.1f}", "weights MB": "{:.1f}"}


def headline_html(results: ResultSet) -> str:
    """`headline` as compact HTML, numbers rounded, failed rows in red."""
    frame = headline(results)

    def cell(col, v):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return FORMATS[col].format(v) if col in FORMATS else str(v)

    body = []
    for rec in frame.to_dict("records"):
        style = _ROW_STYLE.get(rec["status"], "")
        body.append(f'<tr style="{style}">' + "".join(f'<td style="padding-right:10px">{html.escape(cell(c, rec[c]))}</td>' for c in HEADLINE) + "</tr>")
    head = "".join(f'<th style="text-align:left;padding-right:10px">{c}</th>' for c in HEADLINE)
    return (f'<table class="torchao-nb-results" style="border-collapse:collapse;font-size:12px">'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


_ROW_STYLE = {"error": "color:#b00020", "skipped": "color:#777"}


def environment(results: ResultSet):
    """The environment of a result set as a two-column table (nested values as compact JSON)."""
    import pandas as pd

    env = results.environment
    flat = {k: (json.dumps(v, default=str) if isinstance(v, (dict, list)) else v)
            for k, v in env.items() if k not in ("baseline_settings", "modes")}
    return pd.DataFrame({"value": pd.Series(flat, dtype=object)})
