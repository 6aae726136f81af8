"""A wrong or crashed cell writes a standalone torch + torchao script that reproduces it, with only the failing layer;
a correct sweep writes none; `python -m torchao_nb repro OUT` re-runs the scripts and prints a bug report."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import torchao_nb
from torchao_nb import cli, columns, compiling, config, env, executors, measure, modes, repro, repro_script
from torchao_nb.extras import Repro
from tests import repro_modes

HERE = Path(__file__).resolve().parent
X = (torch.randn(2, 128),)


class OneBadLayer(nn.Module):
    """Two Linears of different shapes: the fake modes break only `bad` (BAD_OUT outputs)."""

    def __init__(self):
        super().__init__()
        self.safe, self.bad = nn.Linear(128, 256), nn.Linear(256, repro_modes.BAD_OUT)

    def forward(self, x):
        return self.bad(torch.relu(self.safe(x)))


def sweep(tmp, modes_, **kw):
    return torchao_nb.sweep(model=OneBadLayer(), example_inputs=X, modes=modes_, out=tmp, device="cpu",
                            dtype="float32", compile=False, progress=False, policy=measure.FAST_POLICY, **kw)


def run_plain(script: Path) -> subprocess.CompletedProcess:
    """The script as a user runs it: plain python, isolated from this checkout, from another folder."""
    return subprocess.run([sys.executable, "-I", str(script)], capture_output=True, text=True, timeout=300,
                          cwd=script.parent.parent)


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """One sweep whose cells segfault (the worker dies) and give a wrong output, with repros on; its rows and folder."""
    out = tmp_path_factory.mktemp("broken")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCHAO_NB_REPRO_S", "300")  # generous for a busy 2-core machine: each try imports torch anew
        mp.setenv("TORCHAO_NB_TEST_REPRO_MODES", "1")
        mp.syspath_prepend(str(HERE / "repro_site"))  # the worker's path: it registers the fake modes too
        executors._stop_idle_workers()  # a worker started before would not know them
        repro_modes.register()
        try:
            rows = {r.mode: r for r in sweep(out, f"noquant,{repro_modes.SEGFAULTS},{repro_modes.NEGATES}")}
        finally:
            repro_modes.unregister()
            executors._stop_idle_workers()
    return rows, out


def test_a_layer_that_segfaults_gives_a_repro_of_that_layer_alone_that_dies_by_the_signal(broken):
    rows, out = broken
    row = rows[repro_modes.SEGFAULTS]
    assert row.status == "error" and "worker crashed (SIGSEGV)" in row.reason
    said = row.extra_of(Repro)
    assert said.reproduces is True and said.repro == f"repro/OneBadLayer-{repro_modes.SEGFAULTS}-bs2.py", said
    assert f"repro: {said.repro}" in columns.note(row)
    text = (out / said.repro).read_text()
    assert "torch.nn.Linear(256, 128" in text and "torch.nn.Linear(128, 256" not in text  # only the failing layer
    assert not re.search(r"^\s*(import|from)\s+torchao_nb", text, re.M)  # torch (and here ctypes) only
    done = run_plain(out / said.repro)
    assert done.returncode == -11, done.stderr[-2000:]


def test_a_wrong_layer_gives_a_repro_that_exits_1_and_prints_the_sqnr(broken):
    rows, out = broken
    row = rows[repro_modes.NEGATES]
    assert row.status == "wrong"
    said = row.extra_of(Repro)
    assert said.reproduces is True and "bad: nn.Linear(256, 128" in said.repro_note, said
    done = run_plain(out / said.repro)
    assert done.returncode == 1
    assert "SQNR -6.0 dB against the unquantized output" in done.stdout and "reproduces:" in done.stdout
    assert rows["noquant"].status == "ok" and rows["noquant"].extra_of(Repro) is None


def test_the_repro_command_says_which_scripts_still_reproduce_and_writes_a_bug_report(broken, capsys):
    _, out = broken
    fixed = out / "repro" / "fixed-one.py"
    fixed.write_text("print('does not reproduce: the quantized output is right')\n")
    try:
        assert cli.main(["repro", str(out)]) == 1  # some still reproduce
        said = capsys.readouterr().out
        assert f"{repro_modes.SEGFAULTS}-bs2.py: reproduces (exit -11 (SIGSEGV" in said
        assert f"{repro_modes.NEGATES}-bs2.py: reproduces (exit 1)" in said and "fixed-one.py: fixed (exit 0)" in said
        assert cli.main(["repro", str(out), "--issue"]) == 1
        report = capsys.readouterr().out
    finally:
        fixed.unlink()
    for heading in ("### Reproduction", "### Expected", "### Actual", "### Versions"):
        assert heading in report
    assert f"## torchao_nb mode {repro_modes.SEGFAULTS}: the process crashes (nn.Linear(256, 128, bias=True) on (2, 256)" \
        in report and "the process crashes: exit -11" in report
    assert "PyTorch version:" in report  # collect_env's report


NET = '''
import torch
from torch import nn

SIGN = -1


class Net(nn.Module):
    """Right layer by layer, wrong as a whole once int8 weight-only has quantized it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(128, 256), nn.Linear(256, 128)

    def forward(self, x):
        y = self.fc2(torch.relu(self.fc1(x)))
        return SIGN * y if type(self.fc1.weight).__name__ != "Parameter" else y


if __name__ == "__main__":
    raise SystemExit("a repro never runs this")
'''


def test_when_no_single_layer_fails_the_repro_is_the_whole_model_from_its_source(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHAO_NB_REPRO_S", "300")
    (tmp_path / "user_net.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    import user_net

    rows = {r.mode: r for r in torchao_nb.sweep(
        model=user_net.Net(), example_inputs=X, modes="noquant,int8weightonly", out=tmp_path / "out", device="cpu",
        dtype="float32", compile=False, isolate=False, progress=False, policy=measure.FAST_POLICY)}
    row = rows["int8weightonly"]
    said = row.extra_of(Repro)
    assert row.status == "wrong" and said.reproduces is True, said
    assert said.repro_note.startswith("the whole model: Net from its source") and "3 of 3 pieces tried" in said.repro_note
    text = (tmp_path / "out" / said.repro).read_text()
    assert "class Net(nn.Module):" in text and "SIGN = -1" in text and "SystemExit" not in text
    assert "quantize_(model, config, filter_fn=" in text and "['fc1', 'fc2']" in text
    done = run_plain(tmp_path / "out" / said.repro)
    assert done.returncode == 1 and "SQNR -6.0 dB" in done.stdout


def test_a_correct_sweep_writes_no_repro_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHAO_NB_REPRO_S", "300")
    rows = sweep(tmp_path, "noquant,int8weightonly")
    assert {r.status for r in rows} == {"ok"}
    assert not (tmp_path / "repro").exists()


def test_the_repro_command_says_what_to_give_for_a_folder_without_scripts(tmp_path, capsys):
    assert cli.main(["repro", str(tmp_path)]) == 2
    assert "no repro scripts in" in capsys.readouterr().err


def _configs():
    """Every torchao config a registered mode builds on this CPU, in both dtypes (int4's per-layer ones too)."""
    info = env.device_info("cpu")
    lin = nn.Linear(256, 256)
    for name, mode in modes.MODES.items():
        for dtype in (torch.bfloat16, torch.float32):
            if mode.apply is not None or mode.unsupported_reason(info, dtype):
                continue
            yield f"{name}-{dtype}", mode.config(info, dtype)
            if mode.layer_config is not None:
                yield f"{name}-{dtype}-layer", mode.layer_config(lin, info, dtype, None)[0]


@pytest.mark.parametrize("name,made", list(_configs()))
def test_a_torchao_config_written_as_code_builds_the_same_config(name, made):
    code, imports = repro_script.config_code(made)
    namespace: dict = {}
    exec("\n".join(imports), namespace)
    assert eval(code, namespace) == made, code
    assert "torchao_nb" not in code


def test_a_value_that_is_not_code_is_refused_with_its_type():
    with pytest.raises(ValueError, match="can't write a Tensor"):
        repro_script.config_code(torch.ones(2))


def test_a_real_torchao_mode_gives_a_compiled_standalone_script_that_runs_to_its_verdict(tmp_path):
    cfg = config.build(["int8weightonly"], True, False, device="cpu", dtype="float32")
    model = OneBadLayer()
    cap = repro.capture(cfg, "OneBadLayer", model, X, "int8weightonly", 2, compiling.CompileSettings(),
                        "wrong", "a test")
    assert [p.what.split(":")[0] for p in cap.pieces] == ["safe", "bad"]
    text = repro_script.script(cap, cap.pieces[0])
    assert "from torchao.quantization import Int8WeightOnlyConfig, quantize_" in text and "quantize_(model, config)" in text
    assert "config = Int8WeightOnlyConfig(set_inductor_config=False)" in text
    assert "torch._dynamo.config.automatic_dynamic_shapes = False" in text and "fn = torch.compile(model)" in text
    (tmp_path / "s").mkdir()
    script = tmp_path / "s" / "one.py"
    script.write_text(text)
    done = run_plain(script)
    # What the script says of this CPU's kernel is not the test's business (compiled kernels are wrong or crash on
    # some CPUs): that it runs standalone to its verdict, and its exit code matches the verdict, is.
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "SQNR" in done.stdout or done.returncode < 0, done.stdout[-2000:]
    if done.returncode >= 0:
        assert done.returncode == (0 if "does not reproduce" in done.stdout else 1), done.stdout[-2000:]


def _raised(fn) -> Exception:
    try:
        fn()
    except Exception as e:
        return e
    raise AssertionError("it did not raise")


def test_only_an_exception_raised_inside_torch_is_torchs_and_a_lost_worker_is_a_crash_or_a_hang():
    assert not repro.inside_torch(_raised(lambda: torch.ones(2) @ torch.ones(3)))  # C++ raised it in this frame
    assert repro.inside_torch(_raised(lambda: nn.Linear(2, 2).get_submodule("nope")))  # torch's own Python raised it
    assert repro.crash_kind("worker crashed (SIGSEGV) while compiling x") == "crash"
    assert repro.crash_kind("timed out after 60 s while running x") == "hang"
    assert repro.crash_kind("worker crashed (exit status 3) while x") is None


def test_the_budget_setting_says_what_it_takes(monkeypatch):
    monkeypatch.setenv("TORCHAO_NB_REPRO_S", "soon")
    assert "is not a number of seconds" in repro.budget()
    monkeypatch.delenv("TORCHAO_NB_REPRO_S")
    assert repro.budget() == repro.BUDGET_S
