"""A self-contained HTML report of one or more results folders that opens offline; its figures also saved as PNG."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from . import columns, plots, tables
from . import runs as runs_mod
from .errors import UserError
from .folder import slug
from .results import ResultSet, atomic_write

ENVIRONMENT_KEYS = {  # key → label, in the order shown
    "torch": "torch", "torchao": "torchao", "python": "Python", "platform": "platform", "device": "device",
    "device_name": "device name", "cpu_model": "CPU", "cpu_count": "CPU cores", "threads": "threads", "dtype": "dtype",
    "cuda": "CUDA", "cuda_driver": "NVIDIA driver", "compute_capability": "compute capability", "compile": "torch.compile",
    "baseline": "baseline compiler settings", "tuning": "inductor tuning",
    "torchao_tuning": "torchao inductor tuning", "batch_sizes": "batch sizes",
    "seq_len": "sequence length", "isolation": "cells ran in", "sweep_settings": "sweep settings",
    "timestamp": "measured at (UTC)",
}


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #666; margin-top: 0; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.8em 0 1.5em; font-size: 0.88em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.skipped td { background: #fff8e1; } tr.error td, tr.wrong td { background: #fdecea; } tr.missing td { background: #f3f3f3; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; } code { background: #f4f4f4; padding: 0 0.2em; }
.scroll { overflow-x: auto; }
table.generations td { white-space: pre-wrap; min-width: 12em; max-width: 28em; }
"""


@dataclass(frozen=True)
class Report:
    html: Path
    figures: tuple[Path, ...]


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return "" if v is None else str(v)


def environment_table(env: dict) -> str:
    rows = [(label, _value(env[k])) for k, label in ENVIRONMENT_KEYS.items() if k in env]
    return tables.html_table(["", "value"], rows, "environment")


def baseline_table(env: dict) -> str:
    out = ""
    for key, title in (("baseline_settings", "Baseline compiler settings (the seed's)"),
                       ("tuning_settings", "Inductor tuning settings"),
                       ("torchao_tuning_settings", "torchao's recommended inductor settings")):  # written before 2026-12
        if env.get(key):
            out += f"<h3>{html.escape(title)}</h3>" + tables.baseline_html(env[key])
    return out


def results_table(rs: ResultSet) -> str:
    return tables.results_html(rs, columns.REPORT)


def reasons_table(rs: ResultSet) -> str:
    bad = [r for r in rs.rows if r.status != "ok"]
    if not bad:
        return "<p>Every cell was measured.</p>"
    return tables.results_html(ResultSet(tuple(bad)), ("model", "mode", "batch", "status", "note"), "reasons")


def runs_table(runs: dict[str, ResultSet]) -> str:
    """Which device and versions each compared run measured on."""
    def one(rs: ResultSet, field: str, env_key: str) -> str:
        seen = dict.fromkeys(getattr(r, field) for r in rs.rows if getattr(r, field))
        return ", ".join(seen) or _value(rs.environment.get(env_key))

    rows = [(label, one(rs, "device_name", "device_name"), one(rs, "torch_version", "torch"),
             one(rs, "torchao_version", "torchao"), one(rs, "dtype", "dtype")) for label, rs in runs.items()]
    return tables.html_table(["run", "device", "torch", "torchao", "dtype"], rows, "runs")


def differences_table(runs: dict[str, ResultSet]) -> str:
    df = runs_mod.compare_table(runs)
    status_cols = [c for c in df.columns if c.endswith(": status")]

    def show(v):
        if v is None or (isinstance(v, float) and v != v):  # NaN
            return ""
        if isinstance(v, float) and math.isinf(v):
            return columns.INFINITE if v > 0 else "-" + columns.INFINITE
        return format(v, ".4g") if isinstance(v, float) else str(v)

    rows = [[show(v) for v in rec] for rec in df.itertuples(index=False)]
    worst = ("missing", "error", "wrong", "skipped")  # a line takes the class of its worst cell
    classes = [next((w for w in worst if w in statuses), "")
               for statuses in (set(rec) for rec in df[status_cols].itertuples(index=False))]
    numeric = [c not in runs_mod.CELL and c not in status_cols and not c.endswith(": reason") for c in df.columns]
    return tables.html_table(list(df.columns), rows, "differences", classes, numeric)


def _figure(png: bytes, name: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure data-figure="{html.escape(name)}"><img src="data:image/png;base64,{data}" '
            f'alt="{html.escape(caption)}"><figcaption>{html.escape(caption)} (also saved as '
            f"<code>{html.escape(name)}</code>)</figcaption></figure>")


def build(paths: Sequence[str | Path], out: str | Path = "report.html", labels: Sequence[str] | None = None,
          dpi: int = 110) -> Report:
    """Write OUT (HTML) and its PNG figures beside it; several results folders are also compared."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out must name an .html file (got {out}); the PNG figures are written beside it")
    runs = runs_mod.load_runs(paths, labels)
    for label, rs in runs.items():
        if not len(rs):
            raise UserError(f"results {label!r} hold no rows: run a sweep into that folder first")
    try:
        return _write(runs, out, dpi)
    except OSError as e:
        raise UserError(f"cannot write the report to {out}: {e.strerror or e}; choose another --out file.") from None


def _write(runs: dict[str, ResultSet], out: Path, dpi: int) -> Report:
    out.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig, suffix: str, caption: str) -> str:
        name = f"{out.stem}-{suffix}.png"
        png = plots.to_png(fig, dpi)
        atomic_write(out.parent / name, png)
        written.append(out.parent / name)
        return _figure(png, name, caption)

    body = []
    sources = ", ".join(f"<b>{html.escape(label)}</b>" for label in runs)
    from ._version import __version__

    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    body.append(f"<h1>torchao_nb report</h1><p class=\"meta\">{sources} · written {now} by torchao_nb {__version__}</p>")
    if len(runs) > 1:
        body.append('<section id="comparison"><h2>Runs compared</h2>'
                    "<p>Cells are matched by model, mode and batch size; a folder holding several devices' rows "
                    "(a merged one) is one run per device. Speedups are against each run's own "
                    "unquantized baseline; differences are against the first run.</p>" + runs_table(runs))
        body.append(save(plots.compare(runs), "compare-speedup", "Speedup per mode, runs side by side"))
        body.append(save(plots.compare(runs, metric="median_ms"), "compare-latency", "Latency per mode, runs side by side"))
        body.append("<h3>Differences</h3>" + differences_table(runs) + "</section>")
    for i, (label, rs) in enumerate(runs.items(), 1):
        body.append(f'<section class="run" id="run-{i}"><h2>{html.escape(label)}</h2>')
        body.append(save(plots.dashboard(rs), f"{i}-{slug(label)}-dashboard", f"Dashboard of {label}"))
        body.append("<h3>Results</h3>" + results_table(rs)
                    + f'<p class="timing">{html.escape(columns.timing_note(rs))}</p>')
        texts = tables.generations_html(rs)
        if texts:
            body.append('<h3 id="generated-text">Generated text</h3><p>Greedy continuations of fixed prompts by the '
                        "unquantized model and each mode (the same number of new tokens, shown up to the end-of-text "
                        "token); the agreement column counts the tokens equal to the unquantized model's at the same "
                        "position.</p>" + texts)
        body.append("<h3>Cells without a timing (skipped, failed, wrong output)</h3>" + reasons_table(rs))
        body.append("<h3>Environment</h3>" + environment_table(rs.environment) + baseline_table(rs.environment))
        body.append("</section>")
    title = "torchao_nb report: " + ", ".join(runs)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
    atomic_write(out, page)
    return Report(out, tuple(written))
