"""The registry of models: name → builder returning (module, example inputs), all built from code, seeded."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from .env import UserError

Inputs = tuple | dict  # positional args, or keyword args (as the seed accepts)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # "mlp", "decoder", "encoder", "vision", "user"
    description: str
    build: Callable[[str, torch.dtype, int, int], tuple[nn.Module, Inputs]]  # (device, dtype, batch, seq)
    params: int  # parameter count, for listings
    seq_len: int = 1  # default sequence length the builder uses
    step: str = "forward"  # what one timed call is


# ---- mlp ---------------------------------------------------------------------------------

class SwiGLU(nn.Module):
    """LLaMA's feed-forward block: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class MLP(nn.Module):
    def __init__(self, dim: int = 1024, hidden: int = 2816, blocks: int = 2):
        super().__init__()
        self.blocks = nn.ModuleList(SwiGLU(dim, hidden) for _ in range(blocks))

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return x


# ---- LLaMA-style decoder ------------------------------------------------------------------

@dataclass(frozen=True)
class LlamaArgs:
    dim: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    max_seq: int = 256
    rope_base: float = 10000.0


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(head_dim: int, max_seq: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_seq, dtype=torch.float32), inv)  # (seq, head_dim/2)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    # x: (batch, heads, seq, head_dim); rotate pairs (even, odd) by the position's angle
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.type_as(x)


class Attention(nn.Module):
    def __init__(self, a: LlamaArgs):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = a.heads, a.kv_heads, a.dim // a.heads
        self.wq = nn.Linear(a.dim, a.heads * self.head_dim, bias=False)
        self.wk = nn.Linear(a.dim, a.kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(a.dim, a.kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(a.heads * self.head_dim, a.dim, bias=False)

    def forward(self, x, cos, sin):
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv_heads != self.heads)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class Block(nn.Module):
    def __init__(self, a: LlamaArgs):
        super().__init__()
        self.attn_norm, self.ffn_norm = RMSNorm(a.dim), RMSNorm(a.dim)
        self.attn = Attention(a)
        self.ffn = SwiGLU(a.dim, a.hidden)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.ffn(self.ffn_norm(x))


class Llama(nn.Module):
    """A compile-friendly LLaMA-style decoder: RMSNorm, rotary embeddings, SwiGLU, grouped-query attention."""

    def __init__(self, a: LlamaArgs):
        super().__init__()
        self.args = a
        self.embed = nn.Embedding(a.vocab, a.dim)
        self.layers = nn.ModuleList(Block(a) for _ in range(a.layers))
        self.norm = RMSNorm(a.dim)
        self.lm_head = nn.Linear(a.dim, a.vocab, bias=False)
        cos, sin = rope_tables(a.dim // a.heads, a.max_seq, a.rope_base)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, tokens):
        s = tokens.shape[1]
        cos, sin = self.cos[:s], self.sin[:s]
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))


LLAMA_SIZES = {
    "llama-tiny": LlamaArgs(dim=256, hidden=768, layers=2, heads=4, kv_heads=2, vocab=512),
    "llama-small": LlamaArgs(dim=1024, hidden=2816, layers=4, heads=16, kv_heads=4, vocab=8192),
}


# ---- registry ------------------------------------------------------------------------------

def _seeded(fn):
    """Build under a fixed seed without disturbing the caller's RNG."""
    def wrapper(device, dtype, batch_size, seq_len):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return fn(device, dtype, batch_size, seq_len)
    return wrapper


def _init_small(model: nn.Module) -> nn.Module:
    # Default init gives activations that grow layer by layer; scale like a trained LLM's
    # weights so that quantization error is representative.
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=1 / math.sqrt(m.in_features))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def _build_mlp(device, dtype, batch_size, seq_len):
    model = _init_small(MLP()).to(device=device, dtype=dtype).eval()
    return model, (torch.randn(batch_size, 1024, device=device, dtype=dtype),)


def _llama_builder(args: LlamaArgs):
    def build(device, dtype, batch_size, seq_len):
        model = _init_small(Llama(args)).to(device=device, dtype=dtype).eval()
        tokens = torch.randint(0, args.vocab, (batch_size, seq_len), device=device)
        return model, (tokens,)
    return build


def _llama_params(a: LlamaArgs) -> int:
    hd = a.dim // a.heads
    attn = a.dim * (a.heads * hd) * 2 + a.dim * (a.kv_heads * hd) * 2
    return 2 * a.vocab * a.dim + a.layers * (attn + 3 * a.dim * a.hidden + 2 * a.dim) + a.dim


MODELS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name!r} is already registered")
    MODELS[spec.name] = spec
    return spec


register(ModelSpec(
    "mlp", "mlp", "Two LLaMA-shaped SwiGLU blocks (1024→2816→1024): memory-bound at small batch.",
    _seeded(_build_mlp), params=2 * 3 * 1024 * 2816,
))
for _name, _args in LLAMA_SIZES.items():
    register(ModelSpec(
        _name, "decoder", f"LLaMA-style decoder, {_args.layers} layers, dim {_args.dim}, GQA {_args.heads}/{_args.kv_heads}; forward over a prompt.",
        _seeded(_llama_builder(_args)), params=_llama_params(_args), seq_len=16,
    ))

DEFAULT_MODEL = "mlp"


def get(name: str) -> ModelSpec:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; valid models: {', '.join(MODELS)} (or pass an nn.Module with example_inputs=).")
    return MODELS[name]


# ---- users' own modules ------------------------------------------------------------------

def tensors_in(inputs: Inputs) -> list[torch.Tensor]:
    values = inputs.values() if isinstance(inputs, dict) else inputs
    return [v for v in values if isinstance(v, torch.Tensor)]


def check_inputs(inputs: Any) -> Inputs:
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    if isinstance(inputs, list):
        inputs = tuple(inputs)
    if not isinstance(inputs, (tuple, dict)):
        raise UserError(f"example_inputs must be a tuple of positional arguments or a dict of keyword arguments, not {type(inputs).__name__}.")
    if not tensors_in(inputs):
        raise UserError("example_inputs holds no tensor; give the inputs one forward pass of your model takes.")
    return inputs


def convert_inputs(inputs: Inputs, device: str, dtype: torch.dtype, batch_size: int | None = None) -> Inputs:
    """Move tensors to the device; floating ones take the sweep dtype; optionally re-batch along dim 0."""
    def one(v):
        if not isinstance(v, torch.Tensor):
            return v
        v = v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
        if batch_size is not None and v.dim() > 0 and v.shape[0] != batch_size:
            reps = math.ceil(batch_size / v.shape[0])
            v = v.repeat(reps, *([1] * (v.dim() - 1)))[:batch_size]
        return v

    if isinstance(inputs, dict):
        return {k: one(v) for k, v in inputs.items()}
    return tuple(one(v) for v in inputs)


def batch_of(inputs: Inputs) -> int:
    first = tensors_in(inputs)[0]
    return int(first.shape[0]) if first.dim() else 1


def call(model: nn.Module, inputs: Inputs):
    return model(**inputs) if isinstance(inputs, dict) else model(*inputs)
