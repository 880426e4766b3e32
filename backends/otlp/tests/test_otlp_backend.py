"""aiorunner-otlp end to end: real SDK spans exported to real receivers on 127.0.0.1."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from email.utils import formatdate
from importlib.metadata import entry_points

import anyio
import pytest
from aiorunner_otlp import (
    create_backend,
    create_grpc_backend,
    create_http_backend,
    create_jaeger_backend,
    create_tempo_backend,
)
from blockbuster import blockbuster_ctx
from receivers import OtlpGrpcReceiver, OtlpHttpReceiver

from aiorunner import ConfigError, TracingConfig
from aiorunner._config import collect_env_problems
from aiorunner.backend import Backend, ExportStatus

SECRET = "s3cr3t-K3y-value"


def config(**kwargs) -> TracingConfig:
    return TracingConfig(**kwargs).resolve()


def grpc_config(receiver: OtlpGrpcReceiver, **options) -> TracingConfig:
    return config(collector_endpoint=receiver.endpoint, backend_options=options)


def http_config(receiver: OtlpHttpReceiver, **options) -> TracingConfig:
    options.setdefault("otlp_protocol", "http/protobuf")
    return config(collector_endpoint=receiver.endpoint, backend_options=options)


def assert_trace_arrived(received, sent) -> None:
    """What the receiver decoded matches the SDK spans, field by field."""
    root, child = received.span("run"), received.span("execute_script")
    sent_root = next(s for s in sent if s.name == "run")
    assert root.trace_id == f"{sent_root.context.trace_id:032x}"
    assert root.span_id == f"{sent_root.context.span_id:016x}"
    assert root.parent_span_id is None
    assert child.parent_span_id == root.span_id
    assert child.trace_id == root.trace_id
    assert root.kind == "SERVER"
    assert root.attributes == {
        "process.pid": 4242,
        "process.command_args": ["python", "etl.py"],
        "ratio": 0.5,
    }
    assert [(e.name, e.attributes) for e in child.events] == [
        ("cpu_monitoring", {"cpu.percent": 12.5})
    ]
    assert (child.status_code, child.status_message) == ("ERROR", "exit code 3")
    assert root.service_name == "otlp-test"
    assert root.scope == "aiorunner-otlp-tests"


async def test_http_json_protocol_delivers_the_trace(otlp_http_receiver, spans, monkeypatch):
    """OTEL_EXPORTER_OTLP_PROTOCOL=http/json: the otlp backend POSTs OTLP/JSON (Content-Type
    application/json, hex ids, integer enums: the receiver refuses anything else) and the
    trace arrives whole; a partial success answered in JSON is reported."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http_receiver.endpoint)
    backend = create_backend(config())
    assert backend.settings.protocol == "http/json"
    assert (await backend.export(spans, timeout=5)).ok
    [request] = otlp_http_receiver.requests
    assert request.content_type == "application/json"
    assert_trace_arrived(otlp_http_receiver, spans)
    otlp_http_receiver.reject_spans(1, "too old")
    result = await backend.export(spans, timeout=5)
    assert result.status is ExportStatus.PERMANENT
    assert "rejected 1 of 2 spans: too old" in str(result.error)


async def test_grpc_export_delivers_the_trace(otlp_grpc_receiver, spans, monkeypatch):
    """otlp (gRPC by default) delivers names, ids, parent links, attributes, events, status,
    resource and the OTEL_EXPORTER_OTLP_HEADERS as metadata."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme,api-key=" + SECRET)
    backend = create_backend(grpc_config(otlp_grpc_receiver))
    assert isinstance(backend, Backend)
    assert backend.settings.protocol == "grpc"
    result = await backend.export(spans, timeout=5)
    assert result.ok, result.error
    assert_trace_arrived(otlp_grpc_receiver, spans)
    metadata = otlp_grpc_receiver.requests[0].headers
    assert metadata["x-tenant"] == "acme"
    assert metadata["api-key"] == SECRET
    assert metadata["user-agent"].startswith("aiorunner-otlp/")
    await backend.shutdown(timeout=5)
    stats = backend.statistics()
    assert (stats.exports, stats.succeeded, stats.spans_exported, stats.failed) == (1, 1, 2, 0)


async def test_http_export_delivers_the_trace(otlp_http_receiver, spans, monkeypatch):
    """otlp with OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf POSTs protobuf to /v1/traces."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http_receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20" + SECRET)
    backend = create_backend(config())
    result = await backend.export(spans, timeout=5)
    assert result.ok, result.error
    assert_trace_arrived(otlp_http_receiver, spans)
    request = otlp_http_receiver.requests[0]
    assert request.path == "/v1/traces"
    assert request.content_type == "application/x-protobuf"
    assert request.content_encoding is None
    assert request.headers["authorization"] == "Bearer " + SECRET
    await backend.shutdown(timeout=5)


async def test_export_does_not_block_the_event_loop(otlp_http_receiver, spans):
    """Encoding and sending happen in a worker thread: blockbuster finds no blocking call
    made by aiorunner_otlp on the event loop."""
    backend = create_http_backend(http_config(otlp_http_receiver))
    with blockbuster_ctx(["aiorunner_otlp"]):
        result = await backend.export(spans, timeout=5)
        await backend.shutdown(timeout=5)
    assert result.ok, result.error


async def test_http_gzip_is_used_when_asked(otlp_http_receiver, spans, monkeypatch):
    """OTEL_EXPORTER_OTLP_TRACES_COMPRESSION=gzip: the receiver sees Content-Encoding gzip,
    a body smaller than the protobuf, and decodes the spans."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
    backend = create_http_backend(http_config(otlp_http_receiver))
    assert (await backend.export(spans, timeout=5)).ok
    request = otlp_http_receiver.requests[0]
    assert request.content_encoding == "gzip"
    assert_trace_arrived(otlp_http_receiver, spans)


async def test_grpc_gzip_is_used_when_asked(spans, monkeypatch):
    """OTEL_EXPORTER_OTLP_COMPRESSION=gzip on gRPC: a receiver that refuses gzip refuses the
    call (so the client did compress), one that accepts it gets the spans."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    with OtlpGrpcReceiver(accept_gzip=False) as refusing, OtlpGrpcReceiver() as accepting:
        result = await create_grpc_backend(grpc_config(refusing)).export(spans, timeout=5)
        assert result.status is ExportStatus.PERMANENT
        assert "UNIMPLEMENTED" in result.error
        assert "OTEL_EXPORTER_OTLP_COMPRESSION=none" in result.error
        assert refusing.requests == []
        assert (await create_grpc_backend(grpc_config(accepting)).export(spans, timeout=5)).ok
        assert_trace_arrived(accepting, spans)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "none")
        assert (await create_grpc_backend(grpc_config(refusing)).export(spans, timeout=5)).ok


async def test_http_503_is_retryable_with_retry_after_then_succeeds(otlp_http_receiver, spans):
    """503 with Retry-After: 7 -> retryable, retry_after 7.0; the next export arrives."""
    otlp_http_receiver.fail_next(1, 503, retry_after=7)
    backend = create_http_backend(http_config(otlp_http_receiver))
    result = await backend.export(spans, timeout=5)
    assert result.status is ExportStatus.RETRYABLE
    assert result.retry_after == 7.0
    assert "HTTP 503" in result.error
    assert otlp_http_receiver.spans == []
    assert (await backend.export(spans, timeout=5)).ok
    assert len(otlp_http_receiver.spans) == 2


@pytest.mark.parametrize("status", [429, 502, 504])
async def test_http_other_retryable_statuses(otlp_http_receiver, spans, status):
    """429, 502 and 504 are retryable too (no Retry-After: retry_after is None)."""
    otlp_http_receiver.fail_next(1, status)
    result = await create_http_backend(http_config(otlp_http_receiver)).export(spans, timeout=5)
    assert result.status is ExportStatus.RETRYABLE
    assert result.retry_after is None
    assert f"HTTP {status}" in result.error


async def test_http_retry_after_as_a_date(otlp_http_receiver, spans):
    """A Retry-After HTTP-date two minutes ahead becomes about 120 seconds."""
    otlp_http_receiver.fail_next(1, 503, retry_after=formatdate(time.time() + 120, usegmt=True))
    result = await create_http_backend(http_config(otlp_http_receiver)).export(spans, timeout=5)
    assert result.status is ExportStatus.RETRYABLE
    assert 60 < result.retry_after <= 121


@pytest.mark.parametrize(
    ("status", "hint"),
    [
        (400, "HTTP 400"),
        (401, "auth header"),
        (403, "may not write"),
        (404, "endpoint path"),
        (308, "a redirect to"),
        (500, "HTTP 500"),
    ],
)
async def test_http_client_errors_are_permanent(otlp_http_receiver, spans, status, hint):
    """400, 401, 403 and 404 are permanent, with the server's Status message and a hint."""
    otlp_http_receiver.fail_next(1, status)
    result = await create_http_backend(http_config(otlp_http_receiver)).export(spans, timeout=5)
    assert result.status is ExportStatus.PERMANENT
    assert hint in result.error
    assert "injected failure" in result.error  # the google.rpc.Status message


async def test_http_wrong_path_is_permanent_404(otlp_http_receiver, spans, monkeypatch):
    """A signal endpoint without /v1/traces is used as is: the collector answers 404."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", otlp_http_receiver.endpoint)
    backend = create_http_backend(config())
    result = await backend.export(spans, timeout=5)
    assert result.status is ExportStatus.PERMANENT
    assert "HTTP 404" in result.error
    assert otlp_http_receiver.attempts[0].path == "/"


async def test_unauthenticated_is_permanent_and_secret_free(
    otlp_http_receiver, otlp_grpc_receiver, spans, monkeypatch, caplog
):
    """401 / UNAUTHENTICATED are permanent; the header value appears in no error text and no
    log record (everything logged at DEBUG included)."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "api-key=" + SECRET)
    otlp_http_receiver.require_header("api-key", "another-value")
    otlp_grpc_receiver.require_header("api-key", "another-value")
    http_backend = create_http_backend(http_config(otlp_http_receiver))
    grpc_backend = create_grpc_backend(grpc_config(otlp_grpc_receiver))
    results = [
        await http_backend.export(spans, timeout=5),
        await grpc_backend.export(spans, timeout=5),
    ]
    assert [r.status for r in results] == [ExportStatus.PERMANENT] * 2
    assert "HTTP 401" in results[0].error
    assert "UNAUTHENTICATED" in results[1].error
    assert otlp_http_receiver.attempts[0].headers["api-key"] == SECRET  # it was sent
    for text in [r.error for r in results] + [repr(http_backend.settings), caplog.text]:
        assert SECRET not in text


async def test_grpc_unavailable_with_retry_info(otlp_grpc_receiver, spans):
    """UNAVAILABLE with a RetryInfo trailer is retryable with its delay; then it works."""
    otlp_grpc_receiver.fail_next(1, retry_after=2.5)
    backend = create_grpc_backend(grpc_config(otlp_grpc_receiver))
    result = await backend.export(spans, timeout=5)
    assert result.status is ExportStatus.RETRYABLE
    assert result.retry_after == 2.5
    assert (await backend.export(spans, timeout=5)).ok
    assert len(otlp_grpc_receiver.spans) == 2


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("RESOURCE_EXHAUSTED", ExportStatus.RETRYABLE),
        ("PERMISSION_DENIED", ExportStatus.PERMANENT),
        ("INVALID_ARGUMENT", ExportStatus.PERMANENT),
    ],
)
async def test_grpc_status_classification(otlp_grpc_receiver, spans, code, status):
    """gRPC codes map to retryable or permanent as the OTLP specification says."""
    import grpc

    otlp_grpc_receiver.fail_next(1, getattr(grpc.StatusCode, code))
    result = await create_grpc_backend(grpc_config(otlp_grpc_receiver)).export(spans, timeout=5)
    assert result.status is status
    assert code in result.error


@pytest.mark.parametrize("factory", [create_grpc_backend, create_http_backend])
async def test_connection_refused_is_retryable(spans, factory):
    """Nothing listening on the port: retryable, saying so."""
    closed = OtlpHttpReceiver()
    closed.reserve_port()  # bound, not listening: connections are refused
    try:
        backend = factory(config(collector_endpoint=closed.endpoint))
        result = await backend.export(spans, timeout=5)
    finally:
        closed.stop()
    assert result.status is ExportStatus.RETRYABLE
    assert "refused" in result.error.lower()


@pytest.mark.parametrize("receiver_class", [OtlpGrpcReceiver, OtlpHttpReceiver])
async def test_hanging_collector_times_out(spans, receiver_class):
    """A collector that never answers: the export returns retryable after its timeout while
    the receiver still holds the request (30 s), so the timeout was honoured."""
    with receiver_class() as receiver:
        receiver.hang(30)
        options = {
            "otlp_protocol": "grpc" if receiver_class is OtlpGrpcReceiver else "http/protobuf"
        }
        backend = create_backend(
            config(collector_endpoint=receiver.endpoint, backend_options=options)
        )
        result = await backend.export(spans, timeout=0.5)
        assert result.status is ExportStatus.RETRYABLE
        assert "no answer within 0.5 s" in result.error
        assert receiver.arrivals == 1
        assert receiver.attempts == []  # still held: we did not wait for the hang to end


async def test_otlp_timeout_variable_is_milliseconds(otlp_http_receiver, spans, monkeypatch):
    """OTEL_EXPORTER_OTLP_TIMEOUT=300 means 300 ms and caps a longer export timeout."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "300")
    otlp_http_receiver.hang(30)
    backend = create_http_backend(http_config(otlp_http_receiver))
    assert backend.settings.timeout == 0.3
    result = await backend.export(spans, timeout=60)
    assert "no answer within 0.3 s" in result.error
    assert otlp_http_receiver.attempts == []


async def test_cancelled_export_counts_the_abandoned_thread(otlp_http_receiver, spans):
    """When the caller's deadline cancels an export, the caller is freed and the worker
    thread left running is counted."""
    otlp_http_receiver.hang(30)
    backend = create_http_backend(http_config(otlp_http_receiver))
    outcome = []
    async with anyio.create_task_group() as tg:

        async def export() -> None:
            outcome.append(await backend.export(spans, timeout=10))

        tg.start_soon(export)
        with anyio.fail_after(10):
            while otlp_http_receiver.arrivals == 0:  # the request is in flight, held
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert outcome == []
    assert backend.statistics().abandoned_threads == 1
    assert backend.statistics().failed == 1


@pytest.mark.parametrize("receiver_class", [OtlpGrpcReceiver, OtlpHttpReceiver])
async def test_late_collector_is_reached_once_it_is_up(spans, receiver_class):
    """A collector that comes up late: refused (retryable) while its port is bound but not
    listening, then the very next export after it started arrives (gRPC does not wait out
    its reconnect backoff)."""
    receiver = receiver_class()
    protocol = "grpc" if receiver_class is OtlpGrpcReceiver else "http/protobuf"
    receiver.reserve_port()
    try:
        backend = create_backend(
            config(
                collector_endpoint=receiver.endpoint, backend_options={"otlp_protocol": protocol}
            )
        )
        first = await backend.export(spans, timeout=5)
        assert first.status is ExportStatus.RETRYABLE
        receiver.start()
        second = await backend.export(spans, timeout=5)
        assert second.ok, second.error
        assert len(receiver.spans) == 2
    finally:
        receiver.stop()


@pytest.mark.parametrize(
    ("receiver_class", "protocol"),
    [
        (OtlpGrpcReceiver, "grpc"),
        (OtlpHttpReceiver, "http/protobuf"),
        (OtlpHttpReceiver, "http/json"),
    ],
)
async def test_partial_success_is_reported(spans, receiver_class, protocol):
    """An OTLP partial success (spans rejected by the collector) is reported, not hidden,
    whatever the encoding of the answer."""
    with receiver_class() as receiver:
        receiver.reject_spans(1, "span too old")
        backend = create_backend(
            config(
                collector_endpoint=receiver.endpoint, backend_options={"otlp_protocol": protocol}
            )
        )
        result = await backend.export(spans, timeout=5)
    assert result.status is ExportStatus.PERMANENT
    assert "rejected 1 of 2 spans: span too old" in result.error


async def test_async_with_closes_the_backend(otlp_http_receiver, spans):
    """``async with`` exports, then shuts the backend down on exit."""
    async with create_http_backend(http_config(otlp_http_receiver)) as backend:
        assert (await backend.export(spans, timeout=5)).ok
    assert (await backend.export(spans, timeout=5)).status is ExportStatus.PERMANENT
    assert len(otlp_http_receiver.requests) == 1


async def test_export_after_shutdown_is_permanent(otlp_grpc_receiver, spans):
    """A shut-down backend refuses further exports and sends nothing."""
    backend = create_grpc_backend(grpc_config(otlp_grpc_receiver))
    await backend.shutdown(timeout=5)
    await backend.shutdown(timeout=5)  # twice is fine
    result = await backend.export(spans, timeout=5)
    assert result.status is ExportStatus.PERMANENT
    assert otlp_grpc_receiver.arrivals == 0
    assert await backend.force_flush(timeout=1)


async def test_empty_batch_sends_nothing(otlp_grpc_receiver):
    """An empty batch succeeds without a request."""
    backend = create_grpc_backend(grpc_config(otlp_grpc_receiver))
    assert (await backend.export([], timeout=5)).ok
    assert otlp_grpc_receiver.arrivals == 0


async def test_missing_certificate_file_is_named(spans, monkeypatch, tmp_path):
    """A certificate variable naming a missing file gives a permanent error naming it."""
    missing = tmp_path / "nope.pem"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(missing))
    for factory in (create_grpc_backend, create_http_backend):
        backend = factory(config(collector_endpoint="https://127.0.0.1:1"))
        result = await backend.export(spans, timeout=5)
        assert result.status is ExportStatus.PERMANENT
        assert "OTEL_EXPORTER_OTLP_CERTIFICATE" in result.error
        assert str(missing) in result.error


# -- jaeger and tempo ---------------------------------------------------------------------


@pytest.mark.parametrize("port", [6831, 6832, 14250, 14268, 16686])
def test_jaeger_legacy_port_is_refused_with_directions(port):
    """The seed's collector_endpoint='http://localhost:6831' (and the other non-OTLP Jaeger
    ports) fail early, explaining to use OTLP on 4317 or 4318."""
    with pytest.raises(ConfigError) as caught:
        create_jaeger_backend(config(collector_endpoint=f"http://localhost:{port}"))
    message = str(caught.value)
    assert f"({port})" in message
    assert "collector_endpoint" in message
    assert "4317" in message
    assert "4318" in message


def test_jaeger_thrift_variables_are_explained(monkeypatch):
    """OTEL_EXPORTER_JAEGER_AGENT_HOST belongs to the removed Thrift exporter: one warning
    says so and names the OTLP endpoint to set; the backend is built with the default."""
    monkeypatch.setenv("OTEL_EXPORTER_JAEGER_AGENT_HOST", "jaeger")
    with collect_env_problems() as problems:
        backend = create_jaeger_backend(config())
    assert backend.settings.endpoint == "http://localhost:4317"
    [problem] = problems
    assert problem.variable == "OTEL_EXPORTER_JAEGER_AGENT_HOST"
    assert "removed Jaeger Thrift exporter" in problem.message
    assert "OTEL_EXPORTER_OTLP_ENDPOINT=http://JAEGER_HOST:4317" in problem.message


async def test_jaeger_and_tempo_send_otlp(otlp_grpc_receiver, otlp_http_receiver, spans):
    """jaeger and tempo are OTLP: the spans arrive at an OTLP receiver, by name."""
    jaeger = create_jaeger_backend(grpc_config(otlp_grpc_receiver))
    tempo = create_tempo_backend(http_config(otlp_http_receiver))
    assert (jaeger.name, tempo.name) == ("jaeger", "tempo")
    assert (await jaeger.export(spans, timeout=5)).ok
    assert (await tempo.export(spans, timeout=5)).ok
    assert_trace_arrived(otlp_grpc_receiver, spans)
    assert_trace_arrived(otlp_http_receiver, spans)


def test_tempo_query_port_is_refused():
    """Tempo's query port 3200 does not take OTLP: the error says where to send."""
    with pytest.raises(ConfigError, match=r"Tempo's HTTP API and query port \(3200\).*4317"):
        create_tempo_backend(config(collector_endpoint="http://tempo:3200"))


# -- packaging ----------------------------------------------------------------------------


def test_entry_points_name_the_factories():
    """The distribution registers its five names in the aiorunner.backends group."""
    found = {
        ep.name: ep.load()
        for ep in entry_points(group="aiorunner.backends")
        if ep.value.startswith("aiorunner_otlp:")
    }
    assert found == {
        "otlp": create_backend,
        "otlp_grpc": create_grpc_backend,
        "otlp_http": create_http_backend,
        "jaeger": create_jaeger_backend,
        "tempo": create_tempo_backend,
    }


def test_http_backend_does_not_import_grpc():
    """import aiorunner_otlp and an HTTP backend do not import grpc (it is loaded lazily)."""
    code = (
        "import sys, aiorunner_otlp\n"
        "from aiorunner import TracingConfig\n"
        "aiorunner_otlp.create_http_backend(TracingConfig().resolve({}))\n"
        "assert 'grpc' not in sys.modules, 'grpc imported'\n"
        "aiorunner_otlp.create_grpc_backend(TracingConfig().resolve({}))\n"
        "assert 'grpc' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
