"""Registry models for tests/test_slurm.py's jobs, registered in every Python those jobs start (the sweep's worker
process included) by tests/slurm_site/sitecustomize.py, and never in the test session itself."""

import ctypes
import os
import time

import torch
from torch import nn

CRASHES = "crashes-quantized"  # reads address 0 (a real SIGSEGV, as a broken kernel gives) once quantized
HANGS = "hangs-first-run"  # once quantized, hangs in the job's first run; runs once SLURM has requeued the job
HELD = "held"  # once quantized, waits while the file $TORCHAO_NB_TEST_HOLD-bs<batch> exists: a cell the test ends


def _quantized(layer: nn.Linear) -> bool:
    return type(layer.weight) is not nn.Parameter  # a torchao tensor subclass


class CrashesQuantized(nn.Linear):
    def forward(self, x):
        if _quantized(self):
            ctypes.string_at(0)
        return super().forward(x)


class HangsFirstRun(nn.Linear):
    def forward(self, x):
        if _quantized(self) and os.environ.get("SLURM_RESTART_COUNT", "0") == "0":
            time.sleep(3600)  # until the time limit ends the job
        return super().forward(x)


class Held(nn.Linear):
    def forward(self, x):
        hold = f"{os.environ.get('TORCHAO_NB_TEST_HOLD', '')}-bs{x.shape[0]}"
        while _quantized(self) and os.path.exists(hold):
            time.sleep(0.2)
        return super().forward(x)


def _builder(cls):
    def build(device, dtype, batch, seq):
        torch.manual_seed(0)
        return cls(256, 256).to(device, dtype), (torch.randn(batch, 256, device=device, dtype=dtype),)
    return build


def register() -> None:
    from torchao_nb import models

    for name, cls, what in ((CRASHES, CrashesQuantized, "crashes once quantized"),
                            (HANGS, HangsFirstRun, "hangs in a job's first run once quantized"),
                            (HELD, Held, "waits while the test holds it, once quantized")):
        if name not in models.MODELS:
            models.register(models.ModelSpec(name, "user", f"{what} (tests)", _builder(cls), params=None))
