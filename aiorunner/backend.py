"""
The plugin interface: the only part of aiorunner a backend distribution imports.

A backend is found by name through the entry point group ``aiorunner.backends``::

    [project.entry-points."aiorunner.backends"]
    mybackend = "my_package:create_backend"

The factory takes the resolved :class:`TracingConfig` and returns either an async
:class:`Backend` (awaited on the pipeline's event loop) or any synchronous OpenTelemetry
``SpanExporter`` (run in a worker thread). It should raise :class:`ConfigError` with a
message naming the missing variable or bad value; the registry reports it with the
backend's name and distribution. A bad value of an ``OTEL_*`` variable it reads is the
exception: the specification asks to warn and use the default, so report it with
``report_env_problem(EnvProblem(variable, value, reason, instead, fix))`` (one WARNING
per process, shown by ``aiorunner doctor``) and carry on.

``export`` reports what happened with an :class:`ExportResult` instead of raising: the
pipeline retries ``retryable`` results with backoff inside the export timeout, then
appends the batch to the backend's on-disk spool (sent first by the next session that
exports there); it reports ``permanent`` ones once and never spools them, and isolates a
backend that raises anyway from the others. A retryable result that says
``unreachable=True`` (connection refused, name not resolved: known in milliseconds) is
retried only within the short connect budget (``AIORUNNER_CONNECT_BUDGET``, about 1 s),
then spooled. Backends written before ``unreachable`` existed keep working: their
retryable results are retried until the deadline, then spooled.

Optional attributes a backend may set (read with ``getattr``, none is required):

- ``export_timeout`` (seconds): its own bound on the export of one batch, retries
  included, when shorter than the pipeline's (``aiorunner-otlp`` sets
  ``OTEL_EXPORTER_OTLP_TIMEOUT`` here);
- ``destination`` (str, no credentials): where it sends; the spool is kept per backend
  name and destination, so two endpoints never mix;
- ``spool = False``: never spool (a local file or the terminal: spooling to disk what
  the disk refused helps nobody).

Logs (a script's output, one :class:`LogRecordData` per line) are an optional verb::

    async def export_logs(self, records: Sequence[LogRecordData], *, timeout: float)
        -> ExportResult

A backend that defines it gets every run's log records through a second pipeline with
the same batching, retries and counts; one without it keeps working and gets no logs.

Metrics (each run's resource use, the runs' durations and outcomes, export health; one
:class:`MetricPointData` per data point) are another optional verb, through a third
pipeline::

    async def export_metrics(self, points: Sequence[MetricPointData], *, timeout: float)
        -> ExportResult
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Union, runtime_checkable

from ._config import EnvProblem, TracingConfig, report_env_problem
from ._exceptions import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = [
    "Backend",
    "BackendFactory",
    "ConfigError",
    "EnvProblem",
    "ExemplarData",
    "ExportResult",
    "ExportStatus",
    "LogBackend",
    "LogRecordData",
    "MetricBackend",
    "MetricPointData",
    "TracingConfig",
    "report_env_problem",
]


class ExportStatus(enum.Enum):
    """How one export attempt ended."""

    SUCCESS = "success"
    #: Worth trying again (unavailable, timeout, HTTP 429/502/503/504).
    RETRYABLE = "retryable"
    #: Trying again will not help (bad auth, HTTP 400, misconfiguration).
    PERMANENT = "permanent"


@dataclass(frozen=True)
class ExportResult:
    """The outcome of one ``Backend.export`` call."""

    status: ExportStatus
    #: A human sentence saying what went wrong (never containing credentials).
    error: str | None = None
    #: Seconds the server asked us to wait (HTTP Retry-After, gRPC RetryInfo).
    retry_after: float | None = None
    #: A retryable failure to reach the server at all (connection refused, DNS name
    #: not resolved): retried within the connect budget only, then spooled.
    unreachable: bool = False

    @classmethod
    def success(cls) -> ExportResult:
        return _SUCCESS

    @classmethod
    def retryable(
        cls, error: str, *, retry_after: float | None = None, unreachable: bool = False
    ) -> ExportResult:
        """Worth trying again; ``unreachable=True`` when the server could not be reached
        at all (refused, DNS), which the pipeline gives only a short connect budget."""
        return cls(ExportStatus.RETRYABLE, error, retry_after, unreachable)

    @classmethod
    def permanent(cls, error: str) -> ExportResult:
        """Trying again will not help (HTTP 400, 401/403, gRPC INVALID_ARGUMENT,
        UNAUTHENTICATED, PERMISSION_DENIED): reported, never spooled."""
        return cls(ExportStatus.PERMANENT, error)

    @property
    def ok(self) -> bool:
        return self.status is ExportStatus.SUCCESS


_SUCCESS = ExportResult(ExportStatus.SUCCESS)


@runtime_checkable
class Backend(Protocol):
    """
    An async-native exporter: OpenTelemetry's ``SpanExporter`` verbs, made async.

    Implementations must not block the event loop (use ``anyio.to_thread`` for blocking
    work) and should honour ``timeout`` (seconds); the pipeline enforces it anyway by
    cancelling the call.

    Optional, not part of the protocol: ``async def on_span_start(self, span) -> None``.
    A backend that defines it is handed each root ``ScriptRunner`` span as soon as it
    starts (a copy, a ``ReadableSpan`` with no end time), before that span's end is
    exported, so that a run can be shown as running. It is not a span to export: the
    span itself comes later, once, with its end. A backend may also set
    ``span_start_delay`` (seconds): the start is then handed over only if the span is
    still open after that long (the ``jsonl`` backend enters runs in its live-runs view
    this way, so that short runs cost it nothing). Errors and timeouts there are logged,
    never raised.

    Optional too: ``max_schedule_delay`` (seconds) caps how long ended spans wait for
    their batch (``OTEL_BSP_SCHEDULE_DELAY``); ``jsonl`` sets 0.5, so a span is on disk
    within about half a second of its end.
    """

    #: The name it was registered under, used in reports and errors.
    name: str

    async def export(self, spans: Sequence[ReadableSpan], *, timeout: float) -> ExportResult:
        """Send one batch; return how it went rather than raising."""
        ...

    async def force_flush(self, *, timeout: float) -> bool:
        """Push out anything the backend buffers itself; True when done in time."""
        ...

    async def shutdown(self, *, timeout: float) -> None:
        """Release connections and files; called once, after the last export."""
        ...


#: The instrumentation scope of the records aiorunner makes from a script's output.
LOG_SCOPE = "aiorunner.output"


@dataclass(slots=True)
class LogRecordData:
    """
    One log record, as backends receive it (the logs data model's fields aiorunner fills).

    Why plain data and not the SDK's ``LogRecord``: a run makes one record per output
    line, up to 100,000 of them, and the SDK's record (a ``LogData`` wrapper, a
    ``BoundedAttributes`` per record, the ``LoggerProvider`` machinery) costs several
    times what these slots do; plain data also pickles (records made on a Dask worker
    come home as they are) and is what the jsonl file and the spool hold anyway.
    """

    #: When the line was read (ns since the epoch).
    time_unix_nano: int
    #: When aiorunner observed it: the same moment for output lines.
    observed_time_unix_nano: int
    #: SeverityNumber of the logs data model (9 = INFO, 13 = WARN, 17 = ERROR, ...).
    severity_number: int
    severity_text: str
    body: str
    attributes: dict[str, Any] = field(default_factory=dict)
    trace_id: int = 0
    span_id: int = 0
    trace_flags: int = 0
    #: The resource of the run's spans.
    resource: Resource | None = None
    #: Name of the instrumentation scope (``aiorunner.output``, or a script's logger).
    scope: str = LOG_SCOPE


@runtime_checkable
class LogBackend(Protocol):
    """A :class:`Backend` that also takes log records (the optional ``export_logs``)."""

    name: str

    async def export_logs(
        self, records: Sequence[LogRecordData], *, timeout: float
    ) -> ExportResult:
        """Send one batch of log records; return how it went rather than raising."""
        ...


#: The instrumentation scope of aiorunner's metrics.
METRIC_SCOPE = "aiorunner"

#: ``MetricPointData.kind``: a Sum (Counter, UpDownCounter), a Gauge, a Histogram.
SUM, GAUGE, HISTOGRAM = "sum", "gauge", "histogram"
#: ``MetricPointData.temporality`` (OTLP's AggregationTemporality numbers).
DELTA, CUMULATIVE = 1, 2


@dataclass(slots=True, frozen=True)
class ExemplarData:
    """A measurement kept with a histogram point, linking it to the trace it came from
    (a slow bucket -> the run's trace)."""

    value: float
    time_unix_nano: int
    trace_id: int = 0
    span_id: int = 0
    filtered_attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class MetricPointData:
    """
    One metric data point, as backends receive it: the point and its metric's identity
    (name, unit, kind, temporality), flattened so a batch is a plain list.

    Why plain data and not the SDK's ``MetricsData``: the points come from the monitor's
    samples, already aggregated per run (no ``MeterProvider``, views or readers to pay
    for each run); plain data pickles (a Dask worker's points come home as they are) and
    is what the jsonl file and the spool hold (one ``ExportMetricsServiceRequest`` a
    line). A Sum or Gauge point has ``value`` (an ``int`` is sent as an integer, a
    ``float`` as a double); a Histogram point has ``count``, ``total``,
    ``bucket_counts``, ``explicit_bounds``, ``minimum``, ``maximum`` and exemplars.
    """

    name: str
    unit: str
    kind: str  # SUM, GAUGE or HISTOGRAM
    time_unix_nano: int
    start_time_unix_nano: int = 0
    value: float | int = 0
    attributes: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    #: Sums: monotonic (a Counter) or not (an UpDownCounter).
    monotonic: bool = False
    #: Sums and histograms: DELTA or CUMULATIVE; 0 for gauges.
    temporality: int = 0
    count: int = 0
    total: float = 0.0
    bucket_counts: tuple[int, ...] = ()
    explicit_bounds: tuple[float, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    exemplars: tuple[ExemplarData, ...] = ()
    #: The run whose values these are (the pipeline's per-run accounting: a run's
    #: ``upload_traces`` waits for its points); 0 for points of no run. Not exported.
    trace_id: int = 0
    #: The resource of the run's spans.
    resource: Resource | None = None
    scope: str = METRIC_SCOPE


@runtime_checkable
class MetricBackend(Protocol):
    """A :class:`Backend` that also takes metric points (the optional
    ``export_metrics``)."""

    name: str

    async def export_metrics(
        self, points: Sequence[MetricPointData], *, timeout: float
    ) -> ExportResult:
        """Send one batch of metric points; return how it went rather than raising."""
        ...


#: What an ``aiorunner.backends`` entry point refers to.
BackendFactory = Callable[[TracingConfig], Union[Backend, "SpanExporter"]]
