"""
``OtlpBackend``: an async ``aiorunner.backend.Backend`` over the blocking OTLP transports.

The blocking call (encode + send) runs in a worker thread through ``anyio.to_thread`` with
``abandon_on_cancel=True``: when the pipeline's deadline cancels an export, the caller is
freed at once and the thread finishes on its own, bounded by the transport's timeout. Such
abandoned threads are counted in :meth:`OtlpBackend.statistics`. A per-backend limiter
keeps one slow collector from taking every worker thread of the process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.to_thread
from opentelemetry import context as otel_context

from aiorunner.backend import ExportResult

from ._settings import GRPC, OtlpSettings, redact_url

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import ReadableSpan
    from typing_extensions import Self

    from aiorunner.backend import LogRecordData, MetricPointData

__all__ = ["OtlpBackend", "OtlpStatistics"]

#: Worker threads one backend may use at once.
THREADS_PER_BACKEND = 4
#: How long past its own timeout a transport call may run before the caller gives up.
_GRACE = 0.5


class _Transport(Protocol):
    where: str

    def send(self, spans: Sequence[Any], timeout: float) -> ExportResult: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class OtlpStatistics:
    """What one OTLP backend did so far."""

    #: ``export`` calls that sent something.
    exports: int
    #: Calls that ended in success, and the spans they carried.
    succeeded: int
    spans_exported: int
    #: Calls that ended in a retryable or permanent failure.
    failed: int
    #: Worker threads left running because the caller was cancelled or timed out.
    abandoned_threads: int
    #: Log records sent successfully (``export_logs``).
    log_records_exported: int = 0
    #: Metric points sent successfully (``export_metrics``).
    metric_points_exported: int = 0


def _make_transport(settings: OtlpSettings, signal: str = "traces") -> _Transport:
    # Imported here: ``import aiorunner_otlp`` must not pay for grpc when HTTP is used.
    if settings.protocol == GRPC:
        from ._grpc import GrpcTransport

        return GrpcTransport(settings, signal=signal)
    from ._http import HttpTransport

    return HttpTransport(settings, signal=signal)


class OtlpBackend:
    """
    Sends spans (and, with ``logs_settings``, log records) over OTLP (gRPC or HTTP) and
    says how each export went.

    Build one with :func:`aiorunner_otlp.create_otlp_backend` (or an entry point); the
    constructor takes already resolved :class:`OtlpSettings` (the logs' are resolved with
    ``signal="logs"``: ``OTEL_EXPORTER_OTLP_LOGS_*`` and ``/v1/logs``).
    """

    def __init__(
        self,
        name: str,
        settings: OtlpSettings,
        logs_settings: OtlpSettings | None = None,
        metrics_settings: OtlpSettings | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        #: OTEL_EXPORTER_OTLP_TIMEOUT bounds the whole export of a batch, retries
        #: included (the specification's "max waiting time for a batch export"): the
        #: pipeline reads this (aiorunner.backend, optional attributes).
        self.export_timeout = settings.timeout
        #: Where it sends, without credentials: names this backend's spool.
        self.destination = f"{settings.protocol} {redact_url(settings.endpoint)}"
        self.logs_settings = logs_settings
        self._transport = _make_transport(settings)
        self._logs_transport = (
            _make_transport(logs_settings, "logs") if logs_settings is not None else None
        )
        if self._logs_transport is None:
            # No log records for this backend: the pipeline then sends it none.
            self.export_logs = None  # type: ignore[assignment,method-assign]
        self.metrics_settings = metrics_settings
        self._metrics_transport = (
            _make_transport(metrics_settings, "metrics") if metrics_settings is not None else None
        )
        if self._metrics_transport is None:
            self.export_metrics = None  # type: ignore[assignment,method-assign]
        self._metrics_limiter: anyio.CapacityLimiter | None = None
        self._points = 0
        self._limiter: anyio.CapacityLimiter | None = None
        # The logs pipeline runs on an event loop of its own: a limiter of its own.
        self._logs_limiter: anyio.CapacityLimiter | None = None
        self._closed = False
        self._exports = self._succeeded = self._spans = self._failed = self._abandoned = 0
        self._records = 0

    def __repr__(self) -> str:
        return (
            f"OtlpBackend(name={self.name!r}, protocol={self.settings.protocol!r}, "
            f"endpoint={redact_url(self.settings.endpoint)!r})"
        )

    def statistics(self) -> OtlpStatistics:
        return OtlpStatistics(
            exports=self._exports,
            succeeded=self._succeeded,
            spans_exported=self._spans,
            failed=self._failed,
            abandoned_threads=self._abandoned,
            log_records_exported=self._records,
            metric_points_exported=self._points,
        )

    async def export(self, spans: Sequence[ReadableSpan], *, timeout: float) -> ExportResult:
        """
        Send one batch, waiting at most ``timeout`` seconds (and at most the configured
        OTLP timeout); return how it went instead of raising.
        """
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(THREADS_PER_BACKEND)
        result = await self._export(self._transport, self.settings, self._limiter, spans, timeout)
        if result.ok and spans:
            self._spans += len(spans)
        return result

    async def export_logs(
        self, records: Sequence[LogRecordData], *, timeout: float
    ) -> ExportResult:
        """Send one batch of log records (``ExportLogsServiceRequest``), as :meth:`export`
        does spans."""
        transport, settings = self._logs_transport, self.logs_settings
        if transport is None or settings is None:
            return ExportResult.permanent(f"{self.name}: no logs endpoint configured")
        if self._logs_limiter is None:
            self._logs_limiter = anyio.CapacityLimiter(THREADS_PER_BACKEND)
        result = await self._export(transport, settings, self._logs_limiter, records, timeout)
        if result.ok and records:
            self._records += len(records)
        return result

    async def export_metrics(
        self, points: Sequence[MetricPointData], *, timeout: float
    ) -> ExportResult:
        """Send one batch of metric points (``ExportMetricsServiceRequest``), as
        :meth:`export` does spans."""
        transport, settings = self._metrics_transport, self.metrics_settings
        if transport is None or settings is None:
            return ExportResult.permanent(f"{self.name}: no metrics endpoint configured")
        if self._metrics_limiter is None:
            self._metrics_limiter = anyio.CapacityLimiter(THREADS_PER_BACKEND)
        result = await self._export(transport, settings, self._metrics_limiter, points, timeout)
        if result.ok and points:
            self._points += len(points)
        return result

    async def _export(
        self,
        transport: _Transport,
        settings: OtlpSettings,
        limiter: anyio.CapacityLimiter,
        spans: Sequence[Any],
        timeout: float,
    ) -> ExportResult:
        if self._closed:
            return ExportResult.permanent(f"{self.name}: the backend is shut down")
        if not spans:
            return ExportResult.success()
        limit = min(timeout, settings.timeout)
        if not limit > 0:
            return ExportResult.retryable(f"{self.name}: no time left to export")
        self._exports += 1
        # Our own HTTP/gRPC calls must not be traced by instrumented libraries (the worker
        # thread runs in a copy of this context).
        token = otel_context.attach(
            otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True)
        )
        started: list[bool] = []
        result: ExportResult | None = None
        try:
            with anyio.move_on_after(limit + _GRACE):
                result = await anyio.to_thread.run_sync(
                    self._send,
                    transport,
                    spans,
                    limit,
                    started,
                    abandon_on_cancel=True,
                    limiter=limiter,
                )
        finally:
            otel_context.detach(token)
            if result is None:
                self._failed += 1
                if started:  # the thread runs on, bounded by the transport's timeout
                    self._abandoned += 1
        if result is None:
            return ExportResult.retryable(
                f"{transport.where}: no answer within {limit:g} s (OTEL_EXPORTER_OTLP_TIMEOUT)"
            )
        if result.ok:
            self._succeeded += 1
        else:
            self._failed += 1
        return result

    def _send(
        self, transport: _Transport, spans: Sequence[Any], timeout: float, started: list[bool]
    ) -> ExportResult:
        started.append(True)  # list.append is atomic: the caller may read it from its thread
        try:
            return transport.send(spans, timeout)
        except Exception as exc:  # noqa: BLE001 - the export path reports, never raises
            return ExportResult.permanent(
                self.settings.redact(f"{self.name}: {type(exc).__name__}: {exc}")
            )

    async def force_flush(self, *, timeout: float) -> bool:
        """Nothing is buffered here: every export is sent when called."""
        return True

    async def aclose(self) -> None:
        """:meth:`shutdown` within 5 seconds; what ``async with`` calls on exit."""
        await self.shutdown(timeout=5.0)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def shutdown(self, *, timeout: float) -> None:
        """Close connections (bounded by ``timeout``, even when cancelled)."""
        if self._closed:
            return
        self._closed = True
        with anyio.move_on_after(timeout, shield=True):
            await anyio.to_thread.run_sync(self._transport.close, abandon_on_cancel=True)
            if self._logs_transport is not None:
                await anyio.to_thread.run_sync(self._logs_transport.close, abandon_on_cancel=True)
            if self._metrics_transport is not None:
                await anyio.to_thread.run_sync(
                    self._metrics_transport.close, abandon_on_cancel=True
                )
