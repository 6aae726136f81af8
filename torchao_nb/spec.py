"""What a cell is: the frozen spec that identifies it and is its resume key, kept apart from what was measured."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence


def _cell(*default) -> Any:
    """A field of the cell itself (model, mode, batch and what refines them), not of the sweep's settings."""
    return field(metadata={"cell": True}) if not default else field(default=default[0], metadata={"cell": True})


@dataclass(frozen=True, kw_only=True)
class CellSpec:
    """Everything that changes a cell's measurement: two rows with equal specs measured the same thing, and
    --resume re-uses a row only for an equal spec. A Row carries these same fields, flat, beside its numbers."""

    # The cell: the model (with its parameters and, for a user's module, its signature), the mode (with its
    # settings) and the batch size.
    model: str = _cell()
    mode: str = _cell()
    batch_size: int = _cell()
    seq_len: int | None = _cell(None)  # a registry model's sequence length (None: a user's module)
    model_signature: str = _cell("")  # a user's module: a hash of its structure, weights' shapes and inputs' shapes
    mode_settings: str = _cell("")  # JSON of the mode's own settings that change what it measures
    # What a sweep measured every cell under: the machine, the versions, how it compiled and timed.
    device: str
    device_name: str = ""
    dtype: str
    compile: bool
    baseline: bool  # were the seed's baseline compiler settings applied
    compile_mode: str = ""
    tuning: str = "off"  # compiling.TUNINGS: torchao | fast | off ("off" when compile is off)
    threads: int | None = None
    timing: str = ""  # the timing policy: "bursts", "quick" or "custom-<hash of its fields>"
    cache: str = ""  # "warm" or "cold"
    torch_version: str = ""
    torchao_version: str = ""

    @property
    def key(self) -> tuple:
        """The spec as a tuple, in KEY_FIELDS order: what --resume and merging compare."""
        return tuple(getattr(self, f) for f in KEY_FIELDS)

    @property
    def cell(self) -> tuple[str, str, int]:
        """(model, mode, batch size): how cells of runs on different machines or settings are matched."""
        return (self.model, self.mode, self.batch_size)

    @property
    def group(self) -> tuple:
        """The key without the mode: cells that share one unquantized reference and baseline in a sweep."""
        return tuple(getattr(self, f) for f in KEY_FIELDS if f not in MODE_FIELDS)

    @property
    def settings(self) -> tuple:
        return tuple(getattr(self, f) for f in SETTING_FIELDS)

    @classmethod
    def of(cls, values: Any) -> "CellSpec":
        """The spec of anything carrying these fields as attributes (a Row)."""
        return cls(**{f: getattr(values, f) for f in KEY_FIELDS})

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in KEY_FIELDS}


KEY_FIELDS = tuple(f.name for f in dataclasses.fields(CellSpec))
CELL_FIELDS = tuple(f.name for f in dataclasses.fields(CellSpec) if f.metadata.get("cell"))
SETTING_FIELDS = tuple(f for f in KEY_FIELDS if f not in CELL_FIELDS)
MODE_FIELDS = ("mode", "mode_settings")  # what differs between the cells of one group
CELL = ("model", "mode", "batch_size")  # the names of CellSpec.cell, as table columns

_FIELD_WORDS = {"model_signature": "another module or other inputs of the same class",
                "mode_settings": "other settings of the mode", "timing": "another timing policy"}


def _show(value: Any) -> str:
    if value is None or value == "":
        return "not recorded"
    return repr(value) if isinstance(value, str) else str(value)


def differences(old: CellSpec, new: CellSpec, fields: Sequence[str] = KEY_FIELDS) -> str:
    """How a row's spec differs from this run's, in words: 'seq_len 16 (this run: 256)'."""
    out = []
    for f in fields:
        a, b = getattr(old, f), getattr(new, f)
        if a != b:
            out.append(_FIELD_WORDS.get(f) or f"{f} {_show(a)} (this run: {_show(b)})")
    return ", ".join(out)
