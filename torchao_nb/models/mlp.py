"""The default toy model: LLaMA-shaped SwiGLU feed-forward blocks."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


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


def init_small(model: nn.Module) -> nn.Module:
    # Default init gives activations that grow layer by layer; scale like a trained model's
    # weights so that quantization error is representative.
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=1 / math.sqrt(m.in_features))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def build(device, dtype, batch_size, seq_len):
    model = init_small(MLP()).to(device=device, dtype=dtype).eval()
    return model, (torch.randn(batch_size, 1024, device=device, dtype=dtype),)


PARAMS = 2 * 3 * 1024 * 2816
