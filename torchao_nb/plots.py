"""Figures over a ResultSet: latency, speedup, accuracy vs speedup, batch scaling, memory, a dashboard, run comparison."""

from __future__ import annotations

import io
import math
import textwrap
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from matplotlib import transforms
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter

from .env import UserError
from .results import ResultSet, Row

# Registry order decides the colour, so a mode keeps its colour in every figure and every run.
# noquant (the A/A control) gets the neutral grey.
PALETTE = ["#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
# Modes no registry knows (a results file from another version) hash into these, still stable by name.
SPARE = ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363"]
RUN_HATCHES = ["", "///", "...", "\\\\\\", "ooo", "---"]  # one per run in comparisons; 'x' is kept for missing cells
GROUP_FIELDS = ("model", "device", "dtype", "compile", "batch_size")  # a bar group; the mode varies inside it
MISSING_STYLE = dict(facecolor="none", hatch="xx", linestyle="--", linewidth=0.8, alpha=0.45)
ACCURACY = {
    "sqnr_db": ("SQNR vs unquantized output (dB)", "SQNR (dB)"),
    "cosine": ("cosine similarity vs unquantized output", "cosine"),
}


def _registry_modes() -> list[str]:
    from . import recipes

    return list(recipes.RECIPES)


def mode_color(mode: str) -> str:
    """The colour of `mode` in every figure: by registry position, else by a stable hash of its name."""
    known = _registry_modes()
    if mode in known:
        return PALETTE[known.index(mode) % len(PALETTE)]
    return SPARE[zlib.crc32(mode.encode()) % len(SPARE)]


def mode_colors(modes: Sequence[str] | None = None) -> dict[str, str]:
    return {m: mode_color(m) for m in (modes if modes is not None else _registry_modes())}


# ---- shared helpers ---------------------------------------------------------------------------

def _check(results: ResultSet) -> ResultSet:
    if not isinstance(results, ResultSet):
        raise UserError(f"expected a torchao_nb ResultSet (from sweep() or ResultSet.load(folder)), got {type(results).__name__}")
    if not len(results):
        raise UserError("nothing to plot: the result set has no rows; run a sweep first")
    return results


def _modes(rows: Sequence[Row]) -> list[str]:
    """Modes present, registry order first, then unknown ones in the order they appear."""
    present = list(dict.fromkeys(r.mode for r in rows))
    known = [m for m in _registry_modes() if m in present]
    return known + [m for m in present if m not in known]


def _group_key(row: Row) -> tuple:
    return tuple(getattr(row, f) for f in GROUP_FIELDS)


def _groups(rows: Sequence[Row]) -> list[tuple[tuple, str]]:
    """Distinct bar groups in order of appearance, each labelled by only the fields that vary."""
    keys = list(dict.fromkeys(_group_key(r) for r in rows))
    varying = [i for i, _ in enumerate(GROUP_FIELDS) if len({k[i] for k in keys}) > 1]
    return [(k, _group_label(k, varying)) for k in keys]


def _group_label(key: tuple, varying: list[int]) -> str:
    parts = []
    for i in varying:
        name, value = GROUP_FIELDS[i], key[i]
        if name == "batch_size":
            parts.append(f"batch {value}")
        elif name == "compile":
            parts.append("compiled" if value else "eager")
        else:
            parts.append(str(value))
    return " · ".join(parts)


def _subject(rows: Sequence[Row]) -> str:
    """'mlp · cpu · bfloat16 · batch 1': what every title names."""
    def values(name):
        return ", ".join(str(v) for v in dict.fromkeys(getattr(r, name) for r in rows))

    text = f"{values('model')} · {values('device')} · {values('dtype')}"
    sizes = list(dict.fromkeys(r.batch_size for r in rows))
    if len(sizes) == 1:
        text += f" · batch {sizes[0]}"
    if all(not r.compile for r in rows):
        text += " · eager (no compile)"
    return text


def _short(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


class _Notes:
    """Numbered footnotes for skipped/error cells, numbered the same way in every figure of one result set.

    One footnote per (model, mode, status, reason): the batch sizes and runs it applies to are listed in it."""

    def __init__(self, results: ResultSet | None = None, prefix: str = ""):
        self._index: dict[tuple, int] = {}
        self._rows: list[Row] = []
        self._where: list[tuple[list, list]] = []  # (runs, batch sizes) per footnote
        if results is not None:
            for row in results.rows:
                if row.status != "ok":
                    self.number(row, prefix)

    def number(self, row: Row, prefix: str = "") -> int:
        key = (row.model, row.mode, row.status, row.reason)
        if key not in self._index:
            self._index[key] = len(self._rows) + 1
            self._rows.append(row)
            self._where.append(([], []))
        n = self._index[key]
        runs, sizes = self._where[n - 1]
        if prefix and prefix not in runs:
            runs.append(prefix)
        if row.batch_size not in sizes:
            sizes.append(row.batch_size)
        return n

    def lines(self, width: int | None = 160) -> list[str]:
        out = []
        for n, (row, (runs, sizes)) in enumerate(zip(self._rows, self._where), 1):
            where = f"{', '.join(runs)}: " if runs else ""
            reason = row.reason or "no reason recorded"
            batches = ", ".join(map(str, sizes))
            out.append(f"[{n}] {where}{row.mode} ({row.model}, batch {batches}) {row.status}: "
                       f"{_short(reason, width) if width else ' '.join(reason.split())}")
        return out


def _new_axes(ax: Axes | None, figsize=(8, 4.5)) -> tuple[Figure, Axes, bool]:
    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        return fig, fig.add_subplot(), True
    return ax.get_figure(root=True), ax, False


def _notes_legend(fig: Figure, ax: Axes, lines: list[str], own: bool, handles=None, labels=None) -> None:
    """Series legend plus the skipped/error reasons, below the axes, so the reason of every marked cell is on the figure."""
    handles, labels = list(handles or []), list(labels or [])
    if lines:
        handles += [Patch(edgecolor="0.4", **MISSING_STYLE)] + [Line2D([], [], linestyle="none")] * (len(lines) - 1)
        labels += ["\n".join(textwrap.wrap(line, 110)) for line in lines]
    if not handles:
        return
    kw = dict(fontsize=8, frameon=False, handlelength=1.6, alignment="left")
    if own:
        fig.legend(handles, labels, loc="outside lower center", **kw)
    else:
        ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.2), **kw)


def _mark_missing(ax: Axes, x0: float, x1: float, row: Row | None, color: str, note: int | None, gid_tail: str) -> None:
    """A cell that has no value: hatched full-height span, ✗ and its status, never just a gap."""
    status = row.status if row is not None else "missing"
    span = ax.axvspan(x0, x1, edgecolor=color, **MISSING_STYLE)
    span.set_gid(f"{status}|{gid_tail}")
    label = f"✗ {status}" + (f" [{note}]" if note else "")
    ax.text((x0 + x1) / 2, 0.03, label, rotation=90, ha="center", va="bottom", fontsize=8, color="0.25",
            transform=transforms.blended_transform_factory(ax.transData, ax.transAxes), gid=f"label|{status}|{gid_tail}")


@dataclass(frozen=True)
class _Series:
    label: str  # legend text
    field: str  # Row attribute drawn as the bar height
    scale: float = 1.0  # multiply (bytes → MB)
    err: str | None = None  # Row attribute drawn as the full length of the error bar (IQR)
    hatch: str = ""
    alpha: float = 1.0
    timed: bool = True  # a measured time (or ratio of times): a noisy row is outlined


def _value(row: Row | None, series: _Series) -> float | None:
    if row is None or row.status != "ok":
        return None
    v = getattr(row, series.field)
    return None if v is None else v * series.scale


def _grouped_bars(ax: Axes, groups: list[tuple[str, list[tuple[str, list[Row | None]]]]], series: list[_Series],
                  notes: _Notes, fmt: str | None, prefixes: Sequence[str] | None = None, refs=None) -> list[float]:
    """Draw bars: groups → modes → one bar per series; returns the heights drawn.

    groups: [(group label, [(mode, [row for series 0, row for series 1, ...])])]
    refs: optional (group label) -> [(value, label, linestyle)] reference lines across a group.
    """
    width = 0.84 / len(series)
    x = 0.0
    ticks, tick_labels, heights, spans = [], [], [], []
    for glabel, cells in groups:
        start = x
        for mode, rows in cells:
            color = mode_color(mode)
            for j, (s, row) in enumerate(zip(series, rows)):
                left = x - 0.42 + j * width
                tail = f"{s.field}|{mode}|{glabel}|{s.label}"
                v = _value(row, s)
                if v is None:
                    if row is not None and row.status == "ok":  # ran, but this metric wasn't measured
                        ax.text(left + width / 2, 0.03, "n/a", rotation=90, ha="center", va="bottom", fontsize=8,
                                transform=transforms.blended_transform_factory(ax.transData, ax.transAxes))
                        continue
                    if j and rows[j - 1] is row:
                        continue  # the same missing cell as the previous series: one mark covers both
                    k = j
                    while k + 1 < len(rows) and rows[k + 1] is row:
                        k += 1
                    prefix = prefixes[j] if prefixes else ""
                    note = notes.number(row, prefix) if row is not None else None
                    _mark_missing(ax, left, left + (k - j + 1) * width, row, color, note, tail)
                    continue
                err = None
                if s.err and getattr(row, s.err) is not None:
                    half = getattr(row, s.err) * s.scale / 2
                    err = [[min(half, v)], [half]]  # a latency can't go below 0
                edge = dict(edgecolor="white" if not s.hatch else "0.2", linewidth=0.5)
                if row.noisy and s.timed:  # a spread-out measurement: outlined, so nobody reads too much into it
                    edge = dict(edgecolor="black", linewidth=1.2, linestyle="--")
                bars = ax.bar(left + width / 2, v, width * 0.95, color=color, hatch=s.hatch, alpha=s.alpha, yerr=err,
                              error_kw=dict(ecolor="0.2", capsize=3, linewidth=1), gid=f"bar|{tail}", **edge)
                heights.append(v)
                if fmt:
                    ax.bar_label(bars, [fmt.format(v)], padding=2, fontsize=7.5, rotation=90 if len(series) > 2 else 0)
            ticks.append(x)
            tick_labels.append(mode)
            x += 1
        spans.append((start - 0.5, x - 0.5, glabel))
        x += 0.5  # a gap between groups
    ax.set_xticks(ticks, tick_labels, rotation=30, ha="right", rotation_mode="anchor")
    ax.set_xlim(-0.6, max(x - 0.9, 0.6))
    blend = transforms.blended_transform_factory(ax.transData, ax.transAxes)
    for i, (a, b, glabel) in enumerate(spans):
        if i:
            ax.axvline(a - 0.25, color="0.6", linewidth=0.8)
        if len(spans) > 1:
            ax.text((a + b) / 2, 0.985, glabel, transform=blend, ha="center", va="top", fontsize=9, fontweight="bold")
        for value, label, style in (refs(glabel) if refs else []):
            ax.hlines(value, a, b, colors="0.15", linestyles=style, linewidth=1, label=label, gid=f"ref|{label}|{glabel}")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    # Room above the bars for value labels and group names (bars stick to 0, so only the top grows).
    ax.margins(y=(0.12 if fmt else 0.05) + (0.1 if len(spans) > 1 else 0))
    return heights


def _decades(ax: Axes) -> float:
    lo, hi = ax.dataLim.intervaly
    return math.log10(hi / lo) if lo > 0 and hi > 0 else 0.0


def _single_run_groups(results: ResultSet) -> list[tuple[str, list[tuple[str, Row]]]]:
    modes = _modes(results.rows)
    index = {(_group_key(r), r.mode): r for r in results.rows}
    out = []
    for gkey, glabel in _groups(results.rows):
        out.append((glabel, [(m, index[(gkey, m)]) for m in modes if (gkey, m) in index]))
    return out


def _bars_for(results: ResultSet, series: list[_Series]):
    return [(g, [(m, [row] * len(series)) for m, row in cells]) for g, cells in _single_run_groups(results)]


def _series_legend(series: list[_Series], rows: Sequence[Row] = ()) -> tuple[list, list[str]]:
    handles, labels = [], []
    if len(series) > 1:
        handles = [Patch(facecolor="0.55", hatch=s.hatch, alpha=s.alpha, edgecolor="0.2") for s in series]
        labels = [s.label for s in series]
    if any(s.timed for s in series) and any(r.noisy for r in rows if r.status == "ok"):
        handles.append(Patch(facecolor="white", edgecolor="black", linewidth=1.2, linestyle="--"))
        labels.append("dashed outline: noisy (IQR > 10% of the median)")
    return handles, labels


def _log_if_wide(ax: Axes, values: Sequence[float], ratio: float = 30.0) -> None:
    """A log axis when the bars span more than `ratio`×, so the short ones stay visible."""
    positive = [v for v in values if v and v > 0]
    if positive and max(positive) / min(positive) > ratio:
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(NullFormatter())


# ---- the figures ------------------------------------------------------------------------------

def latency(results: ResultSet, ax: Axes | None = None, notes: bool = True) -> Figure:
    """Median latency per mode with IQR error bars, grouped by batch size; reference lines for the unquantized model."""
    rs = _check(results)
    fig, ax, own = _new_axes(ax)
    series = [_Series("median latency", "median_ms", err="iqr_ms")]
    ref_rows = {glabel: next((r for _, r in cells if r.eager_ms is not None), None) for glabel, cells in _single_run_groups(rs)}

    def refs(glabel):
        r = ref_rows.get(glabel)
        if r is None:
            return []
        lines = [(r.eager_ms, "unquantized, eager", ":")]
        if r.compile and r.baseline_ms is not None:
            lines.insert(0, (r.baseline_ms, "unquantized, compiled (baseline)", "--"))
        return lines

    nt = _Notes(rs)
    heights = _grouped_bars(ax, _bars_for(rs, series), series, nt, None, refs=refs)
    _log_if_wide(ax, heights + [v for r in ref_rows.values() if r for v in (r.eager_ms, r.baseline_ms) if v])
    ax.set_ylabel("latency per call (ms" + (", log scale)" if ax.get_yscale() == "log" else ")"))
    ax.set_title(f"Latency per mode (median, error bar = IQR)\n{_subject(rs.rows)}", fontsize=10)
    h, l = ax.get_legend_handles_labels()
    seen = dict(zip(l, h))
    nh, nl = _series_legend(series, rs.rows)
    _notes_legend(fig, ax, nt.lines() if notes else [], own, list(seen.values()) + nh, list(seen) + nl)
    return fig


def _speedup_series(rows: Sequence[Row]) -> list[_Series]:
    if all(not r.compile for r in rows):
        return [_Series("vs eager unquantized (compile off)", "speedup")]
    return [_Series("vs compiled unquantized baseline", "speedup"),
            _Series("vs eager unquantized", "speedup_vs_eager", hatch="///", alpha=0.55)]


def speedup(results: ResultSet, ax: Axes | None = None, notes: bool = True) -> Figure:
    """Speedup per mode against the compiled baseline and against eager, each bar labelled, with a 1.0× line."""
    rs = _check(results)
    fig, ax, own = _new_axes(ax)
    series = _speedup_series(rs.rows)
    nt = _Notes(rs)
    _grouped_bars(ax, _bars_for(rs, series), series, nt, "{:.2f}×")
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--", gid="one")
    ax.set_ylabel("speedup (×)")
    ax.set_title(f"Speedup per mode (1.0× = as fast as the unquantized model)\n{_subject(rs.rows)}", fontsize=10)
    _notes_legend(fig, ax, nt.lines() if notes else [], own, *_series_legend(series, rs.rows))
    return fig


def memory(results: ResultSet, ax: Axes | None = None, notes: bool = True) -> Figure:
    """Weight size and peak memory per mode (MB)."""
    rs = _check(results)
    fig, ax, own = _new_axes(ax)
    cuda = any(r.device.startswith("cuda") for r in rs.rows)
    series = [_Series("weights", "weight_bytes", scale=1e-6, timed=False)]
    if any(r.peak_mem_bytes for r in rs.rows if r.status == "ok"):  # CPU RSS growth is often 0: nothing to show
        peak = "peak allocated (CUDA)" if cuda else "peak RSS growth while timing"
        series.append(_Series(peak, "peak_mem_bytes", scale=1e-6, hatch="///", alpha=0.55, timed=False))
    nt = _Notes(rs)
    _grouped_bars(ax, _bars_for(rs, series), series, nt, "{:.1f}")
    ax.set_ylabel("size (MB)")
    what = "Weight size and peak memory" if len(series) > 1 else "Weight size"
    ax.set_title(f"{what} per mode\n{_subject(rs.rows)}", fontsize=10)
    _notes_legend(fig, ax, nt.lines() if notes else [], own, *_series_legend(series, rs.rows))
    return fig


def _accuracy(row: Row, metric: str) -> float | None:
    value = getattr(row, metric)
    if value is None and metric == "sqnr_db" and row.cosine is not None:
        return math.inf  # measure.accuracy leaves SQNR empty when the outputs are identical
    return value


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (higher is better on both), by x."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


def accuracy_vs_speedup(results: ResultSet, ax: Axes | None = None, notes: bool = True, metric: str = "sqnr_db") -> Figure:
    """Accuracy (SQNR or cosine) against speedup, one point per cell, the Pareto front marked."""
    if metric not in ACCURACY:
        raise UserError(f"unknown accuracy metric {metric!r}; choose one of: {', '.join(ACCURACY)}")
    rs = _check(results)
    fig, ax, own = _new_axes(ax)
    nt = _Notes(rs)
    groups = _groups(rs.rows)
    markers = ["o", "s", "D", "v", "P", "X", "*"]
    plotted = [(r, r.speedup, _accuracy(r, metric)) for r in rs.rows
               if r.status == "ok" and r.speedup is not None and _accuracy(r, metric) is not None]
    finite = [a for _, _, a in plotted if math.isfinite(a)]
    top = (max(finite) + max(3.0, 0.12 * (max(finite) - min(finite)))) if finite else 1.0  # where "identical" sits
    handles: dict[str, Any] = {}
    several = len(groups) > 1
    for gi, (gkey, glabel) in enumerate(groups):
        pts = [(r, s, a) for r, s, a in plotted if _group_key(r) == gkey]
        if not pts:
            continue
        marker, style = markers[gi % len(markers)], ["--", ":", "-."][gi % 3]
        if several:  # marker shape tells the groups apart; colour stays the mode's
            handles[glabel] = Line2D([], [], marker=marker, color="0.5", markeredgecolor="black", linestyle="none")
        xy = [(s, top if math.isinf(a) else a) for _, s, a in pts]
        for (r, s, a), (x, y) in zip(pts, xy):
            ax.scatter([x], [y], s=60, color=mode_color(r.mode), marker="^" if math.isinf(a) else marker,
                       edgecolor="black", linewidth=0.6, zorder=3, gid=f"point|{r.mode}|{glabel}")
            ax.annotate(r.mode + (" (identical)" if math.isinf(a) else ""), (x, y), xytext=(5, 4),
                        textcoords="offset points", fontsize=8)
        front = pareto_front(xy)
        if len(front) > 1:
            fx, fy = zip(*(xy[i] for i in front))
            line, = ax.plot(fx, fy, color="0.3", linestyle=style, linewidth=1, zorder=2, gid=f"pareto|{glabel}")
            handles["Pareto front" + (f" ({glabel})" if several else "")] = line
        ax.scatter([xy[i][0] for i in front], [xy[i][1] for i in front], s=170, facecolor="none", edgecolor="0.2",
                   linewidth=1.2, zorder=2, gid=f"pareto-points|{glabel}")
    ax.axvline(1.0, color="black", linewidth=1, linestyle=":")
    if any(math.isinf(a) for _, _, a in plotted):
        ax.axhline(top, color="0.7", linewidth=0.8, linestyle=":")
    # Cells with no point are listed in the legend (✗, the mode's colour, the footnote number): seen, never dropped.
    shown = {p[0] for p in plotted}
    for r in rs.rows:
        if r in shown:
            continue
        tag = f"{r.status} [{nt.number(r)}]" if r.status != "ok" else f"no {'speedup' if r.speedup is None else 'accuracy'}"
        label = f"✗ {r.mode}: {tag}"
        if label not in handles:
            handles[label] = Line2D([], [], marker="x", mew=2, color=mode_color(r.mode), linestyle="none",
                                    gid=f"{r.status}|{r.mode}")
    ax.set_xlabel("speedup vs compiled unquantized baseline (×)")
    ax.set_ylabel(ACCURACY[metric][0])
    ax.set_title(f"Accuracy vs speedup (up and right is better)\n{_subject(rs.rows)}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.12)
    if handles:
        ax.add_artist(ax.legend(list(handles.values()), list(handles), fontsize=8, loc="best"))
    _notes_legend(fig, ax, nt.lines() if notes else [], own)
    return fig


SCALING = {
    "speedup": ("speedup vs baseline (×)", 1.0),
    "median_ms": ("latency per call (ms)", None),
    "per_sample_ms": ("latency per sample (ms)", None),
}


def batch_scaling(results: ResultSet, ax: Axes | None = None, notes: bool = True, metric: str = "speedup") -> Figure:
    """Speedup (or latency) against batch size, one line per mode; skipped/error cells marked ✗ on the axis."""
    if metric not in SCALING:
        raise UserError(f"unknown batch-scaling metric {metric!r}; choose one of: {', '.join(SCALING)}")
    rs = _check(results)
    fig, ax, own = _new_axes(ax)
    nt = _Notes(rs)
    line_fields = GROUP_FIELDS[:-1]  # one line per (model, device, dtype, compile); batch is the x axis
    lines = list(dict.fromkeys(tuple(getattr(r, f) for f in line_fields) for r in rs.rows))
    varying = [i for i in range(len(line_fields)) if len({k[i] for k in lines}) > 1]
    styles = ["-", "--", ":", "-."]
    bottom = transforms.blended_transform_factory(ax.transData, ax.transAxes)

    def value(r):
        if metric == "per_sample_ms":
            return None if r.median_ms is None else r.median_ms / r.batch_size
        return getattr(r, metric)

    missing: list[Row] = []
    for li, lkey in enumerate(lines):
        for mode in _modes(rs.rows):
            rows = sorted((r for r in rs.rows if r.mode == mode and tuple(getattr(r, f) for f in line_fields) == lkey),
                          key=lambda r: r.batch_size)
            ok = [(r.batch_size, value(r)) for r in rows if r.status == "ok" and value(r) is not None]
            label = mode if len(lines) == 1 else f"{mode} · {_group_label(lkey, varying)}"
            if ok:
                ax.plot(*zip(*ok), marker="o", color=mode_color(mode), linestyle=styles[li % len(styles)], label=label,
                        gid=f"line|{mode}|{li}")
            missing.extend(r for r in rows if r.status != "ok")
    # ✗ on the x axis for each cell with no value, spread sideways when several share a batch size.
    for size in sorted({r.batch_size for r in missing}):
        here = [r for r in missing if r.batch_size == size]
        for k, r in enumerate(here):
            x = size * 2 ** (0.06 * (k - (len(here) - 1) / 2))
            ax.plot([x], [0.03], marker="x", markersize=8, mew=2, color=mode_color(r.mode), transform=bottom,
                    linestyle="none", clip_on=False, gid=f"{r.status}|{r.mode}|batch {r.batch_size}")
        numbers = ",".join(str(nt.number(r)) for r in here)
        ax.annotate(f"✗ [{numbers}]", (size * 2 ** (0.06 * len(here) / 2), 0.03), xycoords=bottom, xytext=(4, 0),
                    textcoords="offset points", fontsize=7.5, color="0.3", va="center")
    sizes = sorted({r.batch_size for r in rs.rows})
    if len(sizes) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    ylabel, one = SCALING[metric]
    if one is not None:
        ax.axhline(one, color="black", linewidth=1, linestyle="--")
    if metric != "speedup":
        ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel(ylabel)
    ax.set_title(f"Batch-size scaling (✗ on the axis = skipped or error)\n{_subject(rs.rows)}", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.add_artist(ax.legend(fontsize=8, loc="best"))  # kept when the notes legend is added below
    _notes_legend(fig, ax, nt.lines() if notes else [], own)
    return fig


# ---- the dashboard ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Panel:
    """One dashboard panel: draw(results, ax) fills the axes; applies(results) says whether it has anything to show."""

    name: str
    draw: Callable[[ResultSet, Axes], Any]
    applies: Callable[[ResultSet], bool] = lambda rs: True
    wide: bool = False  # takes a whole dashboard row


PANELS: dict[str, Panel] = {}


def register_panel(panel: Panel) -> Panel:
    if panel.name in PANELS:
        raise ValueError(f"dashboard panel {panel.name!r} is already registered")
    PANELS[panel.name] = panel
    return panel


def _has(field: str) -> Callable[[ResultSet], bool]:
    return lambda rs: any(r.status == "ok" and getattr(r, field) is not None for r in rs.rows)


register_panel(Panel("speedup", lambda rs, ax: speedup(rs, ax, notes=False)))
register_panel(Panel("latency", lambda rs, ax: latency(rs, ax, notes=False)))
register_panel(Panel("accuracy", lambda rs, ax: accuracy_vs_speedup(rs, ax, notes=False),
                     lambda rs: any(r.status == "ok" and r.speedup is not None and r.cosine is not None for r in rs.rows)))
register_panel(Panel("memory", lambda rs, ax: memory(rs, ax, notes=False), _has("weight_bytes")))
register_panel(Panel("batch_scaling", lambda rs, ax: batch_scaling(rs, ax, notes=False),
                     lambda rs: len({r.batch_size for r in rs.rows}) > 1))

AUTOQUANT_KEY = "autoquant"  # Row.extra key of torchao_nb.autoquant's per-layer decision table


def _autoquant_rows(rs: ResultSet) -> list[Row]:
    return [r for r in rs.rows if r.status == "ok" and AUTOQUANT_KEY in r.extra_dict]


def _draw_autoquant(rs: ResultSet, ax: Axes) -> None:
    from . import autoquant  # only reached when a row carries the table, i.e. when autoquant made it

    rows = _autoquant_rows(rs)
    autoquant.plot_choices(rows[-1], ax=ax)
    if len(rows) > 1:
        ax.set_title(f"{ax.get_title()}\n(the last of {len(rows)} autoquant rows; all of them: autoquant.decision_table)",
                     fontsize=9)


register_panel(Panel("autoquant", _draw_autoquant, lambda rs: bool(_autoquant_rows(rs)), wide=True))


def _headline(rs: ResultSet) -> str:
    env = rs.environment or {}
    device = ", ".join(dict.fromkeys(r.device for r in rs.rows))
    parts = [f"torchao_nb · {', '.join(dict.fromkeys(r.model for r in rs.rows))} on {device}"]
    if env.get("device_name"):
        parts[0] += f" ({env['device_name']})"
    parts.append(", ".join(dict.fromkeys(r.dtype for r in rs.rows)))
    if env.get("torch"):
        parts.append(f"torch {env['torch']}, torchao {env.get('torchao')}")
    if env.get("threads"):
        parts.append(f"{env['threads']} thread" + ("s" if env["threads"] != 1 else ""))
    parts.append("compiled" if any(r.compile for r in rs.rows) else "eager")
    return " · ".join(parts)


def dashboard(results: ResultSet, panels: Sequence[str] | None = None) -> Figure:
    """The main figures of one result set on one Figure, with every skipped/error reason underneath."""
    rs = _check(results)
    if panels is None:
        chosen = [p for p in PANELS.values() if p.applies(rs)]
    else:
        unknown = [n for n in panels if n not in PANELS]
        if unknown:
            raise UserError(f"unknown dashboard panel(s) {', '.join(unknown)}; valid: {', '.join(PANELS)}")
        chosen = [PANELS[n] for n in panels]
    lines = _Notes(rs).lines(width=None)
    wrapped = [textwrap.fill(line, 170, subsequent_indent="     ") for line in lines]
    note_rows = sum(w.count("\n") + 1 for w in wrapped)
    # Lay panels out two per row; a wide panel, or an odd one out, takes the whole row.
    slots: list[list[Panel]] = []
    for p in chosen:
        if p.wide or not slots or len(slots[-1]) == 2 or slots[-1][0].wide:
            slots.append([p])
        else:
            slots[-1].append(p)
    notes_h = 0.3 + 0.17 * note_rows if lines else 0
    fig = Figure(figsize=(15, 4.9 * len(slots) + notes_h + 0.4), layout="constrained")
    grid = fig.add_gridspec(len(slots) + (1 if lines else 0), 2,
                            height_ratios=[4.9] * len(slots) + ([notes_h] if lines else []))
    for i, row in enumerate(slots):
        for j, p in enumerate(row):
            ax = fig.add_subplot(grid[i, :] if len(row) == 1 else grid[i, j])
            p.draw(rs, ax)
            ax.set_gid(f"panel|{p.name}")
    fig.set_layout_engine("constrained")  # in case a panel's code switched it (tight_layout)
    if lines:
        nax = fig.add_subplot(grid[-1, :])
        nax.axis("off")
        nax.set_gid("panel|notes")
        nax.text(0, 1, "Not measured (✗):\n" + "\n".join(wrapped), va="top", ha="left", fontsize=8.5,
                 transform=nax.transAxes, family="DejaVu Sans", gid="notes")
    fig.suptitle(_headline(rs), fontsize=12, fontweight="bold")
    return fig


# ---- comparing runs ---------------------------------------------------------------------------

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
        base, n = label, 2
        while label in runs:
            label, n = f"{base} ({n})", n + 1
        runs[label] = rs
    return runs


def _as_runs(runs: Mapping[str, ResultSet] | Sequence[ResultSet]) -> dict[str, ResultSet]:
    if isinstance(runs, Mapping):
        out = dict(runs)
    else:
        out = {f"run {i + 1}": rs for i, rs in enumerate(runs)}
    if len(out) < 1:
        raise UserError("nothing to compare: give at least one result set")
    return out


CELL = ("model", "mode", "batch_size")  # how cells of different runs are matched


def _cells(runs: dict[str, ResultSet]) -> tuple[list[tuple], dict[str, dict[tuple, Row]]]:
    order: dict[tuple, None] = {}
    by_run: dict[str, dict[tuple, Row]] = {}
    for label, rs in runs.items():
        index: dict[tuple, Row] = {}
        for r in rs.rows:
            cell = (r.model, r.mode, r.batch_size)
            if cell in index:
                raise UserError(f"run {label!r} has several rows for {r.model}/{r.mode}/batch {r.batch_size} "
                                f"(different dtype or compile settings?); narrow it first, e.g. rs.where(dtype=...)")
            index[cell] = r
            order.setdefault(cell, None)
        by_run[label] = index
    modes = _registry_modes()
    rank = {m: i for i, m in enumerate(modes)}
    first = {c: i for i, c in enumerate(order)}
    # model and batch in order of appearance, modes in registry order
    cells = sorted(order, key=lambda c: (first[next(k for k in order if k[0] == c[0])], c[2], rank.get(c[1], len(rank)), first[c]))
    return cells, by_run


def compare_table(runs: Mapping[str, ResultSet] | Sequence[ResultSet]):
    """A DataFrame: one line per (model, mode, batch) cell, each run's numbers, and the differences to the first run."""
    import pandas as pd

    runs = _as_runs(runs)
    cells, by_run = _cells(runs)
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
            rec[f"{label}: SQNR dB"] = (math.inf if _accuracy(r, "sqnr_db") == math.inf else r.sqnr_db) if ok else None
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


COMPARE = {
    "speedup": ("speedup vs own baseline (×)", "{:.2f}×", 1.0, "speedup"),
    "median_ms": ("latency per call (ms, log scale)", "{:.3g}", 1e-3, "median_ms"),
}


def compare(runs: Mapping[str, ResultSet] | Sequence[ResultSet], ax: Axes | None = None, notes: bool = True,
            metric: str = "speedup") -> Figure:
    """Matched cells of several runs side by side: bars coloured by mode, one hatch per run."""
    if metric not in COMPARE:
        raise UserError(f"unknown comparison metric {metric!r}; choose one of: {', '.join(COMPARE)}")
    runs = _as_runs(runs)
    for label, rs in runs.items():
        if not len(rs):
            raise UserError(f"run {label!r} has no rows: nothing to compare")
    ylabel, fmt, _, field = COMPARE[metric]
    cells, by_run = _cells(runs)
    labels = list(runs)
    series = [_Series(label, field, hatch=RUN_HATCHES[i % len(RUN_HATCHES)], alpha=1.0 if i == 0 else 0.75)
              for i, label in enumerate(labels)]
    fig, ax, own = _new_axes(ax, figsize=(max(8, 1.1 * len(cells) * len(labels) ** 0.5), 4.8))
    groups: list[tuple[str, list]] = []
    gkeys = list(dict.fromkeys((c[0], c[2]) for c in cells))
    multi_model = len({g[0] for g in gkeys}) > 1
    for model, batch in gkeys:
        glabel = (f"{model} · " if multi_model else "") + f"batch {batch}"
        groups.append((glabel, [(c[1], [by_run[l].get(c) for l in labels]) for c in cells if (c[0], c[2]) == (model, batch)]))
    nt = _Notes()
    for label in labels:
        for r in runs[label].rows:
            if r.status != "ok":
                nt.number(r, label)
    _grouped_bars(ax, groups, series, nt, fmt, prefixes=labels)
    if metric == "speedup":
        ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
    else:
        ax.set_yscale("log")
        ax.margins(y=0.15)
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain if _decades(ax) < 2 else NullFormatter())
    ax.set_ylabel(ylabel)
    devices = " vs ".join(f"{l} ({', '.join(dict.fromkeys(f'{r.device} {r.dtype}' for r in runs[l].rows))})" for l in labels)
    models = ", ".join(dict.fromkeys(c[0] for c in cells))
    ax.set_title(f"Runs compared: {'speedup' if metric == 'speedup' else 'latency'} per mode\n{models} · {devices}", fontsize=10)
    handles = [Patch(facecolor="0.6", hatch=s.hatch, alpha=s.alpha, edgecolor="0.2") for s in series]
    _notes_legend(fig, ax, nt.lines() if notes else [], own, handles, labels)
    return fig


# ---- files --------------------------------------------------------------------------------------

def to_png(fig: Figure, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


def to_svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", facecolor="white")
    return buf.getvalue()


FIGURES: dict[str, Callable[..., Figure]] = {
    "speedup": speedup,
    "latency": latency,
    "accuracy": accuracy_vs_speedup,
    "memory": memory,
    "batch_scaling": batch_scaling,
}
