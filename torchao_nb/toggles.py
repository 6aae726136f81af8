"""A group of ipywidgets toggle buttons: one or several choices, unavailable ones disabled with their reason."""

from __future__ import annotations

from typing import Any

import ipywidgets as w

from .errors import UserError


class ToggleGroup:
    """Toggle buttons, one per option; options that can't be chosen are disabled with their reason as tooltip."""

    def __init__(self, options: dict[str, str], multiple: bool, value: Any):
        self.multiple = multiple
        self.buttons = {name: w.ToggleButton(description=name, layout=w.Layout(width="auto")) for name in options}
        self.box = w.HBox(list(self.buttons.values()), layout=w.Layout(flex_flow="row wrap"))
        self._syncing = False
        for name, b in self.buttons.items():
            b.observe(lambda change, name=name: self._toggled(name, change["new"]), "value")
        self.set_available({}, options)
        self.value = value

    def set_available(self, unavailable: dict[str, str | None], descriptions: dict[str, str]) -> None:
        for name, b in self.buttons.items():
            reason = unavailable.get(name)
            b.disabled = reason is not None
            b.tooltip = f"can't run here: {reason}" if reason else descriptions.get(name, "")
            b.icon = "ban" if reason else ""
            if reason and b.value:
                b.value = False

    def _toggled(self, name: str, on: bool) -> None:
        if self._syncing or self.multiple:
            return
        self._syncing = True
        try:
            if on:
                for other, b in self.buttons.items():
                    if other != name:
                        b.value = False
            else:  # a radio choice can't be emptied: clicking the chosen button keeps it chosen
                self.buttons[name].value = True
        finally:
            self._syncing = False

    @property
    def value(self):
        chosen = tuple(n for n, b in self.buttons.items() if b.value)
        return chosen if self.multiple else (chosen[0] if chosen else None)

    @value.setter
    def value(self, value) -> None:
        wanted = set(value) if self.multiple else {value}
        unknown = wanted - set(self.buttons)
        if unknown:
            raise UserError(f"unknown choice {sorted(unknown)}; choose from {', '.join(self.buttons)}.")
        blocked = {n: self.buttons[n].tooltip for n in wanted if self.buttons[n].disabled}
        if blocked:
            raise UserError("; ".join(f"{n}: {why}" for n, why in blocked.items()))
        self._syncing = True
        try:
            for name, b in self.buttons.items():
                b.value = name in wanted
        finally:
            self._syncing = False
