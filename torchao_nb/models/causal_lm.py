"""Causal LMs from transformers: a static-cache decode step to time, and their quality (perplexity, greedy text, generation speed)."""

from __future__ import annotations

import contextlib
import inspect
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import UserError
from ..extras import Generations, Perplexity
from ._transformers import transformers
from .spec import ModelSpec, Probe, Quality, Score

TEXT_FILE = Path(__file__).parent / "data" / "declaration.txt"
PROMPTS = ("The capital of France is", "The three primary colors are", "Water freezes at a temperature of")
NEW_TOKENS = 32  # per prompt: the agreement, the texts and the generation timing all come from these runs
PERPLEXITY_CHUNK = 256  # positions of the output layer at a time: full float32 logits of 1.7k tokens are 330 MB


def read_text() -> str:
    """The US Declaration of Independence (1776, public domain): about 1.7k SmolLM2 tokens."""
    return TEXT_FILE.read_text(encoding="utf-8")


def cache_keyword(lm: nn.Module) -> str:
    """transformers 5.2x calls the KV-cache argument `cache`; earlier versions `past_key_values`."""
    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"


class DecodeStep(nn.Module):
    """A transformers causal LM with a static KV cache, called as one decode step: (token, position) → logits.

    `forward(token (batch, 1), position (1, 1))` writes the token's keys and values at `position` and attends
    to the positions before it; the same call again does the same work, so it can be timed, and its shapes never
    change, so one compiled graph serves every step of a generation. `prefill` fills the cache with a prompt.
    """

    def __init__(self, lm: nn.Module, batch: int, max_len: int):
        super().__init__()
        self.lm, self.batch, self.max_len = lm, batch, max_len
        self.cache = transformers().StaticCache(config=lm.config, max_cache_len=max_len)
        self.keyword = cache_keyword(lm)

    def _seek(self, position: torch.Tensor) -> None:
        # transformers' static layers write at their own counter, which each call advances: set it, so a repeated
        # call writes the same slot instead of walking off the end of the cache.
        for layer in self.cache.layers:
            layer.cumulative_length.copy_(position.reshape(()))

    def forward(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        self._seek(position)
        out = self.lm(input_ids=token, position_ids=position, use_cache=True, **{self.keyword: self.cache})
        return out.logits[:, -1:]  # (batch, 1, vocab)

    @contextlib.contextmanager
    def cache_kept(self):
        """The cache as it is now, put back after the block (in place: a compiled step keeps its tensors)."""
        saved = [(layer.keys.clone(), layer.values.clone(), layer.cumulative_length.clone())
                 for layer in self.cache.layers]
        try:
            yield
        finally:
            for layer, (keys, values, length) in zip(self.cache.layers, saved):
                layer.keys.copy_(keys)
                layer.values.copy_(values)
                layer.cumulative_length.copy_(length)

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        """The prompt (1, n) for every sequence of the batch from position 0, eagerly; the last position's logits."""
        self.cache.reset()
        ids = ids.expand(self.batch, -1)
        positions = torch.arange(ids.shape[1], device=ids.device)[None]
        out = self.lm(input_ids=ids, position_ids=positions, use_cache=True, logits_to_keep=1,
                      **{self.keyword: self.cache})
        return out.logits[:, -1:]


def decode_inputs(step: DecodeStep, ids: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill the cache with `ids`' first seq_len - 1 tokens; the timed call is the next token at position seq_len - 1."""
    device = ids.device
    if seq_len > 1:
        with torch.no_grad():
            step.prefill(ids[:, : seq_len - 1])
    # (batch, 1) with the strides of the argmax a generation feeds back: a stride the compiled step was not
    # traced with would make it compile again
    token = ids[0, seq_len - 1].repeat(step.batch, 1)
    return token, torch.tensor([[seq_len - 1]], device=device)


# ---- quality -------------------------------------------------------------------------------------

def perplexity(lm: nn.Module, ids: torch.Tensor, chunk: int = PERPLEXITY_CHUNK) -> float:
    """exp(mean next-token negative log-likelihood) over `ids` (1, n), one eager causal forward without a cache."""
    if ids.shape[1] < 2:
        raise ValueError("perplexity needs at least 2 tokens")
    targets = ids[0, 1:]
    with torch.no_grad():
        hidden = lm.base_model(input_ids=ids, use_cache=False).last_hidden_state[0, :-1]
        head = lm.get_output_embeddings()
        nll = sum(F.cross_entropy(head(hidden[s:s + chunk]).float(), targets[s:s + chunk], reduction="sum").item()
                  for s in range(0, len(targets), chunk))
    return math.exp(nll / len(targets))


@dataclass(frozen=True)
class Generation:
    """One greedy continuation of a prompt, timed: exactly `new_tokens` tokens (an end-of-text token doesn't stop it)."""

    ttft_s: float  # the prompt's prefill (eager) and the first new token
    step_s: tuple[float, ...]  # each later token's decode step
    token_ids: tuple[int, ...]


def generate(model: DecodeStep, step: Callable, prompt: torch.Tensor, new_tokens: int, clock, sync) -> Generation:
    """Greedy generation: the prompt prefilled eagerly, then `step` (the model's decode step, compiled or not) per token."""
    n = prompt.shape[1]
    if n + new_tokens > model.max_len:
        raise ValueError(f"{n} prompt + {new_tokens} new tokens exceed the cache's {model.max_len} positions")
    with torch.no_grad():
        start = clock()
        token = model.prefill(prompt).argmax(-1)  # (batch, 1)
        tokens = [int(token[0, 0])]  # reading it waits for the device
        ttft, steps = clock() - start, []
        for i in range(new_tokens - 1):
            t = clock()
            token = step(token, torch.tensor([[n + i]], device=prompt.device)).argmax(-1)
            tokens.append(int(token[0, 0]))
            sync()
            steps.append(clock() - t)
    return Generation(ttft, tuple(steps), tuple(tokens))


def agreement(reference: Sequence[Sequence[int]], got: Sequence[Sequence[int]]) -> float:
    """Share of new tokens equal to the reference's at the same position, pooled over sequences (missing: unequal)."""
    if len(reference) != len(got):
        raise ValueError(f"{len(reference)} reference sequences but {len(got)} to compare")
    total = sum(len(r) for r in reference)
    same = sum(a == b for r, g in zip(reference, got) for a, b in zip(r, g))
    return same / total if total else math.nan


def _decode(tokenizer, ids: Sequence[int]) -> str:
    ids, eos = list(ids), getattr(tokenizer, "eos_token_id", None)
    return tokenizer.decode(ids[: ids.index(eos)] if eos in ids else ids, skip_special_tokens=True)


@dataclass
class Reference:
    """The unquantized model's perplexity, and its generations: made by the first cell scored, with the unquantized
    model's step as the cell has it (the compiled baseline when compiling), so a mode's agreement counts what
    quantizing changed, not what compiling changed (bf16 eager and compiled greedy texts part after a few tokens)."""

    perplexity: float
    token_ids: list[tuple[int, ...]] | None = None  # per prompt
    texts: list[str] | None = None
    how: str = ""  # "compiled" or "eager"


@dataclass(frozen=True)
class CausalLMQuality(Quality):
    """Perplexity on a fixed English text, greedy generations of fixed prompts (agreement with the unquantized
    model's, and the texts), and the generation's speed, for a model whose timed module is a DecodeStep.

    The generations run through the callable the cell timed, so a compiled mode compiles once for both.
    """

    tokenizer: Callable[[], Any]  # () -> a transformers tokenizer (loaded once by the caller)
    prompts: tuple[str, ...] = PROMPTS
    new_tokens: int = NEW_TOKENS
    text: Callable[[], str] = read_text
    metric: str = field(default=f"perplexity on {TEXT_FILE.name} (the US Declaration of Independence)")

    def text_ids(self, device) -> torch.Tensor:
        return self.tokenizer()(self.text(), return_tensors="pt").input_ids.to(device)

    def prompt_ids(self, device) -> list[torch.Tensor]:
        return [self.tokenizer()(p, return_tensors="pt").input_ids.to(device) for p in self.prompts]

    def gen_len(self) -> int:
        """Cache positions a generation needs: the longest prompt and the new tokens."""
        return max(p.shape[1] for p in self.prompt_ids("cpu")) + self.new_tokens

    def _generations(self, model: DecodeStep, step, clock, sync) -> list[Generation]:
        device = model.lm.device
        return [generate(model, step, p, self.new_tokens, clock, sync) for p in self.prompt_ids(device)]

    def reference(self, module: nn.Module, device: str, dtype: torch.dtype) -> Reference:
        return Reference(perplexity(module.lm, self.text_ids(module.lm.device)))

    def _reference_generations(self, reference: Reference, probe: Probe) -> None:
        unquantized = probe.unquantized
        with unquantized.cache_kept():  # the group's reference output and later cells use its cache as it is
            gens = self._generations(unquantized, probe.unquantized_step, probe.clock, probe.sync)
        reference.token_ids = [g.token_ids for g in gens]
        reference.texts = [_decode(self.tokenizer(), t) for t in reference.token_ids]
        reference.how = "eager" if probe.unquantized_step is unquantized else "compiled"

    def score(self, reference: Reference, model: nn.Module, probe: Probe) -> Score:
        probe.on_phase("perplexity")
        ppl = perplexity(model.lm, self.text_ids(model.lm.device))
        probe.on_phase("generating")
        if reference.token_ids is None:
            self._reference_generations(reference, probe)
        gens = self._generations(model, probe.step, probe.clock, probe.sync)
        steps = [s for g in gens for s in g.step_s] or [math.nan]
        e2e = statistics.median(self.new_tokens * model.batch / (g.ttft_s + sum(g.step_s)) for g in gens)
        fields = dict(perplexity=ppl, perplexity_change_pct=100 * (ppl / reference.perplexity - 1),
                      agreement=agreement(reference.token_ids, [g.token_ids for g in gens]),
                      ttft_ms=1e3 * statistics.median(g.ttft_s for g in gens), decode_ms=1e3 * statistics.median(steps),
                      gen_tokens_per_s=e2e)
        texts = [_decode(self.tokenizer(), g.token_ids) for g in gens]
        said = (Perplexity(self.metric, reference.perplexity),
                Generations(prompts=list(self.prompts), unquantized=reference.texts, quantized=texts,
                            new_tokens=self.new_tokens, unquantized_how=reference.how))
        return Score(fields, {k: v for x in said for k, v in x.to_json().items()})


# ---- the registry entry of a causal LM ---------------------------------------------------------------

def spec(name: str, description: str, load: Callable[[str, torch.dtype], nn.Module], tokenizer: Callable[[], Any],
         params: int | None = None, seq_len: int = 128, **quality_options: Any) -> ModelSpec:
    """A decoder timed as one decode step of a static KV cache filled with `seq_len - 1` tokens of the shipped text,
    with perplexity, greedy generation and generation speed as its quality. `load(device, dtype)` gives a fresh
    transformers causal LM and `tokenizer()` its tokenizer; each caches what is slow to load. `quality_options` go
    to CausalLMQuality (another text, prompts, new_tokens)."""
    quality = CausalLMQuality(tokenizer, **quality_options)

    def build(device, dtype, batch, seq):
        ids = quality.text_ids(device)
        if seq > ids.shape[1]:
            raise UserError(f"{name}: seq_len {seq} is longer than the {ids.shape[1]}-token text that fills the cache.")
        step = DecodeStep(load(device, dtype).eval(), batch, max(seq, quality.gen_len()))
        return step, decode_inputs(step, ids, seq)

    return ModelSpec(name, "decoder", description, build, params=params, seq_len=seq_len, step="decode",
                     quality=quality, fullgraph=True)
