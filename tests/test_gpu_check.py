import os
import re
import subprocess
import tarfile
import sys
from pathlib import Path

from torchao_nb.results import ResultSet

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_plans_the_gpu_run_and_runs_the_whole_pipeline_on_cpu(tmp_path):
    out, pack = tmp_path / "gpu", tmp_path / "pack"
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out), "--dry-run", "--diagnose",
                           "--pack", str(pack)], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the plan: the 8B-shaped proxy on a GPU, int8 dynamic skipped before compiling, within the budget
    assert "llama-8b-shapes, batch 1 (1 rows per matmul), bf16, cuda" in proc.stdout
    assert "int8dynamic       skipped before compiling: int8 dynamic on CUDA calls torch._int_mm" in proc.stdout
    # the verdict follows the measured compile costs (docs/gpu): with torchao's tuning a cold check doesn't fit
    assert re.search(r"plan: \d+ compiles, estimated \d+ s of GPU time: (fits|does NOT fit) the 300 s budget",
                     proc.stdout)
    decode, prefill = ResultSet.load(out / "decode"), ResultSet.load(out / "prefill")
    expected = ["noquant", "int4weightonly", "int8weightonly", "float8weightonly", "float8dynamic", "int8dynamic", "autoquant"]
    assert [r.mode for r in decode] == expected
    assert [r.mode for r in prefill] == ["int8dynamic", "float8dynamic", "int4weightonly"]
    noquant = decode.where(mode="noquant").rows[0]
    assert noquant.status == "ok" and noquant.tokens_per_s > 0 and noquant.speedup_lo <= noquant.speedup_hi
    assert prefill.where(mode="float8dynamic").rows[0].status == "skipped"
    summary = (out / "summary.txt").read_text()
    assert "vs torchao's published H100 ratios" in summary and "int8weightonly" in summary
    assert "operator" in summary and "us/step" in summary  # --diagnose: a profiler table per cell
    assert (pack / "summary.txt").read_text() == summary
    with tarfile.open(pack / "gpu_check.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"decode/results.json", "prefill/results.csv", "report.html"} <= names
    assert not any(n.startswith("cache") for n in names)


def test_gpu_check_needs_an_output_folder():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr
