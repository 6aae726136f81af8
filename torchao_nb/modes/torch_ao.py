"""PyTorch's own dynamic quantization (torch.ao.quantization.quantize_dynamic), measured beside torchao's modes."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..env import DeviceInfo
from ..errors import UserError
from .core import ApplyContext, ApplyReport, Mode, Where, layers_left_alone, linear_layers, refuse_quantized, register


# Measured (torch 2.13): dynamo has no proxy for the C++ ScriptObject that holds a DynamicQuantizedLinear's packed
# int8 weights, so torch.compile breaks the graph at every quantized Linear: with fullgraph=True (built-in models)
# compiling fails; without it (your own module) the quantized matmuls run eagerly between compiled pieces, and the
# row counts them as graph breaks. Both are this mode's honest result when compiled; uncompiled it runs as designed.
NOT_ONE_GRAPH = ("torch-ao-dynamic can't be compiled as one graph: torch.compile can't trace torch.ao's "
                 "DynamicQuantizedLinear (its int8 weights are a C++ ScriptObject dynamo has no proxy for), and this "
                 "model compiles with fullgraph=True; measure it with --no-compile (compile=False), or on your own "
                 "module, where its quantized matmuls run eagerly between compiled pieces (counted as graph breaks)")


def _engines() -> list[str]:
    return [e for e in torch.backends.quantized.supported_engines if e != "none"]


def _unsupported(info: DeviceInfo, dtype: torch.dtype) -> str | None:
    if info.is_cuda:
        return ("torch.ao's dynamic quantization has no CUDA kernels, it runs on CPUs only (fbgemm/onednn/qnnpack): "
                "use --device cpu --dtype float32")
    if dtype != torch.float32:
        return "torch.ao's dynamic quantization takes float32 models only (its kernels read fp32): run with --dtype float32"
    if not _engines():
        return "this torch build has no quantized CPU engine (fbgemm, x86, onednn or qnnpack)"
    return None


def _dynamic_types() -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated: the description says so
        from torch.ao.quantization.quantization_mappings import get_default_dynamic_quant_module_mappings

        return get_default_dynamic_quant_module_mappings()


def _layer_reason(lin: nn.Linear, info: DeviceInfo, dtype: torch.dtype) -> str | None:
    if type(lin) not in _dynamic_types():  # torch.ao maps exact types: a subclass of nn.Linear stays as it is
        return f"torch.ao has no dynamically quantized version of {type(lin).__name__}"
    return None


def _is_dynamic(module: nn.Module) -> bool:
    from torch.ao.nn.quantized.dynamic import Linear

    return isinstance(module, Linear)


def _apply(model: nn.Module, info: DeviceInfo, dtype: torch.dtype, example_inputs, ctx: ApplyContext) -> ApplyReport:
    """quantize_dynamic on the fitting Linears, by name: it swaps each for torch.ao's DynamicQuantizedLinear."""
    if ctx.compile.enabled and ctx.compile.fullgraph:
        # Said before quantizing: dynamo's own error would read as a graph break in torchao_nb's model code.
        raise UserError(NOT_ONE_GRAPH)
    layers = linear_layers(model)
    refuse_quantized(layers)
    skipped = layers_left_alone(layers, TORCH_AO_DYNAMIC, info, dtype, ctx)
    if "" in layers and "" not in skipped:
        skipped[""] = "the model itself is one nn.Linear: quantize_dynamic swaps a model's children, not the model"
    fitting = {fqn for fqn in layers if fqn not in skipped}
    if not fitting:
        raise UserError(f"no Linear layer fits torch-ao-dynamic ({next(iter(skipped.values()), 'none found')})")
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated (said in the description)
        quantize_dynamic(model, fitting, dtype=torch.qint8, inplace=True)
    done = sum(_is_dynamic(m) for fqn, m in model.named_modules() if fqn in fitting)
    recipe = {"_type": "torch.ao.quantization.quantize_dynamic", "dtype": "qint8", "qconfig": "default_dynamic_qconfig",
              "weight": "int8, one symmetric scale per tensor (MinMaxObserver)",
              "activation": "uint8, one scale per tensor computed on every call (reduce_range)",
              "engine": torch.backends.quantized.engine}
    return ApplyReport(done, len(layers), skipped, recipe)


TORCH_AO_DYNAMIC = register(Mode(
    "torch-ao-dynamic",
    "PyTorch's own (deprecated) torch.ao dynamic quantization, for comparison: int8 per-tensor weights packed for "
    "fbgemm/onednn, activations quantized to uint8 on every call; CPU float32 only.",
    lambda info, dtype: None, _unsupported, _layer_reason, apply=_apply,
    where=Where(cpu=("float32",), cuda=None),
))
