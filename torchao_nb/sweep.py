"""The sweep: models × batch sizes × modes, one isolated cell at a time, rows saved as they finish."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as _dt
import functools
import gc
import json
import os
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from . import baseline as baseline_mod
from . import env as envmod
from . import measure, models, recipes
from ._torchao import quiet_logs
from .env import UserError
from .results import ResultSet, Row, append_jsonl, atomic_write, read_jsonl

ROWS_FILE = "rows.jsonl"


@dataclass(frozen=True)
class SweepConfig:
    """Everything that defines a sweep, validated; `device` and `dtype` already resolved."""

    models: tuple[str, ...]
    modes: tuple[str, ...]
    device: str
    dtype: torch.dtype
    batch_sizes: tuple[int, ...] = (1,)
    compile: bool = True
    baseline: bool = True  # apply the seed's compiler settings to compiled runs
    compile_mode: str = "default"  # torch.compile mode, e.g. "reduce-overhead" (CUDA graphs)
    torchao_tuning: bool = False  # apply torchao's recommended inductor settings to every compiled cell
    threads: int = field(default_factory=torch.get_num_threads)
    seq_len: int | None = None  # None: each model's default
    policy: measure.TimingPolicy = measure.TimingPolicy()
    progress: bool = False  # also the autoquant search's own progress bar
    autoquant: Any = None  # autoquant.SearchSettings; None: its documented defaults


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@contextlib.contextmanager
def compiled_cell(cfg: "SweepConfig | recipes.ApplyContext") -> Iterator[None]:
    """Fresh dynamo state and the chosen compiler settings for one compiled cell, all restored after."""
    torch._dynamo.reset()
    try:
        with baseline_mod.preserved_compiler_configs(), baseline_mod.applied(cfg.baseline), \
                baseline_mod.applied(cfg.torchao_tuning, baseline_mod.TORCHAO_TUNING), \
                torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
            yield
    finally:
        torch._dynamo.reset()  # also after a failed cell: the next one must not inherit its graphs


def compiled(model: nn.Module, cfg: "SweepConfig | recipes.ApplyContext"):
    return torch.compile(model, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)


@functools.lru_cache(maxsize=None)
def _copy_gbs(device: str, threads: int) -> float:
    """Measured once per process and environment: the memory roofline every row is judged against."""
    with torch_threads(threads):
        return measure.copy_bandwidth_gbs(device)


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


# ---- validation -----------------------------------------------------------------------------

def check_batch_sizes(batch_sizes: Any) -> tuple[int, ...]:
    if isinstance(batch_sizes, (int, str)):
        batch_sizes = [batch_sizes]
    out = []
    for b in batch_sizes:
        try:
            n = int(str(b).strip())
        except ValueError:
            raise UserError(f"batch size {b!r} is not a whole number; give positive integers like 1,8.") from None
        if n <= 0:
            raise UserError(f"batch size must be a positive integer, got {n}.")
        out.append(n)
    if not out:
        raise UserError("no batch size given; give positive integers like 1,8.")
    return tuple(dict.fromkeys(out))


def check_out_dir(out: str | os.PathLike) -> Path:
    """Create the output folder and prove it is writable before any minute is spent measuring."""
    p = Path(out)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write results to {p}: {e.strerror or e}; choose another --out folder.") from None
    return p


def _set_aside_previous(out: Path) -> None:
    """A fresh (non-resume) sweep into a used folder moves the old files into previous/<time>/."""
    old = [out / n for n in (ROWS_FILE, "results.csv", "results.json", "environment.json") if (out / n).exists()]
    if old:
        dest = out / "previous" / _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        dest.mkdir(parents=True)
        for f in old:
            shutil.move(str(f), dest / f.name)


# ---- one cell --------------------------------------------------------------------------------

@dataclass
class Reference:
    """The unquantized model of one (model, batch size) and its output, shared by its cells.

    It is not timed here: each cell times it again, interleaved with the mode (see run_cell).
    """

    name: str
    module: nn.Module
    inputs: models.Inputs
    output: Any
    tokens_per_call: int | None
    layers_total: int
    copy_gbs: float | None = None  # the device's copy bandwidth, for the roofline column
    task: models.Task | None = None  # a task-level accuracy that fills `cosine` instead of the raw output's
    task_inputs: Any = None
    task_output: Any = None


def _row(cfg: SweepConfig, ref: Reference, mode: str, batch: int, status: str, reason: str = "", **kw) -> Row:
    return Row(model=ref.name, mode=mode, batch_size=batch, device=cfg.device, dtype=envmod.dtype_name(cfg.dtype),
               compile=cfg.compile, baseline=cfg.baseline, status=status, reason=reason,
               layers_total=ref.layers_total,
               threads=cfg.threads, compile_mode=cfg.compile_mode if cfg.compile else "", **kw)


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _task_accuracy(ref: Reference, model: nn.Module, acc: measure.Accuracy, extra: dict) -> measure.Accuracy:
    """The model's task-level score takes the `cosine` column; the raw-output cosine moves to extra."""
    score = ref.task.score(ref.task_output, ref.task.run(model, ref.task_inputs))  # eager: the task's shapes differ
    extra.update(cosine=ref.task.metric, task_min_cosine=score["min"], output_cosine=acc.cosine)
    return dataclasses.replace(acc, cosine=score["mean"])


def run_cell(cfg: SweepConfig, ref: Reference, mode: str, batch: int, clock=time.perf_counter) -> Row:
    """Quantize a fresh copy, compile, check accuracy, time: one Row, never an exception."""
    recipe = recipes.get(mode)
    info = envmod.device_info(cfg.device)
    reason = recipe.unsupported_reason(info, cfg.dtype)
    if reason:
        return _row(cfg, ref, mode, batch, "skipped", reason)
    if ref.layers_total == 0 and mode != "noquant":
        return _row(cfg, ref, mode, batch, "skipped", "nothing to quantize: the model has no nn.Linear layer")
    sync = measure.sync_for(cfg.device)
    try:
        model = copy.deepcopy(ref.module)
        context = recipes.ApplyContext(
            device=cfg.device, compile=cfg.compile, baseline=cfg.baseline, policy=cfg.policy, clock=clock,
            progress=cfg.progress, search=cfg.autoquant, compile_mode=cfg.compile_mode, torchao_tuning=cfg.torchao_tuning)
        report, quantize_s = measure.time_once(
            lambda: recipes.quantize(model, recipe, info, cfg.dtype, ref.inputs, context), clock, sync)
        extra = dict(report.extra)
        if report.skipped_layers:
            extra["layers_left_alone"] = report.skipped_layers
        # A recipe with its own search (autoquant) may rightly leave every layer alone: that is its result.
        if mode != "noquant" and report.layers_quantized == 0 and recipe.apply is None:
            why = next(iter(report.skipped_layers.values()), "torchao changed no layer")
            return _row(cfg, ref, mode, batch, "skipped", f"no Linear layer fits this mode ({why})",
                        layers_quantized=0, recipe=json.dumps(report.recipe), extra=json.dumps(extra))
        with torch.no_grad(), (compiled_cell(cfg) if cfg.compile else contextlib.nullcontext()):
            fn = compiled(model, cfg) if cfg.compile else model
            graphs0 = _graphs()
            out, compile_s = measure.time_once(lambda: models.call(fn, ref.inputs), clock, sync)
            graphs = _graphs() - graphs0 if cfg.compile else None
            if cfg.compile and graphs == 0:
                raise RuntimeError("torch.compile captured no graph: the model ran eager, so its timing would be mislabelled")
            acc = measure.accuracy(ref.output, out)
            if ref.task is not None:
                acc = _task_accuracy(ref, model, acc, extra)
            with measure.PeakMemory(cfg.device) as mem:  # the mode alone, before the baseline copy exists
                for _ in range(3):
                    models.call(fn, ref.inputs)
            # The unquantized references are timed again here, interleaved with this mode, so both
            # speedups compare timings taken under the same machine state. The compiled baseline's
            # compile is normally a cache hit of the reference's.
            eager = lambda: models.call(ref.module, ref.inputs)  # noqa: E731
            calls = [eager, lambda: models.call(fn, ref.inputs)]
            if cfg.compile:
                base = compiled(copy.deepcopy(ref.module), cfg)
                models.call(base, ref.inputs)
                calls.insert(0, lambda: models.call(base, ref.inputs))
            timed = measure.time_interleaved(calls, cfg.policy, clock, sync)
            base = None
        m, eager_ms = timed[-1], timed[-2].median_ms
        median = m.median_ms
        baseline_ms = timed[0].median_ms  # the compiled baseline, or eager when compile is off
        wbytes = measure.weight_bytes(model)
        step_bytes = wbytes + measure.activation_bytes(ref.inputs, out)
        achieved = step_bytes / (median / 1e3) / 1e9
        return _row(
            cfg, ref, mode, batch, "ok",
            median_ms=median, iqr_ms=m.iqr_ms, samples=len(m.samples_ms), noisy=m.noisy(cfg.policy),
            baseline_ms=baseline_ms, speedup=baseline_ms / median,
            eager_ms=eager_ms, speedup_vs_eager=eager_ms / median,
            compile_s=compile_s if cfg.compile else None, quantize_s=quantize_s, search_s=report.extra.get("search_s"),
            sqnr_db=acc.sqnr_db, cosine=acc.cosine, max_abs_err=acc.max_abs_err,
            bytes_per_step=step_bytes, achieved_gbs=achieved,
            roofline_pct=None if not ref.copy_gbs else 100 * achieved / ref.copy_gbs,
            weight_bytes=wbytes, peak_mem_bytes=mem.peak_bytes, peak_reserved_bytes=mem.reserved_bytes,
            layers_quantized=report.layers_quantized, graphs=graphs,
            tokens_per_s=None if ref.tokens_per_call is None else ref.tokens_per_call / (median / 1e3),
            recipe=json.dumps(report.recipe), extra=json.dumps(extra) if extra else "",
        )
    except Exception as e:  # one failing cell must not end the sweep: it becomes an error row
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        hint = recipes.explain_failure(message)
        return _row(cfg, ref, mode, batch, "error", f"{type(e).__name__}: {message}"[:500] + (f" ({hint})" if hint else ""))
    finally:
        _free(cfg.device)


def measure_reference(cfg: SweepConfig, name: str, module: nn.Module, inputs: models.Inputs, tokens_per_call: int | None,
                      copy_gbs: float | None = None, task: models.Task | None = None) -> Reference:
    """The unquantized model's output (the accuracy reference), and its task output if it has a task."""
    with torch.no_grad():
        output = models.call(module, inputs)
        task_inputs = task.inputs(cfg.device, cfg.dtype) if task else None
        task_output = task.run(module, task_inputs) if task else None
    return Reference(name, module, inputs, output, tokens_per_call, len(recipes.linear_layers(module)),
                     copy_gbs, task, task_inputs, task_output)


# ---- the loop ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSource:
    """A registered model, or a user's module with its example inputs."""

    name: str
    spec: models.ModelSpec | None = None
    module: nn.Module | None = None
    inputs: models.Inputs | None = None

    def build(self, cfg: SweepConfig, batch: int) -> tuple[nn.Module, models.Inputs, int | None]:
        if self.spec is not None:
            seq = cfg.seq_len or self.spec.seq_len
            module, inputs = self.spec.build(cfg.device, cfg.dtype, batch, seq)
            return module, inputs, self.spec.tokens_per_call(batch, seq)
        # The user's module is copied before anything touches it: it is never mutated.
        module = copy.deepcopy(self.module).to(device=cfg.device, dtype=cfg.dtype).eval()
        return module, models.convert_inputs(self.inputs, cfg.device, cfg.dtype, batch), None


def resolve_models(model: Any, example_inputs: Any) -> list[ModelSource]:
    if isinstance(model, nn.Module):
        if example_inputs is None:
            raise UserError("a module needs example_inputs= (a tuple of positional args or a dict of keyword args).")
        return [ModelSource(type(model).__name__, module=model, inputs=models.check_inputs(example_inputs))]
    if example_inputs is not None:
        raise UserError("example_inputs= is only for an nn.Module; registry models build their own inputs.")
    names = [model] if isinstance(model, str) or model is None else list(model)
    out = []
    for n in names:
        for part in (n or models.DEFAULT_MODEL).split(","):
            if part.strip():
                spec = models.get(part.strip())
                out.append(ModelSource(spec.name, spec=spec))
    if not out:
        raise UserError(f"no model given; valid models: {', '.join(models.MODELS)}.")
    return out


def _autoquant_settings(value: Any):
    from .autoquant import SearchSettings  # the search imports this module's compile context

    return SearchSettings.of(value)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="cell", dynamic_ncols=True, leave=True)


def sweep(
    model: str | Sequence[str] | nn.Module | None = None,
    modes: str | Sequence[str] | None = "all",
    device: str = "auto",
    batch_sizes: Any = None,
    compile: bool = True,
    baseline: bool = True,
    out: str | os.PathLike | None = None,
    *,
    compile_mode: str = "default",
    torchao_tuning: bool = False,
    example_inputs: Any = None,
    dtype: str | torch.dtype | None = None,
    threads: int | None = None,
    seq_len: int | None = None,
    resume: bool = False,
    progress: bool = True,
    policy: measure.TimingPolicy | None = None,
    stop: threading.Event | None = None,
    on_row: Callable[[Row], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    autoquant: Any = None,
) -> ResultSet:
    """Measure every (model, batch size, mode) cell; returns the rows, also written to `out` if given.

    `model` is a registry name (see `torchao_nb.models.MODELS`), a list of them, or an `nn.Module`
    with `example_inputs=` (a tuple of positional args or a dict of keyword args). Rows are
    appended to `out/rows.jsonl` as they finish, so an interrupted sweep keeps them;
    `resume=True` skips cells already done there. `autoquant=` takes an `autoquant.SearchSettings`
    (or a dict of its fields, e.g. `{"sqnr_floor_db": 30}`) for the `autoquant` mode's search.
    """
    sources = resolve_models(model, example_inputs)
    mode_list = recipes.resolve_modes(modes)
    dev = envmod.resolve_device(device)
    info = envmod.device_info(dev)
    cfg = SweepConfig(
        models=tuple(s.name for s in sources), modes=tuple(mode_list), device=dev,
        dtype=envmod.resolve_dtype(dtype, info),
        batch_sizes=check_batch_sizes(batch_sizes if batch_sizes is not None else (1,)),
        compile=bool(compile), baseline=bool(baseline), threads=int(threads or torch.get_num_threads()),
        compile_mode=compile_mode or "default", torchao_tuning=bool(torchao_tuning),
        seq_len=seq_len, policy=policy or measure.TimingPolicy(), progress=bool(progress),
        autoquant=None if autoquant is None else _autoquant_settings(autoquant),
    )
    if cfg.compile_mode not in COMPILE_MODES:
        raise UserError(f"unknown compile mode {cfg.compile_mode!r}; choose one of: {', '.join(COMPILE_MODES)}.")
    if cfg.threads <= 0:
        raise UserError(f"threads must be positive, got {cfg.threads}.")
    out_dir = check_out_dir(out) if out is not None else None
    done: dict[tuple, Row] = {}
    if out_dir is not None:
        if resume:
            done = {r.key: r for r in read_jsonl(out_dir / ROWS_FILE) if r.status != "error"}
        else:
            _set_aside_previous(out_dir)

    environment = envmod.environment(dev, cfg.dtype, cfg.threads)
    environment.update(
        compile=cfg.compile, baseline=cfg.baseline, batch_sizes=list(cfg.batch_sizes),
        compile_mode=cfg.compile_mode, torchao_tuning=cfg.torchao_tuning,
        torchao_tuning_settings=[asdict(s) for s in baseline_mod.TORCHAO_TUNING] if cfg.torchao_tuning else [],
        timing_policy=asdict(cfg.policy),
        baseline_settings=[asdict(s) for s in baseline_mod.describe()] if cfg.baseline else [],
        modes={n: {"description": recipes.RECIPES[n].description,
                   "unsupported": recipes.RECIPES[n].unsupported_reason(info, cfg.dtype)} for n in mode_list},
    )
    environment["copy_gbs"] = _copy_gbs(dev, cfg.threads)
    if out_dir is not None:
        atomic_write(out_dir / "environment.json", json.dumps(environment, indent=1, default=str))

    rows: list[Row] = []
    keep = lambda r: (rows.append(r), on_row and on_row(r))  # noqa: E731
    total = len(sources) * len(cfg.batch_sizes) * len(mode_list)
    bar = _progress(total, progress)
    try:
        with torch_threads(cfg.threads), torch.no_grad(), quiet_logs():
            for src in sources:
                for batch in cfg.batch_sizes:
                    if stop is not None and stop.is_set():
                        break
                    todo = []
                    for mode in mode_list:
                        probe = Row(src.name, mode, batch, dev, envmod.dtype_name(cfg.dtype), cfg.compile, cfg.baseline, "ok",
                                    compile_mode=cfg.compile_mode if cfg.compile else "")
                        if probe.key in done:
                            keep(done[probe.key])
                            bar and bar.update(1)
                        else:
                            todo.append(mode)
                    if not todo:
                        continue
                    if bar:
                        bar.set_description(f"{src.name} bs={batch}: reference")
                    try:
                        module, inputs, tokens = src.build(cfg, batch)
                        ref = measure_reference(cfg, src.name, module, inputs, tokens, environment["copy_gbs"],
                                                src.spec and src.spec.task)
                    except Exception as e:  # the unquantized model itself fails: every cell says so
                        stub = Reference(src.name, None, None, None, None, 0)
                        for mode in todo:
                            row = _row(cfg, stub, mode, batch, "error", f"the unquantized model failed: {type(e).__name__}: {e}"[:500])
                            if out_dir is not None:
                                append_jsonl(out_dir / ROWS_FILE, row)
                            keep(row)
                            bar and bar.update(1)
                        continue
                    for mode in todo:
                        if stop is not None and stop.is_set():
                            break
                        if bar:
                            bar.set_description(f"{src.name} bs={batch}: {mode}")
                        row = run_cell(cfg, ref, mode, batch, clock)
                        if out_dir is not None:
                            append_jsonl(out_dir / ROWS_FILE, row)
                        keep(row)
                        bar and bar.update(1)
                    del ref, module, inputs
                    _free(dev)
    finally:
        if bar:
            bar.close()
        result = ResultSet(tuple(rows), environment)
        if out_dir is not None and rows:
            result.save(out_dir)
    return result
