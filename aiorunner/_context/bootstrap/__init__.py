"""
The child side of in-script tracing.

This *directory* (not the package) is put first on the ``PYTHONPATH`` of a Python script
that aiorunner runs, so the interpreter imports our ``sitecustomize`` at start-up. The
modules in it are written to be imported as top-level modules of a foreign interpreter
(any Python >= 3.8, with or without aiorunner installed): they import nothing from
``aiorunner`` and nothing heavy until the script itself touches OpenTelemetry.

- ``sitecustomize.py``: start-up, a few hundred microseconds. Reads the bootstrap's
  environment variables (and removes them, restoring the user's ``PYTHONPATH`` so
  grandchildren inherit the environment the user gave), chains to the ``sitecustomize``
  our directory shadows, and installs a one-shot import hook on ``opentelemetry.trace``.
- ``_aiorunner_inscript.py``: imported when the hook fires (or at start-up when
  instrumentations were asked for). Configures the global TracerProvider lazily, with
  the ``execute_script`` span as the parent, and a span processor that writes every ended
  span to the channel the runner reads (``aiorunner._context.channel``).
- ``_aiorunner_logging.py``: imported when the script configures ``logging`` (its root
  logger gets a handler) in a run that sends logs; sends each record to the runner.
- ``_aiorunner_http.py``: imported when the script imports an HTTP client library;
  loads that library's OpenTelemetry instrumentation (also used by the runner's own
  process, see ``aiorunner._context.http``).
"""

from __future__ import annotations

import os

__all__ = ["BOOTSTRAP_DIR", "precompile"]

#: The directory to put first on the child's PYTHONPATH.
BOOTSTRAP_DIR = os.path.dirname(os.path.abspath(__file__))

_MODULES = (
    "sitecustomize.py",
    "_aiorunner_inscript.py",
    "_aiorunner_http.py",
    "_aiorunner_logging.py",
)
_precompiled = False


def precompile() -> None:
    """
    Write the ``.pyc`` files of the bootstrap for this interpreter, once per process,
    when they are missing or stale (blocking: call it in a worker thread; never raises).

    Why: every Python child imports ``sitecustomize`` at start. From source (a checkout
    run with ``PYTHONDONTWRITEBYTECODE``, which also stops the child from caching it) that
    costs each child 1-2 ms of CPU more than from a ``.pyc``; on 2 cores running trivial
    scripts that is ~10 % of throughput. An interpreter reads an existing ``.pyc`` even
    with ``PYTHONDONTWRITEBYTECODE``. A read-only installation keeps the old behaviour
    (pip compiles the files at install time anyway).
    """
    global _precompiled
    if _precompiled:
        return
    _precompiled = True
    import importlib.util

    for name in _MODULES:
        source = os.path.join(BOOTSTRAP_DIR, name)
        try:
            cached = importlib.util.cache_from_source(source)
        except (NotImplementedError, ValueError):
            return  # this interpreter keeps no bytecode cache
        if _up_to_date(source, cached):
            continue
        import py_compile  # only when a file is stale (its import costs ~2 ms)

        try:
            py_compile.compile(source, cfile=cached, doraise=True)
        except (OSError, py_compile.PyCompileError, NotImplementedError, ValueError):
            pass  # not writable: the child compiles it at start, as without this


def _up_to_date(source: str, cached: str) -> bool:
    """True when the interpreter would load ``cached`` for ``source``: the header holds
    this interpreter's magic number and the source's own mtime and size. Comparing the two
    files' mtimes is not enough: a copied tree (``cp -r``, an image layer) gives both new
    mtimes, the ``.pyc`` looks newer, and every child compiled the bootstrap again (~5 ms
    of CPU each, measured)."""
    import importlib.util

    try:
        with open(cached, "rb") as f:
            header = f.read(16)
        st = os.stat(source)
    except OSError:
        return False
    return (
        len(header) == 16
        and header[:4] == importlib.util.MAGIC_NUMBER
        and int.from_bytes(header[4:8], "little") == 0  # timestamp-based, not hash-based
        and int.from_bytes(header[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
        and int.from_bytes(header[12:16], "little") == st.st_size & 0xFFFFFFFF
    )
