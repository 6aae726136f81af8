"""Runs the bundled notebooks headless: inject parameters, execute with nbclient, write the notebook and its HTML."""

from __future__ import annotations

import ast
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import UserError
from .results import atomic_write

PACKAGE_ROOT = Path(__file__).resolve().parent
NOTEBOOK_DIR = PACKAGE_ROOT.parent / "notebooks"
PARAMETERS_TAG = "parameters"
INJECTED_TAG = "injected-parameters"


def available() -> list[str]:
    return sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) if NOTEBOOK_DIR.is_dir() else []


def find(name: str | os.PathLike) -> Path:
    """A bundled notebook by name ('03_report'), or a path to any .ipynb."""
    p = Path(name)
    if p.suffix == ".ipynb" and p.is_file():
        return p
    candidate = NOTEBOOK_DIR / f"{p.stem}.ipynb"
    if candidate.is_file():
        return candidate
    names = ", ".join(available()) or f"none found in {NOTEBOOK_DIR}"
    raise UserError(f"no notebook {str(name)!r}; bundled notebooks: {names} (or give a path to an .ipynb file).")


def _parameters_cell(nb) -> int | None:
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and PARAMETERS_TAG in cell.get("metadata", {}).get("tags", []):
            return i
    return None


def parameter_names(nb) -> list[str]:
    """The names assigned in the cell tagged `parameters` (its defaults)."""
    i = _parameters_cell(nb)
    if i is None:
        return []
    tree = ast.parse(nb.cells[i].source)
    names = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def inject_parameters(nb, params: dict[str, Any]):
    """Add a cell after the `parameters` cell that overrides its defaults (papermill's convention)."""
    if not params:
        return nb
    import nbformat

    i = _parameters_cell(nb)
    if i is None:
        raise UserError(f"this notebook has no cell tagged '{PARAMETERS_TAG}', so it takes no parameters (got {', '.join(params)}).")
    known = parameter_names(nb)
    unknown = [k for k in params if k not in known]
    if unknown:
        raise UserError(f"unknown notebook parameter(s) {', '.join(unknown)}; this notebook takes: {', '.join(known)}.")
    source = "# Parameters injected by `python -m torchao_nb notebook`\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": [INJECTED_TAG]})
    nb.cells = [c for c in nb.cells if INJECTED_TAG not in c.get("metadata", {}).get("tags", [])]
    nb.cells.insert(i + 1, cell)
    return nb


def _model_names(value: Any) -> Any:
    from . import models

    if not isinstance(value, str):
        raise UserError(f"model must be a registry name such as 'mlp', not {value!r}.")
    for part in value.split(","):
        models.get(part.strip())
    return value


def _mode_names(value: Any) -> Any:
    from . import autoquant  # noqa: F401  (registers the autoquant mode)
    from . import modes

    if not isinstance(value, (str, list, tuple)):
        raise UserError(f"modes must be comma-separated names or 'all', not {value!r}.")
    modes.resolve_modes(value)
    return value


def _batch_sizes(value: Any) -> list[int]:
    from .config import check_batch_sizes

    return list(check_batch_sizes(value))


def _device(value: Any) -> Any:
    from .env import DEVICES, resolve_device

    if not isinstance(value, str):
        raise UserError(f"device must be one of {', '.join(DEVICES)}, not {value!r}.")
    resolve_device(value)
    return value


def _dtype(value: Any) -> Any:
    from . import env

    env.resolve_dtype(value, env.device_info("cpu"))  # only the name is checked here; auto is resolved by the run
    return value


def _boolean(name: str):
    from .config import check_bool

    return lambda value: check_bool(name, value, from_text=True)


# Parameters that name something a registry knows, checked before a kernel starts: a typo costs one line, not a
# kernel start and a traceback. Booleans given as text (-p compile=false) arrive as the bool they mean.
PARAMETER_CHECKS = {"model": _model_names, "modes": _mode_names, "batch_sizes": _batch_sizes, "device": _device,
                    "dtype": _dtype, **{name: _boolean(name) for name in ("compile", "baseline", "fast")}}


def check_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters with their values checked (and normalised: batch sizes as a list of ints)."""
    return {k: PARAMETER_CHECKS[k](v) if k in PARAMETER_CHECKS else v for k, v in params.items()}


def kernel_env() -> dict[str, str]:
    """The kernel imports this same torchao_nb, installed or not."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT.parent), env.get("PYTHONPATH")]))
    env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    return env


def execute(name: str | os.PathLike, out: str | os.PathLike, params: dict[str, Any] | None = None,
            timeout_s: int = 3600, kernel_name: str = "python3") -> tuple[Path, Path]:
    """Execute a notebook with `params` in `out` (its working folder); write NAME.ipynb and NAME.html there."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    source = find(name)
    nb = inject_parameters(nbformat.read(source, as_version=4), check_parameters(dict(params or {})))
    out_dir = Path(out)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write to {out_dir}: {e.strerror or e}; choose another --out folder.") from None
    ipynb = out_dir / source.name
    html_file = ipynb.with_suffix(".html")
    with (tempfile.TemporaryDirectory(prefix="torchao_nb-") if os.name == "posix"
          else contextlib.nullcontext()) as socket_dir:
        client = NotebookClient(nb, timeout=timeout_s, kernel_name=kernel_name, config=_kernel_config(socket_dir),
                                resources={"metadata": {"path": str(out_dir)}})
        try:
            client.execute(env=kernel_env())
        except CellExecutionError:
            # Keep what ran, with the failing cell's traceback, so the reader sees where it broke.
            _write(nb, ipynb, html_file)
            raise
    _write(nb, ipynb, html_file)
    return ipynb, html_file


def _kernel_config(socket_dir: str | None):
    """Where Unix sockets exist, the kernel talks over them (ipc) instead of TCP on localhost: nothing on the
    network, and no "running over TCP without encryption" warning on every run. The socket path is absolute:
    the kernel runs in the output folder, this process wherever it was started."""
    from traitlets.config import Config

    if socket_dir is None:
        return Config()
    return Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(socket_dir, "kernel")}})


# nbconvert's lab template, less every script it loads from a CDN (require.js, MathJax, mermaid, the widget
# manager): the export is a file that opens offline, as `report`'s is. Figures are PNG outputs, embedded.
OFFLINE_TEMPLATE = "torchao_nb_offline.html.j2"
_OFFLINE_SOURCE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
"""


def offline_html(nb) -> str:
    """The notebook as one HTML file that loads nothing from the network."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(extra_loaders=[DictLoader({OFFLINE_TEMPLATE: _OFFLINE_SOURCE})],
                            template_file=OFFLINE_TEMPLATE)
    return exporter.from_notebook_node(nb)[0]


def _write(nb, ipynb: Path, html_file: Path) -> None:
    import nbformat

    atomic_write(ipynb, nbformat.writes(nb))
    atomic_write(html_file, offline_html(nb))


def parse_param(text: str) -> tuple[str, Any]:
    """'name=value' → (name, value); the value is a Python literal when it parses as one, else a string."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip().isidentifier():
        raise UserError(f"parameter {text!r} should look like name=value, e.g. -p batch_sizes=1,8.")
    try:
        return name.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name.strip(), value
