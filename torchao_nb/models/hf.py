"""Hugging Face models (optional extra `hf`): the hf-config: and hf: forms, small configs offline, local weights."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from . import causal_lm
from ._transformers import quiet_loading, transformers
from .gguf import hf_gguf
from .spec import Form, ModelSpec, register_form

# Small dims for hf-config:, set where the architecture's config has the field; 128 fits int4's group size.
SMALL_CONFIG = dict(
    hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
    intermediate_size=256, vocab_size=1024, max_position_embeddings=512,
    image_size=32, patch_size=8, num_channels=3,
)
# The inputs each supported kind of model takes (its `main_input_name`).
SUPPORTED_INPUTS = ("input_ids", "pixel_values")


class MainOutput(nn.Module):
    """Calls a transformers model and returns its main tensor (logits, else the last hidden state)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        out = self.model(*args, **kwargs, return_dict=True)
        for key in ("logits", "last_hidden_state"):
            if getattr(out, key, None) is not None:
                return getattr(out, key)
        return out[0]


def _family(model_cls, config) -> str:
    if getattr(model_cls, "main_input_name", None) == "pixel_values":
        return "vision"
    return "decoder" if getattr(config, "is_decoder", False) or "CausalLM" in model_cls.__name__ else "encoder"


def _example_inputs(config, main_input: str, device, dtype, batch: int, seq_len: int) -> dict:
    gen = torch.Generator(device=device).manual_seed(1)
    if main_input == "pixel_values":
        size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        shape = (batch, getattr(config, "num_channels", 3), size, size)
        return {"pixel_values": torch.randn(shape, device=device, dtype=dtype, generator=gen)}
    ids = torch.randint(0, config.vocab_size, (batch, seq_len), device=device, generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _check_model_class(tf, arch: str):
    cls = getattr(tf, arch, None)
    if not (isinstance(cls, type) and issubclass(cls, tf.PreTrainedModel) and cls.config_class is not None):
        raise UserError(f"hf-config:{arch}: transformers {tf.__version__} has no model class {arch!r}; "
                        "give a class name such as LlamaForCausalLM, BertModel or ViTModel.")
    if cls.main_input_name not in SUPPORTED_INPUTS:
        raise UserError(f"hf-config:{arch} takes {cls.main_input_name!r}; supported inputs are {SUPPORTED_INPUTS}.")
    return cls


def small_config(cls):
    """The architecture's default config with its dims shrunk; the fields it lacks are left alone."""
    base = cls.config_class()
    if getattr(base, "is_encoder_decoder", False):
        raise UserError(f"hf-config:{cls.__name__} is an encoder-decoder; give a decoder-only or encoder-only architecture.")
    wanted = {k: v for k, v in SMALL_CONFIG.items() if hasattr(base, k)}
    config = cls.config_class(**wanted)
    for k, v in wanted.items():  # configs that ignore a keyword still take the attribute
        if getattr(config, k) != v:
            setattr(config, k, v)
    config.use_cache = False  # timed forwards return logits, not cache objects
    return config


def hf_config(arch: str) -> ModelSpec:
    tf = transformers()
    cls = _check_model_class(tf, arch)
    config = small_config(cls)

    def build(device, dtype, batch, seq_len):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = cls(config)
        model = MainOutput(model.to(device=device, dtype=dtype).eval())
        return model, _example_inputs(config, cls.main_input_name, device, dtype, batch, seq_len)

    dims = ", ".join(f"{k} {getattr(config, k)}" for k in ("hidden_size", "num_hidden_layers") if hasattr(config, k))
    return ModelSpec(f"hf-config:{arch}", _family(cls, config),
                     f"transformers {arch} from its config with small dims ({dims}), random weights, offline.",
                     build, params=None, seq_len=32)


def _local_folder(ref: str) -> Path | None:
    """The folder of a local path, or of a hub id in the local Hugging Face cache; never downloads."""
    path = Path(os.path.expanduser(ref))
    if path.is_dir():
        return path if (path / "config.json").exists() else None
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(ref, "config.json")
    except Exception:  # not a valid repo id either
        return None
    return Path(found).parent if isinstance(found, str) else None


def _causal_lm(tf, cls, folder: Path, ref: str) -> ModelSpec | None:
    """A causal LM with a tokenizer that compiles as one graph: timed as a decode step, with an LM's quality."""
    if not ("CausalLM" in cls.__name__ and getattr(cls, "_can_compile_fullgraph", False)):
        return None
    try:
        with quiet_loading():
            tokenizer = tf.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception:  # no tokenizer files: no text to score, so it is timed as a plain forward
        return None

    def load(device, dtype):
        with quiet_loading():
            return cls.from_pretrained(folder, local_files_only=True, dtype=dtype).to(device)

    return causal_lm.spec(f"hf:{ref}", f"pretrained {cls.__name__} from {folder}; quality: perplexity, greedy "
                          "generation, generation speed.", load, lambda: tokenizer)


def hf_pretrained(ref: str) -> ModelSpec:
    tf = transformers()
    if ref.lower().endswith(".gguf"):
        return hf_gguf(ref)
    folder = _local_folder(ref)
    looks_local = ref.startswith((".", "/", "~")) or ref.count("/") > 1  # a hub name is org/name
    if folder is None and looks_local:
        where = "does not exist" if not Path(ref).expanduser().exists() else "holds no config.json"
        raise UserError(f"hf:{ref}: this local path {where}; give a folder with a model's config.json and weights.")
    if folder is None:
        raise UserError(f"hf:{ref}: no local copy (no folder with config.json, not in the Hugging Face cache) and "
                        f"torchao_nb never downloads; fetch it first (hf download {ref}) or give a local folder.")
    try:
        config = tf.AutoConfig.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:  # a truncated or hand-broken config.json
        raise UserError(f"hf:{ref}: {folder}/config.json could not be read ({str(e).splitlines()[0][:150]}); "
                        "fix or re-fetch the model's files.") from None
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(tf, arch, None) if arch else None
    cls = cls if isinstance(cls, type) else tf.AutoModel  # an architecture this transformers lacks: its base model
    main_input = getattr(cls, "main_input_name", "input_ids")
    if main_input not in SUPPORTED_INPUTS:
        raise UserError(f"hf:{ref} ({arch}) takes {main_input!r}; supported inputs are {SUPPORTED_INPUTS}.")
    lm = _causal_lm(tf, cls, folder, ref)
    if lm is not None:
        return lm

    def build(device, dtype, batch, seq_len):
        with quiet_loading():
            model = cls.from_pretrained(folder, local_files_only=True, dtype=dtype)
        model.config.use_cache = False
        model = MainOutput(model.to(device).eval())
        return model, _example_inputs(config, main_input, device, dtype, batch, seq_len)

    return ModelSpec(f"hf:{ref}", _family(cls, config), f"pretrained {arch or config.model_type} from {folder}.",
                     build, params=None, seq_len=32)


register_form(Form("hf-config:", "<architecture>", "any",
                   "a transformers model class (e.g. LlamaForCausalLM, BertModel, ViTModel) built from its config "
                   "with small dims, random weights, offline. Needs the hf extra.", hf_config))
register_form(Form("hf:", "<hub id, local folder or .gguf file>", "any",
                   "pretrained weights from a local folder, the local Hugging Face cache or a .gguf file; never "
                   "downloads. A causal LM with a tokenizer is timed as a decode step and gets perplexity, greedy "
                   "generation and generation speed. Needs the hf extra.", hf_pretrained))
