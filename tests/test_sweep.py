import json
import re
import threading

import pytest
import torch
from torch import nn

from torchao_nb import UserError, baseline, modes as modes_mod, sweep
from torchao_nb import cell as cell_mod
from torchao_nb import ratios
from torchao_nb.results import ResultSet, read_jsonl

from .conftest import NoLinear, TwoLinear

X = (torch.randn(1, 128),)


def run(model, **kw):
    kw.setdefault("device", "cpu")
    kw.setdefault("dtype", "bfloat16")
    kw.setdefault("compile", False)
    kw.setdefault("progress", False)
    kw.setdefault("policy", __import__("torchao_nb").measure.FAST_POLICY)
    kw.setdefault("isolate", False)  # tests here patch the registry in this process; test_isolation covers the worker
    if isinstance(model, nn.Module):
        kw.setdefault("example_inputs", X)
    return sweep(model=model, **kw)


def by_mode(rs):
    return {r.mode: r for r in rs}


def test_every_mode_gets_a_row_with_a_status(two_linear):
    rows = by_mode(run(two_linear, modes="all"))
    assert set(rows) == set(modes_mod.MODES)
    for mode in ["noquant", "int8dynamic", "int8weightonly", "int4weightonly", "float8weightonly"]:
        assert rows[mode].status == "ok", rows[mode].reason
    assert rows["float8dynamic"].status == "skipped" and "CUDA" in rows["float8dynamic"].reason
    assert rows["autoquant"].status == "ok" and rows["autoquant"].search_s > 0
    assert rows["autoquant"].extra_dict["autoquant"]["layers"]
    r = rows["int8dynamic"]
    assert r.sqnr_db >= 20 and r.cosine > 0.99
    # speedups are medians of round-by-round ratios, inside their bootstrap intervals
    assert 0 < r.speedup_lo <= r.speedup <= r.speedup_hi and 0 < r.speedup_vs_eager_lo <= r.speedup_vs_eager <= r.speedup_vs_eager_hi
    assert r.sampling == "host clock around bursts of back-to-back calls" and r.timing == "quick"
    assert r.layers_quantized == 2 and r.layers_total == 2
    assert r.weight_bytes < rows["noquant"].weight_bytes
    assert rows["noquant"].layers_quantized == 0
    assert json.loads(r.recipe)["_type"] == "Int8DynamicActivationInt8WeightConfig"


def test_users_model_is_never_mutated(two_linear):
    before = {k: v.clone() for k, v in two_linear.state_dict().items()}
    run(two_linear, modes="int8dynamic,int8weightonly,int4weightonly")
    assert type(two_linear.fc1.weight) is nn.Parameter
    assert two_linear.fc1.weight.dtype == torch.float32
    for k, v in two_linear.state_dict().items():
        assert torch.equal(v, before[k])


def test_users_inputs_reach_the_model_as_given(two_linear):
    seen = []
    two_linear.register_forward_pre_hook(lambda mod, args, kwargs: seen.append(tuple(kwargs["x"].shape)), with_kwargs=True)
    rs = run(two_linear, example_inputs={"x": torch.randn(8, 128), "scale": 2.0}, modes="noquant,int8dynamic")
    assert [(r.batch_size, r.status) for r in rs] == [(8, "ok"), (8, "ok")]
    assert seen and set(seen) == {(8, 128)}
    with pytest.raises(UserError, match="batch_sizes apply to registry models"):
        run(two_linear, example_inputs=(torch.randn(8, 128),), batch_sizes=[1, 3])


def test_model_without_linear_says_nothing_to_quantize():
    rows = by_mode(run(NoLinear(), example_inputs=(torch.randn(1, 4, 8),), modes="noquant,int8dynamic,int4weightonly"))
    assert rows["noquant"].status == "ok"
    for mode in ["int8dynamic", "int4weightonly"]:
        assert rows[mode].status == "skipped" and "nothing to quantize" in rows[mode].reason


def test_int4_layers_the_group_size_misses_take_the_largest_that_fits():
    # in_features 576 (SmolLM2's): 128 doesn't divide it, 64 does; 1536 takes the requested 128
    model = nn.Sequential(nn.Linear(576, 1536), nn.ReLU(), nn.Linear(1536, 576))
    rows = by_mode(run(model, example_inputs=(torch.randn(1, 576),), modes="int8dynamic,int4weightonly"))
    r = rows["int4weightonly"]
    assert r.status == "ok" and r.layers_quantized == 2
    assert r.extra_dict["layer_configs"] == {"group 64": ["0"], "group 128": ["2"]}
    odd = nn.Sequential(nn.Linear(100, 64))
    rows = by_mode(run(odd, example_inputs=(torch.randn(1, 100),), modes="int4weightonly"))
    assert rows["int4weightonly"].status == "skipped" and "divisible by no int4 group size" in rows["int4weightonly"].reason
    # the group size is a setting: a requested 256 is refused by the CPU kernel, so 128 is the largest that fits
    rows = by_mode(run(model, example_inputs=(torch.randn(1, 576),), modes="int4weightonly",
                       int4weightonly={"group_size": 32}))
    assert rows["int4weightonly"].extra_dict["layer_configs"] == {"group 32": ["0", "2"]}
    with pytest.raises(UserError, match="group size must be one of"):
        run(model, example_inputs=(torch.randn(1, 576),), modes="int4weightonly", int4weightonly={"group_size": 48})


def test_a_failing_mode_is_an_error_row_and_the_sweep_goes_on(two_linear, monkeypatch):
    def boom(info, dtype):
        raise RuntimeError("kernel exploded")

    monkeypatch.setitem(modes_mod.MODES, "int8weightonly", modes_mod.Mode("int8weightonly", "broken", boom))
    rows = by_mode(run(two_linear, modes="int8weightonly,int8dynamic"))
    assert rows["int8weightonly"].status == "error"
    assert rows["int8weightonly"].reason == "RuntimeError: kernel exploded"
    assert rows["int8dynamic"].status == "ok"


def test_model_that_fails_gives_error_rows():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(128, 128)

        def forward(self, x):
            raise ValueError("bad input shape")

    rows = run(Broken(), modes="noquant,int8dynamic")
    assert [r.status for r in rows] == ["error", "error"]
    assert "unquantized model failed" in rows.rows[0].reason and "bad input shape" in rows.rows[0].reason


@pytest.mark.slow
def test_compiled_sweep_restores_baseline_even_when_a_cell_raises(two_linear, monkeypatch):
    seen = {}

    def hooked_apply(model, info, dtype, inputs, context):
        def hook(mod, args, out):
            seen["cache_size_limit"] = torch._dynamo.config.cache_size_limit  # read while tracing
            seen["coordinate_descent_tuning"] = torch._inductor.config.coordinate_descent_tuning
            raise RuntimeError("fails inside the compiled cell")
        model.fc1.register_forward_hook(hook)
        return modes_mod.ApplyReport(2, 2)

    monkeypatch.setitem(modes_mod.MODES, "int8weightonly",
                        modes_mod.Mode("int8weightonly", "hooked", lambda i, d: None, apply=hooked_apply))
    before = baseline.snapshot()
    inductor_before = torch._inductor.config.get_config_copy()
    rows = by_mode(run(two_linear, modes="noquant,int8weightonly", compile=True, baseline=True, tuning="torchao"))
    assert seen["cache_size_limit"] == 10000  # the baseline was on inside the cell
    assert seen["coordinate_descent_tuning"] is True
    assert rows["int8weightonly"].status == "error" and "fails inside" in rows["int8weightonly"].reason
    assert rows["noquant"].status == "ok" and rows["noquant"].graphs >= 1 and rows["noquant"].compile_s > 0
    assert baseline.snapshot() == before
    assert torch._inductor.config.get_config_copy() == inductor_before


def test_rows_are_saved_as_they_finish_and_resume_skips_them(two_linear, tmp_path, monkeypatch):
    stop = threading.Event()
    first = run(two_linear, modes="noquant,int8dynamic,int8weightonly", out=tmp_path, stop=stop,
                on_row=lambda r: stop.set())
    assert len(first) == 1
    assert len(read_jsonl(tmp_path / "rows.jsonl")) == 1
    assert ResultSet.load(tmp_path) == first

    ran = []
    real = cell_mod.prepare_cell
    monkeypatch.setattr(cell_mod, "prepare_cell", lambda cfg, ref, mode, *a: ran.append(mode) or real(cfg, ref, mode, *a))
    second = run(two_linear, modes="noquant,int8dynamic,int8weightonly", out=tmp_path, resume=True)
    assert ran == ["int8dynamic", "int8weightonly"]
    assert [r.mode for r in second] == ["noquant", "int8dynamic", "int8weightonly"]
    assert second.rows[0] == first.rows[0]
    assert ResultSet.load(tmp_path / "results.csv") == second


def test_a_fresh_sweep_sets_old_results_aside(two_linear, tmp_path):
    run(two_linear, modes="noquant", out=tmp_path)
    run(two_linear, modes="int8dynamic", out=tmp_path)
    assert [r.mode for r in ResultSet.load(tmp_path)] == ["int8dynamic"]
    previous = list((tmp_path / "previous").iterdir())
    assert len(previous) == 1 and [r.mode for r in ResultSet.load(previous[0])] == ["noquant"]


@pytest.mark.parametrize("compile, cache", [(True, "warm"), (False, "cold")])
def test_each_side_is_timed_on_copies_of_its_own_and_the_row_says_how(two_linear, compile, cache):
    from torchao_nb import measure

    policy = measure.TimingPolicy(min_warmup=1, warmup_s=0.0, lead_s=0.0, burst_s=0.0, replicates=2, min_samples=4,
                                  max_samples=6, block=2)
    rows = by_mode(run(two_linear, modes="noquant,int8weightonly", compile=compile, cache=cache, policy=policy))
    assert rows["noquant"].status == "ok", rows["noquant"].reason
    for row in rows.values():
        assert row.cache == cache and row.timing.startswith("custom-")
        if row.status != "ok":  # a kernel this CPU gets wrong is a wrong row, never timed: nothing more to check
            assert row.status == "wrong" and row.speedup is None
            continue
        assert row.replicates == 2
        assert row.baseline_ms > 0 and row.speedup_lo <= row.speedup <= row.speedup_hi
        # a row's interval claims no more than what varies between runs (ratios.across_runs)
        assert row.speedup_hi / row.speedup > 1 + 0.99 * ratios.BETWEEN_RUNS_REL
        assert row.speedup / row.speedup_lo > 1 / (1 - 0.99 * ratios.BETWEEN_RUNS_REL)
        assert ("flushed" in row.sampling) == (cache == "cold")
    assert two_linear.fc1.weight.dtype == torch.float32  # copies were made from copies: the user's model is untouched


@pytest.mark.parametrize("kwargs, message", [
    (dict(modes="int3"), "unknown mode"),
    (dict(cache="hot"), "cache must be one of warm, cold, got 'hot'"),
    (dict(compile="no"), "compile must be True or False, got 'no'"),
    (dict(baseline="false"), "baseline must be True or False, got 'false'"),
    (dict(save_reload="off"), "save_reload must be True or False, got 'off'"),
    (dict(isolate=1), "isolate must be True or False, got 1"),
    (dict(model="mlp,mlp"), "model mlp is given twice"),
    (dict(batch_sizes=[0]), "positive"),
    (dict(batch_sizes=[-2]), "positive"),
    (dict(batch_sizes=["x"]), "whole number"),
    (dict(batch_sizes=[99999999999999999999999]), "batch size 99999999999999999999999 is more than 1,048,576"),
    (dict(dtype="int7"), "unknown dtype"),
    (dict(device="tpu"), "unknown device"),
    (dict(compile_mode="fastest"), "unknown compile mode"),
])
def test_bad_input_is_a_clear_user_error(kwargs, message):
    model = kwargs.pop("model", "mlp")
    with pytest.raises(UserError, match=re.escape(message) if "(" in message else message):
        run(model, **kwargs)


@pytest.mark.parametrize("inputs, where", [((torch.randn(0, 128),), r"example_inputs\[0\] is empty \(shape \(0, 128\)\)"),
                                           ({"x": torch.randn(1, 0)}, r"example_inputs\['x'\] is empty")])
def test_an_empty_input_is_refused_before_anything_runs(two_linear, inputs, where):
    with pytest.raises(UserError, match=where):
        run(two_linear, example_inputs=inputs)


@pytest.mark.parametrize("isolate", [True, False])
def test_a_module_that_cannot_be_copied_is_one_line_that_names_the_attribute(isolate):
    model = TwoLinear()
    model.guard = threading.Lock()
    with pytest.raises(UserError, match=r"TwoLinear can't be copied .*: move .*guard.* out of the module"):
        run(model, isolate=isolate)


class OneColumn(nn.Module):
    """A Linear(1, N) (a bias-like projection of one feature) beside a normal layer."""

    def __init__(self):
        super().__init__()
        self.tiny = nn.Linear(1, 128)
        self.fc = nn.Linear(128, 128)

    def forward(self, x):
        return self.fc(x + self.tiny(x[:, :1]))


@pytest.mark.parametrize("mode", ["int8dynamic", "int8weightonly", "float8weightonly"])
def test_a_one_column_linear_is_left_alone_and_named(mode):
    row = run(OneColumn(), modes=mode).rows[0]
    assert row.status in ("ok", "wrong"), row.reason  # the other layer's kernel may be wrong on some CPU: not ours
    assert row.layers_quantized == 1 and row.layers_total == 2
    assert "one-column weight" in row.extra_dict["layers_left_alone"]["tiny"]


def test_unknown_model_and_missing_inputs():
    with pytest.raises(UserError, match="unknown model 'gpt-17'.*mlp"):
        run("gpt-17")
    with pytest.raises(UserError, match="example_inputs"):
        sweep(model=TwoLinear(), device="cpu", progress=False)
    with pytest.raises(UserError, match="tuple"):
        run(TwoLinear(), example_inputs="text")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU, so --device cuda is valid here")
def test_cuda_without_gpu_is_a_user_error(two_linear):
    with pytest.raises(UserError, match="no CUDA GPU"):
        run(two_linear, device="cuda")


def test_unwritable_output_folder(two_linear, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot write results"):
        run(two_linear, out=blocker / "results")


def test_registry_decoder_runs_and_reports_tokens_per_second():
    rows = by_mode(run("llama-tiny", modes="noquant,int8dynamic", seq_len=8))
    assert rows["int8dynamic"].status == "ok" and rows["int8dynamic"].sqnr_db > 15
    assert rows["noquant"].tokens_per_s > 0


def test_threads_are_restored(two_linear):
    before = torch.get_num_threads()
    rs = run(two_linear, modes="noquant", threads=1)
    assert rs.rows[0].threads == 1 and rs.environment["threads"] == 1
    assert torch.get_num_threads() == before


class WithMask(nn.Module):
    """An activation and an optional attention-mask-like second tensor whose first dimension is not the batch."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(128, 128)

    def forward(self, x, mask=None):
        return self.fc(x) + (0 if mask is None else mask.sum() * 0)


@pytest.mark.parametrize("inputs, shapes", [
    ((torch.randn(8, 128),), ((8, 128),)),
    ((torch.randn(8, 128), torch.ones(16, 16)), ((8, 128), (16, 16))),
    ({"x": torch.randn(8, 128), "mask": torch.ones(16, 16)}, ((8, 128), (16, 16))),
])
def test_every_input_tensor_reaches_the_module_as_given(inputs, shapes):
    model = WithMask()
    seen = set()
    model.register_forward_pre_hook(lambda mod, args, kwargs: seen.add(
        tuple(tuple(t.shape) for t in [*args, *kwargs.values()] if isinstance(t, torch.Tensor))), with_kwargs=True)
    rs = run(model, example_inputs=inputs, modes="noquant,int8dynamic")
    assert [(r.batch_size, r.status) for r in rs] == [(8, "ok"), (8, "ok")]  # the row's batch is the input's
    assert seen == {shapes}  # never cut or repeated to another batch size


def test_an_already_quantized_module_is_detected_and_its_rows_say_so(two_linear):
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    from torchao_nb.errors import Notice

    quantize_(two_linear, Int8WeightOnlyConfig())
    with pytest.warns(Notice, match="TwoLinear: the model is already quantized"):
        rows = by_mode(run(two_linear, modes="noquant,int8dynamic,int4weightonly"))
    assert rows["noquant"].status == "ok"  # measured as given
    for mode in ("int8dynamic", "int4weightonly"):
        assert rows[mode].status == "skipped", rows[mode].reason
        assert "already quantized (2 of 2 Linear layers hold torchao tensors, e.g. fc1.weight is a Int8Tensor)" \
            in rows[mode].reason


def test_settings_that_do_nothing_here_are_a_notice_not_an_error():
    from torchao_nb import config
    from torchao_nb.errors import Notice

    with pytest.warns(Notice, match=r"threads=\d+ is more than the \d+ CPU cores"):
        cfg = config.build(["noquant"], False, False, device="cpu", threads=config.cpu_cores() + 1)
    assert cfg.threads == config.cpu_cores() + 1
    with pytest.warns(Notice, match="'reduce-overhead' captures CUDA graphs, which don't exist on the CPU"):
        config.build(["noquant"], False, False, device="cpu", compile_mode="reduce-overhead")
    with pytest.raises(UserError, match="policy must be a torchao_nb.measure.TimingPolicy"):
        config.build(["noquant"], False, False, device="cpu", policy="fast")


@pytest.mark.parametrize("kwargs, message", [
    (dict(seq_len=0), "seq_len must be a positive whole number, got 0"),
    (dict(seq_len=-5), "seq_len must be a positive whole number, got -5"),
    (dict(threads=0), "threads must be a positive whole number, got 0"),
    (dict(seq_len=2.5), "seq_len must be a positive whole number"),
])
def test_numbers_that_would_be_replaced_by_defaults_are_refused(kwargs, message):
    with pytest.raises(UserError, match=message):
        run("llama-tiny", **kwargs)


def test_a_groups_modes_are_timed_together_against_one_baseline(two_linear):
    """Every row of a group divides the same baseline samples, so the table adds up across its rows."""
    from torchao_nb import columns
    from torchao_nb.extras import TimingNotes

    rows = [r for r in run(two_linear, modes="noquant,int8weightonly,int8dynamic") if r.status == "ok"]
    assert len(rows) >= 2
    assert len({r.baseline_ms for r in rows}) == 1
    assert all(r.extra_of(TimingNotes).together == 3 and r.extra_of(TimingNotes).alone is None for r in rows)
    assert "every mode of its group" in columns.timing_note(rows)
    assert "adds ±3% for what varies between runs" in columns.timing_note(rows)
    alone = by_mode(run(two_linear, modes="noquant"))["noquant"]
    assert alone.extra_of(TimingNotes) is None or alone.extra_of(TimingNotes).together is None
    assert "every mode of its group" not in columns.timing_note([alone])
