"""
``Session``: one TracerProvider and one export pipeline, shared by many runs.

A thousand runs in one process should not make a thousand pipelines: runs share a session
(``ScriptRunner`` uses :func:`get_default_session` implicitly, one per distinct resolved
configuration, drained at interpreter exit), or the caller makes one explicitly::

    async with aiorunner.Session(TracingConfig(exporter_type="otlp")) as session:
        runner = ScriptRunner("etl.py", session=session)
        result = await runner.run()

The session's ``TracerProvider`` is never installed as the global provider: aiorunner
must not change what the host application's own tracing does.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import dataclasses
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.sdk.trace import SpanLimits, TracerProvider

from .._config import (
    OTEL_LOGS_EXPORTER,
    OTEL_METRICS_EXPORTER,
    EnvProblem,
    TracingConfig,
    report_env_problem,
)
from .._exceptions import BackendError, ConfigError, UnknownBackendError
from .._result import ExportReport
from .._version import __version__
from .adapters import BackendAdapter, adapt, adapt_log_exporter, adapt_metric_exporter, broken
from .loop import ExportLoop
from .parent import ChannelBackend, parent_channel
from .pipeline import ExportPipeline
from .registry import (
    BUILTIN,
    backend_names,
    find_entry_point,
    load_backend,
    load_log_exporter,
    load_metric_exporter,
)
from .resource import make_resource
from .retry import DEFAULT_POLICY, RetryPolicy
from .run_log import RunExportLog
from .sampling import TAILBASED, make_sampler
from .statistics import PipelineStatistics

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from types import TracebackType

    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter
    from typing_extensions import Self

    from ..backend import Backend
    from .spool import Spool

__all__ = ["Session", "aget_default_session", "get_default_session"]

logger = logging.getLogger("aiorunner.export")


#: The most a metric point waits for its batch: every running script's points leave
#: within it, a run's final ones at the run's flush (no one export per point).
_METRICS_BATCH_DELAY = 0.5


def _span_limits(config: TracingConfig) -> SpanLimits:
    """Every limit given explicitly (``None`` = no limit is the SDK's ``UNSET``): the SDK
    would otherwise read the OTEL_*_LIMIT variables itself and raise on a bad one, which
    ``TracingConfig`` has already warned about and replaced by its default."""
    others = {
        key: SpanLimits.UNSET if value is None else value
        for key, value in (config.span_limits or {}).items()
    }
    return SpanLimits(
        # The general limit only seeds the others, all given here; set so it is not read.
        max_attributes=config.max_attributes,
        max_span_attributes=config.max_attributes,
        max_events=config.max_events,
        **others,
    )


def _provider(config: TracingConfig, limits: SpanLimits) -> TracerProvider:
    attributes: dict[str, Any] = dict(config.resource_attributes or {})
    # OTEL_SERVICE_NAME beats service.name in OTEL_RESOURCE_ATTRIBUTES, but our default
    # ("aiorunner") does not.
    if config.sources.get("service_name") != "default" or "service.name" not in attributes:
        attributes["service.name"] = config.service_name
    provider = TracerProvider(
        sampler=make_sampler(config),
        # What the resource detectors found (host, OS, runtime, instance id,
        # OTEL_EXPERIMENTAL_RESOURCE_DETECTORS; see resource.py), ours over it.
        resource=make_resource(attributes),
        shutdown_on_exit=False,  # the session drains itself at exit, within a deadline
        span_limits=limits,
    )
    if config.enabled and getattr(provider, "_disabled", False):
        # TracingConfig(enabled=True) given explicitly beats OTEL_SDK_DISABLED, which the
        # SDK reads on its own.
        provider._disabled = False
    return provider


def _positive_option(config: TracingConfig, key: str, default: float) -> float:
    value = config.option(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(
            f"backend_options[{key!r}]={value!r} must be a positive number of seconds"
        )
    return float(value)


def _policy(config: TracingConfig) -> RetryPolicy:
    return RetryPolicy(
        initial=_positive_option(config, "retry_initial_backoff", DEFAULT_POLICY.initial),
        maximum=_positive_option(config, "retry_max_backoff", DEFAULT_POLICY.maximum),
    )


def _load_backends(config: TracingConfig) -> list[BackendAdapter]:
    """Build the configured backends. Config mistakes raise; a broken plugin is logged
    and replaced by a stand-in that fails every export with the reason; a name from
    OTEL_TRACES_EXPORTER that is not installed is warned about and left out
    (``backend_names``)."""
    return [_load_backend(name, config) for name in backend_names(config)]


def _load_backend(name: str, config: TracingConfig) -> BackendAdapter:
    try:
        return adapt(load_backend(name, config), name)
    except BackendError as exc:
        logger.warning("%s; the other backends still export", exc)
        return broken(name, str(exc))


def destination_of(adapter: BackendAdapter) -> str:
    """Where a backend sends (its ``destination`` attribute, else what an OpenTelemetry
    exporter keeps as its endpoint, else its class): with its name, selects its spool."""
    target = adapter.target
    where = getattr(target, "destination", None)
    if isinstance(where, str) and where:
        return where
    kind = f"{type(target).__module__}.{type(target).__qualname__}"
    endpoint = getattr(target, "_endpoint", None)
    return f"{kind} {endpoint}" if isinstance(endpoint, str) else kind


def _spools(
    config: TracingConfig, adapters: Sequence[BackendAdapter], signal: str = "traces"
) -> list[Spool | None]:
    """Each backend's spool; none for backends that say ``spool = False`` (a file, the
    terminal, the parent runner), broken plugins, or when ``spool_max_bytes`` is 0."""
    size = int(config.spool_max_bytes or 0)
    root = os.fspath(config.spool_dir or ".aiorunner/spool")
    spools: list[Spool | None] = []
    for adapter in adapters:
        if size <= 0 or adapter.kind == "broken" or getattr(adapter.target, "spool", True) is False:
            spools.append(None)
        else:
            from .spool import Spool  # only when a backend spools (jsonl does not)

            spools.append(
                Spool(root, adapter.name, destination_of(adapter), max_bytes=size, signal=signal)
            )
    return spools


def _adapt_given(backends: Sequence[Any]) -> list[BackendAdapter]:
    adapters: list[BackendAdapter] = []
    seen: dict[str, int] = {}
    for backend in backends:
        if isinstance(backend, BackendAdapter):
            adapter = backend
        else:
            adapter = adapt(backend)
        count = seen.get(adapter.name, 0) + 1
        seen[adapter.name] = count
        if count > 1:
            adapter.name = f"{adapter.name}-{count}"
        adapters.append(adapter)
    return adapters


@dataclasses.dataclass(frozen=True)
class _Signal:
    """How the session finds the backends of one signal besides spans (logs, metrics)."""

    name: str  # "logs" / "metrics": TracingConfig's field and pipeline signal
    variable: str  # OTEL_LOGS_EXPORTER / OTEL_METRICS_EXPORTER
    items: str  # what the backends take, for messages ("log records")
    content: str  # what is not sent to a backend without the verb
    exporter: str  # OpenTelemetry's kind of exporter, for messages ("log exporter")
    capable: str  # the adapter's flag: "has_logs" / "has_metrics"
    load: Callable[[str], Any]  # OpenTelemetry's exporter of that name
    adapt: Callable[[Any, str], BackendAdapter]
    #: Backends already said to take none of it (once per process).
    said: set[str] = dataclasses.field(default_factory=set)

    def say_none(self, name: str) -> None:
        if name in self.said:
            return
        self.said.add(name)
        logger.warning(
            "backend %r takes no %s: %s is not sent there (its spans are); name a backend "
            "that does in %s, or turn %s off with --no-%s / TracingConfig(%s=False)",
            name,
            self.items,
            self.content,
            self.variable,
            self.name,
            self.name,
            self.name,
        )


_LOGS = _Signal(
    "logs",
    OTEL_LOGS_EXPORTER,
    "log records",
    "the scripts' output",
    "log exporter",
    "has_logs",
    load_log_exporter,
    adapt_log_exporter,
)
_METRICS = _Signal(
    "metrics",
    OTEL_METRICS_EXPORTER,
    "metrics",
    "the runs' resource use",
    "metric exporter",
    "has_metrics",
    load_metric_exporter,
    adapt_metric_exporter,
)
# Names the tests read.
_NO_LOGS_SAID = _LOGS.said
_NO_METRICS_SAID = _METRICS.said


def _load_signal_adapter(
    signal: _Signal, name: str, config: TracingConfig
) -> BackendAdapter | None:
    """One OTEL_LOGS_EXPORTER / OTEL_METRICS_EXPORTER name: an aiorunner backend with
    the signal's verb, else OpenTelemetry's exporter of that name. None (said why) when
    it cannot take the signal."""
    explicit = config.sources.get(f"{signal.name}_exporter") == "argument"
    ours = name in BUILTIN
    if not ours:
        try:
            ours = find_entry_point(name).group == "aiorunner.backends"
        except UnknownBackendError:
            ours = False
    try:
        if ours:
            adapter = adapt(load_backend(name, config), name)
            if getattr(adapter, signal.capable):
                return adapter
            signal.say_none(name)
            return None
        return signal.adapt(signal.load(name), name)
    except UnknownBackendError as exc:
        if explicit:
            raise
        report_env_problem(
            EnvProblem(
                signal.variable,
                ",".join(getattr(config, f"{signal.name}_exporter") or ()),
                f"names {name!r}, which is no installed backend or {signal.exporter}",
                "the other names",
                f"remove {name!r} from {signal.variable} ({exc})",
            )
        )
        return None
    except BackendError as exc:
        logger.warning("%s; %s go to the other backends", exc, signal.items)
        return None


def _signal_adapters(
    signal: _Signal, config: TracingConfig, span_adapters: Sequence[BackendAdapter]
) -> tuple[list[BackendAdapter], list[BackendAdapter]]:
    """The backends the signal goes to, and those of them the traces pipeline shuts down
    (shared objects: a backend named for several signals is built once)."""
    names = tuple(dict.fromkeys(getattr(config, f"{signal.name}_exporter") or ()))
    if not names:
        chosen = []
        for adapter in span_adapters:
            if getattr(adapter, signal.capable):
                chosen.append(adapter)
            elif adapter.kind != "broken":
                signal.say_none(adapter.name)
        return chosen, list(chosen)
    by_name = {a.name: a for a in span_adapters}
    adapters: list[BackendAdapter] = []
    shared: list[BackendAdapter] = []
    for name in names:
        existing = by_name.get(name)
        if existing is not None:
            if getattr(existing, signal.capable):
                adapters.append(existing)
                shared.append(existing)
            elif existing.kind != "broken":
                signal.say_none(name)
            continue
        loaded = _load_signal_adapter(signal, name, config)
        if loaded is not None:
            adapters.append(loaded)
    return adapters, shared


class Session:
    """
    One TracerProvider + one export pipeline, shared by many runs.

    Args:
        config: the tracing configuration (resolved here: argument > environment >
            default); default ``TracingConfig()``.
        backends: backend objects to use instead of ``config.exporters`` (async
            ``Backend`` or sync OpenTelemetry ``SpanExporter``); for tests and for
            applications that build their exporters themselves.

    Raises:
        ConfigError: the configuration is invalid, a backend name is unknown
            (``UnknownBackendError``), or a backend's factory rejected the configuration
            (a missing API key variable, say).

    A plugin that is installed but fails to import or construct does not raise: it is
    logged once and reported as failed (with the reason) in every ``ExportReport``, and the
    other backends work. Building a session scans entry points and imports plugins (once
    per process): from async code with a strict no-blocking policy, use
    :func:`aget_default_session` or build it in a worker thread.
    """

    def __init__(
        self,
        config: TracingConfig | None = None,
        *,
        backends: Sequence[Backend | SpanExporter] | None = None,
    ) -> None:
        if config is not None and not isinstance(config, TracingConfig):
            raise ConfigError(f"Session() takes a TracingConfig, got {config!r}")
        self.config: TracingConfig = (config or TracingConfig()).resolve()
        self.enabled: bool = bool(self.config.enabled)
        #: The provider's span limits (the runs' phase spans apply them, see _phase_span).
        self.span_limits = _span_limits(self.config)
        self.tracer_provider: TracerProvider = _provider(self.config, self.span_limits)
        self._tracers: dict[str, trace.Tracer] = {}
        #: The runs' "did not all arrive" warning, once per outage (see _export_log).
        self._run_export_log = RunExportLog()
        self._pipeline: ExportPipeline | None = None
        #: The logs pipeline (the scripts' output as log records); None when logs are
        #: off or no backend takes them.
        self.logs: ExportPipeline | None = None
        #: The metrics pipeline (each run's resource use, run-level instruments); None
        #: when metrics are off or no backend takes them.
        self.metrics: ExportPipeline | None = None
        #: Run-level instruments aggregated across this session's runs (cumulative
        #: temporality needs the running totals); made with the metrics pipeline.
        self.meter: Any = None
        self._adapters: tuple[BackendAdapter, ...] = ()
        self._log_adapters: tuple[BackendAdapter, ...] = ()
        self._metric_adapters: tuple[BackendAdapter, ...] = ()
        if not self.enabled:
            return
        policy = _policy(self.config)
        parent = parent_channel() if backends is None else None
        tail = None
        via_parent = parent is not None and self.config.sources.get("exporter_type") != "argument"
        if via_parent:
            # A script run by aiorunner: export through the parent runner's pipeline.
            adapters = [adapt(ChannelBackend(parent))]
        else:
            adapters = (
                _adapt_given(backends) if backends is not None else _load_backends(self.config)
            )
            if self.config.sampler == TAILBASED:
                from .tail_sampling import TailSampler

                tail = TailSampler(
                    rate=float(self.config.sample_rate or 0.0),
                    threshold=float(self.config.tail_latency_threshold or 0.0),
                )
        self._adapters = tuple(adapters)
        # One export thread for the three signals' pipelines (see _export/loop.py).
        self._export_loop = ExportLoop()
        self._pipeline = ExportPipeline(
            adapters,
            batch_size=self.config.batch_size or 512,
            max_queue_size=self.config.max_queue_size or 2048,
            schedule_delay=self.config.schedule_delay or 0.0,
            export_timeout=self._timeout(None),
            policy=policy,
            tail_sampler=tail,
            spools=_spools(self.config, adapters),
            connect_budget=self.config.connect_budget,
            hedge=float(self.config.spool_hedge or 0.0),
            export_loop=self._export_loop,
        )
        self.tracer_provider.add_span_processor(self._pipeline)
        # A script run by aiorunner: its own output is its parent run's log records already.
        if self.config.logs and not via_parent:
            log_adapters, shared = _signal_adapters(_LOGS, self.config, adapters)
            if log_adapters:
                self._log_adapters = tuple(log_adapters)
                self.logs = ExportPipeline(
                    log_adapters,
                    batch_size=self.config.logs_batch_size or 512,
                    max_queue_size=self.config.logs_max_queue_size or 2048,
                    schedule_delay=self.config.logs_schedule_delay or 0.0,
                    export_timeout=float(self.config.logs_export_timeout or 0.0),
                    policy=policy,
                    signal="logs",
                    keep_open=shared,
                    spools=_spools(self.config, log_adapters, "logs"),
                    connect_budget=self.config.connect_budget,
                    hedge=float(self.config.spool_hedge or 0.0),
                    export_loop=self._export_loop,
                )
        # A script run by aiorunner: its resource use is its parent run's metrics already.
        if self.config.metrics and not via_parent:
            metric_adapters, shared = _signal_adapters(_METRICS, self.config, adapters)
            if metric_adapters:
                from .meter import SessionMeter

                self._metric_adapters = tuple(metric_adapters)
                self.metrics = ExportPipeline(
                    metric_adapters,
                    batch_size=2048,
                    max_queue_size=8192,
                    # Points wait for their batch like spans (the jsonl file caps this
                    # at 0.5 s): a run's points leave together, with its final values at
                    # its flush, not one export per point handed over (issue 21).
                    schedule_delay=_METRICS_BATCH_DELAY,
                    export_timeout=float(self.config.metrics_export_timeout or 0.0),
                    policy=policy,
                    signal="metrics",
                    keep_open=shared,
                    spools=_spools(self.config, metric_adapters, "metrics"),
                    connect_budget=self.config.connect_budget,
                    hedge=float(self.config.spool_hedge or 0.0),
                    export_loop=self._export_loop,
                )
                self.meter = SessionMeter(self)

    @property
    def resource(self) -> Any:
        """The resource of this session's spans (and of its log records)."""
        return self.tracer_provider.resource

    def __repr__(self) -> str:
        names = ",".join(a.name for a in self._adapters) or "-"
        state = "closed" if self.closed else ("enabled" if self.enabled else "disabled")
        return f"<aiorunner.Session {state} backends={names}>"

    def _timeout(self, timeout: float | None) -> float:
        if timeout is None:
            return float(self.config.export_timeout or 0.0)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise ConfigError(f"timeout={timeout!r} must be a non-negative number of seconds")
        return float(timeout)

    # ------------------------------------------------------------------ spans in

    def tracer(self, name: str = "aiorunner") -> trace.Tracer:
        """A tracer of this session (a no-op tracer when tracing is disabled)."""
        if not self.enabled:
            return trace.NoOpTracer()
        tracer = self._tracers.get(name)
        if tracer is None:
            tracer = self._tracers[name] = self.tracer_provider.get_tracer(name, __version__)
        return tracer

    @property
    def backends(self) -> tuple[Any, ...]:
        """The backend objects spans go to, in order (e.g. an ``InMemoryBackend``)."""
        return tuple(a.target for a in self._adapters)

    @property
    def backend_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self._adapters)

    def backend(self, name: str) -> Any:
        """The backend object registered as ``name``.

        Raises:
            KeyError: no backend of that name in this session.
        """
        for adapter in self._adapters:
            if adapter.name == name:
                return adapter.target
        raise KeyError(f"no backend {name!r} in this session; it has {self.backend_names}")

    def submit_spans(
        self, spans: Sequence[ReadableSpan], dropped: Mapping[int, int] | None = None
    ) -> None:
        """Hand over spans that ended elsewhere (a script's in-script tracing channel) as
        if they had ended here; ``dropped`` counts, per trace id, spans lost on the way.
        Never blocks (any thread)."""
        pipeline = self._pipeline
        if pipeline is None:
            return
        for span in spans:
            pipeline.on_end(span)
        for trace_id, count in (dropped or {}).items():
            pipeline.count_dropped(trace_id, count)

    # ------------------------------------------------------------------ waiting

    async def flush_trace(
        self, trace_id: int | str, *, timeout: float | None = None
    ) -> ExportReport:
        """
        Wait until every span of ``trace_id`` that has ended so far is exported by every
        backend or has failed for good, or until ``timeout`` (default: the export
        timeout); then return the trace's cumulative counts.

        Safe from any event loop (the work happens on the session's export thread; this
        loop only awaits a future). Concurrent calls share batches.

        Counts are kept for watched traces: a run's (from its ``ScriptRunner`` span's
        start), one passed to :meth:`watch_trace`, and this one from this call on, which
        also finds its spans among the last 64 batches.

        Args:
            trace_id: the trace id as an int, or as 32 hex digits (``RunResult.trace_id``).
        """
        if self._pipeline is None:
            return ExportReport(disabled=True)
        if isinstance(trace_id, str):
            try:
                trace_id = int(trace_id, 16)
            except ValueError:
                raise ConfigError(
                    f"trace_id={trace_id!r} is not a trace id; give 32 hex digits or an int"
                ) from None
        return await self._pipeline.flush_trace(trace_id, self._timeout(timeout))

    async def flush_run(self, trace_id: int, *, timeout: float | None = None) -> ExportReport:
        """
        :meth:`flush_trace`, and the trace's log records and metric points too: the
        report a run's ``upload_traces`` makes (``logs``, ``metrics`` and their counts
        filled), for a run whose telemetry was handed over here after it ran elsewhere
        (a Dask worker's, with ``export="client"``).
        """
        if self._pipeline is None:
            return ExportReport(disabled=True)
        _, report = await self._flush_trace_then(trace_id, self._timeout(timeout), _nothing)
        return report

    async def _flush_trace_then(
        self, trace_id: int, timeout: float, then: Callable[[ExportReport], None]
    ) -> tuple[ExportReport, ExportReport]:
        """A run's ``upload_traces``: flush its trace, ``then(report)`` on the export
        thread (ends the last spans), flush again; one round trip (``ExportPipeline``)."""
        if self._pipeline is None:
            return ExportReport(disabled=True), ExportReport(disabled=True)
        logs, metrics = self.logs, self.metrics
        if logs is None and metrics is None:
            return await self._pipeline.flush_trace_then(trace_id, timeout, then)
        # All three on the shared export loop: one round trip for the run's signals.
        others = [p for p in (logs, metrics) if p is not None]
        first, second, found = await self._pipeline.flush_run(trace_id, timeout, then, others)
        for pipeline, report in zip(others, found, strict=True):
            second = (
                _with_logs(second, report) if pipeline is logs else _with_metrics(second, report)
            )
        return first, second

    async def flush(self, *, timeout: float | None = None) -> bool:
        """Wait until every span ended so far is exported or failed for good; False if
        ``timeout`` (default: the export timeout) passed first."""
        if self._pipeline is None:
            return True
        done = True
        for other in (self.metrics, self.logs):
            if other is not None:
                done = await other.flush(self._timeout(timeout)) and done
        return await self._pipeline.flush(self._timeout(timeout)) and done

    def watch_trace(self, trace_id: int) -> None:
        """Keep per-trace counts for ``trace_id`` from now on, for a later
        :meth:`flush_trace`. A run's trace is watched from the start of its
        ``ScriptRunner`` span, and ``flush_trace`` watches its trace from its call on;
        call this first for a trace of your own whose spans may leave before you flush."""
        if self._pipeline is not None:
            self._pipeline.watch_trace(trace_id)

    def forget_trace(self, trace_id: int) -> None:
        """Drop the counts kept for a trace (they are also forgotten, oldest first, beyond
        10 000 traces)."""
        if self._pipeline is not None:
            self._pipeline.forget_trace(trace_id)

    def statistics(self) -> PipelineStatistics:
        """Counters of the pipeline: received, queued, dropped, exported, failed, and the
        same per backend."""
        if self._pipeline is None:
            return PipelineStatistics()
        return self._pipeline.statistics()

    def log_statistics(self) -> PipelineStatistics:
        """The same counters for log records (the logs pipeline)."""
        if self.logs is None:
            return PipelineStatistics()
        return self.logs.statistics()

    def metric_statistics(self) -> PipelineStatistics:
        """The same counters for metric points (the metrics pipeline)."""
        if self.metrics is None:
            return PipelineStatistics()
        return self.metrics.statistics()

    # ------------------------------------------------------------------ closing

    @property
    def closed(self) -> bool:
        return self._pipeline is not None and self._pipeline.closed

    def _request_close(self, timeout: float | None) -> concurrent.futures.Future[None] | None:
        if self._pipeline is None:
            return None
        budget = self._timeout(timeout)
        # Metrics, then logs, then spans: the traces pipeline shuts the shared backends
        # down when it is done.
        chain = [p for p in (self.metrics, self.logs, self._pipeline) if p is not None]
        if len(chain) == 1:
            return chain[0].request_close(budget)
        finished: concurrent.futures.Future[None] = concurrent.futures.Future()

        def step(index: int) -> None:
            if index == len(chain):
                if not finished.done():
                    finished.set_result(None)
                return
            chain[index].request_close(budget).add_done_callback(lambda _: step(index + 1))

        step(0)
        return finished

    async def aclose(self, *, timeout: float | None = None) -> None:
        """
        Stop taking spans, export what is queued within ``timeout`` (default: the export
        timeout), then shut the backends down. Never hangs on a dead collector: what is
        not out by the deadline is counted as failed or dropped. Idempotent.
        """
        if self.metrics is not None:
            await self.metrics.aclose(self._timeout(timeout))
        if self.logs is not None:
            await self.logs.aclose(self._timeout(timeout))
        if self._pipeline is not None:
            await self._pipeline.aclose(self._timeout(timeout))

    def close(self, timeout: float | None = None) -> None:
        """Blocking :meth:`aclose`, for interpreter exit and synchronous code (it blocks
        the calling thread: from async code, ``await aclose()``)."""
        if self.metrics is not None:
            self.metrics.close(self._timeout(timeout))
        if self.logs is not None:
            self.logs.close(self._timeout(timeout))
        if self._pipeline is not None:
            self._pipeline.close(self._timeout(timeout))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _nothing(report: ExportReport) -> None:
    """:meth:`Session.flush_run`'s step between its two flushes: none."""


def _with_logs(report: ExportReport, logs: ExportReport) -> ExportReport:
    """A run's span report with its log records' counts added."""
    return dataclasses.replace(
        report,
        logs=logs.backends,
        logs_dropped=logs.dropped,
        logs_pending=logs.pending,
    )


def _with_metrics(report: ExportReport, metrics: ExportReport) -> ExportReport:
    """A run's span report with its metric points' counts added."""
    return dataclasses.replace(
        report,
        metrics=metrics.backends,
        metrics_dropped=metrics.dropped,
        metrics_pending=metrics.pending,
    )


# ---------------------------------------------------------------- default sessions

_defaults_lock = threading.Lock()
_defaults: dict[str, Session] = {}
_atexit_registered = False


def _config_key(config: TracingConfig) -> str:
    return repr(
        [(f.name, getattr(config, f.name)) for f in dataclasses.fields(config) if f.compare]
    )


def get_default_session(config: TracingConfig | None = None) -> Session:
    """
    The process-wide session for ``config`` (one per distinct resolved configuration),
    created on first use and drained at interpreter exit (bounded by its export timeout).

    Raises:
        ConfigError: as :class:`Session` does.
    """
    global _atexit_registered
    resolved = (config or TracingConfig()).resolve()
    key = _config_key(resolved)
    session = _defaults.get(key)
    if session is not None and not session.closed:
        return session
    with _defaults_lock:
        session = _defaults.get(key)
        if session is None or session.closed:
            session = _defaults[key] = Session(resolved)
            if not _atexit_registered:
                atexit.register(_close_default_sessions)
                _atexit_registered = True
    return session


async def aget_default_session(config: TracingConfig | None = None) -> Session:
    """:func:`get_default_session` for async code: the first, uncached creation (entry
    point scan, plugin imports) runs in a worker thread instead of on the caller's loop."""
    import anyio.to_thread

    resolved = (config or TracingConfig()).resolve()
    session = _defaults.get(_config_key(resolved))
    if session is not None and not session.closed:
        return session
    return await anyio.to_thread.run_sync(get_default_session, resolved)


def _close_default_sessions() -> None:
    """At exit: close every default session at once, each within its export timeout."""
    with _defaults_lock:
        sessions = list(_defaults.values())
        _defaults.clear()
    started = time.monotonic()
    waiting = []
    for session in sessions:
        future = session._request_close(None)
        if future is not None:
            waiting.append((session, future))
    for session, future in waiting:
        budget = session._timeout(None) + 2.0 - (time.monotonic() - started)
        try:
            future.result(max(0.0, budget))
        except concurrent.futures.TimeoutError:
            logger.warning("%r did not finish exporting before exit", session)
