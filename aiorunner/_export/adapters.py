"""
One async face for every kind of backend the pipeline drives.

A backend may be an async :class:`~aiorunner.backend.Backend` (awaited on the export loop),
a synchronous OpenTelemetry ``SpanExporter`` (run in a worker thread, because its
``export`` blocks on the network), or a placeholder for a plugin that failed to load (it
fails every export with the load error, so reports say what is wrong). The worker in
``_worker.py`` only ever sees :class:`BackendAdapter`.

Logs: an async backend's optional ``export_logs`` is awaited as ``export`` is; an
OpenTelemetry ``LogExporter`` (group ``opentelemetry_logs_exporter``, sync, taking the
SDK's records) runs in a worker thread, each :class:`~aiorunner.backend.LogRecordData`
converted to the SDK's ``ReadableLogRecord`` there (:func:`adapt_log_exporter`).

Metrics the same way: an async backend's optional ``export_metrics``, or an OpenTelemetry
``MetricExporter`` (group ``opentelemetry_metrics_exporter``) in a worker thread, the
points converted to the SDK's ``MetricsData`` there (:func:`adapt_metric_exporter`).
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from .._exceptions import BackendError
from ..backend import ExportResult

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import ReadableSpan

    from ..backend import LogRecordData, MetricPointData

__all__ = ["BackendAdapter", "adapt", "adapt_log_exporter", "adapt_metric_exporter", "broken"]

logger = logging.getLogger("aiorunner.export")


class BackendAdapter:
    """The async interface the export worker uses, whatever the backend is."""

    #: "async", "sync" (a SpanExporter in a worker thread) or "broken".
    kind = "async"

    def __init__(self, name: str, target: Any) -> None:
        self.name = name
        self.target = target
        #: Worker threads given up on after a timeout (a hung sync exporter).
        self.abandoned_threads = 0
        #: True once an outage of this backend was reported (one warning per outage,
        #: shared by the traces and logs pipelines' workers).
        self.outage_warned = False
        hook = getattr(target, "on_span_start", None)
        self._on_span_start = hook if inspect.iscoroutinefunction(hook) else None
        logs = getattr(target, "export_logs", None)
        self._export_logs = logs if inspect.iscoroutinefunction(logs) else None
        metrics = getattr(target, "export_metrics", None)
        self._export_metrics = metrics if inspect.iscoroutinefunction(metrics) else None

    @property
    def has_logs(self) -> bool:
        """True when the backend takes log records (the optional ``export_logs``)."""
        return self._export_logs is not None

    @property
    def has_metrics(self) -> bool:
        """True when the backend takes metric points (the optional ``export_metrics``)."""
        return self._export_metrics is not None

    @property
    def wants_span_start(self) -> bool:
        """True when the backend defines the optional ``async on_span_start(span)``."""
        return self._on_span_start is not None

    async def export(self, spans: Sequence[ReadableSpan], *, timeout: float) -> ExportResult:
        return _coerce(self.name, await self.target.export(spans, timeout=timeout))

    async def export_logs(
        self, records: Sequence[LogRecordData], *, timeout: float
    ) -> ExportResult:
        if self._export_logs is None:
            return ExportResult.permanent(f"backend {self.name!r} does not take log records")
        return _coerce(self.name, await self._export_logs(records, timeout=timeout))

    async def export_metrics(
        self, points: Sequence[MetricPointData], *, timeout: float
    ) -> ExportResult:
        if self._export_metrics is None:
            return ExportResult.permanent(f"backend {self.name!r} does not take metrics")
        return _coerce(self.name, await self._export_metrics(points, timeout=timeout))

    async def on_span_start(self, span: ReadableSpan) -> None:
        if self._on_span_start is not None:
            await self._on_span_start(span)

    async def force_flush(self, *, timeout: float) -> bool:
        method = getattr(self.target, "force_flush", None)
        if method is None:
            return True
        return bool(await method(timeout=timeout))

    async def shutdown(self, *, timeout: float) -> None:
        method = getattr(self.target, "shutdown", None)
        if method is not None:
            await method(timeout=timeout)


class _SyncExporterAdapter(BackendAdapter):
    """A synchronous OpenTelemetry ``SpanExporter``, one call at a time in a worker thread.

    The pipeline cancels a call that outlives the export deadline; the thread cannot be
    interrupted, so it is abandoned (``abandon_on_cancel=True``) and counted. Worker
    threads started from the export thread are daemon threads, so an exporter hung for
    good does not keep the interpreter from exiting.
    """

    kind = "sync"

    def __init__(self, name: str, target: Any) -> None:
        super().__init__(name, target)
        # OpenTelemetry exporters are not documented as thread safe: one call at a time.
        self._limiter = anyio.CapacityLimiter(1)

    async def _call(self, func: Any, *args: Any) -> Any:
        try:
            return await anyio.to_thread.run_sync(
                func, *args, abandon_on_cancel=True, limiter=self._limiter
            )
        except anyio.get_cancelled_exc_class():
            self.abandoned_threads += 1
            raise

    def _export_blocking(self, spans: Sequence[ReadableSpan]) -> ExportResult:
        from opentelemetry.sdk.trace.export import SpanExportResult

        outcome = self.target.export(list(spans))
        if outcome is SpanExportResult.SUCCESS:
            return ExportResult.success()
        if outcome is SpanExportResult.FAILURE:
            # OpenTelemetry's exporters log the cause themselves and do not say whether
            # it may pass: retryable, so the batch is spooled, not lost (#17). They retry
            # internally already: an infinite Retry-After spools it after this one call.
            return ExportResult.retryable(
                f"{type(self.target).__name__}.export() returned FAILURE "
                "(the exporter logs the cause under the 'opentelemetry' logger)",
                retry_after=math.inf,
            )
        return _coerce(self.name, outcome)

    async def export(self, spans: Sequence[ReadableSpan], *, timeout: float) -> ExportResult:
        result: ExportResult = await self._call(self._export_blocking, spans)
        return result

    async def force_flush(self, *, timeout: float) -> bool:
        method = getattr(self.target, "force_flush", None)
        if method is None:
            return True
        return bool(await self._call(method, max(0, int(timeout * 1000))))

    async def shutdown(self, *, timeout: float) -> None:
        method = getattr(self.target, "shutdown", None)
        if method is not None:
            await self._call(method)


def _sdk_log_records(records: Sequence[LogRecordData]) -> list[Any]:
    """The SDK's ``ReadableLogRecord`` for each record (in the worker thread)."""
    from opentelemetry._logs import LogRecord, SeverityNumber
    from opentelemetry.sdk._logs import ReadableLogRecord
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

    empty = Resource.get_empty()
    scopes: dict[str, InstrumentationScope] = {}
    out = []
    for record in records:
        context = set_span_in_context(
            NonRecordingSpan(
                SpanContext(record.trace_id, record.span_id, False, TraceFlags(record.trace_flags))
            )
        )
        scope = scopes.get(record.scope)
        if scope is None:
            scope = scopes[record.scope] = InstrumentationScope(record.scope)
        try:
            severity = SeverityNumber(record.severity_number)
        except ValueError:
            severity = SeverityNumber.UNSPECIFIED
        out.append(
            ReadableLogRecord(
                log_record=LogRecord(
                    timestamp=record.time_unix_nano,
                    observed_timestamp=record.observed_time_unix_nano,
                    context=context,
                    severity_text=record.severity_text,
                    severity_number=severity,
                    body=record.body,
                    attributes=record.attributes,
                ),
                resource=record.resource or empty,
                instrumentation_scope=scope,
            )
        )
    return out


class _SyncLogExporterAdapter(_SyncExporterAdapter):
    """An OpenTelemetry ``LogExporter`` (``opentelemetry_logs_exporter`` entry points):
    logs only, one call at a time in a worker thread, like a ``SpanExporter``."""

    def __init__(self, name: str, target: Any) -> None:
        super().__init__(name, target)
        self._export_logs = self._export_logs_threaded  # type: ignore[assignment]

    def _export_logs_blocking(self, records: Sequence[LogRecordData]) -> ExportResult:
        outcome = self.target.export(_sdk_log_records(records))
        if getattr(outcome, "name", None) == "SUCCESS":
            return ExportResult.success()
        return ExportResult.permanent(
            f"{type(self.target).__name__}.export() returned {outcome!r} "
            "(the exporter logs the cause under the 'opentelemetry' logger)"
        )

    async def _export_logs_threaded(
        self, records: Sequence[LogRecordData], *, timeout: float
    ) -> ExportResult:
        result: ExportResult = await self._call(self._export_logs_blocking, records)
        return result

    async def export(self, spans: Sequence[ReadableSpan], *, timeout: float) -> ExportResult:
        return ExportResult.permanent(f"{self.name!r} is a log exporter; it takes no spans")


def sdk_metrics_data(points: Sequence[MetricPointData]) -> Any:
    """The SDK's ``MetricsData`` holding ``points`` (for OpenTelemetry's metric
    exporters; in the worker thread)."""
    from opentelemetry.sdk.metrics import Exemplar as SdkExemplar
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        Gauge,
        Histogram,
        HistogramDataPoint,
        Metric,
        MetricsData,
        NumberDataPoint,
        ResourceMetrics,
        ScopeMetrics,
        Sum,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from ..backend import GAUGE, HISTOGRAM
    from .metrics import group

    def temporality(value: int) -> AggregationTemporality:
        return AggregationTemporality(value or AggregationTemporality.CUMULATIVE)

    resource_metrics = []
    for resource, scopes in group(points):
        scope_metrics = []
        for scope_name, metrics in scopes.items():
            out = []
            for members in metrics.values():
                first = members[0]
                data: Any
                if first.kind == HISTOGRAM:
                    data = Histogram(
                        data_points=[
                            HistogramDataPoint(
                                attributes=p.attributes,
                                start_time_unix_nano=p.start_time_unix_nano,
                                time_unix_nano=p.time_unix_nano,
                                count=p.count,
                                sum=p.total,
                                bucket_counts=list(p.bucket_counts),
                                explicit_bounds=list(p.explicit_bounds),
                                min=p.minimum if p.minimum is not None else 0.0,
                                max=p.maximum if p.maximum is not None else 0.0,
                                exemplars=[
                                    SdkExemplar(
                                        e.filtered_attributes,
                                        e.value,
                                        e.time_unix_nano,
                                        e.span_id or None,
                                        e.trace_id or None,
                                    )
                                    for e in p.exemplars
                                ],
                            )
                            for p in members
                        ],
                        aggregation_temporality=temporality(first.temporality),
                    )
                else:
                    numbers = [
                        NumberDataPoint(
                            attributes=p.attributes,
                            start_time_unix_nano=p.start_time_unix_nano,
                            time_unix_nano=p.time_unix_nano,
                            value=p.value,
                        )
                        for p in members
                    ]
                    if first.kind == GAUGE:
                        data = Gauge(data_points=numbers)
                    else:
                        data = Sum(
                            data_points=numbers,
                            aggregation_temporality=temporality(first.temporality),
                            is_monotonic=first.monotonic,
                        )
                out.append(
                    Metric(
                        name=first.name, description=first.description, unit=first.unit, data=data
                    )
                )
            scope_metrics.append(
                ScopeMetrics(scope=InstrumentationScope(scope_name), metrics=out, schema_url="")
            )
        resource_metrics.append(
            ResourceMetrics(
                resource=resource or Resource.get_empty(),
                scope_metrics=scope_metrics,
                schema_url=getattr(resource, "schema_url", "") or "",
            )
        )
    return MetricsData(resource_metrics=resource_metrics)


class _SyncMetricExporterAdapter(_SyncExporterAdapter):
    """An OpenTelemetry ``MetricExporter`` (``opentelemetry_metrics_exporter`` entry
    points): metrics only, one call at a time in a worker thread."""

    def __init__(self, name: str, target: Any) -> None:
        super().__init__(name, target)
        self._export_metrics = self._export_metrics_threaded  # type: ignore[assignment]

    def _export_metrics_blocking(self, points: Sequence[MetricPointData]) -> ExportResult:
        outcome = self.target.export(sdk_metrics_data(points))
        if getattr(outcome, "name", None) == "SUCCESS":
            return ExportResult.success()
        return ExportResult.permanent(
            f"{type(self.target).__name__}.export() returned {outcome!r} "
            "(the exporter logs the cause under the 'opentelemetry' logger)"
        )

    async def _export_metrics_threaded(
        self, points: Sequence[MetricPointData], *, timeout: float
    ) -> ExportResult:
        result: ExportResult = await self._call(self._export_metrics_blocking, points)
        return result

    async def export(self, spans: Sequence[ReadableSpan], *, timeout: float) -> ExportResult:
        return ExportResult.permanent(f"{self.name!r} is a metric exporter; it takes no spans")


class _BrokenBackend(BackendAdapter):
    """Stands in for a plugin that failed to import or construct."""

    kind = "broken"

    def __init__(self, name: str, error: str) -> None:
        super().__init__(name, None)
        self.error = error

    async def export(self, spans: Sequence[ReadableSpan], *, timeout: float) -> ExportResult:
        return ExportResult.permanent(self.error)

    async def export_logs(
        self, records: Sequence[LogRecordData], *, timeout: float
    ) -> ExportResult:
        return ExportResult.permanent(self.error)

    async def export_metrics(
        self, points: Sequence[MetricPointData], *, timeout: float
    ) -> ExportResult:
        return ExportResult.permanent(self.error)

    async def force_flush(self, *, timeout: float) -> bool:
        return False

    async def shutdown(self, *, timeout: float) -> None:
        return None


def _coerce(name: str, outcome: Any) -> ExportResult:
    """Accept what careless plugins return, but say clearly what was wrong."""
    if isinstance(outcome, ExportResult):
        return outcome
    if outcome is True:
        return ExportResult.success()
    return ExportResult.permanent(
        f"backend {name!r} returned {outcome!r} from export(); "
        "Backend.export must return an aiorunner.backend.ExportResult"
    )


def adapt(target: Any, name: str | None = None) -> BackendAdapter:
    """
    Wrap a backend object for the pipeline.

    Args:
        target: an async ``Backend`` (``async def export``), or a sync ``SpanExporter``.
        name: the name to report it under (default: its ``name`` attribute, else its
            class name in lower case).

    Raises:
        BackendError: the object has no ``export`` method.
    """
    if name is None:
        name = getattr(target, "name", None) or type(target).__name__.lower()
    export = getattr(target, "export", None)
    if export is None or not callable(export):
        raise BackendError(
            f"backend {name!r} is a {type(target).__name__}, which has no export() method; "
            "a backend factory must return an aiorunner Backend (async export) or an "
            "OpenTelemetry SpanExporter"
        )
    if inspect.iscoroutinefunction(export):
        return BackendAdapter(name, target)
    return _SyncExporterAdapter(name, target)


def adapt_log_exporter(target: Any, name: str) -> BackendAdapter:
    """Wrap an OpenTelemetry ``LogExporter`` (sync ``export(records)``) for the logs
    pipeline."""
    return _SyncLogExporterAdapter(name, target)


def adapt_metric_exporter(target: Any, name: str) -> BackendAdapter:
    """Wrap an OpenTelemetry ``MetricExporter`` (sync ``export(metrics_data)``) for the
    metrics pipeline."""
    return _SyncMetricExporterAdapter(name, target)


def broken(name: str, error: str) -> BackendAdapter:
    """An adapter that fails every export with ``error`` (a plugin that did not load)."""
    return _BrokenBackend(name, error)
