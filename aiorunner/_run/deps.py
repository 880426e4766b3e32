"""
Will the script's imports resolve? Checked before spawning, without running the script.

The script's top-level imports are found with ``ast`` and its PEP 723 ``dependencies`` are
read from its inline metadata; both are checked against the *target* interpreter. No false
alarms: relative imports, ``__future__``, modules beside the script or on its PYTHONPATH,
and imports guarded by ``try/except ImportError``, ``if TYPE_CHECKING`` or a version /
platform test are not flagged. When the target interpreter is our own, the check is a few
``find_spec`` calls in this process; for another interpreter, one probe subprocess lists
what it can import, cached per interpreter for the life of the process.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._exceptions import option_name

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "DependencyReport",
    "InterpreterInventory",
    "check_with_inventory",
    "check_with_own_interpreter",
    "probe_interpreter",
    "top_level_imports",
]

_GUARD_EXCEPTIONS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


@dataclass(frozen=True)
class DependencyReport:
    imports: tuple[str, ...]
    missing_modules: tuple[str, ...] = ()
    missing_distributions: tuple[str, ...] = ()
    python_mismatch: str | None = None

    @property
    def ok(self) -> bool:
        return not (self.missing_modules or self.missing_distributions or self.python_mismatch)

    def describe(self, interpreter: str) -> str:
        parts = []
        if self.missing_modules:
            parts.append(
                f"missing module{'s' if len(self.missing_modules) > 1 else ''}: "
                + ", ".join(self.missing_modules)
            )
        if self.missing_distributions:
            parts.append("missing PEP 723 dependencies: " + ", ".join(self.missing_distributions))
        if self.python_mismatch:
            parts.append(self.python_mismatch)
        return (
            f"dependency check failed for interpreter {interpreter}: {'; '.join(parts)}. "
            "Install them into that interpreter's environment, or turn the check off with "
            f"{option_name('validate_dependencies=False')}"
        )


def _is_guard_handler(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(
        (isinstance(n, ast.Name) and n.id in _GUARD_EXCEPTIONS)
        or (isinstance(n, ast.Attribute) and n.attr in _GUARD_EXCEPTIONS)
        for n in names
    )


def _is_conditional_guard(test: ast.expr) -> bool:
    """``if TYPE_CHECKING``, ``if sys.version_info ...``, ``if sys.platform ...``."""
    for node in ast.walk(test):
        if isinstance(node, ast.Name) and node.id == "TYPE_CHECKING":
            return True
        if isinstance(node, ast.Attribute) and node.attr in (
            "TYPE_CHECKING",
            "version_info",
            "platform",
            "implementation",
        ):
            return True
        if isinstance(node, ast.Attribute) and node.attr == "name" and _is_os(node.value):
            return True
    return False


def _is_os(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "os"


def top_level_imports(tree: ast.Module) -> tuple[str, ...]:
    """Top-level module names imported unconditionally at module level (also inside
    plain ``if``/``with``/``try`` bodies that are not import guards)."""
    found: dict[str, None] = {}

    def visit(body: Iterable[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.Import):
                for alias in stmt.names:
                    found.setdefault(alias.name.partition(".")[0], None)
            elif isinstance(stmt, ast.ImportFrom):
                if stmt.level == 0 and stmt.module and stmt.module != "__future__":
                    found.setdefault(stmt.module.partition(".")[0], None)
            elif isinstance(stmt, ast.If):
                if not _is_conditional_guard(stmt.test):
                    visit(stmt.body)
                    visit(stmt.orelse)
            elif isinstance(stmt, ast.Try) or (
                sys.version_info >= (3, 11) and isinstance(stmt, ast.TryStar)
            ):
                block: ast.Try = stmt  # type: ignore[assignment]  # TryStar has the same fields
                if not any(_is_guard_handler(h) for h in block.handlers):
                    visit(block.body)
                visit(block.orelse)
                visit(block.finalbody)
            elif isinstance(stmt, (ast.With, ast.AsyncWith)):
                visit(stmt.body)

    visit(tree.body)
    return tuple(found)


def _local_names(script_dir: str, extra_paths: Iterable[str]) -> set[str]:
    names: set[str] = set()
    for directory in (script_dir, *extra_paths):
        try:
            entries = os.listdir(directory or ".")
        except OSError:
            continue
        for entry in entries:
            stem, dot, ext = entry.partition(".")
            if not dot or ext in ("py", "pyc", "pyw") or ext.endswith(("so", "pyd")):
                names.add(stem)
    return names


def _pythonpath(env: Mapping[str, str]) -> list[str]:
    return [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]


def _check_distributions(
    deps: Iterable[str], installed: Mapping[str, str], marker_env: Mapping[str, str] | None
) -> list[str]:
    deps = tuple(deps)
    if not deps:
        return []
    # packaging costs ~15 ms to import: only scripts with PEP 723 dependencies pay it.
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    missing = []
    for spec in deps:
        try:
            req = Requirement(spec)
        except InvalidRequirement:
            missing.append(f"{spec} (not a valid requirement)")
            continue
        if (
            req.marker is not None
            and marker_env is not None
            and not req.marker.evaluate(dict(marker_env))
        ):
            continue
        version = installed.get(canonicalize_name(req.name))
        if version is None:
            missing.append(str(req))
        elif req.specifier and not req.specifier.contains(version, prereleases=True):
            missing.append(f"{req} (installed: {version})")
    return missing


def _check_python(requires: str | None, version: str) -> str | None:
    if not requires:
        return None
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import Version

    try:
        spec = SpecifierSet(requires)
    except InvalidSpecifier:
        return f"requires-python {requires!r} is not a valid version specifier"
    if not spec.contains(Version(version), prereleases=True):
        return f"script requires Python {requires}, interpreter is {version}"
    return None


def check_with_own_interpreter(
    imports: Iterable[str],
    *,
    script_dir: str,
    env: Mapping[str, str],
    dependencies: Iterable[str] = (),
    requires_python: str | None = None,
) -> DependencyReport:
    """Check against the interpreter running aiorunner (blocking but cheap: ``find_spec``
    reads a few directory listings, cached by the import system)."""
    imports = tuple(imports)
    # No imports (a trivial script): nothing to look up, no directory to list.
    local = _local_names(script_dir, _pythonpath(env)) if imports else set()
    extra = _pythonpath(env)
    missing = []
    for name in imports:
        if name in local or name in sys.builtin_module_names or name in sys.stdlib_module_names:
            continue
        if name in sys.modules:
            continue
        if importlib.machinery.PathFinder.find_spec(name, [*extra, *sys.path]) is None:
            missing.append(name)
    dists: dict[str, str] = {}
    deps = tuple(dependencies)
    if deps:
        # importlib.metadata (and the email parser under it) only for PEP 723 dependencies.
        from importlib.metadata import distributions

        from packaging.utils import canonicalize_name

        for dist in distributions():
            name = dist.metadata["Name"]
            if name:
                dists.setdefault(canonicalize_name(name), dist.version)
    marker_env: dict[str, str] | None = None
    if deps:
        from packaging.markers import default_environment

        marker_env = {k: str(v) for k, v in default_environment().items()}
    return DependencyReport(
        imports=imports,
        missing_modules=tuple(missing),
        missing_distributions=tuple(_check_distributions(deps, dists, marker_env)),
        python_mismatch=_check_python(requires_python, _own_version()),
    )


def _own_version() -> str:
    v = sys.version_info
    return f"{v.major}.{v.minor}.{v.micro}"


@dataclass(frozen=True)
class InterpreterInventory:
    """What another interpreter can import, from one probe run."""

    version: str
    modules: frozenset[str]
    distributions: Mapping[str, str]
    marker_env: Mapping[str, str]


# Runs inside the target interpreter; prints one JSON object. Kept to stdlib only.
PROBE = r"""
import json, pkgutil, platform, sys
try:
    import importlib.metadata as md
    dists = {}
    for d in md.distributions():
        n = d.metadata["Name"]
        if n:
            dists.setdefault(n.lower().replace("_", "-").replace(".", "-"), d.version)
except Exception:
    dists = {}
mods = set(sys.builtin_module_names) | {m.name for m in pkgutil.iter_modules()}
mods |= set(getattr(sys, "stdlib_module_names", ()))
v = sys.version_info
env = {
    "implementation_name": sys.implementation.name,
    "os_name": __import__("os").name,
    "platform_machine": platform.machine(),
    "platform_system": platform.system(),
    "python_version": "%d.%d" % v[:2],
    "python_full_version": platform.python_version(),
    "sys_platform": sys.platform,
    "platform_python_implementation": platform.python_implementation(),
    "implementation_version": platform.python_version(),
    "platform_release": platform.release(),
    "platform_version": platform.version(),
}
print(json.dumps({"version": "%d.%d.%d" % v[:3], "modules": sorted(mods),
                  "dists": dists, "env": env}))
"""


def probe_interpreter(output: bytes) -> InterpreterInventory:
    from packaging.utils import canonicalize_name

    data = json.loads(output)
    return InterpreterInventory(
        version=data["version"],
        modules=frozenset(data["modules"]),
        distributions={canonicalize_name(k): v for k, v in data["dists"].items()},
        marker_env=data["env"],
    )


def check_with_inventory(
    inventory: InterpreterInventory,
    imports: Iterable[str],
    *,
    script_dir: str,
    env: Mapping[str, str],
    dependencies: Iterable[str] = (),
    requires_python: str | None = None,
) -> DependencyReport:
    imports = tuple(imports)
    local = _local_names(script_dir, _pythonpath(env)) if imports else set()
    missing = [n for n in imports if n not in local and n not in inventory.modules]
    return DependencyReport(
        imports=imports,
        missing_modules=tuple(missing),
        missing_distributions=tuple(
            _check_distributions(dependencies, inventory.distributions, inventory.marker_env)
        ),
        python_mismatch=_check_python(requires_python, inventory.version),
    )
