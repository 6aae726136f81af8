"""The int8 modes: int8 weights with dynamically quantized int8 activations, and int8 weight-only."""

from __future__ import annotations

import torch

from ..env import DeviceInfo
from .core import Mode, Where, _make, _needs, one_column_reason, register


def _int8dyn_input_reason(info: DeviceInfo, dtype: torch.dtype, rows: int) -> str | None:
    if info.is_cuda and rows <= 16:
        return (f"int8 dynamic on CUDA calls torch._int_mm, which needs more than 16 rows per matmul; it would get "
                f"{rows} (batch x tokens): use a larger batch or a prefill (torchao measured 0.09x at batch-1 decode)")
    return None


register(Mode(
    "int8dynamic", "int8 weights and per-token dynamically quantized int8 activations (int8 x int8 matmul).",
    lambda info, dtype: _make("Int8DynamicActivationInt8WeightConfig"),
    lambda info, dtype: _needs("Int8DynamicActivationInt8WeightConfig"), one_column_reason,
    input_reason=_int8dyn_input_reason,
    where=Where(note="CUDA: more than 16 rows (batch x tokens) per matmul"),
))
register(Mode(
    "int8weightonly", "int8 per-channel weights, activations stay in the model dtype.",
    lambda info, dtype: _make("Int8WeightOnlyConfig"),
    lambda info, dtype: _needs("Int8WeightOnlyConfig"), one_column_reason,
))
