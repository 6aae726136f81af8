"""A registry model whose forward reads address 0 (a real SIGSEGV, as a broken kernel gives) once its weight is
quantized: the unquantized reference runs, every quantized cell crashes the process running it."""

import ctypes

import torch
from torch import nn

NAME = "crashes-quantized"


class CrashesQuantized(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(256, 256)

    def forward(self, x):
        if type(self.fc.weight) is not nn.Parameter:  # a torchao tensor subclass: this copy was quantized
            ctypes.string_at(0)
        return self.fc(x)


def _build(device, dtype, batch, seq):
    torch.manual_seed(0)
    return CrashesQuantized().to(device, dtype), (torch.randn(batch, 256, device=device, dtype=dtype),)


def register() -> None:
    from torchao_nb import models

    if NAME not in models.MODELS:
        models.register(models.ModelSpec(NAME, "user", "crashes once quantized (tests)", _build, params=None))
