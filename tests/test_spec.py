"""One definition of a cell's key (CellSpec), typed extras, and the results schema version: a folder written before
them (tests/fixtures/folder-v1, by `python -m torchao_nb run` at commit 6fcda33) still loads, resumes and reports."""

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from torchao_nb import UserError, extras, measure, reference, report, results, runs, spec, sweep, tables
from torchao_nb.errors import Notice
from torchao_nb.extras import (Autoquant, CarriedCache, CompileNotes, EagerCheck, Extras, Generations, LayerConfigs,
                               LayersLeftAlone, Perplexity, Profile, Repro, SaveReload, TaskCosine, TimingNotes, Warmed,
                               WorkerLog, extra_text)
from torchao_nb.results import FOLDER_FILES, SCHEMA_KEY, SCHEMA_VERSION, ResultSet, Row, SchemaError, append_jsonl
from torchao_nb.spec import CellSpec

FIXTURE = Path(__file__).parent / "fixtures" / "folder-v1"
SPEC = CellSpec(model="mlp", mode="int8dynamic", batch_size=1, device="cpu", dtype="float32", compile=False,
                baseline=True)


# ---- one definition per cell key ------------------------------------------------------------------

def test_the_cell_key_is_defined_once_by_the_spec():
    assert results.KEY_FIELDS == spec.KEY_FIELDS == tuple(f.name for f in dataclasses.fields(CellSpec))
    assert results.CELL_FIELDS + results.SETTING_FIELDS == results.KEY_FIELDS
    assert runs.CELL == spec.CELL == ("model", "mode", "batch_size")
    row = Row.of(SPEC, "skipped", "not here", layers_total=3)
    assert row.spec == SPEC and row.key == SPEC.key and row.spec.cell == ("mlp", "int8dynamic", 1)
    assert (row.status, row.reason, row.layers_total, row.model) == ("skipped", "not here", 3, "mlp")  # still flat
    with pytest.raises(dataclasses.FrozenInstanceError):
        SPEC.mode = "noquant"


def test_a_spec_differs_in_words():
    other = dataclasses.replace(SPEC, seq_len=16, timing="quick")
    assert spec.differences(other, SPEC) == "seq_len 16 (this run: not recorded), another timing policy"
    assert spec.differences(other, SPEC, results.SETTING_FIELDS) == "another timing policy"


# ---- typed extras ---------------------------------------------------------------------------------

SAMPLES = [SaveReload("torch.save of the state_dict, loaded into a fresh model"), LayersLeftAlone({"fc": "too small"}),
           LayerConfigs({"group 64": ["a"], "group 32": ["b", "c"]}), Autoquant({"layers": []}, 1.5),
           Generations(["Once"], [" upon"], [" a"], 4, "eager"), Perplexity("a fixed passage", 9.48),
           TaskCosine("task: sentences", 0.97, 0.99), CompileNotes(graph_breaks=["m.py:3: print"]),
           TimingNotes(busy="other processes used 1.2 cores"), Profile("aten::mm 90%"), EagerCheck(None),
           CarriedCache("loaded 3 inductor graph(s) from out/compile-cache.bin"),
           Warmed("compiled first in a helper process (2.1 s), then here from the caches it filled", 2.1, 90_000_000),
           WorkerLog("Segmentation fault"),
           Repro("repro/mlp-int8weightonly-bs1.py", "fc1: nn.Linear(8, 8); exit -11", True)]


def test_every_kind_of_extra_round_trips_through_a_row_and_unknown_keys_are_kept():
    assert {type(x) for x in SAMPLES} == set(extras.KINDS)
    row = Row.of(SPEC, "ok", extra=extra_text(*SAMPLES, {"from_a_newer_version": [1, 2]}))
    for x in SAMPLES:
        assert row.extra_of(type(x)) == x
    assert row.extras.unknown == {"from_a_newer_version": [1, 2]}
    assert json.loads(row.extras.text()) == row.extra_dict  # written back unchanged
    # the JSON keeps the shape earlier versions wrote: top-level keys, generations nested, a meaningful null
    assert row.extra_dict["generations"]["new_tokens"] == 4 and row.extra_dict["eager_sqnr_db"] is None
    assert row.extra_dict["layer_configs"] == {"group 64": ["a"], "group 32": ["b", "c"]}
    assert LayerConfigs({"group 64": ["a"], "group 32": ["b", "c"]}).counts() == [("group 32", 2), ("group 64", 1)]


def test_an_extra_this_version_cannot_read_is_kept_as_read_not_lost():
    read = Extras.parse('{"generations": {"prompts": ["p"]}, "save_reload": "ok", "autoquant": null}')
    assert read.of(Generations) is None and read.of(SaveReload) == SaveReload("ok")
    assert read.unknown == {"generations": {"prompts": ["p"]}, "autoquant": None}
    assert json.loads(read.text()) == {"generations": {"prompts": ["p"]}, "save_reload": "ok", "autoquant": None}
    assert Row.of(SPEC, "ok").extras == Extras() and not Row.of(SPEC, "ok").extras


def test_readers_use_the_typed_extras():
    row = Row.of(SPEC, "ok", median_ms=1.0, extra=extra_text(
        TimingNotes(not_steady="not a steady state"), LayerConfigs({"group 64": ["a"], "group 32": ["b", "c"]}),
        Generations(["Once"], [" upon"], [" a"], 4, "eager")))
    from torchao_nb import columns

    assert "not a steady state" in columns.note(row)
    assert columns.layer_configs(row) == "group 32 ×2, group 64 ×1"
    (title, prompts, cols), = tables.generations([row])
    assert prompts == ["Once"] and cols == [("unquantized (eager)", [" upon"]), ("int8dynamic", [" a"])]
    with pytest.raises(ValueError, match="no autoquant decision table"):
        tables.autoquant_tables([row])


# ---- the schema version ---------------------------------------------------------------------------

def test_results_files_carry_the_schema_version(tmp_path):
    rs = ResultSet.load(FIXTURE)
    rs.save(tmp_path)
    append_jsonl(tmp_path / "rows.jsonl", rs.rows[0])
    assert json.loads((tmp_path / "results.json").read_text())[SCHEMA_KEY] == SCHEMA_VERSION
    assert json.loads((tmp_path / "rows.jsonl").read_text().splitlines()[0])[SCHEMA_KEY] == SCHEMA_VERSION
    with open(tmp_path / "results.csv", newline="") as f:
        assert all(rec[SCHEMA_KEY] == str(SCHEMA_VERSION) for rec in csv.DictReader(f))
    for name in ("results.json", "results.csv"):
        assert ResultSet.load(tmp_path / name).rows == rs.rows
    assert ResultSet.load(tmp_path / "rows.jsonl").rows == rs.rows[:1]


@pytest.mark.parametrize("name", ["results.json", "rows.jsonl", "results.csv"])
def test_a_file_of_a_newer_schema_is_refused_in_one_line(tmp_path, name):
    rs = ResultSet.load(FIXTURE)
    rs.save(tmp_path)
    append_jsonl(tmp_path / "rows.jsonl", rs.rows[0])
    newer = SCHEMA_VERSION + 1
    path = tmp_path / name
    if name == "results.csv":
        path.write_text(path.read_text().replace(f",{SCHEMA_VERSION}\n", f",{newer}\n"))
    else:
        path.write_text(path.read_text().replace(f'"{SCHEMA_KEY}": {SCHEMA_VERSION}', f'"{SCHEMA_KEY}": {newer}'))
    for other in FOLDER_FILES:  # only the newer file in the folder: no fall-back hides it
        if other != name:
            (tmp_path / other).unlink()
    with pytest.raises(SchemaError, match=f"newer torchao_nb \\(results schema {newer}; this one reads up to "
                                          f"{SCHEMA_VERSION}\\): upgrade torchao_nb") as e:
        ResultSet.load(tmp_path)
    assert "\n" not in str(e.value) and name in str(e.value)
    with pytest.raises(UserError, match="upgrade torchao_nb"):
        runs.load_runs([tmp_path])


# ---- a folder written by the version before ------------------------------------------------------------

def test_the_old_folder_has_no_schema_version_and_every_file_of_it_loads_the_same_rows():
    assert SCHEMA_KEY not in json.loads((FIXTURE / "results.json").read_text())
    assert SCHEMA_KEY not in (FIXTURE / "rows.jsonl").read_text() + (FIXTURE / "results.csv").read_text()
    loaded = [ResultSet.load(FIXTURE / name).rows for name in FOLDER_FILES]
    assert loaded[0] == loaded[1] == loaded[2]
    rows = loaded[0]
    assert [(r.mode, r.status) for r in rows] == [("noquant", "ok"), ("int8weightonly", "ok")]
    assert all(r.extra_of(SaveReload) is not None for r in rows)  # its extras read into their kinds
    assert all(not r.extras.unknown for r in rows)


def test_the_old_folder_resumes_and_reports(tmp_path, monkeypatch, ran):
    folder = tmp_path / "old"
    shutil.copytree(FIXTURE, folder)
    old = ResultSet.load(folder).rows
    first = old[0]
    # As if on the machine that wrote it (its CPU model, its torch): the rest of the spec is this run's own.
    machine = dict(device_name=first.device_name, torch_version=first.torch_version,
                   torchao_version=first.torchao_version)
    monkeypatch.setattr(reference, "_where", lambda device: machine)
    with pytest.warns(Notice, match="re-using 2 of 3 cells"):
        rs = sweep("mlp", modes="noquant,int8weightonly,int8dynamic", device="cpu", dtype=first.dtype, compile=False,
                   threads=first.threads, policy=measure.FAST_POLICY, isolate=False, progress=False, out=folder,
                   resume=True)
    assert ran == ["int8dynamic"]  # only the new mode is measured
    assert rs.rows[:2] == old and rs.rows[2].mode == "int8dynamic" and rs.rows[2].status == "ok"
    assert ResultSet.load(folder).rows == rs.rows  # the folder holds the old rows and the new one
    assert json.loads((folder / "rows.jsonl").read_text().splitlines()[-1])[SCHEMA_KEY] == SCHEMA_VERSION
    text = tables.text(ResultSet.load(folder))
    assert all(mode in text for mode in ("noquant", "int8weightonly", "int8dynamic"))
    built = report.build([FIXTURE], tmp_path / "report.html")
    assert "int8weightonly" in built.html.read_text()
