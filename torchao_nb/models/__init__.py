"""The registry of models: name → builder returning (module, example inputs), all built from code, seeded."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UserError
from ..registry import Registry
from . import llama, mlp, vit

Inputs = tuple | dict  # positional args, or keyword args (as the seed accepts)

FAMILIES = ("mlp", "decoder", "encoder", "vision", "user")

# What one timed call is, and how many tokens it produces (None: not a token model).
STEPS: dict[str, Callable[[int, int], int | None]] = {
    "forward": lambda batch, seq: None,
    "decode": lambda batch, seq: batch,  # one new token per sequence
    "prefill": lambda batch, seq: batch * seq,  # every prompt token
}


@dataclass(frozen=True)
class Task:
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

    @staticmethod
    def score(reference: torch.Tensor, output: torch.Tensor) -> dict[str, float]:
        cos = F.cosine_similarity(reference.float(), output.float(), dim=-1)
        return {"mean": float(cos.mean()), "min": float(cos.min())}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # one of FAMILIES
    description: str
    build: Callable[[str, torch.dtype, int, int], tuple[nn.Module, Inputs]]  # (device, dtype, batch, seq)
    params: int | None  # parameter count, for listings; None: known once built
    seq_len: int = 1  # default sequence length the builder uses
    step: str = "forward"  # what one timed call is: a key of STEPS
    task: Task | None = None

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


# ---- registry ------------------------------------------------------------------------------

MODELS: Registry = Registry("model")
FORMS: Registry = Registry("form")
register = MODELS.add


def register_form(form: Form) -> Form:
    if not form.prefix.endswith(":"):
        raise ValueError(f"form {form.prefix!r} does not end with ':'")
    return FORMS.add(form, form.prefix)


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
_LLAMA_SEQ = {"llama-tiny": 16, "llama-small": 128, "llama-1b": 256}
_LLAMA_NOTE = {"llama-tiny": "for tests", "llama-small": "for CPU demos", "llama-1b": "Llama-3.2-1B shapes, for GPUs"}
for _name, _a in llama.SIZES.items():
    _shape = f"{_a.layers} layers, dim {_a.dim}, GQA {_a.heads}/{_a.kv_heads}, vocab {_a.vocab} ({_LLAMA_NOTE[_name]})"
    register(ModelSpec(
        _name, "decoder", f"LLaMA-style decoder, {_shape}; times one decode step against a KV cache of seq_len "
        f"positions (default {_LLAMA_SEQ[_name]}), reports tokens/s.",
        _llama(_a, "decode"), params=_a.params(), seq_len=_LLAMA_SEQ[_name], step="decode",
    ))
    register(ModelSpec(
        f"{_name}:prefill", "decoder", f"{_name}, timed as the prefill of a seq_len-token prompt "
        f"(default {_LLAMA_SEQ[_name]}); tokens/s counts prompt tokens.",
        _llama(_a, "prefill"), params=_a.params(), seq_len=_LLAMA_SEQ[_name], step="prefill",
    ))
for _name, _v in vit.SIZES.items():
    register(ModelSpec(
        _name, "vision", f"ViT-style image encoder: {_v.depth} blocks, dim {_v.dim}, {_v.heads} heads, "
        f"{_v.image}px images in {_v.patch}px patches, {_v.classes} classes.",
        _seeded(lambda device, dtype, batch, seq, _v=_v: vit.build(_v, device, dtype, batch)), params=_v.params(),
    ))

DEFAULT_MODEL = "mlp"

from . import hf  # noqa: E402,F401  (registers minilm and the hf forms; imports transformers only when used)


def get(name: str) -> ModelSpec:
    if name in MODELS:
        return MODELS[name]
    for prefix, form in FORMS.items():
        if name.startswith(prefix):
            arg = name[len(prefix):].strip()
            if not arg:
                raise UserError(f"{prefix} needs an argument: {prefix}{form.argument}.")
            return form.resolve(arg)
    forms = ", ".join(f"{p}..." for p in FORMS)
    raise UserError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}, {forms} "
                    "(or pass an nn.Module with example_inputs=).")


def listing() -> list[dict[str, Any]]:
    """Every registered model and name form, for `list-models` and pickers."""
    rows = [dict(name=s.name, family=s.family, params=s.params, step=s.step, description=s.description,
                 default=s.name == DEFAULT_MODEL) for s in MODELS.values()]
    rows += [dict(name=f.prefix + f.argument, family=f.family, params=None, step="forward",
                  description=f.description, default=False) for f in FORMS.values()]
    return rows


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
