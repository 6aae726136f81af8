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


QUICK_RUN = ["run", "--model", "llama-tiny", "--device", "cpu", "--no-compile", "--quick", "--in-process", "--quiet"]


def test_a_full_disk_is_one_line_and_the_finished_rows_stay(tmp_path, capsys, monkeypatch):
    import errno

    from torchao_nb import results

    real = results.atomic_write

    def full(path, text):
        if str(path).endswith("results.csv"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text)

    monkeypatch.setattr(results, "atomic_write", full)
    rc = main(QUICK_RUN + ["--modes", "noquant", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1
    assert err.startswith(f"error: cannot write {tmp_path / 'results.csv'}: No space left on device") and "--resume" in err
    assert [r.mode for r in results.read_jsonl(tmp_path / "rows.jsonl")] == ["noquant"]


@pytest.mark.parametrize("argv, message", [
    (["--seq-len", "0"], "seq_len must be a positive whole number, got 0"),
    (["--seq-len", "-5"], "seq_len must be a positive whole number, got -5"),
    (["--threads", "0"], "threads must be a positive whole number, got 0"),
    (["--cell-timeout", "0"], "cell_timeout_s must be a positive number"),
])
def test_values_that_used_to_become_defaults_or_error_rows_are_refused(argv, message, tmp_path, capsys):
    assert main(QUICK_RUN + argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}" + err.split(message, 1)[1] and err.count("\n") == 1
    assert not (tmp_path / "rows.jsonl").exists()  # refused before anything ran


def test_a_run_in_which_no_cell_was_measured_exits_non_zero(tmp_path, capsys):
    from torchao_nb.cli import _run_status
    from torchao_nb.results import Row

    rc = main(QUICK_RUN + ["--modes", "float8dynamic", "--out", str(tmp_path)])
    assert rc == 1 and "no cell was measured: every cell was skipped" in capsys.readouterr().err
    failed = [Row("m", "noquant", 1, "cpu", "float32", False, False, "error", reason="boom"),
              Row("m", "int8dynamic", 1, "cpu", "float32", False, False, "skipped", reason="no")]
    assert _run_status(ResultSet(tuple(failed))) == 1
    assert "every cell failed, gave a wrong output or was skipped" in capsys.readouterr().err
    assert _run_status(ResultSet()) == 1 and "stopped before any cell finished" in capsys.readouterr().err


def test_settings_that_do_nothing_here_get_one_line_each(tmp_path, capsys, monkeypatch):
    from torchao_nb import config

    monkeypatch.setattr(config, "cpu_cores", lambda: 1)
    rc = main(QUICK_RUN + ["--modes", "noquant", "--threads", "2", "--compile-mode", "reduce-overhead",
                           "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 0
    assert err.count("note: threads=2 is more than the 1 CPU cores") == 1
    assert err.count("note: compile mode 'reduce-overhead' has no effect: compile is off") == 1


def test_resume_under_other_settings_says_what_it_re_used(tmp_path, capsys):
    assert main(QUICK_RUN + ["--modes", "noquant", "--seq-len", "8", "--threads", "2", "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(QUICK_RUN + ["--modes", "noquant", "--seq-len", "8", "--threads", "1", "--resume",
                             "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "note: resuming" in captured.err and "threads 2 (this run: 1)" in captured.err
    assert ", 1 thread," in captured.out
    assert [r.threads for r in ResultSet.load(tmp_path)] == [1]
