"""Imports torchao quietly and checks that its version is one torchao_nb supports."""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings

# The torchao releases this toolkit is tested with; CI pins the newest.
SUPPORTED_TORCHAO = ((0, 17), (0, 18))

# Loggers whose chatter ("Failed to load _C_mxfp8", pytree deprecation notes, dynamo warnings) is
# noise to a user: the extensions they mention are CUDA-only. torch gives some children levels of
# their own, so they are named too. The panel sends the same loggers to its collapsed log.
NOISY_LOGGERS = ("torch", "torchao", "torch.utils._pytree", "torch._dynamo", "torch._inductor", "py.warnings")


@contextlib.contextmanager
def quiet_logs(level: int = logging.ERROR):
    """Raise the level of torch/torchao's noisy loggers, restoring them on exit."""
    saved = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    try:
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(level)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"torchao(\.|$)")
            warnings.filterwarnings("ignore", message=r".*Enum subclass.*")
            # torchao's tensor subclasses lack a cache hash; torch says so on every compile.
            warnings.filterwarnings("ignore", message=r".*_stable_hash_for_caching.*")
            yield
    finally:
        for name, lvl in saved.items():
            logging.getLogger(name).setLevel(lvl)


def parse_version(text: str) -> tuple[int, int]:
    parts = text.split("+")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)


def version_warning(version: str | None) -> str | None:
    """A sentence for the user when torchao is missing or outside the supported range."""
    lo, hi = SUPPORTED_TORCHAO
    wanted = f"torchao {lo[0]}.{lo[1]}–{hi[0]}.{hi[1]}"
    if version is None:
        return f"torchao is not installed: quantized modes are unavailable. Install {wanted} (pip install 'torchao>=0.17,<0.19')."
    v = parse_version(version)
    if not lo <= v <= hi:
        return f"torchao {version} is outside the supported range ({wanted}); results may be wrong or modes may fail."
    return None


@functools.lru_cache(maxsize=None)
def torchao():
    """The torchao module, imported once with its import noise silenced; None if absent."""
    with quiet_logs():
        try:
            import torchao as module
            import torchao.quantization  # noqa: F401  (registers the configs)
        except ImportError:
            return None
    message = version_warning(module.__version__)
    if message:
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    return module


def torchao_version() -> str | None:
    mod = torchao()
    return None if mod is None else mod.__version__
