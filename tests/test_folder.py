"""Results folders: resume keyed on everything measured, no row ever lost, one writer at a time, bad lines survived."""

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from torchao_nb import UserError, measure, sweep
from torchao_nb.errors import Notice
from torchao_nb.folder import LOCK_FILE, Lock, plan_resume
from torchao_nb.results import ResultSet, append_jsonl, read_rows

from .conftest import NoLinear, TwoLinear

X = (torch.randn(1, 128),)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(model, **kw):
    kw.setdefault("device", "cpu")
    kw.setdefault("dtype", "float32")
    kw.setdefault("compile", False)
    kw.setdefault("progress", False)
    kw.setdefault("policy", measure.FAST_POLICY)
    kw.setdefault("isolate", False)
    if not isinstance(model, str):
        kw.setdefault("example_inputs", X)
    return sweep(model=model, **kw)


def notices(record) -> str:
    return "\n".join(str(w.message) for w in record if issubclass(w.category, Notice))


# ---- 2. resume re-uses only rows measured with every setting the same ----------------------------------

def test_resume_with_another_seq_len_measures_again_and_says_why(tmp_path, ran):
    first = run("llama-tiny", modes="noquant,int8dynamic", seq_len=8, out=tmp_path)
    with pytest.warns(Notice) as record:
        second = run("llama-tiny", modes="noquant,int8dynamic", seq_len=12, out=tmp_path, resume=True)
    assert ran == ["noquant", "int8dynamic"] * 2  # nothing re-used: seq_len differs
    assert [r.seq_len for r in first] == [8, 8] and [r.seq_len for r in second] == [12, 12]
    said = notices(record)
    assert "re-using 0 of 2 cells" in said and "2 measured with seq_len 8 (this run: 12)" in said
    assert "previous" in said and second.environment["resume"] == said
    # the folder holds this sweep; the seq-8 rows are kept aside, never lost
    assert [r.seq_len for r in ResultSet.load(tmp_path)] == [12, 12]
    (aside,) = (tmp_path / "previous").iterdir()
    assert [r.seq_len for r in ResultSet.load(aside)] == [8, 8]
    with open(tmp_path / "results.csv") as f:
        assert [rec["seq_len"] for rec in csv.DictReader(f)] == ["12", "12"]


def test_resume_with_other_threads_or_timing_measures_again(tmp_path, ran):
    run(TwoLinear(), modes="noquant", threads=1, out=tmp_path)
    with pytest.warns(Notice, match=r"threads 1 \(this run: 2\)"):
        rs = run(TwoLinear(), modes="noquant", threads=2, out=tmp_path, resume=True)
    assert rs.rows[0].threads == 2 and len(ran) == 2
    custom = measure.TimingPolicy(min_samples=4, max_samples=6, max_time_s=0.3, warmup_s=0.0)
    with pytest.warns(Notice, match="another timing policy"):
        rs = run(TwoLinear(), modes="noquant", threads=2, policy=custom, out=tmp_path, resume=True)
    assert rs.rows[0].timing.startswith("custom-") and len(ran) == 3
    with pytest.warns(Notice, match="re-using 1 of 1 cells"):  # everything the same: re-used
        again = run(TwoLinear(), modes="noquant", threads=2, policy=custom, out=tmp_path, resume=True)
    assert again.rows == rs.rows and len(ran) == 3


def test_the_key_holds_what_changes_a_measurement():
    rows = run(TwoLinear(), modes="noquant,autoquant", autoquant={"candidates": ["int8dynamic"]}).rows
    noquant, aq = rows
    assert noquant.timing == "quick" and noquant.model_signature and noquant.mode_settings == ""
    assert json.loads(aq.mode_settings)["candidates"] == ["int8dynamic"] and "cache_dir" not in aq.mode_settings
    other_module = run(TwoLinear(dim=128, hidden=512), modes="noquant").rows[0]
    assert other_module.model == noquant.model and other_module.key != noquant.key  # same class, another module
    plan = plan_resume([noquant], [other_module.spec], retry_errors=False)
    assert plan.remeasured[0][1] == "measured with another module or other inputs of the same class"


# ---- 3. results files never lose rows; one writer at a time -----------------------------------------------

def test_resuming_part_of_a_folder_keeps_every_row_in_the_results_files(tmp_path, ran):
    run(TwoLinear(), modes="noquant,int8dynamic,int8weightonly", out=tmp_path)
    with pytest.warns(Notice, match="2 rows of other cells kept"):
        rs = run(TwoLinear(), modes="noquant", out=tmp_path, resume=True)
    assert [r.mode for r in rs] == ["noquant"] and ran == ["noquant", "int8dynamic", "int8weightonly"]
    run(NoLinear(), example_inputs=(torch.randn(1, 4, 8),), modes="noquant", out=tmp_path, resume=True)
    for name in ("results.json", "results.csv", "rows.jsonl"):
        assert [(r.model, r.mode) for r in ResultSet.load(tmp_path / name)] == [
            ("TwoLinear", "noquant"), ("TwoLinear", "int8dynamic"), ("TwoLinear", "int8weightonly"),
            ("NoLinear", "noquant")], name
    assert not (tmp_path / "previous").exists()  # nothing was dropped, so nothing needed keeping aside


def test_rows_of_other_settings_are_set_aside_not_mixed_in(tmp_path):
    run(TwoLinear(), modes="int8dynamic", out=tmp_path)
    with pytest.warns(Notice, match=r"set aside: 1 measured with dtype 'float32' \(this run: 'bfloat16'\)"):
        run(TwoLinear(), modes="noquant", dtype="bfloat16", out=tmp_path, resume=True)
    assert [(r.mode, r.dtype) for r in ResultSet.load(tmp_path)] == [("noquant", "bfloat16")]
    (aside,) = (tmp_path / "previous").iterdir()
    assert [(r.mode, r.dtype) for r in ResultSet.load(aside)] == [("int8dynamic", "float32")]


LOCK_HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from torchao_nb.folder import Lock
    lock = Lock(Path(sys.argv[1]))
    lock.acquire()
    print("locked", flush=True)
    time.sleep(600)
""")


def test_two_runs_into_one_folder_the_second_is_refused_and_a_dead_owners_lock_is_taken_over(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"is in use by another run \(pid {holder.pid}.*wait for it"):
            run(TwoLinear(), modes="noquant", out=tmp_path)
        assert not (tmp_path / "rows.jsonl").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # a run killed without cleaning up: its lock file stays behind
        holder.wait(timeout=60)
    assert str(holder.pid) in (tmp_path / LOCK_FILE).read_text()
    with pytest.warns(Notice, match=rf"lock left by a run that ended without releasing it \(pid {holder.pid}"):
        rs = run(TwoLinear(), modes="noquant", out=tmp_path)
    assert rs.rows[0].status == "ok" and not (tmp_path / LOCK_FILE).exists()  # released when the sweep ended


def test_a_lock_in_this_process_refuses_too(tmp_path):
    with Lock(tmp_path):
        with pytest.raises(UserError, match=f"pid {os.getpid()}"):
            run(TwoLinear(), modes="noquant", out=tmp_path)
    assert not (tmp_path / LOCK_FILE).exists()


# ---- 4. a line cut off by a crash ----------------------------------------------------------------------------

def test_a_cut_off_last_line_is_kept_aside_and_the_next_row_starts_on_a_fresh_line(tmp_path, ran):
    run(TwoLinear(), modes="noquant,int8dynamic", out=tmp_path)
    with open(tmp_path / "rows.jsonl", "a") as f:
        f.write('{"model": "TwoLinear", "mode": "int8weigh')  # a crash mid-write
    with pytest.warns(Notice, match=r"rows.jsonl: line 3 could not be read \(not complete JSON"):
        rs = run(TwoLinear(), modes="noquant,int8dynamic,int8weightonly", out=tmp_path, resume=True)
    assert [r.status for r in rs] == ["ok"] * 3 and ran == ["noquant", "int8dynamic", "int8weightonly"]
    read = read_rows(tmp_path / "rows.jsonl")
    assert read.bad == () and [r.mode for r in read.rows] == ["noquant", "int8dynamic", "int8weightonly"]
    (aside,) = (tmp_path / "previous").iterdir()
    assert (aside / "rows.jsonl").read_text().endswith('"int8weigh')  # the file as it was, fragment included
    with pytest.warns(Notice) as record:
        run(TwoLinear(), modes="noquant,int8dynamic,int8weightonly", out=tmp_path, resume=True)
    assert "re-using 3 of 3 cells" in notices(record) and "could not be read" not in notices(record)
    assert len(ran) == 3  # nothing ran again


def test_append_starts_a_fresh_line_after_a_fragment(tmp_path):
    rows = run(TwoLinear(), modes="noquant,int8dynamic").rows
    path = tmp_path / "rows.jsonl"
    path.write_text('{"cut')
    append_jsonl(path, rows[0])
    append_jsonl(path, rows[1])
    read = read_rows(path)
    assert read.rows == rows and [n for n, _ in read.bad] == [1]


# ---- 5. lines that are not rows ----------------------------------------------------------------------------

def test_lines_that_are_not_rows_are_reported_with_their_numbers_never_fatal(tmp_path, ran):
    run(TwoLinear(), modes="noquant", out=tmp_path)
    with open(tmp_path / "rows.jsonl", "ab") as f:
        f.write(b"[1,2,3]\nnull\n\xff\xfe\n")
    with pytest.warns(Notice, match=r"lines 2, 3, 4 could not be read \(a JSON list, not a row; a JSON NoneType, not a "
                                    r"row; not UTF-8 text\)"):
        assert len(ResultSet.load(tmp_path / "rows.jsonl")) == 1
    with pytest.warns(Notice, match="lines 2, 3, 4 could not be read"):
        rs = run(TwoLinear(), modes="noquant,int8dynamic", out=tmp_path, resume=True)
    assert [r.mode for r in rs] == ["noquant", "int8dynamic"] and ran == ["noquant", "int8dynamic"]
    assert read_rows(tmp_path / "rows.jsonl").bad == ()


@pytest.mark.parametrize("model, message", [
    (5, "got int"),
    ([TwoLinear()], "one nn.Module at a time"),
    ({"name": "mlp"}, "got dict"),
])
def test_a_model_that_is_neither_a_name_nor_a_module(model, message):
    with pytest.raises(UserError, match=message):
        sweep(model=model, device="cpu", progress=False)
