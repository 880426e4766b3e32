"""
OTLP/HTTP transport: one POST per batch (protobuf, or OTLP/JSON for ``http/json``), the
answer mapped to a result.

The JSON body is the protobuf message ``opentelemetry-exporter-otlp-proto-common`` encodes,
in protobuf's JSON mapping with the changes OTLP/JSON makes to it (specification, "JSON
Protobuf Encoding"): trace and span ids as hex, not base64; enums as numbers. Field names
are lowerCamelCase and 64-bit integers decimal strings, both as the mapping has them.

Runs in a worker thread (urllib3 blocks). No retries, no redirects: the pipeline retries
what is worth retrying (429, 502, 503, 504, connection failures, timeouts, honouring
``Retry-After``) and reports the rest once, with the server's own words (the
``google.rpc.Status`` body the OTLP specification asks servers to send).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import math
import threading
import time
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import urllib3
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from urllib3.exceptions import (
    HTTPError,
    LocationParseError,
    NewConnectionError,
    ProtocolError,
    SSLError,
)
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from aiorunner.backend import ExportResult

from ._encode import encode_request, items, rejected
from ._settings import HTTP_JSON, OtlpSettings, redact_url
from ._version import USER_AGENT

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["RETRYABLE_STATUS", "HttpTransport", "parse_retry_after"]

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})

_HINTS = {
    401: "check the auth header (OTEL_EXPORTER_OTLP_HEADERS or the vendor's key variable)",
    403: "the credentials are valid but may not write traces",
    404: "check the endpoint path: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is used as is, "
    "OTEL_EXPORTER_OTLP_ENDPOINT gets /v1/traces appended",
    405: "this URL does not accept POST; check the endpoint path",
    413: "the batch is too large for the server; lower OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    415: "the server does not take this OTLP encoding here; is it an OTLP/HTTP endpoint? "
    "(OTEL_EXPORTER_OTLP_PROTOCOL chooses http/protobuf or http/json)",
}


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    current = time.time() if now is None else now
    return max(when.timestamp() - current, 0.0)


def _describe(exc: BaseException) -> str:
    """An exception's text without urllib3's ``<...Connection object at 0x...>:`` prefix."""
    text = str(exc)
    if text.startswith("<") and ">: " in text:
        text = text.split(">: ", 1)[1]
    return text


def _status_message(content_type: str, body: bytes) -> str:
    """The server's explanation: a google.rpc.Status message, or the start of the text."""
    if not body:
        return ""
    if "protobuf" in content_type:
        from google.protobuf.message import DecodeError
        from google.rpc.status_pb2 import Status  # type: ignore[import-untyped]

        status = Status()
        with contextlib.suppress(DecodeError):  # not a Status after all: show the text
            status.ParseFromString(body)
            return str(status.message)
    if "json" in content_type:
        with contextlib.suppress(ValueError, AttributeError):
            return str(json.loads(body)["message"])
    text = body[:300].decode("utf-8", "replace").strip()
    return " ".join(text.split())


def _hex_ids(ids: dict[str, object], keys: tuple[str, ...]) -> None:
    for key in keys:
        value = ids.get(key)
        if isinstance(value, str):
            ids[key] = base64.b64decode(value).hex()


def encode_json(spans: Sequence[ReadableSpan]) -> bytes:
    """One OTLP/JSON ``ExportTraceServiceRequest`` body (see the module docstring)."""
    from google.protobuf import json_format

    data = json_format.MessageToDict(encode_request(spans), use_integers_for_enums=True)
    for resource_spans in data.get("resourceSpans", ()):
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                _hex_ids(span, ("traceId", "spanId", "parentSpanId"))
                for link in span.get("links", ()):
                    _hex_ids(link, ("traceId", "spanId"))
    return json.dumps(data, separators=(",", ":")).encode()


def _rejected_json(data: bytes) -> tuple[int, str]:
    """(rejected spans or log records, message) of an OTLP/JSON export response."""
    try:
        partial = json.loads(data).get("partialSuccess") or {}
        rejected = (
            partial.get("rejectedSpans")
            or partial.get("rejectedLogRecords")
            or partial.get("rejectedDataPoints")
            or 0
        )
        return int(rejected), str(partial.get("errorMessage") or "")
    except (ValueError, AttributeError, TypeError):
        return 0, ""  # a 2xx with an odd body is still a success


class HttpTransport:
    """Sends batches with urllib3 (connection pooling, TLS); thread safe."""

    def __init__(self, settings: OtlpSettings, *, signal: str = "traces") -> None:
        self._settings = settings
        # "logs": POST ExportLogsServiceRequest bodies (aiorunner LogRecordData) to
        # settings.endpoint (/v1/logs).
        self._logs = signal == "logs"
        # "metrics": ExportMetricsServiceRequest bodies (MetricPointData) to /v1/metrics.
        self._metrics = signal == "metrics"
        self._lock = threading.Lock()
        self._pool: urllib3.PoolManager | None = None
        self._closed = False
        self._json = settings.protocol == HTTP_JSON
        content_type = "application/json" if self._json else "application/x-protobuf"
        headers = {"content-type": content_type, "user-agent": USER_AGENT}
        headers.update(settings.headers)
        if settings.compression == "gzip":
            headers["content-encoding"] = "gzip"
        self._headers: Mapping[str, str] = headers
        self.where = f"OTLP/HTTP endpoint {redact_url(settings.endpoint)}"

    def _connect(self) -> urllib3.PoolManager | str:
        """The pool, or why it cannot be made (an unreadable certificate file)."""
        with self._lock:
            if self._closed:
                return "the backend is shut down"
            if self._pool is None:
                s = self._settings
                for key in ("certificate", "client_key", "client_certificate"):
                    path = getattr(s, key)
                    if path is not None:
                        try:
                            with open(path, "rb"):
                                pass
                        except OSError as exc:
                            return (
                                f"cannot read {s.describe(key)} {path!r}: "
                                f"{exc.strerror or exc}; point it at a PEM file"
                            )
                self._pool = urllib3.PoolManager(
                    num_pools=2,
                    maxsize=4,
                    retries=False,
                    ca_certs=s.certificate,
                    cert_file=s.client_certificate,
                    key_file=s.client_key,
                )
            return self._pool

    def send(self, spans: Sequence[Any], timeout: float) -> ExportResult:
        """POST one batch within ``timeout`` seconds; never raises for export failures.
        ``spans`` are ``ReadableSpan``s, or ``LogRecordData`` for a logs transport."""
        if self._metrics:
            from ._metrics import encode_metrics, encode_metrics_json

            body = (
                encode_metrics_json(spans)
                if self._json
                else encode_metrics(spans).SerializeToString()
            )
        elif self._logs:
            from ._logs import encode_logs, encode_logs_json

            body = encode_logs_json(spans) if self._json else encode_logs(spans).SerializeToString()
        else:
            body = encode_json(spans) if self._json else encode_request(spans).SerializeToString()
        if self._settings.compression == "gzip":
            body = gzip.compress(body, compresslevel=6)
        pool = self._connect()
        if isinstance(pool, str):
            return ExportResult.permanent(f"{self.where}: {pool}")
        redact = self._settings.redact
        try:
            response = pool.request(
                "POST",
                self._settings.endpoint,
                body=body,
                headers=dict(self._headers),
                timeout=urllib3.Timeout(total=timeout),
                retries=False,
                redirect=False,
            )
        except NewConnectionError as exc:
            # Refused, or the name does not resolve (NameResolutionError is one): known
            # at once, given only the pipeline's short connect budget.
            return ExportResult.retryable(
                redact(f"{self.where} is unreachable: {_describe(exc)}"), unreachable=True
            )
        except Urllib3Timeout:
            return ExportResult.retryable(
                f"{self.where}: no answer within {timeout:g} s (OTEL_EXPORTER_OTLP_TIMEOUT)"
            )
        except SSLError as exc:
            return ExportResult.permanent(
                redact(
                    f"{self.where}: TLS failed ({exc}); check OTEL_EXPORTER_OTLP_CERTIFICATE "
                    "or use http:// for a plaintext collector"
                )
            )
        except ProtocolError as exc:
            return ExportResult.retryable(
                redact(f"{self.where}: connection lost ({_describe(exc)})")
            )
        except LocationParseError as exc:
            return ExportResult.permanent(redact(f"{self.where}: invalid URL ({exc})"))
        except HTTPError as exc:
            return ExportResult.retryable(redact(f"{self.where}: {type(exc).__name__}: {exc}"))
        return self._result(response, len(spans))

    def _result(self, response: urllib3.BaseHTTPResponse, count: int) -> ExportResult:
        status = response.status
        content_type = response.headers.get("content-type", "")
        data = response.data or b""
        redact = self._settings.redact
        if 200 <= status < 300:
            if data and "json" in content_type:
                refused, why = _rejected_json(data)
                if refused:
                    what = items(logs=self._logs, metrics=self._metrics)
                    return ExportResult.permanent(
                        redact(
                            f"{self.where} accepted the request but rejected {refused} of "
                            f"{count} {what}: {why or 'no reason given'}"
                        )
                    )
            elif data and "protobuf" in content_type:
                answer: Any = ExportTraceServiceResponse()
                if self._metrics:
                    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
                        ExportMetricsServiceResponse,
                    )

                    answer = ExportMetricsServiceResponse()
                elif self._logs:
                    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
                        ExportLogsServiceResponse,
                    )

                    answer = ExportLogsServiceResponse()
                try:
                    answer.ParseFromString(data)
                except DecodeError:  # a 2xx with an odd body is still a success
                    return ExportResult.success()
                partial = answer.partial_success
                refused = rejected(partial, logs=self._logs, metrics=self._metrics)
                what = items(logs=self._logs, metrics=self._metrics)
                if refused:
                    return ExportResult.permanent(
                        redact(
                            f"{self.where} accepted the request but rejected "
                            f"{refused} of {count} {what}: "
                            f"{partial.error_message or 'no reason given'}"
                        )
                    )
            return ExportResult.success()
        reason = _status_message(content_type, data)
        message = f"{self.where} answered HTTP {status}"
        if reason:
            message += f": {reason}"
        if 300 <= status < 400:
            location = response.headers.get("location", "?")
            message += f" (a redirect to {redact_url(location)}; set the endpoint to that URL)"
        elif status in _HINTS:
            message += f" ({_HINTS[status]})"
        message = redact(message)
        if status in RETRYABLE_STATUS:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            return ExportResult.retryable(message, retry_after=retry_after)
        return ExportResult.permanent(message)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._pool is not None:
                self._pool.clear()
                self._pool = None
