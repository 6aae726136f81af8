"""No import cycle anywhere in the package, subpackages included, read from the source with `ast`.

import-linter's layers contract (pyproject.toml) sees a subpackage as one box, so a cycle inside `models/`
or between a package's `__init__` and its own modules passes it; this graph has one node per module.
Every import counts, at module level or deferred inside a function: a deferred import only postpones a
cycle to the first call, and untangling it is the point (a module's imports say what it stands on).
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "torchao_nb"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _base(name: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module `from <dots><module> import ...` names, inside module `name` at `path`."""
    if not node.level:
        return node.module or ""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that module `name` imports; `from p import x` means the module p.x when x is one."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _base(name, path, node)
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return {m for m in found if m in known and m != name}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    found = modules(root)
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (a depth-first search; an edge back to the current path closes one)."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            cycle = visit(nxt)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_graph_sees_submodules_relative_and_deferred_imports(tmp_path):
    pkg = tmp_path / "torchao_nb"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import a\nfrom .a import thing\n")
    (pkg / "sub" / "a.py").write_text("from .. import low\n\ndef later():\n    from . import thing_in_init\n")
    graph = import_graph(pkg)
    assert graph == {"torchao_nb": set(), "torchao_nb.low": set(),
                     "torchao_nb.sub": {"torchao_nb.sub.a"}, "torchao_nb.sub.a": {"torchao_nb.low", "torchao_nb.sub"}}
    assert find_cycle(graph) == ["torchao_nb.sub", "torchao_nb.sub.a", "torchao_nb.sub"]
    (pkg / "sub" / "a.py").write_text("from .. import low\n")
    assert find_cycle(import_graph(pkg)) is None
