"""Result sets as tables: plain text for terminals, DataFrames for notebooks, HTML for the panel and the report."""

from __future__ import annotations

import html
import json
from typing import Any, Sequence

from . import columns
from .extras import Autoquant, Generations
from .results import ResultSet, Row, sqnr_or_inf

# Inline colours for where no stylesheet reaches (the panel); the report styles the same classes with CSS.
STATUS_STYLE = {"error": "color:#b00020", "wrong": "color:#b00020", "skipped": "color:#777"}


def text(results: ResultSet | Sequence[Row], keys: str | Sequence[str] = columns.TERMINAL) -> str:
    """A plain-text table for terminals and logs; `keys`: a view of the column catalogue, or the columns' keys."""
    cols = columns.shown(keys, results)
    head = [c.label for c in cols]
    lines = [[c.text(r) for c in cols] for r in results]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
    widths[-1] = len(head[-1])  # the last column (the note) runs on unpadded
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines])


def headline(results: ResultSet, keys: str | Sequence[str] = columns.PANEL):
    """One line per cell with the columns a reader looks at first (numbers as numbers; SQNR ∞ as inf)."""
    import pandas as pd

    cols = columns.shown(keys, results)
    return pd.DataFrame([[c.value(r) for c in cols] for r in results], columns=[c.label for c in cols])


def html_table(headers: Sequence[str], rows: Sequence[Sequence[str]], css: str = "", row_classes: Sequence[str] = (),
               numeric: Sequence[bool] = (), inline: bool = False) -> str:
    """One HTML table; `inline` styles it in the tags themselves (the panel), else by class (the report's CSS)."""
    def cls(name):
        if inline:
            return f' style="{STATUS_STYLE.get(name, "")}"' if name in STATUS_STYLE else ""
        return f' class="{html.escape(name)}"' if name else ""

    pad = ' style="padding-right:10px;text-align:left"' if inline else ""
    head = "".join(f"<th{pad}>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, cells in enumerate(rows):
        tds = "".join(f'<td class="num"{pad}>{html.escape(c)}</td>' if i2 < len(numeric) and numeric[i2]
                      else f"<td{pad}>{html.escape(c)}</td>" for i2, c in enumerate(cells))
        body.append(f"<tr{cls(row_classes[i]) if i < len(row_classes) else ''}>{tds}</tr>")
    style = ' style="border-collapse:collapse;font-size:12px"' if inline else ""
    return (f'<div class="scroll"><table class="{html.escape(css)}"{style}><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def results_html(results: ResultSet, keys: str | Sequence[str], css: str = "results", inline: bool = False) -> str:
    cols = columns.shown(keys, results)
    return html_table([c.label for c in cols], [[c.text(r) for c in cols] for r in results], css,
                      [r.status for r in results], [c.numeric for c in cols], inline)


# ---- generated text of causal LMs -------------------------------------------------------------------

def generations(results: ResultSet | Sequence[Row]) -> list[tuple[str, list[str], list[tuple[str, list[str]]]]]:
    """Per model and batch size: (title, prompts, [(column, texts)]): the unquantized model's texts, then each mode's."""
    groups: dict[tuple, list[Row]] = {}
    for r in results:
        if r.status == "ok" and (texts := r.extra_of(Generations)) is not None:
            groups.setdefault((r.model, r.batch_size), []).append((r, texts))
    out = []
    for (model, batch), rows in groups.items():
        first = rows[0][1]
        how = first.unquantized_how
        cols = [(f"unquantized ({how})" if how else "unquantized", first.unquantized)]
        for r, texts in rows:
            agree = "" if r.agreement is None else f", {r.agreement:.0%} of tokens as unquantized"
            cols.append((f"{r.mode}{agree}", texts.quantized))
        title = f"{model}, batch {batch}: greedy continuations of {first.new_tokens} tokens"
        out.append((title, first.prompts, cols))
    return out


def generations_html(results: ResultSet | Sequence[Row], inline: bool = False) -> str:
    """The generated texts side by side, one table per model: a line per prompt, a column per mode (escaped)."""
    cell = ' style="border:1px solid #ddd;padding:4px;vertical-align:top;white-space:pre-wrap"' if inline else ""
    parts = []
    for title, prompts, cols in generations(results):
        head = "".join(f"<th{cell}>{html.escape(h)}</th>" for h in ["prompt"] + [c for c, _ in cols])
        body = "".join("<tr>" + "".join(f"<td{cell}>{html.escape(t)}</td>" for t in [p] + [texts[i] for _, texts in cols])
                       + "</tr>" for i, p in enumerate(prompts))
        style = ' style="border-collapse:collapse;font-size:12px"' if inline else ""
        parts.append(f"<p><b>{html.escape(title)}</b></p><div class=\"scroll\"><table class=\"generations\"{style}>"
                     f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")
    return "".join(parts)


def baseline_records(states: Sequence[dict]) -> list[dict[str, str]]:
    """Compiler settings (baseline.describe_dicts(), or environment.json's copy of them) as table rows."""
    def value(v):
        return "" if v is None else repr(v)

    return [{"setting": s.get("key", ""), "value": f"{value(s.get('old'))} → {value(s.get('new'))}",
             "applied": "yes" if s.get("applied") else "no", "effect here": s.get("effect", ""),
             "why": s.get("note", "")} for s in states]


def baseline_html(states: Sequence[dict], inline: bool = False) -> str:
    records = baseline_records(states)
    headers = ["setting", "value", "applied", "effect here", "why"]
    return html_table(headers, [[r[h] for h in headers] for r in records], "baseline", inline=inline)


def environment(results: ResultSet):
    """The environment of a result set as a two-column table (nested values as compact JSON)."""
    import pandas as pd

    env = results.environment
    flat = {k: (json.dumps(v, default=str) if isinstance(v, (dict, list)) else v)
            for k, v in env.items() if k not in ("baseline_settings", "modes", "tuning_settings", "torchao_tuning_settings")}
    return pd.DataFrame({"value": pd.Series(flat, dtype=object)})


# ---- autoquant's per-layer decisions ------------------------------------------------------------------

AUTOQUANT_KEY = "autoquant"  # the Row.extra key of the autoquant mode's per-layer decision table (extras.Autoquant)


def autoquant_tables(results: Any) -> list[tuple[dict, dict]]:
    """(row identity, decision table) for every autoquant row in a Row, ResultSet, iterable of rows, or table dict."""
    if isinstance(results, dict):
        return [({}, results.get(AUTOQUANT_KEY, results))]
    rows = [results] if isinstance(results, Row) else list(results)
    out = []
    for r in rows:
        said = r.extra_of(Autoquant)
        table = said and said.autoquant
        if table:
            out.append(({"model": r.model, "batch_size": r.batch_size, "device": r.device, "dtype": r.dtype,
                         "compile": r.compile}, table))
    if not out:
        raise ValueError("no autoquant decision table here: run a sweep with mode 'autoquant' (its row's extra holds it)")
    return out


def decision_table(results: Any):
    """One line per layer: its shape, each candidate's ms and SQNR (dB, inf = identical), and the choice."""
    import pandas as pd

    records = []
    for ident, table in autoquant_tables(results):
        for layer in table["layers"]:
            rec = dict(ident)
            shape = layer.get("input_shape")
            rec.update(layer=layer["layer"], shape=f"{layer['in_features']}->{layer['out_features']}",
                       input_shape="x".join(map(str, shape)) if shape else "", choice=layer["choice"])
            for mode, c in layer["candidates"].items():
                rec[f"{mode} ms"] = c.get("ms")
                rec[f"{mode} dB"] = sqnr_or_inf(c.get("sqnr_db")) if c.get("ms") is not None else None
            rec["why"] = layer["why"]
            records.append(rec)
    return pd.DataFrame.from_records(records)
