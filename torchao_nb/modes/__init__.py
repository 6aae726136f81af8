"""The registry of quantization modes: name → description, torchao config per device, where it runs, reasons it can't.

`core` says what a mode is and applies one; each family module registers its modes when imported, and the
order below is the order `all` runs them in (autoquant, a plug-in, registers itself last when imported).
"""

from .core import (ANY_GPU, DTYPE_NAMES, KNOWN_FAILURES, MODES, ApplyContext, ApplyReport, Mode, Where,
                   availability, config_dict, explain_failure, flagged_settings, get, installed, is_quantized,
                   layers_left_alone, linear_layers, mode_names, quantize, refuse_quantized, register, resolve_modes,
                   seeing_linear_inputs, settings_from)
from . import int8, int4, float8, mx, sparse, torch_ao  # noqa: E402,F401  (each registers its modes)
from .float8 import FLOAT8_GRANULARITIES, Float8Settings  # noqa: E402
from .int4 import INT4_GROUP_SIZES, Int4Settings  # noqa: E402

__all__ = ["ANY_GPU", "DTYPE_NAMES", "KNOWN_FAILURES", "MODES", "ApplyContext", "ApplyReport", "Mode", "Where",
           "availability", "config_dict", "explain_failure", "flagged_settings", "get", "installed", "is_quantized",
           "layers_left_alone", "linear_layers", "mode_names", "quantize", "refuse_quantized", "register",
           "resolve_modes", "seeing_linear_inputs", "settings_from",
           "FLOAT8_GRANULARITIES", "Float8Settings", "INT4_GROUP_SIZES", "Int4Settings"]
