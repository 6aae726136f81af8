"""What a model is to the rest of the package: ModelSpec, its quality hooks, name forms, and the two registries.

A leaf of `models/`: every loader (the built-in models, hf, gguf, causal_lm) imports these types and registers
its entries here, and nothing here imports a loader, so the package's `__init__` can import them all at the top.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..registry import Registry

Inputs = tuple | dict  # positional args, or keyword args (as the seed accepts)

FAMILIES = ("mlp", "decoder", "encoder", "vision", "user")

# What one timed call is, and how many tokens it produces (None: not a token model).
STEPS: dict[str, Callable[[int, int], int | None]] = {
    "forward": lambda batch, seq: None,
    "decode": lambda batch, seq: batch,  # one new token per sequence
    "prefill": lambda batch, seq: batch * seq,  # every prompt token
}


def call(model: nn.Module, inputs: Inputs):
    return model(**inputs) if isinstance(inputs, dict) else model(*inputs)


@dataclass(frozen=True)
class Probe:
    """What a model's quality hook is given to score one quantized copy, besides the copy itself."""

    step: Callable  # the callable the cell timed (compiled when compile is on): reusing it costs no second compile
    output_cosine: float | None = None  # the raw output's cosine similarity with the unquantized one
    unquantized: nn.Module | None = None  # the group's unquantized model (shared: leave it as it was)
    unquantized_step: Callable | None = None  # its callable as the cell times it (the compiled baseline)
    clock: Callable[[], float] = time.perf_counter
    sync: Callable[[], None] = lambda: None
    on_phase: Callable[[str], None] = lambda phase: None


@dataclass(frozen=True)
class Score:
    fields: dict[str, Any]  # Row fields it fills (they replace the cell's own, e.g. `cosine`)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # added to the row's extra


class Quality:
    """A model-level quality measure: data from the unquantized model once per group of cells (`reference`),
    then a score of each quantized copy (`score`). The cell calls both without knowing what they measure."""

    def reference(self, module: nn.Module, device: str, dtype: torch.dtype) -> Any:
        raise NotImplementedError

    def score(self, reference: Any, model: nn.Module, probe: Probe) -> Score:
        raise NotImplementedError


@dataclass(frozen=True)
class Task(Quality):
    """A task-level accuracy that replaces the raw-output `cosine` of a row (e.g. sentence embeddings).

    `inputs(device, dtype)` gives the evaluation inputs; the module's output on them is one
    vector per item (n, features); the score is the mean over items of the cosine similarity
    between the unquantized and the quantized model's vectors.
    """

    metric: str  # what the row's `cosine` then means, in words
    inputs: Callable[[str, torch.dtype], Inputs]

    def run(self, module: nn.Module, inputs: Inputs) -> torch.Tensor:
        with torch.no_grad():
            return call(module, inputs)

    def reference(self, module: nn.Module, device: str, dtype: torch.dtype) -> tuple[Inputs, torch.Tensor]:
        inputs = self.inputs(device, dtype)
        return inputs, self.run(module, inputs)

    def score(self, reference: tuple[Inputs, torch.Tensor], model: nn.Module, probe: Probe) -> Score:
        inputs, expected = reference
        got = self.run(model, inputs)  # eager: the task's shapes differ from the timed call's
        cos = F.cosine_similarity(expected.float(), got.float(), dim=-1)
        return Score({"cosine": float(cos.mean())},
                     {"cosine": self.metric, "task_min_cosine": float(cos.min()), "output_cosine": probe.output_cosine})


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # one of FAMILIES
    description: str
    build: Callable[[str, torch.dtype, int, int], tuple[nn.Module, Inputs]]  # (device, dtype, batch, seq)
    params: int | None  # parameter count, for listings; None: known once built
    seq_len: int = 1  # default sequence length the builder uses
    step: str = "forward"  # what one timed call is: a key of STEPS
    quality: Quality | None = None  # a model-level quality measure (a task's score, an LM's perplexity...)
    fullgraph: bool = False  # compiles as one graph: a graph break is an error row (our bug), not a slow row

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, not {self.family!r}")
        if self.step not in STEPS:
            raise ValueError(f"step must be one of {tuple(STEPS)}, not {self.step!r}")

    def tokens_per_call(self, batch: int, seq_len: int) -> int | None:
        return STEPS[self.step](batch, seq_len)


@dataclass(frozen=True)
class Form:
    """A family of names resolved on demand: `prefix` + argument → ModelSpec (e.g. hf:<hub id>)."""

    prefix: str
    argument: str  # what follows the prefix, for listings: "<architecture>"
    family: str
    description: str
    resolve: Callable[[str], ModelSpec]


MODELS: Registry = Registry("model")
FORMS: Registry = Registry("form")
register = MODELS.add


def register_form(form: Form) -> Form:
    if not form.prefix.endswith((":", "-")):
        raise ValueError(f"form {form.prefix!r} does not end with ':' or '-'")
    return FORMS.add(form, form.prefix)
