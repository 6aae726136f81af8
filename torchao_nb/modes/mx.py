"""The Blackwell modes: MXFP8 and NVFP4, block-scaled float8 / float4 weights and activations (torchao's mx_formats prototypes)."""

from __future__ import annotations

import torch
from torch import nn

from ..env import DeviceInfo
from .core import Mode, Where, _has_mslk, _make, _needs, _needs_capability, register

MX_MODULE = "torchao.prototype.mx_formats"
MX_BLOCK = 32  # MXFP8: one e8m0 scale per 32 values along in_features (the OCP MX spec)
NVFP4_BLOCK = 16  # NVFP4: one e4m3 scale per 16 values, times a per-tensor float32 scale


def _blackwell(what: str, config: str):
    """unsupported(): block-scaled matmuls run on the tensor cores of SM 10.0 (B200) and newer only."""
    def unsupported(info: DeviceInfo, dtype: torch.dtype) -> str | None:
        if not info.is_cuda:
            return (f"{what} needs a CUDA GPU with compute capability >= 10.0 (Blackwell: B200/GB200 or newer); "
                    "torch has no CPU kernel for it")
        if dtype != torch.bfloat16:
            return (f"{what} runs in bfloat16 only (torchao 0.18's MX prototypes are built for bf16; MXFP8 asserts it): "
                    "run with --dtype bfloat16")
        return _needs_capability(info, (10, 0), f"{what} (Blackwell block-scaled tensor cores)") or _needs(config, MX_MODULE)
    return unsupported


def _mx_layer_reason(lin: nn.Linear, info: DeviceInfo, dtype: torch.dtype) -> str | None:
    if lin.in_features % MX_BLOCK:
        return f"in_features {lin.in_features} is not divisible by the MX block size {MX_BLOCK}"
    return None


def _nvfp4_layer_reason(lin: nn.Linear, info: DeviceInfo, dtype: torch.dtype) -> str | None:
    if lin.in_features % NVFP4_BLOCK or lin.out_features % NVFP4_BLOCK:  # torchao raises on anything else
        return f"NVFP4 needs both dims divisible by {NVFP4_BLOCK} (got {lin.in_features}x{lin.out_features})"
    return None


def _mxfp8_config(info: DeviceInfo, dtype: torch.dtype):
    return _make("MXDynamicActivationMXWeightConfig", MX_MODULE, block_size=MX_BLOCK,
                 activation_dtype=torch.float8_e4m3fn, weight_dtype=torch.float8_e4m3fn)


def _nvfp4_config(info: DeviceInfo, dtype: torch.dtype):
    # Its fused triton kernel for quantizing activations lives in mslk; without mslk torchao quantizes them with
    # plain torch ops (slower, same numbers). Decided where the config is made, so the recipe says which.
    return _make("NVFP4DynamicActivationNVFP4WeightConfig", MX_MODULE, use_triton_kernel=_has_mslk())


register(Mode(
    "mxfp8",
    "MXFP8: float8 (e4m3) weights and dynamically quantized activations with one power-of-two scale per 32 "
    "values; Blackwell's block-scaled float8 matmul.",
    _mxfp8_config, _blackwell("MXFP8", "MXDynamicActivationMXWeightConfig"), _mx_layer_reason,
    where=Where(cpu=(), cuda=(10, 0), cuda_dtypes=("bfloat16",)),
))
register(Mode(
    "nvfp4",
    "NVFP4: float4 (e2m1) weights and dynamically quantized activations, an e4m3 scale per 16 values and one "
    "per tensor; Blackwell's float4 matmul.",
    _nvfp4_config, _blackwell("NVFP4", "NVFP4DynamicActivationNVFP4WeightConfig"), _nvfp4_layer_reason,
    where=Where(cpu=(), cuda=(10, 0), cuda_dtypes=("bfloat16",), note="mslk makes its activation quantization faster"),
))
