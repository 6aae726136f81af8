"""Is an output right? Not finite, or so far from the unquantized output that it is wrong rather than inaccurate."""

from __future__ import annotations

from typing import Any

import torch

from . import measure

# An output whose SQNR against the unquantized output is below this is wrong, not just inaccurate.
# Measured normal errors: int4 group-wise 16-20 dB on one layer, 10.8 dB through llama-1b's 16 random
# layers; int8 30-45 dB. A compiler bug reads far lower (-86 dB, -743 dB seen), and an all-zero
# output reads exactly 0 dB, so 5 dB sits well clear of both.
WRONG_BELOW_DB = 5.0


def nonfinite(output: Any) -> int:
    """How many NaN or infinite values the floating tensors of an output hold."""
    return sum(int((~torch.isfinite(t)).sum()) for t in measure.tensors_of(output) if t.is_floating_point())


def wrongness(reference: Any, output: Any) -> tuple[str | None, measure.Accuracy | None]:
    """(why the output is wrong, or None when it is plausible; its accuracy when that could be computed)."""
    bad = nonfinite(output)
    if bad:
        total = sum(t.numel() for t in measure.tensors_of(output) if t.is_floating_point())
        return f"{bad} of {total} output values are NaN or infinite", None
    acc = measure.accuracy(reference, output)
    if acc.sqnr_db is not None and acc.sqnr_db < WRONG_BELOW_DB:
        return f"SQNR {acc.sqnr_db:.1f} dB against the unquantized output (cosine {acc.cosine:.3f})", acc
    return None, acc
