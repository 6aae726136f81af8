"""A LLaMA-style decoder with a static KV cache, timed as one decode step or as a prefill."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .mlp import SwiGLU


@dataclass(frozen=True)
class LlamaArgs:
    dim: int
    hidden: int  # SwiGLU inner width
    layers: int
    heads: int
    kv_heads: int  # grouped-query attention: heads share kv_heads key/value heads
    vocab: int
    rope_base: float = 500000.0  # Llama 3's
    norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    def params(self) -> int:
        hd = self.head_dim
        attn = self.dim * self.heads * hd * 2 + self.dim * self.kv_heads * hd * 2
        return 2 * self.vocab * self.dim + self.layers * (attn + 3 * self.dim * self.hidden + 2 * self.dim) + self.dim


SIZES = {
    "llama-tiny": LlamaArgs(dim=256, hidden=768, layers=2, heads=4, kv_heads=2, vocab=512),
    "llama-small": LlamaArgs(dim=1024, hidden=2816, layers=4, heads=16, kv_heads=4, vocab=8192),
    # Llama-3.2-1B's shapes (its lm_head is tied to the embedding; here it is a separate Linear)
    "llama-1b": LlamaArgs(dim=2048, hidden=8192, layers=16, heads=32, kv_heads=8, vocab=128256),
    # Llama-3.1-8B's per-layer shapes with 4 of its 32 layers: each matmul is the 8B's, so per-layer
    # ratios compare with torchao's published 8B numbers at a fraction of the compile time. The
    # lm_head (4096 x 128256) is then 38 % of the Linear weights (7 % in the real model).
    "llama-8b-shapes": LlamaArgs(dim=4096, hidden=14336, layers=4, heads=32, kv_heads=8, vocab=128256),
}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(head_dim: int, length: int, base: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float32, device=device), inv)  # (length, head_dim/2)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    # x: (batch, heads, seq, head_dim); cos/sin: (seq, head_dim/2); rotate (even, odd) pairs
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2).type_as(x)


class Attention(nn.Module):
    def __init__(self, a: LlamaArgs):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = a.heads, a.kv_heads, a.head_dim
        self.wq = nn.Linear(a.dim, a.heads * a.head_dim, bias=False)
        self.wk = nn.Linear(a.dim, a.kv_heads * a.head_dim, bias=False)
        self.wv = nn.Linear(a.dim, a.kv_heads * a.head_dim, bias=False)
        self.wo = nn.Linear(a.heads * a.head_dim, a.dim, bias=False)

    def setup_cache(self, batch: int, length: int, device, dtype) -> None:
        shape = (batch, self.kv_heads, length, self.head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def forward(self, x, pos, cos, sin, mask):
        b, s, _ = x.shape
        q = self.wq(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # The cache is written in place at `pos`: writing the same token again gives the same
        # values, so repeated timed calls do identical work.
        self.k_cache.index_copy_(2, pos, k)
        self.v_cache.index_copy_(2, pos, v)
        if mask is None:  # prefill from position 0: causal attention over the new tokens alone
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv_heads != self.heads)
        else:
            # One new token per sequence: fold each kv group's query heads into the "sequence"
            # axis, so every backend (masks included) serves GQA without repeating the cache.
            # (b, heads, 1, hd) -> (b, kv_heads, group, hd); mask (1, cache_len) broadcasts.
            qg = q.reshape(b, self.kv_heads, self.heads // self.kv_heads * s, self.head_dim)
            out = F.scaled_dot_product_attention(qg, self.k_cache, self.v_cache, attn_mask=mask)
            out = out.reshape(b, self.heads, s, self.head_dim)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class Block(nn.Module):
    def __init__(self, a: LlamaArgs):
        super().__init__()
        self.attn_norm, self.ffn_norm = RMSNorm(a.dim, a.norm_eps), RMSNorm(a.dim, a.norm_eps)
        self.attn = Attention(a)
        self.ffn = SwiGLU(a.dim, a.hidden)

    def forward(self, x, pos, cos, sin, mask):
        x = x + self.attn(self.attn_norm(x), pos, cos, sin, mask)
        return x + self.ffn(self.ffn_norm(x))


class Llama(nn.Module):
    """LLaMA-style decoder: RMSNorm, rotary embeddings, SwiGLU, grouped-query attention, static KV cache.

    `forward(tokens, pos)` takes tokens (batch, s) at cache positions `pos` (s,) and returns the
    logits of the last position (batch, 1, vocab), as generation uses them. A call with s > 1 is a
    prefill from position 0; a call with s == 1 is a decode step that attends to every cached
    position up to `pos`. Both branches depend on shapes only, so torch.compile captures one graph.
    """

    def __init__(self, a: LlamaArgs):
        super().__init__()
        self.args = a
        self.embed = nn.Embedding(a.vocab, a.dim)
        self.layers = nn.ModuleList(Block(a) for _ in range(a.layers))
        self.norm = RMSNorm(a.dim, a.norm_eps)
        self.lm_head = nn.Linear(a.dim, a.vocab, bias=False)

    def setup_cache(self, batch: int, length: int) -> None:
        """Zeroed K/V caches (batch, kv_heads, length, head_dim) per layer, and rotary tables for `length` positions."""
        a, p = self.args, self.lm_head.weight
        for layer in self.layers:
            layer.attn.setup_cache(batch, length, p.device, p.dtype)
        cos, sin = rope_tables(a.head_dim, length, a.rope_base, p.device)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.register_buffer("cache_pos", torch.arange(length, device=p.device), persistent=False)

    def forward(self, tokens, pos):
        cos, sin = self.cos[pos], self.sin[pos]
        mask = None if tokens.shape[1] > 1 else (self.cache_pos <= pos[:, None])  # (1, length)
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x, pos, cos, sin, mask)
        return self.lm_head(self.norm(x[:, -1:]))


@torch.no_grad()
def create(a: LlamaArgs, device, dtype: torch.dtype, seed: int = 0) -> Llama:
    """Weights made directly on `device` in `dtype` (no full-size fp32 copy anywhere), seeded.

    Linear weights are N(0, 1/in_features), like a trained model's scale, so activations stay
    bounded through the layers and quantization error is representative.
    """
    with torch.device("meta"):
        model = Llama(a)
    model = model.to(dtype=dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        elif p.dim() == 2 and name != "embed.weight":
            p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]), generator=gen)
        else:
            p.normal_(0.0, 1.0, generator=gen)
    return model.eval()


def _tokens(a: LlamaArgs, shape, device, gen) -> torch.Tensor:
    return torch.randint(0, a.vocab, shape, device=device, generator=gen)


def build_decode(a: LlamaArgs, device, dtype, batch: int, seq_len: int):
    """One decode step at the last of `seq_len` cache positions; the positions before it are pre-filled."""
    model = create(a, device, dtype)
    model.setup_cache(batch, seq_len)
    gen = torch.Generator(device=device).manual_seed(1)
    prompt = _tokens(a, (batch, seq_len - 1), device, gen)
    if seq_len > 1:
        with torch.no_grad():
            model(prompt, torch.arange(seq_len - 1, device=device))
    token = _tokens(a, (batch, 1), device, gen)
    return model, (token, torch.tensor([seq_len - 1], device=device))


def build_prefill(a: LlamaArgs, device, dtype, batch: int, seq_len: int):
    """A prompt of `seq_len` tokens from position 0, written into the cache."""
    model = create(a, device, dtype)
    model.setup_cache(batch, seq_len)
    gen = torch.Generator(device=device).manual_seed(1)
    return model, (_tokens(a, (batch, seq_len), device, gen), torch.arange(seq_len, device=device))


BUILDERS = {"decode": build_decode, "prefill": build_prefill}  # what one timed call is → its builder
