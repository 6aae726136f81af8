"""What compiling a cell records and refuses: torchao's settings per device, graph breaks, compiler counters, bytes."""

import pytest
import torch

from torchao_nb import baseline, columns, config, env, measure, models
from torchao_nb import modes as modes_mod
from torchao_nb import sweep
from torchao_nb.env import DeviceInfo

from .conftest import TwoLinear

H100 = DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", (9, 0))
CPU = env.device_info("cpu")


def run(model, **kw):
    kw = {"device": "cpu", "dtype": "float32", "progress": False, "policy": measure.FAST_POLICY, "isolate": False, **kw}
    return sweep(model=model, **kw)


def test_torchao_tuning_is_on_by_default_on_cuda_and_off_on_cpu():
    cfg = config.build(["noquant"], False, False, device="cpu")
    assert cfg.compile.tuning == "off"
    assert config.build(["noquant"], False, False, device="cpu", tuning="torchao").compile.tuning == "torchao"
    # CUDA's default can't be built without a GPU; the rule is the option's documented default and default_tuning
    option = next(o for o in config.OPTIONS if o.name == "tuning")
    assert option.default is None and "torchao on CUDA" in option.help
    assert (config.default_tuning("cuda"), config.default_tuning("cpu")) == ("torchao", "off")
    effects = {s.key: s.effect for s in baseline.describe(baseline.TORCHAO_TUNING, "cpu")}
    assert effects["torch._inductor.config.coordinate_descent_tuning"] == "no effect on a CPU"
    assert effects["torch._inductor.config.force_fuse_int_mm_with_mul"].startswith("no effect")
    assert "torch._inductor.config.triton.unique_kernel_names" in effects  # torchao's setter sets it too
    seed = {s.key: s for s in baseline.describe()}
    assert seed["torch._inductor.config.use_mixed_mm"].effect == "ignored by this torch"  # today's inductor says so
    assert baseline.ignored_by_this_torch("torch._inductor.config.use_mixed_mm")
    assert not baseline.ignored_by_this_torch("torch._inductor.config.coordinate_descent_tuning")


def test_int8dynamic_on_cuda_needs_more_than_16_rows():
    rule = modes_mod.get("int8dynamic").input_reason
    assert "more than 16 rows" in rule(H100, torch.bfloat16, 1) and "it would get 16" in rule(H100, torch.bfloat16, 16)
    assert rule(H100, torch.bfloat16, 17) is None and rule(CPU, torch.bfloat16, 1) is None


def test_int8dynamic_at_batch_1_decode_is_skipped_before_quantizing_when_the_device_is_cuda(monkeypatch):
    from torchao_nb import cell

    monkeypatch.setattr(cell.envmod, "device_info", lambda device: H100)  # the rule, not the GPU, is under test
    quantized = []
    monkeypatch.setattr(modes_mod, "quantize", lambda *a, **k: quantized.append(a) or pytest.fail("quantized"))
    rs = run("llama-tiny", modes="int8dynamic", compile=False, seq_len=8)
    assert rs.rows[0].status == "skipped" and "it would get 1 (batch x tokens)" in rs.rows[0].reason
    assert not quantized


def test_a_prefill_keeps_int8dynamic_on_cuda_and_leaves_alone_only_the_layer_that_sees_too_few_rows(monkeypatch):
    from torchao_nb import cell

    monkeypatch.setattr(cell.envmod, "device_info", lambda device: H100)  # the rule, not the GPU, is under test
    row = run("llama-tiny:prefill", modes="int8dynamic", compile=False, seq_len=32).rows[0]
    # every layer sees 32 prompt tokens, except the lm_head: it reads the last position only (1 row).
    # The cell ran (a kernel that gets it wrong on some CPU makes it 'wrong', never 'skipped'):
    assert row.status in ("ok", "wrong"), row.reason
    assert list(row.extra_dict["layers_left_alone"]) == ["lm_head"]
    assert "it would get 1 (batch x tokens)" in row.extra_dict["layers_left_alone"]["lm_head"]
    assert row.layers_quantized == row.layers_total - 1


def test_bytes_per_step_leave_out_embedding_tables_that_are_only_looked_up():
    module, _ = models.get("llama-tiny").build("cpu", torch.float32, 1, 8)
    table = module.embed.weight.numel() * 4
    assert measure.streamed_weight_bytes(module) == measure.weight_bytes(module) - table
    module.lm_head.weight = module.embed.weight  # tied: the lm_head reads the whole table every step
    assert measure.streamed_weight_bytes(module) == measure.weight_bytes(module)


def test_the_copy_buffer_outgrows_the_cache():
    assert measure.copy_buffer_mib(None) == 256
    assert measure.copy_buffer_mib(480 * 2**20) == 1920  # the Intel machine's L3
    assert env.cache_bytes("cpu") is None or env.cache_bytes("cpu") >= 2**20


class Breaks(TwoLinear):
    """Prints in the middle of its forward: a graph break."""

    def forward(self, x, scale=1.0):
        h = torch.relu(self.fc1(x))
        print("between the layers")
        return self.fc2(h) * scale


@pytest.mark.slow
def test_compiler_counters_and_graph_breaks_are_in_the_row():
    rows = {r.mode: r for r in run("mlp", modes="noquant", compile=True)}
    r = rows["noquant"]
    assert r.status == "ok" and r.graph_breaks == 0 and r.recompiles == 0
    assert r.cudagraph_skips is None  # counted on CUDA only: on a CPU inductor always "skips" CUDA graphs
    assert r.fx_cache  # e.g. "hit 1": the first call's FX graph cache
    assert ("no clear difference" in columns.note(r)) == (r.speedup_lo <= 1.0 <= r.speedup_hi)
    broken = run(Breaks(), example_inputs=(torch.randn(2, 128),), modes="noquant", compile=True).rows[0]
    assert broken.status == "ok" and broken.graph_breaks >= 1 and broken.graphs >= 2
    assert any("print" in b or "builtin" in b for b in broken.extra_dict["graph_breaks"])
    assert "graph break" in columns.note(broken)
    strict = run(Breaks(), example_inputs=(torch.randn(2, 128),), modes="noquant", compile=True, fullgraph=True).rows[0]
    assert strict.status == "error" and strict.reason.startswith("graph break (compiled with fullgraph=True")
    assert "print" in strict.reason and "test_compiling.py" in strict.reason  # what broke, and where
