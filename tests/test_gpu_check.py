import os
import subprocess
import sys
from pathlib import Path

from torchao_nb.results import ResultSet

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_runs_the_whole_pipeline_on_cpu(tmp_path):
    out = tmp_path / "gpu"
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(out), "--dry-run"],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    decode, prefill = ResultSet.load(out / "decode"), ResultSet.load(out / "prefill")
    expected = ["noquant", "int4weightonly", "int8weightonly", "float8weightonly", "float8dynamic", "int8dynamic", "autoquant"]
    assert [r.mode for r in decode] == expected and [r.mode for r in prefill] == expected
    assert decode.where(mode="noquant").rows[0].status == "ok"
    assert decode.where(mode="noquant").rows[0].tokens_per_s > 0
    assert prefill.where(mode="float8dynamic").rows[0].status == "skipped"
    assert "int8weightonly" in (out / "summary.txt").read_text()


def test_gpu_check_needs_an_output_folder():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr
