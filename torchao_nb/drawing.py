"""Drawing pieces every figure shares: one colour per mode, grouped bars, ✗ marks and numbered notes for missing cells."""

from __future__ import annotations

import io
import math
import textwrap
import zlib
from dataclasses import dataclass
from typing import Sequence

from matplotlib import transforms
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter

from .errors import UserError
from .results import ResultSet, Row

# Registry order decides the colour, so a mode keeps its colour in every figure and every run.
# noquant (the A/A control) gets the neutral grey.
# tab10, then tab20's light shades: one colour each for the 14 registered modes, and room for two more.
PALETTE = ["#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
           "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94"]
# Modes no registry knows (a results file from another version) hash into these, still stable by name.
SPARE = ["#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1", "#636363"]
RUN_HATCHES = ["", "///", "...", "\\\\\\", "ooo", "---"]  # one per run in comparisons; 'x' is kept for missing cells
GROUP_FIELDS = ("model", "device", "dtype", "compile", "batch_size")  # a bar group; the mode varies inside it
MISSING_STYLE = dict(facecolor="none", hatch="xx", linestyle="--", linewidth=0.8, alpha=0.45)

def registry_modes() -> list[str]:
    from . import autoquant  # noqa: F401  (registers the autoquant mode, so it keeps its colour)
    from . import modes

    return list(modes.MODES)


def mode_color(mode: str) -> str:
    """The colour of `mode` in every figure: by registry position, else by a stable hash of its name."""
    known = registry_modes()
    if mode in known:
        return PALETTE[known.index(mode) % len(PALETTE)]
    return SPARE[zlib.crc32(mode.encode()) % len(SPARE)]

# ---- shared helpers ---------------------------------------------------------------------------

def check(results: ResultSet) -> ResultSet:
    if not isinstance(results, ResultSet):
        raise UserError(f"expected a torchao_nb ResultSet (from sweep() or ResultSet.load(folder)), got {type(results).__name__}")
    if not len(results):
        raise UserError("nothing to plot: the result set has no rows; run a sweep first")
    return results


def modes_present(rows: Sequence[Row]) -> list[str]:
    """Modes present, registry order first, then unknown ones in the order they appear."""
    present = list(dict.fromkeys(r.mode for r in rows))
    known = [m for m in registry_modes() if m in present]
    return known + [m for m in present if m not in known]


def group_key(row: Row) -> tuple:
    return tuple(getattr(row, f) for f in GROUP_FIELDS)


def groups(rows: Sequence[Row]) -> list[tuple[tuple, str]]:
    """Distinct bar groups in order of appearance, each labelled by only the fields that vary."""
    keys = list(dict.fromkeys(group_key(r) for r in rows))
    varying = [i for i, _ in enumerate(GROUP_FIELDS) if len({k[i] for k in keys}) > 1]
    return [(k, group_label(k, varying)) for k in keys]


def group_label(key: tuple, varying: list[int]) -> str:
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


def subject(rows: Sequence[Row]) -> str:
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


def short(text: str, width: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


class Notes:
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
                       f"{short(reason, width) if width else ' '.join(reason.split())}")
        return out


def new_axes(ax: Axes | None, figsize=(8, 4.5)) -> tuple[Figure, Axes, bool]:
    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        return fig, fig.add_subplot(), True
    return ax.get_figure(root=True), ax, False


def notes_legend(fig: Figure, ax: Axes, lines: list[str], own: bool, handles=None, labels=None) -> None:
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


def mark_missing(ax: Axes, x0: float, x1: float, row: Row | None, color: str, note: int | None, gid_tail: str) -> None:
    """A cell that has no value: hatched full-height span, ✗ and its status, never just a gap."""
    status = row.status if row is not None else "missing"
    span = ax.axvspan(x0, x1, edgecolor=color, **MISSING_STYLE)
    span.set_gid(f"{status}|{gid_tail}")
    label = f"✗ {status}" + (f" [{note}]" if note else "")
    ax.text((x0 + x1) / 2, 0.03, label, rotation=90, ha="center", va="bottom", fontsize=8, color="0.25",
            transform=transforms.blended_transform_factory(ax.transData, ax.transAxes), gid=f"label|{status}|{gid_tail}")


@dataclass(frozen=True)
class Series:
    label: str  # legend text
    field: str  # Row attribute drawn as the bar height
    scale: float = 1.0  # multiply (bytes → MB)
    err: str | None = None  # Row attribute drawn as the full length of the error bar (IQR)
    interval: tuple[str, str] | None = None  # Row attributes of an interval drawn as the error bar (95 % CI)
    hatch: str = ""
    alpha: float = 1.0
    timed: bool = True  # a measured time (or ratio of times): a noisy row is outlined
    unmeasured: str = "n/a"  # what an ok row without this metric shows (Row -> text, or a fixed text)


def bar_value(row: Row | None, series: Series) -> float | None:
    if row is None or row.status != "ok":
        return None
    v = getattr(row, series.field)
    return None if v is None else v * series.scale


def grouped_bars(ax: Axes, groups: list[tuple[str, list[tuple[str, list[Row | None]]]]], series: list[Series],
                  notes: Notes, fmt: str | None, prefixes: Sequence[str] | None = None, refs=None) -> list[float]:
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
                v = bar_value(row, s)
                if v is None:
                    if row is not None and row.status == "ok":  # ran, but this metric wasn't measured
                        why = "in cache" if s.field == "roofline_pct" and row.fits_in_cache else s.unmeasured
                        ax.text(left + width / 2, 0.03, why, rotation=90, ha="center", va="bottom", fontsize=8,
                                transform=transforms.blended_transform_factory(ax.transData, ax.transAxes))
                        continue
                    if j and rows[j - 1] is row:
                        continue  # the same missing cell as the previous series: one mark covers both
                    k = j
                    while k + 1 < len(rows) and rows[k + 1] is row:
                        k += 1
                    prefix = prefixes[j] if prefixes else ""
                    note = notes.number(row, prefix) if row is not None else None
                    mark_missing(ax, left, left + (k - j + 1) * width, row, color, note, tail)
                    continue
                err = None
                if s.err and getattr(row, s.err) is not None:
                    half = getattr(row, s.err) * s.scale / 2
                    err = [[min(half, v)], [half]]  # a latency can't go below 0
                lo, hi = (getattr(row, a) for a in s.interval) if s.interval else (None, None)
                if lo is not None and hi is not None:
                    err = [[max(0.0, v - lo * s.scale)], [max(0.0, hi * s.scale - v)]]
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


def decades(ax: Axes) -> float:
    lo, hi = ax.dataLim.intervaly
    return math.log10(hi / lo) if lo > 0 and hi > 0 else 0.0


def single_run_groups(results: ResultSet) -> list[tuple[str, list[tuple[str, Row]]]]:
    modes = modes_present(results.rows)
    index = {(group_key(r), r.mode): r for r in results.rows}
    out = []
    for gkey, glabel in groups(results.rows):
        out.append((glabel, [(m, index[(gkey, m)]) for m in modes if (gkey, m) in index]))
    return out


def bars_for(results: ResultSet, series: list[Series]):
    return [(g, [(m, [row] * len(series)) for m, row in cells]) for g, cells in single_run_groups(results)]


def series_legend(series: list[Series], rows: Sequence[Row] = ()) -> tuple[list, list[str]]:
    handles, labels = [], []
    if len(series) > 1:
        handles = [Patch(facecolor="0.55", hatch=s.hatch, alpha=s.alpha, edgecolor="0.2") for s in series]
        labels = [s.label for s in series]
    if any(s.timed for s in series) and any(r.noisy for r in rows if r.status == "ok"):
        handles.append(Patch(facecolor="white", edgecolor="black", linewidth=1.2, linestyle="--"))
        labels.append("dashed outline: noisy (IQR > 10% of the median)")
    return handles, labels


def log_if_wide(ax: Axes, values: Sequence[float], ratio: float = 30.0) -> None:
    """A log axis when the bars span more than `ratio`×, so the short ones stay visible."""
    positive = [v for v in values if v and v > 0]
    if positive and max(positive) / min(positive) > ratio:
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(NullFormatter())


def to_png(fig: Figure, dpi: int = 110) -> bytes:
    """PNG bytes of a figure (the report's files and the panel's image); white, not transparent."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()
