"""aiorunner-zipkin end to end: real SDK spans POSTed to a real Zipkin v2 receiver."""

from __future__ import annotations

import json
import logging
from importlib.metadata import entry_points

import anyio
import pytest
from aiorunner_zipkin import ZipkinBackend, create_backend, resolve_settings
from receivers import ZipkinReceiver

from aiorunner import ConfigError, TracingConfig
from aiorunner._config import collect_env_problems
from aiorunner.backend import Backend, ExportStatus


def config(**kwargs) -> TracingConfig:
    return TracingConfig(**kwargs).resolve()


async def test_spans_arrive_as_zipkin_v2(zipkin_receiver, spans, monkeypatch):
    """OTEL_EXPORTER_ZIPKIN_ENDPOINT: ids in hex, parentId, microsecond timestamps, kind,
    string tags (long ones whole), annotations for events, localEndpoint.serviceName."""
    monkeypatch.setenv("OTEL_EXPORTER_ZIPKIN_ENDPOINT", zipkin_receiver.url)
    backend = create_backend(config())
    assert isinstance(backend, Backend)
    result = await backend.export(spans, timeout=5)
    assert result.ok, result.error
    root, child = zipkin_receiver.span("root"), zipkin_receiver.span("child")
    sent_root = next(s for s in spans if s.name == "root")
    assert root["traceId"] == f"{sent_root.context.trace_id:032x}"
    assert root["id"] == f"{sent_root.context.span_id:016x}"
    assert "parentId" not in root
    assert child["parentId"] == root["id"]
    assert child["traceId"] == root["traceId"]
    assert root["kind"] == "CLIENT"
    assert root["timestamp"] == (sent_root.start_time + 500) // 1000
    assert root["duration"] == (sent_root.end_time - sent_root.start_time + 500) // 1000
    assert root["localEndpoint"] == {"serviceName": "zipkin-test"}
    assert root["tags"]["process.pid"] == "99"
    assert root["tags"]["flag"] == "true"
    assert json.loads(root["tags"]["process.command_args"]) == ["python", "x" * 300]
    assert child["tags"]["otel.status_code"] == "ERROR"
    assert child["tags"]["error"] == "boom"
    [annotation] = child["annotations"]
    assert json.loads(annotation["value"]) == {"checkpoint": {"progress_percent": 50}}
    assert isinstance(annotation["timestamp"], int)
    request = zipkin_receiver.requests[0]
    assert request.path == "/api/v2/spans"
    assert request.content_type == "application/json"


async def test_each_span_keeps_its_own_service(zipkin_receiver, spans, other_service_spans):
    """A batch mixing services sends each span under its resource's service.name."""
    backend = create_backend(config(collector_endpoint=zipkin_receiver.endpoint))
    assert backend.settings.endpoint == zipkin_receiver.url  # /api/v2/spans appended
    assert (await backend.export(spans + other_service_spans, timeout=5)).ok
    by_service = sorted(
        (s["localEndpoint"]["serviceName"], s["name"]) for s in zipkin_receiver.spans
    )
    assert by_service == [
        ("script", "child"),
        ("script", "script-root"),
        ("zipkin-test", "child"),
        ("zipkin-test", "root"),
    ]


async def test_503_is_retryable_with_retry_after(zipkin_receiver, spans):
    """503 + Retry-After -> retryable with the delay; the next export arrives."""
    zipkin_receiver.fail_next(1, 503, retry_after=4)
    backend = create_backend(config(collector_endpoint=zipkin_receiver.url))
    result = await backend.export(spans, timeout=5)
    assert result.status is ExportStatus.RETRYABLE
    assert result.retry_after == 4.0
    assert (await backend.export(spans, timeout=5)).ok
    assert len(zipkin_receiver.spans) == 2


@pytest.mark.parametrize("status", [400, 401, 404, 500])
async def test_client_and_server_errors_are_permanent(zipkin_receiver, spans, status):
    """Other statuses are permanent and quoted in the error."""
    zipkin_receiver.fail_next(1, status)
    result = await create_backend(config(collector_endpoint=zipkin_receiver.url)).export(
        spans, timeout=5
    )
    assert result.status is ExportStatus.PERMANENT
    assert f"HTTP {status}" in result.error


async def test_unreachable_and_hanging_collectors_are_retryable(spans, caplog):
    """Connection refused and no answer within the timeout are both retryable; a hanging
    collector still holds the request when the export returns."""
    caplog.set_level(logging.DEBUG)
    closed = ZipkinReceiver()
    closed.reserve_port()
    try:
        refused = await create_backend(config(collector_endpoint=closed.endpoint)).export(
            spans, timeout=5
        )
    finally:
        closed.stop()
    assert refused.status is ExportStatus.RETRYABLE
    assert "refused" in refused.error.lower()
    with ZipkinReceiver() as hanging:
        hanging.hang(30)
        result = await create_backend(config(collector_endpoint=hanging.url)).export(
            spans, timeout=0.4
        )
        assert result.status is ExportStatus.RETRYABLE
        assert "no answer within 0.4 s" in result.error
        assert hanging.arrivals == 1
        assert hanging.attempts == []


async def test_timeout_variable_is_milliseconds(zipkin_receiver, spans, monkeypatch):
    """OTEL_EXPORTER_ZIPKIN_TIMEOUT=300 is 300 ms, capping a longer export timeout."""
    monkeypatch.setenv("OTEL_EXPORTER_ZIPKIN_TIMEOUT", "300")
    zipkin_receiver.hang(30)
    backend = create_backend(config(collector_endpoint=zipkin_receiver.url))
    assert backend.settings.timeout == 0.3
    result = await backend.export(spans, timeout=60)
    assert "no answer within 0.3 s" in result.error


async def test_late_collector_and_cancelled_export(spans):
    """A collector that starts late is reached by the next export; an export cancelled by
    its caller frees it at once and counts the abandoned worker thread."""
    receiver = ZipkinReceiver()
    receiver.reserve_port()  # bound, not listening: refused until start()
    try:
        backend = create_backend(config(collector_endpoint=receiver.url))
        assert (await backend.export(spans, timeout=5)).status is ExportStatus.RETRYABLE
        receiver.start()
        assert (await backend.export(spans, timeout=5)).ok
        receiver.hang(30)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: backend.export(spans, timeout=10))
            with anyio.fail_after(10):
                while receiver.arrivals < 2:  # the third request is in flight, held
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        assert backend.abandoned_threads == 1
    finally:
        receiver.stop()
    assert len(receiver.spans) == 2


async def test_shutdown_refuses_later_exports(zipkin_receiver, spans):
    """After shutdown (here by ``async with``) nothing more is sent."""
    async with create_backend(config(collector_endpoint=zipkin_receiver.url)) as backend:
        assert (await backend.export([], timeout=5)).ok
    assert (await backend.export(spans, timeout=5)).status is ExportStatus.PERMANENT
    assert zipkin_receiver.arrivals == 0
    assert await backend.force_flush(timeout=1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://localhost:4318", "OTLP/HTTP port"),
        ("http://localhost:9411/api/v1/spans", "v1 API"),
        ("ftp://zipkin:9411", "is not a valid"),
    ],
)
def test_bad_endpoints_are_explained(value, expected, caplog):
    """An OTLP port, Zipkin's v1 API or a non-HTTP URL: given explicitly
    (collector_endpoint) a ConfigError naming it; in OTEL_EXPORTER_ZIPKIN_ENDPOINT one
    WARNING naming the variable, the value and the fix, and the default endpoint is used."""
    with pytest.raises(ConfigError) as caught:
        resolve_settings(TracingConfig(collector_endpoint=value).resolve({}), environ={})
    assert "collector_endpoint" in str(caught.value)
    assert expected in str(caught.value)
    with collect_env_problems() as problems:
        settings = resolve_settings(
            TracingConfig().resolve({}), environ={"OTEL_EXPORTER_ZIPKIN_ENDPOINT": value}
        )
    assert settings.endpoint == "http://localhost:9411/api/v2/spans"
    [problem] = problems
    assert (problem.variable, problem.value) == ("OTEL_EXPORTER_ZIPKIN_ENDPOINT", value)
    assert expected in problem.message
    assert "using the default http://localhost:9411/api/v2/spans instead" in problem.message


def test_defaults_and_timeouts(monkeypatch):
    """Default endpoint and timeout; a non-numeric timeout is reported naming the variable
    and the default 10 s is used; 0 means no limit (the specification's Timeout)."""
    settings = resolve_settings(config())
    assert (settings.endpoint, settings.timeout) == ("http://localhost:9411/api/v2/spans", 10.0)
    monkeypatch.setenv("OTEL_EXPORTER_ZIPKIN_TIMEOUT", "soon")
    with collect_env_problems() as problems:
        assert resolve_settings(config()).timeout == 10.0
    assert [p.message.split(";")[0] for p in problems] == [
        "OTEL_EXPORTER_ZIPKIN_TIMEOUT='soon' is not a non-negative number of milliseconds"
    ]
    monkeypatch.setenv("OTEL_EXPORTER_ZIPKIN_TIMEOUT", "0")
    assert resolve_settings(config()).timeout > 24 * 86400


def test_entry_point():
    """The distribution registers zipkin in the aiorunner.backends group."""
    [ep] = [e for e in entry_points(group="aiorunner.backends") if e.name == "zipkin"]
    assert ep.load() is create_backend
    assert isinstance(create_backend(config()), ZipkinBackend)
