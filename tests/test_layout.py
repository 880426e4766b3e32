"""
The shape of the house (README "How it is built"): wings by concern, a layering rule, no
import circle, and backends that import nothing of the core but ``aiorunner.backend``.

The import graph is read from the source with ``ast``: every ``import`` and ``from ...
import`` of a module of ``aiorunner``, at module level or deferred into a function (a
deferred import that dodges a circle is still a circle), ``if TYPE_CHECKING:`` blocks aside
(they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "aiorunner"

#: The modules every wing may use; they import no wing.
FOUNDATIONS = {
    "aiorunner._config",
    "aiorunner._exceptions",
    "aiorunner._offload",
    "aiorunner._redact",
    "aiorunner._result",
    "aiorunner._version",
    "aiorunner.backend",
}

#: wing -> the wings its modules may import (besides their own and the foundations).
ALLOWED: dict[str, set[str]] = {
    "foundation": set(),
    "aiorunner.testing": set(),
    "aiorunner._monitor": set(),
    "aiorunner._export": set(),
    "aiorunner._context": {"aiorunner._export"},
    "aiorunner._run": {"aiorunner._monitor", "aiorunner._export", "aiorunner._context"},
    "aiorunner._orchestrate": {
        "aiorunner._monitor",
        "aiorunner._export",
        "aiorunner._context",
        "aiorunner._run",
    },
    "aiorunner._traces": {"aiorunner._export"},
    "aiorunner._doctor": {"aiorunner._export"},
    "aiorunner.cli": {
        "aiorunner._monitor",
        "aiorunner._export",
        "aiorunner._context",
        "aiorunner._run",
        "aiorunner._orchestrate",
        "aiorunner._traces",
        "aiorunner._doctor",
    },
    "aiorunner.__main__": {"aiorunner.cli"},
    # The public door to the Dask executor (imports distributed when one is made).
    "aiorunner.dask": {"aiorunner._orchestrate"},
    # The front door resolves names lazily (importlib over a table), not by import.
    "aiorunner": set(),
}


def _modules(package: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is_package) for every module under ``package``."""
    found = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = (path, is_package)
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str, modules: dict[str, tuple[Path, bool]]) -> dict[str, int]:
    """The modules of the package that module ``name`` imports -> line of the first."""
    path, is_package = modules[name]
    package = name if is_package else name.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        while target not in modules and "." in target:
            target = target.rpartition(".")[0]
        if target in modules and target != name:
            found.setdefault(target, line)

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.orelse:
                    visit_one(stmt)
            else:
                visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "aiorunner":
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "aiorunner":
                return
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                add(submodule if submodule in modules else target, node.lineno)
        else:
            visit(node)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, dict[str, int]]:
    modules = _modules(package)
    return {name: imports_of(name, modules) for name in modules}


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def wing_of(module: str) -> str:
    if module in FOUNDATIONS:
        return "foundation"
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def test_no_import_circle():
    """No two modules of aiorunner import each other, directly or round a loop, counting
    imports deferred into functions."""
    assert circles(import_graph()) == []


def test_circle_finder_sees_deferred_imports(tmp_path: Path):
    """The walker counts an import inside a function and ignores a TYPE_CHECKING one:
    a circle closed by a deferred import is found, one closed only for the type
    checker is not (so the check above can fail)."""
    package = tmp_path / "aiorunner"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "_a.py").write_text("from ._b import x\n")
    (package / "_b.py").write_text("def f():\n    from . import _a\n")
    (package / "_c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ._a import x\n"
    )
    (package / "_d.py").write_text("from ._c import y\n")
    graph = import_graph(package)
    assert circles(graph) == [["aiorunner._a", "aiorunner._b"]]
    assert "aiorunner._a" not in graph["aiorunner._c"]


def test_every_module_belongs_to_a_known_wing():
    """A new module lands in a wing the layering rule knows (or is a named foundation)."""
    unknown = sorted(m for m in import_graph() if wing_of(m) not in ALLOWED)
    assert unknown == []


def test_layering():
    """Foundations <- _monitor, _export <- _context <- _run <- _orchestrate <- cli;
    _traces and _doctor use the foundations and _export. No module imports a wing its own
    wing may not (a lower wing never imports a higher one)."""
    wrong = []
    for module, targets in sorted(import_graph().items()):
        wing = wing_of(module)
        for target, line in sorted(targets.items()):
            other = wing_of(target)
            if other in (wing, "foundation"):
                continue
            if other not in ALLOWED[wing]:
                wrong.append(f"{module}:{line} imports {target} ({wing} may not use {other})")
    assert wrong == []


def test_wings_and_top_level():
    """At the top only the foundations, the public modules (the API, testing, dask) and
    __main__ (at most 12 modules); the rest lives in at least five wings."""
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    wings = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert len(top) <= 12, top
    assert set(top) == {m.rpartition(".")[2] for m in FOUNDATIONS} | {
        "__init__",
        "__main__",
        "dask",
        "testing",
    }
    assert len(wings) >= 5, wings


@pytest.mark.parametrize(
    "distribution", sorted(p.name for p in (ROOT / "backends").iterdir() if p.is_dir())
)
def test_backends_import_only_the_plugin_interface(distribution: str):
    """A backend distribution imports nothing of aiorunner but ``aiorunner.backend``,
    as a third party's would."""
    wrong = []
    for path in sorted((ROOT / "backends" / distribution / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] == "aiorunner" and name != "aiorunner.backend":
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert wrong == []
