"""The package's shape: dependencies point one way (import-linter's contract in pyproject.toml), modules stay small."""

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "torchao_nb"
MAX_LINES = 500


def test_imports_follow_the_layers():
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-cache"], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    contracts = (PACKAGE.parent / "pyproject.toml").read_text().count("[[tool.importlinter.contracts]]")
    assert contracts >= 4 and f"{contracts} kept, 0 broken" in done.stdout  # the package and its subpackages


def test_no_module_is_long_and_each_says_what_it_is_for():
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        assert len(text.splitlines()) <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {len(text.splitlines())} lines"
        doc = ast.get_docstring(ast.parse(text))
        assert doc and doc.strip(), f"{path.relative_to(PACKAGE)} opens with no line saying what it is for"
