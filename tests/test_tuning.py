"""Tuning as a choice (torchao | fast | off): what each sets, the row and resume key that record it, and the old
bool spelling (`torchao_tuning`, `--torchao-tuning`, rows written with it) still read as the choice it meant."""

import contextlib
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from torchao_nb import UserError, baseline, cli, compiling, config, measure, spec
from torchao_nb.errors import Notice
from torchao_nb.reference import ModelSource, cell_spec
from torchao_nb.results import ResultSet, Row

FIXTURE = Path(__file__).parent / "fixtures" / "folder-v1"
H200_DECODE = Path(__file__).parent.parent / "docs" / "gpu" / "NVIDIA-H200" / "2026-11-28-1-layer" / "decode"
CD = "torch._inductor.config.coordinate_descent_tuning"
ALL_DIRECTIONS = "torch._inductor.config.coordinate_descent_check_all_directions"


def values(name: str) -> dict:
    return {s.key: s.value for s in baseline.TUNINGS[name].settings}


def test_each_choice_sets_what_it_says_and_fast_keeps_the_one_row_rewrite():
    assert compiling.TUNINGS == ("torchao", "fast", "off")
    assert values("torchao") == {s.key: s.value for s in baseline.TORCHAO_TUNING}
    assert values("torchao")[CD] and values("torchao")[ALL_DIRECTIONS]
    # fast: the rewrite int8/float8 weight-only need (coordinate_descent_tuning) without the wide search
    assert values("fast")[CD] is True and values("fast")[ALL_DIRECTIONS] is False
    assert set(values("fast")) == set(values("torchao"))
    assert values("off") == {}
    assert all(t.why for t in baseline.TUNINGS.values())


@pytest.mark.parametrize("name", ["torchao", "fast", "off"])
def test_a_compiled_group_applies_its_tuning_and_gives_every_value_back(name):
    before = torch._inductor.config.get_config_copy()
    with compiling.compiled_cell(compiling.CompileSettings(tuning=name)):
        now = (torch._inductor.config.coordinate_descent_tuning,
               torch._inductor.config.coordinate_descent_check_all_directions)
    assert now == (values(name).get(CD, before["coordinate_descent_tuning"]),
                   values(name).get(ALL_DIRECTIONS, before["coordinate_descent_check_all_directions"]))
    assert torch._inductor.config.get_config_copy() == before


def test_the_row_and_its_resume_key_record_the_choice():
    source = ModelSource("mlp")
    specs = {t: cell_spec(config.build(["noquant"], False, False, device="cpu", tuning=t), source, "noquant", 1)
             for t in compiling.TUNINGS}
    assert {t: s.tuning for t, s in specs.items()} == {t: t for t in compiling.TUNINGS}
    assert len({s.key for s in specs.values()}) == 3  # --resume re-uses a row only for the same choice
    assert spec.differences(specs["fast"], specs["off"]) == "tuning 'fast' (this run: 'off')"
    eager = config.build(["noquant"], False, False, device="cpu", compile=False, tuning="torchao")
    assert cell_spec(eager, source, "noquant", 1).tuning == "off"  # nothing compiled, nothing tuned
    row = Row.of(specs["fast"], "ok")
    assert Row.from_dict(json.loads(json.dumps(row.to_dict()))) == row
    assert ResultSet((row,)).to_csv_text().splitlines()[0].split(",").count("tuning") == 1


def test_rows_written_with_the_old_bool_read_as_the_choice_it_meant():
    new = Row.of(spec.CellSpec(model="mlp", mode="noquant", batch_size=1, device="cpu", dtype="float32",
                               compile=True, baseline=True, tuning="fast"), "ok")
    old = {f: v for f, v in new.to_dict().items() if f != "tuning"}
    assert Row.from_dict({**old, "torchao_tuning": True}).tuning == "torchao"
    assert Row.from_dict({**old, "torchao_tuning": False}).tuning == "off"
    assert Row.from_dict(old).tuning == "off"  # written before either: the old default, off
    with pytest.raises(ValueError, match="tuning must be text"):
        Row.from_dict({**old, "torchao_tuning": [1]})
    # the schema-1 folder (CPU, compile off) and the H200's folder (torchao's tuning on), from every file they hold
    for folder, meant in ((FIXTURE, "off"), (H200_DECODE, "torchao")):
        for name in ("results.json", "rows.jsonl", "results.csv"):
            rows = ResultSet.load(folder / name).rows
            assert rows and {r.tuning for r in rows} == {meant}, (folder, name)


def test_the_old_spellings_still_work_with_a_notice():
    with pytest.warns(Notice, match=r"torchao_tuning=True is now tuning='torchao' \(on the command line --tuning "
                                    r"torchao\); the old spelling still works"):
        assert config.build(["noquant"], False, False, device="cpu", torchao_tuning=True).compile.tuning == "torchao"
    with pytest.warns(Notice, match="is now tuning='off'"):
        assert config.build(["noquant"], False, False, device="cpu", torchao_tuning=False).compile.tuning == "off"
    with pytest.raises(UserError, match="torchao_tuning=True says tuning='torchao', but tuning='fast' was given too"):
        config.build(["noquant"], False, False, device="cpu", torchao_tuning=True, tuning="fast")
    with pytest.raises(UserError, match="torchao_tuning must be True or False, got 'yes'"):
        config.build(["noquant"], False, False, device="cpu", torchao_tuning="yes")


@pytest.mark.parametrize("flags, meant", [(["--tuning", "fast"], "fast"), (["--torchao-tuning"], "torchao"),
                                          (["--no-torchao-tuning"], "off"), ([], None)])
def test_the_command_line_takes_the_choice_and_the_old_flags(flags, meant):
    args = cli.parser().parse_args(["run", "--model", "mlp", "--out", "unused", *flags])
    renamed = any("torchao-tuning" in f for f in flags)
    with pytest.warns(Notice, match="the old spelling still works") if renamed else contextlib.nullcontext():
        opts, _ = config.split_options(cli._sweep_options(args))
    assert opts.get("tuning") == meant


def test_the_old_flags_are_not_in_the_help_and_a_bad_choice_is_one_line(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--tuning TUNING inductor tuning of every compiled cell" in help_text
    assert "--torchao-tuning" not in help_text
    with pytest.raises(UserError, match=r"unknown tuning 'slow'; choose one of: torchao, fast, off \(docs/") as e:
        config.build(["noquant"], False, False, device="cpu", tuning="slow")
    assert "\n" not in str(e.value)


def test_the_environment_names_the_choice_and_its_settings(tmp_path):
    from torchao_nb import sweep

    rs = sweep("mlp", modes="noquant", device="cpu", dtype="float32", compile=False, tuning="fast", isolate=False,
               progress=False, policy=measure.FAST_POLICY, save_reload=False, out=tmp_path / "out")
    env = json.loads((tmp_path / "out" / "environment.json").read_text())
    assert env["tuning"] == "fast" and "torchao_tuning" not in env
    assert {s["key"]: s["new"] for s in env["tuning_settings"]}[ALL_DIRECTIONS] is False
    assert rs.rows[0].tuning == "off"  # compile off: the row says nothing was tuned
    from torchao_nb import report

    assert "inductor tuning" in report.environment_table(env) and "Inductor tuning settings" in report.baseline_table(env)


def test_the_price_figure_puts_each_tuning_of_each_mode_at_its_compile_time_and_speed():
    from torchao_nb import plots

    base = spec.CellSpec(model="mlp", mode="noquant", batch_size=1, device="cpu", dtype="bfloat16", compile=True,
                         baseline=True)
    runs = [ResultSet(tuple(Row.of(dataclasses.replace(base, mode=m, tuning=t), "ok", compile_s=c + i, speedup=s)
                            for m, c, s in (("noquant", 2.0, 1.0), ("int8weightonly", 4.0, 1.5))))
            for i, t in enumerate(compiling.TUNINGS)]
    skipped = ResultSet((Row.of(dataclasses.replace(base, mode="float8dynamic"), "skipped", "needs CUDA"),))
    fig = plots.tuning_price(runs + [skipped])
    ax = fig.axes[0]
    points = {c.get_gid(): tuple(c.get_offsets()[0]) for c in ax.collections if (c.get_gid() or "").startswith("point")}
    assert points == {f"point|{m}|{t}": (c + i, s) for i, t in enumerate(compiling.TUNINGS)
                      for m, c, s in (("noquant", 2.0, 1.0), ("int8weightonly", 4.0, 1.5))}
    legend = " ".join(t.get_text() for lg in fig.legends + [ax.get_legend()] if lg for t in lg.get_texts())
    assert "tuning torchao" in legend and "tuning off" in legend and "needs CUDA" in legend
    with pytest.raises(UserError, match="no row has both a compile time and a speedup"):
        plots.tuning_price(skipped)
