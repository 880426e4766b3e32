"""
The worker side of :class:`aiorunner.dask.DaskExecutor`: what one Dask task does.

Imported by name on each worker (the task function is pickled by reference), so it holds
only plain, picklable data types and functions at module level, and imports
``distributed`` only inside them (a worker has it; this module may be imported without).

One task is one attempt. Before it spawns the script, it sends the attempt's *started*
note to the scheduler on the worker's ordinary batched stream (``log_event``, no round
trip) and waits until that note has left the worker; the scheduler's ``AtMostOnce``
plugin (``dask_scheduler``) remembers it, so a task Dask re-runs after a worker death
finds the first run's worker and pid in its own annotations and returns ``lost`` instead
of running the script a second time. It runs the script with :class:`ScriptRunner` under
the client's span (the W3C carrier), registered by key in this worker, so the client can
stop it with ``client.run(stop_attempt, key)`` (Dask never stops a running task itself);
then it hands back the result and, with ``export="client"``, the run's spans, log
records and metric points, each signal as one OTLP/JSON line in bytes (SDK span objects
do not pickle; bytes cost Dask's ``sizeof`` nothing). The run-level instruments
(``aiorunner.run.duration``, ``aiorunner.runs``, ...) are not recorded here then: the
client's session records them from the result, so they are aggregated once, across the
whole batch, as a local run's are.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .._result import RunResult
from .._run.runner import ScriptRunner
from .executor import ATTEMPT_ATTRIBUTE, JOB_ATTRIBUTE

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from opentelemetry.sdk.trace import ReadableSpan

    from .._config import TracingConfig
    from .._export.session import Session
    from .._monitor.monitor import ProcessTreeMonitor
    from ..backend import LogRecordData, MetricPointData
    from .jobs import Job

__all__ = ["TaskSpec", "TelemetryCollector", "WorkerExport", "run_attempt", "stop_attempt"]

#: Seconds a task waits for its *started* note to leave the worker before it gives up
#: without running the script (the worker has lost its scheduler).
NOTE_TIMEOUT = 5.0
#: Stops asked for attempts that had not begun on this worker, remembered (by key) for
#: a task that begins later; the oldest are forgotten beyond this many.
MAX_EARLY_STOPS = 10_000
#: Spans a worker keeps for runs whose task has not collected them yet; beyond this the
#: oldest traces are dropped (and counted).
MAX_HELD_SPANS = 100_000
#: The same for log records (a run makes up to ``AIORUNNER_LOG_MAX_RECORDS``, 100,000 by
#: default) and metric points.
MAX_HELD_RECORDS = 200_000
MAX_HELD_POINTS = 100_000
#: The metric points' job attribute (``aiorunner.job.name``, as the run's metric feed
#: sets it): which task's run a point belongs to.
JOB_NAME_ATTRIBUTE = "aiorunner.job.name"
#: The root span attribute naming the Dask worker that ran the script.
WORKER_ATTRIBUTE = "aiorunner.dask.worker"


@dataclass(frozen=True)
class TaskSpec:
    """Everything a worker needs for one attempt: plain, picklable data."""

    job: Job
    name: str
    number: int
    key: str
    timeout: float | None
    carrier: Mapping[str, str]
    config: TracingConfig | None
    runner_options: Mapping[str, Any] = field(default_factory=dict)
    #: ``export="client"``: return the spans; ``"worker"``: the WorkerExport plugin exports.
    export: str = "client"
    #: The script file's bytes when the executor ships scripts (``ship_script=True``).
    script_bytes: bytes | None = None
    #: The client's event topic (worker, pid of each attempt as it starts).
    topic: str | None = None
    #: With ``export="worker"``: the name of the executor's export plugin.
    plugin: str | None = None
    #: Names ``config`` among the worker's sessions (made once per client session, so a
    #: worker does not repr the whole configuration for every task).
    config_key: str = "-"


class TelemetryCollector:
    """
    The worker session's backend with ``export="client"``: keeps each exported span, log
    record and metric point until the task of its run takes it. Several attempts run at
    once on one worker, several of them in one trace (``trace="batch"``), so a task takes
    the spans under its own parent span (the client's span of that attempt), not the whole
    trace; the log records of its job and attempt (the identity attributes every record of
    a run carries) and the metric points of its job (``aiorunner.job.name``; one job has
    one attempt at a time) in that trace.
    """

    def __init__(self) -> None:
        self.name = "dask-client"
        self._traces: dict[int, list[ReadableSpan]] = {}
        self._count = 0
        #: (trace id, job, attempt) -> log records; (trace id, job) -> metric points.
        self._logs: dict[tuple[int, str, int], list[LogRecordData]] = {}
        self._log_count = 0
        self._points: dict[tuple[int, str], list[MetricPointData]] = {}
        self._point_count = 0
        #: Items dropped because tasks did not collect them (the MAX_HELD_* bounds), or
        #: that belong to no run (no job attribute): spans, log records, metric points.
        self.dropped = 0
        self.dropped_records = 0
        self.dropped_points = 0

    async def export(self, spans: Sequence[ReadableSpan], *, timeout: float) -> Any:
        from ..backend import ExportResult

        for span in spans:
            context = span.context
            if context is None:
                continue
            self._traces.setdefault(context.trace_id, []).append(span)
        self._count += len(spans)
        while self._count > MAX_HELD_SPANS and self._traces:
            oldest = next(iter(self._traces))
            lost = self._traces.pop(oldest)
            self._count -= len(lost)
            self.dropped += len(lost)
        return ExportResult.success()

    async def export_logs(self, records: Sequence[LogRecordData], *, timeout: float) -> Any:
        from ..backend import ExportResult

        held = self._logs
        for record in records:
            attributes = record.attributes
            job = attributes.get(JOB_ATTRIBUTE)
            attempt = attributes.get(ATTEMPT_ATTRIBUTE)
            if job is None or type(attempt) is not int:
                self.dropped_records += 1  # no run of a task made it
                continue
            key = (record.trace_id, str(job), attempt)
            found = held.get(key)
            if found is None:
                found = held[key] = []
            found.append(record)
            self._log_count += 1
        while self._log_count > MAX_HELD_RECORDS and held:
            lost = held.pop(next(iter(held)))
            self._log_count -= len(lost)
            self.dropped_records += len(lost)
        return ExportResult.success()

    async def export_metrics(self, points: Sequence[MetricPointData], *, timeout: float) -> Any:
        from ..backend import ExportResult

        held = self._points
        for point in points:
            job = point.attributes.get(JOB_NAME_ATTRIBUTE)
            if job is None or not point.trace_id:
                self.dropped_points += 1  # no run of a task made it
                continue
            key = (point.trace_id, str(job))
            found = held.get(key)
            if found is None:
                found = held[key] = []
            found.append(point)
            self._point_count += 1
        while self._point_count > MAX_HELD_POINTS and held:
            lost = held.pop(next(iter(held)))
            self._point_count -= len(lost)
            self.dropped_points += len(lost)
        return ExportResult.success()

    async def force_flush(self, *, timeout: float) -> bool:
        return True

    async def shutdown(self, *, timeout: float) -> None:
        self._traces.clear()
        self._count = 0
        self._logs.clear()
        self._log_count = 0
        self._points.clear()
        self._point_count = 0

    def take(self, trace_id: int, parent_span_id: int) -> list[ReadableSpan]:
        """Remove and return the spans of ``trace_id`` that descend from
        ``parent_span_id`` (the run's root span and everything below it)."""
        spans = self._traces.get(trace_id)
        if not spans:
            return []
        parents: dict[int, int | None] = {}
        for span in spans:
            assert span.context is not None
            parents[span.context.span_id] = span.parent.span_id if span.parent else None
        mine: dict[int, bool] = {}

        def belongs(span_id: int) -> bool:
            path = []
            found = False
            current: int | None = span_id
            while current is not None:
                if current in mine:
                    found = mine[current]
                    break
                path.append(current)
                parent = parents.get(current)
                if parent == parent_span_id:
                    found = True
                    break
                current = parent if parent in parents else None
            for item in path:
                mine[item] = found
            return found

        taken = [s for s in spans if s.context is not None and belongs(s.context.span_id)]
        if taken:
            kept = [s for s in spans if s.context is not None and not mine[s.context.span_id]]
            if kept:
                self._traces[trace_id] = kept
            else:
                del self._traces[trace_id]
            self._count -= len(taken)
        return taken

    def take_logs(self, trace_id: int, job: str, attempt: int) -> list[LogRecordData]:
        """Remove and return the log records of attempt ``attempt`` of ``job`` in
        ``trace_id`` (the script's output lines and its ``logging`` records)."""
        records = self._logs.pop((trace_id, job, attempt), [])
        self._log_count -= len(records)
        return records

    def take_points(self, trace_id: int, job: str) -> list[MetricPointData]:
        """Remove and return the metric points of ``job``'s run in ``trace_id``."""
        points = self._points.pop((trace_id, job), [])
        self._point_count -= len(points)
        return points


@dataclass(frozen=True)
class WorkerExport:
    """
    What ``export="worker"`` builds on each worker: a :class:`TracingConfig` (plain data,
    picklable) whose exporters the worker's own session uses, e.g.
    ``TracingConfig(exporter_type="otlp", endpoint="http://collector:4318")``.
    ``None`` reads the worker's own environment (``OTEL_*``).
    """

    config: TracingConfig | None = None


# -- per-worker state ------------------------------------------------------------------------

#: config key -> (session, collector) of this worker process, for export="client".
_client_sessions: dict[str, tuple[Session, TelemetryCollector]] = {}
#: plugin name -> the session a WorkerExport plugin built on this worker (export="worker").
_worker_sessions: dict[str, Session] = {}
#: task key -> the cancel scope of the attempt running on this worker.
_running: dict[str, anyio.CancelScope] = {}
#: task keys whose stop came before their task began here (insertion ordered).
_early_stops: dict[str, None] = {}


def stop_attempt(key: str) -> bool:
    """
    Stop the attempt ``key`` on this worker (the client calls it with ``client.run``,
    on the worker's event loop): its run is cancelled, so :class:`ScriptRunner`
    terminates the script's process group (SIGTERM, grace, SIGKILL) and the task
    returns ``cancelled``. An attempt not running here yet is remembered: its task
    returns ``cancelled`` without running the script if it begins here later.
    Returns whether the attempt was running here.
    """
    scope = _running.get(key)
    if scope is not None:
        scope.cancel()
        return True
    _early_stops[key] = None
    while len(_early_stops) > MAX_EARLY_STOPS:
        del _early_stops[next(iter(_early_stops))]
    return False


def config_key(config: TracingConfig | None) -> str:
    """A digest of ``config``'s fields: which worker session a task's spans go through."""
    if config is None:
        return "-"
    import dataclasses
    import hashlib

    text = repr([(f.name, getattr(config, f.name)) for f in dataclasses.fields(config)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _new_session(config: TracingConfig | None, backends: list[Any] | None) -> Session:
    from .._export.session import Session

    return Session(config, backends=backends)


def _new_client_session(config: TracingConfig | None, collector: TelemetryCollector) -> Session:
    """The worker's session for ``export="client"``: every signal goes to ``collector``,
    whatever ``OTEL_LOGS_EXPORTER`` / ``OTEL_METRICS_EXPORTER`` the client named (its
    own session sends them there), and no run-level instruments (the client's session
    records them from each result: recorded here too, they would count every run twice,
    and each worker's running totals would clash in the client's series)."""
    import dataclasses

    from .._config import TracingConfig

    resolved = (config or TracingConfig()).resolve()
    resolved = dataclasses.replace(resolved, logs_exporter=(), metrics_exporter=())
    session = _new_session(resolved, [collector])
    session.meter = None
    return session


async def _client_session(
    config: TracingConfig | None, key: str
) -> tuple[Session, TelemetryCollector]:
    found = _client_sessions.get(key)
    if found is None:
        collector = TelemetryCollector()
        # Building a session reads the environment and the resource: not on the loop.
        session = await anyio.to_thread.run_sync(_new_client_session, config, collector)
        found = _client_sessions.setdefault(key, (session, collector))
    return found


def setup_worker_export(spec: WorkerExport, name: str) -> None:
    """The WorkerPlugin's setup: this worker's own export pipeline for executor ``name``."""
    if name not in _worker_sessions:
        _worker_sessions[name] = _new_session(spec.config, None)


async def teardown_worker_export(name: str) -> None:
    """The WorkerPlugin's teardown: flush and close that pipeline."""
    session = _worker_sessions.pop(name, None)
    if session is not None:
        await session.aclose()


# -- one attempt -------------------------------------------------------------------------------


class _WorkerRunner(ScriptRunner):
    """A ScriptRunner that says the script's pid as soon as it is spawned."""

    on_pid: Any = None

    def _monitor_started(self, monitor: ProcessTreeMonitor) -> None:
        super()._monitor_started(monitor)
        if self.on_pid is not None:
            self.on_pid(monitor.pid)


def _write_script(directory: str, name: str, data: bytes) -> str:
    path = os.path.join(directory, os.path.basename(name) or "script")
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o700)
    return path


async def _note_sent(worker: Any, note: dict[str, Any]) -> bool:
    """
    Send ``note`` to the scheduler on the worker's batched stream and wait until it has
    left this process (the stream takes it out of its buffer and writes it to the socket
    in the same step), at most :data:`NOTE_TIMEOUT`. The scheduler reads a worker's
    stream in order before it notices the worker is gone, so a note that left is seen
    before any re-run of the task. False: not connected to the scheduler (Dask would
    drop the note silently), or the note did not leave in time.
    """
    stream = getattr(worker, "batched_stream", None)
    comm = getattr(stream, "comm", None)
    if stream is None or comm is None or comm.closed():
        return False
    queued = stream.message_count
    worker.log_event(note["topic"], note["msg"])
    if stream.message_count == queued:  # not taken now (not on the worker's loop?)
        return False
    deadline = time.monotonic() + NOTE_TIMEOUT
    # At most the stream's interval (2 ms): it sends at most one batch per interval.
    while any(isinstance(m, dict) and m.get("msg") is note["msg"] for m in stream.buffer):
        if time.monotonic() > deadline:
            return False
        await anyio.sleep(0.0005)
    return not comm.closed()


async def run_attempt(spec: TaskSpec) -> dict[str, Any]:
    """
    The Dask task of one attempt (runs on the worker's event loop).

    Returns a plain dict: ``status`` (``"ran"``, ``"cancelled"``, ``"lost"`` or
    ``"error"``), ``worker``, ``host``, ``pid``, ``result`` (a RunResult), ``spans``,
    ``logs`` and ``metrics`` (each one OTLP/JSON line as bytes, or None; with
    ``span_count``, ``log_count`` and ``metric_count``) and, for ``lost``, ``first``
    (the first run's ``[worker, pid]``).
    """
    import importlib

    from .dask_scheduler import LOST_ANNOTATION

    # Typed as Any: distributed is not annotated for mypy strict.
    distributed: Any = importlib.import_module("distributed")
    worker = distributed.get_worker()
    address = str(worker.address)
    host = socket.gethostname()
    reply: dict[str, Any] = {"worker": address, "host": host, "spans": None, "pid": None}
    state = worker.state.tasks.get(spec.key)
    first = ((state.annotations or {}) if state is not None else {}).get(LOST_ANNOTATION)
    if first is not None:
        # Dask re-ran this task after the worker that ran it died (the scheduler's
        # AtMostOnce plugin says so): the script already ran, or began to, so it is not
        # run again; the orchestrator's retries decide.
        reply["status"] = "lost"
        reply["first"] = list(first)
        return reply
    job = spec.job
    if spec.key in _early_stops:
        del _early_stops[spec.key]
        reply["status"] = "cancelled"
        reply["result"] = RunResult(
            script=job.script,
            success=False,
            cancelled=True,
            error="cancelled: stopped by the client before the script started",
            started_at=time.time(),
            duration=0.0,
        )
        return reply
    topic = spec.topic or "aiorunner-notes"
    if not await _note_sent(worker, {"topic": topic, "msg": {"key": spec.key}}):
        reply["status"] = "error"
        reply["reason"] = (
            f"Dask worker {address} could not tell the scheduler that the attempt "
            "started (its connection to the scheduler is down), so the script was not run"
        )
        return reply

    def on_pid(pid: int) -> None:
        reply["pid"] = pid
        worker.log_event(topic, {"key": spec.key, "pid": pid})

    collector: TelemetryCollector | None = None
    if spec.export == "client":
        session, collector = await _client_session(spec.config, spec.config_key)
    elif spec.plugin in _worker_sessions:
        session = _worker_sessions[spec.plugin]
    else:  # the plugin is not there (a worker that joined late): the worker's defaults
        from .._export.session import aget_default_session

        session = await aget_default_session(spec.config)
    shipped_dir: str | None = None
    script = job.script
    if spec.script_bytes is not None:
        shipped_dir = await anyio.to_thread.run_sync(tempfile.mkdtemp, "", "aiorunner-")
        script = await anyio.to_thread.run_sync(
            _write_script, shipped_dir, job.script, spec.script_bytes
        )
    # The carrier is W3C trace context whatever propagators the scripts get.
    parent_context = TraceContextTextMapPropagator().extract(dict(spec.carrier))
    parent = trace.get_current_span(parent_context).get_span_context()
    options: dict[str, Any] = dict(spec.runner_options)
    options.update(
        env=job.env,
        cwd=job.cwd,
        timeout=spec.timeout,
        session=session,
        config=session.config,
        context=parent_context,
    )
    if job.interpreter is not None:
        options["interpreter"] = job.interpreter
    runner = _WorkerRunner(script, job.args, **options)
    runner.on_pid = on_pid
    runner.tracing_attributes[ATTEMPT_ATTRIBUTE] = spec.number
    runner.tracing_attributes[JOB_ATTRIBUTE] = spec.name
    runner.tracing_attributes[WORKER_ATTRIBUTE] = address
    if shipped_dir is not None:
        runner.tracing_attributes["aiorunner.dask.shipped_script"] = job.script
    result: RunResult | None = None
    started_at = time.time()
    t0 = time.perf_counter()
    try:
        with anyio.CancelScope() as scope:
            _running[spec.key] = scope
            if spec.key in _early_stops:  # asked while this task was setting up
                del _early_stops[spec.key]
                scope.cancel()
            try:
                result = await runner.run()
            finally:
                _running.pop(spec.key, None)
    finally:
        if shipped_dir is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, shipped_dir, True)
    stopped = result is None
    if result is None:
        # Stopped by the client (stop_attempt): ScriptRunner terminated the script's
        # process group (SIGTERM, grace, SIGKILL), reaped it and ended its spans.
        result = RunResult(
            script=job.script,
            success=False,
            cancelled=True,
            error="cancelled: stopped by the client; the script's process group was terminated",
            started_at=started_at,
            duration=time.perf_counter() - t0,
            pid=reply["pid"],
        )
    elif shipped_dir is not None:
        import dataclasses

        result = dataclasses.replace(result, script=job.script)
    reply["status"] = "cancelled" if stopped else "ran"
    reply["result"] = result
    if collector is not None and parent.is_valid:
        from .._export.otlp_json import encode_line

        spans = collector.take(parent.trace_id, parent.span_id)
        # One OTLP/JSON line as bytes, not nested dicts: Dask sizes every result it
        # keeps by walking it (a 7-span dict costs ~3 ms of sizeof, bytes nothing).
        reply["spans"] = encode_line(spans) if spans else None
        reply["span_count"] = len(spans)
        from .._export.logs import encode_logs_line
        from .._export.metrics import encode_metrics_line

        records = collector.take_logs(parent.trace_id, spec.name, spec.number)
        reply["logs"] = encode_logs_line(records) if records else None
        reply["log_count"] = len(records)
        # Not exported (the pipeline's per-run accounting): the client sets it again.
        points = collector.take_points(parent.trace_id, spec.name)
        reply["metrics"] = encode_metrics_line(points) if points else None
        reply["metric_count"] = len(points)
    return reply
