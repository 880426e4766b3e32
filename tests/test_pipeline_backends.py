"""
The small embedded backends, loaded by name as users would: `console`, `none`, `memory`.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from aiorunner._config import TracingConfig
from aiorunner._export.registry import load_backend
from aiorunner._export.session import Session
from aiorunner.testing import InMemoryBackend


def test_console_prints_spans_readably_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """`console` prints one line per span (name, duration, status, ids, attributes) and
    one per event, to stderr, nothing to stdout."""
    session = Session(TracingConfig(exporter_type="console", schedule_delay=60.0))
    tracer = session.tracer()
    with (
        tracer.start_as_current_span("etl", attributes={"rows": 3}) as root,
        tracer.start_as_current_span("load") as child,
    ):
        child.add_event("checkpoint", {"percent": 50})
    report = asyncio.run(session.flush_trace(root.get_span_context().trace_id))
    session.close()
    captured = capsys.readouterr()
    assert report.ok
    assert captured.out == ""
    trace_hex = format(root.get_span_context().trace_id, "032x")
    root_hex = format(root.get_span_context().span_id, "016x")
    lines = captured.err.splitlines()
    load_line = next(line for line in lines if line.startswith("[aiorunner] load "))
    assert f"trace={trace_hex}" in load_line and f"parent={root_hex}" in load_line
    assert re.search(r"\d+\.\d{3}ms", load_line)
    assert "    event checkpoint +" in captured.err and "percent=50" in captured.err
    etl_line = next(line for line in lines if line.startswith("[aiorunner] etl "))
    assert "parent=-" in etl_line and "rows=3" in etl_line


def test_none_is_loadable_and_turns_tracing_off() -> None:
    """`none` exists as a name (listed, loadable, accepts and keeps nothing) and, in
    OTEL_TRACES_EXPORTER, turns tracing off before any backend is built."""
    backend = load_backend("none", TracingConfig().resolve())
    assert asyncio.run(backend.export([], timeout=1)).ok
    session = Session(TracingConfig(exporter_type="none"))
    assert not session.enabled
    assert session.backend_names == ()


def test_memory_by_name_is_reachable_through_the_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTEL_TRACES_EXPORTER=memory gives each session its own InMemoryBackend, found with
    session.backend("memory")."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "memory")
    first, second = Session(), Session()
    memory = first.backend("memory")
    assert isinstance(memory, InMemoryBackend)
    assert second.backend("memory") is not memory
    with first.tracer().start_as_current_span("work"):
        pass
    assert asyncio.run(first.flush())
    assert [span.name for span in memory.get_finished_spans()] == ["work"]
    first.close()
    second.close()
    assert memory.shutdown_called
    with pytest.raises(KeyError, match="no backend 'jsonl'"):
        first.backend("jsonl")
