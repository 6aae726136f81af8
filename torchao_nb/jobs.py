"""Sweeps beyond one machine: a plan from sweep options, one unit of it run here, or every unit as submitit jobs.

`make_plan` checks the options as `sweep` would and lists the units (torchao_nb.plan); `run_unit` runs
one unit through `engine.sweep` into ROOT/<device name>/<model>-bs<b>/ with resume, which is all an
array-job element (SLURM, a Kubernetes Indexed Job, a CI matrix entry) needs; `submit` hands the
units to submitit, locally (one at a time by default) or as one SLURM array job, and `Submission.wait`
follows them. The sweep loop knows nothing of any of this.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from . import config, engine
from . import env as envmod
from . import modes as modes_mod
from . import plan as plan_mod
from . import slurm
from .errors import UserError, error_text
from .folder import check_writable
from .results import RESULTS_JSON, ROWS_FILE, ResultSet, Row, atomic_write, read_jsonl

CLUSTERS = ("local", "slurm")
NOT_IN_PLAN = ("isolate",)  # how a unit runs, not what it measures: given when it runs
LOCAL_POLL_S = 0.2
SLURM_POLL_S = 20.0  # one squeue call per poll: clusters ask users not to poll the controller often
JOBS_FILE = "jobs.jsonl"  # ROOT/.submitit/jobs.jsonl: which job runs which unit, one line per submitted unit
EventFn = Callable[[str], None]


# ---- the plan ----------------------------------------------------------------------------------------

def make_plan(model: str | Sequence[str] | None = None, modes: str | Sequence[str] | None = "all",
              batch_sizes: Any = None, **options: Any) -> list[plan_mod.Unit]:
    """The units of the sweep `sweep(model, modes, batch_sizes=..., **options)` would run, one per model ×
    batch size. Options are checked here, on the machine that plans; the device ("auto" by default) is
    resolved on the machine that runs each unit, so a login node without a GPU can plan a GPU sweep."""
    names = [s.name for s in engine.resolve_models(model, None)]
    mode_list = modes_mod.resolve_modes(modes)
    batches = config.check_batch_sizes(batch_sizes or (1,))
    opts, settings = config.split_options(options)
    refused = sorted(set(opts) & set(NOT_IN_PLAN))
    if refused:
        raise UserError(f"{', '.join(refused)} is how a unit runs, not what it measures: give it to run_unit or submit")
    device = envmod.device_name(str(opts.pop("device", None) or "auto"))
    # every other option checked as the sweep will check it (on the CPU here: the plan's device may be absent)
    config.build(mode_list, False, False, **{**opts, **settings, "device": "cpu"})
    stored = {k: v for k, v in opts.items() if v is not None and k != "batch_sizes"}
    if "policy" in stored:
        stored["policy"] = dataclasses.asdict(stored["policy"])
    return plan_mod.grid(names, list(batches), mode_list, device, {**stored, **settings})


def sweep_options(unit: plan_mod.Unit) -> dict[str, Any]:
    """The unit as engine.sweep's keyword arguments (a stored timing policy becomes a TimingPolicy again)."""
    opts = dict(unit.options)
    if "policy" in opts:
        opts["policy"] = config.policy_from_dict(opts["policy"])
    return {"device": unit.device, "batch_sizes": [unit.batch_size], **opts}


def read_units(plan_path: str | os.PathLike) -> list[plan_mod.Unit]:
    """The plan's units, each checked as sweep() will check it, before any runs: a hand-edited unit's bad
    option is one line naming the unit, not an error row in every cell."""
    units = plan_mod.read_plan(plan_path)
    for i, unit in enumerate(units):
        try:
            opts, settings = config.split_options(sweep_options(unit))
            opts.update(device="cpu", batch_sizes=[unit.batch_size])  # the unit's device may be absent here
            config.build(modes_mod.resolve_modes(list(unit.modes)), False, False, **opts, **settings)
        except UserError as e:
            raise UserError(f"{plan_path}: unit {i} ({unit.name}): {e}") from None
    return units


# ---- one unit, here ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UnitRun:
    index: int
    unit: plan_mod.Unit
    folder: Path
    results: ResultSet


def run_unit(plan_path: str | os.PathLike, root: str | os.PathLike, index: int | str | None = None, *,
             isolate: bool = True, retry_errors: bool = False, progress: bool = False,
             on_row: Callable[[Row], None] | None = None, environ: dict | None = None) -> UnitRun:
    """Run unit `index` of the plan (else $SLURM_ARRAY_TASK_ID, else $JOB_COMPLETION_INDEX) into
    ROOT/<device name>/<model>-bs<b>/, re-using the cells already there: a requeued job continues."""
    units = read_units(plan_path)
    i = plan_mod.unit_index(index, environ, len(units))
    unit = units[i]
    device = envmod.resolve_device(unit.device)
    folder = plan_mod.unit_dir(root, envmod.device_info(device).name, unit)
    check_writable(folder)
    about = {"plan": str(Path(plan_path).resolve()), "index": i, "unit": unit.to_dict(),
             "job_id": os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
             or os.environ.get("SUBMITIT_LOCAL_JOB_ID") or "",
             "command": shlex.join([sys.executable, *sys.argv])}
    atomic_write(folder / "unit.json", json.dumps(about, indent=1))
    options = {**sweep_options(unit), "isolate": isolate}  # a hand-written plan's own isolate gives way
    # A job stopped before its first row (requeued at its time limit, say) leaves environment.json alone: nothing to
    # resume, and the folder would refuse a resume without rows; start it afresh then.
    resume = any((folder / name).exists() for name in (ROWS_FILE, RESULTS_JSON))
    results = engine.sweep(model=unit.model, modes=list(unit.modes), out=folder, resume=resume,
                           retry_errors=retry_errors, progress=progress, on_row=on_row, **options)
    return UnitRun(i, unit, folder, results)


def unit_rows(root: str | os.PathLike, unit: plan_mod.Unit) -> list[Row]:
    """The rows this unit has written so far, on whichever device ran it: ROOT/*/<unit>/rows.jsonl of the
    folders whose unit.json names this very unit (another plan's unit of the same name measures other cells)."""
    rows: list[Row] = []
    for about in sorted(Path(root).glob(f"*/{unit.name}/unit.json")):
        try:
            same = json.loads(about.read_text()).get("unit") == unit.to_dict()
        except (OSError, ValueError, AttributeError):
            same = False
        if same:
            rows += [r for r in read_jsonl(about.parent / ROWS_FILE) if r.batch_size == unit.batch_size]
    return rows


def missing_modes(root: str | os.PathLike, unit: plan_mod.Unit, retry_errors: bool = False) -> list[str]:
    """The unit's modes without a row yet (with retry_errors, error rows count as missing, as the sweep treats them)."""
    have = {r.mode for r in unit_rows(root, unit) if not (retry_errors and r.status == "error")}
    return [m for m in unit.modes if m not in have]


@dataclass(frozen=True)
class RunUnit:
    """What one submitit job runs: a unit of the plan. Submitit calls `checkpoint` when SLURM preempts the
    job or its time runs out, and requeues the same call, which resumes from the unit's rows.jsonl."""

    plan_path: str
    root: str
    isolate: bool = True
    retry_errors: bool = False

    def __call__(self, index: int) -> dict:
        def say(row: Row) -> None:  # one line per cell in the job's log
            print(f"{row.model} bs={row.batch_size} {row.mode}: {row.status} {row.reason[:200]}", flush=True)

        with slurm.ends_the_job():
            run = run_unit(self.plan_path, self.root, index, isolate=self.isolate, retry_errors=self.retry_errors,
                           on_row=say)
        return {"index": run.index, "folder": str(run.folder), "statuses": [r.status for r in run.results]}

    def checkpoint(self, index: int):
        from submitit.core.utils import DelayedSubmission

        return DelayedSubmission(self, index)


# ---- every unit, as submitit jobs ---------------------------------------------------------------------

@dataclass(frozen=True)
class JobSettings:
    """Where and with what each unit's job runs. SLURM reads every field; local jobs use gpus, time_limit_min,
    parallel and setup."""

    cluster: str = "local"  # local | slurm
    partition: str | None = None
    gpus: int | None = None  # per unit; default: 1 on SLURM, locally 1 when this machine has a GPU, else 0
    cpus: int | None = None  # per unit (SLURM --cpus-per-task)
    mem_gb: int | None = None
    time_limit_min: int = 60  # per unit; past it SLURM requeues the unit, which resumes
    parallel: int | None = None  # units running at once; default: 1 locally (timings disturb each other), no limit on SLURM
    slurm_args: tuple[tuple[str, str], ...] = ()  # more #SBATCH options, e.g. (("account", "abc"), ("qos", "high"))
    setup: tuple[str, ...] = ()  # shell lines before each job (module load ..., source .venv/bin/activate)
    name: str = "torchao_nb"

    def __post_init__(self):
        if self.cluster not in CLUSTERS:
            raise UserError(f"unknown executor {self.cluster!r}; choose one of: {', '.join(CLUSTERS)}.")
        for field in ("gpus", "cpus", "mem_gb", "parallel"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0
                                      or (value == 0 and field != "gpus")):
                raise UserError(f"{field} must be a {'non-negative' if field == 'gpus' else 'positive'} "
                                f"whole number, got {value!r}.")
        if not isinstance(self.time_limit_min, int) or self.time_limit_min <= 0:
            raise UserError(f"the time limit must be a positive number of minutes, got {self.time_limit_min!r}.")


def _submitit():
    try:
        import submitit
    except ImportError:
        raise UserError("--executor local|slurm needs submitit: pip install 'torchao_nb[slurm]' "
                        "(or run each unit yourself with `run --plan PLAN --index N`)") from None
    return submitit


def _setup_lines(settings: JobSettings) -> list[str]:
    # A job imports torchao_nb by name: make it this same torchao_nb, as the worker process does.
    here = shlex.quote(str(Path(__file__).resolve().parent.parent))
    return [*settings.setup, f'export PYTHONPATH={here}"${{PYTHONPATH:+:$PYTHONPATH}}"']


def _executor(settings: JobSettings, folder: Path):
    submitit = _submitit()
    if settings.cluster == "local":
        ex = submitit.LocalExecutor(folder)
        ex.update_parameters(timeout_min=settings.time_limit_min, setup=_setup_lines(settings))
        return ex
    try:
        ex = submitit.SlurmExecutor(folder)
    except RuntimeError as e:  # no srun on PATH
        raise UserError(f"--executor slurm: {e} Submit from a SLURM login node, or use --executor local.") from None
    params: dict[str, Any] = dict(job_name=settings.name, time=settings.time_limit_min,
                                  signal_delay_s=slurm.signal_delay_s(settings.time_limit_min),
                                  gpus_per_node=1 if settings.gpus is None else settings.gpus,
                                  setup=_setup_lines(settings))
    if settings.partition:
        params["partition"] = settings.partition
    if settings.cpus:
        params["cpus_per_task"] = settings.cpus
    if settings.mem_gb:
        params["mem"] = f"{settings.mem_gb}GB"
    if settings.parallel:
        params["array_parallelism"] = settings.parallel
    if settings.slurm_args:
        params["additional_parameters"] = dict(settings.slurm_args)
    ex.update_parameters(**params)
    return ex


def sbatch_script(plan_path: str | os.PathLike, root: str | os.PathLike, settings: JobSettings, n_units: int) -> str:
    """The #SBATCH array script running the plan's units without submitit (see slurm.sbatch_script)."""
    return slurm.sbatch_script(plan_path, root, settings, n_units, _setup_lines(settings), sys.executable)


@dataclass
class UnitJob:
    """One unit and the job that runs it (None until submitted, or when the unit was already complete)."""

    index: int
    unit: plan_mod.Unit
    job: Any = None
    state: str = "waiting"  # waiting (not submitted) | running (submitted, not ended) | done | failed | complete already
    message: str = ""
    slot: int | None = None  # local: which of the `parallel` places (and its GPUs) it runs in
    cluster_state: str = ""  # SLURM's word for its job when last asked: PENDING, RUNNING, CANCELLED, TIMEOUT...


class Submission:
    """The units of a plan as submitit jobs: SLURM gets one array job; locally, `parallel` units run at once
    (submitit would start every local job together) and the next starts when one ends, so follow it with wait().
    On SLURM, a unit whose job from an earlier command (ROOT/.submitit/jobs.jsonl) is still pending or running
    is followed, not submitted again."""

    def __init__(self, plan_path, root, settings: JobSettings, indices: Sequence[int] | None = None, *,
                 isolate: bool = True, retry_errors: bool = False, task: Callable[[int], Any] | None = None):
        self.plan_path, self.root = Path(plan_path).resolve(), Path(root).resolve()
        self.settings, self.retry_errors = settings, retry_errors
        units = read_units(self.plan_path)
        chosen = range(len(units)) if indices is None else [plan_mod.unit_index(i, {}, len(units)) for i in indices]
        self.units = [UnitJob(i, units[i]) for i in chosen]
        self.task = task or RunUnit(str(self.plan_path), str(self.root), isolate, retry_errors)
        self.folder = self.root / ".submitit"
        self.executor = _executor(settings, self.folder / "%j")
        self.started = time.monotonic()
        self.submitted: list[UnitJob] = []  # by this Submission's start()
        self._gpus = self._local_gpus()
        for u in self.units:
            if not missing_modes(self.root, u.unit, retry_errors):
                u.state, u.message = "complete already", "every cell has a row"
        if not self.local:
            self.attach(live_only=True)

    def _local_gpus(self) -> int:
        if self.settings.cluster != "local":
            return 0
        import torch

        visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
        gpus = min(1, visible) if self.settings.gpus is None else self.settings.gpus
        if gpus * (self.settings.parallel or 1) > visible and gpus > 0:
            raise UserError(f"{self.settings.parallel or 1} unit(s) at once x {gpus} GPU(s) each, but this machine "
                            f"has {visible}; lower --parallel or --gpus.")
        return gpus

    @property
    def local(self) -> bool:
        return self.settings.cluster == "local"

    # ---- which job ran which unit (SLURM) ----

    @property
    def jobs_file(self) -> Path:
        return self.folder / JOBS_FILE

    def _record(self, units: Sequence[UnitJob]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.jobs_file, "a") as f:
            for u in units:
                f.write(json.dumps({"plan": str(self.plan_path), "index": u.index, "unit": u.unit.to_dict(),
                                    "job_id": u.job.job_id}) + "\n")

    def recorded_jobs(self) -> dict[int, str]:
        """unit index -> the job id last submitted for it by a command on this plan (this very unit)."""
        found: dict[int, str] = {}
        if not self.jobs_file.exists():
            return found
        ours = {u.index: u.unit.to_dict() for u in self.units}
        for line in self.jobs_file.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("plan") == str(self.plan_path) and ours.get(rec.get("index")) == rec.get("unit"):
                found[rec["index"]] = str(rec["job_id"])
        return found

    def attach(self, live_only: bool) -> None:
        """Follow the recorded jobs of the units not complete yet: only those still pending or running
        (live_only: the rest are submitted again), or every one, complete units' too (to say how each ended)."""
        recorded = self.recorded_jobs()
        kinds = ("waiting",) if live_only else ("waiting", "complete already")
        candidates = [u for u in self.units if u.state in kinds and u.index in recorded]
        if not candidates:
            return
        states = slurm.job_states([recorded[u.index] for u in candidates])
        if states is None:
            raise UserError("squeue could not be asked whether this plan's earlier jobs still run, so they would "
                            "be submitted twice; try again when the SLURM controller answers.")
        submitit = _submitit()
        for u in candidates:
            state = states.get(recorded[u.index], "")
            if live_only and state not in slurm.LIVE_STATES:
                continue
            u.job = submitit.SlurmJob(folder=self.folder / "%j", job_id=recorded[u.index])
            u.cluster_state = state
            if u.state == "waiting":
                u.state = "running"

    # ---- starting and following ----

    def start(self) -> "Submission":
        waiting = [u for u in self.units if u.state == "waiting"]
        if not waiting:
            return self
        if self.local:
            self._fill_local_slots()
        else:
            jobs = self.executor.map_array(self.task, [u.index for u in waiting])
            for u, job in zip(waiting, jobs):
                u.job, u.state = job, "running"
            self._record(waiting)
        self.submitted = waiting
        return self

    def _fill_local_slots(self) -> None:
        running = [u for u in self.units if u.state == "running"]
        free = [s for s in range(self.settings.parallel or 1) if s not in {u.slot for u in running}]
        for u in [u for u in self.units if u.state == "waiting"][:len(free)]:
            slot = free.pop(0)
            gpus = tuple(range(slot * self._gpus, (slot + 1) * self._gpus))
            self.executor.update_parameters(gpus_per_node=self._gpus, visible_gpus=gpus)
            u.job, u.state, u.slot = self.executor.submit(self.task, u.index), "running", slot

    def _finish(self, u: UnitJob) -> None:
        """A job ended: the unit is done when every mode has a row (a killed job still reads FINISHED)."""
        outcome = ""
        if u.job.paths.result_pickle.exists():
            try:
                u.job.result()
            except Exception as e:
                outcome = error_text(e, 300)
        else:
            outcome = "the job ended without a result (killed, out of memory, or cancelled)"
        missing = missing_modes(self.root, u.unit, self.retry_errors)
        if not missing:
            u.state, u.message = "done", ""
            return
        u.state = "failed"
        state = f"SLURM says {u.cluster_state}; " if u.cluster_state and not self.local else ""
        tail = slurm.log_tail(u.job.paths.stderr)
        u.message = (f"{state}{outcome or 'the job ended'}; no row yet for {', '.join(missing)}; "
                     f"log: {u.job.paths.stderr}" + ("".join(f"\n    {line}" for line in tail.splitlines())))

    def _ended(self, running: list[UnitJob]) -> list[UnitJob]:
        if self.local:
            return [u for u in running if u.job.done()]
        # submitit's own watcher asks sacct, which reads UNKNOWN where the cluster keeps no accounting: ask squeue
        states = slurm.job_states([u.job.job_id for u in running])
        if states is None:  # the controller did not answer: nothing ended that we know of
            return [u for u in running if u.job.paths.result_pickle.exists()]
        for u in running:
            u.cluster_state = states.get(u.job.job_id, "")
        return [u for u in running if u.job.paths.result_pickle.exists() or u.cluster_state not in slurm.LIVE_STATES]

    def poll(self) -> list[UnitJob]:
        """Check the running jobs; returns the units that just ended (and, locally, starts the next ones)."""
        running = [u for u in self.units if u.state == "running"]
        ended = self._ended(running) if running else []
        for u in ended:
            self._finish(u)
        if ended and self.local:
            self._fill_local_slots()
        return ended

    @property
    def finished(self) -> bool:
        return all(u.state not in ("waiting", "running") for u in self.units)

    def cells(self) -> tuple[int, int]:
        """(cells with a row, cells in these units)."""
        have = sum(len(u.unit.modes) - len(missing_modes(self.root, u.unit)) for u in self.units)
        return have, sum(len(u.unit.modes) for u in self.units)

    def progress(self) -> str:
        done = sum(u.state in ("done", "complete already") for u in self.units)
        have, total = self.cells()
        return f"{done}/{len(self.units)} units, {have}/{total} cells"

    def describe(self, u: UnitJob) -> str:
        """The unit in one line (a failed one: with its log's last lines): pending, running, done, failed."""
        have = len(u.unit.modes) - len(missing_modes(self.root, u.unit))
        cells = f"{have}/{len(u.unit.modes)} cells"
        job = f"job {u.job.job_id}" if u.job is not None else ""
        if u.state == "running":
            word = slurm.LIVE_STATES.get(u.cluster_state, "running")
            return f"unit {u.index} {u.unit.name}: {word} ({job}, SLURM says {u.cluster_state or 'nothing yet'}; {cells})"
        if u.state == "failed":
            return f"unit {u.index} {u.unit.name}: failed ({job}; {cells}): {u.message}"
        if u.state == "waiting":
            return f"unit {u.index} {u.unit.name}: not submitted ({cells})"
        return f"unit {u.index} {u.unit.name}: done ({job + '; ' if job else ''}{cells})"

    def wait(self, on_event: EventFn = print, poll_s: float | None = None) -> list[UnitJob]:
        """Follow the jobs until every unit ended, telling `on_event` what happened; returns the units."""
        poll_s = (LOCAL_POLL_S if self.local else SLURM_POLL_S) if poll_s is None else poll_s
        last = self.progress()
        try:
            while not self.finished:
                for u in self.poll():
                    job = f"job {u.job.job_id}"
                    what = "done" if u.state == "done" else f"FAILED: {u.message}"
                    last = self.progress()
                    on_event(f"[{self._elapsed()}] unit {u.index} {u.unit.name} ({job}) {what}; {last}")
                now = self.progress()
                if now != last:
                    last = now
                    on_event(f"[{self._elapsed()}] {now}")
                if not self.finished:
                    time.sleep(poll_s)
        except KeyboardInterrupt:
            if self.local:  # local jobs would go on in the background and clash with a rerun
                for u in self.units:
                    if u.state == "running":
                        u.job.cancel(check=False)
            raise
        return self.units

    def _elapsed(self) -> str:
        return f"{time.monotonic() - self.started:6.1f} s"


def submit(plan_path, root, settings: JobSettings, indices: Sequence[int] | None = None, *, isolate: bool = True,
           retry_errors: bool = False, task: Callable[[int], Any] | None = None) -> Submission:
    """Submit the plan's units (all, or `indices`) as jobs writing under ROOT; units that already have a row
    for every mode are not submitted again. Follow them with `.wait()` (locally, that also starts the next)."""
    return Submission(plan_path, root, settings, indices, isolate=isolate, retry_errors=retry_errors,
                      task=task).start()


def status(plan_path, root, settings: JobSettings | None = None) -> Submission:
    """The plan's units as their folders and SLURM tell it now, submitting nothing: each unit's last recorded
    job is asked for its state; `describe` says pending, running, done or failed (with its log's last lines)."""
    sub = Submission(plan_path, root, settings or JobSettings("slurm"))
    sub.attach(live_only=False)
    sub.poll()
    return sub


def recorded_plan(root: str | os.PathLike) -> Path:
    """The plan of the last job submitted under ROOT (ROOT/.submitit/jobs.jsonl), for `status` without --plan."""
    path = Path(root) / ".submitit" / JOBS_FILE
    lines = path.read_text().splitlines() if path.exists() else []
    for line in reversed(lines):
        try:
            return Path(json.loads(line)["plan"])
        except (ValueError, KeyError, TypeError):
            continue
    raise UserError(f"no SLURM jobs recorded under {root} ({path} is missing): give --plan PLAN, or submit with "
                    "`run --plan PLAN --executor slurm --out ROOT` first.")
