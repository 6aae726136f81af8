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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# ok: measured; skipped: can't run here (reason says why); error: failed or crashed (reason: what);
# wrong: ran, but its output is not finite or far from the unquantized one (reason: the numbers), never timed.
STATUSES = ("ok", "skipped", "error", "wrong")


# The fields that identify a cell: a row is re-used by --resume only when all of them match.
KEY_FIELDS = ("model", "mode", "batch_size", "seq_len", "device", "device_name", "dtype", "compile", "baseline",
              "compile_mode", "torchao_tuning", "threads", "torch_version", "torchao_version")


@dataclass(frozen=True)
class Row:
    """One cell of a sweep: a model × mode × batch size × compile setting."""

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
    samples: int | None = None
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
    timing: str = ""  # how samples were taken (host clock, CUDA events, L2 flushed)
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
    threads: int | None = None
    compile_mode: str = ""  # torch.compile mode when compile is on ("default", "reduce-overhead", ...)
    seq_len: int | None = None  # a registry model's sequence length (None: a user's module)
    device_name: str = ""  # the GPU or CPU model that ran the cell
    torchao_tuning: bool = False  # torchao's recommended inductor settings were applied
    torch_version: str = ""
    torchao_version: str = ""
    recipe: str = ""  # the exact torchao config, JSON
    extra: str = ""  # JSON: layers left alone and why, autoquant's decision table, ...

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")

    @property
    def key(self) -> tuple:
        """What identifies a cell, for --resume and for matching runs."""
        return tuple(getattr(self, f) for f in KEY_FIELDS)

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
        return cls(**{k: v for k, v in data.items() if k in names})


def sqnr_or_inf(sqnr_db: float | None) -> float:
    """SQNR as a number. measure.accuracy leaves it None when the outputs are identical: infinite.
    The one place this rule lives; tables show it as ∞."""
    return math.inf if sqnr_db is None else sqnr_db


_HINTS = typing.get_type_hints(Row)
FIELDS = [f.name for f in dataclasses.fields(Row)]
# PyTorch's dynamo benchmark columns first, so its tooling can read our CSV.
DYNAMO_COLUMNS = {"dev": "device", "name": "model", "batch_size": "batch_size", "speedup": "speedup", "abs_latency": "median_ms"}
CSV_COLUMNS = list(DYNAMO_COLUMNS) + [f for f in FIELDS if f not in DYNAMO_COLUMNS.values()]


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
    """Append one finished row and flush it to disk, so an interrupted sweep keeps it."""
    with open(path, "a") as f:
        f.write(json.dumps(row.to_dict()) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[Row]:
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(Row.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError, ValueError):
            continue  # a line cut short by a crash: that cell simply runs again
    return rows


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
        w.writerow(CSV_COLUMNS)
        for r in self.rows:
            d = r.to_dict()
            w.writerow(["" if d[DYNAMO_COLUMNS.get(c, c)] is None else d[DYNAMO_COLUMNS.get(c, c)] for c in CSV_COLUMNS])
        return buf.getvalue()

    def to_json_text(self) -> str:
        return json.dumps({"environment": self.environment, "rows": [r.to_dict() for r in self.rows]}, indent=1)

    def save(self, out_dir: str | os.PathLike) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "results.csv", self.to_csv_text())
        atomic_write(out / "results.json", self.to_json_text())
        atomic_write(out / "environment.json", json.dumps(self.environment, indent=1))
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ResultSet":
        """A results folder, or a results .json / .csv / .jsonl file."""
        p = Path(path)
        if p.is_dir():
            for name in ("results.json", "rows.jsonl", "results.csv"):
                if (p / name).exists():
                    return cls.load(p / name)
            raise FileNotFoundError(f"no results.json, rows.jsonl or results.csv in {p}")
        env_file = p.parent / "environment.json"
        env = json.loads(env_file.read_text()) if env_file.exists() else {}
        if p.suffix == ".json":
            data = json.loads(p.read_text())
            return cls(tuple(Row.from_dict(d) for d in data["rows"]), data.get("environment", {}))
        if p.suffix == ".jsonl":
            return cls(tuple(read_jsonl(p)), env)
        if p.suffix == ".csv":
            with open(p, newline="") as f:
                reader = csv.DictReader(f)
                rows = []
                for rec in reader:
                    data = {DYNAMO_COLUMNS.get(c, c): v for c, v in rec.items()}
                    rows.append(Row(**{k: _parse(k, v) for k, v in data.items() if k in _HINTS}))
            return cls(tuple(rows), env)
        raise ValueError(f"don't know how to read {p}: expected a folder, .json, .jsonl or .csv")
