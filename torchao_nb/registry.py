"""A registry: name → entry, filled by each entry registering itself once (modes, models, figures)."""

from __future__ import annotations

from typing import Iterable, TypeVar

T = TypeVar("T")


class Registry(dict):
    """A dict that refuses a name taken twice or reserved: two entries under one name is always a bug."""

    def __init__(self, what: str, reserved: Iterable[str] = ()):
        super().__init__()
        self.what = what
        self.reserved = frozenset(reserved)

    def add(self, entry: T, name: str | None = None) -> T:
        name = entry.name if name is None else name
        if name in self or name in self.reserved:
            raise ValueError(f"{self.what} {name!r} is already registered or reserved")
        self[name] = entry
        return entry
