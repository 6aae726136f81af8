"""The text of a standalone repro script (torch and torchao only): a torchao config as code, the compile settings
as lines, the pieces of a model and the template that runs one and judges it as the sweep did."""

from __future__ import annotations

import ast
import dataclasses
import enum
import importlib
import inspect
import math
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import baseline, compiling
from . import env as envmod
from . import modes as modes_mod
from ._torchao import torchao_version
from .checks import WRONG_BELOW_DB

REPRODUCES = "reproduces:"  # what a script prints before it exits 1 for a wrong output
BUILT = "quantizing"  # printed once the unquantized piece ran: a failure before it is the script's, not the bug
KIND_LINE = "# kind: "  # the script's own line saying what failure it shows (read back by `repro OUT --issue`)

# ---- what failed, and how a try shows it --------------------------------------------------------------------

@dataclass(frozen=True)
class Tried:
    """One run of a script: its exit code (None: still running at its time limit, then stopped) and its output."""

    returncode: int | None
    stdout: str = ""
    stderr: str = ""

    def exit_text(self) -> str:
        if self.returncode is None:
            return "still running at its time limit (stopped)"
        if self.returncode < 0:
            with_name = signal.Signals(-self.returncode).name if -self.returncode in signal.valid_signals() else "?"
            return f"exit {self.returncode} ({with_name}; a shell says {128 - self.returncode})"
        return f"exit {self.returncode}"


@dataclass(frozen=True)
class Kind:
    """A kind of failure: how a script run shows it, and what a bug report says was expected instead."""

    what: str
    expected: str
    shown_by: Callable[[Tried], bool]


KINDS: dict[str, Kind] = {
    "wrong": Kind("the quantized output is wrong",
                  f"an output close to the unquantized model's (SQNR at least {WRONG_BELOW_DB:g} dB; int8 reads "
                  "30-45 dB, int4 10-20 dB)", lambda t: t.returncode == 1 and REPRODUCES in t.stdout),
    "crash": Kind("the process crashes", "the quantized model runs and returns its output",
                  lambda t: BUILT in t.stdout and t.returncode is not None and t.returncode < 0),
    "error": Kind("torch or torchao raises an exception", "the quantized model runs and returns its output",
                  lambda t: BUILT in t.stdout and t.returncode == 1 and "Traceback" in t.stderr),
    "hang": Kind("the quantized model does not finish", "the quantized model returns within seconds",
                 lambda t: BUILT in t.stdout and t.returncode is None),
}


# ---- a torchao config as code ----------------------------------------------------------------------------------

def _public_name(cls: type, imports: set[str]) -> str:
    """`Int8WeightOnlyConfig`, with `from torchao.quantization import Int8WeightOnlyConfig` added to `imports`: the
    shortest importable parent of its defining module that exports the same class."""
    parts, top = cls.__module__.split("."), cls.__qualname__.split(".")[0]
    for i in range(1, len(parts) + 1):
        module = ".".join(parts[:i])
        try:
            found = getattr(importlib.import_module(module), top)
        except (ImportError, AttributeError):
            continue
        if found is getattr(importlib.import_module(cls.__module__), top):
            imports.add(f"from {module} import {top}")
            return cls.__qualname__
    raise ValueError(f"{cls.__qualname__} can't be imported by name from {cls.__module__}")


def _is_default(f: dataclasses.Field, value: Any) -> bool:
    try:
        if f.default is not dataclasses.MISSING:
            return bool(value == f.default) and type(value) is type(f.default)
        if f.default_factory is not dataclasses.MISSING:
            made = f.default_factory()
            return bool(value == made) and type(value) is type(made)
    except Exception:  # a value whose == is not a bool (a tensor): write it out
        return False
    return False


def code_of(value: Any, imports: set[str]) -> str:
    """Python code that builds `value` (a torchao config and what it holds), the modules it needs added to `imports`.
    A config's repr is not code (layouts, granularities and enums print as their own reprs): it is built from fields."""
    if isinstance(value, enum.Enum):  # before str and int: torchao's enums are str enums
        return f"{_public_name(type(value), imports)}.{value.name}"
    if value is None or isinstance(value, (bool, int, str)):
        return repr(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f"float({str(value)!r})"
    if isinstance(value, torch.dtype):
        imports.add("import torch")
        return str(value)
    if isinstance(value, (list, tuple)):
        items = ", ".join(code_of(v, imports) for v in value)
        return f"[{items}]" if isinstance(value, list) else f"({items}{',' if len(value) == 1 else ''})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{code_of(k, imports)}: {code_of(v, imports)}" for k, v in value.items()) + "}"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        args = [f"{f.name}={code_of(getattr(value, f.name), imports)}" for f in dataclasses.fields(value)
                if f.init and not _is_default(f, getattr(value, f.name))]
        return f"{_public_name(type(value), imports)}({', '.join(args)})"
    cls = type(value)
    try:  # a plain class without state (a layout): its no-argument constructor builds an equal object
        if cls() == value:
            return f"{_public_name(cls, imports)}()"
    except Exception:
        pass
    raise ValueError(f"can't write a {cls.__name__} ({value!r}) as code")


def config_code(config: Any) -> tuple[str, list[str]]:
    """(the code that builds `config`, the import lines it needs)."""
    imports: set[str] = set()
    code = code_of(config, imports)
    return code, sorted(imports)


# ---- how the mode quantizes a piece ----------------------------------------------------------------------------

def _quantize_call(config: Any, fqns: set[str] | None) -> tuple[str, list[str]]:
    code, imports = config_code(config)
    only = "" if fqns is None else (f", filter_fn=lambda mod, fqn: isinstance(mod, torch.nn.Linear) and fqn in "
                                    f"{sorted(fqns)!r}")
    return f"config = {code}\nquantize_(model, config{only})", imports + ["from torchao.quantization import quantize_"]


def torchao_code(mode: modes_mod.Mode, layers: dict[str, nn.Linear], info: envmod.DeviceInfo, dtype: torch.dtype,
                 settings: object | None) -> tuple[str, list[str]]:
    """A mode's quantize_ calls for `layers` (name in `model` → Linear), as code: its config, or each layer's
    (int4's group sizes) with a filter naming the layers that take it."""
    if mode.layer_config is None:
        config = mode.config(info, dtype)
        if config is None:
            return "", []
        return _quantize_call(config, None if list(layers) == [""] else set(layers))
    groups: dict[str, tuple[Any, set[str]]] = {}
    for fqn, lin in layers.items():
        config, label = mode.layer_config(lin, info, dtype, settings)
        groups.setdefault(label, (config, set()))[1].add(fqn)
    lines, imports = [], set()
    for config, fqns in groups.values():
        code, needs = _quantize_call(config, None if fqns == {""} else fqns)
        lines.append(code)
        imports.update(needs)
    return "\n".join(lines), sorted(imports)


def quantize_code(mode_name: str, layers: dict[str, nn.Linear], info: envmod.DeviceInfo, dtype: torch.dtype,
                  settings: object | None) -> tuple[str, list[str]]:
    """(statements that quantize `model` as the mode does, with torch and torchao only; their imports). A mode with
    its own `repro_code` says it itself; one with its own `apply` (autoquant's search) and none gets no repro."""
    mode = modes_mod.get(mode_name)
    if mode.repro_code is not None:
        return mode.repro_code(layers, info, dtype, settings), []
    if mode.apply is not None:
        raise ValueError(f"{mode_name} quantizes with a search of torchao_nb's own, which a torch + torchao script "
                         "can't repeat: run the mode it chose (the row's per-layer table) to get a repro")
    return torchao_code(mode, layers, info, dtype, settings)


def compile_lines(settings: compiling.CompileSettings, device: str) -> list[str]:
    """The dynamo/inductor config values the cell compiled under, as `torch._inductor.config.x = v` lines."""
    if not settings.enabled:
        return []
    chosen = (baseline.BASELINE_SETTINGS if settings.baseline else ()) + (
        baseline.TUNINGS[settings.tuning].settings)
    lines = []
    for state in baseline.describe(chosen, device):
        if state.applied:
            lines.append(f"{state.key} = {state.new!r}" + (f"  # {state.effect}" if state.effect else ""))
    return list(dict.fromkeys(lines))


# ---- the pieces of a model, and the script for one -------------------------------------------------------------

@dataclass(frozen=True)
class Piece:
    """A part of the failing model a script builds (one Linear at the input it saw, or the whole model), with the
    mode's quantize code."""

    what: str  # "fc2: nn.Linear(1000, 3000) on an input of shape (2, 1000)"
    build: str  # code that defines `model` and `inputs`
    quantize: str  # code that quantizes `model` in place
    imports: tuple[str, ...]
    whole: bool = False  # the whole model, from its class's source


def tensor_code(t: torch.Tensor, device: str) -> str:
    """A seeded tensor of `t`'s shape and dtype: normal values, or integers below t's largest (token ids)."""
    shape = tuple(t.shape)
    if t.is_floating_point():
        return f"torch.randn({shape}, device={device!r}, dtype={t.dtype})"
    if t.dtype == torch.bool:
        return f"torch.ones({shape}, device={device!r}, dtype=torch.bool)"
    high = int(t.max()) + 1 if t.numel() else 1
    return f"torch.randint(0, {high}, {shape}, device={device!r}, dtype={t.dtype})"


def inputs_code(inputs: Any, device: str) -> str:
    """`inputs = (...)` and `kwargs = {...}`: a model's positional or keyword inputs, tensors seeded anew."""
    def value(v):
        return tensor_code(v, device) if isinstance(v, torch.Tensor) else code_of(v, set())
    if isinstance(inputs, dict):
        return "inputs = ()\nkwargs = {" + ", ".join(f"{k!r}: {value(v)}" for k, v in inputs.items()) + "}"
    return f"inputs = ({''.join(value(v) + ', ' for v in inputs).rstrip()})\nkwargs = {{}}"


def linear_piece(fqn: str, lin: nn.Linear, shape: tuple[int, ...], in_dtype: torch.dtype, device: str,
                 quantize: tuple[str, list[str]]) -> Piece:
    bias = lin.bias is not None
    build = (f"model = torch.nn.Linear({lin.in_features}, {lin.out_features}, bias={bias}, device={device!r}, "
             f"dtype={lin.weight.dtype})\n"
             + inputs_code((torch.empty(shape, dtype=in_dtype, device="meta"),), device))
    what = f"{fqn or 'the model'}: nn.Linear({lin.in_features}, {lin.out_features}, bias={bias}) on an input of shape {shape}"
    return Piece(what, build, quantize[0], tuple(quantize[1]))


def standalone_source(cls: type) -> str | None:
    """The file that defines a user's model class, kept to its definitions (imports, functions, classes, plain
    assignments; no `__main__` block), when it stands alone: None when it imports relatively or from torchao_nb."""
    try:
        text = Path(inspect.getsourcefile(cls) or "").read_text()
        tree = ast.parse(text)
    except (TypeError, OSError, SyntaxError):
        return None
    lines, kept = text.splitlines(), []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "torchao_nb"):
            return None
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "torchao_nb" for a in node.names):
            return None
        plain = isinstance(node, (ast.Assign, ast.AnnAssign)) and not any(isinstance(n, ast.Call) for n in ast.walk(node))
        if plain or isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            kept.append("\n".join(lines[start - 1:node.end_lineno]))
    return "\n\n".join(kept) if any(f"class {cls.__name__}" in k for k in kept) else None


def whole_piece(module: nn.Module, inputs: Any, device: str, dtype: torch.dtype,
                quantize: tuple[str, list[str]]) -> Piece | None:
    """The whole model from its class's source file, built with no arguments (seeded weights), on seeded inputs."""
    cls = type(module)
    source = standalone_source(cls)
    if source is None:
        return None
    try:
        given = inputs_code(inputs, device)
    except ValueError:  # an input that is not code
        return None
    build = (f"# ---- the model's own source ({Path(inspect.getsourcefile(cls)).name}) ----\n{source}\n# ----\n\n"
             f"model = {cls.__qualname__}().to(device={device!r}, dtype={dtype}).eval()\n{given}")
    return Piece(f"the whole model: {cls.__qualname__} from its source", build, quantize[0], tuple(quantize[1]), True)


@dataclass(frozen=True)
class Capture:
    """What a failing cell needs, in plain values: enough to write its scripts with torch and torchao only."""

    model: str
    mode: str
    batch: int
    device: str
    dtype: str
    threads: int
    compile: compiling.CompileSettings
    kind: str  # a key of KINDS
    found: str  # the row's reason: how torchao_nb found it
    pieces: tuple[Piece, ...]


SCRIPT = '''\
# {title}
#
# Found by torchao_nb ({how}): {found}
# This piece: {what}
# torch {torch}, torchao {torchao}, Python {python}
# device: {device} ({device_name}); CPU: {cpu}; {threads} thread(s)
# torchao config: {config}
# compile: {compile_text}
{kind_line}{kind}
# Run it with plain `python`: it exits 1 when the bug reproduces, 0 when it does not; a crash ends it by its
# signal (exit 139 / -11 for a segmentation fault).
import math
import sys

import torch
{imports}{settings}
torch.set_num_threads({threads})
torch.set_grad_enabled(False)
torch.manual_seed(0)  # seeded weights and inputs of the captured shapes (never the user's data)

{build}
expected = model(*inputs, **kwargs)  # the unquantized output: the reference

print("{built}", flush=True)
{quantize}
{compiled}
out = fn(*inputs, **kwargs)


def flat(x):  # every floating tensor of an output (a tensor, tuple, list or dict) as one vector
    if isinstance(x, torch.Tensor):
        return [x.detach().double().flatten().cpu()] if x.is_floating_point() else []
    values = x.values() if isinstance(x, dict) else x if isinstance(x, (list, tuple)) else []
    return [t for v in values for t in flat(v)]


WRONG_BELOW_DB = {threshold}  # torchao_nb's line: an SQNR below it is a wrong output, not an inaccurate one
ref, got = torch.cat(flat(expected)), torch.cat(flat(out))
noise, signal = torch.linalg.vector_norm(ref - got).item(), torch.linalg.vector_norm(ref).item()
sqnr = math.inf if noise == 0 else (20 * math.log10(signal / noise) if signal > 0 else -math.inf)
bad = int((~torch.isfinite(got)).sum())
print(f"SQNR {{sqnr:.1f}} dB against the unquantized output, {{bad}} NaN/inf values (wrong below {{WRONG_BELOW_DB}} dB)")
if bad or sqnr < WRONG_BELOW_DB:
    print("{reproduces} the quantized output is wrong")
    sys.exit(1)
print("does not reproduce: the quantized output is right")
'''


def _compile_text(settings: compiling.CompileSettings) -> str:
    if not settings.enabled:
        return "off (eager)"
    extras = [f"mode={settings.mode}"] + (["fullgraph=True"] if settings.fullgraph else [])
    flags = [n for n, on in (("torchao_nb's baseline settings", settings.baseline),
                             (f"inductor tuning '{settings.tuning}'", settings.tuning != "off")) if on]
    return f"torch.compile({', '.join(extras)})" + (f" with {' and '.join(flags)} (set below)" if flags else "")


def script(cap: Capture, piece: Piece) -> str:
    """The whole standalone script for one piece."""
    settings = compile_lines(cap.compile, cap.device)
    imports = _merged(set(piece.imports) | ({"import torch._dynamo.config", "import torch._inductor.config"}
                                            if settings else set()))
    if cap.compile.enabled:
        args = ([f"mode={cap.compile.mode!r}"] if cap.compile.mode != "default" else []) + (
            ["fullgraph=True"] if cap.compile.fullgraph else [])
        compiled = (f"fn = torch.compile(model{''.join(', ' + a for a in args)})\n"
                    'print("compiling and calling the quantized model", flush=True)')
    else:
        compiled = 'fn = model\nprint("calling the quantized model (eager)", flush=True)'
    info = envmod.device_info(cap.device)
    return SCRIPT.format(
        title=_title(cap, piece),
        how=f"a sweep cell, model {cap.model}, mode {cap.mode}, batch {cap.batch}", found=one_line(cap.found),
        what=piece.what, torch=torch.__version__, torchao=torchao_version() or "not installed",
        python=sys.version.split()[0], device=cap.device, device_name=info.name, cpu=envmod.cpu_model(),
        threads=cap.threads, config=_configs_of(piece), compile_text=_compile_text(cap.compile),
        kind_line=KIND_LINE, kind=cap.kind, imports="".join(f"{i}\n" for i in imports if i != "import torch"),
        settings="\n" + "".join(f"{line}\n" for line in settings) if settings else "", build=piece.build,
        quantize=piece.quantize or "pass  # this mode leaves the model as it is", compiled=compiled,
        threshold=WRONG_BELOW_DB, reproduces=REPRODUCES, built=BUILT)


def _title(cap: Capture, piece: Piece) -> str:
    """What a bug tracker's title says: the config, compiled or not, what goes wrong, on what."""
    made = _configs_of(piece, "")
    what = made.split("(", 1)[0] if made else f"torchao_nb mode {cap.mode}"
    compiled = " + torch.compile" if cap.compile.enabled else ""
    on = piece.what.split(": ", 1)[-1].replace(" on an input of shape ", " on ")
    return f"{what}{compiled}: {KINDS[cap.kind].what} ({on}, {cap.dtype}, {cap.device})"


def _merged(imports: set[str]) -> list[str]:
    """`import a` lines, then one `from m import x, y` line per module."""
    names: dict[str, list[str]] = {}
    for line in sorted(i for i in imports if i.startswith("from ")):
        module, _, name = line[len("from "):].partition(" import ")
        names.setdefault(module, []).append(name)
    return sorted(i for i in imports if i.startswith("import ")) + [
        f"from {m} import {', '.join(sorted(set(n)))}" for m, n in names.items()]


def _configs_of(piece: Piece, none: str = "none: the mode's own code, below") -> str:
    """The config(s) the piece's quantize code builds, for the header; a mode's own code has none."""
    made = [line.split("=", 1)[1].strip() for line in piece.quantize.splitlines() if line.startswith("config = ")]
    return "; ".join(made) or none


def one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
