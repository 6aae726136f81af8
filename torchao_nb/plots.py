"""Figures over a ResultSet (latency, speedup, accuracy vs speedup, batch scaling, memory, roofline, autoquant's
choices), one registry of them, the dashboard that lays them out, and runs compared."""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from matplotlib import transforms
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter

from . import drawing as d
from . import runs as runs_mod
from .drawing import mode_color, to_png  # noqa: F401  (part of this module's API)
from .errors import UserError
from .extras import Autoquant
from .fields import CATALOGUE
from .registry import Registry
from .results import ResultSet, Row
from .tables import autoquant_tables

# A figure's choice of metric → the catalogue field it draws (its value, its axis label).
ACCURACY = {"sqnr_db": "sqnr", "cosine": "cosine"}


def _series(key: str, label: str, **style) -> d.Series:
    """Bars of a catalogue field: its Row attribute, scale and 95 % interval."""
    f = CATALOGUE[key]
    return d.Series(label, f.attr, scale=f.scale, interval=f.interval, **style)


# ---- the figures ------------------------------------------------------------------------------

def latency(results: ResultSet, ax: Axes | None = None, notes: bool = True) -> Figure:
    """Median latency per mode with IQR error bars, grouped by batch size; reference lines for the unquantized model."""
    rs = d.check(results)
    fig, ax, own = d.new_axes(ax)
    series = [_series("median_ms", "median latency", err="iqr_ms")]
    ref_rows = {glabel: next((r for _, r in cells if r.eager_ms is not None), None) for glabel, cells in d.single_run_groups(rs)}

    def refs(glabel):
        r = ref_rows.get(glabel)
        if r is None:
            return []
        lines = [(r.eager_ms, "unquantized, eager", ":")]
        if r.compile and r.baseline_ms is not None:
            lines.insert(0, (r.baseline_ms, "unquantized, compiled (baseline)", "--"))
        return lines

    nt = d.Notes(rs)
    heights = d.grouped_bars(ax, d.bars_for(rs, series), series, nt, None, refs=refs)
    d.log_if_wide(ax, heights + [v for r in ref_rows.values() if r for v in (r.eager_ms, r.baseline_ms) if v])
    ax.set_ylabel("latency per call (ms" + (", log scale)" if ax.get_yscale() == "log" else ")"))
    ax.set_title(f"Latency per mode (median, error bar = IQR)\n{d.subject(rs.rows)}", fontsize=10)
    h, l = ax.get_legend_handles_labels()
    seen = dict(zip(l, h))
    nh, nl = d.series_legend(series, rs.rows)
    d.notes_legend(fig, ax, nt.lines() if notes else [], own, list(seen.values()) + nh, list(seen) + nl)
    return fig


def _speedup_series(rows: Sequence[Row]) -> list[d.Series]:
    if all(not r.compile for r in rows):
        return [_series("speedup", "vs eager unquantized (compile off)")]
    return [_series("speedup", "vs compiled unquantized baseline"),
            _series("vs_eager", "vs eager unquantized", hatch="///", alpha=0.55)]


def speedup(results: ResultSet, ax: Axes | None = None, notes: bool = True) -> Figure:
    """Speedup per mode against the compiled baseline and against eager, each bar labelled, with a 1.0× line."""
    rs = d.check(results)
    fig, ax, own = d.new_axes(ax)
    series = _speedup_series(rs.rows)
    nt = d.Notes(rs)
    d.grouped_bars(ax, d.bars_for(rs, series), series, nt, "{:.2f}×")
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--", gid="one")
    ax.set_ylabel("speedup (×)")
    ax.set_title(f"Speedup per mode (1.0× = as fast as the unquantized model; error bar = 95 % interval)\n"
                 f"{d.subject(rs.rows)}", fontsize=10)
    d.notes_legend(fig, ax, nt.lines() if notes else [], own, *d.series_legend(series, rs.rows))
    return fig


def memory(results: ResultSet, ax: Axes | None = None, notes: bool = True) -> Figure:
    """Weight size and peak memory per mode (MB)."""
    rs = d.check(results)
    fig, ax, own = d.new_axes(ax)
    cuda = any(r.device.startswith("cuda") for r in rs.rows)
    series = [_series("weights_mb", "weights", timed=False)]
    if any(r.peak_mem_bytes for r in rs.rows if r.status == "ok"):  # CPU RSS growth is often 0: nothing to show
        peak = "peak allocated (CUDA)" if cuda else "peak RSS growth while timing"
        series.append(_series("peak_mb", peak, hatch="///", alpha=0.55, timed=False))
    nt = d.Notes(rs)
    d.grouped_bars(ax, d.bars_for(rs, series), series, nt, "{:.1f}")
    ax.set_ylabel("size (MB)")
    what = "Weight size and peak memory" if len(series) > 1 else "Weight size"
    ax.set_title(f"{what} per mode\n{d.subject(rs.rows)}", fontsize=10)
    d.notes_legend(fig, ax, nt.lines() if notes else [], own, *d.series_legend(series, rs.rows))
    return fig


def roofline(results: ResultSet, ax: Axes | None = None, notes: bool = True) -> Figure:
    """Achieved memory bandwidth per mode as % of the device's measured copy bandwidth.

    Bytes per step are the weights a step reads once (embedding tables are looked up, not streamed)
    plus the input and output tensors; memory-bound work (small-batch decode) should approach 100 %,
    whatever its speedup over the baseline. A step whose bytes fit in the last-level cache (L2 on a
    GPU) says "in cache": a percentage of memory bandwidth would mean nothing there.
    """
    rs = d.check(results)
    fig, ax, own = d.new_axes(ax)
    series = [_series("roofline", "% of memory roofline")]
    nt = d.Notes(rs)
    d.grouped_bars(ax, d.bars_for(rs, series), series, nt, "{:.0f}")
    ax.axhline(100, color="black", linewidth=0.8, linestyle="--")
    copy = rs.environment.get("copy_gbs")
    ax.set_ylabel(CATALOGUE["roofline"].axis)
    bw = f" (copy bandwidth {copy:.0f} GB/s)" if copy else ""
    ax.set_title(f"Distance to the memory roofline{bw}\n{d.subject(rs.rows)}", fontsize=10)
    d.notes_legend(fig, ax, nt.lines() if notes else [], own, *d.series_legend(series, rs.rows))
    return fig


def _begin(results: ResultSet, ax: Axes | None, metric: str, choices: dict, what: str):
    """A figure with a choice of metric: (results, figure, axes, whether the figure is ours, notes)."""
    if metric not in choices:
        raise UserError(f"unknown {what} {metric!r}; choose one of: {', '.join(choices)}")
    rs = d.check(results)
    fig, ax, own = d.new_axes(ax)
    return rs, fig, ax, own, d.Notes(rs)


def _accuracy(row: Row, metric: str) -> float | None:
    return CATALOGUE[ACCURACY[metric]].value(row)


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
    rs, fig, ax, own, nt = _begin(results, ax, metric, ACCURACY, "accuracy metric")
    groups = d.groups(rs.rows)
    markers = ["o", "s", "D", "v", "P", "X", "*"]
    plotted = [(r, r.speedup, _accuracy(r, metric)) for r in rs.rows
               if r.status == "ok" and r.speedup is not None and _accuracy(r, metric) is not None]
    finite = [a for _, _, a in plotted if math.isfinite(a)]
    top = (max(finite) + max(3.0, 0.12 * (max(finite) - min(finite)))) if finite else 1.0  # where "identical" sits
    handles: dict[str, Any] = {}
    several = len(groups) > 1
    for gi, (gkey, glabel) in enumerate(groups):
        pts = [(r, s, a) for r, s, a in plotted if d.group_key(r) == gkey]
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
    ax.set_ylabel(CATALOGUE[ACCURACY[metric]].axis)
    ax.set_title(f"Accuracy vs speedup (up and right is better)\n{d.subject(rs.rows)}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.12)
    if handles:
        ax.add_artist(ax.legend(list(handles.values()), list(handles), fontsize=8, loc="best"))
    d.notes_legend(fig, ax, nt.lines() if notes else [], own)
    return fig


SCALING = {"speedup": 1.0, "median_ms": None, "per_sample_ms": None}  # catalogue field → its reference line


def batch_scaling(results: ResultSet, ax: Axes | None = None, notes: bool = True, metric: str = "speedup") -> Figure:
    """Speedup (or latency) against batch size, one line per mode; skipped/error cells marked ✗ on the axis."""
    rs, fig, ax, own, nt = _begin(results, ax, metric, SCALING, "batch-scaling metric")
    line_fields = d.GROUP_FIELDS[:-1]  # one line per (model, device, dtype, compile); batch is the x axis
    lines = list(dict.fromkeys(tuple(getattr(r, f) for f in line_fields) for r in rs.rows))
    varying = [i for i in range(len(line_fields)) if len({k[i] for k in lines}) > 1]
    styles = ["-", "--", ":", "-."]
    bottom = transforms.blended_transform_factory(ax.transData, ax.transAxes)

    value = CATALOGUE[metric].value

    missing: list[Row] = []
    for li, lkey in enumerate(lines):
        for mode in d.modes_present(rs.rows):
            rows = sorted((r for r in rs.rows if r.mode == mode and tuple(getattr(r, f) for f in line_fields) == lkey),
                          key=lambda r: r.batch_size)
            ok = [(r.batch_size, value(r)) for r in rows if r.status == "ok" and value(r) is not None]
            label = mode if len(lines) == 1 else f"{mode} · {d.group_label(lkey, varying)}"
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
    one = SCALING[metric]
    if one is not None:
        ax.axhline(one, color="black", linewidth=1, linestyle="--")
    if metric != "speedup":
        ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel(CATALOGUE[metric].axis)
    ax.set_title(f"Batch-size scaling (✗ on the axis = skipped or error)\n{d.subject(rs.rows)}", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.add_artist(ax.legend(fontsize=8, loc="best"))  # kept when the notes legend is added below
    d.notes_legend(fig, ax, nt.lines() if notes else [], own)
    return fig


# ---- autoquant's per-layer choices ----------------------------------------------------------------

_STATUS_STYLE = {"chosen": dict(edgecolor="black", linewidth=2.0), "below floor": dict(hatch="//", alpha=0.45), "wrong": dict(hatch="xx", alpha=0.3),
                 "demoted": dict(hatch="xx", alpha=0.45), "not faster": dict(alpha=0.6), "slower": dict(alpha=0.6)}


def autoquant_choices(results: Any, ax: Axes | None = None, notes: bool = True) -> Figure:
    """autoquant, per layer: each candidate's time relative to noquant; the chosen bar outlined, below-floor ones hatched.

    `results`: a ResultSet, Row or rows with autoquant rows (one ax: a single row), or one decision table."""
    tables = autoquant_tables(results)
    if ax is not None and len(tables) > 1:
        raise ValueError(f"{len(tables)} autoquant rows but one ax: pass a single row (results.where(...)) or no ax")
    if ax is None:
        # Figure() rather than pyplot: no global figure registry, safe from the panel's worker thread.
        fig = Figure(figsize=(9, 3.4 * len(tables)), layout="constrained")
        axes = [fig.add_subplot(len(tables), 1, i + 1) for i in range(len(tables))]
    else:
        fig, axes = ax.get_figure(root=True), [ax]
    for ax_, (ident, table) in zip(axes, tables):
        layers = [l for l in table["layers"] if l["candidates"].get("noquant", {}).get("ms")]
        modes = list(dict.fromkeys(m for l in layers for m in l["candidates"]))
        width = 0.8 / max(1, len(modes))
        for j, mode in enumerate(modes):
            for i, layer in enumerate(layers):
                c = layer["candidates"].get(mode, {})
                if c.get("ms") is not None:
                    ax_.bar(i + (j - (len(modes) - 1) / 2) * width, c["ms"] / layer["candidates"]["noquant"]["ms"], width,
                            color=mode_color(mode), **_STATUS_STYLE.get(c.get("status"), {}))
        ax_.axhline(1 - table["margin"], color="grey", linestyle=":", linewidth=1)
        ax_.set_xticks(range(len(layers)), [f"{l['layer']}\n→ {l['choice']}" for l in layers], fontsize=8)
        ax_.set_ylabel("time / noquant (lower is faster)")
        who = ", ".join(f"{ident[k]}" for k in ("model", "dtype") if k in ident)
        who += f", batch {ident['batch_size']}" if "batch_size" in ident else ""
        ax_.set_title(f"autoquant choices{': ' + who if who else ''}\n"
                      f"SQNR floor {table['sqnr_floor_db']:g} dB, margin {table['margin']:.0%} (dotted line)", fontsize=9)
        handles = [Patch(color=mode_color(m), label=m) for m in modes]
        handles += [Patch(facecolor="white", edgecolor="black", linewidth=2, label="chosen"),
                    Patch(facecolor="white", edgecolor="grey", hatch="//", label="below floor")]
        ax_.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


# ---- one registry of figures, and the dashboard that lays them out ----------------------------------------

@dataclass(frozen=True)
class FigureSpec:
    """A registered figure: draw(results, ax=None, notes=True) -> Figure; applies(results): anything to show?"""

    name: str
    draw: Callable[..., Figure]
    applies: Callable[[ResultSet], bool] = lambda rs: True
    wide: bool = False  # takes a whole dashboard row


FIGURES: Registry = Registry("figure")
register = FIGURES.add


def _has(field: str) -> Callable[[ResultSet], bool]:
    return lambda rs: any(r.status == "ok" and getattr(r, field) is not None for r in rs.rows)


def _autoquant_rows(rs: ResultSet) -> list[Row]:
    return [r for r in rs.rows if r.status == "ok" and r.extra_of(Autoquant) is not None]


def _last_autoquant(rs: ResultSet, ax: Axes | None = None, notes: bool = True) -> Figure:
    rows = _autoquant_rows(rs)
    fig = autoquant_choices(rows[-1], ax=ax)
    if len(rows) > 1:
        axis = fig.axes[0] if ax is None else ax
        axis.set_title(f"{axis.get_title()}\n(the last of {len(rows)} autoquant rows; all of them: "
                       "tables.decision_table)", fontsize=9)
    return fig


register(FigureSpec("speedup", speedup))
register(FigureSpec("latency", latency))
register(FigureSpec("accuracy", accuracy_vs_speedup,
                    lambda rs: any(r.status == "ok" and r.speedup is not None and r.cosine is not None for r in rs.rows)))
register(FigureSpec("memory", memory, _has("weight_bytes")))
register(FigureSpec("roofline", roofline, _has("roofline_pct")))
register(FigureSpec("batch_scaling", batch_scaling, lambda rs: len({r.batch_size for r in rs.rows}) > 1))
register(FigureSpec("autoquant", _last_autoquant, lambda rs: bool(_autoquant_rows(rs)), wide=True))

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
    rs = d.check(results)
    if panels is None:
        chosen = [p for p in FIGURES.values() if p.applies(rs)]
    else:
        unknown = [n for n in panels if n not in FIGURES]
        if unknown:
            raise UserError(f"unknown dashboard panel(s) {', '.join(unknown)}; valid: {', '.join(FIGURES)}")
        chosen = [FIGURES[n] for n in panels]
    lines = d.Notes(rs).lines(width=None)
    wrapped = [textwrap.fill(line, 170, subsequent_indent="     ") for line in lines]
    note_rows = sum(w.count("\n") + 1 for w in wrapped)
    # Lay panels out two per row; a wide panel, or an odd one out, takes the whole row.
    slots: list[list[FigureSpec]] = []
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
            p.draw(rs, ax, notes=False)
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


# ---- comparing runs ----------------------------------------------------------------------------

COMPARE = {
    "speedup": ("speedup vs own baseline (×)", "{:.2f}×", 1.0, "speedup"),
    "median_ms": ("latency per call (ms, log scale)", "{:.3g}", 1e-3, "median_ms"),
}


def compare(runs: Mapping[str, ResultSet] | Sequence[ResultSet], ax: Axes | None = None, notes: bool = True,
            metric: str = "speedup") -> Figure:
    """Matched cells of several runs side by side: bars coloured by mode, one hatch per run."""
    if metric not in COMPARE:
        raise UserError(f"unknown comparison metric {metric!r}; choose one of: {', '.join(COMPARE)}")
    runs = runs_mod.as_runs(runs)
    for label, rs in runs.items():
        if not len(rs):
            raise UserError(f"run {label!r} has no rows: nothing to compare")
    ylabel, fmt, _, field = COMPARE[metric]
    cells, by_run = runs_mod.cells_of(runs)
    labels = list(runs)
    series = [d.Series(label, field, hatch=d.RUN_HATCHES[i % len(d.RUN_HATCHES)], alpha=1.0 if i == 0 else 0.75)
              for i, label in enumerate(labels)]
    fig, ax, own = d.new_axes(ax, figsize=(max(8, 1.1 * len(cells) * len(labels) ** 0.5), 4.8))
    groups: list[tuple[str, list]] = []
    gkeys = list(dict.fromkeys((c[0], c[2]) for c in cells))
    multi_model = len({g[0] for g in gkeys}) > 1
    for model, batch in gkeys:
        glabel = (f"{model} · " if multi_model else "") + f"batch {batch}"
        groups.append((glabel, [(c[1], [by_run[l].get(c) for l in labels]) for c in cells if (c[0], c[2]) == (model, batch)]))
    nt = d.Notes()
    for label in labels:
        for r in runs[label].rows:
            if r.status != "ok":
                nt.number(r, label)
    d.grouped_bars(ax, groups, series, nt, fmt, prefixes=labels)
    if metric == "speedup":
        ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
    else:
        ax.set_yscale("log")
        ax.margins(y=0.15)
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain if d.decades(ax) < 2 else NullFormatter())
    ax.set_ylabel(ylabel)
    devices = " vs ".join(f"{l} ({', '.join(dict.fromkeys(f'{r.device} {r.dtype}' for r in runs[l].rows))})" for l in labels)
    models = ", ".join(dict.fromkeys(c[0] for c in cells))
    ax.set_title(f"Runs compared: {'speedup' if metric == 'speedup' else 'latency'} per mode\n{models} · {devices}", fontsize=10)
    handles = [Patch(facecolor="0.6", hatch=s.hatch, alpha=s.alpha, edgecolor="0.2") for s in series]
    d.notes_legend(fig, ax, nt.lines() if notes else [], own, handles, labels)
    return fig


# ---- tuning's price ------------------------------------------------------------------------------

TUNING_MARKERS = {"torchao": "o", "fast": "s", "off": "D"}  # compiling.TUNINGS; another value gets "X"


def tuning_price(results: ResultSet | Sequence[ResultSet], ax: Axes | None = None, notes: bool = True) -> Figure:
    """Compile time (compile + first call) against speedup, one point per cell, its marker the row's tuning and
    its colour the mode's; a mode's points across tunings are joined, so the price of each choice reads as a
    step left (cheaper) or down (slower). Skipped and failed cells are in the notes."""
    rows = [r for rs in ([results] if isinstance(results, ResultSet) else results) for r in d.check(rs).rows]
    plotted = [r for r in rows if r.status == "ok" and r.compile_s is not None and r.speedup is not None]
    if not plotted:
        raise UserError("no row has both a compile time and a speedup (compile was off?): give the results of "
                        "compiled sweeps, one per --tuning choice")
    fig, ax, own = d.new_axes(ax)
    nt = d.Notes(ResultSet(tuple(rows)))
    for mode in d.modes_present(plotted):
        pts = sorted(((r.compile_s, r.speedup, r.tuning) for r in plotted if r.mode == mode), key=lambda p: p[0])
        if len(pts) > 1:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=mode_color(mode), linewidth=1, alpha=0.6, zorder=2)
        for x, y, tuning in pts:
            ax.scatter([x], [y], s=60, color=mode_color(mode), marker=TUNING_MARKERS.get(tuning, "X"),
                       edgecolor="black", linewidth=0.6, zorder=3, gid=f"point|{mode}|{tuning}")
        ax.annotate(mode, pts[-1][:2], xytext=(5, 4), textcoords="offset points", fontsize=8)
    ax.axhline(1.0, color="black", linewidth=1, linestyle=":")
    ax.set_xlabel("compile time: compile + first call (s)")
    ax.set_ylabel("speedup vs compiled unquantized baseline (×)")
    ax.set_title(f"Compile time against speed, per tuning (left and up is better)\n{d.subject(rows)}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(x=0.15, y=0.12)
    tunings = list(dict.fromkeys(r.tuning for r in plotted))
    handles = [Line2D([], [], marker=TUNING_MARKERS.get(t, "X"), color="0.5", markeredgecolor="black",
                      linestyle="none") for t in tunings]
    d.notes_legend(fig, ax, nt.lines() if notes else [], own, handles, [f"tuning {t}" for t in tunings])
    return fig
