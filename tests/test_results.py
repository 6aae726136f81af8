import csv
import dataclasses
import json

import pytest

from torchao_nb.results import CSV_COLUMNS, ResultSet, Row, append_jsonl, atomic_write, read_jsonl


def sample_rows():
    common = dict(model="mlp", batch_size=1, device="cpu", dtype="bfloat16", compile=True, baseline=True)
    return (
        Row(mode="noquant", status="ok", median_ms=2.0, iqr_ms=0.1, samples=30, noisy=False, baseline_ms=2.0,
            eager_ms=2.5, speedup=1.0, speedup_vs_eager=1.25, compile_s=3.2, sqnr_db=None, cosine=1.0,
            weight_bytes=1000, layers_quantized=0, layers_total=2, recipe="", replicates=3, cache="cold", **common),
        Row(mode="int8dynamic", status="ok", median_ms=1.0 / 3, iqr_ms=0.01, speedup=6.0, sqnr_db=31.25,
            cosine=0.9993, recipe=json.dumps({"_type": "Int8DynamicActivationInt8WeightConfig"}), **common),
        Row(mode="float8dynamic", status="skipped", reason="needs CUDA, with, commas \"and quotes\"", **common),
        Row(mode="int4weightonly", status="error", reason="RuntimeError: boom\nsecond line", **common),
    )


def test_csv_json_round_trip_equal(tmp_path):
    rs = ResultSet(sample_rows(), {"torch": "2.13.0", "threads": 2})
    rs.save(tmp_path)
    assert ResultSet.load(tmp_path / "results.json") == rs
    assert ResultSet.load(tmp_path / "results.csv") == rs
    assert ResultSet.load(tmp_path) == rs


def test_the_cache_state_is_part_of_the_key():
    warm, cold = sample_rows()[0], dataclasses.replace(sample_rows()[0], cache="warm")
    assert warm.key != cold.key  # --resume never mixes warm and cold timings


def test_csv_has_dynamo_columns_first(tmp_path):
    ResultSet(sample_rows(), {}).save(tmp_path)
    with open(tmp_path / "results.csv") as f:
        header = next(csv.reader(f))
    assert header[:5] == ["dev", "name", "batch_size", "speedup", "abs_latency"]
    for col in ["mode", "status", "reason", "speedup_vs_eager", "iqr_ms", "compile_s", "sqnr_db", "cosine", "weight_bytes"]:
        assert col in header
    assert header == CSV_COLUMNS


def test_dataframe_and_where():
    rs = ResultSet(sample_rows(), {})
    df = rs.to_dataframe()
    assert list(df["mode"]) == ["noquant", "int8dynamic", "float8dynamic", "int4weightonly"]
    assert len(rs.where(status="ok")) == 2


def test_bad_status_rejected():
    with pytest.raises(ValueError):
        Row("m", "noquant", 1, "cpu", "float32", False, False, "done")


def test_jsonl_keeps_rows_and_survives_a_torn_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = sample_rows()
    for r in rows[:2]:
        append_jsonl(path, r)
    with open(path, "a") as f:
        f.write('{"model": "mlp", "mode": "int8')  # a crash mid-write
    assert read_jsonl(path) == list(rows[:2])


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "results.csv"
    target.write_text("old")

    class Boom(str):
        pass

    with pytest.raises(TypeError):
        atomic_write(target, 12345)  # not text: the write fails
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


def test_table_mentions_reasons():
    from torchao_nb import tables

    text = tables.text(ResultSet(sample_rows(), {}))
    assert "needs CUDA" in text and "int8dynamic" in text and "6.00" in text


@pytest.mark.parametrize("field, value, why", [("speedup", [1, 2], "speedup must be a number"),
                                               ("median_ms", "fast", "median_ms must be a number"),
                                               ("samples", 2.5, "samples must be a whole number"),
                                               ("compile", "yes", "compile must be true or false"),
                                               ("extra", "{broken", "extra is not JSON")])
def test_a_wrongly_typed_row_is_a_named_bad_line_and_the_good_rows_load(tmp_path, field, value, why):
    from torchao_nb import tables

    good = sample_rows()[0]
    bad = dict(good.to_dict(), **{field: value})
    (tmp_path / "rows.jsonl").write_text(json.dumps(good.to_dict()) + "\n" + json.dumps(bad) + "\n")
    from torchao_nb.results import read_rows

    read = read_rows(tmp_path / "rows.jsonl")
    assert read.rows == (good,) and read.bad[0][0] == 2 and why in read.bad[0][1]
    assert "noquant" in tables.text(ResultSet.load(tmp_path / "rows.jsonl"))
