"""Sweeps beyond one machine, for real: plans, units run here and as submitit jobs, merge, report and v3 export."""

import dataclasses
import json
import os
import shutil
import signal
import stat

import pytest

from torchao_nb import engine, jobs, measure, report, runs
from torchao_nb import plan as plan_mod
from torchao_nb.cli import main
from torchao_nb.errors import UserError
from torchao_nb.export import REQUIRED_FIELDS, METRICS, validate_v3
from torchao_nb.results import ResultSet, read_jsonl

# The smallest honest sweep: eager, a few samples per cell, two threads in every process (threads are in the key).
OPTIONS = dict(device="cpu", compile=False, policy=measure.FAST_POLICY, threads=2)
MODES = "noquant,int8dynamic"


@pytest.fixture(scope="module")
def demo_unit(tmp_path_factory):
    """The demo's model as a one-unit plan, run here: noquant, int8dynamic, and float8dynamic (skipped on a CPU)."""
    tmp = tmp_path_factory.mktemp("demo")
    units = jobs.make_plan("mlp", "noquant,int8dynamic,float8dynamic", **OPTIONS)
    path = plan_mod.write_plan(units, tmp / "plan.jsonl")
    run = jobs.run_unit(path, tmp / "root", 0, isolate=False)
    return path, tmp / "root", run


# ---- plans ----


@pytest.mark.parametrize("edit, message", [
    (lambda o: o["policy"].update(max_samples="lots"), "policy.max_samples must be a positive whole number, got 'lots'"),
    (lambda o: o["policy"].update(burst="long"), "policy has unknown field(s) burst"),
    (lambda o: o.update(compile="no"), "compile must be True or False, got 'no'"),
    (lambda o: o.update(threads=0), "threads must be a positive whole number, got 0"),
])
def test_a_hand_edited_unit_is_refused_when_the_plan_is_read(tmp_path, edit, message):
    units = jobs.make_plan("mlp", MODES, **OPTIONS)
    data = units[0].to_dict()
    edit(data["options"])
    path = plan_mod.write_plan([plan_mod.Unit.from_dict(data)], tmp_path / "plan.jsonl")
    with pytest.raises(UserError) as e:
        jobs.run_unit(path, tmp_path / "root", 0, isolate=False)
    assert str(e.value) == f"{path}: unit 0 (mlp-bs1): {message}" or message in str(e.value)
    assert str(e.value).startswith(f"{path}: unit 0 (mlp-bs1): ")
    assert not (tmp_path / "root").exists()  # refused before any folder was made


def test_make_plan_checks_options_as_the_sweep_does():
    units = jobs.make_plan(["mlp", "llama-tiny"], "noquant,int8dynamic", batch_sizes="1,8", dtype="float32",
                           autoquant={"sqnr_floor_db": 25}, **OPTIONS)
    assert [u.name for u in units] == ["mlp-bs1", "mlp-bs8", "llama-tiny-bs1", "llama-tiny-bs8"]
    opts = jobs.sweep_options(units[1])
    assert opts["batch_sizes"] == [8] and opts["device"] == "cpu" and opts["dtype"] == "float32"
    assert opts["policy"] == measure.FAST_POLICY and opts["autoquant"] == {"sqnr_floor_db": 25}
    # a GPU plan can be written on a machine without one: the device is resolved where the unit runs
    assert jobs.make_plan("mlp", "noquant", device="cuda")[0].device == "cuda"


def test_plan_command_writes_the_units_of_the_run_flags(tmp_path, capsys):
    out = tmp_path / "plan.jsonl"
    assert main(["plan", "--model", "mlp,llama-tiny", "--modes", "noquant,int8dynamic", "--batch-sizes", "1,8",
                 "--device", "cpu", "--no-compile", "--quick", "--autoquant-floor", "25", "--out", str(out)]) == 0
    assert "plan: 4 unit(s)" in capsys.readouterr().out
    units = plan_mod.read_plan(out)
    assert [(u.model, u.batch_size) for u in units] == [("mlp", 1), ("mlp", 8), ("llama-tiny", 1), ("llama-tiny", 8)]
    opts = jobs.sweep_options(units[0])
    assert opts["compile"] is False and opts["policy"] == measure.FAST_POLICY
    assert opts["autoquant"] == {"sqnr_floor_db": 25.0} and "dtype" not in opts  # left out: decided where it runs


@pytest.mark.parametrize("kwargs, message", [
    (dict(model="gpt-17"), "unknown model 'gpt-17'"),
    (dict(modes="int3"), "unknown mode 'int3'"),
    (dict(batch_sizes="0"), "batch size must be a positive integer"),
    (dict(compile_mode="fastest"), "unknown compile mode"),
    (dict(device="tpu"), "unknown device 'tpu'"),
    (dict(isolate=False), "how a unit runs"),
    (dict(colour="red"), "unknown sweep option"),
])
def test_make_plan_bad_options(kwargs, message):
    with pytest.raises(UserError, match=message):
        jobs.make_plan(**{"model": "mlp", "modes": "noquant", **kwargs})


# ---- one unit, here ----


def test_a_unit_writes_its_device_folder_records_how_it_ran_and_resumes(demo_unit):
    path, root, run = demo_unit
    device = run.results.environment["device_name"]
    assert run.folder == root / plan_mod.slug(device) / "mlp-bs1"
    assert [r.status for r in run.results] == ["ok", "ok", "skipped"]
    assert {r.device_name for r in run.results} == {device} and all(r.torch_version for r in run.results)
    env = json.loads((run.folder / "environment.json").read_text())
    assert "PyTorch version" in env["collect_env"] and env["command"]  # the machine in PyTorch's own words
    assert json.loads((run.folder / "unit.json").read_text())["index"] == 0
    before = (run.folder / "rows.jsonl").read_text()
    again = jobs.run_unit(path, root, None, isolate=False, environ={"JOB_COMPLETION_INDEX": "0"})
    assert (run.folder / "rows.jsonl").read_text() == before  # every cell re-used, none measured twice
    assert again.results.rows == run.results.rows


def test_two_devices_merge_apart_and_the_report_compares_them(demo_unit, tmp_path):
    _, root, run = demo_unit
    # a second machine: the same unit's folder, as if a GPU had written it
    fake = tmp_path / "root" / "Fake-GPU" / "mlp-bs1"
    shutil.copytree(run.folder, fake)
    rows = [dataclasses.replace(r, device_name="Fake GPU", median_ms=r.median_ms and r.median_ms / 2)
            for r in read_jsonl(fake / "rows.jsonl")]
    (fake / "rows.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in rows))
    env = json.loads((fake / "environment.json").read_text())
    (fake / "environment.json").write_text(json.dumps({**env, "device_name": "Fake GPU"}))
    shutil.copytree(run.folder, tmp_path / "root" / run.folder.parent.name / "mlp-bs1")

    assert main(["merge", str(tmp_path / "root"), "--out", str(tmp_path / "merged")]) == 0
    merged = ResultSet.load(tmp_path / "merged")
    assert len(merged) == 6 and len({r.key for r in merged}) == 6  # 3 cells x 2 devices, no collision
    assert set(merged.environment["devices"]) == {"Fake GPU", run.results.environment["device_name"]}
    compared = runs.load_runs([tmp_path / "merged"])
    assert list(compared) == [f"merged · {d}" for d in dict.fromkeys(r.device_name for r in merged)]
    table = runs.compare_table(compared)
    assert len(table) == 3 and table.filter(like="latency").dropna().shape[0] == 2  # the two ok cells compared
    text = report.build([tmp_path / "merged"], tmp_path / "report.html").html.read_text()
    assert 'id="comparison"' in text and "Fake GPU" in text and '<table class="runs">' in text


def test_export_refuses_nothing_to_export_and_a_folder_as_its_file(demo_unit, tmp_path, capsys):
    _, _, run = demo_unit
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "rows.jsonl").write_text("")
    assert main(["export", str(tmp_path / "empty"), "--out", str(tmp_path / "v3.json")]) == 2
    assert main(["export", str(run.folder), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and ("holds no rows" in err[0] or "no results in" in err[0])
    assert err[1] == f"error: --out {tmp_path} is a folder; give the file to write, e.g. {tmp_path / 'v3.json'}."
    assert not (tmp_path / "v3.json").exists()


def test_v3_export_of_the_demo_unit_has_every_required_field(demo_unit, tmp_path, capsys):
    _, _, run = demo_unit
    out = tmp_path / "benchmark-results" / "torchao_nb.json"
    assert main(["export", str(run.folder), "--format", "pytorch-v3", "--out", str(out)]) == 0
    assert "1 cell(s) without a measurement" in capsys.readouterr().out
    records = json.loads(out.read_text())
    assert isinstance(records, list) and records
    for rec in records:
        for section, fields in REQUIRED_FIELDS.items():
            assert all(rec[section][f] not in (None, "") for f in fields), (section, rec[section])
        assert all(isinstance(v, float) for v in rec["metric"]["benchmark_values"])
    ok = [r for r in run.results if r.status == "ok"]
    assert {rec["benchmark"]["dtype"] for rec in records} == {r.mode for r in ok}  # the skipped cell is left out
    assert {rec["metric"]["name"] for rec in records} <= {m.name for m in METRICS}
    assert {rec["runners"][0]["type"] for rec in records} == {run.results.environment["device_name"]}
    validate_v3(records)


# ---- every unit, as submitit jobs ----


@dataclasses.dataclass(frozen=True)
class DiesPartWay(jobs.RunUnit):
    """Unit 1's job is killed (SIGKILL: the out-of-memory killer, a lost node) once its first row is on disk."""

    def __call__(self, index):
        if index != 1:
            return super().__call__(index)
        jobs.run_unit(self.plan_path, self.root, index, isolate=self.isolate,
                      on_row=lambda row: os.kill(os.getpid(), signal.SIGKILL))


def test_local_jobs_run_a_plan_resume_a_killed_unit_and_merge_as_one_sweep(tmp_path):
    pytest.importorskip("submitit")
    units = jobs.make_plan("llama-tiny", MODES, batch_sizes="1,2,3", seq_len=8, **OPTIONS)
    path = plan_mod.write_plan(units, tmp_path / "plan.jsonl")
    root, settings, events = tmp_path / "root", jobs.JobSettings("local", time_limit_min=5), []

    first = jobs.submit(path, root, settings, isolate=False, task=DiesPartWay(str(path), str(root), False))
    done = first.wait(events.append)
    assert len({u.job.job_id for u in done}) == 3  # three units, three jobs
    assert [u.state for u in done] == ["done", "failed", "done"]
    assert "without a result" in done[1].message and "no row yet for int8dynamic" in done[1].message
    assert any("unit 1 llama-tiny-bs2" in e and "FAILED" in e for e in events)
    killed = jobs.unit_rows(root, units[1])
    assert [r.mode for r in killed] == ["noquant"]

    again = jobs.submit(path, root, settings, isolate=False)  # the same command again
    assert [u.state for u in again.units] == ["complete already", "running", "complete already"]
    assert [u.state for u in again.wait(events.append)] == ["complete already", "done", "complete already"]
    rows = jobs.unit_rows(root, units[1])
    assert [r.mode for r in rows] == ["noquant", "int8dynamic"]  # resumed: no duplicate, the first row kept
    assert rows[0] == killed[0]

    merged = plan_mod.collect(root)
    assert merged.dropped == 0 and len(merged.units) == 3
    here = engine.sweep(model="llama-tiny", modes=MODES, batch_sizes=[1, 2, 3], seq_len=8, isolate=False,
                        progress=False, **OPTIONS)
    assert sorted((r.key, r.status) for r in merged.rows) == sorted((r.key, r.status) for r in here)


# ---- SLURM, with a stand-in sbatch ----


def _fake_slurm(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    for f in bin_dir.iterdir():
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "submitted.sh"


def test_slurm_gets_one_array_job_with_the_settings_asked_for(tmp_path, monkeypatch, capsys):
    pytest.importorskip("submitit")
    submitted = _fake_slurm(tmp_path, monkeypatch)
    path = plan_mod.write_plan(jobs.make_plan("mlp", MODES, batch_sizes="1,2,3", **OPTIONS), tmp_path / "plan.jsonl")
    rc = main(["run", "--plan", str(path), "--executor", "slurm", "--partition", "gpu", "--gpus", "1",
               "--time-limit", "90", "--parallel", "2", "--slurm-arg", "account=abc", "--setup", "module load cuda",
               "--no-wait", "--out", str(tmp_path / "root")])
    out = capsys.readouterr().out
    assert rc == 0 and "unit 0 = job 4242_0, unit 1 = job 4242_1, unit 2 = job 4242_2" in out
    script = submitted.read_text()
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --time=90", "#SBATCH --account=abc", "module load cuda", "export PYTHONPATH="):
        assert line in script


@pytest.mark.parametrize("argv, message", [
    (["run", "--plan", "{plan}", "--dtype", "float32", "--out", "{tmp}"], "the plan fixes what each unit measures"),
    (["run", "--index", "0", "--out", "{tmp}"], "give --plan PLAN too"),
    (["run", "--plan", "{tmp}/nope.jsonl", "--index", "0", "--out", "{tmp}"], "no plan file at"),
    (["run", "--plan", "{plan}", "--index", "7", "--out", "{tmp}"], r"the plan has 1 unit(s) (0-0)"),
    (["run", "--plan", "{plan}", "--executor", "local", "--no-wait", "--out", "{tmp}"], "--no-wait is for slurm"),
    (["run", "--plan", "{plan}", "--executor", "slurm", "--slurm-arg", "account", "--out", "{tmp}"], "KEY=VALUE"),
    (["run", "--plan", "{plan}", "--executor", "slurm", "--out", "{tmp}"], 'Could not detect "srun"'),
    (["merge", "{tmp}", "--out", "{tmp}/m"], "no unit folders under"),
    (["export", "{tmp}/none", "--out", "{tmp}/x.json"], "no results in"),
])
def test_user_errors_beyond_one_machine_are_one_line(argv, message, tmp_path, monkeypatch, capsys):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm"))  # no srun here (scripts/test.sh installs SLURM in /usr/bin)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    path = plan_mod.write_plan(jobs.make_plan("mlp", "noquant", **OPTIONS), tmp_path / "plan.jsonl")
    rc = main([a.replace("{tmp}", str(tmp_path)).replace("{plan}", str(path)) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_a_unit_is_complete_only_for_the_plan_that_wrote_it(demo_unit):
    path, root, run = demo_unit
    (unit,) = plan_mod.read_plan(path)
    assert jobs.missing_modes(root, unit) == []
    other = dataclasses.replace(unit, options={**unit.options, "dtype": "float32"})  # same folder name, other cells
    assert other.name == unit.name and jobs.missing_modes(root, other) == list(unit.modes)


def test_a_job_told_it_wont_be_requeued_ends_without_an_error_row_for_the_cell_in_progress(tmp_path):
    """submitit's checkpoint-signal handler raises (UncompletedJobError) when a unit timed out too often; landing
    inside a cell, that must end the job with its message, not become the cell's error row."""
    path = plan_mod.write_plan(jobs.make_plan("mlp", "noquant", **OPTIONS), tmp_path / "plan.jsonl")

    def no_more_requeues(signum, frame):
        raise RuntimeError("Job not requeued because: timed-out too many times.")

    @dataclasses.dataclass(frozen=True)
    class SignalledMidCell(jobs.RunUnit):
        def __call__(self, index):
            import torch

            real = torch.nn.Linear.forward
            def forward(module, x):  # the signal lands while the cell computes
                torch.nn.Linear.forward = real
                os.kill(os.getpid(), signal.SIGUSR2)
                return real(module, x)
            torch.nn.Linear.forward = forward
            try:
                return super().__call__(index)
            finally:
                torch.nn.Linear.forward = real

    previous = signal.signal(signal.SIGUSR2, no_more_requeues)
    try:
        with pytest.raises(RuntimeError, match="timed-out too many times"):
            SignalledMidCell(str(path), str(tmp_path / "root"), isolate=False)(0)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert jobs.unit_rows(tmp_path / "root", plan_mod.read_plan(path)[0]) == []  # no error row left behind


def test_a_requeue_that_stops_its_own_scontrol_ends_the_job_as_a_requeue_not_a_failure():
    """On a loaded machine SLURM's requeue killed submitit's `scontrol requeue` (SIGTERM) before it returned:
    submitit then wrote a failed result though SLURM ran the job again. That case leaves as a done requeue does."""
    import subprocess

    from torchao_nb import slurm

    def raising(error):
        def handler(sig, frame):
            raise error
        return handler

    killed = subprocess.CalledProcessError(-signal.SIGTERM, ["scontrol", "requeue", "42"])
    refused = subprocess.CalledProcessError(1, ["scontrol", "requeue", "42"])
    before = signal.getsignal(signal.SIGUSR2)
    try:
        for error, expected in ((killed, SystemExit), (refused, subprocess.CalledProcessError)):
            signal.signal(signal.SIGUSR2, raising(error))
            with pytest.raises(expected):
                with slurm.ends_the_job():
                    signal.raise_signal(signal.SIGUSR2)
    finally:
        signal.signal(signal.SIGUSR2, before)
