"""The models: name → ModelSpec (a seeded builder of module and example inputs), names resolved, users' inputs checked.

The types live in `spec` (a leaf); each loader below registers its models there when imported here, in the
order listings show them: the built-in ones, minilm, then the hf forms (hf imports gguf: smollm2-135m).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import UserError
from . import builtin, minilm, hf, gguf  # noqa: F401  (each registers its models; transformers imported when used)
from .spec import (FAMILIES, FORMS, MODELS, STEPS, Form, Inputs, ModelSpec, Probe, Quality, Score, Task,  # noqa: F401
                   call, register, register_form)

DEFAULT_MODEL = "mlp"


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
