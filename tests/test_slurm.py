"""Plans on a real SLURM cluster (tests/slurm_cluster.py starts one on this machine): one array job, --no-wait and
`status`, an element cancelled and resumed, a crashing worker, a unit past its time limit, and `plan --sbatch`."""

import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests import slurm_cluster
from tests.job_models import CRASHES, HANGS, HELD
from torchao_nb import engine, jobs, measure, slurm
from torchao_nb import plan as plan_mod
from torchao_nb.cli import main
from torchao_nb.results import ResultSet

HERE = Path(__file__).resolve().parent
# tiny units: eager mlp, a few samples per cell, one thread (so two units share the node's two CPUs)
OPTIONS = dict(device="cpu", compile=False, policy=measure.FAST_POLICY, threads=1)
FLAGS = ["--device", "cpu", "--no-compile", "--quick", "--threads", "1"]
MODES = "noquant,int8dynamic"
JOB = ["--executor", "slurm", "--gpus", "0", "--time-limit", "5"]
SETTLE_S = 120
# --setup lines making every Python of a job, the sweep's worker process among them, register tests/job_models.py
WITH_TEST_MODELS = ["--setup", f"export PYTHONPATH={HERE / 'slurm_site'}:{HERE.parent}",
                    "--setup", "export TORCHAO_NB_TEST_JOB_MODELS=1"]  # longest a test waits for the cluster to do something


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """The one-node cluster for this session, SLURM_CONF pointing at it; every daemon stopped at the end."""
    missing = slurm_cluster.missing_programs()
    if missing:
        why = (f"SLURM is not installed here ({', '.join(missing)} not found): apt-get install -y slurm-wlm munge "
               "(scripts/test.sh does it when run as root)")
        if os.environ.get("CI") or os.environ.get("TORCHAO_NB_REQUIRE_SLURM") == "1":
            pytest.fail(f"{why}; CI must run the SLURM tests")
        pytest.skip(why)
    pytest.importorskip("submitit")
    running = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SLURM_CONF", str(running.conf))
            mp.setenv("PATH", running.env["PATH"])
            mp.setattr(jobs, "SLURM_POLL_S", 0.5)  # a cluster of our own: no one else's controller to spare
            yield running
    finally:
        running.stop()


def write_plan(path, model="mlp", modes=MODES, batch_sizes="1", **options):
    units = jobs.make_plan("mlp", modes, batch_sizes=batch_sizes, **{**OPTIONS, **options})
    if model != "mlp":  # a model only the jobs' processes register (tests/slurm_site): the same unit, renamed
        units = [dataclasses.replace(u, model=model) for u in units]
    return plan_mod.write_plan(units, path)


def job_ids(root) -> dict[int, list[str]]:
    """unit index -> the jobs submitted for it, in order (ROOT/.submitit/jobs.jsonl)."""
    ids: dict[int, list[str]] = {}
    for line in (Path(root) / ".submitit" / jobs.JOBS_FILE).read_text().splitlines():
        rec = json.loads(line)
        ids.setdefault(rec["index"], []).append(rec["job_id"])
    return ids


def wait_for(what, condition, timeout_s=SETTLE_S):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"still not {what} after {timeout_s} s"
        time.sleep(0.25)


def status_lines(root, capsys) -> dict[int, str]:
    assert main(["status", str(root)]) == 0
    units: dict[int, str] = {}
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("unit "):
            index = int(line.split()[1])
            units[index] = line
        elif line.startswith("    "):  # a failed unit's log lines, under it
            units[index] += "\n" + line
    return units


def cells(rows):
    return sorted((r.key, r.status) for r in rows)


def test_a_plan_runs_as_one_array_job_and_merges_as_the_sweep_here(cluster, tmp_path, capsys):
    plan, root = write_plan(tmp_path / "plan.jsonl", batch_sizes="1,2,3"), tmp_path / "root"
    assert main(["run", "--plan", str(plan), *JOB, "--in-process", "--out", str(root)]) == 0
    out = capsys.readouterr().out
    assert "3 to run as slurm jobs (one array job)" in out and "3/3 units, 6/6 cells" in out, out
    ids = job_ids(root)
    assert sorted(ids) == [0, 1, 2] and len({j[0].split("_")[0] for j in ids.values()}) == 1  # elements of one array
    assert [ids[i] for i in range(3)] == [[f"{ids[0][0].split('_')[0]}_{i}"] for i in range(3)]  # element i is unit i
    assert main(["merge", str(root), "--out", str(tmp_path / "merged")]) == 0
    merged = ResultSet.load(tmp_path / "merged")
    here = engine.sweep(model="mlp", modes=MODES, batch_sizes=[1, 2, 3], isolate=False, progress=False, **OPTIONS)
    assert cells(merged) == cells(here) and {r.status for r in merged} == {"ok"}
    with capsys.disabled():
        print(f"\n[slurm {cluster.sh('sinfo', '--version').strip()}] 3-unit plan: {out.strip().splitlines()[-2]}")


def test_no_wait_status_then_a_cancelled_element_is_all_that_runs_again(cluster, tmp_path, capsys):
    # each cell alone, so its row is saved before the next cell runs (together, a group's rows come at its end)
    plan = write_plan(tmp_path / "plan.jsonl", model=HELD, batch_sizes="1,2", time_together=False)
    root = tmp_path / "root"
    hold = tmp_path / "hold"
    (tmp_path / "hold-bs2").touch()  # unit 1's quantized cell waits for the test, which cancels it there
    flags = [*JOB, "--in-process", *WITH_TEST_MODELS, "--setup", f"export TORCHAO_NB_TEST_HOLD={hold}"]
    started = time.monotonic()
    # one element at a time, so unit 1 waits while unit 0 runs
    assert main(["run", "--plan", str(plan), *flags, "--parallel", "1", "--no-wait", "--out", str(root)]) == 0
    assert time.monotonic() - started < 30  # returned once submitted, long before a unit could end
    out = capsys.readouterr().out
    (first,), (second,) = job_ids(root)[0], job_ids(root)[1]
    assert f"unit 0 = job {first}, unit 1 = job {second}" in out and f"status {root}" in out
    lines = status_lines(root, capsys)
    assert lines[1].startswith(f"unit 1 held-bs2: pending (job {second}, SLURM says PENDING; 0/2 cells)"), lines
    assert " pending (" in lines[0] or " running (" in lines[0], lines
    # the same command while they wait or run: followed, not submitted twice
    assert main(["run", "--plan", str(plan), *flags, "--parallel", "1", "--no-wait", "--out", str(root)]) == 0
    out = capsys.readouterr().out
    assert "2 still pending or running from before (followed, not submitted again); 0 to run" in out, out
    assert "submitted: nothing" in out and job_ids(root) == {0: [first], 1: [second]}

    unit = plan_mod.read_plan(plan)[1]
    wait_for("in unit 1's second cell", lambda: len(jobs.unit_rows(root, unit)) == 1)
    assert status_lines(root, capsys)[1].startswith(f"unit 1 held-bs2: running (job {second}, SLURM says RUNNING; "
                                                    "1/2 cells)")
    cluster.sh("scancel", second)  # one element of the array, mid-cell
    wait_for("cancelled", lambda: slurm.job_states([second]).get(second) == "CANCELLED")
    kept = jobs.unit_rows(root, unit)
    assert [r.mode for r in kept] == ["noquant"]
    lines = status_lines(root, capsys)
    assert lines[0] == f"unit 0 held-bs1: done (job {first}; 2/2 cells)", lines
    failed = lines[1]
    assert failed.startswith(f"unit 1 held-bs2: failed (job {second}; 1/2 cells): SLURM says CANCELLED; "
                             "the job ended without a result"), failed
    assert "no row yet for int8dynamic" in failed and "CANCELLED AT" in failed  # the log's last lines, slurmstepd's

    # the same command again, waiting this time: only unit 1 is submitted, and it resumes its folder
    (tmp_path / "hold-bs2").unlink()
    assert main(["run", "--plan", str(plan), *flags, "--out", str(root)]) == 0
    out = capsys.readouterr().out
    assert "1 complete already; 1 to run as slurm jobs" in out and "2/2 units, 4/4 cells" in out, out
    ids = job_ids(root)
    assert ids[0] == [first] and len(ids[1]) == 2 and ids[1][0] == second
    rows = jobs.unit_rows(root, unit)
    assert [r.mode for r in rows] == ["noquant", "int8dynamic"] and rows[0] == kept[0]  # no cell twice
    with capsys.disabled():
        print(f"\n[slurm] {failed.splitlines()[0]}\n[slurm] run again: job {ids[1][1]}; {out.strip().splitlines()[-1]}")


def test_a_crashing_worker_is_an_error_row_not_a_lost_unit(cluster, tmp_path, capsys):
    plan, root = write_plan(tmp_path / "plan.jsonl", model=CRASHES, modes="noquant,int8weightonly"), tmp_path / "root"
    assert main(["run", "--plan", str(plan), *JOB, *WITH_TEST_MODELS,
                 "--out", str(root)]) == 0  # isolated, as by default
    out = capsys.readouterr().out
    assert "1/1 units, 2/2 cells" in out, out
    rows = {r.mode: r for r in jobs.unit_rows(root, plan_mod.read_plan(plan)[0])}
    assert rows["noquant"].status == "ok"
    crashed = rows["int8weightonly"]
    assert crashed.status == "error" and "worker crashed (SIGSEGV)" in crashed.reason, crashed.reason
    with capsys.disabled():
        print(f"\n[slurm] crashing unit's row: {crashed.mode} {crashed.status}: {crashed.reason[:160]}")


def test_plan_sbatch_writes_the_array_script_that_sbatch_runs(cluster, tmp_path, capsys):
    plan, root = tmp_path / "plan.jsonl", tmp_path / "root"
    assert main(["plan", "--model", "mlp", "--modes", MODES, "--batch-sizes", "1,2", *FLAGS, "--out", str(plan),
                 "--sbatch", "--root", str(root), "--gpus", "0", "--time-limit", "5"]) == 0
    captured = capsys.readouterr()
    script = captured.out
    assert script.startswith("#!/bin/bash\n") and "plan: 2 unit(s)" in captured.err
    for line in ("#SBATCH --array=0-1", "#SBATCH --time=5", "#SBATCH --requeue", f"--plan {plan} --out {root}"):
        assert line in script, script
    assert "gpus" not in script  # --gpus 0: no GPU asked for
    (tmp_path / "sweep.sbatch").write_text(script)
    array = cluster.sh("sbatch", "--parsable", str(tmp_path / "sweep.sbatch")).strip()
    elements = [f"{array}_0", f"{array}_1"]
    wait_for("ended", lambda: set((slurm.job_states(elements) or {}).values()) <= {"COMPLETED", "FAILED"}
             and len(slurm.job_states(elements)) == 2, timeout_s=180)
    assert slurm.job_states(elements) == dict.fromkeys(elements, "COMPLETED"), \
        "\n".join(p.read_text()[-2000:] for p in (root / ".sbatch").glob("*.log"))
    assert main(["merge", str(root), "--out", str(tmp_path / "merged")]) == 0
    merged = ResultSet.load(tmp_path / "merged")
    assert sorted((r.batch_size, r.mode) for r in merged) == [(b, m) for b in (1, 2) for m in sorted(MODES.split(","))]
    assert {r.status for r in merged} == {"ok"}


def test_a_unit_past_its_time_limit_is_requeued_and_resumes(cluster, tmp_path, capsys):
    # its quantized cell hangs until the one-minute limit, the first time the job runs
    plan, root = write_plan(tmp_path / "plan.jsonl", model=HANGS, time_together=False), tmp_path / "root"
    rc = main(["run", "--plan", str(plan), *JOB[:-1], "1", "--in-process", *WITH_TEST_MODELS, "--out", str(root)])
    out = capsys.readouterr().out
    (job,) = job_ids(root)[0]
    logs = root / ".submitit" / job
    log = (logs / f"{job}_0_log.out").read_text()
    assert rc == 0 and "1/1 units, 2/2 cells" in out, out + log
    # told to checkpoint before the limit, requeued by SLURM, started again on the rows already there
    assert "this job is timed-out" in log and "Requeued job" in log and log.count("Starting with JobEnvironment") == 2
    assert "re-using 1 of 2 cells" in (logs / f"{job}_0_log.err").read_text()
    rows = jobs.unit_rows(root, plan_mod.read_plan(plan)[0])
    assert [(r.mode, r.status) for r in rows] == [("noquant", "ok"), ("int8dynamic", "ok")]  # each cell once
    with capsys.disabled():
        print(f"\n[slurm] past its time limit: requeued once, resumed; {out.strip().splitlines()[-1]}")
