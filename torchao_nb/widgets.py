"""BenchmarkPanel: an ipywidgets panel over `sweep`, with figures, a results table, errors and a quiet log."""

from __future__ import annotations

import contextlib
import html
import logging
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ipywidgets as w

from . import autoquant  # noqa: F401  (registers the autoquant mode)
from . import baseline as baseline_mod
from . import columns, drawing, executors, measure, tables
from ._torchao import NOISY_LOGGERS
from .controls import LABEL_WIDTH, NOTEBOOK_MODULE, OTHER_MODEL, STYLE, Choices, default_namespace  # noqa: F401
from .engine import sweep
from .errors import UserError
from .results import ResultSet, Row


def default_figure(results: ResultSet):
    """The panel's figure: the figures module's dashboard (imported lazily, matplotlib is slow to load)."""
    from . import plots

    return plots.dashboard(results)


# ---- pieces that hold no widget state: reachable from tests without a browser -------------------

def table_html(results: ResultSet | None) -> str:
    if not results:
        return "<i>No results yet: pick modes and press Run.</i>"
    note = html.escape(columns.timing_note(results))
    return tables.results_html(results, columns.PANEL, inline=True) + f"<p style='font-size:12px'>{note}</p>"


def baseline_html() -> str:
    """What the baseline settings set: key, value now → baseline value, applied or not, and why."""
    return (tables.baseline_html(baseline_mod.describe_dicts(), inline=True)
            + "<p style='font-size:12px'>Applied only while a compiled cell runs, then restored. "
            "They affect compiled runs only.</p>")


def error_html(error: BaseException | None, failed_rows: list[Row]) -> str:
    parts = []
    if error is not None:
        what = "Check the inputs above" if isinstance(error, UserError) else "The run stopped"
        parts.append(f"<b>{html.escape(type(error).__name__)}</b>: {html.escape(str(error))} "
                     f"<span style='color:#555'>({what}; <code>panel.error</code> holds it, the log has the traceback.)</span>")
    for r in failed_rows:
        what = "gave a wrong output" if r.status == "wrong" else "failed"
        parts.append(f"<b>{html.escape(r.model)} / {html.escape(r.mode)} / batch {r.batch_size}</b> {what}: "
                     f"{html.escape(r.reason)}")
    if not parts:
        return ""
    return ("<div class='torchao-nb-error' style='color:#b00020;border-left:3px solid #b00020;padding-left:6px'>"
            + "<br>".join(parts) + "</div>")


class _LogHandler(logging.Handler):
    def __init__(self, sink: Callable[[str], None]):
        super().__init__(logging.DEBUG)
        self.sink = sink
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.sink(self.format(record))


def _library_loggers() -> list[logging.Logger]:
    """The noisy libraries' top loggers, plus any of their children torch gave handlers of its own."""
    names = [n for n in logging.root.manager.loggerDict if n.split(".")[0] in NOISY_LOGGERS]
    loggers = [logging.getLogger(n) for n in NOISY_LOGGERS]
    loggers += [logging.getLogger(n) for n in names if logging.getLogger(n).handlers]
    return list(dict.fromkeys(loggers))


@contextlib.contextmanager
def library_noise_to(sink: Callable[[str], None]):
    """Send torch/torchao log records and Python warnings to `sink` instead of the cell's stderr; all restored."""
    handler = _LogHandler(sink)
    saved = [(lg, lg.handlers[:], lg.propagate) for lg in _library_loggers()]
    for lg, _, _ in saved:
        lg.handlers = [handler]
        lg.propagate = False
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for lg, handlers, propagate in saved:
            lg.handlers = handlers
            lg.propagate = propagate


# Where the panel puts a setting: these rows, in this order; every other one under "more settings".
DEVICE_ROW = ("device", "dtype")
SETTINGS_ROW = ("batch_sizes", "threads", "int4_group_size", "compile", "baseline")
_WIDTHS = {"int4_group_size": "170px"}  # the settings row's list of four sizes needs no more


# ---- the panel ------------------------------------------------------------------------------

class Busy(RuntimeError):
    """Run was pressed while a run is in progress: refused, and shown until that run ends."""


class DrawingError(RuntimeError):
    """Showing the results (drawing a figure) failed: shown and kept; the sweep goes on and run() doesn't raise it."""


@dataclass
class PanelState:
    """What the panel knows besides its widgets' values; the widgets show it, a test reads it."""

    busy: bool = False  # a run is in progress
    results: ResultSet | None = None  # the latest run's rows (those finished so far, while it runs)
    failure: BaseException | None = None  # why the latest action (Run, Export) failed; None: it didn't
    refusal: Busy | None = None  # a Run pressed while one was in progress: shown until that run ends

    @property
    def error(self) -> BaseException | None:
        """The error shown: the refusal while it stands, else the latest action's failure."""
        return self.refusal or self.failure

    def failed_rows(self) -> list[Row]:
        return [r for r in self.results or () if r.status in ("error", "wrong")]


class BenchmarkPanel:
    """Pick a model and modes, press Run, watch the table and figures fill in cell by cell.

    `.results` holds the latest ResultSet (None before the first run) and `.error` the exception of the
    latest action (Run, Export), or None; `.state` holds both, and whether a run is in progress. `run()` does
    what the Run button does, but blocks and returns the results; the button runs the sweep on a background
    thread so the notebook stays responsive. The cells run in a worker process (`isolate=False`: in the
    notebook's own), so a crashing kernel costs one row, not the notebook, and Stop ends the cell in progress.
    The settings' controls come from `config.OPTIONS` and the modes' flagged settings: `panel.controls[name]`,
    whose widget is also `panel.<name>` (`panel.dtype`, `panel.int4_group_size`).
    """

    def __init__(self, model: str | None = None, modes: Any = None, *, namespace: dict | None = None,
                 policy: measure.TimingPolicy | None = None, figure: Callable[[ResultSet], Any] = default_figure,
                 out: str = "results/panel", isolate: bool = True):
        self.state = PanelState()
        self.policy, self.isolate, self.figure, self.namespace = policy, isolate, figure, namespace
        if isolate:
            executors.prestart()  # imports torch and torchao while the user picks what to run
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.choices, self.view, self.log_box = Choices(model, modes), ResultsView(), LogBox()
        v = self.view  # its widgets, by the names tests and users reach them
        self.progress, self.status, self.errors, self.table, self.texts, self.figure_view = (
            v.progress, v.status, v.errors, v.table, v.texts, v.figure)
        self.log = self.log_box.widget
        self.baseline_view = _collapsed(w.HTML(baseline_html()), "what the baseline settings set")
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.stop_button = w.Button(description="Stop", icon="stop", disabled=True,
                                    tooltip="stops the cell that is running now (in-process: after it)")
        self.export_dir = w.Text(value=out, description="export to", style=STYLE)
        self.export_button = w.Button(description="Export", icon="download", disabled=True,
                                      tooltip="write results.csv/json and report.html into the folder")
        self.run_button.on_click(lambda _: self._guarded(self.start))
        self.stop_button.on_click(lambda _: self.stop())
        self.export_button.on_click(lambda _: self._guarded(self.export))
        self.widget = layout(self)

    def __getattr__(self, name: str):
        # The choices' widgets by name: panel.model, panel.modes, panel.dtype, panel.int4_group_size...
        choices = self.__dict__.get("choices")  # absent while __init__ starts
        if choices is None or name.startswith("_"):
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return getattr(choices, name)

    @property
    def results(self) -> ResultSet | None:
        return self.state.results

    @property
    def error(self) -> BaseException | None:
        return self.state.error

    @property
    def running(self) -> bool:
        return self.state.busy

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    def sweep_kwargs(self) -> dict[str, Any]:
        """The arguments Run passes to `torchao_nb.sweep`, validated (bad input raises UserError)."""
        namespace = self.namespace if self.namespace is not None else default_namespace()
        return self.choices.sweep_kwargs(namespace) | {"policy": self.policy, "isolate": self.isolate}

    # ---- running ----
    def start(self) -> threading.Thread:
        """What the Run button does: validate, then sweep on a background thread."""
        if self.running:
            raise Busy("a run is already in progress; press Stop or wait for it to finish.")
        self._new_action()
        kwargs = self.sweep_kwargs()
        self._stop.clear()
        self.state.results = None
        self.view.clear(len(kwargs["batch_sizes"] or [1]) * len(kwargs["modes"]))  # the panel runs one model
        self._set_running(True)
        self.log_box.add(f"run: {_describe(kwargs)}")
        self._thread = threading.Thread(target=self._work, args=(kwargs,), name="torchao_nb-sweep", daemon=True)
        self._thread.start()
        return self._thread

    def wait(self, timeout: float | None = None) -> ResultSet | None:
        """Block until the current run ends; returns `.results`."""
        if self._thread is not None:
            try:
                self._thread.join(timeout)
            except KeyboardInterrupt:  # the kernel's interrupt button: stop the sweep too, not just the wait
                self.stop()
                raise
        return self.results

    def run(self) -> ResultSet | None:
        """Like pressing Run, but blocks until done. A failure of the run itself is raised (and kept in `.error`)."""
        self.start()
        self.wait()
        if self.error is not None and not isinstance(self.error, DrawingError):
            raise self.error
        return self.results

    def stop(self) -> None:
        """Stop the running sweep: at once with a worker process (the cell in progress leaves no row), else after the cell."""
        if self.running:
            self._stop.set()
            self.status.value = "stopping…" if self.isolate else "stopping after this cell…"

    def _work(self, kwargs: dict[str, Any]) -> None:
        try:
            with library_noise_to(self.log_box.add):
                self.state.results = sweep(**kwargs, progress=False, stop=self._stop, on_row=self._on_row)
            self._show()
            self.state.refusal = None  # the run is now the latest action: a Run pressed while it went on is over
            self.view.finish(self.state, stopped=self._stop.is_set())
            self.export_button.disabled = not self.results
        except Exception as e:  # shown in the panel and kept; an exception here would otherwise vanish
            self._record(e)
        finally:
            self._set_running(False)

    def _on_row(self, row: Row) -> None:
        # Runs on the sweep thread, after each cell: the only writer of the results while it runs.
        self.state.results = ResultSet((self.results.rows if self.results else ()) + (row,), {})
        self.log_box.add(f"{row.model} bs={row.batch_size} {row.mode}: {row.status}"
                         + (f" {row.median_ms:.3f} ms" if row.median_ms is not None else "")
                         + (f" ({row.reason})" if row.reason else ""))
        self._show()

    def _show(self) -> None:
        png = None
        if any(r.status == "ok" for r in self.results):
            try:
                png = drawing.to_png(self.figure(self.results), dpi=90)
            except Exception as e:  # a drawing failure must not end the sweep, only be shown and kept
                self._record(DrawingError(f"drawing the results failed: {type(e).__name__}: {e}"), cause=e)
        self.view.show(self.state, png)

    def _record(self, error: BaseException, cause: BaseException | None = None) -> None:
        """Keep and show what went wrong; the traceback goes to the log."""
        if isinstance(error, Busy):  # a refused click leaves the run in progress, and its progress, alone
            self.state.refusal = error
        else:
            self.state.failure = error
            self.progress.bar_style, self.status.value = "danger", "failed"
        self.log_box.add("".join(traceback.format_exception(cause or error)))
        self.view.show_errors(self.state)

    def _new_action(self) -> None:
        """A Run or an Export starts: the error shown is no longer the latest; the results' failed cells stay."""
        self.state.failure = self.state.refusal = None
        self.view.show_errors(self.state)
        if self.progress.bar_style == "danger":
            self.progress.bar_style = ""

    def _guarded(self, action: Callable[[], Any]) -> None:
        # ipywidgets' click dispatcher only logs exceptions: catch, show and keep them instead.
        try:
            action()
        except Exception as e:
            self._record(e)

    def _set_running(self, running: bool) -> None:
        self.state.busy = running
        self.run_button.disabled, self.stop_button.disabled = running, not running
        if running:
            self.export_button.disabled = True

    def export(self, out: str | None = None) -> Path:
        """Write the latest results (rows.jsonl, results.csv/.json, environment.json) and report.html into `out`;
        earlier results of another sweep there are moved to `out/previous/<time>/` first."""
        self._new_action()
        if not self.results:
            raise UserError("nothing to export yet: press Run first.")
        folder = Path(out or self.export_dir.value.strip() or "results/panel")
        written, moved = export_results(self.results, folder)
        self.status.value = f"exported to {html.escape(str(folder))}{html.escape(moved)}"
        self.log_box.add(f"exported: {written}{moved}")
        return folder

    def table_frame(self):
        """The latest results as a DataFrame (empty before the first run)."""
        return (self.results or ResultSet()).to_dataframe()


def export_results(results: ResultSet, folder: Path) -> tuple[str, str]:
    """Write `results` and their report into `folder` (locked meanwhile): what was written, and where the folder's
    earlier results went ("" when none); a folder that can't be written is a UserError."""
    from . import report
    from .folder import ResultsFolder

    try:
        with ResultsFolder(folder, "type another folder") as target:  # locked: a run writing there is safe
            aside = target.replace_all(results)
            page = report.build([folder], folder / "report.html").html
    except OSError as e:
        raise UserError(f"cannot write to {folder}: {e.strerror or e}; type another folder.") from None
    moved = f" (its earlier results are in {aside})" if aside else ""
    return f"{folder}/rows.jsonl, results.csv, results.json, environment.json, {page.name}", moved


class ResultsView:
    """The panel's output: progress, status, the red box of errors, the table, generated texts, the figure."""

    def __init__(self):
        self.progress = w.IntProgress(value=0, min=0, max=1, description="", layout=w.Layout(width="260px"))
        self.status, self.errors, self.table = w.HTML(""), w.HTML(""), w.HTML(table_html(None))
        self.texts = w.HTML("")  # a causal LM's generated texts, side by side
        self.figure = w.Image(format="png", layout=w.Layout(max_width="100%", display="none"))

    def clear(self, cells: int) -> None:
        self.progress.max, self.progress.value, self.progress.bar_style = cells, 0, ""
        self.table.value, self.texts.value, self.figure.value = table_html(None), "", b""
        self.figure.layout.display = "none"
        self.status.value = "measuring the unquantized reference…"

    def show(self, state: PanelState, png: bytes | None) -> None:
        self.table.value = table_html(state.results)
        self.texts.value = tables.generations_html(state.results, inline=True)
        if png is not None:
            self.figure.value, self.figure.layout.display = png, ""
        self.progress.value = len(state.results)
        self.status.value = f"{len(state.results)}/{self.progress.max} cells"
        self.show_errors(state)

    def finish(self, state: PanelState, stopped: bool) -> None:
        n = len(state.results)
        stopped = stopped and n < self.progress.max
        self.status.value = f"{'stopped' if stopped else 'done'}: {n} cell{'s' * (n != 1)}"
        self.progress.bar_style = ("danger" if state.error else "warning" if stopped or state.failed_rows()
                                   else "success")
        self.show_errors(state)

    def show_errors(self, state: PanelState) -> None:
        self.errors.value = error_html(state.error, state.failed_rows())


class LogBox:
    """The collapsed log: library messages and tracebacks, the latest 500 lines; written from both threads."""

    def __init__(self):
        self.widget = w.Textarea(layout=w.Layout(width="100%", height="160px"), disabled=True)
        self._lines: list[str] = []
        self._lock = threading.Lock()

    def add(self, text: str) -> None:
        with self._lock:
            self._lines.append(text.rstrip())
            del self._lines[:-500]  # keep the widget light on long sessions
            self.widget.value = "\n".join(self._lines)


def layout(panel: BenchmarkPanel) -> w.VBox:
    """The panel's widgets in their rows, with stable CSS classes for browser tests and user CSS."""
    label = lambda text: w.HTML(f"<b style='display:inline-block;width:{LABEL_WIDTH}'>{text}</b>")  # noqa: E731
    controls = panel.choices.controls
    row = lambda names: [controls[n].view for n in names if n in controls]  # noqa: E731
    more = [c.view for n, c in controls.items() if n not in DEVICE_ROW + SETTINGS_ROW]
    for name, width in _WIDTHS.items():
        if name in controls:
            controls[name].widget.layout.width = width
    box = w.VBox([
        w.HTML("<h3 style='margin:4px 0'>torchao_nb: quantization benchmark</h3>"),
        w.HBox([panel.model, panel.choices.picker.help]), panel.model_name, panel.module_box,
        w.HBox([label("modes"), panel.modes.box]),
        w.HBox([label("device"), *row(DEVICE_ROW), panel.resolved]),
        w.HBox(row(SETTINGS_ROW)), _collapsed(w.VBox(more), "more settings"),
        panel.baseline_view,
        w.HBox([panel.run_button, panel.stop_button, panel.progress, panel.status]),
        panel.errors, panel.table, panel.texts, panel.figure_view,
        w.HBox([panel.export_dir, panel.export_button]), _collapsed(panel.log, "log (library messages, tracebacks)"),
    ], layout=w.Layout(border="1px solid #ddd", padding="6px"))
    box.add_class("torchao-nb-panel")
    for widget, name in ((panel.modes.box, "modes"), (panel.device.box, "device"), (panel.figure_view, "figure"),
                         (panel.run_button, "run"), (panel.stop_button, "stop"), (panel.table, "table"),
                         (panel.errors, "errors"), (panel.status, "status"), (panel.compile, "compile"),
                         (panel.threads, "threads"), (panel.model_name, "model-name"), (panel.texts, "texts")):
        widget.add_class(f"torchao-nb-{name}")
    return box


def _collapsed(child, title: str) -> w.Accordion:
    view = w.Accordion([child], titles=(title,))
    view.selected_index = None
    return view


def _describe(kwargs: dict[str, Any]) -> str:
    model = kwargs["model"] if isinstance(kwargs["model"], str) else type(kwargs["model"]).__name__
    return (f"model={model} modes={','.join(kwargs['modes'])} device={kwargs['device']} dtype={kwargs['dtype']} "
            f"batch={','.join(map(str, kwargs['batch_sizes'] or ['as given']))} compile={kwargs['compile']} baseline={kwargs['baseline']} "
            f"threads={kwargs['threads']}")
