"""The test receivers themselves, driven by plain clients (a gRPC stub, http.client)."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import threading

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from receivers import OtlpGrpcReceiver, OtlpHttpReceiver, ZipkinReceiver, start_late


def _request() -> trace_service_pb2.ExportTraceServiceRequest:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "receiver-test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("receiver-tests")
    with tracer.start_as_current_span("outer") as outer:
        outer.set_attribute("job.id", 7)
        with tracer.start_as_current_span("inner") as inner:
            inner.add_event("step", {"n": 1})
    provider.shutdown()
    return encode_spans(exporter.get_finished_spans())


def _stub(
    receiver: OtlpGrpcReceiver,
) -> tuple[grpc.Channel, trace_service_pb2_grpc.TraceServiceStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{receiver.port}")
    return channel, trace_service_pb2_grpc.TraceServiceStub(channel)


def _post(
    receiver: OtlpHttpReceiver | ZipkinReceiver,
    body: bytes,
    headers: dict[str, str],
    path: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=5)
    try:
        conn.request("POST", path or receiver.path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


PROTOBUF = {"Content-Type": "application/x-protobuf"}


def test_grpc_receiver_decodes_spans_resource_and_metadata(otlp_grpc_receiver):
    """Spans sent with a real stub arrive decoded: names, parent link, attributes, events,
    resource and the call's metadata."""
    channel, stub = _stub(otlp_grpc_receiver)
    with channel:
        stub.Export(_request(), metadata=(("x-token", "abc"),), timeout=5)
    outer, inner = otlp_grpc_receiver.span("outer"), otlp_grpc_receiver.span("inner")
    assert inner.parent_span_id == outer.span_id
    assert inner.trace_id == outer.trace_id
    assert outer.parent_span_id is None
    assert outer.attributes == {"job.id": 7}
    assert [(e.name, e.attributes) for e in inner.events] == [("step", {"n": 1})]
    assert outer.service_name == "receiver-test"
    assert outer.kind == "INTERNAL"
    assert otlp_grpc_receiver.requests[0].headers["x-token"] == "abc"


def test_grpc_receiver_fails_next_with_retry_info_then_accepts(otlp_grpc_receiver):
    """fail_next answers UNAVAILABLE with a RetryInfo trailer once, then accepts again."""
    otlp_grpc_receiver.fail_next(1, retry_after=1.5)
    channel, stub = _stub(otlp_grpc_receiver)
    with channel:
        with pytest.raises(grpc.RpcError) as caught:
            stub.Export(_request(), timeout=5)
        stub.Export(_request(), timeout=5)
    error = caught.value
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    trailers = dict(error.trailing_metadata())
    info = error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"])
    assert info.retry_delay.seconds == 1
    assert info.retry_delay.nanos == 500_000_000
    assert [a.status for a in otlp_grpc_receiver.attempts] == ["UNAVAILABLE", "OK"]
    assert len(otlp_grpc_receiver.spans) == 2


def test_grpc_receiver_requires_header(otlp_grpc_receiver):
    """require_header answers UNAUTHENTICATED unless the metadata carries the value."""
    otlp_grpc_receiver.require_header("api-key", "right")
    channel, stub = _stub(otlp_grpc_receiver)
    with channel:
        with pytest.raises(grpc.RpcError) as caught:
            stub.Export(_request(), metadata=(("api-key", "wrong"),), timeout=5)
        stub.Export(_request(), metadata=(("api-key", "right"),), timeout=5)
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert len(otlp_grpc_receiver.requests) == 1


def test_grpc_receiver_can_refuse_gzip():
    """With accept_gzip=False a gzip call is refused and an uncompressed one accepted, which
    is how tests prove that a client compressed."""
    with OtlpGrpcReceiver(accept_gzip=False) as receiver:
        channel, stub = _stub(receiver)
        with channel:
            with pytest.raises(grpc.RpcError) as caught:
                stub.Export(_request(), timeout=5, compression=grpc.Compression.Gzip)
            stub.Export(_request(), timeout=5)
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert len(receiver.requests) == 1


def test_grpc_receiver_hang_outlasts_client_deadline(otlp_grpc_receiver):
    """A hanging receiver makes the client's deadline expire; stop() releases the handler."""
    otlp_grpc_receiver.hang(30, count=1)
    channel, stub = _stub(otlp_grpc_receiver)
    with channel, pytest.raises(grpc.RpcError) as caught:
        stub.Export(_request(), timeout=0.3)
    assert caught.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


def test_http_receiver_decodes_gzip_and_records_encoding(otlp_http_receiver):
    """A gzip protobuf POST is decompressed and decoded; the encoding is recorded."""
    body = gzip.compress(_request().SerializeToString())
    status, headers, data = _post(
        otlp_http_receiver, body, {**PROTOBUF, "Content-Encoding": "gzip", "X-Key": "v"}
    )
    assert status == 200
    assert headers["Content-Type"] == "application/x-protobuf"
    trace_service_pb2.ExportTraceServiceResponse.FromString(data)
    request = otlp_http_receiver.requests[0]
    assert request.content_encoding == "gzip"
    assert request.headers["x-key"] == "v"
    assert request.body_size == len(body)
    assert sorted(otlp_http_receiver.span_names()) == ["inner", "outer"]


def test_http_receiver_rejects_wrong_path_and_content_type(otlp_http_receiver):
    """A POST elsewhere gets 404, a non-protobuf body 400 with a google.rpc.Status body."""
    body = _request().SerializeToString()
    status, _, _ = _post(otlp_http_receiver, body, PROTOBUF, path="/v1/traces/v1/traces")
    assert status == 404
    status, _, data = _post(otlp_http_receiver, body, {"Content-Type": "text/plain"})
    assert status == 400
    assert "application/x-protobuf" in status_pb2.Status.FromString(data).message
    assert [a.status for a in otlp_http_receiver.attempts] == [404, 400]
    assert otlp_http_receiver.spans == []


def test_http_receiver_fails_next_with_retry_after_then_accepts(otlp_http_receiver):
    """fail_next answers 503 with Retry-After for N requests, then 200."""
    otlp_http_receiver.fail_next(2, retry_after=3)
    body = _request().SerializeToString()
    answers = [_post(otlp_http_receiver, body, PROTOBUF) for _ in range(3)]
    assert [a[0] for a in answers] == [503, 503, 200]
    assert answers[0][1]["Retry-After"] == "3"
    assert len(otlp_http_receiver.requests) == 1


def test_http_receiver_requires_header(otlp_http_receiver):
    """require_header answers 401 unless the header arrives with the value."""
    otlp_http_receiver.require_header("Authorization", "Bearer good")
    body = _request().SerializeToString()
    assert _post(otlp_http_receiver, body, PROTOBUF)[0] == 401
    assert _post(otlp_http_receiver, body, {**PROTOBUF, "Authorization": "Bearer good"})[0] == 200


def test_http_receiver_partial_success(otlp_http_receiver):
    """reject_spans answers 200 with an OTLP partial success once."""
    otlp_http_receiver.reject_spans(1, "too old")
    body = _request().SerializeToString()
    _, _, data = _post(otlp_http_receiver, body, PROTOBUF)
    answer = trace_service_pb2.ExportTraceServiceResponse.FromString(data)
    assert answer.partial_success.rejected_spans == 1
    assert answer.partial_success.error_message == "too old"
    _, _, data = _post(otlp_http_receiver, body, PROTOBUF)
    assert not trace_service_pb2.ExportTraceServiceResponse.FromString(data).HasField(
        "partial_success"
    )


def test_zipkin_receiver_accepts_v2_json_and_rejects_malformed(zipkin_receiver):
    """A Zipkin v2 list is accepted with 202; a span without a valid id gets 400."""
    span = {"traceId": "a" * 32, "id": "b" * 16, "name": "op", "timestamp": 1, "duration": 2}
    headers = {"Content-Type": "application/json"}
    assert _post(zipkin_receiver, json.dumps([span]).encode(), headers)[0] == 202
    bad = [{"traceId": "a" * 32, "id": "xyz"}]
    assert _post(zipkin_receiver, json.dumps(bad).encode(), headers)[0] == 400
    assert _post(zipkin_receiver, b"{}", headers)[0] == 400
    assert zipkin_receiver.spans == [span]
    assert zipkin_receiver.span("op")["id"] == "b" * 16


def test_start_late_refuses_connections_then_serves():
    """A late receiver refuses connections while its port is reserved, then accepts."""
    receiver = OtlpHttpReceiver()
    with start_late(receiver, 1.5):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", receiver.port), timeout=2).close()
        body = _request().SerializeToString()
        receiver_up = threading.Event()
        for _ in range(200):
            if receiver.running:
                receiver_up.set()
                break
            receiver_up.wait(0.05)
        assert receiver_up.is_set()
        assert _post(receiver, body, PROTOBUF)[0] == 200
    assert not receiver.running


def test_stopped_http_receiver_drops_keep_alive_connections():
    """After stop(), a client's kept-alive connection no longer reaches the receiver."""
    receiver = OtlpHttpReceiver()
    receiver.start()
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=5)
    body = _request().SerializeToString()

    def send() -> int:
        conn.request("POST", receiver.path, body=body, headers=PROTOBUF)
        response = conn.getresponse()
        response.read()
        return response.status

    try:
        assert send() == 200
        receiver.stop()
        with pytest.raises((OSError, http.client.HTTPException)):
            send()
    finally:
        conn.close()
        receiver.stop()
    assert len(receiver.requests) == 1


def test_stop_releases_a_hanging_request():
    """A request held by hang() is answered when the receiver stops, not after the hang."""
    receiver = OtlpHttpReceiver()
    receiver.start()
    receiver.hang(60)
    outcome: list[object] = []

    def client() -> None:
        try:
            outcome.append(_post(receiver, _request().SerializeToString(), PROTOBUF)[0])
        except (OSError, http.client.HTTPException) as exc:
            outcome.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    for _ in range(200):
        if receiver.arrivals:
            break
        thread.join(0.05)
    assert receiver.arrivals == 1
    receiver.stop()
    thread.join(10)
    assert not thread.is_alive()
    assert outcome


async def test_wait_for_spans_times_out_with_what_arrived(otlp_http_receiver):
    """wait_for_spans fails with an assertion naming the spans that did arrive."""
    _post(otlp_http_receiver, _request().SerializeToString(), PROTOBUF)
    assert len(await otlp_http_receiver.wait_for_spans(2, timeout=2)) == 2
    with pytest.raises(AssertionError, match=r"expected 3 spans within 0.1s"):
        await otlp_http_receiver.wait_for_spans(3, timeout=0.1)
