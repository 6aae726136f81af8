"""How a cell is compiled: one frozen settings object, the compiler state around a cell, thread count."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from . import baseline

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class CompileSettings:
    """Everything that decides how a model is compiled; shared by the sweep, autoquant's search and explain."""

    enabled: bool = True
    mode: str = "default"  # torch.compile mode; "reduce-overhead" uses CUDA graphs
    baseline: bool = True  # the seed's compiler settings (baseline.BASELINE_SETTINGS)
    torchao_tuning: bool = False  # torchao's recommended inductor settings (baseline.TORCHAO_TUNING)

    @property
    def label(self) -> str:
        """The row's `compile_mode`: empty when compile is off."""
        return self.mode if self.enabled else ""


EAGER = CompileSettings(enabled=False)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def compiled_cell(settings: CompileSettings) -> Iterator[None]:
    """Fresh dynamo state and the chosen compiler settings for one compiled cell, all restored after."""
    torch._dynamo.reset()
    try:
        with baseline.preserved_compiler_configs(), baseline.applied(settings.baseline), \
                baseline.applied(settings.torchao_tuning, baseline.TORCHAO_TUNING), \
                torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
            yield
    finally:
        torch._dynamo.reset()  # also after a failed cell: the next one must not inherit its graphs


def maybe_compiled(settings: CompileSettings) -> contextlib.AbstractContextManager:
    return compiled_cell(settings) if settings.enabled else contextlib.nullcontext()


def compiled(model: nn.Module, settings: CompileSettings):
    if not settings.enabled:
        return model
    return torch.compile(model, mode=None if settings.mode == "default" else settings.mode)


def graphs_compiled() -> int:
    """Graphs dynamo has captured in this process so far (a counter: take differences)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]
