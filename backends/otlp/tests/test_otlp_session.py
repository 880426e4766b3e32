"""aiorunner-otlp through the public ``aiorunner.Session``: entry point lookup by name, the
pipeline's retries driven by our retryable/permanent results, and the run's report."""

from __future__ import annotations

import pytest
from receivers import OtlpGrpcReceiver, OtlpHttpReceiver

from aiorunner import Session, TracingConfig

SECRET = "session-secret-token-77"


def _config(receiver, name: str) -> TracingConfig:
    return TracingConfig(
        exporter_type=name,
        collector_endpoint=receiver.endpoint,
        schedule_delay=0.05,
        export_timeout=10,
    )


async def _one_span(session: Session, name: str) -> int:
    with session.tracer().start_as_current_span(name) as span:
        span.set_attribute("via", "session")
        return span.get_span_context().trace_id


@pytest.mark.parametrize(
    ("receiver_class", "name"), [(OtlpGrpcReceiver, "otlp_grpc"), (OtlpHttpReceiver, "otlp_http")]
)
async def test_session_retries_a_503_and_delivers(receiver_class, name):
    """A collector answering 503/UNAVAILABLE (Retry-After 0.2 s) once: the pipeline retries
    our retryable result and the span arrives; the report says exported."""
    with receiver_class() as receiver:
        receiver.fail_next(1, retry_after=0.2)
        async with Session(_config(receiver, name)) as session:
            trace_id = await _one_span(session, "via-session")
            report = await session.flush_trace(trace_id, timeout=10)
        assert report.ok, report.describe()
        assert [b.name for b in report.backends] == [name]
        assert report.backends[0].exported == 1
        [span] = receiver.spans
        assert (span.name, span.attributes) == ("via-session", {"via": "session"})
        assert len(receiver.attempts) == 2


async def test_session_reports_a_permanent_failure_once(otlp_http_receiver, monkeypatch):
    """401: not retried, reported as failed with the reason, the key nowhere in it."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20" + SECRET)
    otlp_http_receiver.require_header("authorization", "Bearer another")
    async with Session(_config(otlp_http_receiver, "otlp_http")) as session:
        trace_id = await _one_span(session, "refused")
        report = await session.flush_trace(trace_id, timeout=10)
    assert not report.ok
    [backend] = report.backends
    assert backend.failed == 1
    assert "HTTP 401" in backend.last_error
    assert SECRET not in backend.last_error
    assert len(otlp_http_receiver.attempts) == 1
