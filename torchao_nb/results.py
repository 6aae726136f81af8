"""Result rows and result sets: frozen dataclasses that round-trip through CSV, JSON and JSON Lines."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import tempfile
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from . import fields
from .errors import Notice
from .extras import Extra, Extras
from .spec import CELL_FIELDS, KEY_FIELDS, SETTING_FIELDS, CellSpec  # noqa: F401 (the names readers use)

# ok: measured; skipped: can't run here (reason says why); error: failed or crashed (reason: what);
# wrong: ran, but its output is not finite or far from the unquantized one (reason: the numbers), never timed.
STATUSES = ("ok", "skipped", "error", "wrong")
# The version of the results files' layout (results.json, rows.jsonl, results.csv). A file without one was
# written before versions were recorded: version 1, the same layout. 2: the bool `torchao_tuning` became
# `tuning` (torchao | fast | off); files of version 1 still load (RENAMED_FIELDS), and a reader of version 1
# refuses version 2 in one line rather than reading every row as untuned.
SCHEMA_VERSION = 2
SCHEMA_KEY = "schema_version"
# Fields renamed since version 1: old name → (new name, old value → new value, also as the CSV writes it).
RENAMED_FIELDS = {"torchao_tuning": ("tuning", {True: "torchao", False: "off", "True": "torchao", "False": "off"})}


@dataclass(frozen=True)
class Row:
    """One cell of a sweep: its spec (CellSpec's fields, flat: `row.spec`) and what was measured."""

    model: str
    mode: str
    batch_size: int
    device: str
    dtype: str
    compile: bool
    baseline: bool  # were the seed's baseline compiler settings applied
    status: str  # one of STATUSES
    reason: str = ""
    median_ms: float | None = None  # per call
    iqr_ms: float | None = None
    samples: int | None = None  # rounds: each took one burst of every function timed with the mode
    replicates: int | None = None  # independently allocated copies of the mode and of the baseline, each timed
    noisy: bool | None = None  # IQR > 10% of the median
    baseline_ms: float | None = None  # the unquantized reference, compiled when compile is on
    eager_ms: float | None = None  # the unquantized reference, eager
    speedup: float | None = None  # vs the compiled baseline: median over rounds of baseline / mode (the seed's comparison)
    speedup_lo: float | None = None  # its bootstrap 95 % interval
    speedup_hi: float | None = None
    speedup_vs_eager: float | None = None  # the same against the eager unquantized model
    speedup_vs_eager_lo: float | None = None
    speedup_vs_eager_hi: float | None = None
    synced_ms: float | None = None  # CUDA: median of single calls each followed by a sync (median_ms: back-to-back)
    sampling: str = ""  # how samples were taken (host clock, CUDA events, L2 flushed)
    compile_s: float | None = None  # compile + first call
    quantize_s: float | None = None
    search_s: float | None = None  # autoquant: the per-layer search, part of quantize_s
    sqnr_db: float | None = None  # vs the unquantized eager output on the same inputs; None = identical
    cosine: float | None = None
    max_abs_err: float | None = None
    weight_bytes: int | None = None
    peak_mem_bytes: int | None = None  # CUDA: peak allocated; CPU: growth of peak RSS while timing
    peak_reserved_bytes: int | None = None  # CUDA only
    layers_quantized: int | None = None
    layers_total: int | None = None
    graphs: int | None = None  # graphs dynamo compiled; 0 with compile on would mean eager ran
    graph_breaks: int | None = None  # named in extra["graph_breaks"]
    recompiles: int | None = None  # compiles after the first call (while measuring): named in extra
    cudagraph_skips: int | None = None  # CUDA graphs inductor gave up on (reduce-overhead)
    fx_cache: str = ""  # FX graph cache hits/misses of the first call
    tokens_per_s: float | None = None  # decoders: tokens produced per second
    bytes_per_step: int | None = None  # weights and buffers a step reads (embedding tables are looked up, not
    # streamed) plus input and output tensors
    achieved_gbs: float | None = None  # bytes_per_step / median latency
    roofline_pct: float | None = None  # achieved_gbs as % of the device's measured copy bandwidth (None: fits in cache)
    fits_in_cache: bool | None = None  # bytes_per_step fit in the last-level cache (CPU) / L2 (GPU): no roofline
    perplexity: float | None = None  # causal LMs: on the model's fixed text (extra["perplexity_text"] names it)
    perplexity_change_pct: float | None = None  # vs the unquantized model's perplexity, in %
    agreement: float | None = None  # causal LMs: share of greedy new tokens equal to the unquantized model's (0-1)
    ttft_ms: float | None = None  # a generation: the prompt's prefill (eager) and the first new token
    decode_ms: float | None = None  # a generation: median time of one decode step (the timed, compiled callable)
    gen_tokens_per_s: float | None = None  # a generation end to end: new tokens / (ttft + every decode step)
    disk_bytes: int | None = None  # the quantized model's state_dict saved with torch.save (None: not saved)
    reload_equal: bool | None = None  # loaded back into a fresh model, its output equals the quantized one's
    threads: int | None = None
    compile_mode: str = ""  # torch.compile mode when compile is on ("default", "reduce-overhead", ...)
    seq_len: int | None = None  # a registry model's sequence length (None: a user's module)
    device_name: str = ""  # the GPU or CPU model that ran the cell
    tuning: str = "off"  # the inductor tuning of compiled cells: torchao | fast | off (compiling.TUNINGS)
    torch_version: str = ""
    torchao_version: str = ""
    timing: str = ""  # the timing policy: "bursts", "quick" (--quick) or "custom-<hash of its fields>"
    cache: str = ""  # "warm": bursts of back-to-back calls; "cold": caches flushed before each call
    mode_settings: str = ""  # JSON of the mode's own settings that change what it measures (autoquant's floor, ...)
    model_signature: str = ""  # a user's module: a hash of its structure, weights' shapes and inputs' shapes
    recipe: str = ""  # the exact torchao config, JSON
    extra: str = ""  # JSON of the row's extras (extras.py: one kind per detail); typed: `row.extras`

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")
        for name, kinds in _KINDS.items():  # a hand-edited or damaged file must not reach a table as "fast" ms
            value = getattr(self, name)
            if value is not None and (not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool))):
                raise ValueError(f"{name} must be {_KIND_TEXT[kinds]}, not {value!r}"[:120])
        if self.extra:
            try:
                extra = json.loads(self.extra)
            except ValueError:
                raise ValueError("extra is not JSON") from None
            if not isinstance(extra, dict):
                raise ValueError("extra is not a JSON object")

    @classmethod
    def of(cls, spec: CellSpec, status: str, reason: str = "", **numbers: Any) -> "Row":
        """The row of a cell: its spec and what was measured (or why not)."""
        return cls(**spec.as_dict(), status=status, reason=reason, **numbers)

    @property
    def spec(self) -> CellSpec:
        return CellSpec.of(self)

    @property
    def key(self) -> tuple:
        """What identifies a cell, for --resume and for matching runs (CellSpec.key)."""
        return self.spec.key

    @property
    def extras(self) -> Extras:
        """The extra JSON, typed: `row.extras.of(SaveReload)`; keys this version doesn't know are in .unknown."""
        return Extras.parse(self.extra)

    def extra_of(self, kind: type[E]) -> E | None:
        return self.extras.of(kind) if self.extra else None

    @property
    def sqnr_value(self) -> float | None:
        """The row's SQNR: inf when its output was identical to the unquantized one, None when not measured."""
        return sqnr_or_inf(self.sqnr_db) if self.cosine is not None else None

    @property
    def extra_dict(self) -> dict:
        return json.loads(self.extra) if self.extra else {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Row":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in renamed_fields(data).items() if k in names})


def renamed_fields(data: dict[str, Any]) -> dict[str, Any]:
    """A row's fields as read, with the old names of RENAMED_FIELDS under their new names and values."""
    out = dict(data)
    for old, (new, values) in RENAMED_FIELDS.items():
        if old in out:
            value = out.pop(old)
            out.setdefault(new, values.get(value, value) if isinstance(value, (bool, str)) else value)
    return out


def sqnr_or_inf(sqnr_db: float | None) -> float:
    """SQNR as a number. measure.accuracy leaves it None when the outputs are identical: infinite.
    The one place this rule lives; tables show it as ∞."""
    return math.inf if sqnr_db is None else sqnr_db


E = typing.TypeVar("E", bound=Extra)
_HINTS = typing.get_type_hints(Row)
# A Row carries its spec flat: every CellSpec field, of the same type.
_SPEC_HINTS = typing.get_type_hints(CellSpec)
assert all(_HINTS.get(f) == _SPEC_HINTS[f] for f in KEY_FIELDS), "Row lacks a CellSpec field, or types it otherwise"


def _kinds(hint) -> tuple[type, ...]:
    base = tuple(t for t in typing.get_args(hint) if t is not type(None)) or (hint,)
    return base + ((int,) if float in base else ())  # JSON writes 2.0 as 2.0, but a hand-written 2 is a number too


_KINDS = {name: _kinds(hint) for name, hint in _HINTS.items()}
_KIND_TEXT = {k: {bool: "true or false", int: "a whole number", str: "text"}.get(k[0], "a number") for k in _KINDS.values()}
FIELDS = [f.name for f in dataclasses.fields(Row)]
# PyTorch's dynamo benchmark columns first, so its tooling can read our CSV.
DYNAMO_COLUMNS = {"dev": "device", "name": "model", "batch_size": "batch_size", "speedup": "speedup", "abs_latency": "median_ms"}
CSV_COLUMNS = list(DYNAMO_COLUMNS) + [f for f in FIELDS if f not in DYNAMO_COLUMNS.values()] + [SCHEMA_KEY]


class SchemaError(ValueError):
    """A results file written by a newer torchao_nb, in a layout this one can't know."""


def check_schema(version: Any, where: str) -> None:
    """A file's (or line's) schema version: none = 1; a newer one is one clear line saying what to do."""
    if version is None or version == "":
        return
    try:
        v = int(version)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: schema version {version!r} is not a number") from None
    if v > SCHEMA_VERSION:
        raise SchemaError(f"{where} was written by a newer torchao_nb (results schema {v}; this one reads up to "
                          f"{SCHEMA_VERSION}): upgrade torchao_nb to read it")


def row_record(row: Row) -> dict[str, Any]:
    """A row as written to rows.jsonl and results.json: its fields and the schema version."""
    return {**row.to_dict(), SCHEMA_KEY: SCHEMA_VERSION}


def row_line(row: Row) -> bytes:
    """One line of rows.jsonl."""
    return json.dumps(row_record(row)).encode() + b"\n"


def csv_fields() -> list:
    """The catalogue's fields the CSV writes after Row's own columns (fields.py says why); a reader skips them."""
    return [f for f in fields.in_view(fields.CSV) if f.name not in CSV_COLUMNS]


def _csv_cell(value: Any) -> Any:
    return "" if value is None else value


def _parse(name: str, text: str) -> Any:
    hint = _HINTS[name]
    base = {t for t in typing.get_args(hint) if t is not type(None)} or {hint}
    if text == "" and type(None) in typing.get_args(hint):
        return None
    if bool in base:
        return text == "True"
    if int in base:
        return int(text)
    if float in base:
        return float(text)
    return text


def atomic_write(path: str | os.PathLike, text: str | bytes) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results and reports are meant to be shared
        with (os.fdopen(fd, "wb") if isinstance(text, bytes) else os.fdopen(fd, "w", newline="")) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with __import__("contextlib").suppress(OSError):
            os.unlink(tmp)
        raise


def append_jsonl(path: str | os.PathLike, row: Row) -> None:
    """Append one finished row and flush it to disk, so an interrupted sweep keeps it. The row starts on a line of
    its own even when the file ends in a line cut off by a crash, so the fragment never swallows it."""
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        start = b""
        if f.tell():
            f.seek(-1, os.SEEK_END)
            start = b"" if f.read(1) == b"\n" else b"\n"
        f.write(start + row_line(row))
        f.flush()
        os.fsync(f.fileno())


@dataclass(frozen=True)
class JsonlRead:
    """The rows of a JSON Lines file, and the lines that are not rows: (line number, why)."""

    rows: tuple[Row, ...] = ()
    bad: tuple[tuple[int, str], ...] = ()

    def describe_bad(self, name: str) -> str:
        lines = ", ".join(str(n) for n, _ in self.bad[:20]) + (", ..." if len(self.bad) > 20 else "")
        whys = "; ".join(dict.fromkeys(why for _, why in self.bad))
        return f"{name}: line{'s' * (len(self.bad) > 1)} {lines} could not be read ({whys})"


def _row_of_line(raw: bytes) -> Row:
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except json.JSONDecodeError:
        raise ValueError("not complete JSON: cut off mid-write?") from None
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not a row")
    check_schema(data.get(SCHEMA_KEY), "a row")
    try:
        return Row.from_dict(data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"not a row: {str(e)[:80]}") from None


def parse_jsonl(data: bytes) -> JsonlRead:
    """Every line that is a row; every other line is reported (never fatal: one bad line costs one row)."""
    rows, bad = [], []
    for number, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            rows.append(_row_of_line(raw))
        except SchemaError:  # not a damaged line: the whole file is newer than this version
            raise
        except ValueError as e:
            bad.append((number, str(e)))
    return JsonlRead(tuple(rows), tuple(bad))


def read_rows(path: str | os.PathLike) -> JsonlRead:
    p = Path(path)
    return parse_jsonl(p.read_bytes()) if p.exists() else JsonlRead()


def read_jsonl(path: str | os.PathLike) -> list[Row]:
    """The rows of a rows.jsonl file; lines that are not rows are left out (read_rows says which)."""
    return list(read_rows(path).rows)


# The files of a results folder (folder.ResultsFolder writes them as a sweep goes, ResultSet.save at the end).
ROWS_FILE = "rows.jsonl"  # one row per finished cell, appended as it finishes: what a resumed sweep reads
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
ENV_FILE = "environment.json"


def in_order(rows: Sequence[Row], specs: Sequence[CellSpec]) -> tuple[Row, ...]:
    """Rows in the order of their cells (`specs`, the sweep's order), however they finished: a group's timed rows
    come after its skipped and failed ones. Rows of no listed cell (an earlier run's, kept) come first, as they
    were."""
    place = {spec: i for i, spec in reversed(list(enumerate(specs)))}
    return tuple(sorted(rows, key=lambda r: place.get(r.spec, -1)))


@dataclass(frozen=True)
class ResultSet:
    rows: tuple[Row, ...] = ()
    environment: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "rows", tuple(self.rows))

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def where(self, **equals) -> "ResultSet":
        return ResultSet(tuple(r for r in self.rows if all(getattr(r, k) == v for k, v in equals.items())), self.environment)

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame([r.to_dict() for r in self.rows], columns=FIELDS)

    # ---- files ----
    def to_csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        derived = csv_fields()
        w.writerow(CSV_COLUMNS + [f.name for f in derived])
        for r in self.rows:
            d = row_record(r)
            w.writerow([_csv_cell(d[DYNAMO_COLUMNS.get(c, c)]) for c in CSV_COLUMNS] + [_csv_cell(f.value(r)) for f in derived])
        return buf.getvalue()

    def to_json_text(self) -> str:
        return json.dumps({SCHEMA_KEY: SCHEMA_VERSION, "environment": self.environment,
                           "rows": [row_record(r) for r in self.rows]}, indent=1)

    def save(self, out_dir: str | os.PathLike) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / RESULTS_CSV, self.to_csv_text())
        atomic_write(out / RESULTS_JSON, self.to_json_text())
        atomic_write(out / ENV_FILE, json.dumps(self.environment, indent=1))
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ResultSet":
        """A results folder, or a results .json / .csv / .jsonl file. In a folder, a file that can't be read gives
        way to the next one (results.json, rows.jsonl, results.csv), with a Notice naming it."""
        p = Path(path)
        if not p.is_dir():
            return cls._load_file(p)
        files = [p / name for name in FOLDER_FILES if (p / name).exists()]
        if not files:
            raise FileNotFoundError(f"no {', '.join(FOLDER_FILES)} in {p}")
        failures = []
        for f in files:
            try:
                rs = cls._load_file(f)
            except SchemaError:  # the folder's other files are as new: no fall-back would read them
                raise
            except ValueError as e:
                failures.append(str(e))
                continue
            if failures:
                warnings.warn(f"{'; '.join(failures)}; read {f} instead", Notice, stacklevel=2)
            return rs
        raise ValueError(f"could not read the results in {p}: {'; '.join(failures)}")

    @classmethod
    def _load_file(cls, p: Path) -> "ResultSet":
        """One file; anything unreadable in it is a ValueError that names the file."""
        if p.suffix not in _READERS:
            raise ValueError(f"don't know how to read {p}: expected a folder, .json, .jsonl or .csv")
        try:
            rows, env = _READERS[p.suffix](p)
        except FileNotFoundError:
            raise
        except SchemaError as e:
            raise SchemaError(f"{p}: {e}") from None
        except (OSError, TypeError, ValueError, KeyError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise ValueError(f"could not read {p}: {type(e).__name__}: {str(e)[:200]}") from None
        return cls(tuple(rows), _environment_beside(p) if env is None else env)


FOLDER_FILES = (RESULTS_JSON, ROWS_FILE, RESULTS_CSV)  # what ResultSet.load reads in a folder, in this order


def _environment_beside(p: Path) -> dict:
    f = p.parent / ENV_FILE
    if not f.exists():
        return {}
    try:
        env = json.loads(f.read_text(encoding="utf-8"))
        if isinstance(env, dict):
            return env
    except ValueError:
        pass
    warnings.warn(f"could not read {f}; the results are shown without their environment", Notice, stacklevel=3)
    return {}


def _read_json(p: Path) -> tuple[list[Row], dict | None]:
    text = p.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError("the file is empty")
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ValueError(f"expected an object with a list of 'rows', found a JSON {type(data).__name__}")
    check_schema(data.get(SCHEMA_KEY), "the file")
    env = data.get("environment")
    return [_row_of_dict(d) for d in data["rows"]], env if isinstance(env, dict) else {}


def _row_of_dict(d: Any) -> Row:
    if not isinstance(d, dict):
        raise ValueError(f"a row is a JSON object, found {type(d).__name__}")
    return Row.from_dict(d)


def _read_jsonl(p: Path) -> tuple[list[Row], None]:
    read = read_rows(p)
    if read.bad and not read.rows:
        raise ValueError(read.describe_bad(p.name))
    if read.bad:
        warnings.warn(f"{read.describe_bad(str(p))}; those lines are left out", Notice, stacklevel=4)
    return list(read.rows), None


def _read_csv(p: Path) -> tuple[list[Row], None]:
    with open(p, newline="", encoding="utf-8") as f:
        rows = []
        for rec in csv.DictReader(f):
            check_schema(rec.get(SCHEMA_KEY), "a row")
            data = renamed_fields({DYNAMO_COLUMNS.get(c, c): v for c, v in rec.items() if c is not None})
            rows.append(Row(**{k: _parse(k, v) for k, v in data.items() if k in _HINTS and v is not None}))
    return rows, None


_READERS = {".json": _read_json, ".jsonl": _read_jsonl, ".csv": _read_csv}
