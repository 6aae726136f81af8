"""The 2:4 sparsity mode: weights pruned to two nonzeros in every four, then stored semi-structured for sparse tensor cores."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..env import DeviceInfo
from .core import (ApplyContext, ApplyReport, Mode, Where, _make, _needs, _needs_capability, installed,
                   layers_left_alone, linear_layers, quantize, refuse_quantized, register)

SPARSE_MODULE = "torchao.sparsity.sparse_api"
SPARSE_DTYPES = (torch.bfloat16, torch.float16)  # cuSPARSELt, torch's default 2:4 backend, has no float32


def prune_2_4(weight: torch.Tensor) -> torch.Tensor:
    """The weight with the two smallest-magnitude values of every four along in_features set to zero (the
    pattern sparse tensor cores read). A weight that already is 2:4 sparse comes back unchanged."""
    groups = weight.reshape(-1, 4)
    keep = groups.abs().topk(2, dim=1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, keep, True)
    return (groups * mask).reshape(weight.shape)


def _backend():
    """The class torch.sparse.to_sparse_semi_structured will build: cuSPARSELt unless CUTLASS is forced."""
    from torch.sparse import SparseSemiStructuredTensor, SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS

    return SparseSemiStructuredTensorCUTLASS if SparseSemiStructuredTensor._FORCE_CUTLASS else SparseSemiStructuredTensorCUSPARSELT


def _unsupported(info: DeviceInfo, dtype: torch.dtype) -> str | None:
    if not info.is_cuda:
        return ("2:4 sparsity needs a CUDA GPU with compute capability >= 8.0 (Ampere or newer: sparse tensor "
                "cores); torch has no CPU kernel for semi-structured sparse matmuls")
    if dtype not in SPARSE_DTYPES:
        return "2:4 sparsity here takes bfloat16 or float16 (cuSPARSELt has no float32): run with --dtype bfloat16"
    if reason := _needs_capability(info, (8, 0), "2:4 sparsity (sparse tensor cores)"):
        return reason
    if _backend().BACKEND == "cusparselt" and not installed("cuSPARSELt"):
        return "2:4 sparsity uses cuSPARSELt, which this torch build lacks (torch's CUDA wheels carry it)"
    return _needs("SemiSparseWeightConfig", SPARSE_MODULE)


def _layer_reason(lin: nn.Linear, info: DeviceInfo, dtype: torch.dtype) -> str | None:
    limits = _backend()._DTYPE_SHAPE_CONSTRAINTS.get(dtype)
    if limits is None:
        return None  # the mode is unsupported for this dtype: _unsupported says why
    rows, cols = limits.sparse_min_rows, limits.sparse_min_cols
    if lin.out_features % rows or lin.in_features % cols:  # torch refuses anything else
        return (f"2:4 sparse weights need out_features divisible by {rows} and in_features by {cols} "
                f"(got {lin.in_features}x{lin.out_features})")
    return None


def _apply(model: nn.Module, info: DeviceInfo, dtype: torch.dtype, example_inputs, ctx: ApplyContext) -> ApplyReport:
    """Prune each fitting Linear to 2:4 by magnitude, then torchao's SemiSparseWeightConfig compresses it.

    torchao's config expects weights that already are 2:4 sparse (a model pruned and fine-tuned for it); a dense
    weight must be pruned first, or the compression keeps the wrong values. Pruning a dense model loses accuracy:
    one random 1024→2816 layer read 7-9 dB SQNR here (pruned in fp32 on the CPU), so the row shows what 2:4 costs
    and buys before any fine-tuning; a deep random model can fall under checks.WRONG_BELOW_DB and read "wrong"."""
    layers = linear_layers(model)
    refuse_quantized(layers)
    skipped = layers_left_alone(layers, SPARSE24, info, dtype, ctx)
    with torch.no_grad():
        for fqn, lin in layers.items():
            if fqn not in skipped:
                lin.weight.copy_(prune_2_4(lin.weight))
    report = quantize(model, dataclasses.replace(SPARSE24, apply=None), info, dtype, example_inputs, ctx)
    recipe = {"_type": "torchao_nb.sparse24", "prune": "magnitude, 2 of every 4 along in_features",
              "config": report.recipe}
    return dataclasses.replace(report, recipe=recipe)


# autoquant's search can't try it: it applies each candidate's `config` alone, and this mode prunes first.
SPARSE24 = register(Mode(
    "sparse24",
    "2:4 semi-structured sparse weights (magnitude-pruned: half the values dropped, the rest kept exactly), "
    "activations dense in the model dtype; a sparse tensor-core matmul (cuSPARSELt). Accuracy drops unless "
    "the model was fine-tuned for 2:4.",
    lambda info, dtype: _make("SemiSparseWeightConfig", SPARSE_MODULE), _unsupported, _layer_reason, apply=_apply,
    where=Where(cpu=(), cuda=(8, 0), cuda_dtypes=("bfloat16", "float16"), packages=("cuSPARSELt",)),
))
