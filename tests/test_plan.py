"""Plans of work units, the job index, unit folders and merging them: fake rows, no sweeps."""

import json
import os
import time
import pytest

from torchao_nb.errors import UserError
from torchao_nb.plan import (
    PlanError, Unit, collect, find_unit_dirs, grid, merge, read_plan, slug, unit_dir, unit_index, write_plan,
)
from torchao_nb.results import ResultSet, Row, append_jsonl

OPTIONS = {"dtype": "bfloat16", "compile": True, "baseline": True, "threads": 2}
COMMON = dict(device="cpu", dtype="bfloat16", compile=True, baseline=True)


def row(model="mlp", mode="noquant", bs=1, status="ok", ms=1.0, **kw):
    return Row(model=model, mode=mode, batch_size=bs, status=status, median_ms=ms if status == "ok" else None,
               reason="" if status == "ok" else "why", **COMMON, **kw)


# ---- plans ----


def test_grid_is_models_by_batch_sizes_each_with_every_mode():
    units = grid(["mlp", "decoder"], [1, 8], ["noquant", "int8dynamic"], "cuda", OPTIONS)
    assert [(u.model, u.batch_size) for u in units] == [("mlp", 1), ("mlp", 8), ("decoder", 1), ("decoder", 8)]
    assert all(u.modes == ("noquant", "int8dynamic") and u.device == "cuda" and u.options == OPTIONS for u in units)
    assert [u.name for u in units] == ["mlp-bs1", "mlp-bs8", "decoder-bs1", "decoder-bs8"]


@pytest.mark.parametrize("args, message", [
    (([], [1], ["noquant"]), "at least one model"),
    ((["mlp"], [], ["noquant"]), "at least one batch size"),
    ((["mlp"], [1], []), "at least one mode"),
    ((["mlp", "mlp"], [1], ["noquant"]), "model given more than once: mlp"),
    ((["mlp"], [1, 1], ["noquant"]), "batch size given more than once"),
    ((["mlp"], [0], ["noquant"]), "positive integer"),
    ((["mlp"], [True], ["noquant"]), "positive integer"),
    ((["mlp"], ["8"], ["noquant"]), "positive integer"),
    ((["mlp"], [1], [""]), "mode names"),
])
def test_grid_bad_inputs(args, message):
    with pytest.raises(PlanError, match=message):
        grid(*args)


def test_plan_errors_are_user_errors():
    assert issubclass(PlanError, UserError)


def test_options_must_be_json():
    with pytest.raises(PlanError, match="plain JSON values"):
        grid(["mlp"], [1], ["noquant"], "cpu", {"dtype": object()})
    with pytest.raises(PlanError, match="plain JSON values"):
        grid(["mlp"], [1], ["noquant"], "cpu", {"x": float("nan")})


def test_unit_is_frozen_and_hashable():
    u = grid(["mlp"], [1], ["noquant"], "cpu", OPTIONS)[0]
    with pytest.raises(AttributeError):
        u.model = "other"
    assert len({u, Unit("mlp", 1, ("noquant",), "cpu", dict(OPTIONS))}) == 1


def test_plan_round_trip(tmp_path):
    units = grid(["mlp", "hf:org/model"], [1, 8], ["noquant", "int8dynamic"], "auto", OPTIONS)
    path = write_plan(units, tmp_path / "sub" / "plan.jsonl")
    assert read_plan(path) == units
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"format": "torchao_nb-plan", "version": 1, "units": 4}
    assert [json.loads(l)["index"] for l in lines[1:]] == [0, 1, 2, 3]


def test_write_plan_refuses_empty_and_clashing_folders(tmp_path):
    with pytest.raises(PlanError, match="empty plan"):
        write_plan([], tmp_path / "p.jsonl")
    clash = [Unit("a/b", 1, ("noquant",)), Unit("a b", 1, ("noquant",))]  # both slug to a-b-bs1
    with pytest.raises(PlanError, match="same folder: a-b-bs1"):
        write_plan(clash, tmp_path / "p.jsonl")


def _plan_file(tmp_path, lines):
    p = tmp_path / "plan.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


HEADER = json.dumps({"format": "torchao_nb-plan", "version": 1, "units": 1})
UNIT0 = json.dumps({"index": 0, "model": "mlp", "batch_size": 1, "modes": ["noquant"], "device": "cpu", "options": {}})


@pytest.mark.parametrize("lines, message", [
    ([], "is empty"),
    (["not json"], "not JSON"),
    (["[1, 2]"], "expected a JSON object"),
    ([json.dumps({"model": "mlp"})], "not a torchao_nb plan"),
    ([json.dumps({"format": "torchao_nb-plan", "version": 99, "units": 1}), UNIT0], "plan version 99"),
    ([HEADER], "header says 1 units but the file lists 0"),
    ([HEADER, UNIT0, UNIT0.replace('"index": 0', '"index": 1')], "header says 1 units but the file lists 2"),
    ([HEADER, UNIT0.replace('"index": 0', '"index": 3')], "expected unit index 0, found 3"),
    ([HEADER, UNIT0.replace('"batch_size": 1', '"batch_size": "big"')], r"plan.jsonl:2: unit mlp: batch size"),
    ([HEADER, UNIT0.replace('"modes": ["noquant"]', '"modes": "noquant"')], "modes must be a list"),
    ([HEADER, UNIT0.replace('"model": "mlp", ', '')], "missing model"),
    ([HEADER, UNIT0.replace('"options": {}', '"options": []')], "options must be an object"),
    ([HEADER, UNIT0[:30]], r"plan.jsonl:2: not JSON"),
])
def test_read_plan_bad_files(tmp_path, lines, message):
    with pytest.raises(PlanError, match=message):
        read_plan(_plan_file(tmp_path, lines))


def test_read_plan_missing_or_folder(tmp_path):
    with pytest.raises(PlanError, match="no plan file at .*torchao_nb plan"):
        read_plan(tmp_path / "nope.jsonl")
    with pytest.raises(PlanError, match="is a folder"):
        read_plan(tmp_path)
    assert read_plan(_plan_file(tmp_path, [HEADER, "", UNIT0, ""]))[0].model == "mlp"  # blank lines are fine


# ---- the job index ----


def test_unit_index_precedence():
    env = {"SLURM_ARRAY_TASK_ID": "2", "JOB_COMPLETION_INDEX": "1"}
    assert unit_index(0, env) == 0  # --index wins, even when it is 0
    assert unit_index("3", env) == 3
    assert unit_index(None, env) == 2  # then SLURM
    assert unit_index(None, {"JOB_COMPLETION_INDEX": "1"}) == 1  # then Kubernetes
    assert unit_index(None, {"SLURM_ARRAY_TASK_ID": "", "JOB_COMPLETION_INDEX": "1"}) == 1  # empty = unset


@pytest.mark.parametrize("explicit, env, n, message", [
    (None, {}, 3, r"give --index N, or run inside an array job that sets \$SLURM_ARRAY_TASK_ID or \$JOB_COMPLETION_INDEX"),
    ("x", {}, 3, "--index must be an integer, not 'x'"),
    (None, {"SLURM_ARRAY_TASK_ID": "1.5"}, 3, r"\$SLURM_ARRAY_TASK_ID must be an integer"),
    (-1, {}, 3, "indices start at 0"),
    (3, {}, 3, r"the plan has 3 unit\(s\) \(0-2\)"),
    (None, {"SLURM_ARRAY_TASK_ID": "3"}, 3, "--array=0-2"),
    (None, {"JOB_COMPLETION_INDEX": "5"}, 3, "completions to 3"),
    (True, {}, 3, "must be an integer"),
])
def test_unit_index_errors(explicit, env, n, message):
    with pytest.raises(PlanError, match=message):
        unit_index(explicit, env, n)


def test_unit_index_reads_os_environ_by_default(monkeypatch):
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "4")
    assert unit_index(None, n_units=5) == 4


# ---- unit folders ----


@pytest.mark.parametrize("name, expected", [
    ("NVIDIA H100 80GB HBM3", "NVIDIA-H100-80GB-HBM3"),
    ("Intel(R) Xeon(R) Platinum 8488C", "Intel-R-Xeon-R-Platinum-8488C"),
    ("AMD EPYC 7B13 64-Core Processor", "AMD-EPYC-7B13-64-Core-Processor"),
    ("../../etc", "etc"),
    ("", "unknown"),
    ("///", "unknown"),
])
def test_slug(name, expected):
    assert slug(name) == expected


def test_long_names_stay_distinct_and_short():
    a, b = "x" * 200 + "a", "x" * 200 + "b"
    assert slug(a) != slug(b) and len(slug(a)) <= 80


def test_unit_dir():
    u = Unit("hf:org/model", 8, ("noquant",))
    assert unit_dir("R", "NVIDIA H100 80GB HBM3", u).as_posix() == "R/NVIDIA-H100-80GB-HBM3/hf-org-model-bs8"
    assert unit_dir("R", "", u).as_posix() == "R/unknown-device/hf-org-model-bs8"


# ---- merging ----


def write_unit(root, device_name, unit, rows, env=None, jsonl=True, results=False):
    d = unit_dir(root, device_name, unit)
    d.mkdir(parents=True, exist_ok=True)
    env = {"device_name": device_name, "torch": "2.13.0", **(env or {})}
    (d / "environment.json").write_text(json.dumps(env))
    if jsonl:
        for r in rows:
            append_jsonl(d / "rows.jsonl", r)
    if results:
        ResultSet(tuple(rows), env).save(d)
    return d


def test_merge_two_devices_same_cells_stay_apart(tmp_path):
    u = Unit("mlp", 1, ("noquant", "int8dynamic"))
    cells = [row(mode="noquant"), row(mode="int8dynamic", ms=0.5)]
    write_unit(tmp_path, "AMD EPYC 7B13", u, cells, {"cpu_model": "AMD EPYC 7B13"})
    write_unit(tmp_path, "Intel(R) Xeon(R) 8488C", u, [row(mode="noquant", ms=3.0), row(mode="int8dynamic", ms=2.0)],
               {"cpu_model": "Intel"})
    m = collect(tmp_path)
    assert len(m.rows) == 4 and m.dropped == 0 and m.read == 4
    assert set(m.devices) == {"AMD EPYC 7B13", "Intel(R) Xeon(R) 8488C"}  # names from environment.json, not slugs
    assert len({r.key for r in m.rows}) == 4
    rs = m.result_set()
    assert rs.where(device_name="AMD EPYC 7B13", mode="int8dynamic").rows[0].median_ms == 0.5
    assert rs.where(device_name="Intel(R) Xeon(R) 8488C", mode="int8dynamic").rows[0].median_ms == 2.0
    env = m.environment
    assert env["devices"]["Intel(R) Xeon(R) 8488C"]["cpu_model"] == "Intel"
    assert env["torch"] == "2.13.0" and "device_name" not in env  # shared keys kept; differing ones only per device
    assert set(env["devices"]) == set(m.devices)
    assert "4 cell(s) from 2 unit folder(s) on 2 device(s)" in m.summary()


def test_merge_keeps_latest_non_error_and_counts_drops(tmp_path):
    u = Unit("mlp", 1, ("noquant", "int8dynamic", "int4weightonly"))
    write_unit(tmp_path, "cpu0", u, [
        row(mode="noquant", ms=1.0),
        row(mode="int8dynamic", status="error"),       # failed, then rerun on resume and succeeded
        row(mode="int8dynamic", ms=0.5),
        row(mode="noquant", ms=1.1),                    # a duplicate ok row (e.g. re-run without --resume): latest wins
        row(mode="int4weightonly", status="error"),     # failed twice: the latest error is kept
        Row(model="mlp", mode="int4weightonly", batch_size=1, status="error", reason="second", **COMMON),
    ])
    m = collect(tmp_path)
    got = {r.mode: r for r in m.rows}
    assert got["noquant"].median_ms == 1.1 and got["int8dynamic"].status == "ok"
    assert got["int4weightonly"].status == "error" and got["int4weightonly"].reason == "second"
    assert (m.read, m.dropped, len(m.rows)) == (6, 3, 3)
    assert [r.mode for r in m.rows] == ["noquant", "int8dynamic", "int4weightonly"]  # first-seen order


def test_an_ok_row_is_never_replaced_by_a_later_error(tmp_path):
    u = Unit("mlp", 1, ("noquant",))
    write_unit(tmp_path, "cpu0", u, [row(ms=1.0), row(status="error")])
    (r,) = collect(tmp_path).rows
    assert r.status == "ok"


def test_merge_reads_torn_lines_results_only_folders_and_skips_hidden(tmp_path):
    a, b = Unit("mlp", 1, ("noquant",)), Unit("mlp", 8, ("noquant",))
    da = write_unit(tmp_path, "cpu0", a, [row()])
    with open(da / "rows.jsonl", "a") as f:
        f.write('{"model": "mlp", "mo')  # a job killed while writing
    write_unit(tmp_path, "cpu0", b, [row(bs=8)], jsonl=False, results=True)
    hidden = tmp_path / ".submitit" / "123"
    hidden.mkdir(parents=True)
    ResultSet((row(mode="ghost"),), {}).save(hidden)
    assert find_unit_dirs(tmp_path) == sorted([da, unit_dir(tmp_path, "cpu0", b)])
    m = collect(tmp_path)
    assert sorted((r.batch_size, r.mode) for r in m.rows) == [(1, "noquant"), (8, "noquant")]


def test_merge_device_name_falls_back_to_the_folder(tmp_path):
    d = tmp_path / "Some-GPU" / "mlp-bs1"
    d.mkdir(parents=True)
    append_jsonl(d / "rows.jsonl", row())
    assert collect(tmp_path).devices == ("Some-GPU",)


def test_rows_keep_their_own_device_name_and_old_rows_get_their_folders(tmp_path):
    u = Unit("mlp", 1, ("noquant", "x"))
    d = unit_dir(tmp_path, "gpu", u)
    d.mkdir(parents=True)
    (d / "environment.json").write_text(json.dumps({"device_name": "NVIDIA A100"}))
    append_jsonl(d / "rows.jsonl", row(device_name="NVIDIA L4"))
    append_jsonl(d / "rows.jsonl", row(mode="x"))  # written before rows knew their device
    m = collect(tmp_path)
    assert [r.device_name for r in m.rows] == ["NVIDIA L4", "NVIDIA A100"] and m.devices == ("NVIDIA L4", "NVIDIA A100")


def test_previous_results_set_aside_by_a_fresh_sweep_are_not_merged(tmp_path):
    u = Unit("mlp", 1, ("noquant",))
    d = write_unit(tmp_path, "cpu0", u, [row(ms=1.0)])
    old = d / "previous" / "20260101-000000-000000"
    old.mkdir(parents=True)
    append_jsonl(old / "rows.jsonl", row(ms=9.0))
    assert [r.median_ms for r in collect(tmp_path).rows] == [1.0]


def test_merge_writes_a_results_folder_that_loads(tmp_path):
    root, out = tmp_path / "root", tmp_path / "merged"
    u = Unit("mlp", 1, ("noquant",))
    write_unit(root, "cpu0", u, [row()])
    write_unit(root, "cpu1", u, [row(ms=2.0)])
    m = merge(root, out)
    loaded = ResultSet.load(out)
    assert len(loaded) == 2 and loaded.environment["devices"].keys() == {"cpu0", "cpu1"}
    assert m.result_set().rows == loaded.rows == ResultSet.load(out / "rows.jsonl").rows


def test_merge_into_a_sweeps_folder_moves_its_rows_aside_and_loses_none(tmp_path):
    root, out = tmp_path / "root", tmp_path / "sweep1"
    write_unit(root, "cpu0", Unit("mlp", 1, ("noquant",)), [row(ms=1.0)])
    mine = [row(mode="noquant", ms=5.0), row(mode="int8dynamic", ms=4.0)]
    out.mkdir()
    for r in mine:
        append_jsonl(out / "rows.jsonl", r)
    ResultSet(tuple(mine), {}).save(out)
    before = (out / "rows.jsonl").read_bytes()
    m = merge(root, out)
    assert [r.median_ms for r in ResultSet.load(out / "rows.jsonl").rows] == [1.0]
    assert m.set_aside is not None and m.set_aside.parent == out / "previous"
    assert (m.set_aside / "rows.jsonl").read_bytes() == before  # every earlier row, byte for byte
    assert ResultSet.load(m.set_aside).rows == tuple(mine)


def test_merge_refuses_a_folder_a_sweep_is_writing(tmp_path):
    from torchao_nb.folder import ResultsFolder

    root, out = tmp_path / "root", tmp_path / "live"
    write_unit(root, "cpu0", Unit("mlp", 1, ("noquant",)), [row(ms=1.0)])
    with ResultsFolder(out) as live:
        live.append(row(ms=7.0))
        with pytest.raises(UserError, match="in use by another run"):
            merge(root, out)
        assert [r.median_ms for r in ResultSet.load(out / "rows.jsonl").rows] == [7.0]
    assert not (out / "previous").exists()


def test_merge_out_that_is_a_file_is_refused(tmp_path):
    root = tmp_path / "root"
    write_unit(root, "cpu0", Unit("mlp", 1, ("noquant",)), [row(ms=1.0)])
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(UserError, match="is a file; merge writes a results folder"):
        merge(root, tmp_path / "x.json")
    assert (tmp_path / "x.json").read_text() == "{}"


def test_a_unit_that_is_not_results_is_one_line_and_unreadable_lines_are_named(tmp_path):
    good = write_unit(tmp_path, "cpu0", Unit("mlp", 1, ("noquant",)), [row(ms=1.0)])
    torn = write_unit(tmp_path, "cpu0", Unit("mlp", 2, ("noquant",)), [])
    (torn / "rows.jsonl").write_text("garbage\n{\"also\": 1}\n")
    m = collect(tmp_path)
    assert len(m.rows) == 1 and f"not merged: {torn / 'rows.jsonl'}: lines 1, 2 could not be read" in m.summary()
    other = tmp_path / "cpu0" / "mlp-bs4"
    other.mkdir()
    (other / "results.json").write_text('{"hello": "world"}')
    with pytest.raises(UserError, match=r"results.json is not a torchao_nb results file \(.*\); move it out of"):
        collect(tmp_path)
    assert good.exists()


def test_merge_errors(tmp_path):
    with pytest.raises(UserError, match="no results folder"):
        collect(tmp_path / "missing")
    with pytest.raises(UserError, match="no unit folders under"):
        collect(tmp_path)
    write_unit(tmp_path, "cpu0", Unit("mlp", 1, ("noquant",)), [row()])
    with pytest.raises(UserError, match="inside"):
        merge(tmp_path, tmp_path / "merged")


def test_later_folder_wins_across_folders(tmp_path):
    # the same cell in two folders of one device (e.g. a unit re-planned under another name): newest file wins
    u1, u2 = Unit("mlp", 1, ("noquant",)), Unit("mlp", 1, ("noquant",), options={"x": 1})
    d1 = write_unit(tmp_path / "a", "cpu0", u1, [row(ms=1.0)])
    d2 = write_unit(tmp_path / "b", "cpu0", u2, [row(ms=2.0)])
    old = time.time() - 100
    os.utime(d1 / "rows.jsonl", (old, old))
    m = collect(tmp_path)
    assert [r.median_ms for r in m.rows] == [2.0] and m.dropped == 1
    os.utime(d2 / "rows.jsonl", (old - 100, old - 100))
    assert [r.median_ms for r in collect(tmp_path).rows] == [1.0]
