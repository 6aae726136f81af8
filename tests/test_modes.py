import pytest
import torch
from torch import nn

from torchao_nb import UserError, autoquant, modes as modes_mod  # noqa: F401  (autoquant, a plug-in, registers itself)
from torchao_nb.env import DeviceInfo

CPU = DeviceInfo("cpu", "test cpu", None, True)
A100 = DeviceInfo("cuda", "A100", (8, 0))
H100 = DeviceInfo("cuda", "H100", (9, 0))
T4 = DeviceInfo("cuda", "T4", (7, 5))


def test_seed_modes_and_newer_are_registered():
    for name in ["noquant", "int8dynamic", "int8weightonly", "int4weightonly", "autoquant", "float8weightonly", "float8dynamic"]:
        assert name in modes_mod.MODES


def test_unknown_mode_lists_valid_ones():
    with pytest.raises(ValueError) as e:
        modes_mod.resolve_modes("int8dynamic,int3magic")
    assert "int3magic" in str(e.value) and "int8weightonly" in str(e.value)
    assert isinstance(e.value, UserError)


def test_all_and_exact_matching():
    assert modes_mod.resolve_modes("all") == list(modes_mod.MODES)
    assert modes_mod.resolve_modes("int8dynamic, noquant,int8dynamic") == ["int8dynamic", "noquant"]
    with pytest.raises(UserError):
        modes_mod.resolve_modes("int8")  # no substring matching
    with pytest.raises(UserError):
        modes_mod.resolve_modes(" , ")


def test_reasons_before_running():
    assert "CUDA" in modes_mod.MODES["float8dynamic"].unsupported_reason(CPU, torch.bfloat16)
    assert "8.9" in modes_mod.MODES["float8dynamic"].unsupported_reason(A100, torch.bfloat16)
    assert modes_mod.MODES["float8dynamic"].unsupported_reason(H100, torch.bfloat16) is None
    assert "8.9" in modes_mod.MODES["float8weightonly"].unsupported_reason(A100, torch.bfloat16)
    assert "bfloat16" in modes_mod.MODES["int4weightonly"].unsupported_reason(H100, torch.float32)
    assert "8.0" in modes_mod.MODES["int4weightonly"].unsupported_reason(T4, torch.bfloat16)
    assert modes_mod.MODES["int4weightonly"].unsupported_reason(CPU, torch.bfloat16) is None
    assert modes_mod.MODES["autoquant"].unsupported_reason(CPU, torch.bfloat16) is None
    assert modes_mod.MODES["autoquant"].apply is not None


def test_int4_config_per_device():
    assert type(modes_mod.MODES["int4weightonly"].config(CPU, torch.bfloat16)).__name__ == "PrototypeInt4WeightOnlyConfig"
    assert type(modes_mod.MODES["int4weightonly"].config(CPU, torch.float32)).__name__ == "IntxWeightOnlyConfig"
    cuda_cfg = modes_mod.MODES["int4weightonly"].config(H100, torch.bfloat16)
    assert type(cuda_cfg).__name__ == "Int4WeightOnlyConfig"
    assert str(cuda_cfg.int4_packing_format.value) in {"tile_packed_to_4d", "plain"}


def test_configs_do_not_touch_inductor_settings():
    cfg = modes_mod.MODES["int8weightonly"].config(CPU, torch.bfloat16)
    assert cfg.set_inductor_config is False
    assert modes_mod.config_dict(cfg)["_type"] == "Int8WeightOnlyConfig"


def test_quantize_reports_layers_left_alone():
    # in_features 100 is divisible by no int4 group size; 96 takes 32 (128 doesn't divide it)
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(96, 128), nn.Linear(100, 128)).to(torch.bfloat16)
    report = modes_mod.quantize(model, modes_mod.MODES["int4weightonly"], CPU, torch.bfloat16)
    assert (report.layers_quantized, report.layers_total) == (2, 3)
    assert "divisible by no int4 group size (128/64/32)" in report.skipped_layers["3"]
    assert report.extra["layer_configs"] == {"group 128": ["0"], "group 32": ["2"]}
    assert modes_mod.is_quantized(model[0]) and modes_mod.is_quantized(model[2]) and not modes_mod.is_quantized(model[3])


def test_an_already_quantized_model_is_refused_with_a_message():
    model = nn.Sequential(nn.Linear(128, 128)).to(torch.bfloat16)
    modes_mod.quantize(model, modes_mod.MODES["int8weightonly"], CPU, torch.bfloat16)
    with pytest.raises(UserError, match="already quantized"):
        modes_mod.quantize(model, modes_mod.MODES["int8dynamic"], CPU, torch.bfloat16)


def test_cpu_int4_out_features_check():
    lin = nn.Linear(128, 40)
    assert "divisible by 16" in modes_mod.MODES["int4weightonly"].layer_reason(lin, CPU, torch.bfloat16)


def test_availability_covers_every_mode():
    avail = modes_mod.availability(CPU, torch.bfloat16)
    assert set(avail) == set(modes_mod.MODES)
    assert avail["noquant"] is None and avail["int8dynamic"] is None


def test_known_failures_get_an_explanation():
    why = modes_mod.explain_failure("self.size(0) needs to be greater than 16, but got 1")
    assert "more than 16 rows" in why
    assert modes_mod.explain_failure("some new error") is None
