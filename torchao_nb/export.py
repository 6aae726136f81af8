"""Export results as records of the PyTorch OSS benchmark database ("v3"), as torchao's own CI uploads them.

One record is one metric of one benchmark configuration; a file is a JSON list of records, which
pytorch/test-infra's `upload-benchmark-results` action (schema-version v3) reads from a directory.
The record layout follows the `benchmark.oss_ci_benchmark_v3` table: `benchmark`, `model`, `metric`
(`name` + `benchmark_values`), `runners`, `dependencies`; the CI metadata (repo, sha, workflow and
job ids, timestamp) is merged in by the uploader and is only added here when asked for.

Only `ok` rows are exported. A skipped or failed cell has no value to put in `benchmark_values`,
the table has no status column, and a 0 or NaN would be plotted as a regression; their reasons
stay in torchao_nb's own results files (`omitted_rows` lists them, so a caller can say so).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from .fields import Metric, metric_fields
from .results import ResultSet, Row, atomic_write

BENCHMARK_NAME = "torchao_nb"
ORIGIN = "torchao_nb"


# The metrics, from the field catalogue: a field with a `metric` is one record per row. Here as they were
# when this module was imported (row_records reads the catalogue itself).
METRICS: tuple[Metric, ...] = tuple(f.metric for f in metric_fields())

# ---- the v3 record: what is required, and the type of every field we may write ----

# Required: benchmark.name and model.name (the wiki marks them "Required"), and a metric with a
# name and its values (the uploader drops records without "metric"; the table's columns are not
# nullable). Their types, like every other field's, are in FIELD_TYPES.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "benchmark": ("name",),
    "model": ("name",),
    "metric": ("name", "benchmark_values"),
}

STR_MAP = "map<str,str>"
STR_LIST = "list<str>"
NUMBER = "number"
UINT = "uint"
# Every field of the table a record may carry, with its JSON type (optional unless in REQUIRED_FIELDS).
FIELD_TYPES: dict[str, Any] = {
    "benchmark": {"name": str, "mode": str, "dtype": str, "extra_info": STR_MAP},
    "model": {"name": str, "type": str, "backend": str, "origins": STR_LIST, "extra_info": STR_MAP},
    "metric": {"name": str, "benchmark_values": "list<number>", "target_value": NUMBER, "extra_info": STR_MAP},
    "inputs": "inputs",
    "runners": "runners",
    "dependencies": "dependencies",
    # CI metadata, normally merged in by the uploader
    "timestamp": UINT, "schema_version": str, "name": str, "repo": str, "head_branch": str, "head_sha": str,
    "workflow_id": UINT, "run_attempt": UINT, "job_id": UINT,
    "servicelab_experiment_id": UINT, "servicelab_trial_id": UINT,
}
RUNNER_FIELDS: dict[str, Any] = {
    "name": str, "type": str, "cpu_info": str, "cpu_count": UINT, "mem_info": str, "avail_mem_in_gb": UINT,
    "gpu_info": str, "gpu_count": UINT, "gpu_mem_info": str, "avail_gpu_mem_in_gb": UINT, "extra_info": STR_MAP,
}
DEPENDENCY_FIELDS: dict[str, Any] = {"repo": str, "branch": str, "sha": str, "version": str, "extra_info": STR_MAP}
INPUT_FIELDS: dict[str, Any] = {"dtype": str, "extra_info": STR_MAP}
KEYED: dict[str, tuple[str, dict[str, Any]]] = {"dependencies": ("dependency", DEPENDENCY_FIELDS),
                                                 "inputs": ("input", INPUT_FIELDS)}


class V3SchemaError(ValueError):
    """Records that the PyTorch OSS benchmark database would reject or misread."""


# ---- building records ----


def _s(value: Any) -> str:
    """extra_info maps are Map(String, String): every value as a string ("" for None)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _smap(d: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): _s(v) for k, v in d.items() if v is not None}


def _row_env(row: Row, environment: Mapping[str, Any]) -> dict[str, Any]:
    """The environment a row ran in: its own device name and versions first, then its device's environment
    in a merged result set (environment["devices"][device name]), then the result set's environment."""
    env = dict(environment)
    name = row.device_name or env.get("device_name")
    per_device = environment.get("devices")
    if isinstance(per_device, Mapping) and isinstance(per_device.get(name), Mapping):
        env.update(per_device[name])
    if name:
        env["device_name"] = name
    for field, key in (("torch_version", "torch"), ("torchao_version", "torchao")):
        if getattr(row, field):
            env[key] = getattr(row, field)
    return env


def _runner(row: Row, env: Mapping[str, Any]) -> dict[str, Any]:
    cuda = row.device == "cuda"
    name = env.get("device_name") or ""
    runner: dict[str, Any] = {
        "name": row.device,  # like test-infra's gather_runners_info: "cuda" / "cpu" ...
        "type": name,  # ... and the device model as the type
        "cpu_info": env.get("cpu_model") or "",
        "gpu_info": name if cuda else "",
        "gpu_count": 1 if cuda else 0,  # a sweep times one device
        "extra_info": _smap({k: env.get(k) for k in ("platform", "python", "cuda", "cuda_driver", "compute_capability", "threads", "hostname")}),
    }
    if isinstance(env.get("cpu_count"), int) and env["cpu_count"] >= 0:
        runner["cpu_count"] = env["cpu_count"]
    return runner


def _dependencies(env: Mapping[str, Any]) -> dict[str, Any]:
    deps = {}
    for name, repo in (("torch", "pytorch/pytorch"), ("torchao", "pytorch/ao")):
        version = env.get(name)
        if version:
            deps[name] = {"repo": repo, "branch": "", "sha": "", "version": str(version), "extra_info": {}}
    return deps


def row_records(row: Row, environment: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The v3 records of one row: one per metric the row has a finite value for; none unless ok."""
    if row.status != "ok":
        return []
    env = _row_env(row, environment or {})
    device_name = env.get("device_name") or ""
    benchmark = {
        "name": BENCHMARK_NAME,
        "mode": "inference",
        "dtype": row.mode,  # the quantization, as torchao's CI writes it; the compute dtype is in extra_info
        "extra_info": _smap({
            "device": row.device, "arch": device_name, "dtype": row.dtype, "batch_size": row.batch_size,
            "compile": row.compile, "compile_mode": row.compile_mode if row.compile else "",
            "baseline_settings": row.baseline, "threads": row.threads, "recipe": row.recipe or None,
            # the rest of the cell's key: two records of one cell timed differently must not read as one
            "tuning": row.tuning, "seq_len": row.seq_len, "timing": row.timing, "cache": row.cache,
            "replicates": row.replicates, "mode_settings": row.mode_settings or None,
            "model_signature": row.model_signature or None,
        }),
    }
    model = {
        "name": row.model,
        "type": "model",
        "backend": "inductor" if row.compile else "eager",
        "origins": [ORIGIN],
        "extra_info": _smap({"layers_quantized": row.layers_quantized, "layers_total": row.layers_total}),
    }
    common = {"runners": [_runner(row, env)], "dependencies": _dependencies(env)}
    records = []
    for f in metric_fields():
        m = f.metric
        value = getattr(row, f.attr, None)
        if value is None or isinstance(value, bool):
            continue
        value = float(value) * (f.scale if m.scale is None else m.scale)
        if not math.isfinite(value):
            continue
        extra = {"unit": f.unit if m.unit is None else m.unit, **(m.extra(row) if m.extra else {})}
        records.append({
            "benchmark": benchmark,
            "model": model,
            "metric": {"name": m.name, "benchmark_values": [value], "target_value": 0.0, "extra_info": _smap(extra)},
            **common,
        })
    return json.loads(json.dumps(records))  # independent copies: records share no dicts


def pytorch_v3_records(results: ResultSet, metadata: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every ok row's metrics as v3 records. `metadata` (e.g. {"schema_version": "v3", "repo": ...,
    "head_sha": ...}) is merged into each record at the top level, as the uploader does in CI."""
    records = []
    for row in results.rows:
        for rec in row_records(row, results.environment):
            records.append({**dict(metadata or {}), **rec})
    return records


def omitted_rows(results: ResultSet) -> list[Row]:
    """The rows pytorch_v3_records leaves out (skipped and error cells)."""
    return [r for r in results.rows if r.status != "ok"]


def write_v3(records: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Validate, then write the records as one JSON list (the file the upload action reads)."""
    validate_v3(records)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(records, indent=1, allow_nan=False) + "\n")
    return path


# ---- validating records ----


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check(value: Any, kind: Any, where: str, problems: list[str]) -> None:
    if kind is str:
        if not isinstance(value, str):
            problems.append(f"{where}: expected a string, got {type(value).__name__}")
    elif kind == NUMBER:
        if not _is_number(value):
            problems.append(f"{where}: expected a finite number, got {value!r}")
    elif kind == UINT:
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            problems.append(f"{where}: expected a non-negative integer, got {value!r}")
    elif kind == STR_MAP:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected an object of strings, got {type(value).__name__}")
        else:
            for k, v in value.items():
                if not isinstance(v, str):
                    problems.append(f"{where}.{k}: extra_info values must be strings (Map(String, String)), got {type(v).__name__}")
    elif kind == STR_LIST:
        if not (isinstance(value, list) and all(isinstance(x, str) for x in value)):
            problems.append(f"{where}: expected a list of strings, got {value!r}")
    elif kind == "list<number>":
        if not isinstance(value, list) or not value:
            problems.append(f"{where}: expected a non-empty list of numbers, got {value!r}")
        else:
            for i, x in enumerate(value):
                if not _is_number(x):
                    problems.append(f"{where}[{i}]: expected a finite number, got {x!r}")
    elif kind == "runners":
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list of runners, got {type(value).__name__}")
        else:
            for i, runner in enumerate(value):
                _check_object(runner, RUNNER_FIELDS, f"{where}[{i}]", problems)
    elif isinstance(kind, str) and kind in KEYED:  # Map(String, Tuple(...)): an object of named entries
        what, fields = KEYED[kind]
        if not isinstance(value, dict):
            problems.append(f"{where}: expected an object keyed by {what} name, got {type(value).__name__}")
        else:
            for name, entry in value.items():
                _check_object(entry, fields, f"{where}.{name}", problems)
    elif isinstance(kind, dict):
        _check_object(value, kind, where, problems)
    else:  # pragma: no cover - a table entry this function doesn't know
        raise AssertionError(f"unknown field kind {kind!r}")


def _check_object(obj: Any, fields: Mapping[str, Any], where: str, problems: list[str]) -> None:
    if not isinstance(obj, dict):
        problems.append(f"{where}: expected an object, got {type(obj).__name__}")
        return
    for key, value in obj.items():
        if key not in fields:
            problems.append(f"{where}.{key}: not a field of the v3 schema")
        else:
            _check(value, fields[key], f"{where}.{key}", problems)


def v3_problems(records: Any) -> list[str]:
    """Everything wrong with `records` as a v3 upload: missing required fields, wrong types,
    non-finite numbers, unknown fields. An empty list means it passes."""
    if not isinstance(records, list):
        return [f"expected a JSON list of records, got {type(records).__name__}"]
    problems: list[str] = []
    for i, rec in enumerate(records):
        where = f"record {i}"
        if not isinstance(rec, dict):
            problems.append(f"{where}: expected an object, got {type(rec).__name__}")
            continue
        for section, required in REQUIRED_FIELDS.items():
            part = rec.get(section)
            if not isinstance(part, dict):
                problems.append(f"{where}: missing required {section!r} object")
                continue
            for key in required:
                if key not in part:
                    problems.append(f"{where}: missing required field {section}.{key}")
        _check_object(rec, FIELD_TYPES, where, problems)
    try:
        json.dumps(records, allow_nan=False)
    except (TypeError, ValueError) as e:
        problems.append(f"not serialisable as strict JSON: {e}")
    return problems


def validate_v3(records: Any) -> None:
    """Raise V3SchemaError listing every problem (see v3_problems); return None when the records pass."""
    problems = v3_problems(records)
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise V3SchemaError(f"{len(problems)} problem(s) with the v3 records:\n  {shown}{more}")


def export_pytorch_v3(results: ResultSet, out: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> tuple[Path, int, list[Row]]:
    """Write results as a v3 JSON list to `out`; returns (path, records written, rows left out)."""
    records = pytorch_v3_records(results, metadata)
    return write_v3(records, out), len(records), omitted_rows(results)
