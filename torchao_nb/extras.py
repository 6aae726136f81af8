"""A row's extras, typed: one frozen dataclass per kind of detail kept beside the numbers, each owning its JSON keys.

On disk `Row.extra` is one JSON object whose top-level keys are the fields below (the shape every version so far
wrote); a key this version does not know is kept as read, never lost.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, TypeVar


@dataclass(frozen=True)
class Extra:
    """One kind of extra. Its fields are the top-level JSON keys it owns; a field left at None is not written."""

    always: ClassVar[tuple[str, ...]] = ()  # fields written even when None (their null says something)

    def to_json(self) -> dict[str, Any]:
        return {f.name: v for f in dataclasses.fields(self)
                if (v := getattr(self, f.name)) is not None or f.name in self.always}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Extra | None":
        """This kind read from a row's extra object; None when the object holds none of its keys."""
        names = [f.name for f in dataclasses.fields(cls)]
        if not any(n in data for n in names):
            return None
        return cls(**{n: data[n] for n in names if n in data})

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


@dataclass(frozen=True)
class SaveReload(Extra):
    save_reload: str  # how the state_dict was saved and loaded back, or why it could not be


@dataclass(frozen=True)
class LayersLeftAlone(Extra):
    layers_left_alone: dict[str, str]  # layer → why the mode did not quantize it


@dataclass(frozen=True)
class LayerConfigs(Extra):
    layer_configs: dict[str, list[str]]  # per-layer config label (int4's "group 64") → the layers that took it

    def counts(self) -> list[tuple[str, int]]:
        """(label, layers) with the most-used config first."""
        return sorted(((label, len(fqns)) for label, fqns in self.layer_configs.items()), key=lambda c: -c[1])


@dataclass(frozen=True)
class Autoquant(Extra):
    autoquant: dict[str, Any]  # the search's per-layer decision table (see autoquant.per_layer.search)
    search_s: float | None = None  # the search's time, part of the row's quantize_s


@dataclass(frozen=True)
class Generations(Extra):
    """A causal LM's greedy continuations of its prompts, unquantized and quantized."""

    prompts: list[str]
    unquantized: list[str]
    quantized: list[str]
    new_tokens: int
    unquantized_how: str | None = None  # "eager" or "compiled": how the unquantized texts were made

    key: ClassVar[str] = "generations"

    def to_json(self) -> dict[str, Any]:
        return {self.key: {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Generations | None":
        inner = data.get(cls.key)
        if not isinstance(inner, dict):
            return None
        return cls(**{f.name: inner[f.name] for f in dataclasses.fields(cls) if f.name in inner})

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return (cls.key,)


@dataclass(frozen=True)
class Perplexity(Extra):
    perplexity_text: str  # the fixed text the row's perplexity is measured on
    perplexity_unquantized: float | None = None


@dataclass(frozen=True)
class TaskCosine(Extra):
    """A model scored at task level (sentence embeddings): the row's cosine is the task's, not the raw output's."""

    cosine: str  # what the row's cosine measures
    task_min_cosine: float | None = None
    output_cosine: float | None = None  # the raw output's cosine with the unquantized one


@dataclass(frozen=True)
class CompileNotes(Extra):
    """What torch.compile did that a row's counts only number: each break, each recompile, the log around them."""

    graph_breaks: list[str] | None = None  # "file:line: first line of the reason"
    recompiles_while_timing: list[str] | None = None
    recompiles_while_scoring: list[str] | None = None
    compile_log: list[str] | None = None  # torch's last warnings, kept with a failing or suspicious row


@dataclass(frozen=True)
class TimingNotes(Extra):
    """Why a row's numbers need care: said in its note."""

    not_steady: str | None = None  # its bursts are not its steady state (rows from before `settles`)
    settles: str | None = None  # its bursts needed a longer untimed lead to reach their steady state
    busy: str | None = None  # other processes took a share of the CPU while it was timed
    together: int | None = None  # how many modes were timed in the same rounds (the group's), when more than one
    alone: str | None = None  # why it was timed alone rather than with its group's other modes
    base_range_ms: list[float] | None = None  # the baseline's fastest and slowest tenth of the rounds (medians)
    between_runs: float | None = None  # the relative term for what varies between runs, in the intervals (ratios)


@dataclass(frozen=True)
class Profile(Extra):
    profile: str  # --diagnose: the mode's top kernels


@dataclass(frozen=True)
class EagerCheck(Extra):
    """A wrong compiled output: the eager quantized model's SQNR says which side is wrong (null: identical)."""

    eager_sqnr_db: float | None = None
    always: ClassVar[tuple[str, ...]] = ("eager_sqnr_db",)


@dataclass(frozen=True)
class CarriedCache(Extra):
    compile_cache: str  # the carried compile cache (--compile-cache) this cell compiled with: loaded, or why not


@dataclass(frozen=True)
class Warmed(Extra):
    """--compile-workers: what a helper process did for this cell's compile (the row's compile_s is the worker's)."""

    compile_warmup: str
    helper_compile_s: float | None = None
    helper_peak_bytes: int | None = None  # its peak memory growth: RSS on a CPU, allocated on a GPU


@dataclass(frozen=True)
class WorkerLog(Extra):
    worker_log: str  # what a crashed or stopped worker process wrote last


@dataclass(frozen=True)
class Repro(Extra):
    """A wrong or crashed cell's standalone torch + torchao script (repro.py), or why it has none."""

    repro: str | None = None  # the script: repro/<model>-<mode>-bs<b>.py in the results folder, else a full path
    repro_note: str | None = None  # the piece it holds and how it was found, or why there is no script
    reproduces: bool | None = None  # the script failed as the cell did when it was written (False: it did not)


KINDS: tuple[type[Extra], ...] = (SaveReload, LayersLeftAlone, LayerConfigs, Autoquant, Generations, Perplexity,
                                  TaskCosine, CompileNotes, TimingNotes, Profile, EagerCheck, CarriedCache, Warmed,
                                  WorkerLog, Repro)
KIND_OF_KEY: dict[str, type[Extra]] = {}  # every top-level key → the one kind that owns it
for _kind in KINDS:
    for _key in _kind.keys():
        assert _key not in KIND_OF_KEY, f"extra key {_key!r} is owned by {KIND_OF_KEY[_key].__name__} already"
        KIND_OF_KEY[_key] = _kind

E = TypeVar("E", bound=Extra)


@dataclass(frozen=True)
class Extras:
    """A row's extras: the typed ones, and the keys this version does not know, kept as read."""

    items: tuple[Extra, ...] = ()
    unknown: dict[str, Any] = field(default_factory=dict)

    def of(self, kind: type[E]) -> E | None:
        return next((x for x in self.items if isinstance(x, kind)), None)

    def __bool__(self) -> bool:
        return bool(self.items or self.unknown)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for x in self.items:
            out.update(x.to_json())
        return out | self.unknown

    def text(self) -> str:
        """Row.extra: "" when there is nothing to say."""
        data = self.to_json()
        return json.dumps(data) if data else ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Extras":
        items, unknown = [], {k: v for k, v in data.items() if k not in KIND_OF_KEY}
        for kind in dict.fromkeys(KIND_OF_KEY[k] for k in data if k in KIND_OF_KEY):
            said = {k: data[k] for k in kind.keys() if k in data}
            try:
                x = kind.from_json(said)
            except TypeError:
                x = None
            if x is None or x.to_json() != said:  # a partial or hand-edited entry: kept as read, not lost
                unknown.update(said)
            else:
                items.append(x)
        return cls(tuple(items), unknown)

    @classmethod
    def parse(cls, text: str) -> "Extras":
        return cls.from_json(json.loads(text)) if text else cls()


def extra_text(*parts: Extra | Extras | Mapping[str, Any] | None) -> str:
    """Row.extra from typed extras and the extra objects a mode's report or a model's score return (read into
    their kinds); a None part says nothing."""
    merged: dict[str, Any] = {}
    for part in parts:
        if part is not None:
            merged.update(part.to_json() if isinstance(part, (Extra, Extras)) else part)
    return Extras.from_json(merged).text()
