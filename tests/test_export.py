"""The PyTorch OSS benchmark database ("v3") export: fake rows, no sweeps."""

import copy
import dataclasses
import json
import math

import pytest

from torchao_nb.export import (
    METRICS, REQUIRED_FIELDS, V3SchemaError, export_pytorch_v3, omitted_rows, pytorch_v3_records, row_records,
    v3_problems, validate_v3, write_v3,
)
from torchao_nb.results import ResultSet, Row

ENV = {"torch": "2.13.0+cpu", "torchao": "0.18.0", "device": "cpu", "device_name": "AMD EPYC 7B13",
       "cpu_model": "AMD EPYC 7B13", "cpu_count": 2, "threads": 2, "python": "3.11.9", "cuda": None}
COMMON = dict(model="mlp", batch_size=1, device="cpu", dtype="bfloat16", compile=True, baseline=True, compile_mode="default")


def rows():
    return (
        Row(mode="noquant", status="ok", median_ms=2.0, iqr_ms=0.1, samples=30, noisy=False, baseline_ms=2.0, eager_ms=2.5,
            speedup=1.0, speedup_vs_eager=1.25, sqnr_db=None, cosine=1.0, weight_bytes=34_600_000, threads=2, **COMMON),
        Row(mode="int8dynamic", status="ok", median_ms=1.0, iqr_ms=0.2, samples=40, noisy=True, baseline_ms=2.0, eager_ms=2.5,
            speedup=2.0, speedup_vs_eager=2.5, sqnr_db=31.25, cosine=0.9993, max_abs_err=0.01, weight_bytes=17_400_000,
            peak_mem_bytes=5_000_000, tokens_per_s=123.0, layers_quantized=6, layers_total=6, threads=2,
            disk_bytes=17_500_000, perplexity=21.0, perplexity_change_pct=5.0, agreement=0.75, gen_tokens_per_s=30.0,
            recipe=json.dumps({"_type": "Int8DynamicActivationInt8WeightConfig"}), **COMMON),
        Row(mode="float8dynamic", status="skipped", reason="needs a CUDA GPU with compute capability >= 8.9", **COMMON),
        Row(mode="int4weightonly", status="error", reason="RuntimeError: boom", **COMMON),
    )


def by_metric(records):
    return {(r["benchmark"]["dtype"], r["metric"]["name"]): r for r in records}


def test_one_record_per_ok_row_and_metric_present():
    records = pytorch_v3_records(ResultSet(rows(), ENV))
    got = by_metric(records)
    # noquant: latency, 2 speedups, weights; identical output (SQNR None) has no SQNR record, no tokens/s, no memory
    assert {m for d, m in got if d == "noquant"} == {"median latency (ms)", "speedup vs unquantized (x)",
                                                       "speedup vs eager (x)", "weights (MB)"}
    assert {m for d, m in got if d == "int8dynamic"} == {m.name for m in METRICS}
    assert len(records) == 4 + len(METRICS)
    assert got[("int8dynamic", "median latency (ms)")]["metric"]["benchmark_values"] == [1.0]
    assert got[("int8dynamic", "speedup vs eager (x)")]["metric"]["benchmark_values"] == [2.5]
    assert got[("int8dynamic", "SQNR (dB)")]["metric"]["benchmark_values"] == [31.25]
    assert got[("int8dynamic", "tokens per second (tok/s)")]["metric"]["benchmark_values"] == [123.0]
    assert got[("int8dynamic", "weights (MB)")]["metric"]["benchmark_values"] == [pytest.approx(17.4)]
    # a language model's quality and generation speed travel too
    assert got[("int8dynamic", "perplexity")]["metric"]["benchmark_values"] == [21.0]
    assert got[("int8dynamic", "greedy agreement (%)")]["metric"]["benchmark_values"] == [75.0]
    assert got[("int8dynamic", "generation tokens per second (tok/s)")]["metric"]["benchmark_values"] == [30.0]
    assert got[("int8dynamic", "size on disk (MB)")]["metric"]["benchmark_values"] == [pytest.approx(17.5)]
    validate_v3(records)


def test_skipped_and_error_rows_are_not_exported_but_reported():
    rs = ResultSet(rows(), ENV)
    records = pytorch_v3_records(rs)
    assert {r["benchmark"]["dtype"] for r in records} == {"noquant", "int8dynamic"}
    assert [r.mode for r in omitted_rows(rs)] == ["float8dynamic", "int4weightonly"]
    assert row_records(rows()[2], ENV) == [] and row_records(rows()[3], ENV) == []


def test_the_same_cell_timed_two_ways_exports_two_distinguishable_records():
    import dataclasses

    quick = dataclasses.replace(rows()[1], timing="quick", cache="warm", replicates=1)
    full = dataclasses.replace(rows()[1], timing="bursts", cache="warm", replicates=3, median_ms=0.9)
    a, b = (row_records(r, ENV)[0]["benchmark"]["extra_info"] for r in (quick, full))
    assert a != b and (a["timing"], a["replicates"]) == ("quick", "1") and (b["timing"], b["replicates"]) == ("bursts", "3")
    assert a["cache"] == b["cache"] == "warm"


def test_record_layout_matches_torchao_ci():
    rec = by_metric(pytorch_v3_records(ResultSet(rows(), ENV)))[("int8dynamic", "median latency (ms)")]
    assert set(rec) == {"benchmark", "model", "metric", "runners", "dependencies"}
    assert rec["benchmark"]["name"] == "torchao_nb" and rec["benchmark"]["mode"] == "inference"
    extra = rec["benchmark"]["extra_info"]
    assert extra["device"] == "cpu" and extra["arch"] == "AMD EPYC 7B13" and extra["dtype"] == "bfloat16"
    assert extra["batch_size"] == "1" and extra["compile"] == "True"
    assert rec["model"] == {"name": "mlp", "type": "model", "backend": "inductor", "origins": ["torchao_nb"],
                            "extra_info": {"layers_quantized": "6", "layers_total": "6"}}
    assert rec["metric"]["extra_info"]["unit"] == "ms" and rec["metric"]["extra_info"]["noisy"] == "True"
    assert rec["metric"]["target_value"] == 0.0
    speedup = by_metric(pytorch_v3_records(ResultSet(rows(), ENV)))[("int8dynamic", "speedup vs unquantized (x)")]
    assert speedup["metric"]["extra_info"] == {"unit": "x", "reference": "unquantized model, compiled alike", "reference_ms": "2.0"}
    runner = rec["runners"][0]
    assert runner["name"] == "cpu" and runner["type"] == "AMD EPYC 7B13" and runner["cpu_count"] == 2 and runner["gpu_count"] == 0
    assert rec["dependencies"]["torch"]["version"] == "2.13.0+cpu"
    assert rec["dependencies"]["torchao"] == {"repo": "pytorch/ao", "branch": "", "sha": "", "version": "0.18.0", "extra_info": {}}
    # every extra_info value is a string: the table's maps are Map(String, String)
    for section in ("benchmark", "model", "metric"):
        assert all(isinstance(v, str) for v in rec[section]["extra_info"].values())


def test_rows_that_know_their_device_and_versions_win_over_the_environment():
    gpu = dataclasses.replace(rows()[1], device="cuda", device_name="NVIDIA H100 80GB HBM3",
                              torch_version="2.9.0+cu128", torchao_version="0.14.0")
    env = {**ENV, "devices": {"NVIDIA H100 80GB HBM3": {"cpu_model": "Intel Xeon 8480", "cuda": "12.8"}}}
    rec = pytorch_v3_records(ResultSet((gpu,), env))[0]
    assert rec["benchmark"]["extra_info"]["arch"] == "NVIDIA H100 80GB HBM3"
    assert rec["runners"][0]["gpu_info"] == "NVIDIA H100 80GB HBM3" and rec["runners"][0]["gpu_count"] == 1
    assert rec["runners"][0]["cpu_info"] == "Intel Xeon 8480" and rec["runners"][0]["extra_info"]["cuda"] == "12.8"
    assert rec["dependencies"]["torch"]["version"] == "2.9.0+cu128"
    assert rec["dependencies"]["torchao"]["version"] == "0.14.0"
    validate_v3([rec])


def test_metadata_is_merged_in_like_the_uploader_does():
    meta = {"schema_version": "v3", "repo": "me/fork", "head_sha": "abc", "workflow_id": 1, "run_attempt": 1, "job_id": 2}
    records = pytorch_v3_records(ResultSet(rows(), ENV), metadata=meta)
    assert all(r["repo"] == "me/fork" and r["schema_version"] == "v3" for r in records)
    validate_v3(records)


def test_required_fields_missing_are_each_reported():
    good = pytorch_v3_records(ResultSet(rows()[:1], ENV))[0]
    for section, keys in REQUIRED_FIELDS.items():
        broken = copy.deepcopy(good)
        del broken[section]
        assert any(f"missing required {section!r}" in p for p in v3_problems([broken]))
        for key in keys:
            broken = copy.deepcopy(good)
            del broken[section][key]
            assert any(f"missing required field {section}.{key}" in p for p in v3_problems([broken]))
    with pytest.raises(V3SchemaError, match="metric.benchmark_values"):
        broken = copy.deepcopy(good)
        del broken["metric"]["benchmark_values"]
        validate_v3([broken])


@pytest.mark.parametrize("path, value, message", [
    (("metric", "benchmark_values"), [math.nan], "finite number"),
    (("metric", "benchmark_values"), [math.inf], "finite number"),
    (("metric", "benchmark_values"), [True], "finite number"),
    (("metric", "benchmark_values"), [], "non-empty list"),
    (("metric", "benchmark_values"), 1.0, "non-empty list"),
    (("metric", "name"), 3, "expected a string"),
    (("benchmark", "extra_info"), {"compile": True}, "must be strings"),
    (("model", "origins"), "torchao", "list of strings"),
    (("metric", "target_value"), "0", "finite number"),
    (("runners",), [{"cpu_count": -1}], "non-negative integer"),
    (("runners",), {"name": "cpu"}, "list of runners"),
    (("dependencies",), {"torch": {"version": 2}}, "expected a string"),
    (("metric", "unit"), "ms", "not a field of the v3 schema"),
    (("job_id",), "7", "non-negative integer"),
])
def test_wrong_types_are_reported(path, value, message):
    rec = copy.deepcopy(pytorch_v3_records(ResultSet(rows()[:1], ENV))[0])
    target = rec
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    problems = v3_problems([rec])
    assert any(message in p for p in problems), problems


def test_not_a_list_or_not_objects():
    assert v3_problems({"metric": {}}) == ["expected a JSON list of records, got dict"]
    assert "expected an object" in v3_problems(["x"])[0]
    assert v3_problems([]) == []


def test_write_v3_is_a_strict_json_list_the_uploader_reads(tmp_path):
    rs = ResultSet(rows(), ENV)
    path, n, left_out = export_pytorch_v3(rs, tmp_path / "out" / "torchao_nb-v3.json")
    data = json.loads(path.read_text())
    assert isinstance(data, list) and len(data) == n == len(pytorch_v3_records(rs))
    assert all("metric" in r for r in data)  # test-infra's uploader skips records without it
    assert [r.mode for r in left_out] == ["float8dynamic", "int4weightonly"]
    validate_v3(data)
    with pytest.raises(V3SchemaError):
        write_v3([{"metric": {"name": "x", "benchmark_values": [math.nan]}}], tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


def test_records_share_no_objects():
    records = pytorch_v3_records(ResultSet(rows(), ENV))
    records[0]["benchmark"]["extra_info"]["device"] = "changed"
    assert records[1]["benchmark"]["extra_info"]["device"] == "cpu"
