"""
OTLP/gRPC transport: one ``TraceService.Export`` call per batch, status mapped to a result.

Runs in a worker thread (every call here blocks). It does not retry: the pipeline owns
retries and needs to know *why* a call failed, which the SDK's exporter keeps to itself.
The channel is made on first use (reading certificate files is blocking work too) and
remade after UNAVAILABLE, so a collector that comes back is reached at once instead of
after gRPC's own reconnect backoff.
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub

from aiorunner.backend import ExportResult

from ._encode import encode_request, items, rejected
from ._version import USER_AGENT

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._settings import OtlpSettings

__all__ = ["GrpcTransport"]

#: Worth another try (the OTLP specification's list, plus RESOURCE_EXHAUSTED which a
#: collector answers when its memory limiter is full).
RETRYABLE = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

_HINTS = {
    grpc.StatusCode.UNAUTHENTICATED: "check the auth header (OTEL_EXPORTER_OTLP_HEADERS or "
    "the vendor's key variable)",
    grpc.StatusCode.PERMISSION_DENIED: "the credentials are valid but may not write traces",
    grpc.StatusCode.UNIMPLEMENTED: "the server has no OTLP TraceService here (wrong port, or "
    "an OTLP/HTTP endpoint: set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf), or it refuses "
    "the compression (try OTEL_EXPORTER_OTLP_COMPRESSION=none)",
}

# UNAVAILABLE because nothing could be connected to (refused, DNS, no route), as opposed
# to a server that answered UNAVAILABLE: given only the pipeline's short connect budget.
_UNREACHABLE = re.compile(
    r"failed to connect|connection refused|DNS resolution failed|name resolution|"
    r"could not resolve|Network is unreachable|No route to host|Domain name not found",
    re.IGNORECASE,
)

_TLS_FAILURE = re.compile(
    r"handshake failed|CERTIFICATE_VERIFY_FAILED|WRONG_VERSION_NUMBER", re.IGNORECASE
)

_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.primary_user_agent", USER_AGENT),
    # Reconnect quickly: the pipeline's retries are paced already.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class GrpcTransport:
    """Sends batches with a blocking ``TraceServiceStub.Export``; thread safe."""

    def __init__(self, settings: OtlpSettings, *, signal: str = "traces") -> None:
        self._settings = settings
        # "logs": LogsService.Export of ExportLogsServiceRequest (aiorunner LogRecordData).
        self._logs = signal == "logs"
        # "metrics": MetricsService.Export of ExportMetricsServiceRequest (MetricPointData).
        self._metrics = signal == "metrics"
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None
        self._stub: Any = None
        self._closed = False
        self._metadata = tuple(settings.headers.items())
        self._compression = (
            grpc.Compression.Gzip
            if settings.compression == "gzip"
            else grpc.Compression.NoCompression
        )
        self.where = f"OTLP/gRPC endpoint {settings.target}"

    def _credentials(self) -> grpc.ChannelCredentials:
        s = self._settings
        files = {
            "certificate": s.certificate,
            "client_key": s.client_key,
            "client_certificate": s.client_certificate,
        }
        loaded: dict[str, bytes | None] = {}
        for key, path in files.items():
            if path is None:
                loaded[key] = None
                continue
            try:
                loaded[key] = _read(path)
            except OSError as exc:
                raise _SetupError(
                    f"cannot read {s.describe(key)} {path!r}: {exc.strerror or exc}; point it "
                    "at a PEM file"
                ) from None
        return grpc.ssl_channel_credentials(
            root_certificates=loaded["certificate"],
            private_key=loaded["client_key"],
            certificate_chain=loaded["client_certificate"],
        )

    def _connect(self) -> Any:
        with self._lock:
            if self._closed:
                raise _SetupError("the backend is shut down")
            if self._stub is None:
                target = self._settings.target
                if self._settings.insecure:
                    channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
                else:
                    channel = grpc.secure_channel(
                        target, self._credentials(), options=_CHANNEL_OPTIONS
                    )
                self._channel = channel
                if self._metrics:
                    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc import (
                        MetricsServiceStub,
                    )

                    self._stub = MetricsServiceStub(channel)  # type: ignore[no-untyped-call]
                elif self._logs:
                    from opentelemetry.proto.collector.logs.v1.logs_service_pb2_grpc import (
                        LogsServiceStub,
                    )

                    self._stub = LogsServiceStub(channel)  # type: ignore[no-untyped-call]
                else:
                    self._stub = TraceServiceStub(channel)  # type: ignore[no-untyped-call]
            return self._stub

    def _reconnect(self, stub: Any) -> None:
        with self._lock:
            if self._stub is stub and self._channel is not None:
                self._channel.close()
                self._channel = self._stub = None

    def send(self, spans: Sequence[Any], timeout: float) -> ExportResult:
        """Export one batch within ``timeout`` seconds; never raises for export failures.
        ``spans`` are ``ReadableSpan``s, or ``LogRecordData`` for a logs transport."""
        if self._metrics:
            from ._metrics import encode_metrics

            request: Any = encode_metrics(spans)
        elif self._logs:
            from ._logs import encode_logs

            request = encode_logs(spans)
        else:
            request = encode_request(spans)
        try:
            stub = self._connect()
        except _SetupError as exc:
            return ExportResult.permanent(f"{self.where}: {exc}")
        try:
            response = stub.Export(
                request,
                metadata=self._metadata,
                timeout=timeout,
                compression=self._compression,
            )
        except grpc.RpcError as error:
            return self._failure(error, stub, timeout)
        partial = response.partial_success
        count = rejected(partial, logs=self._logs, metrics=self._metrics)
        what = items(logs=self._logs, metrics=self._metrics)
        if count:
            return ExportResult.permanent(
                self._settings.redact(
                    f"{self.where} accepted the request but rejected {count} "
                    f"of {len(spans)} {what}: {partial.error_message or 'no reason given'}"
                )
            )
        return ExportResult.success()

    def _failure(self, error: grpc.RpcError, stub: Any, timeout: float) -> ExportResult:
        code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
        details: str = error.details() or ""  # type: ignore[attr-defined]
        if code is grpc.StatusCode.UNAVAILABLE:
            self._reconnect(stub)
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            details = f"no answer within {timeout:g} s (OTEL_EXPORTER_OTLP_TIMEOUT)"
        message = f"{self.where} answered {code.name}: {details}"
        if code in _HINTS:
            message += f" ({_HINTS[code]})"
        message = self._settings.redact(message)
        if code is grpc.StatusCode.UNAVAILABLE and _TLS_FAILURE.search(details):
            # gRPC reports a TLS failure as UNAVAILABLE, but retrying cannot fix it.
            return ExportResult.permanent(
                f"{message} (TLS failed: check OTEL_EXPORTER_OTLP_CERTIFICATE, or use "
                "http:// for a plaintext collector)"
            )
        if code is grpc.StatusCode.UNAVAILABLE and _UNREACHABLE.search(details):
            return ExportResult.retryable(message, unreachable=True)
        if code in RETRYABLE:
            return ExportResult.retryable(message, retry_after=_retry_after(error))
        return ExportResult.permanent(message)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._channel is not None:
                self._channel.close()
            self._channel = self._stub = None


class _SetupError(Exception):
    """The channel cannot be made (unreadable certificate, closed backend)."""


def _retry_after(error: grpc.RpcError) -> float | None:
    """The server's ``google.rpc.RetryInfo`` delay, in seconds, if it sent one."""
    trailers = getattr(error, "trailing_metadata", lambda: None)() or ()
    for key, value in trailers:
        if key == "google.rpc.retryinfo-bin":
            from google.protobuf.message import DecodeError
            from google.rpc.error_details_pb2 import (  # type: ignore[import-untyped]
                RetryInfo,
            )

            info = RetryInfo()
            try:
                info.ParseFromString(value)
            except DecodeError:  # a malformed trailer is not worth failing over
                return None
            delay = info.retry_delay
            return float(delay.seconds + delay.nanos / 1e9)
    return None
