"""Several results folders side by side: loading them under labels, and matching their cells in one table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import UserError
from .results import ResultSet, Row
from .spec import CELL


def load_runs(paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> dict[str, ResultSet]:
    """Several results folders (or files) → {label: ResultSet}; labels default to the folder names."""
    if not paths:
        raise UserError("give at least one results folder")
    if labels is not None and len(labels) != len(paths):
        raise UserError(f"got {len(labels)} labels for {len(paths)} results folders; give one label per folder")
    runs: dict[str, ResultSet] = {}
    for i, path in enumerate(paths):
        p = Path(path)
        try:
            if not p.exists():
                raise FileNotFoundError(p)
            rs = ResultSet.load(p)
        except FileNotFoundError:
            raise UserError(f"no results in {p}: expected a folder written by `python -m torchao_nb run --out {p}` "
                            "(results.json, rows.jsonl or results.csv), or one of those files") from None
        except ValueError as e:  # a file that isn't results
            raise UserError(str(e)) from None
        label = labels[i] if labels else (p.name if p.is_dir() else p.parent.name) or str(p)
        runs[_unique(label, runs)] = rs
    return split_devices(runs)


def _unique(label: str, taken) -> str:
    base, n = label, 2
    while label in taken:
        label, n = f"{base} ({n})", n + 1
    return label


def split_devices(runs: Mapping[str, ResultSet]) -> dict[str, ResultSet]:
    """A run holding rows of several devices (a merged folder) becomes one run per device, "<label> · <device>",
    each with its device's environment: the same cell on two GPUs is two runs to compare, never one collision."""
    out: dict[str, ResultSet] = {}
    for label, rs in runs.items():
        devices = list(dict.fromkeys(r.device_name for r in rs.rows))
        if len(devices) <= 1:
            out[_unique(label, out)] = rs
            continue
        envs = rs.environment.get("devices") or {}
        for dev in devices:
            env = dict(envs.get(dev) or rs.environment)
            part = ResultSet(tuple(r for r in rs.rows if r.device_name == dev), env)
            out[_unique(f"{label} · {dev or 'unknown device'}", out)] = part
    return out


def as_runs(runs: Mapping[str, ResultSet] | Sequence[ResultSet]) -> dict[str, ResultSet]:
    if isinstance(runs, Mapping):
        out = dict(runs)
    else:
        out = {f"run {i + 1}": rs for i, rs in enumerate(runs)}
    if len(out) < 1:
        raise UserError("nothing to compare: give at least one result set")
    return split_devices(out)


# How cells of different runs are matched (CellSpec.cell): runs are one device each (split_devices), so comparing
# a CPU folder with a GPU folder, or the two GPUs of a merged folder, lines up the same model, mode and batch.
def cells_of(runs: dict[str, ResultSet]) -> tuple[list[tuple], dict[str, dict[tuple, Row]]]:
    order: dict[tuple, None] = {}
    by_run: dict[str, dict[tuple, Row]] = {}
    for label, rs in runs.items():
        index: dict[tuple, Row] = {}
        for r in rs.rows:
            cell = r.spec.cell
            if cell in index:
                raise UserError(f"run {label!r} has several rows for {r.model}/{r.mode}/batch {r.batch_size} "
                                f"(different dtype or compile settings?); narrow it first, e.g. rs.where(dtype=...)")
            index[cell] = r
            order.setdefault(cell, None)
        by_run[label] = index
    from .drawing import registry_modes

    modes = registry_modes()
    rank = {m: i for i, m in enumerate(modes)}
    first = {c: i for i, c in enumerate(order)}
    # model and batch in order of appearance, modes in registry order
    ordered = sorted(order, key=lambda c: (first[next(k for k in order if k[0] == c[0])], c[2], rank.get(c[1], len(rank)), first[c]))
    return ordered, by_run


def compare_table(runs: Mapping[str, ResultSet] | Sequence[ResultSet]):
    """A DataFrame: one line per (model, mode, batch) cell, each run's numbers, and the differences to the first run."""
    import pandas as pd

    runs = as_runs(runs)
    cells, by_run = cells_of(runs)
    labels = list(runs)
    ref = labels[0]
    records = []
    for cell in cells:
        rec: dict[str, Any] = dict(zip(CELL, cell))
        for label in labels:
            r = by_run[label].get(cell)
            ok = r is not None and r.status == "ok"
            rec[f"{label}: status"] = r.status if r is not None else "missing"
            rec[f"{label}: median ms"] = r.median_ms if ok else None
            rec[f"{label}: speedup"] = r.speedup if ok else None
            rec[f"{label}: SQNR dB"] = r.sqnr_value if ok else None
            if not ok and r is not None:
                rec[f"{label}: reason"] = r.reason
        for label in labels[1:]:
            a, b = rec[f"{ref}: median ms"], rec[f"{label}: median ms"]
            rec[f"{label} / {ref} latency"] = b / a if a and b is not None else None
            sa, sb = rec[f"{ref}: speedup"], rec[f"{label}: speedup"]
            rec[f"{label} − {ref} speedup"] = sb - sa if sa is not None and sb is not None else None
            qa, qb = rec[f"{ref}: SQNR dB"], rec[f"{label}: SQNR dB"]
            both = qa is not None and qb is not None and math.isfinite(qa) and math.isfinite(qb)
            rec[f"{label} − {ref} SQNR dB"] = qb - qa if both else None
        records.append(rec)
    columns = list(CELL)
    for label in labels:
        columns += [f"{label}: {c}" for c in ("status", "median ms", "speedup", "SQNR dB", "reason")]
    for label in labels[1:]:
        columns += [f"{label} / {ref} latency", f"{label} − {ref} speedup", f"{label} − {ref} SQNR dB"]
    df = pd.DataFrame.from_records(records)
    return df.reindex(columns=[c for c in columns if c in df.columns])
