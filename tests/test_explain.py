"""The walkthrough's experiments: one Linear under each mode, and the timing pitfalls table."""

import math

import pytest

import torch

from torchao_nb import baseline, env, explain, measure, modes as modes_mod


def test_one_linear_reports_size_and_error_for_every_mode():
    study = explain.one_linear(256, 256, batch=4, device="cpu", dtype="float32")
    t = study.table.set_index("mode")
    assert list(t.index) == list(modes_mod.MODES)
    reasons = modes_mod.availability(env.device_info("cpu"), torch.float32)
    for mode, reason in reasons.items():
        assert t.loc[mode, "status"] == ("ok" if reason is None else "skipped")
        if reason:
            assert t.loc[mode, "note"] == reason
    assert math.isinf(t.loc["noquant", "weight SQNR dB"]) and t.loc["noquant", "size vs original"] == 1.0
    assert t.loc["int8weightonly", "weight SQNR dB"] > 35 and t.loc["int8weightonly", "size vs original"] < 0.55
    assert 12 < t.loc["int4weightonly", "weight SQNR dB"] < 30 and t.loc["int4weightonly", "size vs original"] < 0.35
    assert t.loc["int8dynamic", "output SQNR dB"] < t.loc["int8weightonly", "output SQNR dB"]  # activations too
    assert all(t.loc[m, "quantized"] for m in ("int8dynamic", "int8weightonly", "int4weightonly"))
    assert set(study.after) == {m for m, r in reasons.items() if r is None}
    assert len(study.figure().axes) == 2


def test_effective_weight_recovers_a_plain_linear():
    lin = torch.nn.Linear(8, 4, bias=False)
    w = explain.effective_weight(lin, 8, torch.zeros(1, 8))
    assert torch.allclose(w, lin.weight.detach())


def test_timing_pitfalls_names_each_pitfall():
    t = explain.timing_pitfalls("llama-tiny", batch_sizes=(1, 2), device="cpu", compile=False, policy=measure.FAST_POLICY)
    assert list(t.pitfall) == ["warm-up", "device sync", "compile time", "batch size 1", "batch size 2"]
    assert t.loc[2, "naive"] == "compile off"
    assert "n/a on the CPU" in t.loc[1, "naive"]


@pytest.mark.slow
def test_timing_pitfalls_with_compile_times_the_first_compiled_call():
    before = baseline.snapshot()
    t = explain.timing_pitfalls("llama-tiny", batch_sizes=(1,), device="cpu", compile=True, policy=measure.FAST_POLICY)
    row = t.set_index("pitfall").loc["compile time"]
    assert row["naive"].startswith("first compiled call") and "compiled median" in row["careful"]
    assert baseline.snapshot() == before  # the baseline settings were applied only inside the cell


def test_baseline_table_lists_the_seed_settings():
    t = explain.baseline_table()
    assert "torch._dynamo.config.cache_size_limit" in set(t.setting)
    assert t.set_index("setting").loc["torch._dynamo.epilogue_fusion", "applied"] == "no"
    assert t.set_index("setting").loc["torch._dynamo.config.cache_size_limit", "applied"] == "yes"
