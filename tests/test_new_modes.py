"""The 2026 recipes: each CPU mode runs in a small sweep, each CUDA-only mode builds its config for a made-up GPU and
says why it can't run here, every mode's `where` agrees with its rules, and list-modes --all shows them all."""

import json

import pytest
import torch
from torch import nn

from torchao_nb import UserError, config as config_mod, measure, modes as modes_mod, sweep
from torchao_nb.autoquant import SearchSettings, searchable_modes
from torchao_nb.cli import _sweep_options, main, parser
from torchao_nb.compiling import CompileSettings
from torchao_nb.env import DeviceInfo
from torchao_nb.modes.sparse import prune_2_4

CPU = DeviceInfo("cpu", "test cpu", None, True)
A100 = DeviceInfo("cuda", "A100", (8, 0))
H100 = DeviceInfo("cuda", "H100", (9, 0))
B200 = DeviceInfo("cuda", "B200", (10, 0))
CAPABILITIES = [(7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)]
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
CPU_MODES = ["int4weightonly-hqq", "int8dq-int4", "torch-ao-dynamic"]
CUDA_ONLY = {"float8dq-int4": (H100, "9.0"), "sparse24": (A100, "8.0"), "mxfp8": (B200, "10.0"), "nvfp4": (B200, "10.0")}


def run(model, **kw):
    kw.setdefault("device", "cpu")
    kw.setdefault("compile", False)
    kw.setdefault("progress", False)
    kw.setdefault("policy", measure.FAST_POLICY)
    kw.setdefault("isolate", False)
    kw.setdefault("example_inputs", (torch.randn(4, 128),))
    return {r.mode: r for r in sweep(model=model, **kw)}


# ---- where each mode runs -----------------------------------------------------------------------

@pytest.mark.parametrize("name", list(modes_mod.MODES))
def test_where_agrees_with_the_rules(name):
    mode, where = modes_mod.MODES[name], modes_mod.MODES[name].where
    for dt_name, dt in DTYPES.items():
        assert (mode.unsupported_reason(CPU, dt) is None) == (dt_name in where.cpu), (name, "cpu", dt_name)
    missing = [p for p in where.packages if not modes_mod.installed(p)]
    for cap in CAPABILITIES:
        gpu = DeviceInfo("cuda", f"sm{cap[0]}{cap[1]}", cap)
        for dt_name, dt in DTYPES.items():
            reason = mode.unsupported_reason(gpu, dt)
            fits = where.cuda is not None and cap >= where.cuda and dt_name in where.cuda_dtypes
            if not fits:
                assert reason is not None, (name, cap, dt_name)
            elif missing:  # the rules hold, but a package is absent here: the reason must name it
                assert reason is not None and any(p in reason for p in missing), (name, cap, dt_name, reason)
            else:
                assert reason is None, (name, cap, dt_name, reason)


def test_list_modes_all_says_where_every_mode_runs(capsys):
    assert main(["list-modes", "--all", "--device", "cpu", "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    runs_on = [line.strip() for line in out.splitlines() if line.strip().startswith("runs on:")]
    assert len(runs_on) == len(modes_mod.MODES)
    for name in modes_mod.MODES:
        assert f"  {name} " in out
    assert "runs on: CUDA compute capability >= 9.0 (bf16 only, needs mslk)" in out  # float8dq-int4
    assert "runs on: CUDA compute capability >= 10.0 (bf16 only)" in out  # mxfp8
    assert "runs on: CPU (fp32 only)" in out  # torch-ao-dynamic
    assert "runs on: CPU (any dtype); CUDA compute capability >= 8.0 (bf16 only)" in out  # int4weightonly-hqq
    assert main(["list-modes", "--device", "cpu"]) == 0
    assert "runs on:" not in capsys.readouterr().out  # without --all: this machine only, as before


# ---- the modes that run on this CPU -------------------------------------------------------------

def test_cpu_modes_run_in_bf16(two_linear):
    rows = run(two_linear, modes="noquant,int4weightonly,int4weightonly-hqq,int8dq-int4,torch-ao-dynamic",
               dtype="bfloat16")
    for mode in ["int4weightonly-hqq", "int8dq-int4"]:
        r = rows[mode]
        assert r.status == "ok", r.reason
        assert (r.layers_quantized, r.layers_total) == (2, 2)
        assert r.weight_bytes < rows["noquant"].weight_bytes
    assert rows["int4weightonly-hqq"].sqnr_db >= 15 and rows["int8dq-int4"].sqnr_db >= 15
    hqq = json.loads(rows["int4weightonly-hqq"].recipe)
    assert hqq["_type"] == "PrototypeInt4WeightOnlyConfig"
    assert hqq["_data"]["int4_choose_qparams_algorithm"]["_data"] == "HQQ"
    plain = json.loads(rows["int4weightonly"].recipe)["_data"]["int4_choose_qparams_algorithm"]["_data"]
    assert plain == "TINYGEMM"  # the same mode otherwise: one sweep compares the two qparams algorithms
    recipe = json.loads(rows["int8dq-int4"].recipe)
    assert recipe["_type"] == "Int8DynamicActivationIntxWeightConfig"
    assert recipe["_data"]["weight_dtype"]["_data"] == "int4" and recipe["_data"]["weight_granularity"]["_data"]["group_size"] == 32
    skipped = rows["torch-ao-dynamic"]
    assert skipped.status == "skipped" and "--dtype float32" in skipped.reason


def test_cpu_modes_run_in_fp32(two_linear):
    rows = run(two_linear, modes="noquant,int4weightonly-hqq,int8dq-int4,torch-ao-dynamic", dtype="float32")
    for mode in CPU_MODES:
        r = rows[mode]
        assert r.status == "ok", r.reason
        assert (r.layers_quantized, r.layers_total) == (2, 2)
        assert r.weight_bytes < rows["noquant"].weight_bytes
    assert rows["torch-ao-dynamic"].sqnr_db >= 25 and rows["int8dq-int4"].sqnr_db >= 15
    assert rows["int4weightonly-hqq"].sqnr_db >= 15
    hqq = json.loads(rows["int4weightonly-hqq"].recipe)
    assert hqq["_type"] == "IntxWeightOnlyConfig" and hqq["_data"]["intx_choose_qparams_algorithm"]["_data"] == "HQQ_SCALE_ONLY"
    ao = json.loads(rows["torch-ao-dynamic"].recipe)
    assert ao["_type"] == "torch.ao.quantization.quantize_dynamic" and ao["dtype"] == "qint8"
    # its int8 weights sit in packed C++ objects, not parameters: counted all the same (int8 weights, fp32 biases)
    assert rows["torch-ao-dynamic"].weight_bytes == 2 * 128 * 256 + (256 + 128) * 4


def test_torch_ao_weight_bytes_open_the_packed_params(two_linear):
    plain = measure.weight_bytes(two_linear)
    model = nn.Sequential(two_linear)
    report = modes_mod.quantize(model, modes_mod.MODES["torch-ao-dynamic"], CPU, torch.float32)
    assert (report.layers_quantized, report.layers_total) == (2, 2)
    assert not list(model.parameters())  # what weight_bytes would have counted before: nothing
    assert measure.weight_bytes(model) == 2 * 128 * 256 + (256 + 128) * 4 < plain
    with pytest.raises(UserError, match="no Linear layer fits"):
        modes_mod.quantize(nn.Linear(8, 8), modes_mod.MODES["torch-ao-dynamic"], CPU, torch.float32)


def test_torch_ao_dynamic_says_what_torch_compile_makes_of_it(two_linear):
    one_graph = modes_mod.ApplyContext(compile=CompileSettings(True, fullgraph=True))
    with pytest.raises(UserError, match="can't be compiled as one graph.*--no-compile"):
        modes_mod.quantize(nn.Sequential(two_linear), modes_mod.MODES["torch-ao-dynamic"], CPU, torch.float32,
                           context=one_graph)
    assert type(two_linear.fc1) is nn.Linear  # refused before anything was swapped


@pytest.mark.slow
def test_torch_ao_dynamic_compiled_counts_its_graph_breaks(two_linear):
    rows = run(two_linear, modes="noquant,torch-ao-dynamic", dtype="float32", compile=True)
    r = rows["torch-ao-dynamic"]
    # What the tool reports, whichever way this CPU's compiler gets the cell: a wrong output says which side is wrong.
    assert r.status in ("ok", "wrong"), r.reason
    if r.status == "wrong":
        assert "output wrong" in r.reason and r.speedup is None
    else:
        # dynamo can't trace the packed int8 weights: each quantized Linear runs eagerly between compiled pieces
        assert r.graph_breaks >= 2 and "Failed to convert args/kwargs to proxy" in r.extra
    assert rows["noquant"].graph_breaks == 0


def test_layers_the_new_modes_cannot_take_are_left_alone_with_a_reason():
    model = nn.Sequential(nn.Linear(128, 64), nn.Linear(64, 100), nn.Linear(100, 64))
    report = modes_mod.quantize(model, modes_mod.MODES["int8dq-int4"], CPU, torch.float32)
    assert (report.layers_quantized, report.layers_total) == (2, 3)
    assert report.skipped_layers == {"2": "in_features 100 is not divisible by the int4 group size 32"}
    lin = nn.Linear(100, 128)
    assert "group size 128" in modes_mod.MODES["float8dq-int4"].layer_reason(lin, H100, torch.bfloat16)
    assert "block size 32" in modes_mod.MODES["mxfp8"].layer_reason(lin, B200, torch.bfloat16)
    assert "divisible by 16" in modes_mod.MODES["nvfp4"].layer_reason(lin, B200, torch.bfloat16)
    assert "2:4 sparse weights need" in modes_mod.MODES["sparse24"].layer_reason(lin, A100, torch.bfloat16)
    assert modes_mod.MODES["sparse24"].layer_reason(nn.Linear(128, 256), A100, torch.bfloat16) is None
    assert "no int4 group size" in modes_mod.MODES["int4weightonly-hqq"].layer_reason(lin, CPU, torch.bfloat16)


# ---- the CUDA-only modes, on a made-up GPU ---------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CUDA_ONLY))
def test_cuda_only_modes_build_their_config_and_say_why_not_here(name):
    gpu, capability = CUDA_ONLY[name]
    mode = modes_mod.MODES[name]
    cfg = mode.config(gpu, torch.bfloat16)
    data = modes_mod.config_dict(cfg)
    assert data["_type"] == type(cfg).__name__ and "_data" in data  # torchao's own serialisation, JSON-ready
    json.dumps(data)
    reason = mode.unsupported_reason(CPU, torch.bfloat16)
    assert reason and "CUDA" in reason and capability in reason, reason
    older = DeviceInfo("cuda", "older", (7, 5))
    assert capability in mode.unsupported_reason(older, torch.bfloat16)


def test_cuda_only_configs_are_the_recipes_asked_for():
    f8i4 = modes_mod.MODES["float8dq-int4"]
    assert type(f8i4.config(H100, torch.bfloat16)).__name__ == "Float8DynamicActivationInt4WeightConfig"
    assert f8i4.config(H100, torch.bfloat16).int4_packing_format == "preshuffled"
    if not modes_mod.installed("mslk"):
        assert "mslk" in f8i4.unsupported_reason(H100, torch.bfloat16)
    mx = modes_mod.MODES["mxfp8"].config(B200, torch.bfloat16)
    assert (mx.block_size, mx.activation_dtype, mx.weight_dtype) == (32, torch.float8_e4m3fn, torch.float8_e4m3fn)
    assert type(modes_mod.MODES["nvfp4"].config(B200, torch.bfloat16)).__name__ == "NVFP4DynamicActivationNVFP4WeightConfig"
    assert type(modes_mod.MODES["sparse24"].config(A100, torch.bfloat16)).__name__ == "SemiSparseWeightConfig"
    assert "bfloat16" in modes_mod.MODES["sparse24"].unsupported_reason(A100, torch.float32)
    hqq = modes_mod.MODES["int4weightonly-hqq"].config(H100, torch.bfloat16)
    assert type(hqq).__name__ == "Int4WeightOnlyConfig" and hqq.set_inductor_config is False
    assert (hqq.int4_choose_qparams_algorithm.value, hqq.int4_packing_format.value) == ("hqq", "tile_packed_to_4d")
    assert "8.0" in modes_mod.MODES["int4weightonly-hqq"].unsupported_reason(DeviceInfo("cuda", "T4", (7, 5)), torch.bfloat16)
    assert "CUDA" in modes_mod.MODES["torch-ao-dynamic"].unsupported_reason(H100, torch.float32)


def test_prune_2_4_keeps_the_two_largest_of_every_four():
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 1.0, 1.5, -0.2, 0.0]])
    pruned = prune_2_4(w)
    assert torch.equal(pruned, torch.tensor([[0.0, -3.0, 2.0, 0.0, 1.0, 1.5, 0.0, 0.0]]))
    big = torch.randn(64, 128)
    once = prune_2_4(big)
    assert ((once.reshape(-1, 4) != 0).sum(dim=1) == 2).all()
    assert torch.equal(prune_2_4(once), once)  # a weight already 2:4 sparse is left as it is


def test_sparse24_prunes_exactly_the_layers_it_compresses(monkeypatch):
    from torchao_nb.modes import sparse

    calls = []

    def compress(model, mode, info, dtype, example_inputs, ctx):  # to_sparse_semi_structured needs a GPU
        calls.append(mode.apply)
        return modes_mod.ApplyReport(1, 2, {"1": "too small"}, modes_mod.config_dict(mode.config(info, dtype)))

    monkeypatch.setattr(sparse, "quantize", compress)
    model = nn.Sequential(nn.Linear(128, 256), nn.Linear(256, 100)).to(torch.bfloat16)  # 100 rows: no 2:4 tile
    report = modes_mod.quantize(model, modes_mod.MODES["sparse24"], A100, torch.bfloat16)
    assert calls == [None]  # then the plain config path, once
    assert ((model[0].weight.reshape(-1, 4) != 0).sum(dim=1) == 2).all()
    assert (model[1].weight != 0).all()  # a layer left alone is not pruned either
    assert report.recipe["_type"] == "torchao_nb.sparse24" and report.recipe["config"]["_type"] == "SemiSparseWeightConfig"


# ---- float8dynamic's granularity setting ---------------------------------------------------------

def test_float8_granularity_setting_round_trips():
    S = modes_mod.Float8Settings
    assert S.of(None).granularity == "per-row" and S.of("per_tensor") == S("per-tensor")
    assert S.of({"granularity": "Per-Tensor"}).granularity == "per-tensor"
    with pytest.raises(UserError, match="per-row, per-tensor"):
        S.of("per-block")
    with pytest.raises(UserError, match="unknown float8dynamic setting"):
        S.of({"scale": "row"})
    args = parser().parse_args(["run", "--out", "x", "--float8-granularity", "per-tensor", "--int4-group-size", "64"])
    options = _sweep_options(args)
    assert options["float8dynamic"] == {"granularity": "per-tensor"}
    assert options["int4weightonly"] == options["int4weightonly-hqq"] == {"group_size": 64}  # one flag, both int4 modes
    cfg = config_mod.build(["float8dynamic"], False, False, device="cpu", float8dynamic="per-tensor")
    text = config_mod.mode_settings_text(cfg, "float8dynamic")
    assert text == '{"granularity": "per-tensor"}' and S.of(json.loads(text)) == cfg.settings_for("float8dynamic")
    assert config_mod.settings_dict(cfg)["mode_settings"] == {"float8dynamic": {"granularity": "per-tensor"}}
    default = config_mod.build(["float8dynamic"], False, False, device="cpu")
    assert config_mod.mode_settings_text(default, "float8dynamic") == '{"granularity": "per-row"}'


def test_float8_granularity_picks_the_config_and_stays_skipped_on_cpu(two_linear):
    mode, lin = modes_mod.MODES["float8dynamic"], nn.Linear(128, 128)
    cfg, label = mode.layer_config(lin, H100, torch.bfloat16, modes_mod.Float8Settings("per-tensor"))
    assert label == "per-tensor" and [type(g).__name__ for g in cfg.granularity] == ["PerTensor", "PerTensor"]
    cfg, label = mode.layer_config(lin, H100, torch.bfloat16, None)
    assert label == "per-row" and [type(g).__name__ for g in cfg.granularity] == ["PerRow", "PerRow"]
    with pytest.raises(UserError, match="--float8-granularity per-tensor"):
        mode.layer_config(lin, H100, torch.float16, None)  # torchao's per-row float8 takes bf16 only
    row = run(two_linear, modes="float8dynamic", dtype="bfloat16", float8dynamic={"granularity": "per-tensor"})["float8dynamic"]
    assert row.status == "skipped" and "CUDA" in row.reason
    assert row.mode_settings == '{"granularity": "per-tensor"}'


# ---- autoquant's candidates ----------------------------------------------------------------------

def test_autoquant_tries_the_new_cpu_modes_but_not_the_module_swaps():
    names = searchable_modes()
    assert "int4weightonly-hqq" in names and "int8dq-int4" in names and "float8dynamic" in names
    assert "torch-ao-dynamic" not in names and "sparse24" not in names and "autoquant" not in names
    with pytest.raises(UserError, match="can't try mode 'torch-ao-dynamic'"):
        SearchSettings(candidates=("torch-ao-dynamic",))
