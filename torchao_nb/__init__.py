"""torchao_nb: see how torchao quantization changes latency, memory and accuracy, in a notebook or headless."""

from .errors import UserError
from .results import ResultSet, Row

__all__ = ["sweep", "ResultSet", "Row", "UserError", "list_modes", "list_models", "BenchmarkPanel"]
from ._version import __version__  # noqa: E402,F401


def list_modes(device: str = "auto", dtype=None) -> dict[str, str | None]:
    """Every mode → None if it runs on this machine, else why not."""
    from . import env, modes
    from . import autoquant  # noqa: F401  (registers the autoquant mode)

    info = env.device_info(env.resolve_device(device))
    return modes.availability(info, env.resolve_dtype(dtype, info))


def list_models() -> dict[str, str]:
    from . import models

    return {name: spec.description for name, spec in models.MODELS.items()}


def __getattr__(name: str):
    # Imported on first use: `python -m torchao_nb` can start its worker before torch is imported here,
    # and headless use never loads ipywidgets.
    if name == "sweep":
        from .engine import sweep

        return sweep
    if name == "BenchmarkPanel":
        from .widgets import BenchmarkPanel

        return BenchmarkPanel
    raise AttributeError(f"module 'torchao_nb' has no attribute {name!r}")
