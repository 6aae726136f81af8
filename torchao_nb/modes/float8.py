"""The float8 modes: float8 weight-only, float8 dynamic (per-row or per-tensor scales), float8 activations x int4 weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..env import DeviceInfo
from ..errors import UserError
from .core import (Mode, Where, _has_mslk, _make, _needs, _needs_capability, one_column_reason, register,
                   settings_from)

MSLK_HINT = "the mslk kernel package (github.com/pytorch/MSLK; pip install mslk-cuda)"


def _float8wo_unsupported(info: DeviceInfo, dtype: torch.dtype) -> str | None:
    return _needs_capability(info, (8, 9), "float8") or _needs("Float8WeightOnlyConfig")


register(Mode(
    "float8weightonly", "float8 (e4m3) per-channel weights, activations stay in the model dtype.",
    lambda info, dtype: _make("Float8WeightOnlyConfig"), _float8wo_unsupported, one_column_reason,
    where=Where(cuda=(8, 9), note="CPU: slow (dequantize + matmul)"),
))


# ---- float8 dynamic -------------------------------------------------------------------------------

FLOAT8_GRANULARITIES = ("per-row", "per-tensor")


@dataclass(frozen=True)
class Float8Settings:
    """float8dynamic's settings: `sweep(float8dynamic={"granularity": "per-tensor"})` or `--float8-granularity per-tensor`."""

    # Per-row is torchao's recommended recipe and measured better: batch-1 decode on H100 (Llama-3.1-8B, torchao's
    # old table) per-row 1.22x, per-tensor 0.92x over bf16. Per-tensor stays for comparison and for fp16/fp32.
    granularity: str = field(default="per-row", metadata=dict(
        flag="--float8-granularity", type=str, metavar="per-row|per-tensor", label="float8 scales",
        choices=FLOAT8_GRANULARITIES,
        help="scales of float8dynamic: per-row (default; a scale per weight row and per token, torchao's recipe, "
             "bfloat16 only) or per-tensor (one scale per weight and per activation)"))

    def __post_init__(self):
        value = str(self.granularity).strip().lower().replace("_", "-")
        if value not in FLOAT8_GRANULARITIES:
            raise UserError(f"float8dynamic granularity must be one of {', '.join(FLOAT8_GRANULARITIES)}, "
                            f"got {self.granularity!r}.")
        object.__setattr__(self, "granularity", value)

    @classmethod
    def of(cls, value: Any) -> "Float8Settings":
        return settings_from(cls, value, "float8dynamic", str, "'per-row', 'per-tensor'")


def _float8dyn_unsupported(info: DeviceInfo, dtype: torch.dtype) -> str | None:
    if not info.is_cuda:
        return "float8 dynamic activation needs a CUDA GPU with compute capability >= 8.9; torchao has no CPU kernel"
    return _needs_capability(info, (8, 9), "float8") or _needs("Float8DynamicActivationFloat8WeightConfig")


def _float8dyn_layer_reason(lin: nn.Linear, info: DeviceInfo, dtype: torch.dtype) -> str | None:
    if lin.in_features % 16 or lin.out_features % 16:
        return f"float8 matmul needs both dims divisible by 16 (got {lin.in_features}x{lin.out_features})"
    return None


def _float8dyn_config(info: DeviceInfo, dtype: torch.dtype, granularity: str = "per-row"):
    from torchao.quantization import PerRow, PerTensor

    scales = {"per-row": PerRow, "per-tensor": PerTensor}[granularity]()
    return _make("Float8DynamicActivationFloat8WeightConfig", granularity=scales)


def _float8dyn_layer_config(lin: nn.Linear, info: DeviceInfo, dtype: torch.dtype, settings: Float8Settings | None):
    granularity = Float8Settings.of(settings).granularity
    if granularity == "per-row" and dtype != torch.bfloat16:
        # torchao asserts it mid-quantize_; said here, with what to do instead
        raise UserError("float8dynamic per-row takes bfloat16 weights only (torchao's per-row float8): run with "
                        "--dtype bfloat16, or --float8-granularity per-tensor")
    return _float8dyn_config(info, dtype, granularity), granularity


register(Mode(
    "float8dynamic",
    "float8 (e4m3) weights and dynamically quantized float8 activations, scaled per row (default) or per tensor "
    "(--float8-granularity); a float8 x float8 matmul.",
    _float8dyn_config, _float8dyn_unsupported, _float8dyn_layer_reason, layer_config=_float8dyn_layer_config,
    settings=Float8Settings, where=Where(cpu=(), cuda=(8, 9), note="per-row (the default) needs bf16"),
))


# ---- float8 activations x int4 weights ------------------------------------------------------------

F8I4_GROUP = 128  # torchao 0.18 fixes it: mslk's kernel takes 128 and above


def _f8i4_unsupported(info: DeviceInfo, dtype: torch.dtype) -> str | None:
    if not info.is_cuda:
        return (f"float8 x int4 needs a CUDA GPU with compute capability >= 9.0 (H100 or newer) and {MSLK_HINT}; "
                "torchao has no CPU kernel")
    if dtype != torch.bfloat16:
        return "float8 x int4 (mslk's f8i4bf16 kernel) computes in bfloat16: run with --dtype bfloat16"
    if reason := _needs_capability(info, (9, 0), "float8 x int4 (mslk's preshuffled kernel)"):
        return reason
    if not _has_mslk():
        return f"float8 x int4 needs {MSLK_HINT}, which is not installed"
    return _needs("Float8DynamicActivationInt4WeightConfig")


def _f8i4_layer_reason(lin: nn.Linear, info: DeviceInfo, dtype: torch.dtype) -> str | None:
    if lin.in_features % F8I4_GROUP:
        return f"in_features {lin.in_features} is not divisible by the int4 group size {F8I4_GROUP} (fixed in torchao)"
    return None


register(Mode(
    "float8dq-int4",
    "int4 group-128 weights (preshuffled for mslk) with per-row dynamically quantized float8 activations; "
    "mslk's float8 x int4 matmul (H100 and newer).",
    lambda info, dtype: _make("Float8DynamicActivationInt4WeightConfig", int4_packing_format="preshuffled"),
    _f8i4_unsupported, _f8i4_layer_reason,
    where=Where(cpu=(), cuda=(9, 0), cuda_dtypes=("bfloat16",), packages=("mslk",)),
))
