"""A results folder holds one sweep's rows: locked while written, rows appended safely, earlier files kept aside."""

from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .errors import Notice, UserError
from .results import (ENV_FILE, RESULTS_CSV, RESULTS_JSON, ROWS_FILE, JsonlRead, ResultSet, Row, append_jsonl,
                      atomic_write, in_order, read_rows, row_line)
from .spec import SETTING_FIELDS, CellSpec, differences

RESULT_FILES = (ROWS_FILE, RESULTS_CSV, RESULTS_JSON, ENV_FILE)
LOCK_FILE = ".torchao_nb.lock"
PREVIOUS = "previous"  # earlier files go to previous/<time>/, never deleted

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_SLUG = 80


def slug(name: str) -> str:
    """A file-system-safe name for a device, model or run label: letters, digits, '.', '_' and '-' only;
    long names are cut and end in a short hash of the full name so they stay distinct."""
    s = _UNSAFE.sub("-", str(name)).strip("-._")
    if not s:
        return "unknown"
    if len(s) > MAX_SLUG:
        s = s[: MAX_SLUG - 9].rstrip("-._") + "-" + hashlib.sha1(str(name).encode()).hexdigest()[:8]
    return s


def check_writable(path: str | os.PathLike, fix: str = "choose another --out folder") -> Path:
    """Create the folder and prove it is writable before any minute is spent measuring."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write results to {p}: {e.strerror or e}; {fix}.") from None
    return p


# ---- one writer at a time ---------------------------------------------------------------------------

def _owner_text(owner: dict) -> str:
    what = f"pid {owner.get('pid', '?')}"
    if owner.get("host") and owner.get("host") != socket.gethostname():
        what += f" on {owner['host']}"
    if owner.get("started"):
        what += f", since {owner['started']}"
    return what + (f": {owner['command']}" if owner.get("command") else "")


def _read_owner(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    data = os.read(fd, 4096)
    if not data.strip():
        return {}
    with contextlib.suppress(ValueError):
        owner = json.loads(data)
        if isinstance(owner, dict):
            return owner
    return {"pid": "?"}


class Lock:
    """An advisory lock on a folder: a lock file naming its owner (pid, host, start time, command).

    The operating system drops the lock when its process ends, however it ends, so a lock file left by a
    killed run is recognised as stale and taken over (with a Notice); a live owner makes it a UserError.
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> "Lock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _busy(self, owner: dict) -> UserError:
        return UserError(f"{self.path.parent} is in use by another run ({_owner_text(owner)}); wait for it to finish "
                         "or write to another folder.")

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): the lock file alone, which a crashed run leaves behind
            self._acquire_exclusive()
            return
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                owner = _read_owner(fd)
                os.close(fd)
                raise self._busy(owner) from None
            try:  # the owner before us may have removed the file between our open and our lock: lock the new one
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if not current:
                os.close(fd)
                continue
            left = _read_owner(fd)
            if left:
                warnings.warn(f"{self.path.parent} had a lock left by a run that ended without releasing it "
                              f"({_owner_text(left)}); taking it over", Notice, stacklevel=4)
            self._write_owner(fd)
            self._fd = fd
            return
        raise UserError(f"could not lock {self.path.parent}: other runs keep taking it; try again.")

    def _acquire_exclusive(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            fd = os.open(self.path, os.O_RDONLY)
            owner = _read_owner(fd)
            os.close(fd)
            raise UserError(f"{self._busy(owner)} If no run is using it, delete {self.path}.") from None
        self._write_owner(fd)
        self._fd = fd

    @staticmethod
    def _write_owner(fd: int) -> None:
        owner = dict(pid=os.getpid(), host=socket.gethostname(),
                     started=_dt.datetime.now().isoformat(timespec="seconds"), command=" ".join(sys.argv)[:300])
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(owner).encode())
        os.fsync(fd)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # before closing, while still ours: nobody else can be holding this file
        os.close(self._fd)
        self._fd = None


# ---- what a resumed sweep re-uses ------------------------------------------------------------------

@dataclass
class ResumePlan:
    """Rows of a folder sorted against the cells of this run."""

    reuse: dict[CellSpec, Row] = field(default_factory=dict)  # this run's cells measured with the same settings
    keep: list[Row] = field(default_factory=list)  # what stays in rows.jsonl: the re-used rows and other cells'
    remeasured: list[tuple[Row, str]] = field(default_factory=list)  # this run's cells, measured again: why
    set_aside: list[tuple[Row, str]] = field(default_factory=list)  # other cells, measured under other settings


def plan_resume(rows: Sequence[Row], specs: Sequence[CellSpec], retry_errors: bool) -> ResumePlan:
    """Which rows a resumed sweep re-uses (equal specs), measures again (and why), keeps or sets aside.

    A folder holds one sweep: rows of other cells stay only when measured under this run's settings."""
    plan = ResumePlan()
    wanted = set(specs)
    mine = {s.cell: s for s in specs}
    last = {r.spec: i for i, r in enumerate(rows)}
    for i, r in enumerate(rows):
        spec = r.spec
        if last[spec] != i:
            (plan.remeasured if spec.cell in mine else plan.set_aside).append((r, "an older row of the same cell"))
        elif spec in wanted and retry_errors and r.status == "error":
            plan.remeasured.append((r, "failed before (--retry-errors)"))
        elif spec in wanted:
            plan.reuse[spec] = r
            plan.keep.append(r)
        elif spec.cell in mine:
            plan.remeasured.append((r, "measured with " + differences(spec, mine[spec.cell])))
        elif spec.settings != specs[0].settings:
            plan.set_aside.append((r, "measured with " + differences(spec, specs[0], SETTING_FIELDS)))
        else:
            plan.keep.append(r)
    return plan


def _counted(pairs: Sequence[tuple[Row, str]]) -> str:
    counts = collections.Counter(why for _, why in pairs)
    return "; ".join(f"{n} {why}" for why, n in counts.items())


def resume_message(path: Path, plan: ResumePlan, cells: int, bad: JsonlRead | None, aside: Path | None) -> str:
    """One paragraph: how many cells are re-used, why the others are measured, what was kept aside and where."""
    todo = cells - len(plan.reuse)
    again = len({r.spec.cell for r, _ in plan.remeasured})
    parts = [f"resuming {path}: re-using {len(plan.reuse)} of {cells} cells (rows measured with the same settings)"]
    if todo:
        why = [_counted(plan.remeasured)] if plan.remeasured else []
        why += [f"{todo - again} not measured before"] if todo > again else []
        parts.append(f"measuring {todo}: {'; '.join(why)}")
    others = len(plan.keep) - len(plan.reuse)
    if others:
        parts.append(f"{others} row{'s' * (others != 1)} of other cells kept")
    if plan.set_aside:
        parts.append(f"rows of other cells set aside: {_counted(plan.set_aside)}")
    if bad is not None and bad.bad:
        parts.append(bad.describe_bad(ROWS_FILE) + "; those lines are left out, and a cell whose row they held is "
                     "measured again")
    if aside is not None:
        parts.append(f"the earlier files are kept in {aside}")
    return "; ".join(parts)


# ---- the folder ----------------------------------------------------------------------------------

class ResultsFolder:
    """One sweep's folder, locked while open. Rows are appended to rows.jsonl as they finish and results.csv /
    results.json are rewritten after each, so they always hold every row of rows.jsonl, even after a crash."""

    def __init__(self, path: str | os.PathLike, fix: str = "choose another --out folder"):
        self.path = check_writable(path, fix)
        self.rows: list[Row] = []
        self.environment: dict = {}
        self.summary = ""  # what a resume re-used and why it measures the rest; "" for a fresh sweep
        self.specs: Sequence[CellSpec] = ()  # this sweep's cells: the results files list their rows in this order
        self._lock = Lock(self.path)

    def __enter__(self) -> "ResultsFolder":
        self._lock.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()

    def set_aside(self, move: bool = True) -> Path | None:
        """Move (or copy) the results files into previous/<time>/; None when there were none."""
        old = [self.path / n for n in RESULT_FILES if (self.path / n).exists()]
        if not old:
            return None
        dest = self.path / PREVIOUS / _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        dest.mkdir(parents=True)
        for f in old:
            (shutil.move if move else shutil.copy2)(str(f), dest / f.name)
        return dest

    def _earlier(self) -> tuple[list[Row], JsonlRead | None]:
        try:
            if (self.path / ROWS_FILE).exists():
                read = read_rows(self.path / ROWS_FILE)
                return list(read.rows), read
            if not any((self.path / n).exists() for n in RESULT_FILES):
                return [], None
            # results files without rows.jsonl (an export, an older version): their rows
            return list(ResultSet.load(self.path).rows), None
        except (FileNotFoundError, ValueError) as e:  # ValueError: a SchemaError too (a newer version's files)
            raise UserError(f"cannot resume {self.path}: {e}. Run without --resume: the earlier files are then "
                            f"moved to {self.path / PREVIOUS}/.") from None

    def start(self, specs: Sequence[CellSpec], resume: bool, retry_errors: bool) -> dict[CellSpec, Row]:
        """Fresh: the earlier files are moved aside. Resumed: the rows this run re-uses (equal specs); rows
        it measures again, rows of other settings and unreadable lines leave rows.jsonl, the earlier files are
        copied aside, and a Notice says what happened."""
        self.specs = specs
        if not resume:
            self.set_aside(move=True)
            return {}
        earlier, read = self._earlier()
        plan = plan_resume(earlier, specs, retry_errors)
        changed = bool(plan.remeasured or plan.set_aside or (read is not None and read.bad))
        aside = self.set_aside(move=False) if changed else None
        if changed or read is None:
            self._write_rows(plan.keep)
        self.rows = list(plan.keep)
        self.summary = resume_message(self.path, plan, len(set(specs)), read, aside)
        warnings.warn(self.summary, Notice, stacklevel=3)
        return plan.reuse

    def _write_rows(self, rows: Sequence[Row]) -> None:
        if rows or (self.path / ROWS_FILE).exists():
            atomic_write(self.path / ROWS_FILE, b"".join(row_line(r) for r in rows))

    def write_environment(self, environment: dict) -> None:
        self.environment = environment
        atomic_write(self.path / ENV_FILE, json.dumps(environment, indent=1, default=str))
        self._write_results()

    def append(self, row: Row) -> None:
        append_jsonl(self.path / ROWS_FILE, row)
        self.rows.append(row)
        self._write_results()

    def _write_results(self) -> None:
        if self.rows:
            ResultSet(in_order(self.rows, self.specs), self.environment).save(self.path)

    def replace_all(self, results: ResultSet) -> Path | None:
        """Write `results` as the folder's only sweep (an export): earlier files that hold other rows are moved
        aside first; returns where they went (None: there were none, or they held these same rows)."""
        earlier = []
        with contextlib.suppress(UserError), warnings.catch_warnings():
            warnings.simplefilter("ignore", Notice)
            earlier = self._earlier()[0]
        has_files = any((self.path / n).exists() for n in RESULT_FILES)
        aside = self.set_aside(move=True) if has_files and tuple(earlier) != tuple(results.rows) else None
        self.rows = list(results.rows)
        self._write_rows(self.rows)
        self.write_environment(results.environment)
        return aside
