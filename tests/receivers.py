"""
Real trace receivers for tests: OTLP/gRPC, OTLP/HTTP and Zipkin v2, on 127.0.0.1.

Tests assert on what *arrived*, so these are real servers on real sockets, each started by
the test (port 0) and stopped in ``finally``::

    with OtlpGrpcReceiver() as receiver:         # or the otlp_grpc_receiver fixture
        ...export to receiver.endpoint...
        spans = await receiver.wait_for_spans(3)  # ReceivedSpan: names, ids, attributes...
        assert receiver.requests[0].headers["api-key"] == "secret"

- ``OtlpGrpcReceiver``: ``opentelemetry-proto``'s ``TraceService`` on ``grpc.server`` (thread
  pool). ``endpoint`` is ``http://127.0.0.1:PORT``. ``accept_gzip=False`` makes the server
  refuse gzip-compressed calls (UNIMPLEMENTED), which is how a test proves a client used it:
  gRPC strips ``grpc-encoding`` from the metadata a servicer sees.
- ``OtlpHttpReceiver``: ``POST /v1/traces`` (``path=``), protobuf or OTLP/JSON bodies
  (hex ids and integer enums required), ``Content-Encoding: gzip``/``deflate``; answers 200 with an ``ExportTraceServiceResponse``, errors with a
  ``google.rpc.Status`` body as the OTLP specification says. ``endpoint`` is the base URL,
  ``url`` the traces URL.
- ``ZipkinReceiver``: ``POST /api/v2/spans`` with a Zipkin v2 JSON list (optionally gzip),
  answers 202; its spans are the decoded JSON objects.

Faults, for the next N requests or until :meth:`reset` (each request, accepted or not, is
also kept in ``attempts`` with the status it got):

- ``fail_next(n, status=None, retry_after=None)``: answer an error (503 / UNAVAILABLE by
  default), optionally with ``Retry-After`` / gRPC ``RetryInfo``, then answer normally.
- ``require_header(name, value)``: 401 / UNAUTHENTICATED unless the header arrives with
  that value.
- ``hang(seconds, count=None)``: hold requests that long before answering (at stop, held
  requests are released and refused with 503 / UNAVAILABLE).
- ``reject_spans(count, message)``: OTLP partial success (accepted request, rejected spans).
- ``start_late(receiver, delay)``: the port is reserved now (connections are refused), the
  server starts after ``delay`` seconds.
- ``HungSocket()``: not a receiver but a collector that hangs: it accepts connections and
  never answers (no handshake, no response), until stopped.

``await receiver.wait_for_spans(n, timeout)`` polls without blocking the event loop (the
exporter under test may run on it); ``wait_for_spans_sync`` is for threads and sync tests.

Logs: the OTLP receivers also take ``ExportLogsServiceRequest`` (the gRPC ``LogsService``,
``POST /v1/logs`` in protobuf or strict OTLP/JSON); decoded records are in ``logs``
(:class:`ReceivedLog`), their requests in ``log_requests``, and ``await
wait_for_logs(n)`` waits for them. Log requests are kept apart from the span requests
and faults do not apply to them unless ``faults_for_logs = True``.

Metrics: the same for ``ExportMetricsServiceRequest`` (the gRPC ``MetricsService``,
``POST /v1/metrics``): decoded points in ``metrics`` (:class:`ReceivedMetric`), their
requests in ``metric_requests``, ``await wait_for_metrics(predicate)``; faults never
apply to them.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import gzip
import json
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Generic, TypeVar

import anyio
import grpc
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2
from typing_extensions import Self

__all__ = [
    "HungSocket",
    "OtlpGrpcReceiver",
    "OtlpHttpReceiver",
    "ReceivedEvent",
    "ReceivedLog",
    "ReceivedMetric",
    "ReceivedRequest",
    "ReceivedSpan",
    "TlsFiles",
    "ZipkinReceiver",
    "start_late",
]

HOST = "127.0.0.1"

# HTTP status -> google.rpc.Code, for the Status body of OTLP/HTTP errors.
_HTTP_TO_RPC_CODE = {400: 3, 401: 16, 403: 7, 404: 5, 429: 8, 500: 13, 502: 14, 503: 14, 504: 4}


@dataclass(frozen=True)
class ReceivedEvent:
    """A span event as it arrived."""

    name: str
    attributes: dict[str, Any]
    time_unix_nano: int


@dataclass(frozen=True)
class ReceivedSpan:
    """An OTLP span as it arrived, with its resource and scope flattened in."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    kind: str
    attributes: dict[str, Any]
    events: tuple[ReceivedEvent, ...]
    links: tuple[tuple[str, str], ...]
    status_code: str
    status_message: str
    start_time_unix_nano: int
    end_time_unix_nano: int
    resource: dict[str, Any]
    scope: str
    #: The span as it arrived (``opentelemetry.proto`` Span): every field, for tests
    #: that check what the flattened ones leave out (link flags and tracestate,
    #: dropped counts).
    proto: Any = field(default=None, compare=False, repr=False)

    @property
    def service_name(self) -> Any:
        return self.resource.get("service.name")


@dataclass(frozen=True)
class ReceivedLog:
    """An OTLP log record as it arrived, with its resource and scope flattened in."""

    body: Any
    severity_number: int
    severity_text: str
    trace_id: str
    span_id: str
    flags: int
    attributes: dict[str, Any]
    time_unix_nano: int
    observed_time_unix_nano: int
    resource: dict[str, Any]
    scope: str


@dataclass(frozen=True)
class ReceivedMetric:
    """One OTLP metric data point as it arrived, with its metric, resource and scope
    flattened in. ``kind`` is sum, gauge or histogram; ``value`` is a number point's
    value (None for histograms); ``exemplars`` are (value, trace id hex, span id hex)."""

    name: str
    unit: str
    kind: str
    temporality: int
    monotonic: bool
    attributes: dict[str, Any]
    start_time_unix_nano: int
    time_unix_nano: int
    value: float | int | None
    count: int
    sum: float
    bucket_counts: tuple[int, ...]
    explicit_bounds: tuple[float, ...]
    exemplars: tuple[tuple[float, str, str], ...]
    resource: dict[str, Any]
    scope: str


@dataclass(frozen=True)
class ReceivedRequest:
    """
    One request as it arrived and what it was answered.

    ``headers`` are HTTP headers or gRPC metadata, names lowercased. ``status`` is the HTTP
    status or the gRPC status code name. ``spans`` is empty for rejected requests; for the
    Zipkin receiver its items are the decoded JSON span objects.
    """

    path: str
    headers: dict[str, Any]
    content_type: str | None
    content_encoding: str | None
    body_size: int
    status: int | str
    spans: tuple[Any, ...] = ()


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS receiver; ``client_ca`` turns on client certificate checks."""

    cert_file: str
    key_file: str
    client_ca: str | None = None


@dataclass
class _Faults:
    fail_remaining: int = 0
    fail_status: Any = None
    retry_after: float | str | None = None
    required: dict[str, str] = field(default_factory=dict)
    hang_seconds: float = 0.0
    hang_remaining: int | None = None
    reject_count: int = 0
    reject_message: str = ""


@dataclass(frozen=True)
class _Verdict:
    hang: float
    error: Any  # None to accept, else an HTTP status or grpc.StatusCode
    message: str
    retry_after: float | str | None
    reject_count: int
    reject_message: str


S = TypeVar("S")


class _Receiver(Generic[S]):
    """What every receiver shares: recording, faults, waiting, start/stop."""

    #: Answer for ``fail_next`` without a status.
    default_fail_status: Any = 503
    #: Answer when ``require_header`` is not satisfied.
    unauthenticated_status: Any = 401
    scheme = "http"

    def __init__(self, *, port: int = 0, tls: TlsFiles | None = None) -> None:
        self._lock = threading.Condition()
        self._faults = _Faults()
        self._requests: list[ReceivedRequest] = []
        self._attempts: list[ReceivedRequest] = []
        self._log_requests: list[ReceivedRequest] = []
        self._metric_requests: list[ReceivedRequest] = []
        #: Faults (fail_next, require_header, hang) apply to log requests too.
        self.faults_for_logs = False
        self._arrivals = 0
        self._stopping = threading.Event()
        self._reservation: socket.socket | None = None
        self._running = False
        self.tls = tls
        self.port = port
        if tls is not None:
            self.scheme = "https"

    # -- lifecycle -------------------------------------------------------------------
    def reserve_port(self) -> int:
        """Bind a port without listening, so connections are refused until start()."""
        if self._reservation is None and not self._running:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, self.port))
            self._reservation = sock
            self.port = sock.getsockname()[1]
        return self.port

    def start(self) -> None:
        if self._running:
            return
        if self._reservation is not None:
            self._reservation.close()
            self._reservation = None
        self._stopping.clear()
        self.port = self._serve(self.port)
        self._running = True

    def stop(self) -> None:
        """Stop serving and release hanging requests; safe to call twice."""
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
        if self._reservation is not None:
            self._reservation.close()
            self._reservation = None
        if self._running:
            self._running = False
            self._shutdown()

    @property
    def running(self) -> bool:
        return self._running

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _serve(self, port: int) -> int:
        raise NotImplementedError

    def _shutdown(self) -> None:
        raise NotImplementedError

    @property
    def endpoint(self) -> str:
        """Base URL of the receiver (``http://127.0.0.1:PORT``)."""
        return f"{self.scheme}://{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """The URL spans are sent to."""
        return self.endpoint

    # -- faults ------------------------------------------------------------------------
    def fail_next(
        self, n: int = 1, status: Any = None, *, retry_after: float | str | None = None
    ) -> None:
        """
        Answer the next ``n`` requests with ``status`` (default 503 / UNAVAILABLE).

        ``retry_after`` is sent as ``Retry-After`` (HTTP; a string goes verbatim, e.g. an
        HTTP-date) or as a ``google.rpc.RetryInfo`` trailer (gRPC; seconds).
        """
        with self._lock:
            self._faults.fail_remaining = n
            self._faults.fail_status = self.default_fail_status if status is None else status
            self._faults.retry_after = retry_after

    def require_header(self, name: str, value: str) -> None:
        """Answer 401 / UNAUTHENTICATED to requests without ``name: value``."""
        with self._lock:
            self._faults.required[name.lower()] = value

    def hang(self, seconds: float, count: int | None = None) -> None:
        """Hold the next ``count`` requests (all when None) ``seconds`` before answering."""
        with self._lock:
            self._faults.hang_seconds = seconds
            self._faults.hang_remaining = count

    def reject_spans(self, count: int, message: str = "rejected by test receiver") -> None:
        """Answer the next request with an OTLP partial success rejecting ``count`` spans."""
        with self._lock:
            self._faults.reject_count = count
            self._faults.reject_message = message

    def reset(self) -> None:
        """Forget recorded requests and faults."""
        with self._lock:
            self._faults = _Faults()
            self._requests.clear()
            self._attempts.clear()
            self._arrivals = 0

    def _judge(self, headers: Mapping[str, Any]) -> _Verdict:
        with self._lock:
            self._arrivals += 1
            f = self._faults
            hang = 0.0
            if f.hang_seconds > 0 and (f.hang_remaining is None or f.hang_remaining > 0):
                hang = f.hang_seconds
                if f.hang_remaining is not None:
                    f.hang_remaining -= 1
            for name, value in f.required.items():
                if headers.get(name) != value:
                    return _Verdict(
                        hang, self.unauthenticated_status, f"missing or wrong {name}", None, 0, ""
                    )
            if f.fail_remaining > 0:
                f.fail_remaining -= 1
                return _Verdict(hang, f.fail_status, "injected failure", f.retry_after, 0, "")
            reject, message = f.reject_count, f.reject_message
            f.reject_count = 0
            return _Verdict(hang, None, "", None, reject, message)

    def _hold(self, verdict: _Verdict) -> _Verdict:
        """Wait out a hang; a request released by stop() is refused, not accepted."""
        if verdict.hang > 0 and self._stopping.wait(verdict.hang):
            return dataclasses.replace(
                verdict, error=self.default_fail_status, message="receiver stopped"
            )
        return verdict

    def _record_logs(self, request: ReceivedRequest) -> None:
        with self._lock:
            self._log_requests.append(request)
            self._lock.notify_all()

    @property
    def log_requests(self) -> list[ReceivedRequest]:
        """Accepted log requests, in arrival order (their ``spans`` are ReceivedLogs)."""
        with self._lock:
            return list(self._log_requests)

    @property
    def logs(self) -> list[ReceivedLog]:
        """Every log record of every accepted log request, in arrival order."""
        with self._lock:
            return [record for request in self._log_requests for record in request.spans]

    async def wait_for_logs(self, n: int, timeout: float = 5.0) -> list[ReceivedLog]:
        """Wait until at least ``n`` log records arrived, without blocking the event loop."""
        with anyio.move_on_after(timeout):
            while len(self.logs) < n:
                await anyio.sleep(0.01)
        logs = self.logs
        assert len(logs) >= n, f"expected {n} log records within {timeout}s, got {len(logs)}"
        return logs

    def _record_metrics(self, request: ReceivedRequest) -> None:
        with self._lock:
            self._metric_requests.append(request)
            self._lock.notify_all()

    @property
    def metric_requests(self) -> list[ReceivedRequest]:
        """Accepted metric requests, in arrival order (``spans``: ReceivedMetrics)."""
        with self._lock:
            return list(self._metric_requests)

    @property
    def metrics(self) -> list[ReceivedMetric]:
        """Every data point of every accepted metric request, in arrival order."""
        with self._lock:
            return [point for request in self._metric_requests for point in request.spans]

    async def wait_for_metrics(
        self, predicate: Any, timeout: float = 10.0, what: str = "metric points"
    ) -> list[ReceivedMetric]:
        """Wait until ``predicate(points)`` holds for the points arrived so far, without
        blocking the event loop; return them."""
        with anyio.move_on_after(timeout):
            while not predicate(self.metrics):
                await anyio.sleep(0.02)
        points = self.metrics
        assert predicate(points), f"expected {what} within {timeout}s, got {len(points)} points"
        return points

    def _record(self, request: ReceivedRequest, *, accepted: bool) -> None:
        with self._lock:
            self._attempts.append(request)
            if accepted:
                self._requests.append(request)
            self._lock.notify_all()

    # -- what arrived --------------------------------------------------------------------
    @property
    def arrivals(self) -> int:
        """Requests that arrived, including those still held by :meth:`hang`."""
        with self._lock:
            return self._arrivals

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Accepted requests, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def attempts(self) -> list[ReceivedRequest]:
        """Every request, accepted or not, in arrival order."""
        with self._lock:
            return list(self._attempts)

    @property
    def spans(self) -> list[S]:
        """Every span of every accepted request, in arrival order."""
        with self._lock:
            return [span for request in self._requests for span in request.spans]

    def span_names(self) -> list[str]:
        return [self._name_of(span) for span in self.spans]

    @staticmethod
    def _name_of(span: Any) -> str:
        return str(span.name if isinstance(span, ReceivedSpan) else span.get("name", ""))

    def span(self, name: str) -> S:
        """The one span called ``name`` (AssertionError when none or several)."""
        found = [s for s in self.spans if self._name_of(s) == name]
        assert len(found) == 1, f"expected one span {name!r}, got {len(found)}: {self.span_names()}"
        return found[0]

    async def wait_for_spans(self, n: int, timeout: float = 5.0) -> list[S]:
        """Wait until at least ``n`` spans arrived, without blocking the event loop."""
        with anyio.move_on_after(timeout):
            while len(self.spans) < n:
                await anyio.sleep(0.01)
        spans = self.spans
        assert len(spans) >= n, f"expected {n} spans within {timeout}s, got {self.span_names()}"
        return spans

    async def wait_for_attempts(self, n: int, timeout: float = 5.0) -> list[ReceivedRequest]:
        """Wait until at least ``n`` requests arrived (accepted or not)."""
        with anyio.move_on_after(timeout):
            while len(self.attempts) < n:
                await anyio.sleep(0.01)
        attempts = self.attempts
        assert len(attempts) >= n, f"expected {n} requests within {timeout}s, got {len(attempts)}"
        return attempts

    def wait_for_spans_sync(self, n: int, timeout: float = 5.0) -> list[S]:
        """Blocking variant of :meth:`wait_for_spans`, for threads and sync tests."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while sum(len(r.spans) for r in self._requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
        spans = self.spans
        assert len(spans) >= n, f"expected {n} spans within {timeout}s, got {self.span_names()}"
        return spans


R = TypeVar("R", bound=_Receiver[Any])


@contextlib.contextmanager
def start_late(receiver: R, delay: float) -> Iterator[R]:
    """
    Reserve ``receiver``'s port now (connections are refused) and start serving after
    ``delay`` seconds, in a timer thread; the receiver is stopped on exit.
    """
    receiver.reserve_port()
    timer = threading.Timer(delay, receiver.start)
    timer.daemon = True
    timer.start()
    try:
        yield receiver
    finally:
        timer.cancel()
        timer.join()
        receiver.stop()


# ---------------------------------------------------------------------------------------
# OTLP decoding


def _any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)


def _attributes(items: Any) -> dict[str, Any]:
    result: dict[str, Any] = {}
    kv: KeyValue
    for kv in items:
        result[kv.key] = _any_value(kv.value)
    return result


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    name: str = enum.Name(value)
    return name.removeprefix(prefix)


def decode_otlp(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    """Flatten an ``ExportTraceServiceRequest`` into :class:`ReceivedSpan` objects."""
    spans: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        kind=_enum_name(trace_pb2.Span.SpanKind, span.kind, "SPAN_KIND_"),
                        attributes=_attributes(span.attributes),
                        events=tuple(
                            ReceivedEvent(e.name, _attributes(e.attributes), e.time_unix_nano)
                            for e in span.events
                        ),
                        links=tuple((li.trace_id.hex(), li.span_id.hex()) for li in span.links),
                        status_code=_enum_name(
                            trace_pb2.Status.StatusCode, span.status.code, "STATUS_CODE_"
                        ),
                        status_message=span.status.message,
                        start_time_unix_nano=span.start_time_unix_nano,
                        end_time_unix_nano=span.end_time_unix_nano,
                        resource=resource,
                        scope=scope,
                        proto=span,
                    )
                )
    return spans


def decode_otlp_logs(request: logs_service_pb2.ExportLogsServiceRequest) -> list[ReceivedLog]:
    """Flatten an ``ExportLogsServiceRequest`` into :class:`ReceivedLog` objects."""
    records: list[ReceivedLog] = []
    for resource_logs in request.resource_logs:
        resource = _attributes(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            scope = scope_logs.scope.name
            for record in scope_logs.log_records:
                records.append(
                    ReceivedLog(
                        body=_any_value(record.body),
                        severity_number=int(record.severity_number),
                        severity_text=record.severity_text,
                        trace_id=record.trace_id.hex(),
                        span_id=record.span_id.hex(),
                        flags=record.flags,
                        attributes=_attributes(record.attributes),
                        time_unix_nano=record.time_unix_nano,
                        observed_time_unix_nano=record.observed_time_unix_nano,
                        resource=resource,
                        scope=scope,
                    )
                )
    return records


def decode_otlp_metrics(
    request: metrics_service_pb2.ExportMetricsServiceRequest,
) -> list[ReceivedMetric]:
    """Flatten an ``ExportMetricsServiceRequest`` into :class:`ReceivedMetric` objects."""
    points: list[ReceivedMetric] = []
    for resource_metrics in request.resource_metrics:
        resource = _attributes(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            scope = scope_metrics.scope.name
            for metric in scope_metrics.metrics:
                kind = metric.WhichOneof("data")
                data = getattr(metric, kind)
                temporality = int(getattr(data, "aggregation_temporality", 0))
                monotonic = bool(getattr(data, "is_monotonic", False))
                for point in data.data_points:
                    if kind == "histogram":
                        value = None
                        extra = {
                            "count": point.count,
                            "sum": point.sum,
                            "bucket_counts": tuple(point.bucket_counts),
                            "explicit_bounds": tuple(point.explicit_bounds),
                            "exemplars": tuple(
                                (e.as_double, e.trace_id.hex(), e.span_id.hex())
                                for e in point.exemplars
                            ),
                        }
                    else:
                        which = point.WhichOneof("value")
                        value = getattr(point, which) if which else None
                        extra = {
                            "count": 0,
                            "sum": 0.0,
                            "bucket_counts": (),
                            "explicit_bounds": (),
                            "exemplars": (),
                        }
                    points.append(
                        ReceivedMetric(
                            name=metric.name,
                            unit=metric.unit,
                            kind=kind,
                            temporality=temporality,
                            monotonic=monotonic,
                            attributes=_attributes(point.attributes),
                            start_time_unix_nano=point.start_time_unix_nano,
                            time_unix_nano=point.time_unix_nano,
                            value=value,
                            resource=resource,
                            scope=scope,
                            **extra,
                        )
                    )
    return points


def parse_otlp_metrics_json(body: bytes) -> metrics_service_pb2.ExportMetricsServiceRequest:
    """An OTLP/JSON metrics body (or a line of ``metrics.jsonl``), strictly:
    lowerCamelCase keys (protobuf's parser refuses unknown ones), exemplars' hex ids,
    enums as integers."""
    data = json.loads(body)
    for resource_metrics in data.get("resourceMetrics", ()):
        for scope_metrics in resource_metrics.get("scopeMetrics", ()):
            for metric in scope_metrics.get("metrics", ()):
                for kind in ("sum", "gauge", "histogram"):
                    block = metric.get(kind)
                    if block is None:
                        continue
                    temporality = block.get("aggregationTemporality", 0)
                    if not isinstance(temporality, int):
                        raise TypeError(f"aggregationTemporality {temporality!r} is not an int")
                    for point in block.get("dataPoints", ()):
                        for exemplar in point.get("exemplars", ()):
                            for key, size in (("traceId", 16), ("spanId", 8)):
                                _hex_id_to_base64(exemplar, key, size)
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    try:
        json_format.ParseDict(data, request)
    except json_format.ParseError as exc:
        raise ValueError(str(exc)) from exc
    return request


def parse_otlp_logs_json(body: bytes) -> logs_service_pb2.ExportLogsServiceRequest:
    """An OTLP/JSON logs body (or a line of ``logs.jsonl``), strictly: lowerCamelCase keys
    (protobuf's parser refuses unknown ones), hex ids, enums as integers."""
    data = json.loads(body)
    for resource_logs in data.get("resourceLogs", ()):
        for scope_logs in resource_logs.get("scopeLogs", ()):
            for record in scope_logs.get("logRecords", ()):
                if "severityNumber" in record and not isinstance(record["severityNumber"], int):
                    raise ValueError(
                        f"severityNumber {record['severityNumber']!r} is not an integer"
                    )
                for key, size in (("traceId", 16), ("spanId", 8)):
                    _hex_id_to_base64(record, key, size)
    request = logs_service_pb2.ExportLogsServiceRequest()
    try:
        json_format.ParseDict(data, request)
    except json_format.ParseError as exc:
        raise ValueError(str(exc)) from exc
    return request


def _export_response(
    reject_count: int, message: str
) -> trace_service_pb2.ExportTraceServiceResponse:
    response = trace_service_pb2.ExportTraceServiceResponse()
    if reject_count:
        response.partial_success.rejected_spans = reject_count
        response.partial_success.error_message = message
    return response


# ---------------------------------------------------------------------------------------
# OTLP/gRPC


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpGrpcReceiver) -> None:
        self._receiver = receiver

    def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.ServicerContext,
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        receiver = self._receiver
        metadata = {m.key.lower(): m.value for m in context.invocation_metadata()}
        verdict = receiver._hold(receiver._judge(metadata))
        size = request.ByteSize()
        if verdict.error is not None:
            code: grpc.StatusCode = verdict.error
            receiver._record(
                ReceivedRequest("Export", metadata, "application/grpc", None, size, code.name),
                accepted=False,
            )
            if verdict.retry_after is not None:
                delay = Duration()
                delay.FromNanoseconds(int(float(verdict.retry_after) * 1e9))
                info = error_details_pb2.RetryInfo(retry_delay=delay)
                context.set_trailing_metadata(
                    (("google.rpc.retryinfo-bin", info.SerializeToString()),)
                )
            context.abort(code, verdict.message)
        spans = tuple(decode_otlp(request))
        receiver._record(
            ReceivedRequest("Export", metadata, "application/grpc", None, size, "OK", spans),
            accepted=True,
        )
        return _export_response(verdict.reject_count, verdict.reject_message)


class _LogsService(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, receiver: OtlpGrpcReceiver) -> None:
        self._receiver = receiver

    def Export(
        self,
        request: logs_service_pb2.ExportLogsServiceRequest,
        context: grpc.ServicerContext,
    ) -> logs_service_pb2.ExportLogsServiceResponse:
        receiver = self._receiver
        metadata = {m.key.lower(): m.value for m in context.invocation_metadata()}
        if receiver.faults_for_logs:
            verdict = receiver._hold(receiver._judge(metadata))
            if verdict.error is not None:
                context.abort(verdict.error, verdict.message)
        receiver._record_logs(
            ReceivedRequest(
                "LogsService/Export",
                metadata,
                "application/grpc",
                None,
                request.ByteSize(),
                "OK",
                tuple(decode_otlp_logs(request)),
            )
        )
        return logs_service_pb2.ExportLogsServiceResponse()


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpGrpcReceiver) -> None:
        self._receiver = receiver

    def Export(
        self,
        request: metrics_service_pb2.ExportMetricsServiceRequest,
        context: grpc.ServicerContext,
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        metadata = {m.key.lower(): m.value for m in context.invocation_metadata()}
        self._receiver._record_metrics(
            ReceivedRequest(
                "MetricsService/Export",
                metadata,
                "application/grpc",
                None,
                request.ByteSize(),
                "OK",
                tuple(decode_otlp_metrics(request)),
            )
        )
        return metrics_service_pb2.ExportMetricsServiceResponse()


class OtlpGrpcReceiver(_Receiver[ReceivedSpan]):
    """An OTLP/gRPC TraceService on 127.0.0.1 (see the module docstring)."""

    default_fail_status = grpc.StatusCode.UNAVAILABLE
    unauthenticated_status = grpc.StatusCode.UNAUTHENTICATED

    def __init__(
        self, *, port: int = 0, tls: TlsFiles | None = None, accept_gzip: bool = True
    ) -> None:
        super().__init__(port=port, tls=tls)
        self.accept_gzip = accept_gzip
        self._server: grpc.Server | None = None

    def _serve(self, port: int) -> int:
        options: list[tuple[str, Any]] = [("grpc.so_reuseport", 0)]
        if not self.accept_gzip:
            # Bit 0 is identity: every other algorithm is refused with UNIMPLEMENTED.
            options.append(("grpc.compression_enabled_algorithms_bitset", 1))
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=options)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), server)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_LogsService(self), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsService(self), server)
        address = f"{HOST}:{port}"
        if self.tls is None:
            bound = server.add_insecure_port(address)
        else:
            with open(self.tls.key_file, "rb") as f:
                key = f.read()
            with open(self.tls.cert_file, "rb") as f:
                cert = f.read()
            client_ca = None
            if self.tls.client_ca is not None:
                with open(self.tls.client_ca, "rb") as f:
                    client_ca = f.read()
            credentials = grpc.ssl_server_credentials(
                [(key, cert)],
                root_certificates=client_ca,
                require_client_auth=client_ca is not None,
            )
            bound = server.add_secure_port(address, credentials)
        if not bound:
            raise RuntimeError(f"gRPC receiver could not bind {address}")
        server.start()
        self._server = server
        return bound

    def _shutdown(self) -> None:
        if self._server is not None:
            self._server.stop(grace=0.2).wait(5)
            self._server = None


# ---------------------------------------------------------------------------------------
# HTTP (OTLP/HTTP and Zipkin)


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], receiver: _HttpReceiver[Any]) -> None:
        self.receiver = receiver
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _HttpHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Drop keep-alive connections too, so a stopped receiver is really gone."""
        with self.connections_lock:
            connections = list(self.connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _HttpHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HttpServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def do_POST(self) -> None:
        receiver = self.server.receiver
        length = self.headers.get("Content-Length")
        if length is None:
            self._answer(411, {}, b"Content-Length required", "text/plain")
            return
        raw = self.rfile.read(int(length))
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, extra, body, content_type = receiver._handle(self.path, headers, raw)
        self._answer(status, extra, body, content_type)

    def do_GET(self) -> None:
        self._answer(405, {}, b"use POST", "text/plain")

    def _answer(self, status: int, extra: Mapping[str, str], body: bytes, ctype: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up (timeout) while we hung
            self.close_connection = True


class _HttpReceiver(_Receiver[S]):
    path = "/"

    def __init__(self, *, port: int = 0, tls: TlsFiles | None = None, path: str | None = None):
        super().__init__(port=port, tls=tls)
        if path is not None:
            self.path = path
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.endpoint + self.path

    def _serve(self, port: int) -> int:
        server = _HttpServer((HOST, port), self)
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
            if self.tls.client_ca is not None:
                context.load_verify_locations(self.tls.client_ca)
                context.verify_mode = ssl.CERT_REQUIRED
            server.socket = context.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        self._server, self._thread = server, thread
        return int(server.server_address[1])

    def _shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _handle(
        self, path: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, str], bytes, str]:
        content_type = headers.get("content-type")
        encoding = headers.get("content-encoding")

        def reject(status: int, message: str, extra: dict[str, str] | None = None) -> Any:
            self._record(
                ReceivedRequest(path, headers, content_type, encoding, len(raw), status),
                accepted=False,
            )
            return (status, extra or {}, *self._error_body(status, message, content_type))

        if path == getattr(self, "metrics_path", None):
            return self._handle_signal(
                "metrics", path, headers, raw, content_type, encoding, reject
            )
        logs_path = getattr(self, "logs_path", None)
        if path == logs_path and not self.faults_for_logs:
            return self._handle_signal("logs", path, headers, raw, content_type, encoding, reject)
        verdict = self._hold(self._judge(headers))
        if path == logs_path:
            if verdict.error is not None:
                return reject(int(verdict.error), verdict.message)
            return self._handle_signal("logs", path, headers, raw, content_type, encoding, reject)
        if path != self.path:
            return reject(404, f"no such path {path}; spans go to {self.path}")
        if verdict.error is not None:
            extra = {}
            if verdict.retry_after is not None:
                after = verdict.retry_after
                extra["Retry-After"] = after if isinstance(after, str) else f"{after:g}"
            return reject(int(verdict.error), verdict.message, extra)
        try:
            if encoding in (None, "", "identity", "none"):
                body = raw
            elif encoding == "gzip":
                body = gzip.decompress(raw)
            elif encoding == "deflate":
                body = zlib.decompress(raw)
            else:
                return reject(415, f"unsupported Content-Encoding {encoding}")
            spans = self._decode(content_type, body)
        except (ValueError, TypeError, OSError, EOFError, zlib.error) as exc:
            return reject(400, f"undecodable body: {exc}")
        self._record(
            ReceivedRequest(path, headers, content_type, encoding, len(raw), 200, tuple(spans)),
            accepted=True,
        )
        return self._ok_body(verdict, content_type)

    def _handle_signal(
        self,
        signal: str,
        path: str,
        headers: dict[str, str],
        raw: bytes,
        content_type: str | None,
        encoding: str | None,
        reject: Any,
    ) -> tuple[int, dict[str, str], bytes, str]:
        """``POST /v1/logs`` or ``/v1/metrics``: an ``ExportLogsServiceRequest`` or
        ``ExportMetricsServiceRequest`` (protobuf or OTLP/JSON)."""
        if signal == "logs":
            parse_json, message, decode, record, answer = (
                parse_otlp_logs_json,
                logs_service_pb2.ExportLogsServiceRequest,
                decode_otlp_logs,
                self._record_logs,
                logs_service_pb2.ExportLogsServiceResponse,
            )
        else:
            parse_json, message, decode, record, answer = (
                parse_otlp_metrics_json,
                metrics_service_pb2.ExportMetricsServiceRequest,
                decode_otlp_metrics,
                self._record_metrics,
                metrics_service_pb2.ExportMetricsServiceResponse,
            )
        try:
            body = gzip.decompress(raw) if encoding == "gzip" else raw
            if content_type == "application/json":
                request = parse_json(body)
            elif content_type == "application/x-protobuf":
                request = message()
                request.ParseFromString(body)
            else:
                raise ValueError(f"Content-Type {content_type!r} is not protobuf or JSON")
            items = decode(request)
        except (ValueError, TypeError, OSError, EOFError) as exc:
            return reject(400, f"undecodable {signal} body: {exc}")  # type: ignore[no-any-return]
        record(ReceivedRequest(path, headers, content_type, encoding, len(raw), 200, tuple(items)))
        response = answer()
        if content_type == "application/json":
            return 200, {}, json_format.MessageToJson(response).encode(), "application/json"
        return 200, {}, response.SerializeToString(), "application/x-protobuf"

    def _decode(self, content_type: str | None, body: bytes) -> list[Any]:
        raise NotImplementedError

    def _ok_body(
        self, verdict: _Verdict, content_type: str | None = None
    ) -> tuple[int, dict[str, str], bytes, str]:
        raise NotImplementedError

    def _error_body(
        self, status: int, message: str, content_type: str | None = None
    ) -> tuple[bytes, str]:
        return message.encode(), "text/plain"


class OtlpHttpReceiver(_HttpReceiver[ReceivedSpan]):
    """An OTLP/HTTP receiver on 127.0.0.1 (see the module docstring): protobuf bodies, or
    OTLP/JSON ones (``Content-Type: application/json``), answered in the same encoding."""

    path = "/v1/traces"
    logs_path = "/v1/logs"
    metrics_path = "/v1/metrics"

    def _decode(self, content_type: str | None, body: bytes) -> list[ReceivedSpan]:
        if content_type == "application/json":
            return decode_otlp(_parse_otlp_json(body))
        if content_type != "application/x-protobuf":
            raise ValueError(
                f"Content-Type {content_type!r} is not application/x-protobuf or application/json"
            )
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        return decode_otlp(request)

    def _ok_body(
        self, verdict: _Verdict, content_type: str | None = None
    ) -> tuple[int, dict[str, str], bytes, str]:
        response = _export_response(verdict.reject_count, verdict.reject_message)
        if content_type == "application/json":
            return 200, {}, json_format.MessageToJson(response).encode(), "application/json"
        return 200, {}, response.SerializeToString(), "application/x-protobuf"

    def _error_body(
        self, status: int, message: str, content_type: str | None = None
    ) -> tuple[bytes, str]:
        status_message = status_pb2.Status(code=_HTTP_TO_RPC_CODE.get(status, 2), message=message)
        if content_type == "application/json":
            return json_format.MessageToJson(status_message).encode(), "application/json"
        return status_message.SerializeToString(), "application/x-protobuf"


def _hex_id_to_base64(holder: dict[str, Any], key: str, size: int) -> None:
    """OTLP/JSON ids are hex (not protobuf JSON's base64): refuse anything else."""
    value = holder.get(key)
    if value in (None, ""):
        return
    if not isinstance(value, str) or len(value) != 2 * size:
        raise ValueError(f"{key} {value!r} is not {2 * size} hex digits (OTLP/JSON ids are hex)")
    holder[key] = base64.b64encode(bytes.fromhex(value)).decode()  # ValueError unless hex


def _parse_otlp_json(body: bytes) -> trace_service_pb2.ExportTraceServiceRequest:
    """An OTLP/JSON body, strictly as the specification encodes it: lowerCamelCase keys
    (protobuf's parser refuses unknown ones), hex ids, enums as integers."""
    data = json.loads(body)
    for resource_spans in data.get("resourceSpans", ()):
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                if "kind" in span and not isinstance(span["kind"], int):
                    raise ValueError(f"kind {span['kind']!r} is not an integer (OTLP/JSON enums)")
                for key, size in (("traceId", 16), ("spanId", 8), ("parentSpanId", 8)):
                    _hex_id_to_base64(span, key, size)
                for link in span.get("links", ()):
                    for key, size in (("traceId", 16), ("spanId", 8)):
                        _hex_id_to_base64(link, key, size)
    request = trace_service_pb2.ExportTraceServiceRequest()
    try:
        json_format.ParseDict(data, request)
    except json_format.ParseError as exc:
        raise ValueError(str(exc)) from exc
    return request


class ZipkinReceiver(_HttpReceiver[dict[str, Any]]):
    """A Zipkin v2 JSON receiver on 127.0.0.1 (see the module docstring)."""

    path = "/api/v2/spans"

    def _decode(self, content_type: str | None, body: bytes) -> list[dict[str, Any]]:
        if not (content_type or "").startswith("application/json"):
            raise ValueError(f"Content-Type {content_type!r} is not application/json")
        spans = json.loads(body)
        if not isinstance(spans, list):
            raise TypeError("a Zipkin v2 body is a JSON list of spans")
        for span in spans:
            if not isinstance(span, dict):
                raise TypeError("each span is a JSON object")
            trace_id, span_id = span.get("traceId"), span.get("id")
            if not isinstance(trace_id, str) or len(trace_id) not in (16, 32):
                raise ValueError(f"traceId {trace_id!r} is not 16 or 32 hex characters")
            if not isinstance(span_id, str) or len(span_id) != 16:
                raise ValueError(f"id {span_id!r} is not 16 hex characters")
            int(trace_id, 16)  # ValueError unless hex
            int(span_id, 16)
            if "timestamp" in span and not isinstance(span["timestamp"], int):
                raise ValueError("timestamp is an integer of microseconds")
        return spans

    def _ok_body(
        self, verdict: _Verdict, content_type: str | None = None
    ) -> tuple[int, dict[str, str], bytes, str]:
        return 202, {}, b"", "text/plain"


class HungSocket:
    """
    A collector that hangs: a TCP socket on 127.0.0.1 that accepts every connection and
    never reads or answers (not even a TLS or HTTP/2 handshake), until :meth:`stop`.
    ``endpoint`` is ``http://127.0.0.1:PORT``; ``connections`` counts accepted ones.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((HOST, 0))
        self._sock.listen(64)
        self.port: int = self._sock.getsockname()[1]
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def connections(self) -> int:
        return len(self._held)

    def _accept(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self._held.append(conn)  # held open, never read: the client waits

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        for conn in self._held:
            conn.close()
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
