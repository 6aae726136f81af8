"""The panel's inputs: a control per sweep option (config.OPTIONS) and per flagged mode setting, the model picker,
and what they read into sweep()'s arguments. Adding an option to config.OPTIONS adds its control here."""

from __future__ import annotations

import contextlib
import dataclasses
import html
import os
from dataclasses import dataclass
from typing import Any, Callable

import ipywidgets as w
import torch
from torch import nn

from . import config, models
from . import env as envmod
from . import modes as modes_mod
from .config import check_batch_sizes
from .errors import UserError
from .toggles import ToggleGroup

NOTEBOOK_MODULE = "__notebook__"  # the model picker's entry for "a module from this notebook"
OTHER_MODEL = "__other__"  # the model picker's entry for a typed name: hf:..., hf-config:..., a .gguf file


def default_namespace() -> dict[str, Any]:
    """The notebook's variables: IPython's user namespace when there is one, else __main__'s."""
    with contextlib.suppress(ImportError):
        from IPython import get_ipython

        ip = get_ipython()
        if ip is not None:
            return ip.user_ns
    import __main__

    return vars(__main__)


# ---- the settings' controls, built from config.OPTIONS and the modes' flagged settings ----------

LABEL_WIDTH = "90px"
STYLE = {"description_width": LABEL_WIDTH}


@dataclass
class Control:
    """One setting's widget, and `read()`: its value for sweep() (a bad entry is a UserError naming it)."""

    widget: Any  # an ipywidget, or a ToggleGroup (whose `.box` is what the panel shows)
    read: Callable[[], Any]
    default: Any = None  # a mode setting equal to it is left out of sweep()'s arguments
    modes: tuple[str, ...] = ()  # for a mode setting: the modes it sets, and its field's name as `field`
    field: str = ""

    @property
    def view(self):
        return getattr(self.widget, "box", self.widget)


def _shown(value: Any) -> str:
    """A choice as the list shows it: None is "let the sweep choose"."""
    if value is None or isinstance(value, bool):
        return {None: "auto", True: "on", False: "off"}[value]
    return str(value)


def control(label: str, default: Any, help: str, choices: tuple | None, parse: Callable | None) -> Control:
    """The control of one setting: a checkbox for on/off, a list for choices (auto first where the default is
    "let the sweep choose"), else a text box read with the command line's parser (empty: the default)."""
    if isinstance(default, bool):
        box = w.Checkbox(value=default, description=label, indent=False, tooltip=help)
        return Control(box, lambda: box.value, default)
    if choices is not None or parse is bool:
        values = tuple(choices or (True, False))
        if default not in values and "auto" not in values:
            values = (None, *values)
        box = w.Dropdown(options=[(_shown(v), v) for v in values], value=default if default in values else values[0],
                         description=label, tooltip=help, style=STYLE)
        return Control(box, lambda: box.value, default)
    box = w.Text(value="" if default is None else str(default), description=label, tooltip=help, style=STYLE,
                 placeholder="default")

    def read():
        text = box.value.strip()
        try:
            return None if not text else (parse or str)(text)
        except ValueError:
            what = {int: "a whole number", float: "a number"}.get(parse, "a value")
            raise UserError(f"{label} must be {what}, got {text!r}; clear it for the default.") from None
    return Control(box, read, default)


def _device(option: config.Option) -> Control:
    toggles = ToggleGroup({d: "" for d in option.choices}, multiple=False, value=option.default)
    if not envmod.cuda_available():
        toggles.set_available({"cuda": "torch sees no CUDA GPU here"}, {})
    return Control(toggles, lambda: toggles.value or option.default)


def _batch_sizes(option: config.Option) -> Control:
    box = w.Text(value="1", description=option.text(), placeholder="e.g. 1,8", style=STYLE)
    # Disabled while a notebook's module is picked: it runs on its example inputs as given.
    return Control(box, lambda: None if box.disabled else check_batch_sizes(box.value.split(",")))


def _threads(option: config.Option) -> Control:
    box = w.BoundedIntText(value=torch.get_num_threads(), min=1, max=max(os.cpu_count() or 1, torch.get_num_threads()),
                           description=option.text(), tooltip=option.help, style=STYLE, layout=w.Layout(width="160px"))
    return Control(box, lambda: box.value)


def _generic(option: config.Option) -> Control:
    return control(option.text(), option.default, option.help, option.choices, option.type)


# Options whose control is not the generic one: the device's buttons know which devices exist here, the batch
# box starts at the sweep's default of 1, the threads box at torch's count.
_SPECIAL = {"device": _device, "batch_sizes": _batch_sizes, "threads": _threads}


def setting_controls() -> dict[str, Control]:
    """A control for every option with a command-line flag (the others, isolate and policy, are the panel's own
    arguments) and for every flagged mode setting (named by its flag: int4_group_size), in their order."""
    out = {o.name: _SPECIAL.get(o.name, _generic)(o) for o in config.OPTIONS if o.flag is not None}
    for flag, (f, names) in modes_mod.flagged_settings().items():
        m = f.metadata
        c = control(m.get("label", flag.lstrip("-")), f.default, m["help"], m.get("choices"), m.get("type", float))
        out[flag.lstrip("-").replace("-", "_")] = dataclasses.replace(c, modes=tuple(names), field=f.name)
    return out


def sweep_options(controls: dict[str, Control]) -> dict[str, Any]:
    """The controls' values as sweep() keywords: options by name, mode settings as `mode={field: value}` when
    changed from their default (a sweep that compares int4weightonly-hqq with int4 compares them at one size)."""
    out: dict[str, Any] = {}
    for name, c in controls.items():
        value = c.read()
        if not c.modes:
            out[name] = value
        elif value != c.default:
            for mode in c.modes:
                out.setdefault(mode, {})[c.field] = value
    return out


class Choices:
    """What Run measures: the model, the modes and the settings' controls; `sweep_kwargs` reads them. A mode this
    device and dtype can't run is disabled with its reason, and that is recomputed when either changes."""

    def __init__(self, model: str | None, modes: Any):
        self.picker, self.controls = ModelPicker(model), setting_controls()
        p = self.picker
        self.model, self.model_name, self.module_name, self.inputs_name, self.module_box = (
            p.model, p.name, p.module_name, p.inputs_name, p.module_box)
        self.resolved = w.HTML()  # what auto means on this machine
        self.modes = ToggleGroup({n: m.description for n, m in modes_mod.MODES.items()}, multiple=True, value=())
        self.model.observe(lambda _: self._model_changed(), "value")
        for b in self.device.buttons.values():
            b.observe(lambda _: self._refresh_modes(), "value")
        self.dtype.observe(lambda _: self._refresh_modes(), "value")
        self._model_changed()
        self._refresh_modes()
        runnable = [n for n, b in self.modes.buttons.items() if not b.disabled]
        self.modes.value = runnable if modes is None else modes_mod.resolve_modes(modes)

    def __getattr__(self, name: str):
        controls = self.__dict__.get("controls", {})  # absent while __init__ starts
        if name in controls:
            return controls[name].widget
        raise AttributeError(f"the panel has no attribute {name!r}")

    def target(self) -> tuple[str, Any]:
        """The device and dtype the choices resolve to on this machine."""
        device = envmod.resolve_device(self.device.value or "auto")
        return device, envmod.resolve_dtype(self.dtype.value, envmod.device_info(device))

    def _model_changed(self) -> None:
        custom = self.picker.changed()
        # A notebook's module runs on its example inputs as given: their batch is the row's.
        self.batch_sizes.disabled = custom
        self.batch_sizes.tooltip = "your module's example inputs set the batch" if custom else "e.g. 1,8"

    def _refresh_modes(self) -> None:
        try:
            device, dtype = self.target()
        except UserError:
            return
        info = envmod.device_info(device)
        self.resolved.value = (f"<span style='font-size:12px;color:#555'>runs on {device} ({html.escape(info.name)}), "
                               f"{envmod.dtype_name(dtype)}</span>")
        self.modes.set_available(modes_mod.availability(info, dtype), {n: m.description for n, m in modes_mod.MODES.items()})

    def sweep_kwargs(self, namespace: dict[str, Any]) -> dict[str, Any]:
        if not self.modes.value:
            raise UserError("no mode selected; click at least one mode button.")
        return dict(self.picker.args(namespace), modes=list(self.modes.value), **sweep_options(self.controls))


class ModelPicker:
    """The model Run measures: a registry model, a typed name (hf:..., hf-config:..., a .gguf file), or an
    nn.Module of the notebook with its example inputs."""

    def __init__(self, model: str | None):
        typed = model is not None and model not in models.MODELS
        if typed:
            models.get(model)  # a form (hf:...) is typed into the name box; anything else is a clear UserError
        options = [(n if s.params is None else f"{n}  ({s.params / 1e6:.1f}M params)", n) for n, s in models.MODELS.items()]
        options += [("another: hf:…, hf-config:… or a .gguf file…", OTHER_MODEL),
                    ("a module from this notebook…", NOTEBOOK_MODULE)]
        self.model = w.Dropdown(options=options, value=OTHER_MODEL if typed else model or models.DEFAULT_MODEL,
                                description="model", style=STYLE)
        self.name = w.Text(value=model if typed else "", description="name", style=STYLE,
                           placeholder="hf:<hub id or folder>, hf-config:<architecture> or /path/to/model.gguf")
        self.help = w.HTML()
        self.module_name = w.Text(description="variable", placeholder="name of an nn.Module, e.g. net", style=STYLE)
        self.inputs_name = w.Text(description="inputs", placeholder="its example inputs, e.g. x or (x, mask)", style=STYLE)
        self.module_box = w.VBox([self.module_name, self.inputs_name])

    def changed(self) -> bool:
        """Show the boxes the choice needs; True when it is a notebook's module."""
        custom = self.model.value == NOTEBOOK_MODULE
        self.module_box.layout.display = "" if custom else "none"
        self.name.layout.display = "" if self.model.value == OTHER_MODEL else "none"
        spec = models.MODELS.get(self.model.value)
        self.help.value = "" if spec is None else f"<span style='font-size:12px'>{html.escape(spec.description)}</span>"
        return custom

    def args(self, namespace: dict[str, Any]) -> dict[str, Any]:
        """sweep()'s model arguments, checked before anything runs (bad input raises UserError)."""
        if self.model.value == OTHER_MODEL:
            name = self.name.value.strip()
            if not name:
                raise UserError("type a model name: hf:<hub id or local folder>, hf-config:<architecture> or the path "
                                "of a .gguf file.")
            if name.lower().endswith(".gguf") and not name.startswith(tuple(models.FORMS)):
                name = f"hf:{name}"  # a bare path to a .gguf file
            return {"model": models.get(name).name}  # the command line's errors, before anything runs
        if self.model.value != NOTEBOOK_MODULE:
            return {"model": self.model.value}
        name = self.module_name.value.strip()
        if not name:
            raise UserError("type the variable name of an nn.Module from this notebook, or pick a registry model.")
        if name not in namespace:
            raise UserError(f"there is no variable {name!r} in this notebook; run the cell that defines it first.")
        if not isinstance(namespace[name], nn.Module):
            raise UserError(f"{name} is a {type(namespace[name]).__name__}, not an nn.Module; give the variable that "
                            "holds your model.")
        expr = self.inputs_name.value.strip()
        if not expr:
            raise UserError(f"type the example inputs of {name} (a variable name, or a tuple like (x, mask)).")
        try:
            # Evaluated in the notebook's namespace with no builtins: variable names and tuples of them.
            inputs = eval(expr, {"__builtins__": {}}, namespace)  # noqa: S307
        except Exception as e:
            raise UserError(f"could not read the example inputs {expr!r}: {type(e).__name__}: {e}.") from None
        return {"model": namespace[name], "example_inputs": inputs}
