"""BenchmarkPanel: an ipywidgets panel over `sweep`, with figures, a results table, errors and a quiet log."""

from __future__ import annotations

import contextlib
import html
import logging
import os
import threading
import traceback
from pathlib import Path
from typing import Any, Callable

import ipywidgets as w
import torch
from torch import nn

from . import autoquant  # noqa: F401  (registers the autoquant mode)
from . import baseline as baseline_mod
from . import columns, drawing, executors, measure, models, tables
from . import env as envmod
from . import modes as modes_mod
from ._torchao import NOISY_LOGGERS
from .config import check_batch_sizes
from .engine import sweep
from .errors import UserError
from .results import ResultSet, Row
from .toggles import ToggleGroup

NOTEBOOK_MODULE = "__notebook__"  # the model picker's entry for "a module from this notebook"
OTHER_MODEL = "__other__"  # the model picker's entry for a typed name: hf:..., hf-config:..., a .gguf file
DTYPE_OPTIONS = ("auto", *envmod.DTYPES)


def default_figure(results: ResultSet):
    """The panel's figure: the figures module's dashboard (imported lazily, matplotlib is slow to load)."""
    from . import plots

    return plots.dashboard(results)


def default_namespace() -> dict[str, Any]:
    """The notebook's variables: IPython's user namespace when there is one, else __main__'s."""
    with contextlib.suppress(ImportError):
        from IPython import get_ipython

        ip = get_ipython()
        if ip is not None:
            return ip.user_ns
    import __main__

    return vars(__main__)


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


# ---- the panel ------------------------------------------------------------------------------

class BenchmarkPanel:
    """Pick a model and modes, press Run, watch the table and figures fill in cell by cell.

    `.results` holds the latest ResultSet (None before the first run) and `.error` the exception of the
    latest action (Run, Export), or None. `run()` does what the Run button does, but blocks and returns the results;
    the button runs the sweep on a background thread so the notebook stays responsive. The cells run
    in a worker process (`isolate=False`: in the notebook's own), so a crashing kernel costs one row,
    not the notebook, and Stop ends the cell in progress.
    """

    def __init__(self, model: str | None = None, modes: Any = None, *, namespace: dict | None = None,
                 policy: measure.TimingPolicy | None = None, figure: Callable[[ResultSet], Any] = default_figure,
                 out: str = "results/panel", isolate: bool = True):
        self.results: ResultSet | None = None
        self.error: BaseException | None = None
        self.policy = policy
        self.isolate = isolate
        if isolate:
            executors.prestart()  # imports torch and torchao while the user picks what to run
        self.figure = figure
        self.namespace = namespace
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._rows: list[Row] = []
        self._log_lines: list[str] = []
        self._lock = threading.Lock()
        self._run_error: BaseException | None = None  # a failure while showing this run's rows (drawing)

        typed = model is not None and model not in models.MODELS
        if typed:
            models.get(model)  # a form (hf:...) is typed into the name box; anything else is a clear UserError
        style = {"description_width": "90px"}
        model_options = [(n if s.params is None else f"{n}  ({s.params / 1e6:.1f}M params)", n)
                         for n, s in models.MODELS.items()]
        model_options += [("another: hf:…, hf-config:… or a .gguf file…", OTHER_MODEL),
                          ("a module from this notebook…", NOTEBOOK_MODULE)]
        self.model = w.Dropdown(options=model_options, value=OTHER_MODEL if typed else model or models.DEFAULT_MODEL,
                                description="model", style=style)
        self.model_name = w.Text(value=model if typed else "", description="name", style=style,
                                 placeholder="hf:<hub id or folder>, hf-config:<architecture> or /path/to/model.gguf")
        self.model_help = w.HTML()
        self.module_name = w.Text(description="variable", placeholder="name of an nn.Module, e.g. net", style=style)
        self.inputs_name = w.Text(description="inputs", placeholder="its example inputs, e.g. x or (x, mask)", style=style)
        self.module_box = w.VBox([self.module_name, self.inputs_name])

        self.device = ToggleGroup({d: "" for d in envmod.DEVICES}, multiple=False, value="auto")
        self.dtype = w.Dropdown(options=DTYPE_OPTIONS, value="auto", description="dtype", style=style)
        self.resolved = w.HTML()  # what auto means on this machine
        self.modes = ToggleGroup({n: m.description for n, m in modes_mod.MODES.items()}, multiple=True, value=())
        self.batch_sizes = w.Text(value="1", description="batch sizes", placeholder="e.g. 1,8", style=style)
        self.threads = w.BoundedIntText(value=torch.get_num_threads(), min=1, max=max(os.cpu_count() or 1, torch.get_num_threads()),
                                        description="CPU threads", style=style, layout=w.Layout(width="160px"))
        self.compile = w.Checkbox(value=True, description="torch.compile each cell", indent=False)
        self.int4_group = w.Dropdown(options=[("auto", None)] + [(str(g), g) for g in modes_mod.INT4_GROUP_SIZES],
                                     value=None, description="int4 group", style=style, layout=w.Layout(width="170px"))
        self.int4_group.tooltip = ("int4 weight-only's group size (auto: 64 on CUDA, 128 on CPU); a layer it doesn't "
                                   "fit takes the largest that divides its in_features")
        self.baseline = w.Checkbox(value=True, description="baseline settings", indent=False)
        self.baseline.tooltip = "the compiler flags PyTorch's torchao benchmark sets (expand below to see them)"
        self.baseline_view = w.Accordion([w.HTML(baseline_html())], titles=("what the baseline settings set",))
        self.baseline_view.selected_index = None

        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.stop_button = w.Button(description="Stop", icon="stop", disabled=True,
                                    tooltip="stops the cell that is running now (in-process: after it)")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="", layout=w.Layout(width="260px"))
        self.status = w.HTML("")
        self.errors = w.HTML("")
        self.table = w.HTML(table_html(None))
        self.texts = w.HTML("")  # a causal LM's generated texts, side by side
        self.figure_view = w.Image(format="png", layout=w.Layout(max_width="100%", display="none"))
        self.export_dir = w.Text(value=out, description="export to", style=style)
        self.export_button = w.Button(description="Export", icon="download", disabled=True,
                                      tooltip="write results.csv/json and report.html into the folder")
        self.log = w.Textarea(layout=w.Layout(width="100%", height="160px"), disabled=True)
        self.log_view = w.Accordion([self.log], titles=("log (library messages, tracebacks)",))
        self.log_view.selected_index = None

        self.model.observe(lambda _: self._model_changed(), "value")
        for b in self.device.buttons.values():
            b.observe(lambda _: self._refresh_modes(), "value")
        self.dtype.observe(lambda _: self._refresh_modes(), "value")
        self.run_button.on_click(lambda _: self._guarded(self.start))
        self.stop_button.on_click(lambda _: self.stop())
        self.export_button.on_click(lambda _: self._guarded(self.export))

        if not envmod.cuda_available():
            self.device.set_available({"cuda": "torch sees no CUDA GPU here"}, {})
        self._model_changed()
        self._refresh_modes()
        runnable = [n for n, b in self.modes.buttons.items() if not b.disabled]
        self.modes.value = runnable if modes is None else modes_mod.resolve_modes(modes)

        label = lambda text: w.HTML(f"<b style='display:inline-block;width:90px'>{text}</b>")  # noqa: E731
        self.widget = w.VBox([
            w.HTML("<h3 style='margin:4px 0'>torchao_nb: quantization benchmark</h3>"),
            w.HBox([self.model, self.model_help]), self.model_name, self.module_box,
            w.HBox([label("modes"), self.modes.box]),
            w.HBox([label("device"), self.device.box, self.dtype, self.resolved]),
            w.HBox([self.batch_sizes, self.threads, self.int4_group, self.compile, self.baseline]), self.baseline_view,
            w.HBox([self.run_button, self.stop_button, self.progress, self.status]),
            self.errors, self.table, self.texts, self.figure_view,
            w.HBox([self.export_dir, self.export_button]), self.log_view,
        ], layout=w.Layout(border="1px solid #ddd", padding="6px"))
        # Stable hooks for browser tests and user CSS.
        self.widget.add_class("torchao-nb-panel")
        for widget, name in ((self.modes.box, "modes"), (self.device.box, "device"), (self.figure_view, "figure"),
                             (self.run_button, "run"), (self.stop_button, "stop"), (self.table, "table"),
                             (self.errors, "errors"), (self.status, "status"), (self.compile, "compile"),
                             (self.threads, "threads"), (self.model_name, "model-name"), (self.texts, "texts")):
            widget.add_class(f"torchao-nb-{name}")

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # ---- reacting to choices ----
    def _model_changed(self) -> None:
        custom = self.model.value == NOTEBOOK_MODULE
        self.module_box.layout.display = "" if custom else "none"
        self.model_name.layout.display = "" if self.model.value == OTHER_MODEL else "none"
        # A notebook's module runs on its example inputs as given: their batch is the row's.
        self.batch_sizes.disabled = custom
        self.batch_sizes.tooltip = "your module's example inputs set the batch" if custom else "e.g. 1,8"
        spec = models.MODELS.get(self.model.value)
        self.model_help.value = "" if spec is None else f"<span style='font-size:12px'>{html.escape(spec.description)}</span>"

    def _resolved(self) -> tuple[str, Any]:
        device = envmod.resolve_device(self.device.value or "auto")
        dtype = envmod.resolve_dtype(self.dtype.value, envmod.device_info(device))
        return device, dtype

    def _refresh_modes(self) -> None:
        try:
            device, dtype = self._resolved()
        except UserError:
            return
        info = envmod.device_info(device)
        self.resolved.value = (f"<span style='font-size:12px;color:#555'>runs on {device} ({html.escape(info.name)}), "
                               f"{envmod.dtype_name(dtype)}</span>")
        self.modes.set_available(modes_mod.availability(info, dtype), {n: m.description for n, m in modes_mod.MODES.items()})

    # ---- what Run sends to the engine ----
    def _model_args(self) -> dict[str, Any]:
        if self.model.value == OTHER_MODEL:
            name = self.model_name.value.strip()
            if not name:
                raise UserError("type a model name: hf:<hub id or local folder>, hf-config:<architecture> or the path "
                                "of a .gguf file.")
            if name.lower().endswith(".gguf") and not name.startswith(tuple(models.FORMS)):
                name = f"hf:{name}"  # a bare path to a .gguf file
            return {"model": models.get(name).name}  # the command line's errors, before anything runs
        if self.model.value != NOTEBOOK_MODULE:
            return {"model": self.model.value}
        ns = self.namespace if self.namespace is not None else default_namespace()
        name = self.module_name.value.strip()
        if not name:
            raise UserError("type the variable name of an nn.Module from this notebook, or pick a registry model.")
        if name not in ns:
            raise UserError(f"there is no variable {name!r} in this notebook; run the cell that defines it first.")
        if not isinstance(ns[name], nn.Module):
            raise UserError(f"{name} is a {type(ns[name]).__name__}, not an nn.Module; give the variable that holds your model.")
        expr = self.inputs_name.value.strip()
        if not expr:
            raise UserError(f"type the example inputs of {name} (a variable name, or a tuple like (x, mask)).")
        try:
            # Evaluated in the notebook's namespace with no builtins: variable names and tuples of them.
            inputs = eval(expr, {"__builtins__": {}}, ns)  # noqa: S307
        except Exception as e:
            raise UserError(f"could not read the example inputs {expr!r}: {type(e).__name__}: {e}.") from None
        return {"model": ns[name], "example_inputs": inputs}

    def sweep_kwargs(self) -> dict[str, Any]:
        """The arguments Run passes to `torchao_nb.sweep`, validated (bad input raises UserError)."""
        modes = self.modes.value
        if not modes:
            raise UserError("no mode selected; click at least one mode button.")
        model = self._model_args()
        # A module of the notebook runs on its example inputs as given; batch sizes are for registry models.
        batch_sizes = None if "example_inputs" in model else check_batch_sizes(self.batch_sizes.value.split(","))
        group = {"group_size": self.int4_group.value}  # int4weightonly-hqq is compared with int4 at one size
        mode_settings = {"int4weightonly": group, "int4weightonly-hqq": group} if self.int4_group.value else {}
        return dict(model, modes=list(modes), device=self.device.value or "auto", dtype=self.dtype.value,
                    batch_sizes=batch_sizes, compile=self.compile.value, baseline=self.baseline.value,
                    threads=self.threads.value, policy=self.policy, isolate=self.isolate, **mode_settings)

    # ---- running ----
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> threading.Thread:
        """What the Run button does: validate, then sweep on a background thread."""
        if self.running:
            raise _Busy("a run is already in progress; press Stop or wait for it to finish.")
        self._clear_error()
        kwargs = self.sweep_kwargs()
        self._stop.clear()
        self._rows = []
        self.results = None
        self.progress.max = len(kwargs["batch_sizes"] or [1]) * len(kwargs["modes"])  # the panel runs one model
        self.progress.value = 0
        self.progress.bar_style = ""
        self.table.value = table_html(None)
        self.texts.value = ""
        self.figure_view.value = b""
        self.figure_view.layout.display = "none"
        self._set_running(True)
        self.status.value = "measuring the unquantized reference…"
        self._log(f"run: {_describe(kwargs)}")
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
        if self.error is not None and not isinstance(self.error, _CallbackError):
            raise self.error
        return self.results

    def stop(self) -> None:
        """Stop the running sweep: at once with a worker process (the cell in progress leaves no row), else after the cell."""
        if self.running:
            self._stop.set()
            self.status.value = "stopping…" if self.isolate else "stopping after this cell…"

    def _work(self, kwargs: dict[str, Any]) -> None:
        self._run_error = None
        try:
            with library_noise_to(self._log):
                rs = sweep(**kwargs, progress=False, stop=self._stop, on_row=self._on_row)
            self.results = rs
            self._show(rs, final=True)
        except Exception as e:  # shown in the panel and kept; an exception here would otherwise vanish
            self._fail(e)
        finally:
            self._set_running(False)

    def _on_row(self, row: Row) -> None:
        # Runs on the sweep thread, after each cell.
        with self._lock:
            self._rows.append(row)
            rows = list(self._rows)
        self.progress.value = len(rows)
        self._log(f"{row.model} bs={row.batch_size} {row.mode}: {row.status}"
                  + (f" {row.median_ms:.3f} ms" if row.median_ms is not None else "") + (f" ({row.reason})" if row.reason else ""))
        self.results = ResultSet(tuple(rows), {})
        self._show(self.results, final=False)

    def _show(self, rs: ResultSet, final: bool) -> None:
        self.table.value = table_html(rs)
        self.texts.value = tables.generations_html(rs, inline=True)
        failed = [r for r in rs if r.status in ("error", "wrong")]
        if any(r.status == "ok" for r in rs):
            try:
                self.figure_view.value = drawing.to_png(self.figure(rs), dpi=90)
                self.figure_view.layout.display = ""
            except Exception as e:  # a drawing failure must not end the sweep, only be shown and kept
                self._run_error = _CallbackError(f"drawing the results failed: {type(e).__name__}: {e}")
                self._fail(self._run_error, cause=e)
        if final:  # the run is now the latest action: a Run clicked while it went on was refused, and that is over
            self.error = self._run_error
        self.errors.value = error_html(self.error, failed)
        n = len(rs)
        if final:
            stopped = self._stop.is_set() and n < self.progress.max
            self.status.value = f"{'stopped' if stopped else 'done'}: {n} cell{'s' * (n != 1)}"
            self.progress.bar_style = "danger" if self.error else "warning" if stopped or failed else "success"
            self.export_button.disabled = n == 0
        else:
            self.status.value = f"{n}/{self.progress.max} cells"

    def _fail(self, error: BaseException, cause: BaseException | None = None) -> None:
        self.error = error
        self._log("".join(traceback.format_exception(cause or error)))
        self.errors.value = error_html(error, [r for r in self._rows if r.status in ("error", "wrong")])
        if not isinstance(error, _Busy):  # a refused click leaves the run in progress, and its progress, alone
            self.progress.bar_style = "danger"
            self.status.value = "failed"

    def _clear_error(self) -> None:
        """A new action starts: the error shown is no longer the latest; the results' failed cells stay listed."""
        self.error = None
        self.errors.value = error_html(None, [r for r in self.results or () if r.status in ("error", "wrong")])
        if self.progress.bar_style == "danger":
            self.progress.bar_style = ""

    def _guarded(self, action: Callable[[], Any]) -> None:
        # ipywidgets' click dispatcher only logs exceptions: catch, show and keep them instead.
        try:
            action()
        except Exception as e:
            self._fail(e)

    def _set_running(self, running: bool) -> None:
        self.run_button.disabled = running
        self.stop_button.disabled = not running
        if running:
            self.export_button.disabled = True

    def _log(self, text: str) -> None:
        with self._lock:
            self._log_lines.append(text.rstrip())
            del self._log_lines[:-500]  # keep the widget light on long sessions
            self.log.value = "\n".join(self._log_lines)

    # ---- export ----
    def export(self, out: str | None = None) -> Path:
        """Write the latest results (rows.jsonl, results.csv/.json, environment.json) and report.html into `out`;
        earlier results of another sweep there are moved to `out/previous/<time>/` first."""
        self._clear_error()
        if not self.results:
            raise UserError("nothing to export yet: press Run first.")
        from . import report
        from .folder import ResultsFolder

        folder = Path(out or self.export_dir.value.strip() or "results/panel")
        try:
            with ResultsFolder(folder, "type another folder") as target:  # locked: a run writing there is safe
                aside = target.replace_all(self.results)
                page = report.build([folder], folder / "report.html").html
        except OSError as e:
            raise UserError(f"cannot write to {folder}: {e.strerror or e}; type another folder.") from None
        moved = f" (its earlier results are in {aside})" if aside else ""
        self.status.value = f"exported to {html.escape(str(folder))}{html.escape(moved)}"
        self._log(f"exported: {folder}/rows.jsonl, results.csv, results.json, environment.json, {page.name}{moved}")
        return folder

    def table_frame(self):
        """The latest results as a DataFrame (empty before the first run)."""
        return (self.results or ResultSet()).to_dataframe()


class _Busy(RuntimeError):
    """Run was clicked while a run is in progress: refused, shown until that run ends."""


class _CallbackError(RuntimeError):
    """A failure while showing results (drawing a figure): shown and kept, but the sweep goes on."""


def _describe(kwargs: dict[str, Any]) -> str:
    model = kwargs["model"] if isinstance(kwargs["model"], str) else type(kwargs["model"]).__name__
    return (f"model={model} modes={','.join(kwargs['modes'])} device={kwargs['device']} dtype={kwargs['dtype']} "
            f"batch={','.join(map(str, kwargs['batch_sizes'] or ['as given']))} compile={kwargs['compile']} baseline={kwargs['baseline']} "
            f"threads={kwargs['threads']}")

