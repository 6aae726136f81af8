"""The models built from code, seeded, with no extra to install: mlp, the llama sizes (decode and prefill), vit."""

from __future__ import annotations

import dataclasses

import torch

from ..errors import UserError
from . import llama, mlp, vit
from .spec import Form, ModelSpec, register, register_form


def _seeded(fn):
    """Build under a fixed seed without disturbing the caller's RNG."""
    def wrapper(device, dtype, batch_size, seq_len):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return fn(device, dtype, batch_size, seq_len)
    return wrapper


def _check_seq(seq_len: int) -> int:
    if seq_len < 1:
        raise UserError(f"seq_len must be a positive integer, got {seq_len}.")
    return seq_len


def _llama(args: llama.LlamaArgs, step: str):
    make = llama.BUILDERS[step]
    return lambda device, dtype, batch, seq: make(args, device, dtype, batch, _check_seq(seq))


register(ModelSpec(
    "mlp", "mlp", "Two LLaMA-shaped SwiGLU blocks (1024→2816→1024): memory-bound at small batch.",
    _seeded(mlp.build), params=mlp.PARAMS,
))
_LLAMA_SEQ = {"llama-tiny": 16, "llama-small": 128, "llama-1b": 256, "llama-8b-shapes": 256}
_LLAMA_NOTE = {"llama-tiny": "for tests", "llama-small": "for CPU demos", "llama-1b": "Llama-3.2-1B shapes, for GPUs",
               "llama-8b-shapes": "Llama-3.1-8B's layer shapes, 4 of its 32 layers, so its lm_head weighs 38 % "
               "of the Linears (7 % in the real model); llama-8b-shapes-<N>l for N layers; for GPUs"}


def _llama_specs(name: str, a: llama.LlamaArgs, seq: int, note: str) -> tuple[ModelSpec, ModelSpec]:
    shape = f"{a.layers} layers, dim {a.dim}, GQA {a.heads}/{a.kv_heads}, vocab {a.vocab} ({note})"
    decode = ModelSpec(
        name, "decoder", f"LLaMA-style decoder, {shape}; times one decode step against a KV cache of seq_len "
        f"positions (default {seq}), reports tokens/s.",
        _llama(a, "decode"), params=a.params(), seq_len=seq, step="decode", fullgraph=True)
    prefill = ModelSpec(
        f"{name}:prefill", "decoder", f"{name}, timed as the prefill of a seq_len-token prompt "
        f"(default {seq}); tokens/s counts prompt tokens.",
        _llama(a, "prefill"), params=a.params(), seq_len=seq, step="prefill", fullgraph=True)
    return decode, prefill


for _name, _a in llama.SIZES.items():
    for _spec in _llama_specs(_name, _a, _LLAMA_SEQ[_name], _LLAMA_NOTE[_name]):
        register(_spec)


def _llama_8b_layers(arg: str) -> ModelSpec:
    """llama-8b-shapes-<N>l[:prefill]: the 8B-shaped proxy with N layers."""
    count, _, step = arg.partition(":")
    if not count.endswith("l") or not count[:-1].isdigit() or int(count[:-1]) < 1 or step not in ("", "prefill"):
        raise UserError(f"llama-8b-shapes-{arg}: give a layer count like llama-8b-shapes-8l or llama-8b-shapes-8l:prefill.")
    layers = int(count[:-1])
    a = dataclasses.replace(llama.SIZES["llama-8b-shapes"], layers=layers)
    name = f"llama-8b-shapes-{layers}l"
    decode, prefill = _llama_specs(name, a, 256, f"Llama-3.1-8B's layer shapes, {layers} of its 32 layers")
    return prefill if step else decode


for _name, _v in vit.SIZES.items():
    register(ModelSpec(
        _name, "vision", f"ViT-style image encoder: {_v.depth} blocks, dim {_v.dim}, {_v.heads} heads, "
        f"{_v.image}px images in {_v.patch}px patches, {_v.classes} classes.",
        _seeded(lambda device, dtype, batch, seq, _v=_v: vit.build(_v, device, dtype, batch)), params=_v.params(),
    ))

register_form(Form("llama-8b-shapes-", "<N>l[:prefill]", "decoder",
                   "Llama-3.1-8B's layer shapes with N layers (llama-8b-shapes has 4)", _llama_8b_layers))
