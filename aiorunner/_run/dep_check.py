"""
The dependency check as a run makes it: which interpreter it is, what that interpreter
can import (probed once per interpreter and ``PYTHONPATH``), and the script's top-level
imports (parsed once per source), handed to ``_deps`` for the verdict.

Apart from ``_run.py``: the caches and the parse lock are this check's state, not a
run's, and ``_deps`` stays free of processes and threads.
"""

from __future__ import annotations

import ast
import os
import sys
import threading
from typing import TYPE_CHECKING

import anyio

from .._exceptions import option_name
from . import deps as _deps
from .tail import last_error_line

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .metadata import ScriptInfo

__all__ = ["FOREIGN_ENV", "check_dependencies", "inventory_for", "is_own_interpreter"]

#: Variables that make even our own binary another interpreter (its prefix or site).
FOREIGN_ENV = ("PYTHONHOME", "VIRTUAL_ENV", "PYTHONNOUSERSITE")

_AST_LOCK = threading.Lock()
_interpreter_cache: dict[tuple[str, str], _deps.InterpreterInventory | str] = {}
#: Top-level imports of scripts that parsed, by the sha256 of their source.
_imports_cache: dict[str, tuple[str, ...]] = {}
_IMPORTS_CACHE_SIZE = 512


def is_own_interpreter(interpreter: str, env: Mapping[str, str]) -> bool:
    if any(k in env for k in FOREIGN_ENV):
        return False
    if os.path.realpath(interpreter) == os.path.realpath(sys.executable):
        # same binary; a venv and its base share the binary but not the prefix
        return os.path.abspath(interpreter) == os.path.abspath(sys.executable) or (
            sys.prefix == sys.base_prefix
        )
    return False


async def inventory_for(
    interpreter: str, env: Mapping[str, str]
) -> _deps.InterpreterInventory | str:
    """What ``interpreter`` can import, probed once and cached; a string on failure."""
    key = (interpreter, env.get("PYTHONPATH", ""))
    cached = _interpreter_cache.get(key)
    if cached is not None:
        return cached
    probe_env = dict(os.environ)
    probe_env.update(env)
    try:
        result = await anyio.run_process(
            [interpreter, "-I" if "PYTHONPATH" not in env else "-s", "-c", _deps.PROBE],
            env=probe_env,
            check=False,
        )
    except OSError as exc:
        return (
            f"cannot run interpreter {interpreter}: {exc.strerror or exc}; "
            f"check {option_name('interpreter=')}"
        )
    if result.returncode != 0:
        err = last_error_line(result.stderr.decode(errors="replace"))
        return (
            f"interpreter {interpreter} failed to list its modules (exit {result.returncode})"
            f"{': ' + err if err else ''}; fix the interpreter, or pass "
            f"{option_name('validate_dependencies=False')} to skip the check"
        )
    # In a worker thread: the first call imports packaging, whose import reads the file
    # system (packaging.tags resolves the interpreter's path).
    inventory = await anyio.to_thread.run_sync(_deps.probe_interpreter, result.stdout)
    _interpreter_cache[key] = inventory
    return inventory


def check_dependencies(
    info: ScriptInfo,
    interpreter: str,
    own: bool,
    inventory: _deps.InterpreterInventory | str | None,
    env: Mapping[str, str],
) -> _deps.DependencyReport | SyntaxError | None:
    """Blocking (worker thread): parse the script and check its imports."""
    imports = _imports_cache.get(info.sha256)
    if imports is None:
        try:
            # CPython 3.11 can fail ast.parse in concurrent threads with "AST constructor
            # recursion depth mismatch" (gh-106905): one parse at a time.
            with _AST_LOCK:
                tree = ast.parse(info.source, filename=info.path)
        except SyntaxError as exc:
            if own or b"\0" in info.source:  # null bytes: no Python reads them
                return exc
            return None  # another interpreter may know newer syntax: let it decide
        except ValueError:  # null bytes (Python < 3.12): not Python text whatever reads it
            return SyntaxError("source code string cannot contain null bytes")
        imports = _deps.top_level_imports(tree)
        # The imports are a function of the source alone: a script run again (the same
        # sha256) is not parsed again. Bounded; the oldest entry goes first.
        with _AST_LOCK:  # worker threads: evict and insert as one step
            if len(_imports_cache) >= _IMPORTS_CACHE_SIZE:
                del _imports_cache[next(iter(_imports_cache))]
            _imports_cache[info.sha256] = imports
    script_dir = os.path.dirname(os.path.abspath(info.path))
    if own:
        return _deps.check_with_own_interpreter(
            imports,
            script_dir=script_dir,
            env=env,
            dependencies=info.dependencies,
            requires_python=info.requires_python,
        )
    if isinstance(inventory, _deps.InterpreterInventory):
        return _deps.check_with_inventory(
            inventory,
            imports,
            script_dir=script_dir,
            env=env,
            dependencies=info.dependencies,
            requires_python=info.requires_python,
        )
    return None
