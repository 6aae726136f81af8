"""The sweep: models × batch sizes × modes, each group of cells run by an executor, rows saved as they finish."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shlex
import shutil
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from . import autoquant  # noqa: F401  (registers the autoquant mode)
from . import baseline as baseline_mod
from . import config, executors, models
from . import modes as modes_mod
from .cell import ModelSource, cell_key
from .errors import UserError
from .results import ResultSet, Row, append_jsonl, atomic_write, read_jsonl

ROWS_FILE = "rows.jsonl"
RESULT_FILES = (ROWS_FILE, "results.csv", "results.json", "environment.json")


def resolve_models(model: Any, example_inputs: Any) -> list[ModelSource]:
    if isinstance(model, nn.Module):
        if example_inputs is None:
            raise UserError("a module needs example_inputs= (a tuple of positional args or a dict of keyword args).")
        return [ModelSource(type(model).__name__, module=model, inputs=models.check_inputs(example_inputs))]
    if example_inputs is not None:
        raise UserError("example_inputs= is only for an nn.Module; registry models build their own inputs.")
    names = [model] if isinstance(model, str) or model is None else list(model)
    out = []
    for n in names:
        for part in (n or models.DEFAULT_MODEL).split(","):
            if part.strip():
                out.append(ModelSource(models.get(part.strip()).name))
    if not out:
        raise UserError(f"no model given; valid models: {', '.join(models.MODELS)}.")
    return out


# ---- the results folder ---------------------------------------------------------------------------

def check_out_dir(out: str | os.PathLike) -> Path:
    """Create the output folder and prove it is writable before any minute is spent measuring."""
    p = Path(out)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write results to {p}: {e.strerror or e}; choose another --out folder.") from None
    return p


def _set_aside_previous(out: Path) -> None:
    """A fresh (non-resume) sweep into a used folder moves the old files into previous/<time>/."""
    old = [out / n for n in RESULT_FILES if (out / n).exists()]
    if old:
        dest = out / "previous" / _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        dest.mkdir(parents=True)
        for f in old:
            shutil.move(str(f), dest / f.name)


def _done_rows(out: Path | None, resume: bool, retry_errors: bool) -> dict[tuple, Row]:
    """Rows a resumed sweep re-uses: every recorded cell (errors too, unless retried: a crash would crash again)."""
    if out is None or not resume:
        return {}
    return {r.key: r for r in read_jsonl(out / ROWS_FILE) if not (retry_errors and r.status == "error")}


# ---- the steps of a sweep ----------------------------------------------------------------------------

def _isolation(cfg: config.SweepConfig, sources: list[ModelSource]) -> config.SweepConfig:
    """A module that can't be sent to a worker process runs in this process, with a visible warning."""
    if not cfg.isolate:
        return cfg
    why = executors.check_sendable(sources)
    if why is None:
        return cfg
    warnings.warn(f"{why}; its cells run in this process instead, so a crash in one of them ends this process too. "
                  "Pass isolate=False to choose this yourself.", RuntimeWarning, stacklevel=3)
    return dataclasses.replace(cfg, isolate=False)


def _environment(cfg: config.SweepConfig, executor: executors.Executor) -> dict:
    environment = executor.environment(cfg)
    environment.update(
        compile=cfg.compile.enabled, baseline=cfg.compile.baseline, compile_mode=cfg.compile.mode,
        torchao_tuning=cfg.compile.torchao_tuning, batch_sizes=list(cfg.batch_sizes or []),
        seq_len=cfg.seq_len, isolation="worker process" if cfg.isolate else "in-process",
        baseline_settings=baseline_mod.describe_dicts(device=cfg.device) if cfg.compile.baseline else [],
        torchao_tuning_settings=(baseline_mod.describe_dicts(baseline_mod.TORCHAO_TUNING, cfg.device)
                                 if cfg.compile.torchao_tuning else []),
        sweep_settings=config.settings_dict(cfg),
        command=shlex.join([sys.executable, *sys.argv]),  # what started this sweep (in a notebook: its kernel)
    )
    return environment


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="cell", dynamic_ncols=True, leave=True)


def _run_cells(cfg: config.SweepConfig, sources: list[ModelSource], executor: executors.Executor, out: Path | None,
               done: dict[tuple, Row], keep: Callable[[Row], None], stop: threading.Event | None, bar) -> None:
    def finished(row: Row, saved: bool = False) -> None:
        if out is not None and not saved:
            append_jsonl(out / ROWS_FILE, row)
        keep(row)
        bar and bar.update(1)

    for source in sources:
        for batch in source.batch_sizes(cfg):
            if stop is not None and stop.is_set():
                return
            todo = []
            for mode in cfg.modes:
                key = cell_key(cfg, source, mode, batch)
                if key in done:
                    finished(done[key], saved=True)
                else:
                    todo.append(mode)
            if not todo:
                continue

            def phase(mode: str | None, what: str, name=source.name, batch=batch) -> None:
                bar and bar.set_description(f"{name} bs={batch}: {mode or 'reference'} ({what})", refresh=True)

            executor.run(executors.Group(cfg, source, batch, tuple(todo)), finished, phase, stop)


def sweep(model: str | Sequence[str] | nn.Module | None = None, modes: str | Sequence[str] | None = "all", *,
          example_inputs: Any = None, out: str | os.PathLike | None = None, resume: bool = False,
          retry_errors: bool = False, progress: bool = True, stop: threading.Event | None = None,
          on_row: Callable[[Row], None] | None = None, clock: Callable[[], float] | None = None,
          **options: Any) -> ResultSet:
    """Measure every (model, batch size, mode) cell; returns the rows, also written to `out` if given.

    `model` is a registry name (see `torchao_nb.models.MODELS`), a list of them, or an `nn.Module`
    with `example_inputs=` (a tuple of positional args or a dict of keyword args), used exactly as
    given. Rows are appended to `out/rows.jsonl` as they finish, so an interrupted sweep keeps them;
    `resume=True` re-uses the cells already there (`retry_errors=True` measures failed ones again).
    A mode with settings takes them by its name, e.g. `autoquant={"sqnr_floor_db": 30}`.
    `stop` (a threading.Event) ends the sweep: between cells in-process, at once with a worker.

    Options (see `torchao_nb.config.OPTIONS`):
    """
    sources = resolve_models(model, example_inputs)
    cfg = config.build(modes_mod.resolve_modes(modes), sources[0].module is not None, progress, **options)
    cfg = _isolation(cfg, sources)
    folder = check_out_dir(out) if out is not None else None
    done = _done_rows(folder, resume, retry_errors)
    if folder is not None and not resume:
        _set_aside_previous(folder)
    executor = executors.for_config(cfg, clock)
    rows: list[Row] = []
    environment: dict = {}
    bar = None
    try:
        environment = _environment(cfg, executor)
        if folder is not None:
            atomic_write(folder / "environment.json", json.dumps(environment, indent=1, default=str))
        bar = _progress(sum(len(s.batch_sizes(cfg)) for s in sources) * len(cfg.modes), progress)
        keep = lambda r: (rows.append(r), on_row and on_row(r))  # noqa: E731
        _run_cells(cfg, sources, executor, folder, done, keep, stop, bar)
    finally:
        executor.close()
        if bar is not None:
            bar.close()
        result = ResultSet(tuple(rows), environment)
        if folder is not None and rows:
            result.save(folder)
    return result


sweep.__doc__ += "".join(f"\n    - {o.name} (default {o.default!r}): {o.help}" for o in config.OPTIONS)
