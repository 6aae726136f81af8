"""Sweeps beyond one machine: a plan of work units, which unit this job runs, where it writes, and merging.

A *unit* is one model × one batch size × its modes, on one device: the smallest piece of a sweep
that shares a reference output, and so the piece one array-job element (SLURM array task,
Kubernetes Indexed Job pod, CI matrix entry, submitit job) runs. A plan is a JSON Lines file:

    {"format": "torchao_nb-plan", "version": 1, "units": 3}
    {"index": 0, "model": "mlp", "batch_size": 1, "modes": ["noquant", ...], "device": "auto", "options": {...}}
    ...

Each unit writes to ROOT/<device name>/<model>-bs<b>/ (rows.jsonl as cells finish, then the
results files), so a preempted or requeued job resumes there, and `merge` gathers every unit's
folder into one set of rows, keeping cells from different devices apart.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import UserError
from .folder import ResultsFolder, slug
from .results import ENV_FILE, RESULTS_JSON, ROWS_FILE, ResultSet, Row, atomic_write, read_rows

PLAN_FORMAT = "torchao_nb-plan"
PLAN_VERSION = 1
# Where the job index comes from when --index is not given, in this order.
INDEX_VARIABLES = ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX")


class PlanError(UserError):
    """A plan file or a unit index that can't be used: one clear line for the user."""


def _json_safe(options: Mapping[str, Any], what: str) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(dict(options), allow_nan=False))
    except (TypeError, ValueError) as e:
        raise PlanError(f"{what}: sweep options must be plain JSON values (str, number, bool, None, lists, dicts): {e}") from None


@dataclass(frozen=True)
class Unit:
    """One array-job element: a model at one batch size with its modes, on one device."""

    model: str
    batch_size: int
    modes: tuple[str, ...]
    device: str = "auto"  # as given to the sweep; resolved on the machine that runs the unit
    options: dict[str, Any] = field(default_factory=dict, hash=False)  # the other sweep options (dtype, compile, ...)

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model:
            raise PlanError(f"a unit needs a model name, not {self.model!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise PlanError(f"unit {self.model}: batch size must be a positive integer, not {self.batch_size!r}")
        modes = (self.modes,) if isinstance(self.modes, str) else tuple(self.modes)
        if not modes or not all(isinstance(m, str) and m for m in modes):
            raise PlanError(f"unit {self.model}-bs{self.batch_size}: needs one or more mode names, not {self.modes!r}")
        object.__setattr__(self, "modes", modes)
        if not isinstance(self.device, str) or not self.device:
            raise PlanError(f"unit {self.model}-bs{self.batch_size}: device must be a name such as auto, cpu or cuda")
        object.__setattr__(self, "options", _json_safe(self.options, f"unit {self.model}-bs{self.batch_size}"))

    @property
    def name(self) -> str:
        """The unit's folder name: <model>-bs<b>, safe for any file system."""
        return f"{slug(self.model)}-bs{self.batch_size}"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "batch_size": self.batch_size, "modes": list(self.modes),
                "device": self.device, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Unit":
        missing = [k for k in ("model", "batch_size", "modes") if k not in data]
        if missing:
            raise PlanError(f"missing {', '.join(missing)}")
        if not isinstance(data["modes"], list):
            raise PlanError(f"modes must be a list of mode names, not {data['modes']!r}")
        options = data.get("options", {})
        if not isinstance(options, dict):
            raise PlanError(f"options must be an object, not {options!r}")
        return cls(model=data["model"], batch_size=data["batch_size"], modes=tuple(data["modes"]),
                   device=data.get("device", "auto"), options=options)


def grid(models: Sequence[str], batch_sizes: Sequence[int], modes: Sequence[str], device: str = "auto",
         options: Mapping[str, Any] | None = None) -> list[Unit]:
    """Every model × batch size as one unit (models outer, batch sizes inner), each with all the modes."""
    models, batch_sizes, modes = list(models), list(batch_sizes), list(modes)
    if not models:
        raise PlanError("a plan needs at least one model")
    if not batch_sizes:
        raise PlanError("a plan needs at least one batch size")
    if not modes:
        raise PlanError("a plan needs at least one mode")
    for name, items in (("model", models), ("batch size", batch_sizes), ("mode", modes)):
        dupes = sorted({str(x) for x in items if items.count(x) > 1})
        if dupes:
            raise PlanError(f"{name} given more than once: {', '.join(dupes)}")
    opts = dict(options or {})
    return [Unit(m, b, tuple(modes), device, opts) for m in models for b in batch_sizes]


# ---- the plan file ----


def plan_text(units: Sequence[Unit]) -> str:
    lines = [json.dumps({"format": PLAN_FORMAT, "version": PLAN_VERSION, "units": len(units)})]
    lines += [json.dumps({"index": i, **u.to_dict()}) for i, u in enumerate(units)]
    return "\n".join(lines) + "\n"


def write_plan(units: Sequence[Unit], path: str | os.PathLike) -> Path:
    if not units:
        raise PlanError("refusing to write an empty plan")
    names = [u.name for u in units]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise PlanError(f"two units would write to the same folder: {', '.join(clash)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, plan_text(units))
    return path


def read_plan(path: str | os.PathLike) -> list[Unit]:
    """The units of a plan file, checked: every problem is a PlanError naming the file and line."""
    p = Path(path)
    if not p.exists():
        raise PlanError(f"no plan file at {p}: write one with `python -m torchao_nb plan ... --out {p}`")
    if p.is_dir():
        raise PlanError(f"{p} is a folder; --plan takes the .jsonl file that `python -m torchao_nb plan` wrote")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise PlanError(f"can't read the plan {p}: {e}") from None
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise PlanError(f"the plan {p} is empty")

    def parse(n: int, line: str) -> dict:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise PlanError(f"{p}:{n}: not JSON ({e.msg}); is this a plan written by `python -m torchao_nb plan`?") from None
        if not isinstance(obj, dict):
            raise PlanError(f"{p}:{n}: expected a JSON object, got {type(obj).__name__}")
        return obj

    header = parse(*lines[0])
    if header.get("format") != PLAN_FORMAT:
        raise PlanError(f"{p}:{lines[0][0]}: not a torchao_nb plan (its first line should be the plan header "
                        f"with \"format\": \"{PLAN_FORMAT}\")")
    if header.get("version") != PLAN_VERSION:
        raise PlanError(f"{p}: plan version {header.get('version')!r} is not one this torchao_nb reads ({PLAN_VERSION}); "
                        "write the plan again with this version")
    units = []
    for n, line in lines[1:]:
        obj = parse(n, line)
        if obj.get("index") != len(units):
            raise PlanError(f"{p}:{n}: expected unit index {len(units)}, found {obj.get('index')!r} "
                            "(units must be listed in order from 0)")
        try:
            units.append(Unit.from_dict(obj))
        except PlanError as e:
            raise PlanError(f"{p}:{n}: {e}") from None
    declared = header.get("units")
    if declared != len(units):
        raise PlanError(f"{p}: the header says {declared!r} units but the file lists {len(units)}; "
                        "the file is cut short or edited")
    if not units:
        raise PlanError(f"the plan {p} lists no units")
    return units


# ---- which unit this job runs ----


def unit_index(explicit: int | str | None, environ: Mapping[str, str] | None = None, n_units: int | None = None) -> int:
    """The unit to run: `explicit` (--index), else $SLURM_ARRAY_TASK_ID, else $JOB_COMPLETION_INDEX
    (a Kubernetes Indexed Job). Checked against the plan's size when `n_units` is given."""
    environ = os.environ if environ is None else environ
    if explicit is not None and explicit != "":
        source, raw = "--index", explicit
    else:
        found = [(v, environ[v]) for v in INDEX_VARIABLES if environ.get(v, "").strip()]
        if not found:
            raise PlanError("which unit? give --index N, or run inside an array job that sets "
                            + " or ".join(f"${v}" for v in INDEX_VARIABLES))
        source, raw = f"${found[0][0]}", found[0][1]
    if isinstance(raw, bool):
        raise PlanError(f"{source} must be an integer, not {raw!r}")
    try:
        index = int(str(raw).strip())
    except ValueError:
        raise PlanError(f"{source} must be an integer, not {raw!r}") from None
    if index < 0:
        raise PlanError(f"{source} is {index}: unit indices start at 0")
    if n_units is not None and index >= n_units:
        hint = ""
        if source == "$SLURM_ARRAY_TASK_ID":
            hint = f"; submit the array as --array=0-{n_units - 1}"
        elif source == "$JOB_COMPLETION_INDEX":
            hint = f"; set the Indexed Job's completions to {n_units}"
        raise PlanError(f"{source} is {index}, but the plan has {n_units} unit(s) (0-{n_units - 1}){hint}")
    return index


# ---- where a unit writes ----

def unit_dir(root: str | os.PathLike, device_name: str, unit: Unit) -> Path:
    """ROOT/<device name>/<model>-bs<b>/, e.g. results/NVIDIA-H100-80GB-HBM3/mlp-bs8."""
    return Path(root) / slug(device_name or "unknown-device") / unit.name


# ---- merging unit folders ----


SKIPPED_FOLDERS = ("previous",)  # a fresh sweep into a used folder moves the old rows there: not current results


def find_unit_dirs(root: str | os.PathLike) -> list[Path]:
    """Every folder under root (root included) holding rows.jsonl or results.json; hidden folders
    (submitit's logs) and set-aside previous/ results are skipped."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"no results folder at {root}")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIPPED_FOLDERS)
        if ROWS_FILE in filenames or RESULTS_JSON in filenames:
            found.append(Path(dirpath))
    return sorted(found)


def _read_unit(folder: Path) -> tuple[list[Row], dict, str]:
    """A unit's rows (rows.jsonl: every row as it finished, reruns included; else results.json), environment, and
    what of it could not be read ("" when all could)."""
    env: dict = {}
    if (folder / ENV_FILE).exists():
        try:
            env = json.loads((folder / ENV_FILE).read_text())
        except json.JSONDecodeError:
            env = {}
    bad = ""
    if (folder / ROWS_FILE).exists():
        read = read_rows(folder / ROWS_FILE)
        rows, bad = list(read.rows), read.describe_bad(str(folder / ROWS_FILE)) if read.bad else ""
    else:
        try:
            rs = ResultSet.load(folder / RESULTS_JSON)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            raise UserError(f"{folder / RESULTS_JSON} is not a torchao_nb results file ({why}); move it out of "
                            f"{folder.parent} or fix it, then merge again.") from None
        rows = list(rs.rows)
        env = env or dict(rs.environment)
    return rows, env if isinstance(env, dict) else {}, bad


def _with_device(row: Row, env: Mapping[str, Any], fallback: str) -> Row:
    """Rows written before rows knew their device take it from their folder's environment, else the folder's name."""
    if row.device_name:
        return row
    return dataclasses.replace(row, device_name=env.get("device_name") or fallback)


@dataclass(frozen=True)
class Merged:
    """The rows of every unit folder under a root, one per cell (the device name is part of a cell's key)."""

    rows: tuple[Row, ...]
    environment: dict  # keys every device's environment agrees on, plus "devices": {device name: its environment}
    units: tuple[Path, ...]  # the unit folders read
    read: int  # rows read in all
    dropped: int  # rows dropped as duplicates of a cell (a rerun's error, an older copy)
    set_aside: Path | None = None  # where merge --out moved the folder's earlier results files
    unreadable: tuple[str, ...] = ()  # per unit folder: its lines that are not rows

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.device_name for r in self.rows))

    def result_set(self) -> ResultSet:
        return ResultSet(self.rows, self.environment)

    def summary(self) -> str:
        text = (f"merged {len(self.rows)} cell(s) from {len(self.units)} unit folder(s) on {len(self.devices)} "
                f"device(s) ({', '.join(self.devices) or 'none'}); {self.read} row(s) read, "
                f"{self.dropped} dropped as duplicates")
        return text + "".join(f"\nnot merged: {bad}" for bad in self.unreadable)


def collect(root: str | os.PathLike) -> Merged:
    """Every unit folder's rows under root, one row per cell.

    When a cell appears more than once (an error row and its successful rerun, or the same cell in
    two folders) the latest non-error row wins; an error row is kept only when the cell never
    succeeded. "Latest" is file order within a folder, folders ordered by when their rows were
    last written."""
    root = Path(root)
    dirs = find_unit_dirs(root)
    if not dirs:
        raise UserError(f"no unit folders under {root}: expected ROOT/<device>/<model>-bs<b>/ folders "
                        "holding rows.jsonl or results.json, as `run --plan` writes them")

    def written(d: Path) -> float:
        f = d / ROWS_FILE if (d / ROWS_FILE).exists() else d / RESULTS_JSON
        return f.stat().st_mtime

    dirs.sort(key=lambda d: (written(d), str(d)))
    best: dict[tuple, Row] = {}
    envs: dict[str, dict] = {}
    read, unreadable = 0, []
    for d in dirs:
        rows, env, bad = _read_unit(d)
        if bad:
            unreadable.append(bad)
        fallback = d.parent.name if d != root else ""
        for row in rows:
            read += 1
            row = _with_device(row, env, fallback)
            if env:
                envs.setdefault(row.device_name, env)
            old = best.get(row.key)
            if old is None or row.status != "error" or old.status == "error":
                best[row.key] = row  # a dict keeps the first-seen order of its keys
    rows = tuple(best.values())
    return Merged(rows, merged_environment(envs), tuple(dirs), read, read - len(rows), unreadable=tuple(unreadable))


def merged_environment(envs: Mapping[str, Mapping[str, Any]]) -> dict:
    """Keys with one value across every device's environment, and each device's own under "devices"."""
    out: dict[str, Any] = {}
    all_envs = list(envs.values())
    if all_envs:
        for k, v in all_envs[0].items():
            if all(e.get(k) == v for e in all_envs[1:]):
                out[k] = v
    out["devices"] = {dev: dict(env) for dev, env in envs.items()}
    return out


def merge(root: str | os.PathLike, out: str | os.PathLike | None = None) -> Merged:
    """collect(root), and when `out` is given save it there as one results folder (rows.jsonl included).

    `out` is treated as a sweep treats its folder: locked while written (a sweep still writing it makes this a
    UserError), and its earlier results files moved to `out/previous/<time>/` first, so no row is lost."""
    merged = collect(root)
    if out is not None:
        out = Path(out)
        if out.resolve() == Path(root).resolve() or Path(root).resolve() in out.resolve().parents:
            raise UserError(f"--out {out} is inside {root}: a later merge would read the merged rows as a unit; "
                            "write the merged results elsewhere")
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file; merge writes a results folder: give a folder's path.")
        with ResultsFolder(out, "choose another --out folder for the merged results") as folder:
            return dataclasses.replace(merged, set_aside=folder.replace_all(merged.result_set()))
    return merged
