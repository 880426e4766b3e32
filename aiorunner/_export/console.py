"""
The ``console`` backend: spans printed readably to stderr, one line each (plus one per
event), for a quick look while developing (``OTEL_TRACES_EXPORTER=console``).

Printing happens in a worker thread: a terminal or a pipe that nobody reads can block a
write, and the export loop must keep serving the other backends.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TextIO

import anyio
import anyio.to_thread

from ..backend import ExportResult

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import ReadableSpan

    from .._config import TracingConfig
    from ..backend import LogRecordData, MetricPointData

__all__ = ["ConsoleBackend", "create_backend", "format_log", "format_metric", "format_span"]

_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value if value and " " not in value else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    return str(value)


def _attributes(attributes: Any) -> str:
    if not attributes:
        return ""
    return " ".join(f"{key}={_value(value)}" for key, value in attributes.items())


def format_span(span: ReadableSpan) -> str:
    """``name  duration  status  trace/span/parent ids  attributes``, then its events."""
    context = span.context
    trace_id = format(context.trace_id, "032x") if context else "-"
    span_id = format(context.span_id, "016x") if context else "-"
    parent = format(span.parent.span_id, "016x") if span.parent else "-"
    start = span.start_time or 0
    duration = ((span.end_time or start) - start) / 1e6
    status = _STATUS.get(span.status.status_code.value, "?")
    if span.status.description:
        status += f" ({span.status.description})"
    line = (
        f"[aiorunner] {span.name}  {duration:.3f}ms  {status}  "
        f"trace={trace_id} span={span_id} parent={parent}"
    )
    attributes = _attributes(span.attributes)
    if attributes:
        line += f"  {attributes}"
    lines = [line]
    for event in span.events:
        offset = (event.timestamp - start) / 1e6
        text = f"    event {event.name} +{offset:.3f}ms"
        event_attributes = _attributes(event.attributes)
        if event_attributes:
            text += f"  {event_attributes}"
        lines.append(text)
    return "\n".join(lines)


def format_log(record: LogRecordData) -> str:
    """``time  severity  trace/span ids  body  attributes``: one line (a multi-line body,
    a traceback, continues indented)."""
    import time

    seconds, nanos = divmod(record.time_unix_nano, 1_000_000_000)
    stamp = time.strftime("%H:%M:%S", time.localtime(seconds)) + f".{nanos // 1_000_000:03d}"
    body = record.body.replace("\n", "\n    ")
    line = (
        f"[aiorunner] log {stamp}  {record.severity_text or '-':<5}  "
        f"trace={record.trace_id:032x} span={record.span_id:016x}  {body}"
    )
    attributes = _attributes(record.attributes)
    if attributes:
        line += f"  {attributes}"
    return line


def format_metric(point: MetricPointData) -> str:
    """``name{attributes} value unit``: one line per point (a histogram shows its count,
    sum and the trace of its exemplar)."""
    attributes = ",".join(f"{k}={v}" for k, v in point.attributes.items())
    if point.kind == "histogram":
        value = f"count={point.count} sum={point.total:g}"
        if point.exemplars:
            value += f" exemplar.trace={point.exemplars[0].trace_id:032x}"
    else:
        value = f"{point.value:g}" if isinstance(point.value, float) else str(point.value)
    return f"[aiorunner] metric {point.name}{{{attributes}}} {value} {point.unit}"


class ConsoleBackend:
    """Prints every span (and log record) to ``stream`` (default: the current
    ``sys.stderr``)."""

    name = "console"
    #: Never spooled: the terminal is there now or not at all.
    spool = False

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._limiter = anyio.CapacityLimiter(1)
        # The logs pipeline runs on a loop of its own: a limiter of its own.
        self._logs_limiter = anyio.CapacityLimiter(1)
        self._metrics_limiter = anyio.CapacityLimiter(1)

    def _print(self, text: str) -> None:
        stream = self._stream or sys.stderr
        stream.write(text)
        stream.flush()

    async def _write(self, text: str, limiter: anyio.CapacityLimiter, what: str) -> ExportResult:
        """Print ``text`` from a worker thread (one at a time per signal)."""
        try:
            await anyio.to_thread.run_sync(
                self._print, text, abandon_on_cancel=True, limiter=limiter
            )
        except (OSError, ValueError) as exc:  # closed or broken stream
            return ExportResult.permanent(f"cannot print {what}: {exc}")
        return ExportResult.success()

    async def export(self, spans: Sequence[ReadableSpan], *, timeout: float) -> ExportResult:
        text = "".join(format_span(span) + "\n" for span in spans)
        return await self._write(text, self._limiter, "spans")

    async def export_logs(
        self, records: Sequence[LogRecordData], *, timeout: float
    ) -> ExportResult:
        text = "".join(format_log(record) + "\n" for record in records)
        return await self._write(text, self._logs_limiter, "log records")

    async def export_metrics(
        self, points: Sequence[MetricPointData], *, timeout: float
    ) -> ExportResult:
        text = "".join(format_metric(point) + "\n" for point in points)
        return await self._write(text, self._metrics_limiter, "metrics")

    async def force_flush(self, *, timeout: float) -> bool:
        return True

    async def shutdown(self, *, timeout: float) -> None:
        return None


def create_backend(config: TracingConfig) -> ConsoleBackend:
    """Entry point ``console``."""
    return ConsoleBackend()
