"""How a cell is compiled: one frozen settings object, the compiler state around a group of cells, what a compile did."""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import types
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from . import baseline

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
TUNINGS = tuple(baseline.TUNINGS)  # torchao | fast | off: the inductor tuning every compiled cell gets


@dataclass(frozen=True)
class CompileSettings:
    """Everything that decides how a model is compiled; shared by the sweep, autoquant's search and explain."""

    enabled: bool = True
    mode: str = "default"  # torch.compile mode; "reduce-overhead" uses CUDA graphs
    baseline: bool = True  # the seed's compiler settings (baseline.BASELINE_SETTINGS)
    tuning: str = "off"  # one of TUNINGS: torchao's recommended inductor settings, a cheaper search, or none
    fullgraph: bool = False  # a graph break is an error (built-in models: it would be our bug)

    @property
    def label(self) -> str:
        """The row's `compile_mode`: empty when compile is off."""
        return self.mode if self.enabled else ""


EAGER = CompileSettings(enabled=False)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


_active: list[CompileSettings] = []  # the settings of the compiled group this thread is in, if any


@contextlib.contextmanager
def compiled_cell(settings: CompileSettings) -> Iterator[None]:
    """Fresh dynamo state and the chosen compiler settings for a group of compiled cells, all restored after.

    A model that recompiles past dynamo's limit is an error, not a silent fall-back to eager. A nested
    block with the same settings joins the outer one (autoquant's search inside a cell), so the group's
    compiled baseline survives it.
    """
    if _active and _active[-1] == settings:
        yield
        return
    torch._dynamo.reset()
    _active.append(settings)
    try:
        with baseline.preserved_compiler_configs(), baseline.applied(settings.baseline), \
                baseline.applied(True, baseline.TUNINGS[settings.tuning].settings), \
                torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
            yield
    finally:
        _active.pop()
        torch._dynamo.reset()  # also after a failed cell: the next group must not inherit its graphs


def maybe_compiled(settings: CompileSettings) -> contextlib.AbstractContextManager:
    return compiled_cell(settings) if settings.enabled else contextlib.nullcontext()


def compiled(model: nn.Module, settings: CompileSettings, label: str = "model"):
    """`model` compiled under `settings`, behind a forward of its own (see `fresh`)."""
    if not settings.enabled:
        return model
    return torch.compile(fresh(model, label), mode=None if settings.mode == "default" else settings.mode,
                         fullgraph=settings.fullgraph)


class _Wrapper(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model


_wrappers = itertools.count()


def fresh(model: nn.Module, label: str) -> nn.Module:
    """`model` behind a forward whose code object is new. Dynamo keeps compiled code per code object,
    so each compile starts from an empty cache: two copies of one model class (the baseline and a mode,
    or two modes whose weights look alike to dynamo's guards) never share or walk past each other's
    compiled code, and the baseline's survives the cells after it."""
    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    name = f"{re.sub(r'[^0-9A-Za-z_]', '_', label)}_{next(_wrappers)}"
    code = forward.__code__.replace(co_name=name, co_qualname=name)
    return type(name, (_Wrapper,), {"forward": types.FunctionType(code, forward.__globals__, name)})(model)


def graphs_compiled() -> int:
    """Graphs dynamo has captured in this process so far (a counter: take differences)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


# ---- what a compile did -------------------------------------------------------------------------

# torch logs these at WARNING; quiet_logs mutes them for the user, so they are kept with the row instead.
WATCHED_LOGGERS = ("torch._dynamo", "torch._inductor", "torch._inductor.cudagraph_utils.__cudagraphs",
                   "torch._inductor.cudagraph_trees.__cudagraphs")
_CACHE_COUNTERS = ("fxgraph_cache_hit", "fxgraph_cache_miss", "fxgraph_cache_bypass", "cudagraph_skips")


@dataclass
class CompileRecord:
    graph_breaks: list[str] = field(default_factory=list)  # "file:line: first line of the reason"
    recompiles: list[str] = field(default_factory=list)  # "compile id: reason"
    cudagraph_skips: int = 0
    fx_cache: dict[str, int] = field(default_factory=dict)  # hit / miss / bypass
    log: list[str] = field(default_factory=list)  # torch's warnings during the block

    @property
    def fx_cache_text(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.fx_cache.items() if v) or "none"


class _Keep(logging.Handler):
    def __init__(self, sink: list[str]):
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.sink.append(f"{record.name}: {record.getMessage()}"[:2000])


def _break_text(reason) -> str:
    text = str(getattr(reason, "reason", reason)).strip()
    first = text.splitlines()[0] if text else "?"
    stack = getattr(reason, "user_stack", None) or []
    where = f"{stack[-1].filename.rsplit('/', 1)[-1]}:{stack[-1].lineno}: " if stack else ""
    return where + first


def fx_cache_counts() -> dict[str, int]:
    """This process's FX graph cache hits, misses and bypasses so far (torch's counters)."""
    import torch._dynamo.utils as du

    return {k.rsplit("_", 1)[1]: du.counters["inductor"][k] for k in _CACHE_COUNTERS[:3]}


@contextlib.contextmanager
def watch() -> Iterator[CompileRecord]:
    """Record what torch.compile did inside the block: graph breaks, recompiles, CUDA-graph skips, cache hits."""
    import torch._dynamo.utils as du

    rec = CompileRecord()
    breaks0 = len(du.graph_break_reasons)
    du.clear_compilation_metrics()
    before = {k: du.counters["inductor"][k] for k in _CACHE_COUNTERS}
    keep, saved = _Keep(rec.log), []
    for name in WATCHED_LOGGERS:
        lg = logging.getLogger(name)
        saved.append((lg, lg.level, lg.propagate))
        lg.setLevel(logging.WARNING)
        lg.propagate = False  # kept here, not printed
        lg.addHandler(keep)
    try:
        yield rec
    finally:
        for lg, level, propagate in saved:
            lg.removeHandler(keep)
            lg.setLevel(level)
            lg.propagate = propagate
        rec.graph_breaks = [_break_text(r) for r in du.graph_break_reasons[breaks0:]]
        for m in du.get_compilation_metrics():
            cid = str(getattr(m, "compile_id", "") or "")
            reason = (getattr(m, "recompile_reason", None) or "").strip()
            if reason or re.fullmatch(r"\d+/[1-9]\d*(_\d+)?", cid):
                rec.recompiles.append(f"{cid}: {reason.splitlines()[0] if reason else 'recompiled'}"[:300])
        delta = {k: du.counters["inductor"][k] - v for k, v in before.items()}
        rec.fx_cache = {k.rsplit("_", 1)[1]: delta[k] for k in _CACHE_COUNTERS[:3]}
        rec.cudagraph_skips = delta["cudagraph_skips"]
