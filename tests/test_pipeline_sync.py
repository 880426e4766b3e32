"""
Synchronous OpenTelemetry SpanExporters in the pipeline: run in worker threads, results
mapped (SUCCESS exported, FAILURE failed and not retried), a hung one abandoned and counted.
"""

from __future__ import annotations

import threading

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from aiorunner._config import TracingConfig
from aiorunner._export.session import Session
from aiorunner.testing import InMemoryBackend


class CollectingExporter(SpanExporter):
    """A plain sync exporter that records what it got and on which thread."""

    def __init__(self, result: SpanExportResult = SpanExportResult.SUCCESS) -> None:
        self.spans: list[str] = []
        self.calls = 0
        self.threads: set[str] = set()
        self.result = result
        self.shut_down = False

    def export(self, spans):
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        if self.result is SpanExportResult.SUCCESS:
            self.spans.extend(span.name for span in spans)
        return self.result

    def shutdown(self):
        self.shut_down = True


class HangingExporter(SpanExporter):
    """A sync exporter whose export blocks until released (a dead collector without a
    socket timeout)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def export(self, spans):
        self.entered.set()
        self.release.wait(30)
        return SpanExportResult.SUCCESS

    def shutdown(self):
        self.release.set()


def config(**overrides: object) -> TracingConfig:
    values: dict[str, object] = {"schedule_delay": 60.0, "export_timeout": 10.0}
    values.update(overrides)
    return TracingConfig(**values)  # type: ignore[arg-type]


def make_trace(session: Session) -> int:
    tracer = session.tracer()
    with tracer.start_as_current_span("root") as root, tracer.start_as_current_span("child"):
        pass
    return root.get_span_context().trace_id


async def test_sync_exporter_runs_in_a_worker_thread() -> None:
    """A SpanExporter given to a session receives the spans, on a thread that is neither
    the caller's nor the export loop's, and is shut down at close."""
    exporter = CollectingExporter()
    session = Session(config(), backends=[exporter])
    trace_id = make_trace(session)
    report = await session.flush_trace(trace_id)
    await session.aclose()
    assert report.ok
    assert sorted(exporter.spans) == ["child", "root"]
    assert threading.current_thread().name not in exporter.threads
    assert "aiorunner-export" not in exporter.threads
    assert session.statistics().backends[0].kind == "sync"
    assert exporter.shut_down


async def test_sync_failure_is_spooled_and_not_retried() -> None:
    """SpanExportResult.FAILURE counts as retryable (#17): the batch is spooled after one
    call (the SDK's exporters retry internally), with a message naming the exporter."""
    exporter = CollectingExporter(SpanExportResult.FAILURE)
    async with Session(config(), backends=[exporter]) as session:
        report = await session.flush_trace(make_trace(session))
    (backend,) = report.backends
    assert (backend.exported, backend.spooled, backend.failed) == (0, 2, 0)
    assert "CollectingExporter.export() returned FAILURE" in (backend.last_error or "")
    assert exporter.calls == 1


async def test_hung_sync_exporter_is_abandoned_at_the_deadline() -> None:
    """A sync export that never returns is given up at the export timeout: its thread is
    abandoned and counted, its spans spooled (#17), and an async backend beside it is
    unaffected."""
    hanging = HangingExporter()
    memory = InMemoryBackend()
    session = Session(config(export_timeout=0.3), backends=[hanging, memory])
    try:
        report = await session.flush_trace(make_trace(session), timeout=30)
        stats = session.statistics()
    finally:
        hanging.release.set()
        await session.aclose(timeout=1)
    assert hanging.entered.is_set()
    by_name = {b.name: b for b in report.backends}
    assert (by_name["hangingexporter"].spooled, by_name["hangingexporter"].failed) == (2, 0)
    assert "timed out" in (by_name["hangingexporter"].last_error or "")
    assert by_name["memory"].exported == 2
    assert stats.backend("hangingexporter").abandoned_threads == 1


async def test_exports_run_with_instrumentation_suppressed() -> None:
    """While exporting, OpenTelemetry's suppress-instrumentation flag is set, in the async
    backend's task and in the sync exporter's worker thread alike."""
    from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, get_value

    from aiorunner.backend import ExportResult

    seen: dict[str, object] = {}

    class AsyncProbe:
        name = "async-probe"

        async def export(self, spans, *, timeout):
            seen["async"] = get_value(_SUPPRESS_INSTRUMENTATION_KEY)
            return ExportResult.success()

    class SyncProbe(SpanExporter):
        def export(self, spans):
            seen["sync"] = get_value(_SUPPRESS_INSTRUMENTATION_KEY)
            return SpanExportResult.SUCCESS

    async with Session(config(), backends=[AsyncProbe(), SyncProbe()]) as session:
        assert (await session.flush_trace(make_trace(session))).ok
    assert seen == {"async": True, "sync": True}
    assert get_value(_SUPPRESS_INSTRUMENTATION_KEY) is None  # not leaked to the caller
