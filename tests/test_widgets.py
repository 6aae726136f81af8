"""The widget panel, driven headless as a user would: set values, click, wait on the run, look at what it shows."""

import html
import logging
import subprocess
import sys
import warnings

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from torchao_nb import env, measure, models, modes as modes_mod  # noqa: E402
from torchao_nb.env import UserError  # noqa: E402
from torchao_nb import config  # noqa: E402
from torchao_nb.widgets import (NOTEBOOK_MODULE, OTHER_MODEL, BenchmarkPanel, DrawingError,  # noqa: E402
                                library_noise_to)

from .conftest import TwoLinear  # noqa: E402

PNG = b"\x89PNG"


def bar_figure(rs):
    fig, ax = plt.subplots(figsize=(3, 2))
    ok = [r for r in rs if r.status == "ok"]
    ax.bar([r.mode for r in ok], [r.median_ms for r in ok])
    return fig


@pytest.fixture
def notebook():
    torch.manual_seed(0)
    return {"net": TwoLinear(), "x": torch.randn(4, 128)}


def panel_on(notebook, modes=("noquant", "int8dynamic"), figure=bar_figure, **kw) -> BenchmarkPanel:
    """A panel set up by clicking, as a user would: the notebook's module, eager, fp32, fast timing."""
    p = BenchmarkPanel(namespace=notebook, policy=measure.FAST_POLICY, figure=figure, **kw)
    p.model.value = NOTEBOOK_MODULE
    p.module_name.value = "net"
    p.inputs_name.value = "x"
    p.dtype.value = "float32"
    p.compile.value = False
    p.modes.value = modes
    return p


def test_importing_the_package_does_not_import_ipywidgets():
    code = "import sys, torchao_nb; assert 'ipywidgets' not in sys.modules; torchao_nb.BenchmarkPanel; assert 'ipywidgets' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_options_come_from_the_registries(monkeypatch):
    monkeypatch.setitem(models.MODELS, "extra-model", models.MODELS["mlp"])
    monkeypatch.setitem(modes_mod.MODES, "extra-mode", modes_mod.Mode("extra-mode", "a new mode", lambda i, d: None))
    p = BenchmarkPanel()
    assert "extra-model" in [v for _, v in p.model.options]
    assert NOTEBOOK_MODULE in [v for _, v in p.model.options]
    assert set(p.modes.buttons) == set(modes_mod.MODES)
    assert p.modes.buttons["extra-mode"].tooltip == "a new mode"


def test_modes_that_cannot_run_here_are_disabled_with_their_reason():
    p = BenchmarkPanel()
    device, dtype = p.choices.target()
    reasons = modes_mod.availability(env.device_info(device), dtype)
    assert any(reasons.values()), "some mode always needs something this CPU lacks"
    for name, reason in reasons.items():
        button = p.modes.buttons[name]
        assert button.disabled == (reason is not None)
        if reason:
            assert reason in button.tooltip and name not in p.modes.value
            with pytest.raises(UserError, match="can't run here"):
                BenchmarkPanel(modes=[name])
        else:
            assert name in p.modes.value  # every runnable mode is selected by default
    cuda = p.device.buttons["cuda"]
    assert cuda.disabled == (not torch.cuda.is_available())
    if cuda.disabled:
        assert "no CUDA GPU" in cuda.tooltip
        with pytest.raises(UserError, match="no CUDA GPU"):
            p.device.value = "cuda"
        assert p.device.value == "auto"


def test_device_buttons_are_exclusive_and_refresh_mode_availability():
    p = BenchmarkPanel()
    p.device.buttons["cpu"].value = True
    assert p.device.value == "cpu" and not p.device.buttons["auto"].value
    p.device.buttons["cpu"].value = False  # clicking the chosen device again keeps it chosen
    assert p.device.value == "cpu"
    p.dtype.value = "float32"
    assert "runs on cpu" in p.resolved.value and "float32" in p.resolved.value
    # In fp32 on the CPU int4 uses Intx and needs no bf16 kernel: its availability is recomputed.
    expected = modes_mod.availability(env.device_info("cpu"), torch.float32)
    assert {n: b.disabled for n, b in p.modes.buttons.items()} == {n: r is not None for n, r in expected.items()}


def test_run_button_runs_in_the_background_and_fills_table_figure_and_results(notebook):
    before = {k: v.clone() for k, v in notebook["net"].state_dict().items()}
    threads_before = torch.get_num_threads()
    p = panel_on(notebook)
    p.threads.value = 1
    p.run_button.click()
    assert p.wait(timeout=300) is not None and not p.running
    assert p.error is None, p.log.value
    assert [r.mode for r in p.results] == ["noquant", "int8dynamic"]
    assert all(r.status == "ok" and r.model == "TwoLinear" and r.dtype == "float32" and not r.compile for r in p.results)
    assert all(r.threads == 1 for r in p.results) and torch.get_num_threads() == threads_before
    assert p.results.where(mode="int8dynamic").rows[0].sqnr_db > 20
    assert bytes(p.figure_view.value).startswith(PNG)
    assert "int8dynamic" in p.table.value and "TwoLinear" in p.table.value
    assert p.progress.value == p.progress.max == 2
    assert p.status.value.startswith("done") and p.errors.value == ""
    assert not p.run_button.disabled and p.stop_button.disabled and not p.export_button.disabled
    assert p.results.environment["device"] == "cpu"  # the final set carries the environment
    assert all(torch.equal(before[k], v) for k, v in notebook["net"].state_dict().items())  # never mutated
    assert "int8dynamic: ok" in p.log.value


def test_run_blocks_and_returns_the_results(notebook):
    p = panel_on(notebook, modes=("noquant",))
    rs = p.run()
    assert rs is p.results and len(rs) == 1 and rs.rows[0].status == "ok"
    assert p.state.results is rs and not p.state.busy and p.state.error is None


def test_a_failing_mode_is_shown_in_the_panel(notebook, monkeypatch):
    def broken(info, dtype):
        raise RuntimeError("kernel exploded on purpose")

    monkeypatch.setitem(modes_mod.MODES, "broken", modes_mod.Mode("broken", "always fails", broken))
    p = panel_on(notebook, modes=("broken", "int8dynamic"), isolate=False)  # the patched registry is this process's
    p.run_button.click()
    p.wait(timeout=300)
    assert [(r.mode, r.status) for r in p.results] == [("int8dynamic", "ok"), ("broken", "error")]
    assert "kernel exploded on purpose" in p.results.rows[1].reason
    assert "broken" in p.errors.value and "kernel exploded on purpose" in p.errors.value
    assert p.progress.bar_style == "warning"
    assert p.error is None  # the run itself succeeded; the failed cell is a row


def test_an_exception_while_drawing_is_shown_and_kept_and_the_sweep_goes_on(notebook):
    def bad_figure(rs):
        raise ValueError("cannot draw this")

    p = panel_on(notebook, figure=bad_figure)
    p.run_button.click()
    p.wait(timeout=300)
    assert isinstance(p.error, RuntimeError) and "cannot draw this" in str(p.error)
    assert isinstance(p.state.failure, DrawingError) and p.state.refusal is None
    assert "cannot draw this" in p.errors.value
    assert "ValueError: cannot draw this" in p.log.value  # the traceback goes to the log
    assert len(p.results) == 2  # both cells ran anyway
    assert p.run() is p.results  # run() does not raise for a drawing failure, it shows it


def test_stop_takes_effect_between_cells(notebook):
    panel = None

    def stop_after_first(rs):
        panel.stop_button.click()
        return bar_figure(rs)

    panel = panel_on(notebook, modes=("noquant", "int8dynamic", "int8weightonly"), figure=stop_after_first)
    panel.run_button.click()
    panel.wait(timeout=300)
    assert len(panel.results) == 1 and panel.results.rows[0].mode == "noquant"
    assert panel.status.value.startswith("stopped") and panel.error is None


def test_stop_ends_the_cell_in_progress(notebook, tmp_path):
    from tests.test_isolation import Misbehaves

    marker = tmp_path / "started"
    notebook["net"] = Misbehaves("int8weightonly", "hang", str(marker))  # hangs once int8weightonly quantized it
    p = panel_on(notebook, modes=("noquant", "int8weightonly", "int8dynamic"))
    p.controls["time_together"].widget.value = False  # each row saved as soon as its cell is timed
    assert p.batch_sizes.disabled  # the module's own inputs set the batch
    p.run_button.click()
    for _ in range(6000):
        if marker.exists():
            break
        p.wait(timeout=0.05)
    assert marker.exists() and p.running
    p.stop_button.click()
    p.wait(timeout=120)
    # every cell that finished has its row (noquant, int8dynamic); the stopped one has none
    assert not p.running and [r.mode for r in p.results] == ["noquant", "int8dynamic"]
    assert p.status.value.startswith("stopped") and p.error is None


def typed(p, name):
    """A model name typed into the free-text entry, as a user picks hf:..., hf-config:... or a .gguf file."""
    p.model.value = OTHER_MODEL
    p.model_name.value = name


@pytest.mark.parametrize("change, message", [
    (lambda p: setattr(p.modes, "value", ()), "no mode selected"),
    (lambda p: (setattr(p.model, "value", "mlp"), setattr(p.batch_sizes, "value", "1,x")), "not a whole number"),
    (lambda p: (setattr(p.model, "value", "mlp"), setattr(p.batch_sizes, "value", "0")), "positive integer"),
    (lambda p: setattr(p.module_name, "value", "missing"), "no variable 'missing'"),
    (lambda p: setattr(p.module_name, "value", ""), "variable name of an nn.Module"),
    (lambda p: setattr(p.inputs_name, "value", ""), "example inputs"),
    (lambda p: setattr(p.inputs_name, "value", "nope"), "could not read the example inputs"),
    (lambda p: setattr(p.module_name, "value", "x"), "nn.Module"),
    (lambda p: typed(p, ""), "type a model name"),
    (lambda p: typed(p, "gpt-9"), "unknown model 'gpt-9'"),
    (lambda p: typed(p, "hf:/no/such/folder"), "this local path does not exist"),
    (lambda p: typed(p, "/no/such/model.gguf"), "no such .gguf file"),
    (lambda p: typed(p, "hf-config:NoSuchModel"), "has no model class"),
])
def test_bad_input_is_shown_clearly(notebook, change, message):
    p = panel_on(notebook)
    change(p)
    p.run_button.click()
    assert isinstance(p.error, UserError) and message in str(p.error) and p.state.failure is p.error
    assert message.split("'")[0] in p.errors.value.replace("&#x27;", "'")
    assert not p.running and p.results is None
    with pytest.raises(UserError, match=message.split("'")[0]):
        p.run()


def test_a_typed_causal_lm_runs_and_its_generated_texts_are_shown(notebook, monkeypatch):
    from .test_llm import TINY

    monkeypatch.setitem(models.MODELS, "tiny-lm", TINY)
    p = panel_on(notebook, modes=("noquant", "int8weightonly"), isolate=False)
    assert p.model_name.layout.display == "none"
    typed(p, "tiny-lm")
    assert p.model_name.layout.display == "" and p.module_box.layout.display == "none"
    rs = p.run()
    assert p.error is None and [r.status for r in rs] == ["ok", "ok"], p.log.value
    texts = rs.rows[1].extra_dict["generations"]
    assert "unquantized (eager)" in p.texts.value and "int8weightonly" in p.texts.value
    assert all(html.escape(t) in p.texts.value for t in texts["quantized"] + texts["prompts"])
    assert "perplexity" in p.table.value and BenchmarkPanel(model="hf-config:LlamaForCausalLM").model.value == OTHER_MODEL


def test_a_second_run_while_running_is_refused(notebook):
    p = panel_on(notebook)
    p.state.busy = True  # as while a run goes on
    p.run_button.click()
    assert isinstance(p.error, RuntimeError) and "already in progress" in str(p.error)
    assert p.state.refusal is p.error and p.state.failure is None and p.results is None


def test_baseline_view_lists_every_setting():
    from torchao_nb import baseline

    p = BenchmarkPanel()
    text = p.baseline_view.children[0].value
    assert all(s.key in text for s in baseline.BASELINE_SETTINGS)
    assert "not set" in text  # the seed's no-op epilogue_fusion is shown as not applied


def test_library_noise_goes_to_the_log_not_stderr(capsys):
    lines = []
    with library_noise_to(lines.append):
        logging.getLogger("torchao").warning("Failed to load _C_mxfp8")
        logging.getLogger("torch._dynamo").warning("recompiling")
        warnings.warn("some deprecation", UserWarning)
    err = capsys.readouterr().err
    assert "_C_mxfp8" not in err and "recompiling" not in err and "some deprecation" not in err
    assert any("_C_mxfp8" in l for l in lines) and any("recompiling" in l for l in lines)
    assert any("some deprecation" in l for l in lines)
    assert logging.getLogger("torchao").propagate and not logging.getLogger("torchao").handlers


def test_unknown_model_or_mode_in_the_constructor_says_what_is_valid():
    with pytest.raises(UserError, match="unknown model 'gpt-9'.*mlp"):
        BenchmarkPanel(model="gpt-9")
    with pytest.raises(UserError, match="unknown mode 'int3'"):
        BenchmarkPanel(modes="int3")
    assert BenchmarkPanel(model="llama-tiny", modes="noquant,int8dynamic").modes.value == ("noquant", "int8dynamic")


def test_export_before_a_run_says_what_to_do():
    p = BenchmarkPanel()
    with pytest.raises(UserError, match="press Run first"):
        p.export()


def test_export_writes_results_files_and_the_html_report(notebook, tmp_path):
    from torchao_nb import ResultSet

    p = panel_on(notebook, modes=("noquant",), out=str(tmp_path / "exp"))
    p.run()
    p.export_button.click()
    assert p.error is None, p.log.value
    files = {f.name for f in (tmp_path / "exp").iterdir()}
    assert {"results.csv", "results.json", "environment.json", "report.html"} <= files
    assert ResultSet.load(tmp_path / "exp").rows == p.results.rows
    assert "data:image/png;base64" in (tmp_path / "exp" / "report.html").read_text()
    assert "exported" in p.status.value


def export_into_a_file(notebook, tmp_path):
    """A panel after one run whose export was pointed below a file (a folder that can't be made)."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    p = panel_on(notebook, modes=("noquant",))
    p.run()
    p.export_dir.value = str(blocker / "sub")
    p.export_button.click()
    return p


def test_export_to_an_unwritable_folder_is_shown(notebook, tmp_path):
    p = export_into_a_file(notebook, tmp_path)
    assert isinstance(p.error, UserError) and "cannot write results to" in str(p.error)
    assert "type another folder" in str(p.error) and "cannot write results to" in p.errors.value


def test_a_refused_second_run_is_not_left_standing_once_the_run_ends(notebook):
    panel = None
    refusals = []

    def click_run_again(rs):
        panel.run_button.click()  # the user clicks Run again while the run goes on
        refusals.append(panel.error)
        return bar_figure(rs)

    panel = panel_on(notebook, figure=click_run_again)
    panel.run_button.click()
    panel.wait(timeout=300)
    assert refusals and "already in progress" in str(refusals[0])  # refused at the time, and shown
    assert panel.error is None and panel.errors.value == ""  # the latest action is the run, which succeeded
    assert panel.status.value == "done: 2 cells" and panel.progress.bar_style == "success"


def test_a_successful_export_after_a_failed_one_clears_the_error(notebook, tmp_path):
    p = export_into_a_file(notebook, tmp_path)
    assert isinstance(p.error, UserError) and "cannot write results to" in p.errors.value
    assert p.progress.bar_style == "danger"
    p.export_dir.value = str(tmp_path / "good")
    p.export_button.click()
    assert p.error is None and p.errors.value == "" and p.progress.bar_style != "danger"
    assert p.status.value.startswith("exported")


def test_export_into_a_command_line_results_folder_keeps_its_files(notebook, tmp_path):
    from torchao_nb import ResultSet, sweep
    from torchao_nb.folder import Lock

    cli_rows = sweep(model="llama-tiny", modes="noquant,int8dynamic", device="cpu", compile=False, progress=False,
                     policy=measure.FAST_POLICY, isolate=False, out=tmp_path).rows
    p = panel_on(notebook, modes=("noquant",), out=str(tmp_path))
    p.run()
    with Lock(tmp_path):  # a run writing there now: the export waits its turn
        p.export_button.click()
    assert isinstance(p.error, UserError) and "in use by another run" in str(p.error)
    assert ResultSet.load(tmp_path).rows == cli_rows
    p.export_button.click()
    assert p.error is None, p.error
    assert ResultSet.load(tmp_path).rows == ResultSet.load(tmp_path / "rows.jsonl").rows == p.results.rows
    (aside,) = (tmp_path / "previous").iterdir()  # the command line's results, whole
    assert ResultSet.load(aside).rows == cli_rows and "earlier results are in" in p.status.value
    p.export_button.click()  # the same results again: nothing more to keep aside
    assert len(list((tmp_path / "previous").iterdir())) == 1


def test_the_int4_group_size_is_a_panel_setting(notebook):
    p = panel_on(notebook, modes=("int4weightonly",), isolate=False)
    assert "int4weightonly" not in p.sweep_kwargs()  # auto: the device's default
    p.int4_group_size.value = 32
    assert p.sweep_kwargs()["int4weightonly"] == {"group_size": 32}
    rs = p.run()
    assert rs.rows[0].status == "ok" and rs.rows[0].extra_dict["layer_configs"] == {"group 32": ["fc1", "fc2"]}


def test_the_settings_are_the_options_with_the_labels_and_defaults_users_know():
    p = BenchmarkPanel(isolate=False)
    flagged = [o.name for o in config.OPTIONS if o.flag]
    assert list(p.controls)[:len(flagged)] == flagged and "isolate" not in p.controls  # the panel's own argument
    labels = {"dtype": "dtype", "batch_sizes": "batch sizes", "threads": "CPU threads", "int4_group_size": "int4 group",
              "compile": "torch.compile each cell", "baseline": "baseline settings"}
    assert {n: p.controls[n].widget.description for n in labels} == labels
    assert [label for label, _ in p.int4_group_size.options] == ["auto", "256", "128", "64", "32"]
    assert (p.dtype.value, p.batch_sizes.value, p.compile.value, p.baseline.value) == ("auto", "1", True, True)
    assert p.threads.value == torch.get_num_threads() and p.int4_group_size.value is None
    assert (p.compile_mode.value, p.cache.value, p.tuning.value, p.save_reload.value) == (
        "default", "warm", None, True)
    more = p.widget.children[7]  # the collapsed "more settings", under the settings row
    assert more.get_title(0) == "more settings" and p.seq_len in more.children[0].children


def test_more_settings_reach_the_sweep_and_bad_text_is_refused(notebook):
    p = panel_on(notebook)
    kwargs = p.sweep_kwargs()
    assert {o.name: kwargs[o.name] for o in config.OPTIONS if o.name in ("cache", "seq_len", "cell_timeout_s")} == {
        "cache": "warm", "seq_len": None, "cell_timeout_s": config.DEFAULT_CELL_TIMEOUT_S}
    assert [label for label, _ in p.tuning.options] == ["auto", "torchao", "fast", "off"]
    p.cache.value, p.tuning.value, p.seq_len.value = "cold", "fast", "64"
    p.float8_granularity.value = "per-tensor"
    kwargs = p.sweep_kwargs()
    assert (kwargs["cache"], kwargs["tuning"], kwargs["seq_len"]) == ("cold", "fast", 64)
    assert kwargs["float8dynamic"] == {"granularity": "per-tensor"} and "autoquant" not in kwargs
    p.seq_len.value = "long"
    p.run_button.click()
    assert isinstance(p.error, UserError) and "sequence length must be a whole number, got 'long'" in str(p.error)
    assert not p.running and p.results is None
