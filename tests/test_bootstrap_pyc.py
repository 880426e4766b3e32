"""
The in-script bootstrap's ``.pyc`` files are written by the runner (once per process),
so Python children load ``sitecustomize`` from bytecode even where
``PYTHONDONTWRITEBYTECODE`` stops them from caching it themselves.
"""

from __future__ import annotations

import importlib.util
import os
import py_compile
from pathlib import Path

import pytest

from aiorunner import ScriptRunner, TracingConfig
from aiorunner._context import bootstrap


def valid_pyc(source: str) -> bool:
    """True when the cached file of ``source`` exists and its header matches the source
    (the magic number of this interpreter, and the source's mtime and size)."""
    cached = importlib.util.cache_from_source(source)
    try:
        header = Path(cached).read_bytes()[:16]
    except FileNotFoundError:
        return False
    st = os.stat(source)
    return (
        header[:4] == importlib.util.MAGIC_NUMBER
        and int.from_bytes(header[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
        and int.from_bytes(header[12:16], "little") == st.st_size & 0xFFFFFFFF
    )


async def test_run_writes_the_bootstrap_bytecode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the .pyc files removed and PYTHONDONTWRITEBYTECODE set, a traced run of a
    Python script leaves valid .pyc files of both bootstrap modules behind, and the
    script still runs with in-script tracing (its span arrives)."""
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    sources = [os.path.join(bootstrap.BOOTSTRAP_DIR, name) for name in bootstrap._MODULES]
    for source in sources:
        Path(importlib.util.cache_from_source(source)).unlink(missing_ok=True)
    monkeypatch.setattr(bootstrap, "_precompiled", False)
    script = tmp_path / "job.py"
    script.write_text(
        "from opentelemetry import trace\n"
        "with trace.get_tracer('job').start_as_current_span('inside'):\n"
        "    pass\n"
    )
    traces = tmp_path / "traces.jsonl"
    result = await ScriptRunner(script, config=TracingConfig(traces_file=str(traces))).run()
    assert result.success, result.error
    assert all(valid_pyc(source) for source in sources)
    assert '"name":"inside"' in traces.read_text()


def test_a_stale_pyc_that_looks_newer_is_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copied tree gives source and .pyc new mtimes (the .pyc may look newer than its
    source) while the header still records the old source mtime, so the interpreter
    ignores it: precompile() must rewrite it, not trust the file dates."""
    copy = tmp_path / "_bootstrap"
    copy.mkdir()
    sources = []
    for name in bootstrap._MODULES:
        source = copy / name
        source.write_bytes(Path(bootstrap.BOOTSTRAP_DIR, name).read_bytes())
        os.utime(source, (1_000_000_000, 1_000_000_000))
        py_compile.compile(str(source), cfile=importlib.util.cache_from_source(str(source)))
        os.utime(source, (1_500_000_000, 1_500_000_000))  # the copy: a new source mtime...
        cached = importlib.util.cache_from_source(str(source))
        os.utime(cached, (1_600_000_000, 1_600_000_000))  # ...and a newer-looking .pyc
        assert not valid_pyc(str(source))
        sources.append(str(source))
    monkeypatch.setattr(bootstrap, "BOOTSTRAP_DIR", str(copy))
    monkeypatch.setattr(bootstrap, "_precompiled", False)
    bootstrap.precompile()
    assert all(valid_pyc(source) for source in sources)
