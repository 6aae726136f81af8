"""autoquant's settings: the SQNR floor, the margin over noquant, the candidates, the cache folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import modes
from ..errors import UserError

# 16.5 dB (RMS error 15% of the signal) is the bound torchao's own numerics tests hold quantized
# layers to. Measured here on LLaMA-shaped bf16 layers: int4 group-128 ~20 dB, float8 ~31 dB, int8
# dynamic 29-39 dB, int8 weight-only ~41 dB. Raise it to 25 to rule out int4, to 35 to keep int8 weight-only only.
DEFAULT_SQNR_FLOOR_DB = 16.5
# A candidate must be at least 5% faster than noquant on the layer: smaller wins are within the
# run-to-run noise of a shared CPU and would buy accuracy loss for nothing.
DEFAULT_MARGIN = 0.05
NOQUANT = "noquant"


def searchable_modes() -> list[str]:
    """Registered modes the search can try: those applied by a plain torchao config.

    The chosen layers are quantized with each mode's `config` alone (`apply_choices`), so a mode with its own
    `apply` is out: autoquant itself; sparse24, which prunes weights before its config; torch-ao-dynamic, which
    is not a torchao config but a module swap, and torch.compile can't trace its DynamicQuantizedLinear (a
    compiled layer would be one graph break running eagerly, and a model that compiles as one graph fails).
    Every other mode is a candidate wherever it runs, but for one whose `Mode.not_searched` says it can't win
    (int8dq-int4: no int8 x int4 kernel), which the search table lists with that reason unless asked for by name."""
    return [name for name, m in modes.MODES.items() if m.apply is None]


@dataclass(frozen=True)
class SearchSettings:
    """How the `autoquant` mode searches; pass to `sweep(autoquant=...)` (or a dict of these fields)."""

    # The fields with a "flag" are also command-line options of `run`.
    sqnr_floor_db: float = field(default=DEFAULT_SQNR_FLOOR_DB, metadata=dict(
        flag="--autoquant-floor", metavar="DB", label="autoquant floor (dB)",
        help=f"reject a candidate whose layer output SQNR is below this (default {DEFAULT_SQNR_FLOOR_DB})"))
    margin: float = field(default=DEFAULT_MARGIN, metadata=dict(
        flag="--autoquant-margin", metavar="FRACTION", label="autoquant margin",
        help=f"a candidate must beat noquant's time by this fraction (default {DEFAULT_MARGIN})"))
    candidates: tuple[str, ...] | None = None  # modes to try; None: every other mode this device runs
    # Where timings are kept, and whether to re-use them, don't change what is measured: not part of a row's key.
    cache_dir: str | None = field(default=None, metadata=dict(in_key=False))  # None: $TORCHAO_NB_CACHE_DIR, else ~/.cache/torchao_nb
    use_cache: bool = field(default=True, metadata=dict(in_key=False))  # False: time everything again and store nothing

    def __post_init__(self):
        try:
            object.__setattr__(self, "sqnr_floor_db", float(self.sqnr_floor_db))
            object.__setattr__(self, "margin", float(self.margin))
        except (TypeError, ValueError):
            raise UserError("autoquant's sqnr_floor_db and margin must be numbers, e.g. sqnr_floor_db=20, margin=0.05.") from None
        if self.sqnr_floor_db != self.sqnr_floor_db:
            raise UserError("autoquant's sqnr_floor_db is NaN; give a number of dB such as 20.")
        if not 0 <= self.margin < 1:
            raise UserError(f"autoquant's margin is a fraction in [0, 1) (0.05 = 5% faster), got {self.margin}.")
        if self.candidates is not None:
            names = (self.candidates.split(",") if isinstance(self.candidates, str) else self.candidates)
            names = tuple(dict.fromkeys(str(n).strip() for n in names if str(n).strip()))
            for n in names:
                if n not in modes.MODES or modes.MODES[n].apply is not None:
                    valid = ", ".join(searchable_modes())
                    raise UserError(f"autoquant can't try mode {n!r}; choose candidates from: {valid}.")
            object.__setattr__(self, "candidates", names)

    @classmethod
    def of(cls, value: Any) -> "SearchSettings":
        return modes.settings_from(cls, value, "autoquant")
