import subprocess
import sys

import pytest
import torch

from torchao_nb.cli import main
from torchao_nb.results import ResultSet


@pytest.mark.parametrize("argv, message", [
    (["run", "--modes", "int3", "--out", "{tmp}"], "unknown mode 'int3'"),
    (["run", "--model", "gpt-17", "--out", "{tmp}"], "unknown model 'gpt-17'"),
    (["run", "--batch-sizes", "0", "--out", "{tmp}"], "batch size must be a positive integer"),
    (["run", "--batch-sizes", "1,-4", "--out", "{tmp}"], "batch size must be a positive integer"),
    (["run", "--out", "{tmp}/file/sub"], "cannot write results"),
])
def test_user_errors_are_one_line(argv, message, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    rc = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and err.count("\n") == 1 and err.startswith("error: ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_from_the_command_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torchao_nb", "run", "--device", "cuda", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr


def test_list_modes_and_models(capsys):
    assert main(["list-modes", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "float8dynamic" in out and "can't run here" in out and "int8dynamic" in out
    assert main(["list-models"]) == 0
    out = capsys.readouterr().out
    assert "mlp" in out and "llama-tiny" in out and "(default)" in out


def test_run_writes_files_that_load_back(tmp_path, capsys):
    rc = main(["run", "--model", "llama-tiny", "--modes", "noquant,int8dynamic,float8dynamic", "--device", "cpu",
               "--no-compile", "--seq-len", "8", "--quiet", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "int8dynamic" in out and "float8dynamic" in out and "skipped" in out
    rs = ResultSet.load(tmp_path / "results.json")
    assert ResultSet.load(tmp_path / "results.csv") == rs
    assert [r.status for r in rs] == ["ok", "ok", "skipped"]
    assert rs.environment["torchao"] and rs.environment["device"] == "cpu"
    assert rs.environment["command"].startswith(sys.executable) and "PyTorch version" in rs.environment["collect_env"]
