"""
``ZipkinBackend``: Zipkin v2 JSON over HTTP POST, as an async aiorunner backend.

The payload comes from ``opentelemetry-exporter-zipkin-json``'s ``JsonV2Encoder`` (hex ids,
microsecond timestamps, ``localEndpoint.serviceName``, string tags, events as annotations,
``kind``), so it is what the OpenTelemetry SDK's Zipkin exporter sends, with two changes:
tags are not cut at 128 characters, and a batch mixing services (spans from a script with
its own ``service.name``) keeps each span's own service.

Encoding and the POST run in a worker thread; the answer is mapped to a result (202 is
success, 429/502/503/504 and connection failures are retryable with ``Retry-After``,
other statuses permanent). No retries here: the pipeline owns them.
"""

from __future__ import annotations

import math
import threading
import time
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import urllib3
from opentelemetry import context as otel_context
from opentelemetry.exporter.zipkin.json.v2 import JsonV2Encoder
from opentelemetry.exporter.zipkin.node_endpoint import NodeEndpoint
from urllib3.exceptions import HTTPError, NewConnectionError, ProtocolError, SSLError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from aiorunner.backend import ExportResult

from ._settings import ZipkinSettings, redact_url

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import ReadableSpan
    from typing_extensions import Self

__all__ = ["ZipkinBackend"]

RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
_GRACE = 0.5
_USER_AGENT = "aiorunner-zipkin/0.1.0"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP-date)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        return max(when.timestamp() - time.time(), 0.0)
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return text.split(">: ", 1)[1] if text.startswith("<") and ">: " in text else text


class ZipkinBackend:
    """Sends spans to a Zipkin v2 collector (``POST /api/v2/spans``)."""

    def __init__(self, name: str, settings: ZipkinSettings) -> None:
        self.name = name
        self.settings = settings
        self._encoder = JsonV2Encoder(max_tag_value_length=0)  # 0: never cut tags
        self._lock = threading.Lock()
        self._pool: urllib3.PoolManager | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._closed = False
        self._abandoned = 0
        self.where = f"Zipkin endpoint {redact_url(settings.endpoint)}"
        #: Where it sends, without credentials: names this backend's spool.
        self.destination = f"zipkin {redact_url(settings.endpoint)}"
        #: OTEL_EXPORTER_ZIPKIN_TIMEOUT bounds the export of a batch, retries included.
        self.export_timeout = settings.timeout

    def __repr__(self) -> str:
        return f"ZipkinBackend(name={self.name!r}, endpoint={redact_url(self.settings.endpoint)!r})"

    @property
    def abandoned_threads(self) -> int:
        """Worker threads left running because an export was cancelled or timed out."""
        return self._abandoned

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        """The Zipkin v2 JSON list for ``spans``, each with its own service name."""
        groups: dict[str, list[ReadableSpan]] = {}
        for span in spans:
            service = span.resource.attributes.get("service.name") if span.resource else None
            groups.setdefault(str(service or self.settings.service_name), []).append(span)
        parts = []
        for service, members in groups.items():
            endpoint = NodeEndpoint()
            endpoint.service_name = service
            encoded = self._encoder.serialize(members, endpoint)  # type: ignore[arg-type]
            inner = encoded.strip()[1:-1].strip()
            if inner:
                parts.append(inner)
        return ("[" + ",".join(parts) + "]").encode()

    def _send(
        self, spans: Sequence[ReadableSpan], timeout: float, started: list[bool]
    ) -> ExportResult:
        started.append(True)
        try:
            body = self.encode(spans)
        except Exception as exc:  # noqa: BLE001 - the export path reports, never raises
            return ExportResult.permanent(f"{self.name}: cannot encode spans: {exc!r}")
        with self._lock:
            if self._closed:
                return ExportResult.permanent(f"{self.name}: the backend is shut down")
            if self._pool is None:
                self._pool = urllib3.PoolManager(num_pools=2, maxsize=4, retries=False)
            pool = self._pool
        try:
            response = pool.request(
                "POST",
                self.settings.endpoint,
                body=body,
                headers={"content-type": "application/json", "user-agent": _USER_AGENT},
                timeout=urllib3.Timeout(total=timeout),
                retries=False,
                redirect=False,
            )
        except NewConnectionError as exc:
            return ExportResult.retryable(
                f"{self.where} is unreachable: {_describe(exc)}", unreachable=True
            )
        except Urllib3Timeout:
            return ExportResult.retryable(
                f"{self.where}: no answer within {timeout:g} s (OTEL_EXPORTER_ZIPKIN_TIMEOUT)"
            )
        except SSLError as exc:
            return ExportResult.permanent(f"{self.where}: TLS failed ({exc})")
        except ProtocolError as exc:
            return ExportResult.retryable(f"{self.where}: connection lost ({_describe(exc)})")
        except HTTPError as exc:
            return ExportResult.retryable(f"{self.where}: {type(exc).__name__}: {exc}")
        status = response.status
        if 200 <= status < 300:
            return ExportResult.success()
        text = " ".join((response.data or b"")[:300].decode("utf-8", "replace").split())
        message = f"{self.where} answered HTTP {status}" + (f": {text}" if text else "")
        if status == 404:
            message += " (check the path: Zipkin takes v2 spans at /api/v2/spans)"
        if status in RETRYABLE_STATUS:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            return ExportResult.retryable(message, retry_after=retry_after)
        return ExportResult.permanent(message)

    async def export(self, spans: Sequence[ReadableSpan], *, timeout: float) -> ExportResult:
        """Send one batch within ``timeout`` (and the Zipkin timeout); report, never raise."""
        if self._closed:
            return ExportResult.permanent(f"{self.name}: the backend is shut down")
        if not spans:
            return ExportResult.success()
        limit = min(timeout, self.settings.timeout)
        if not limit > 0:
            return ExportResult.retryable(f"{self.name}: no time left to export")
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(4)
        token = otel_context.attach(
            otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True)
        )
        started: list[bool] = []
        result: ExportResult | None = None
        try:
            with anyio.move_on_after(limit + _GRACE):
                result = await anyio.to_thread.run_sync(
                    self._send, spans, limit, started, abandon_on_cancel=True, limiter=self._limiter
                )
        finally:
            otel_context.detach(token)
            if result is None and started:
                self._abandoned += 1
        if result is None:
            return ExportResult.retryable(
                f"{self.where}: no answer within {limit:g} s (OTEL_EXPORTER_ZIPKIN_TIMEOUT)"
            )
        return result

    async def force_flush(self, *, timeout: float) -> bool:
        """Nothing is buffered here."""
        return True

    async def aclose(self) -> None:
        """:meth:`shutdown` within 5 seconds; what ``async with`` calls on exit."""
        await self.shutdown(timeout=5.0)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def shutdown(self, *, timeout: float) -> None:
        """Close the connection pool; later exports are refused."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            with anyio.move_on_after(timeout, shield=True):
                await anyio.to_thread.run_sync(pool.clear, abandon_on_cancel=True)
