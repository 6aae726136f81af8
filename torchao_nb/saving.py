"""Save and reload: a quantized model's state_dict through torch.save and torch.load into a fresh model, outputs compared."""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from . import models
from .errors import error_text

FILE = "state_dict.pt"


@dataclass(frozen=True)
class Reloaded:
    equal: bool | None  # the reloaded model's output is bit-identical to the quantized one's; None: not reloaded
    disk_bytes: int | None  # the saved file; None: it could not be saved
    note: str  # how it was loaded back, or why it could not be
    save_s: float | None = None
    load_s: float | None = None


def _same(a: Any, b: Any) -> bool:
    """Bit-identical outputs: the same structure, every tensor equal (dtype and shape included)."""
    (xs, spec_a), (ys, spec_b) = tree_flatten(a), tree_flatten(b)
    if spec_a != spec_b:
        return False
    return all(torch.equal(x, y) and x.dtype == y.dtype if isinstance(x, torch.Tensor) else x == y
               for x, y in zip(xs, ys))


def _load(path: Path) -> tuple[dict, str]:
    """torch.load without unpickling arbitrary objects when it can: torchao allow-lists its tensor classes."""
    with warnings.catch_warnings():
        # torch.ao's packed int8 weights (torch-ao-dynamic) unpickle through TypedStorage, which warns each time
        warnings.filterwarnings("ignore", message=r"TypedStorage is deprecated")
        try:
            return torch.load(path, weights_only=True), "weights_only=True"
        except Exception as e:  # a class nobody allow-listed: the file is ours, so trusting it is safe here
            return torch.load(path, weights_only=False), f"weights_only=False: {error_text(e, 120)}"


def save_and_reload(model: nn.Module, fresh: Callable[[], nn.Module], inputs: models.Inputs,
                    folder: str | os.PathLike | None = None) -> Reloaded:
    """torch.save `model`'s state_dict, load it into `fresh()` (an unquantized model of the same structure) with
    load_state_dict(assign=True), so torchao's tensors replace its plain weights, and compare both eager outputs
    on `inputs`. Never raises: a model that can't be saved or loaded says why."""
    with torch.no_grad():
        expected = models.call(model, inputs)
    with tempfile.TemporaryDirectory(prefix="torchao_nb-save-", dir=folder) as tmp:
        path = Path(tmp) / FILE
        start = time.perf_counter()
        try:
            torch.save(model.state_dict(), path)
        except Exception as e:
            return Reloaded(None, None, f"its weights cannot be saved: {error_text(e, 300)}")
        saved, size = time.perf_counter(), path.stat().st_size
        try:
            state, how = _load(path)
            reloaded = fresh()
            reloaded.load_state_dict(state, assign=True)
        except Exception as e:
            return Reloaded(None, size, f"saved, but cannot be loaded back: {error_text(e, 300)}", saved - start)
        loaded = time.perf_counter()
    with torch.no_grad():
        equal = _same(expected, models.call(reloaded, inputs))
    note = f"torch.save(state_dict) → torch.load({how}) → load_state_dict(assign=True) into a fresh model"
    return Reloaded(equal, size, note, saved - start, loaded - saved)
