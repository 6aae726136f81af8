"""The sweep: models × batch sizes × modes, each group of cells run by an executor, rows saved as they finish."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import sys
import threading
import warnings
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import autoquant  # noqa: F401  (registers the autoquant mode)
from . import baseline as baseline_mod
from . import compile_cache as compile_cache_mod
from . import config, executors, measure, models, repro, sending
from . import modes as modes_mod
from .cell import ModelSource, cell_spec
from .errors import Notice, UserError
from .folder import ResultsFolder
from .results import ResultSet, Row, in_order
from .spec import CellSpec


def resolve_models(model: Any, example_inputs: Any) -> list[ModelSource]:
    if isinstance(model, nn.Module):
        if example_inputs is None:
            raise UserError("a module needs example_inputs= (a tuple of positional args or a dict of keyword args).")
        return [ModelSource(type(model).__name__, module=model, inputs=models.check_inputs(example_inputs))]
    if example_inputs is not None:
        raise UserError("example_inputs= is only for an nn.Module; registry models build their own inputs.")
    names = [model] if isinstance(model, str) or model is None else model
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) or n is None for n in names):
        raise UserError(_model_help(model))
    out = []
    for n in names:
        for part in (n or models.DEFAULT_MODEL).split(","):
            if part.strip():
                out.append(ModelSource(models.get(part.strip()).name))
    if not out:
        raise UserError(f"no model given; valid models: {', '.join(models.MODELS)}.")
    twice = sorted({s.name for s in out if [t.name for t in out].count(s.name) > 1})
    if twice:
        raise UserError(f"model {', '.join(twice)} is given twice: a run measures each cell once (its rows share one "
                        "key); give each model once.")
    return out


def _model_help(model: Any) -> str:
    if isinstance(model, (list, tuple)) and any(isinstance(m, nn.Module) for m in model):
        return ("model= takes one nn.Module at a time (with its example_inputs=); a list is for registry names, "
                "e.g. ['mlp', 'llama-tiny'].")
    return (f"model= takes a registry name (e.g. 'mlp'), a list of names, or an nn.Module with example_inputs=; "
            f"got {type(model).__name__}.")


def _warn_prequantized(sources: list[ModelSource]) -> None:
    """Said once, before any cell runs; each quantized mode's row says it too."""
    for source in sources:
        if source.prequantized:
            warnings.warn(f"{source.name}: {source.prequantized}; its quantized modes are skipped.", Notice,
                          stacklevel=3)


# ---- the steps of a sweep ----------------------------------------------------------------------------

def _isolation(cfg: config.SweepConfig, sources: list[ModelSource]) -> config.SweepConfig:
    """A module that can't be sent to a worker process runs in this process, with a visible warning."""
    if not cfg.isolate:
        return cfg
    why = sending.check_sendable(sources)
    if why is None:
        return cfg
    warnings.warn(f"{why}; its cells run in this process instead, so a crash in one of them ends this process too. "
                  "Pass isolate=False to choose this yourself.", RuntimeWarning, stacklevel=3)
    return dataclasses.replace(cfg, isolate=False)


def _environment(cfg: config.SweepConfig, executor: executors.Executor) -> dict:
    environment = executor.environment(cfg)
    environment.update(
        compile=cfg.compile.enabled, baseline=cfg.compile.baseline, compile_mode=cfg.compile.mode,
        tuning=cfg.compile.tuning, batch_sizes=list(cfg.batch_sizes or []),
        seq_len=cfg.seq_len, isolation="worker process" if cfg.isolate else "in-process",
        baseline_settings=baseline_mod.describe_dicts(device=cfg.device) if cfg.compile.baseline else [],
        tuning_settings=baseline_mod.describe_dicts(baseline_mod.TUNINGS[cfg.compile.tuning].settings, cfg.device),
        sweep_settings=config.settings_dict(cfg),
        command=shlex.join([sys.executable, *sys.argv]),  # what started this sweep (in a notebook: its kernel)
    )
    return environment


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="cell", dynamic_ncols=True, leave=True)


def _cells(cfg: config.SweepConfig, sources: list[ModelSource]) -> list[tuple[ModelSource, CellSpec]]:
    """Every (model, batch size, mode) cell of the sweep, in order: its model and the spec its row will have."""
    return [(source, cell_spec(cfg, source, mode, batch))
            for source in sources for batch in source.batch_sizes(cfg) for mode in cfg.modes]


def _run_cells(cfg: config.SweepConfig, cells: list, executor: executors.Executor, folder: ResultsFolder | None,
               done: dict[CellSpec, Row], keep: Callable[[Row], None], stop: threading.Event | None, bar) -> None:
    def finished(row: Row, saved: bool = False) -> None:
        if folder is not None and not saved:
            folder.append(row)
        keep(row)
        bar and bar.update(1)

    groups: dict[tuple[int, int], tuple[ModelSource, list[CellSpec]]] = {}  # (model, batch) → its cells, in order
    for source, spec in cells:
        groups.setdefault((id(source), spec.batch_size), (source, []))[1].append(spec)
    for source, specs in groups.values():
        if stop is not None and stop.is_set():
            return
        todo = []
        for spec in specs:
            if spec in done:
                finished(done[spec], saved=True)
            else:
                todo.append(spec.mode)
        if not todo:
            continue
        batch = specs[0].batch_size

        def phase(mode: str | None, what: str, name=source.name, batch=batch) -> None:
            bar and bar.set_description(f"{name} bs={batch}: {mode or 'reference'} ({what})", refresh=True)

        executor.run(executors.Group(cfg, source, batch, tuple(todo)), finished, phase, stop)


def sweep(model: str | Sequence[str] | nn.Module | None = None, modes: str | Sequence[str] | None = "all", *,
          example_inputs: Any = None, out: str | os.PathLike | None = None, resume: bool = False,
          retry_errors: bool = False, progress: bool = True, stop: threading.Event | None = None,
          on_row: Callable[[Row], None] | None = None, clock: Callable[[], float] | None = None,
          # The options of config.OPTIONS, in its order, with its defaults and annotations (a test holds them
          # together: tests/test_options.py prints these lines when one of them changes).
          device: str = "auto",
          dtype: str | torch.dtype | None = None,
          batch_sizes: int | str | Sequence[int] | None = None,
          seq_len: int | None = None,
          threads: int | None = None,
          compile: bool = True,
          baseline: bool = True,
          compile_mode: str = "default",
          tuning: str | None = None,
          fullgraph: bool = False,
          diagnose: bool = False,
          isolate: bool = True,
          cell_timeout_s: float = config.DEFAULT_CELL_TIMEOUT_S,
          save_reload: bool = True,
          cache: str = "warm",
          time_together: bool = True,
          compile_cache: str | os.PathLike | None = None,
          save_compile_cache: bool = False,
          compile_workers: int = 0,
          policy: measure.TimingPolicy | None = None,
          **mode_settings: Any) -> ResultSet:
    """Measure every (model, batch size, mode) cell; returns the rows, also written to `out` if given.

    `model` is a registry name (see `torchao_nb.models.MODELS`), a list of them, or an `nn.Module`
    with `example_inputs=` (a tuple of positional args or a dict of keyword args), used exactly as
    given. Rows are appended to `out/rows.jsonl` as they finish, so an interrupted sweep keeps them, and
    `out/results.csv|json` always hold every row of rows.jsonl. `out` is locked while the sweep writes it.
    Without `resume` the folder's earlier files move to `out/previous/<time>/`. `resume=True` re-uses the
    rows measured with exactly this run's settings (`Row.key`; errors too: `retry_errors=True` measures
    them again), keeps rows of other cells measured under the same settings, and moves the rest aside
    (a Notice says what and why). The returned ResultSet holds this run's cells.
    A mode with settings takes them by its name, e.g. `autoquant={"sqnr_floor_db": 30}`.
    `stop` (a threading.Event) ends the sweep: between cells in-process, at once with a worker.

    Each option from `device` on is described in `torchao_nb.config.OPTIONS` (its help is what
    `python -m torchao_nb run --help` prints).
    """
    given = locals()  # the options as one dict, for config.build to check
    options = {o.name: given[o.name] for o in config.OPTIONS if o.name in given} | mode_settings
    sources = resolve_models(model, example_inputs)
    cfg = config.build(modes_mod.resolve_modes(modes), sources[0].module is not None, progress, **options)
    sending.check_copyable(sources)
    cfg = _isolation(cfg, sources)
    _warn_prequantized(sources)
    cells = _cells(cfg, sources)
    folder = ResultsFolder(out) if out is not None else None
    if folder is not None and cfg.save_compile_cache and cfg.compile.enabled:
        cfg = dataclasses.replace(cfg, compile_cache_to=str(folder.path / compile_cache_mod.FILE_NAME))
    repro_to = folder.path / repro.FOLDER if folder is not None else repro.default_folder()  # made on a first failure
    cfg = dataclasses.replace(cfg, repro_to=str(repro_to))
    with folder or contextlib.nullcontext():
        done = folder.start([spec for _, spec in cells], resume, retry_errors) if folder is not None else {}
        return _measure(cfg, cells, folder, done, stop, on_row, clock, progress)


def _measure(cfg: config.SweepConfig, cells: list, folder: ResultsFolder | None, done: dict[CellSpec, Row],
             stop: threading.Event | None, on_row: Callable[[Row], None] | None, clock, progress: bool) -> ResultSet:
    """Run the cells not already done; this run's rows (re-used ones included) and its environment."""
    executor = executors.for_config(cfg, clock)
    rows: list[Row] = []
    environment: dict = {}
    bar = None
    try:
        environment = _environment(cfg, executor)
        if folder is not None:
            if folder.summary:
                environment["resume"] = folder.summary
            folder.write_environment(environment)
        bar = _progress(len(cells), progress)
        keep = lambda r: (rows.append(r), on_row and on_row(r))  # noqa: E731
        _run_cells(cfg, cells, executor, folder, done, keep, stop, bar)
    finally:
        executor.close()
        if bar is not None:
            bar.close()
    return ResultSet(in_order(rows, [spec for _, spec in cells]), environment)

