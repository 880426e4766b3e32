"""
Fixtures for the core's tests: a clean OTEL_*/AIORUNNER_* environment per test, a
trace file and spool directory per test, and a reader for the OTLP/JSON lines the embedded backend writes.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_PREFIXES = ("OTEL_", "AIORUNNER_", "TRACEPARENT", "TRACESTATE", "BAGGAGE")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Every test starts without OTEL_*/AIORUNNER_*/TRACEPARENT variables, with its own
    trace file (so tests never share or pollute .aiorunner/ of the checkout)."""
    for key in list(os.environ):
        if key.startswith(_PREFIXES):
            monkeypatch.delenv(key)
    traces = tmp_path / "traces.jsonl"
    monkeypatch.setenv("AIORUNNER_TRACES_FILE", str(traces))
    # Spans a backend could not take are spooled: into the test's own directory too.
    monkeypatch.setenv("AIORUNNER_SPOOL_DIR", str(tmp_path / "spool"))
    return traces


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[None]:
    """Fail any blocking call made by aiorunner code on an event loop thread."""
    from blockbuster import blockbuster_ctx

    with blockbuster_ctx("aiorunner") as bb:
        # Allowed there and only there: the jsonl backend's writes on the export thread's
        # own private loop when it is the only backend (JsonlBackend.write_on_export_thread),
        # the fork/exec of a script (vfork: back once the child exec'd, as asyncio's
        # own create_subprocess_exec does on the loop), and the monitor's reading of a
        # one-process tree (a few reads of /proc, see ProcessTreeMonitor._sample_now), and
        # the check for a run's escaped processes (a few reads of /proc, end_escapees).
        for function in bb.functions.values():
            function.can_block_in("aiorunner/_export/jsonl.py", "_write_here")
            function.can_block_in("aiorunner/_run/process.py", "_spawn_here")
            function.can_block_in("aiorunner/_run/process.py", "_may_find_here")
            function.can_block_in("aiorunner/_monitor/monitor.py", "_read_here")
        yield


@pytest.fixture
def traces_file(clean_environ: Path) -> Path:
    return clean_environ


@pytest.fixture(autouse=True)
def _close_default_sessions() -> Iterator[None]:
    yield
    session_module = sys.modules.get("aiorunner._export.session")
    closer = getattr(session_module, "_close_default_sessions", None)
    if closer is not None:
        closer()


def attr_value(value: dict[str, Any]) -> Any:
    """An OTLP/JSON AnyValue as a Python value."""
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return value["boolValue"]
    if "arrayValue" in value:
        return [attr_value(v) for v in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        return {kv["key"]: attr_value(kv["value"]) for kv in value["kvlistValue"]["values"]}
    return None


def read_spans(path: Path) -> list[dict[str, Any]]:
    """Every span in an OTLP/JSON lines file, flattened: the span's JSON object plus
    ``attrs`` (a dict) and ``resource`` (a dict of resource attributes). Every span there
    has ended (runs still going live in the sidecar ``<file>.live/``, issue 15): a span
    without an end fails the test that reads it."""
    spans = []
    if not path.exists():
        return spans
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        request = json.loads(line)
        for rs in request["resourceSpans"]:
            resource = {
                a["key"]: attr_value(a["value"])
                for a in rs.get("resource", {}).get("attributes", [])
            }
            for ss in rs.get("scopeSpans", []):
                for span in ss.get("spans", []):
                    attrs = {a["key"]: attr_value(a["value"]) for a in span.get("attributes", [])}
                    assert int(span.get("endTimeUnixNano") or 0) > 0, f"unended span in {path}"
                    assert "aiorunner.pending" not in attrs, f"start marker in {path}"
                    spans.append({**span, "attrs": attrs, "resource": resource})
    return spans


@pytest.fixture
def spans_of(traces_file: Path) -> Callable[[str], list[dict[str, Any]]]:
    """``spans_of(trace_id)``: the spans of one trace found in this test's trace file."""

    def get(trace_id: str) -> list[dict[str, Any]]:
        return [s for s in read_spans(traces_file) if s["traceId"] == trace_id]

    return get


@pytest.fixture
def spans_in() -> Callable[[Path], list[dict[str, Any]]]:
    """``spans_in(path)``: every finished span of an OTLP/JSON lines file."""
    return read_spans


@pytest.fixture
def make_script(tmp_path: Path) -> Callable[..., Path]:
    """``make_script(body, name="script.py", mode=None)``: write a script into tmp_path."""

    def make(body: str, name: str = "script.py", mode: int | None = None) -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(body).lstrip("\n"))
        if mode is not None:
            path.chmod(mode)
        return path

    return make


def pid_alive(pid: int) -> bool:
    """True when ``pid`` is a live process (a zombie left for a non-reaping init is dead)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] != b"Z"


@pytest.fixture
def alive() -> Callable[[int], bool]:
    return pid_alive
