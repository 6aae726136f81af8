"""torchao_nb: see how torchao quantization changes latency, memory and accuracy, in a notebook or headless."""

from .env import UserError
from .results import ResultSet, Row
from .sweep import sweep

__all__ = ["sweep", "ResultSet", "Row", "UserError", "list_modes", "list_models", "BenchmarkPanel"]
__version__ = "0.1.0"


def list_modes(device: str = "auto", dtype=None) -> dict[str, str | None]:
    """Every mode → None if it runs on this machine, else why not."""
    from . import env, recipes

    info = env.device_info(env.resolve_device(device))
    return recipes.availability(info, env.resolve_dtype(dtype, info))


def list_models() -> dict[str, str]:
    from . import models

    return {name: spec.description for name, spec in models.MODELS.items()}


def __getattr__(name: str):
    # The panel needs ipywidgets; import it only when asked for, so headless use never loads it.
    if name == "BenchmarkPanel":
        from .widgets import BenchmarkPanel

        return BenchmarkPanel
    raise AttributeError(f"module 'torchao_nb' has no attribute {name!r}")
