import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from torchao_nb.results import ResultSet, Row
from torchao_nb.spec import CellSpec

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_plans_the_gpu_run_and_runs_the_whole_pipeline_on_cpu(tmp_path):
    out, pack, earlier = tmp_path / "gpu", tmp_path / "pack", tmp_path / "earlier"
    (earlier / "decode").mkdir(parents=True)
    (earlier / "decode" / "compile-cache.bin").write_bytes(b"not a compile cache")  # carried, then refused
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out), "--dry-run", "--diagnose",
                           "--pack", str(pack), "--compile-cache", str(earlier)], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the plan: the 8B-shaped proxy on a GPU at batch 1 and 128, int8 dynamic skipped at batch 1 only
    assert re.search(r"decode: llama-8b-shapes-\dl, batch 1 \(1 rows per matmul\), bf16, cuda, tuning (torchao|fast|off)",
                     proc.stdout)
    assert "serving-b128: llama-8b-shapes-" in proc.stdout and "batch 128 (128 rows per matmul)" in proc.stdout
    assert proc.stdout.count("int8dynamic       skipped before compiling: int8 dynamic on CUDA calls torch._int_mm") == 1
    assert "float8dynamic per-tensor:" in proc.stdout
    # the verdict: the most faithful plan that fits 8 minutes cold, and why that tuning
    tried = re.search(r"plans tried, cold \(most faithful first\): batch-1 tuning torchao, 4 layers: ~\d+ s", proc.stdout)
    verdict = re.search(r"plan: (\d) layers?, batch-1 tuning (\w+) \((.+)\); serving batch tuning off .*estimated "
                        r"(\d+) s of GPU time cold: fits the 480 s budget", proc.stdout)
    assert tried and verdict, proc.stdout
    assert int(verdict[4]) <= 450 and "compile costs: " in proc.stdout
    assert f"with the compile caches carried from {earlier} (decode): ~" in proc.stdout
    assert "decode: not carrying the earlier compile cache: " in proc.stdout + proc.stderr  # not a cache: cold
    steps = {"decode": ["noquant", "int4weightonly", "int8weightonly", "float8weightonly", "float8dynamic",
                        "int8dynamic", "autoquant"],
             "decode-per-tensor": ["float8dynamic"], "serving-b4-per-tensor": ["float8dynamic"]}
    steps["serving-b4"] = steps["decode"]
    for step, modes in steps.items():
        rs = ResultSet.load(out / step)
        assert [r.mode for r in rs] == modes, step
        assert {r.batch_size for r in rs} == {4 if "serving" in step else 1}
    noquant = ResultSet.load(out / "decode").where(mode="noquant").rows[0]
    assert noquant.status == "ok" and noquant.tokens_per_s > 0 and noquant.speedup_lo <= noquant.speedup_hi
    assert '"granularity": "per-tensor"' in ResultSet.load(out / "decode-per-tensor").rows[0].mode_settings
    summary = (out / "summary.txt").read_text()
    assert "vs torchao's published H100 ratios" in summary and "int8weightonly" in summary
    assert "float8dynamic per-tensor" in summary and "vs torchao's published serving ratios" in summary
    assert "cudagraph skips" in summary  # what tells a host-bound row apart, per row
    assert "operator" in summary and "us/step" in summary  # --diagnose: a profiler table per cell
    assert (pack / "summary.txt").read_text() == summary
    with tarfile.open(pack / "gpu_check.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"decode/results.json", "serving-b4/results.csv", "report.html"} <= names
    assert not any(n.startswith("cache") for n in names)
    assert not (out / "compile-costs.json").exists()  # only a GPU run measures compile costs


def test_the_plan_reads_measured_compile_costs_and_chooses_what_fits(tmp_path):
    gc = gpu_check()
    fallback = gc.Costs.load(tmp_path / "none.json")
    assert "no none.json" in fallback.source
    assert round(fallback.seconds("bf16", "torchao", 4)) == 146 and round(fallback.seconds("bf16", "torchao", 1)) == 79
    assert fallback.seconds("bf16", "off", 4) < fallback.seconds("bf16", "fast", 4) < fallback.seconds("bf16", "torchao", 4)
    # the H200's measured costs with torchao's tuning don't fit 8 minutes cold: the plan says so and steps down
    layers, tuning, tried = gc.choose(fallback)
    assert tried[0].startswith("batch-1 tuning torchao, 4 layers") and tuning != "torchao"
    assert gc.plan_total(layers, tuning, "off", fallback) <= gc.BUDGET_S - gc.MARGIN_S
    # a GPU run's compile-costs.json replaces the constants: two layer counts give a line, one scales the fallback
    costs = tmp_path / "compile-costs.json"
    costs.write_text(json.dumps({"device_name": "NVIDIA H200", "date": "2026-12-04", "torch": "2.11.0", "compiles": [
        dict(kind="bf16", tuning="fast", layers=1, seconds=20.0), dict(kind="bf16", tuning="fast", layers=4, seconds=50.0),
        dict(kind="int4", tuning="torchao", layers=4, seconds=19.0), dict(kind="candidate", tuning="off", layers=1,
                                                                            seconds=1.0)]}))
    measured = gc.Costs.load(costs)
    assert "measured on NVIDIA H200, 2026-12-04" in measured.source
    assert measured.seconds("bf16", "fast", 2) == pytest.approx(30.0)
    assert measured.seconds("int4", "torchao", 1) == pytest.approx(fallback.seconds("int4", "torchao", 1) / 2, rel=1e-3)
    assert measured.seconds("candidate", "off", 3) == 1.0
    assert gc.choose(measured, tuning="off", layers=1)[:2] == (1, "off")
    # a run's rows become the file: cold compiles only (a hit came from a cache), autoquant per candidate compile
    plan = gc.steps("fast", "off")
    spec = CellSpec(model="llama-8b-shapes-1l", mode="noquant", batch_size=1, device="cuda", dtype="bfloat16",
                    compile=True, baseline=True, tuning="fast")
    rows = [Row.of(spec, "ok", compile_s=21.5, fx_cache="miss 1"),
            Row.of(dataclasses.replace(spec, mode="int4weightonly"), "ok", compile_s=8.0, fx_cache="hit 1"),
            Row.of(dataclasses.replace(spec, mode="autoquant"), "ok", compile_s=30.0, search_s=50.0, fx_cache="miss 1")]
    written = gc.measured_costs({"decode": ResultSet(tuple(rows))}, plan, 1, gc.H100)
    assert [(c["kind"], c["mode"], c["seconds"]) for c in written["compiles"]] == [
        ("bf16", "noquant", 21.5), ("candidate", "autoquant", 2.0)]  # 50 s / (5 shapes x 5 candidates)
    assert written["device_name"] == gc.H100.name
    # the deadlines share the budget out in proportion to the estimates, the last one at the budget
    due = gc.deadlines(plan, 1, fallback, 450)
    assert list(due) == [s.name for s in plan] and due[plan[-1].name] == pytest.approx(450)
    assert all(a < b for a, b in zip(list(due.values()), list(due.values())[1:]))


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", module)  # its dataclasses look their module up by name
    spec.loader.exec_module(sys.modules["gpu_check"])
    return sys.modules["gpu_check"]


def test_gpu_check_needs_an_output_folder():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr
