"""A ViT-style image encoder (ViT-Ti/16 shapes) in plain torch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .mlp import init_small


@dataclass(frozen=True)
class ViTArgs:
    image: int = 224
    patch: int = 16
    dim: int = 192
    depth: int = 12
    heads: int = 3
    mlp: int = 768
    classes: int = 1000

    @property
    def tokens(self) -> int:
        return (self.image // self.patch) ** 2 + 1  # patches + class token

    def params(self) -> int:
        block = 4 * self.dim * self.dim + 4 * self.dim + 2 * self.dim * self.mlp + self.mlp + self.dim + 4 * self.dim
        embed = 3 * self.patch ** 2 * self.dim + self.dim + self.dim + self.tokens * self.dim
        return embed + self.depth * block + 2 * self.dim + self.dim * self.classes + self.classes


SIZES = {"vit-tiny": ViTArgs()}


class EncoderBlock(nn.Module):
    def __init__(self, a: ViTArgs):
        super().__init__()
        self.heads = a.heads
        self.norm1, self.norm2 = nn.LayerNorm(a.dim, eps=1e-6), nn.LayerNorm(a.dim, eps=1e-6)
        self.qkv = nn.Linear(a.dim, 3 * a.dim)
        self.proj = nn.Linear(a.dim, a.dim)
        self.fc1, self.fc2 = nn.Linear(a.dim, a.mlp), nn.Linear(a.mlp, a.dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v)  # (b, heads, n, head_dim), bidirectional
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """Patch embedding (a strided conv), class token, learned positions, pre-norm encoder blocks, linear head."""

    def __init__(self, a: ViTArgs):
        super().__init__()
        self.patch = nn.Conv2d(3, a.dim, a.patch, stride=a.patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, a.dim))
        self.pos = nn.Parameter(torch.randn(1, a.tokens, a.dim) * 0.02)
        self.blocks = nn.ModuleList(EncoderBlock(a) for _ in range(a.depth))
        self.norm = nn.LayerNorm(a.dim, eps=1e-6)
        self.head = nn.Linear(a.dim, a.classes)

    def forward(self, pixels):
        x = self.patch(pixels).flatten(2).transpose(1, 2)  # (b, patches, dim)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))  # class logits (b, classes)


def build(a: ViTArgs, device, dtype, batch_size: int):
    model = init_small(ViT(a)).to(device=device, dtype=dtype).eval()
    return model, (torch.randn(batch_size, 3, a.image, a.image, device=device, dtype=dtype),)
