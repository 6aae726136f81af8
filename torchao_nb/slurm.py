"""SLURM in its own words: its jobs' states (squeue, else sacct), the #SBATCH array script, submitit's checkpoint signal.

jobs.py submits and follows a plan's units through submitit; what it needs to know of SLURM itself lives here,
so that a cluster without an accounting daemon (where sacct, and so submitit's own watcher, knows nothing) still
tells each unit's story: PENDING, RUNNING, COMPLETED, CANCELLED, TIMEOUT, OUT_OF_MEMORY...
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import subprocess
import threading
from pathlib import Path
from typing import Any, Sequence

# The states (as squeue and sacct name them) of a job that has not ended, and what its unit then is.
LIVE_STATES = {
    "PENDING": "pending", "CONFIGURING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending",
    "REQUEUE_FED": "pending", "RESV_DEL_HOLD": "pending", "SUSPENDED": "pending", "STOPPED": "pending",
    "RUNNING": "running", "COMPLETING": "running", "SIGNALING": "running", "STAGE_OUT": "running",
    "RESIZING": "running",
}
LOG_LINES = 8  # of a failed unit's job log, shown with its state
SIGNAL_BEFORE_S = 90  # submitit's default: how long before its time limit a job is told to checkpoint


def _ask(argv: list[str]) -> dict[str, str] | None:
    """{job id: state} from an squeue/sacct call printing `id|state` lines; None when the call failed (the
    controller busy or unreachable: nothing can be concluded), {} when it knows none of the jobs."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode:
        return {} if "Invalid job id" in done.stderr else None
    states = {}
    for line in done.stdout.splitlines():
        job_id, sep, state = line.strip().partition("|")
        if sep and state.split():
            states[job_id] = state.split()[0]  # sacct writes "CANCELLED by 0"
    return states


def job_states(job_ids: Sequence[str]) -> dict[str, str] | None:
    """Each job's state in SLURM's words. squeue knows live jobs and those ended less than MinJobAge ago (no
    accounting daemon needed: submitit's sacct-only watcher reads every job as UNKNOWN without one); sacct the
    older ones. A job neither knows any more is left out; None when squeue could not be asked."""
    states = _ask(["squeue", "--states=all", "--noheader", "--array", "--format=%i|%T", f"--jobs={','.join(job_ids)}"])
    if states is None:
        return None
    rest = [j for j in job_ids if j not in states]
    if rest:
        older = _ask(["sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID,State",
                      f"--jobs={','.join(rest)}"])
        states.update({j: s for j, s in (older or {}).items() if j in rest})
    return {j: states[j] for j in job_ids if j in states}


def log_tail(path: str | os.PathLike, lines: int = LOG_LINES) -> str:
    """The last non-blank lines of a job's log ("" when it has none yet)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


# ---- the checkpoint signal -------------------------------------------------------------------------------

def signal_delay_s(time_limit_min: int) -> int:
    """How long before the time limit submitit asks for its checkpoint signal (USR2). Under a limit of 1 minute
    SLURM sends the default 90 s one at once (seen on 22.05): the unit would be requeued before measuring
    anything, so a quarter of the limit then."""
    return min(SIGNAL_BEFORE_S, time_limit_min * 60 // 4)


class JobStopped(BaseException):
    """The job's checkpoint signal came and it will not be requeued (timed out too often): a BaseException, so
    it passes the sweep's `except Exception` around each cell instead of making the cell in progress an error row."""


@contextlib.contextmanager
def ends_the_job(signum: int = signal.SIGUSR2):
    """submitit's handler of its checkpoint signal raises its error where the signal lands, inside a cell as
    often as not; carried past the cell, it ends the job with submitit's own message."""
    handler = signal.getsignal(signum)
    if not callable(handler) or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(sig, frame):
        try:
            handler(sig, frame)
        except subprocess.CalledProcessError as e:
            if _requeue_stopped_it(e):  # what submitit does once its requeue returned: leave no result behind
                sys.exit(-1)
            raise JobStopped(e) from None
        except Exception as e:
            raise JobStopped(e) from None

    signal.signal(signum, handle)
    try:
        yield
    except JobStopped as stopped:
        raise stopped.args[0] from None
    finally:
        signal.signal(signum, handler)


def _requeue_stopped_it(e: subprocess.CalledProcessError) -> bool:
    """`scontrol requeue` killed by SIGTERM: the requeue was done, and SLURM's stopping of the job for it took
    scontrol along before it returned (seen on a loaded 2-core machine: submitit then wrote a failed result
    and the unit read FAILED, while SLURM ran it again and it finished)."""
    cmd = e.cmd if isinstance(e.cmd, (list, tuple)) else str(e.cmd).split()
    return list(cmd[:2]) == ["scontrol", "requeue"] and e.returncode == -signal.SIGTERM


# ---- an array script, for those who do not want submitit ---------------------------------------------------

def sbatch_script(plan_path: str | os.PathLike, root: str | os.PathLike, settings: Any, n_units: int,
                  setup: Sequence[str], python: str) -> str:
    """An #SBATCH array script running the plan's units: element i runs unit i ($SLURM_ARRAY_TASK_ID) into ROOT,
    resuming its folder when requeued (preemption) or submitted again (after a time limit: finished units then
    end at once). `settings` is a jobs.JobSettings. Its logs go to ROOT/.sbatch/, made here: SLURM makes no folders."""
    plan_path, root = Path(plan_path).resolve(), Path(root).resolve()
    logs = root / ".sbatch"
    logs.mkdir(parents=True, exist_ok=True)
    gpus = 1 if settings.gpus is None else settings.gpus
    options = [("job-name", settings.name),
               ("array", f"0-{n_units - 1}" + (f"%{settings.parallel}" if settings.parallel else "")),
               ("time", str(settings.time_limit_min)), ("requeue", ""), ("open-mode", "append"),
               ("output", str(logs / "%A_%a.log")), ("partition", settings.partition),
               ("gpus-per-node", str(gpus) if gpus else None), ("cpus-per-task", settings.cpus and str(settings.cpus)),
               ("mem", settings.mem_gb and f"{settings.mem_gb}G"), *settings.slurm_args]
    run = shlex.join([python, "-m", "torchao_nb", "run", "--plan", str(plan_path), "--out", str(root), "--quiet"])
    return "\n".join([
        "#!/bin/bash",
        f"# The {n_units} unit(s) of {plan_path} as one SLURM array job: element i runs unit i into {root}.",
        "# Written by `python -m torchao_nb plan --sbatch`. Submit it with sbatch; after a failure, submit it again:",
        "# finished units end at once, the others resume their folders.",
        *(f"#SBATCH --{key}" + (f"={value}" if value else "") for key, value in options if value is not None),
        *setup,
        f"exec {run}",
        "",
    ])
