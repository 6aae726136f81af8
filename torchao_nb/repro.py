"""A bug report in one file: for a wrong or crashed cell, the smallest standalone torch + torchao script that still
fails, found by running candidate scripts in fresh processes; and those scripts re-run later (`repro OUT`)."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import compiling, models
from . import env as envmod
from . import modes as modes_mod
from .extras import Extras, Repro, extra_text
from .repro_script import (KIND_LINE, KINDS, Capture, Kind, Tried, linear_piece, one_line, quantize_code, script,
                           standalone_source, whole_piece)
from .results import Row

BUDGET_S = 60.0
BUDGET_ENV = "TORCHAO_NB_REPRO_S"  # seconds per failing row; 0 writes no repro (the test suite sets it)
FOLDER = "repro"  # OUT/repro/<model>-<mode>-bs<b>.py
# A Python exception whose innermost frame is in one of these is torch's or torchao's (inductor's generated code too).
TORCH_PATHS = (f"{os.sep}torch{os.sep}", f"{os.sep}torchao{os.sep}", "torchinductor")


def crash_kind(reason: str) -> str | None:
    """The kind of a row the supervisor wrote for a worker it lost: a crash by a signal, or a time limit."""
    if reason.startswith("worker crashed (SIG"):
        return "crash"
    return "hang" if reason.startswith("timed out after") else None


def inside_torch(e: BaseException) -> bool:
    """Whether an exception was raised inside torch or torchao (its innermost frame), not in a user's code."""
    frames = traceback.extract_tb(e.__traceback__)
    return bool(frames) and any(p in frames[-1].filename for p in TORCH_PATHS)


# ---- the pieces of a model to try ---------------------------------------------------------------------------

def _input_shapes(module: nn.Module, inputs: models.Inputs) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Each Linear's input shape and dtype the first time one unquantized forward pass calls it."""
    seen: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    with modes_mod.seeing_linear_inputs(module, lambda fqn, x: seen.setdefault(fqn, (tuple(x.shape), x.dtype))), \
            torch.no_grad():
        models.call(module, inputs)
    return seen


def capture(cfg, name: str, module: nn.Module, inputs: models.Inputs, mode: str, batch: int,
            compile: compiling.CompileSettings, kind: str, found: str) -> Capture:
    """The pieces to try, smallest first: each Linear the mode quantizes, once per distinct shape and input; then
    the whole model, when its class's source stands alone."""
    info = envmod.device_info(cfg.device)
    spec = modes_mod.get(mode)
    layers = modes_mod.linear_layers(module)
    shapes = _input_shapes(module, inputs)
    rows = tuple((fqn, math.prod(shape[:-1])) for fqn, (shape, _) in shapes.items())  # as Reference.layer_rows
    context = modes_mod.ApplyContext(device=cfg.device, layer_rows=rows)
    left_alone = modes_mod.layers_left_alone(layers, spec, info, cfg.dtype, context) if spec.apply is None else {}
    pieces, seen = [], set()
    for fqn, lin in layers.items():
        if fqn in left_alone or fqn not in shapes:
            continue
        key = (lin.in_features, lin.out_features, lin.bias is not None, lin.weight.dtype, *shapes[fqn])
        if key in seen:
            continue
        seen.add(key)
        code = quantize_code(mode, {"": lin}, info, cfg.dtype, cfg.settings_for(mode))
        pieces.append(linear_piece(fqn, lin, *shapes[fqn], cfg.device, code))
    fitting = {fqn: lin for fqn, lin in layers.items() if fqn not in left_alone}
    if fitting and standalone_source(type(module)) and _rebuilds(module):  # tried last: when no single layer fails
        whole = whole_piece(module, inputs, cfg.device, cfg.dtype,
                            quantize_code(mode, fitting, info, cfg.dtype, cfg.settings_for(mode)))
        pieces += [whole] if whole is not None else []
    return Capture(name, mode, batch, cfg.device, envmod.dtype_name(cfg.dtype), cfg.threads, compile, kind, found,
                   tuple(pieces))


def _rebuilds(module: nn.Module) -> bool:
    """Whether the model's class, called with no arguments, builds the same architecture (its tensors' names and
    shapes): then a script can rebuild it from its source."""
    try:
        made = type(module)()
    except Exception:
        return False
    shapes = lambda m: {k: tuple(t.shape) for k, t in m.state_dict().items()}  # noqa: E731
    return shapes(made) == shapes(module)


# ---- running scripts -----------------------------------------------------------------------------------------

def run_script(path: Path, timeout_s: float) -> Tried:
    """`python -I path` in a fresh process, from the script's own folder: torch and torchao only, never this
    checkout. Its whole process group is stopped at the time limit (inductor's compile workers with it)."""
    path = path.resolve()
    proc = subprocess.Popen([sys.executable, "-I", str(path)], cwd=path.parent, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=max(1.0, timeout_s))
        return Tried(proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return Tried(None, out, err)


def file_name(model: str, mode: str, batch: int) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]", "_", f"{model}-{mode}-bs{batch}") + ".py"


def hunt(cap: Capture, folder: Path, budget_s: float, start: float | None = None) -> Repro:
    """Try each piece, smallest first, each in a fresh process, until one fails the way the cell did or the budget
    (counted from `start`: the capture is part of it) is spent; the script of the one that did is kept as
    folder/<model>-<mode>-bs<b>.py."""
    start = time.monotonic() if start is None else start
    target = folder / file_name(cap.model, cap.mode, cap.batch)
    kind = KINDS[cap.kind]
    if not cap.pieces:
        return Repro(None, "no repro: the mode quantized no Linear layer of this model")
    folder.mkdir(parents=True, exist_ok=True)
    tried = 0
    with tempfile.TemporaryDirectory(prefix="torchao_nb-repro-try-") as scratch:
        trial = Path(scratch) / target.name
        for piece in cap.pieces:
            left = budget_s - (time.monotonic() - start)
            if left <= 0:
                break
            text = script(cap, piece)
            trial.write_text(text)
            result = run_script(trial, left)
            tried += 1
            if kind.shown_by(result):
                target.write_text(text)
                return Repro(_shown_path(target), f"{piece.what}; {result.exit_text()}; found in "
                             f"{time.monotonic() - start:.0f} s ({tried} of {len(cap.pieces)} pieces tried)", True)
    whole = cap.pieces[-1].whole
    target.write_text(script(cap, cap.pieces[-1] if whole else cap.pieces[0]))
    missing = "" if whole else ("; the whole model is not among them (its class's source does not stand alone, or "
                                "its class needs arguments)")
    return Repro(_shown_path(target), f"did not reproduce standalone: {tried} of {len(cap.pieces)} pieces tried in "
                 f"{time.monotonic() - start:.0f} s (budget {budget_s:g} s, {BUDGET_ENV}){missing}", False)


def _shown_path(path: Path) -> str:
    """What the row says: repro/x.py inside a results folder, the full path elsewhere (a temp folder)."""
    return f"{FOLDER}/{path.name}" if path.parent.name == FOLDER else str(path)


def budget() -> float | str:
    """The per-row budget in seconds, or why the setting is not one."""
    text = os.environ.get(BUDGET_ENV)
    if text is None:
        return BUDGET_S
    try:
        return float(text)
    except ValueError:
        return f"{BUDGET_ENV}={text!r} is not a number of seconds (0 turns repros off)"


def default_folder() -> str:
    """Where a sweep without out= writes its repros: a temp folder of its own, made only when a cell fails."""
    return os.path.join(tempfile.gettempdir(), f"torchao_nb-repro-{os.getpid()}-{time.strftime('%Y%m%d-%H%M%S')}")


def _with(row: Row, repro: Repro) -> Row:
    return dataclasses.replace(row, extra=extra_text(Extras.parse(row.extra), repro))


def _attached(cfg, row: Row, make: Callable[[], Capture], in_cell: bool = False) -> Row:
    """The row with its repro (or why it has none); never an exception, as a cell never raises."""
    seconds = budget()
    if seconds == 0 or not getattr(cfg, "repro_to", None):
        return row
    if isinstance(seconds, str):
        return _with(row, Repro(None, f"no repro: {seconds}"))
    if in_cell and cfg.isolate:  # the hunt is then part of a worker's cell, whose time limit must not end it
        seconds = min(seconds, cfg.cell_timeout_s / 4)
    start = time.monotonic()
    try:
        return _with(row, hunt(make(), Path(cfg.repro_to), seconds, start))
    except Exception as e:  # a repro is a courtesy: its failure must not cost the row
        return _with(row, Repro(None, f"no repro: {type(e).__name__}: {one_line(str(e), 300)}"))


def for_reference(cfg, ref, row: Row, kind: str) -> Row:
    """A cell that still has its model (a wrong output, an exception inside torch or torchao): its repro."""
    return _attached(cfg, row, lambda: capture(cfg, ref.name, ref.module, ref.inputs, row.mode, row.batch_size,
                                               ref.compile, kind, row.reason), in_cell=True)


def after_crash(cfg, source, row: Row) -> Row:
    """A cell whose worker died or ran out of time: its model is rebuilt here, unquantized, for the capture (the
    worker that had it is gone), and the tries run in fresh processes, as always."""
    kind = crash_kind(row.reason)
    if kind is None:
        return row

    def make() -> Capture:
        module, inputs, _ = source.build(cfg, row.batch_size)
        return capture(cfg, source.name, module, inputs, row.mode, row.batch_size, source.compile_settings(cfg),
                       kind, row.reason)
    with compiling.torch_threads(cfg.threads):
        return _attached(cfg, row, make)


# ---- `python -m torchao_nb repro OUT` -------------------------------------------------------------------------

def scripts_in(out: str | os.PathLike) -> list[Path]:
    from .errors import UserError

    folder = Path(out) / FOLDER
    found = sorted(folder.glob("*.py")) if folder.is_dir() else []
    if not found:
        raise UserError(f"no repro scripts in {folder}: a sweep writes one there for each wrong or crashed cell "
                        "(give the results folder of such a sweep)")
    return found


def verdict(path: Path, tried: Tried) -> str:
    """reproduces (it failed as its header says), fixed (exit 0), or fails differently (a new torch may have
    turned a crash into an exception: read its output)."""
    if tried.returncode == 0:
        return "fixed"
    kind = _kind_of(path.read_text())
    return "reproduces" if kind is None or kind.shown_by(tried) else "fails differently"


def _kind_of(text: str) -> Kind | None:
    line = next((ln for ln in text.splitlines() if ln.startswith(KIND_LINE)), None)
    return None if line is None else KINDS.get(line[len(KIND_LINE):].strip())


def issue_text(path: Path, tried: Tried) -> str:
    """A Markdown bug-report body for one script: title, the script, expected vs actual, collect_env."""
    text = path.read_text()
    title = text.splitlines()[0].lstrip("# ").strip()
    kind = _kind_of(text)
    tail = "\n".join((tried.stdout.strip().splitlines() + tried.stderr.strip().splitlines())[-15:])
    return "\n".join([
        f"## {title}", "",
        "### Reproduction", "", f"Save as `{path.name}` and run `python {path.name}`:", "", "```python",
        text.rstrip(), "```", "",
        "### Expected", "", kind.expected if kind else "the script exits 0", "",
        "### Actual", "", f"{kind.what if kind else 'it fails'}: {tried.exit_text()}", "", "```", tail or "(no output)",
        "```", "",
        "### Versions", "", "Output of `python -m torch.utils.collect_env`:", "", "```", envmod.collect_env_text().strip(),
        "```", ""])
