"""
The export pipeline against a real OTLP collector stand-in (``tests/receivers.py``, on
127.0.0.1) through the ``otlp_grpc`` backend: a collector that is down, one that comes up
late, one that hangs, beside the embedded file backend.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from aiorunner._config import TracingConfig
from aiorunner._export.session import Session

receivers = pytest.importorskip("receivers")
pytest.importorskip("aiorunner_otlp")


async def open_session(endpoint: str, **overrides: object) -> Session:
    values: dict[str, object] = {
        "exporter_type": "otlp_grpc,jsonl",
        "collector_endpoint": endpoint,
        "schedule_delay": 60.0,
        "backend_options": {"retry_initial_backoff": 0.05, "retry_max_backoff": 0.2},
    }
    values.update(overrides)
    config = TracingConfig(**values)  # type: ignore[arg-type]
    return await anyio.to_thread.run_sync(Session, config)


def make_run(session: Session) -> int:
    tracer = session.tracer()
    with tracer.start_as_current_span("ScriptRunner") as root:
        for name in ("extract_metadata", "execute_script", "upload_traces"):
            with tracer.start_as_current_span(name):
                pass
    return root.get_span_context().trace_id


def file_span_names(path: Path) -> list[str]:
    return sorted(
        span["name"]
        for line in path.read_text().splitlines()
        for resource in json.loads(line)["resourceSpans"]
        for scope in resource["scopeSpans"]
        for span in scope["spans"]
        if not any(a["key"] == "aiorunner.pending" for a in span.get("attributes", ()))
    )


async def test_collector_down_for_the_whole_run(traces_file: Path) -> None:
    """Nothing listens: the export is retried within the connect budget, then spooled
    (#17); the run's report says so and why, while the file backend got every span."""
    receiver = receivers.OtlpGrpcReceiver()
    receiver.reserve_port()  # bound, not listening: connections are refused
    try:
        async with await open_session(receiver.endpoint, export_timeout=1.0) as session:
            report = await session.flush_trace(make_run(session), timeout=30)
    finally:
        receiver.stop()
    by_name = {b.name: b for b in report.backends}
    assert (by_name["otlp_grpc"].spooled, by_name["otlp_grpc"].failed) == (4, 0)
    assert by_name["otlp_grpc"].pending == 0
    assert "connect budget" in (by_name["otlp_grpc"].last_error or "")
    assert by_name["jsonl"].exported == 4
    assert not report.ok and not report.lost
    assert "otlp_grpc: 0 exported, 4 spooled" in report.describe()
    assert file_span_names(traces_file) == sorted(
        ["ScriptRunner", "extract_metadata", "execute_script", "upload_traces"]
    )


async def test_collector_that_comes_up_late_loses_nothing() -> None:
    """The collector starts two seconds after the run ended: the run's spans are spooled
    after the connect budget, and the session's drainer delivers every span, once, when
    the collector is up."""
    with receivers.start_late(receivers.OtlpGrpcReceiver(), 2.0) as receiver:
        async with await open_session(receiver.endpoint, export_timeout=20.0) as session:
            report = await session.flush_trace(make_run(session), timeout=30)
            await receiver.wait_for_spans(4, timeout=20)
        names = sorted(receiver.span_names())
    assert not report.lost, report.describe()
    assert names == sorted(["ScriptRunner", "extract_metadata", "execute_script", "upload_traces"])
    assert session.statistics().backend("otlp_grpc").unspooled == 4


async def test_hanging_collector_is_cut_at_the_deadline_and_others_export(
    traces_file: Path,
) -> None:
    """A collector that accepts the request and never answers: the export is cut at the
    export timeout and spooled (#17); the file backend is unaffected."""
    with receivers.OtlpGrpcReceiver() as receiver:
        receiver.hang(30)
        async with await open_session(receiver.endpoint, export_timeout=0.5) as session:
            report = await session.flush_trace(make_run(session), timeout=30)
            await session.aclose(timeout=1)
    by_name = {b.name: b for b in report.backends}
    assert (by_name["otlp_grpc"].spooled, by_name["otlp_grpc"].failed) == (4, 0)
    assert by_name["jsonl"].exported == 4
    assert len(file_span_names(traces_file)) == 4
