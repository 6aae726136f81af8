"""autoquant's disk cache of per-layer timings: one JSON file per measured (layer shape, candidate, settings)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from ..results import atomic_write

CACHE_ENV = "TORCHAO_NB_CACHE_DIR"  # overrides the cache folder (default ~/.cache/torchao_nb)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torchao_nb"


def _timings_dir(cache_dir=None) -> Path:
    return cache_root(cache_dir) / "autoquant"


def clear_cache(cache_dir: str | os.PathLike | None = None) -> int:
    """Delete every stored autoquant timing; returns how many there were."""
    folder = _timings_dir(cache_dir)
    n = 0
    for f in folder.glob("*.json") if folder.is_dir() else ():
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
            n += 1
    return n


def cache_entries(cache_dir: str | os.PathLike | None = None) -> int:
    folder = _timings_dir(cache_dir)
    return len(list(folder.glob("*.json"))) if folder.is_dir() else 0


class TimingCache:
    """One JSON file per (device, dtype, shape, candidate, compile setting, versions): concurrent sweeps can't clash."""

    def __init__(self, cache_dir=None, enabled: bool = True):
        self.folder = _timings_dir(cache_dir)
        self.enabled = enabled
        self.hits = self.misses = 0

    @staticmethod
    def _name(key: dict) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32] + ".json"

    def get(self, key: dict) -> float | None:
        key = json.loads(json.dumps(key))  # as stored: tuples become lists
        if self.enabled:
            with contextlib.suppress(OSError, ValueError, KeyError):
                entry = json.loads((self.folder / self._name(key)).read_text())
                if entry["key"] == key:
                    self.hits += 1
                    return float(entry["ms"])
        self.misses += 1
        return None

    def put(self, key: dict, ms: float) -> None:
        if not self.enabled:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(self.folder / self._name(key), json.dumps({"key": key, "ms": ms}, indent=1))
        except OSError:  # a read-only cache only costs time next run: never fail the search for it
            pass

