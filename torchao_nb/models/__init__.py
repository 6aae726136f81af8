"""The registry of models: name → builder returning (module, example inputs), all built from code, seeded."""

from __future__ import annotations

import dataclasses
import math
import time
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


# ---- registry ------------------------------------------------------------------------------

MODELS: Registry = Registry("model")
FORMS: Registry = Registry("form")
register = MODELS.add


def register_form(form: Form) -> Form:
    if not form.prefix.endswith((":", "-")):
        raise ValueError(f"form {form.prefix!r} does not end with ':' or '-'")
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

DEFAULT_MODEL = "mlp"

from . import hf, gguf  # noqa: E402,F401  (register minilm, smollm2-135m and the hf forms; transformers imported when used)


def get(name: str) -> ModelSpec:
    if name in MODELS:
        return MODELS[name]
    for prefix, form in FORMS.items():
        if name.startswith(prefix):
            arg = name[len(prefix):].strip()
            if not arg:
                raise UserError(f"{prefix} needs an argument: {prefix}{form.argument}.")
            return form.resolve(arg)
    if name.lower().endswith(".gguf") or "/" in name:
        raise UserError(f"unknown model {name!r}: a model file or folder is given as hf:{name}.")
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
    names = inputs if isinstance(inputs, dict) else range(len(inputs))
    for name in names:
        v = inputs[name]
        if isinstance(v, torch.Tensor) and v.numel() == 0:  # a model computes nothing: 0 ms, SQNR inf, all meaningless
            where = f"example_inputs[{name!r}]" if isinstance(inputs, dict) else f"example_inputs[{name}]"
            raise UserError(f"{where} is empty (shape {tuple(v.shape)}): nothing would be computed or measured; "
                            "give inputs with at least one element in every dimension.")
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
