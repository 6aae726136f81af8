"""The int4-weight modes: int4 weight-only (tinygemm-style or HQQ qparams) and int8 dynamic activations with int4 weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..env import DeviceInfo
from ..errors import UserError
from .core import Mode, Where, _has_mslk, _make, _needs, _needs_capability, register, settings_from

INT4_GROUP_SIZES = (256, 128, 64, 32)  # what tinygemm takes; torchao's CPU int4 kernel takes 128 and below
# torchao's published GPU numbers use group 64 (int4wo-64); on CPU 128, its default, measures well.
INT4_DEFAULT_GROUP = {"cuda": 64, "cpu": 128}


@dataclass(frozen=True)
class Int4Settings:
    """int4weightonly's and int4weightonly-hqq's settings: `sweep(int4weightonly={"group_size": 64})`, or
    `--int4-group-size 64` for both (a sweep that compares HQQ with plain int4 compares them at one size)."""

    group_size: int | None = field(default=None, metadata=dict(
        flag="--int4-group-size", type=int, metavar="N", label="int4 group", choices=INT4_GROUP_SIZES,
        help="group size of int4 weight-only, one of 256/128/64/32 (default: 64 on CUDA, as torchao's published "
             "numbers; 128 on CPU); a layer whose in_features it doesn't divide takes the largest that does"))

    def __post_init__(self):
        if self.group_size is not None and self.group_size not in INT4_GROUP_SIZES:
            raise UserError(f"int4 group size must be one of {', '.join(map(str, INT4_GROUP_SIZES))}, "
                            f"got {self.group_size!r}.")

    @classmethod
    def of(cls, value: Any) -> "Int4Settings":
        return settings_from(cls, value, "int4 weight-only", int, "a group size")


def _int4_sizes(info: DeviceInfo, dtype: torch.dtype) -> tuple[int, ...]:
    """Group sizes the int4 kernel for this device and dtype accepts, largest first."""
    cpu_kernel = not info.is_cuda and dtype == torch.bfloat16  # torchao's CPU int4 kernel asserts <= 128
    return tuple(g for g in INT4_GROUP_SIZES if not (cpu_kernel and g > 128))


def _int4_group(lin: nn.Linear, info: DeviceInfo, dtype: torch.dtype, settings: Int4Settings | None) -> int | None:
    """The requested group size if it divides in_features, else the largest accepted one that does."""
    sizes = _int4_sizes(info, dtype)
    wanted = (settings and settings.group_size) or INT4_DEFAULT_GROUP.get(info.type, 128)
    if wanted in sizes and lin.in_features % wanted == 0:
        return wanted
    return next((g for g in sizes if lin.in_features % g == 0), None)


def _int4_config(info: DeviceInfo, dtype: torch.dtype, group: int | None = None):
    group = group or INT4_DEFAULT_GROUP.get(info.type, 128)
    if info.is_cuda:
        # The plain packing needs the separate mslk kernels; tinygemm's 4-d tile packing ships
        # with torch itself and runs on SM 8.x/9.x.
        from torchao.quantization.quantize_.workflows.int4.int4_packing_format import Int4PackingFormat

        packing = Int4PackingFormat.PLAIN if _has_mslk() else Int4PackingFormat.TILE_PACKED_TO_4D
        return _make("Int4WeightOnlyConfig", group_size=group, int4_packing_format=packing)
    if dtype == torch.bfloat16:
        # Measured on a 2-core AVX512-BF16 CPU: ~4x faster than bf16 noquant when compiled.
        return _make("PrototypeInt4WeightOnlyConfig", "torchao.prototype.quantization.int4", group_size=group)
    # In fp32 the prototype int4 kernel is slower than noquant here; Intx int4 (group-wise)
    # lowers to plain dequantize + matmul, which inductor fuses well.
    from torchao.quantization.granularity import PerGroup

    return _make("IntxWeightOnlyConfig", weight_dtype=torch.int4, granularity=PerGroup(group))


def _grouped(config: Callable[[DeviceInfo, torch.dtype, int | None], Any]):
    """A mode's layer_config: the group size that fits the layer (see _int4_group), and `config` built for it."""
    def layer_config(lin: nn.Linear, info: DeviceInfo, dtype: torch.dtype, settings: Int4Settings | None):
        group = _int4_group(lin, info, dtype, settings)
        return config(info, dtype, group), f"group {group}"
    return layer_config


def _int4_unsupported(info: DeviceInfo, dtype: torch.dtype) -> str | None:
    if info.is_cuda:
        if dtype != torch.bfloat16:
            return "int4 weight-only on CUDA needs bfloat16 (tinygemm kernels); run with --dtype bfloat16"
        if not _has_mslk():
            return _needs_capability(info, (8, 0), "the int4 tinygemm kernel") or _needs("Int4WeightOnlyConfig")
        return _needs("Int4WeightOnlyConfig")
    if dtype == torch.bfloat16:
        return _needs("PrototypeInt4WeightOnlyConfig", "torchao.prototype.quantization.int4")
    return _needs("IntxWeightOnlyConfig")


def _int4_layer_reason(lin: nn.Linear, info: DeviceInfo, dtype: torch.dtype) -> str | None:
    if _int4_group(lin, info, dtype, None) is None:
        sizes = "/".join(map(str, _int4_sizes(info, dtype)))
        return f"in_features {lin.in_features} is divisible by no int4 group size ({sizes})"
    if not info.is_cuda and dtype == torch.bfloat16 and lin.out_features % 16:
        return f"out_features {lin.out_features} is not divisible by 16 (CPU int4 kernel)"
    # CUDA: torchao pads out_features to a multiple of 8 itself.
    return None


register(Mode(
    "int4weightonly",
    "int4 group-wise weights (group 64 on CUDA, 128 on CPU; --int4-group-size); CUDA: tinygemm, "
    "CPU bf16: torchao's CPU int4 kernel, CPU fp32: Intx int4.",
    _int4_config, _int4_unsupported, _int4_layer_reason, layer_config=_grouped(_int4_config), settings=Int4Settings,
    where=Where(cuda=(8, 0), cuda_dtypes=("bfloat16",), note="CUDA below 8.0 only with mslk (plain packing)"),
))


# ---- int4 with HQQ qparams ------------------------------------------------------------------------
# The same kernels as int4weightonly, only the scales and zero points differ: HQQ fits them to minimise the
# weight's error (a few optimisation steps per group) instead of taking each group's min and max. A separate
# mode, so one sweep shows what HQQ buys over int4weightonly on the same model.

def _hqq_config(info: DeviceInfo, dtype: torch.dtype, group: int | None = None):
    from torchao.quantization.quantize_.workflows import Int4ChooseQParamsAlgorithm, IntxChooseQParamsAlgorithm

    group = group or INT4_DEFAULT_GROUP.get(info.type, 128)
    hqq = Int4ChooseQParamsAlgorithm.HQQ
    if info.is_cuda:
        # torchao 0.18 asserts HQQ goes with the tile_packed_to_4d packing (tinygemm), mslk or not.
        from torchao.quantization.quantize_.workflows.int4.int4_packing_format import Int4PackingFormat

        return _make("Int4WeightOnlyConfig", group_size=group, int4_choose_qparams_algorithm=hqq,
                     int4_packing_format=Int4PackingFormat.TILE_PACKED_TO_4D)
    if dtype == torch.bfloat16:
        return _make("PrototypeInt4WeightOnlyConfig", "torchao.prototype.quantization.int4", group_size=group,
                     int4_choose_qparams_algorithm=hqq)
    # fp32/fp16 take int4weightonly's Intx int4, whose HQQ is the scale-only variant (symmetric: no zero point).
    from torchao.quantization.granularity import PerGroup

    return _make("IntxWeightOnlyConfig", weight_dtype=torch.int4, granularity=PerGroup(group),
                 intx_choose_qparams_algorithm=IntxChooseQParamsAlgorithm.HQQ_SCALE_ONLY)


def _hqq_unsupported(info: DeviceInfo, dtype: torch.dtype) -> str | None:
    if info.is_cuda:
        if dtype != torch.bfloat16:
            return "int4 HQQ on CUDA needs bfloat16 (tinygemm kernels); run with --dtype bfloat16"
        return _needs_capability(info, (8, 0), "int4 HQQ (tinygemm's tile_packed_to_4d, the only packing torchao "
                                               "0.18 gives HQQ)") or _needs("Int4WeightOnlyConfig")
    return _int4_unsupported(info, dtype)


register(Mode(
    "int4weightonly-hqq",
    "int4weightonly's group-wise int4 weights and kernels, with HQQ-fitted scales and zero points (each group's "
    "rounding error minimised; slower to quantize); CPU fp32: Intx int4 with HQQ scale-only.",
    _hqq_config, _hqq_unsupported, _int4_layer_reason, layer_config=_grouped(_hqq_config), settings=Int4Settings,
    where=Where(cuda=(8, 0), cuda_dtypes=("bfloat16",)),
))


# ---- int8 activations x int4 weights --------------------------------------------------------------

INT8DQ_INT4_GROUP = 32  # torchao's default for Int8DynamicActivationIntxWeightConfig, and its reported x86 recipe


def _int8dq_int4_config(info: DeviceInfo, dtype: torch.dtype):
    from torchao.quantization.granularity import PerGroup

    # The default unpacked_to_int8 format is the one that runs without torchao's C++ CPU kernels (the PyPI
    # wheel has none for x86); the opaque formats need them.
    return _make("Int8DynamicActivationIntxWeightConfig", weight_dtype=torch.int4,
                 weight_granularity=PerGroup(INT8DQ_INT4_GROUP))


def _int8dq_int4_layer_reason(lin: nn.Linear, info: DeviceInfo, dtype: torch.dtype) -> str | None:
    if lin.in_features % INT8DQ_INT4_GROUP:
        return f"in_features {lin.in_features} is not divisible by the int4 group size {INT8DQ_INT4_GROUP}"
    return None


register(Mode(
    "int8dq-int4",
    "int4 group-32 weights (stored one per byte) with per-token int8 dynamic activations, torchao's "
    "unpacked_to_int8 format: activations are quantized and dequantized, weights dequantized, and the matmul "
    "runs in the model dtype (the ExecuTorch export recipe; no int8 x int4 kernel).",
    _int8dq_int4_config, lambda info, dtype: _needs("Int8DynamicActivationIntxWeightConfig"),
    _int8dq_int4_layer_reason,
    # It dequantizes and runs the matmul in the model dtype: never faster than int4 weight-only (the demo on a
    # 2-core Xeon: 0.42x against int4's 2.62x), and searching it cost the cold demo ~10 s of compiles.
    not_searched="no int8 x int4 kernel: its matmul runs in the model dtype, never faster than int4weightonly",
))
