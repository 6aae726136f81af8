"""A user's own module, as users write it: in notebook cells, in a script, in `python -c`, swept with the
defaults (a worker process, compiled). README's example is run exactly as written."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

README = Path(__file__).resolve().parent.parent / "README.md"
STATUSES = 'print("STATUS", sorted((r.mode, r.status, r.sqnr_db is not None and r.sqnr_db > 20) for r in rs))'
OK = "STATUS [('int8weightonly', 'ok', True), ('noquant', 'ok', False)]"


def readme_cells() -> list[str]:
    """The cells of README's own-module example (a python block whose cells start with `# cell`)."""
    block = next(b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "class Mine" in b)
    cells = [c.strip() for c in re.split(r"^# cell[^\n]*\n", block, flags=re.M) if c.strip()]
    assert len(cells) == 3, cells
    return cells


def run_python(args: list[str], cwd: Path) -> str:
    done = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_readme_example_in_a_notebook_kernel(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in readme_cells() + [STATUSES]]
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "".join(o.get("text", "") for c in nb.cells for o in c.outputs)
    assert OK in text, text[-3000:]
    table = "".join(o.get("text", "") for o in nb.cells[2].outputs)
    assert "int8weightonly" in table and "×" in table  # the table a user sees shows the speedup


def test_readme_example_as_a_script(tmp_path):
    script = tmp_path / "mine.py"
    script.write_text("\n\n".join(readme_cells() + [STATUSES]) + "\n")
    assert OK in run_python([str(script)], tmp_path)


def test_a_module_built_by_a_function_in_python_c(tmp_path):
    """A class made inside a factory function, its forward reading the factory's locals (a closure)."""
    code = textwrap.dedent("""
        import torch, torchao_nb
        def make(width, scale):
            class Built(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.a, self.b = torch.nn.Linear(256, width), torch.nn.Linear(width, 256)
                def forward(self, x):
                    return self.b(torch.relu(self.a(x)) * scale)
            return Built()
        rs = torchao_nb.sweep(model=make(512, 0.5), example_inputs=(torch.randn(4, 256),),
                              modes="noquant,int8weightonly", progress=False)
    """) + STATUSES
    assert OK in run_python(["-c", code], tmp_path)
