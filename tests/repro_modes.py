"""Fake modes for tests/test_repro.py: each breaks only the Linear layers with BAD_OUT output features, and says as
code (Mode.repro_code) how a standalone script breaks a layer the same way, with torch and ctypes only."""

import ctypes

from torchao_nb import modes

SEGFAULTS = "test-segfaults-one-layer"  # the quantized layer's kernel reads address 0: a real SIGSEGV
NEGATES = "test-negates-one-layer"  # the quantized layer returns minus its output: SQNR -6 dB, a wrong output
BAD_OUT = 128


def _crash(x):
    ctypes.string_at(0)


def _negated(forward):
    return lambda x: -forward(x)


BREAKS = {SEGFAULTS: (lambda lin: _crash, "lambda x: ctypes.string_at(0)"),
          NEGATES: (lambda lin: _negated(lin.forward), "(lambda f: lambda x: -f(x))(layer.forward)")}


def _apply(name):
    def apply(model, info, dtype, example_inputs, context):
        layers = modes.linear_layers(model)
        bad = {fqn: lin for fqn, lin in layers.items() if lin.out_features == BAD_OUT}
        for lin in bad.values():
            lin.forward = BREAKS[name][0](lin)
        return modes.ApplyReport(len(bad), len(layers))
    return apply


def _repro_code(name):
    def code(layers, info, dtype, settings):
        lines = ["import ctypes"]
        for fqn, lin in layers.items():
            if lin.out_features == BAD_OUT:
                lines += [f"layer = model.get_submodule({fqn!r})", f"layer.forward = {BREAKS[name][1]}"]
        return "\n".join(lines)
    return code


def register() -> None:
    for name in BREAKS:
        if name not in modes.MODES:
            modes.register(modes.Mode(name, f"breaks every Linear with {BAD_OUT} outputs (tests)", lambda info, dtype: None,
                                      apply=_apply(name), repro_code=_repro_code(name)))


def unregister() -> None:
    for name in BREAKS:
        modes.MODES.pop(name, None)
