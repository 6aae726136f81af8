"""A sweep's options, defined once (the API, the command line and the docs read them), and the validated SweepConfig."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch

from . import compile_cache, compiling, measure
from . import env as envmod
from . import modes as modes_mod
from .errors import Notice, UserError

MAX_BATCH = 1 << 20  # beyond this, inputs overflow memory or torch's index types: refused, not an error row
DEFAULT_CELL_TIMEOUT_S = 1800.0  # generous: a cold compile plus autoquant's search of a large model fits


@dataclass(frozen=True)
class Option:
    """One user-facing sweep option: `sweep(name=...)`, on the command line `flag` (None: API only), and in the
    panel a control labelled `label` (options without a flag aren't there either: the panel takes them itself)."""

    name: str
    default: Any
    help: str
    flag: str | None = None
    type: Callable | None = None  # the command line's parser; bool options get --x / --no-x
    label: str | None = None  # the panel's label; None: the name with spaces
    choices: tuple | None = None  # the values the panel offers in a list; None: typed in (or a checkbox for a bool)
    types: str | None = None  # sweep()'s annotation, where the parser's type and the default don't say it

    def annotation(self) -> str:
        """The annotation `sweep()` writes for this option (tests/test_options.py holds them together)."""
        if self.types is not None:
            return self.types
        kind = (self.type or type(self.default)).__name__
        return f"{kind} | None" if self.default is None else kind

    def text(self) -> str:
        return self.label or self.name.replace("_", " ")


OPTIONS: tuple[Option, ...] = (
    Option("device", "auto", " | ".join(envmod.DEVICES), "--device", str, choices=envmod.DEVICES),
    Option("dtype", None, "auto | bfloat16 | float16 | float32 (default: bf16 on CUDA and on CPUs with native bf16)",
           "--dtype", str, choices=("auto", *envmod.DTYPES), types="str | torch.dtype | None"),
    Option("batch_sizes", None, "batch sizes of registry models, e.g. 1,8 (default 1); your own module runs on its "
           "example inputs exactly as given", "--batch-sizes", str, types="int | str | Sequence[int] | None"),
    Option("seq_len", None, "sequence length of decoder and encoder models (default: each model's)", "--seq-len", int,
           label="sequence length"),
    Option("threads", None, "CPU threads (default: torch's default)", "--threads", int, label="CPU threads"),
    Option("compile", True, "torch.compile each cell", "--compile", bool, label="torch.compile each cell"),
    Option("baseline", True, "apply the seed's baseline compiler settings to compiled cells", "--baseline", bool,
           label="baseline settings"),
    Option("compile_mode", "default", "torch.compile mode: " + " | ".join(compiling.MODES)
           + " (reduce-overhead = CUDA graphs)", "--compile-mode", str, choices=compiling.MODES),
    Option("tuning", None, "inductor tuning of every compiled cell, the baseline included: torchao (its recommended "
           "settings: coordinate descent with the wide search, the slowest compile) | fast (coordinate descent without "
           "check_all_directions) | off (none) (default: torchao on CUDA, where int8/float8 weight-only need it; off "
           "on CPU, where it changes nothing; docs/compiler-settings.md gives each one's price)", "--tuning", str,
           choices=compiling.TUNINGS),
    Option("fullgraph", False, "compile your own module as one graph (a graph break is then an error row); "
           "built-in models always compile as one graph", "--fullgraph", bool),
    Option("diagnose", False, "add to each row a profiler table of its top kernels (GPU) or operators (CPU)",
           "--diagnose", bool),
    Option("isolate", True, "run the cells in a supervised worker process, so a crash or hang costs one row "
           "(off: --in-process, for debugging)", None),
    Option("cell_timeout_s", DEFAULT_CELL_TIMEOUT_S, "seconds a cell may take before it is stopped and recorded "
           "as an error (isolated runs only)", "--cell-timeout", float, label="cell timeout (s)"),
    Option("save_reload", True, "save each quantized model's state_dict, load it into a fresh model and check its "
           "output is unchanged; the row gets the size on disk", "--save-reload", bool, label="save and reload"),
    Option("cache", "warm", "warm | cold: warm times bursts of back-to-back calls, as a generation loop runs a model "
           "(a model that fits in the CPU's last-level cache or the GPU's L2 stays there); cold flushes that cache "
           "before each single call, so a small model reads its weights from memory as a large one does",
           "--cache", str, choices=measure.CACHES),
    Option("time_together", True, "time a group's modes (one model and batch size) together, in one set of rounds "
           "against one baseline; off: each cell alone with the baseline, its row saved as soon as it is timed (for "
           "a cluster's short time limit, or a stop pressed mid-group: together, a group's rows come at its end)",
           "--time-together", bool, label="time modes together"),
    Option("compile_cache", None, "a compile-cache.bin an earlier sweep saved in its results folder: its compiled "
           "graphs and kernels are loaded before the first compile, so the cells compile from it (a cache from "
           "another torch, torchao, Python or device kind is refused)", "--compile-cache", str,
           label="compile cache file", types="str | os.PathLike | None"),
    Option("save_compile_cache", False, "save the sweep's compiled graphs and kernels into the results folder "
           f"({compile_cache.FILE_NAME}), for --compile-cache of a later sweep (with out= only)",
           "--save-compile-cache", bool),
    Option("compile_workers", 0, "helper processes that compile a group's cells in parallel before they are timed "
           "(0: each cell compiles in turn); each fills the shared compile caches and exits, then the cells compile "
           "from them and are timed with no helper running; at most the CPU cores, and as many as fit in half the "
           "free memory", "--compile-workers", int),
    Option("policy", None, "a measure.TimingPolicy (default: measure.TimingPolicy(); --quick: measure.FAST_POLICY)",
           types="measure.TimingPolicy | None"),
)


@dataclass(frozen=True)
class Renamed:
    """An option's old spelling, still taken (with a Notice): `name=old` reads as `new=values[old]`; on the command
    line `flag` / `--no-flag` (not in --help)."""

    name: str
    flag: str
    new: str
    values: dict


RENAMED: tuple[Renamed, ...] = (
    Renamed("torchao_tuning", "--torchao-tuning", "tuning", {True: "torchao", False: "off"}),
)


def option_names() -> tuple[str, ...]:
    """Read when called, not at import: a test (or a plug-in) that adds an option sees it everywhere."""
    return tuple(o.name for o in OPTIONS)


@dataclass(frozen=True)
class SweepConfig:
    """Everything that defines a sweep, validated; device and dtype resolved."""

    modes: tuple[str, ...]
    device: str
    dtype: torch.dtype
    batch_sizes: tuple[int, ...] | None = (1,)  # None: a user's module runs on its inputs as given
    compile: compiling.CompileSettings = compiling.CompileSettings()
    threads: int = 1
    seq_len: int | None = None  # None: each model's default
    policy: measure.TimingPolicy = measure.TimingPolicy()
    progress: bool = False  # also the autoquant search's own progress bar
    mode_settings: tuple[tuple[str, object], ...] = ()  # (mode, its settings object) for modes that take settings
    isolate: bool = True
    cell_timeout_s: float = DEFAULT_CELL_TIMEOUT_S
    diagnose: bool = False
    save_reload: bool = True
    cache: str = "warm"  # one of measure.CACHES
    time_together: bool = True  # a group's modes in one set of rounds (rounds.py); off: each cell alone
    compile_cache: str | None = None  # the carried cache to load before the first compile (an absolute path)
    save_compile_cache: bool = False
    compile_cache_to: str | None = None  # where the worker saves the compile artifacts: set by the sweep from out=
    compile_workers: int = 0  # helpers that compile cells in parallel before they are timed (warmup.py)
    repro_to: str | None = None  # where wrong or crashed cells write their repro scripts: set by the sweep (repro.py)

    def settings_for(self, mode: str) -> object | None:
        return dict(self.mode_settings).get(mode)


def check_batch_sizes(batch_sizes: Any) -> tuple[int, ...]:
    if isinstance(batch_sizes, (int, str)):
        batch_sizes = str(batch_sizes).split(",")
    out = []
    for b in batch_sizes:
        try:
            n = int(str(b).strip())
        except ValueError:
            raise UserError(f"batch size {b!r} is not a whole number; give positive integers like 1,8.") from None
        if n <= 0:
            raise UserError(f"batch size must be a positive integer, got {n}.")
        if n > MAX_BATCH:
            raise UserError(f"batch size {n} is more than {MAX_BATCH:,}: no model input that large fits in memory; "
                            "give a smaller one.")
        out.append(n)
    if not out:
        raise UserError("no batch size given; give positive integers like 1,8.")
    return tuple(dict.fromkeys(out))


_TEXT_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def check_bool(name: str, value: Any, from_text: bool = False) -> bool:
    """True or False; from text (a notebook parameter, a plan file), also true/false/yes/no/1/0 in any case.
    Anything else is a UserError naming the option: bool("no") is True, so a string is never taken as is."""
    if isinstance(value, bool):
        return value
    if from_text and isinstance(value, (str, int)) and str(value).strip().lower() in _TEXT_BOOLS:
        return _TEXT_BOOLS[str(value).strip().lower()]
    forms = "True or False (or the text true/false/yes/no/1/0)" if from_text else "True or False"
    raise UserError(f"{name} must be {forms}, got {value!r}.")


def _positive(name: str, value: Any) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a positive whole number, got {value!r}.") from None
    if n <= 0 or n != value:
        raise UserError(f"{name} must be a positive whole number, got {value!r}.")
    return n


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UserError(f"{name} must be a whole number, 0 or more, got {value!r}.")
    return value


def split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(sweep options, per-mode settings such as autoquant={...}); an unknown name is a UserError."""
    options = _renamed(options)
    with_settings = {n for n, m in modes_mod.MODES.items() if m.settings is not None}
    names = option_names()
    unknown = sorted(set(options) - set(names) - with_settings)
    if unknown:
        valid = ", ".join(names + tuple(sorted(with_settings)))
        raise UserError(f"unknown sweep option(s) {', '.join(unknown)}; valid: {valid}.")
    return ({k: v for k, v in options.items() if k in names},
            {k: v for k, v in options.items() if k in with_settings})


def _renamed(options: dict[str, Any]) -> dict[str, Any]:
    """Old spellings read as today's, each said once in a Notice; given together with today's, they must agree."""
    out = dict(options)
    for r in RENAMED:
        old = out.pop(r.name, None)
        if old is None:
            continue
        value = r.values[check_bool(r.name, old)]
        if out.get(r.new) not in (None, value):
            raise UserError(f"{r.name}={old!r} says {r.new}={value!r}, but {r.new}={out[r.new]!r} was given too; "
                            f"give only {r.new}.")
        out[r.new] = value
        warnings.warn(f"{r.name}={old!r} is now {r.new}={value!r} (on the command line --{r.new.replace('_', '-')} "
                      f"{value}); the old spelling still works", Notice, stacklevel=5)
    return out


def default_tuning(device: str) -> str:
    """torchao's settings on CUDA, where int8/float8 weight-only need them; none on a CPU, where they change nothing."""
    return "torchao" if device == "cuda" else "off"


def build(mode_list: list[str], user_module: bool, progress: bool, **options: Any) -> SweepConfig:
    """Validate every option before anything runs; a bad one is a UserError that says what to give."""
    opts, settings = split_options(options)
    o = {op.name: op.default for op in OPTIONS} | {k: v for k, v in opts.items() if v is not None or k == "batch_sizes"}
    device = envmod.resolve_device(o["device"])
    info = envmod.device_info(device)
    if o["compile_mode"] not in compiling.MODES:
        raise UserError(f"unknown compile mode {o['compile_mode']!r}; choose one of: {', '.join(compiling.MODES)}.")
    if o["tuning"] is not None and o["tuning"] not in compiling.TUNINGS:
        raise UserError(f"unknown tuning {o['tuning']!r}; choose one of: {', '.join(compiling.TUNINGS)} "
                        "(docs/compiler-settings.md gives each one's compile time and speed).")
    if o["batch_sizes"] is not None and user_module:
        raise UserError("batch_sizes apply to registry models; your module runs on its example_inputs exactly as "
                        "given (their first dimension is the row's batch size). For another batch size, give "
                        "inputs of that size.")
    for option in OPTIONS:
        if isinstance(option.default, bool) or option.type is bool:
            if o[option.name] is not None:
                o[option.name] = check_bool(option.name, o[option.name])
    timeout = o["cell_timeout_s"]
    if not isinstance(timeout, (int, float)) or not timeout > 0:
        raise UserError(f"cell_timeout_s must be a positive number of seconds, got {timeout!r}.")
    if o["policy"] is not None and not isinstance(o["policy"], measure.TimingPolicy):
        raise UserError(f"policy must be a torchao_nb.measure.TimingPolicy, not {type(o['policy']).__name__}.")
    if o["policy"] is not None:
        _check_policy(o["policy"])
    if o["cache"] not in measure.CACHES:
        raise UserError(f"cache must be one of {', '.join(measure.CACHES)}, got {o['cache']!r}.")
    cfg = SweepConfig(
        modes=tuple(mode_list), device=device, dtype=envmod.resolve_dtype(o["dtype"], info),
        batch_sizes=None if user_module else check_batch_sizes(o["batch_sizes"] or (1,)),
        compile=compiling.CompileSettings(
            bool(o["compile"]), o["compile_mode"], bool(o["baseline"]),
            o["tuning"] or default_tuning(device), bool(o["fullgraph"])),
        threads=_positive("threads", o["threads"]) or torch.get_num_threads(),
        seq_len=_positive("seq_len", o["seq_len"]),
        policy=o["policy"] or measure.TimingPolicy(), progress=bool(progress),
        mode_settings=tuple((name, modes_mod.MODES[name].parse_settings(value)) for name, value in settings.items()),
        isolate=bool(o["isolate"]), cell_timeout_s=float(timeout), diagnose=bool(o["diagnose"]),
        save_reload=bool(o["save_reload"]), cache=o["cache"], time_together=bool(o["time_together"]),
        compile_cache=None if o["compile_cache"] is None else compile_cache.check(o["compile_cache"], device),
        save_compile_cache=bool(o["save_compile_cache"]),
        compile_workers=_count("compile_workers", o["compile_workers"]),
    )
    _warn_unusual(cfg, opts)
    return cfg


def _check_policy(policy: measure.TimingPolicy) -> None:
    """Every field a number of its default's kind, none negative, and at least one copy and one sample: a
    hand-edited plan's "max_samples": "lots" is refused before anything runs, not in every cell."""
    for f in dataclasses.fields(policy):
        value, kind = getattr(policy, f.name), type(f.default)
        ok = not isinstance(value, bool) and (isinstance(value, int) if kind is int else isinstance(value, (int, float)))
        if not ok or value < 0 or (f.name in ("replicates", "min_samples", "max_samples", "block") and value < 1):
            what = "a positive whole number" if kind is int else "a number of seconds, 0 or more"
            raise UserError(f"policy.{f.name} must be {what}, got {value!r}.")


def policy_from_dict(data: Any) -> measure.TimingPolicy:
    """A timing policy stored as JSON (a plan unit), checked as sweep() checks one."""
    names = {f.name for f in dataclasses.fields(measure.TimingPolicy)}
    if not isinstance(data, dict) or set(data) - names:
        unknown = ", ".join(sorted(set(data) - names)) if isinstance(data, dict) else repr(data)
        raise UserError(f"policy has unknown field(s) {unknown}; valid: {', '.join(sorted(names))}.")
    policy = measure.TimingPolicy(**data)
    _check_policy(policy)
    return policy


def cpu_cores() -> int:
    """The cores this process may run on (a container or taskset can allow fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _warn_unusual(cfg: SweepConfig, given: dict[str, Any]) -> None:
    """Settings that are valid but don't do what they seem to here: one Notice each, never an error."""
    notes = []
    if cfg.device == "cpu" and cfg.threads > cpu_cores():
        notes.append(f"threads={cfg.threads} is more than the {cpu_cores()} CPU cores this process may use: the cells "
                     "run oversubscribed, slower and noisier than with at most that many")
    if given.get("compile_mode") not in (None, "default") and not cfg.compile.enabled:
        notes.append(f"compile mode {cfg.compile.mode!r} has no effect: compile is off")
    elif cfg.compile.enabled and cfg.device == "cpu" and cfg.compile.mode == "reduce-overhead":
        notes.append("compile mode 'reduce-overhead' captures CUDA graphs, which don't exist on the CPU: there it "
                     "compiles like 'default' (the rows still say reduce-overhead)")
    if cfg.compile_workers and not (cfg.isolate and cfg.compile.enabled):
        notes.append(f"compile_workers={cfg.compile_workers} has no effect: its helpers compile cells "
                     + ("before a worker process times them, and the cells run in this process (isolate=False)"
                        if cfg.compile.enabled else "and compile is off"))
    for note in notes:
        warnings.warn(note, Notice, stacklevel=4)


def mode_settings_text(cfg: SweepConfig, mode: str) -> str:
    """The row's `mode_settings`: the mode's own settings (its defaults when none were given) that change what it
    measures, as JSON; "" for a mode without settings."""
    spec = modes_mod.MODES.get(mode)
    if spec is None or spec.settings is None:
        return ""
    settings = cfg.settings_for(mode) or spec.settings.of(None)
    data = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings) if f.metadata.get("in_key", True)}
    return json.dumps(data, sort_keys=True, default=str)


def settings_dict(cfg: SweepConfig) -> dict[str, Any]:
    """The config as JSON-ready data for environment.json."""
    out = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in ("mode_settings", "dtype")}
    out["dtype"] = envmod.dtype_name(cfg.dtype)
    out["compile"] = dataclasses.asdict(cfg.compile)
    out["policy"] = dataclasses.asdict(cfg.policy)
    out["mode_settings"] = {m: dataclasses.asdict(s) if dataclasses.is_dataclass(s) else repr(s)
                            for m, s in cfg.mode_settings}
    return json.loads(json.dumps(out, default=str))  # as environment.json will hold it
