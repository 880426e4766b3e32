"""
The worker side of :class:`aiorunner.dask.DaskExecutor`: what one Dask task does.

Imported by name on each worker (the task function is pickled by reference), so it holds
only plain, picklable data types and functions at module level, and imports
``distributed`` only inside them (a worker has it; this module may be imported without).

One task is one attempt: it checks and sets the attempt's *started* marker (a
``distributed.Event`` on the scheduler), so a task Dask re-runs after a worker death
returns ``lost`` instead of running the script a second time; it runs the script with
:class:`ScriptRunner` under the client's span (the W3C carrier), while waiting on the
attempt's *stop* event, which the client sets to stop the script (Dask never stops a
running task itself); then it hands back the result and, with ``export="client"``, the
run's spans as OTLP/JSON dicts (plain data: SDK span objects do not pickle).
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
    from .jobs import Job

__all__ = ["STOP_POLL", "SpanCollector", "TaskSpec", "WorkerExport", "run_attempt"]

#: Seconds one wait on the stop event lasts before it is renewed (bounds how long the
#: scheduler keeps a waiter of a task that ended).
STOP_POLL = 10.0
#: Seconds a task runs before it starts waiting on its stop event: a script shorter than
#: that costs the scheduler no wait (and no wake-up) at all, and a stop asked for
#: meanwhile is seen at the first wait (the event stays set), at most this late.
STOP_DELAY = 0.2
#: Spans a worker keeps for runs whose task has not collected them yet; beyond this the
#: oldest traces are dropped (and counted).
MAX_HELD_SPANS = 100_000
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


@dataclass
class _Held:
    spans: list[ReadableSpan] = field(default_factory=list)


class SpanCollector:
    """
    The worker session's backend with ``export="client"``: keeps each exported span until
    the task of its run takes it. Several attempts run at once on one worker, several of
    them in one trace (``trace="batch"``), so a task takes the spans under its own parent
    span (the client's span of that attempt), not the whole trace.
    """

    def __init__(self) -> None:
        self.name = "dask-client"
        self._traces: dict[int, list[ReadableSpan]] = {}
        self._count = 0
        #: Spans dropped because tasks did not collect them (MAX_HELD_SPANS).
        self.dropped = 0

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

    async def force_flush(self, *, timeout: float) -> bool:
        return True

    async def shutdown(self, *, timeout: float) -> None:
        self._traces.clear()
        self._count = 0

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
_client_sessions: dict[str, tuple[Session, SpanCollector]] = {}
#: plugin name -> the session a WorkerExport plugin built on this worker (export="worker").
_worker_sessions: dict[str, Session] = {}


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


async def _client_session(config: TracingConfig | None, key: str) -> tuple[Session, SpanCollector]:
    found = _client_sessions.get(key)
    if found is None:
        collector = SpanCollector()
        # Building a session reads the environment and the resource: not on the loop.
        session = await anyio.to_thread.run_sync(_new_session, config, [collector])
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


async def run_attempt(spec: TaskSpec) -> dict[str, Any]:
    """
    The Dask task of one attempt (runs on the worker's event loop).

    Returns a plain dict: ``status`` (``"ran"``, ``"cancelled"`` or ``"lost"``),
    ``worker``, ``host``, ``result`` (a RunResult) and ``spans`` (one OTLP/JSON line as
    bytes, or None).
    """
    import importlib

    # Typed as Any: distributed's Event API is not annotated (mypy strict).
    distributed: Any = importlib.import_module("distributed")
    Event = distributed.Event
    worker = distributed.get_worker()
    client = distributed.get_client()
    address = str(worker.address)
    host = socket.gethostname()
    reply: dict[str, Any] = {"worker": address, "host": host, "spans": None, "pid": None}
    started = Event(f"{spec.key}/started", client=client)
    if await started.is_set():
        # Dask re-ran this task after the worker that ran it died: the script already
        # ran (or began to), so it is not run again; the orchestrator's retries decide.
        reply["status"] = "lost"
        return reply
    await started.set()

    def on_pid(pid: int) -> None:
        reply["pid"] = pid
        if spec.topic is not None:
            worker.log_event(spec.topic, {"key": spec.key, "pid": pid, "worker": address})

    job = spec.job
    collector: SpanCollector | None = None
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
    stop = Event(f"{spec.key}/stop", client=client)
    result: RunResult | None = None
    stopped = False
    started_at = time.time()
    t0 = time.perf_counter()
    finished = waiting = False
    try:
        async with anyio.create_task_group() as tg:

            async def watch_stop(scope: anyio.CancelScope) -> None:
                nonlocal stopped, waiting
                await anyio.sleep(STOP_DELAY)
                waiting = True
                while not await stop.wait(timeout=STOP_POLL):
                    pass
                if not finished:
                    stopped = True
                    scope.cancel()

            with anyio.CancelScope() as run_scope:
                tg.start_soon(watch_stop, run_scope)
                result = await runner.run()
            finished = True
            if waiting:
                # The script ended: a waiting watcher is woken by setting the event
                # ourselves, not cancelled (cancelling a wait aborts its connection,
                # which the scheduler logs as an error); the client clears the event.
                await stop.set()
            else:
                tg.cancel_scope.cancel()  # the watcher is still asleep: no wait to end
    finally:
        if shipped_dir is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(shutil.rmtree, shipped_dir, True)
    if result is None:
        # Stopped by the client: ScriptRunner terminated the script's process group
        # (SIGTERM, grace, SIGKILL), reaped it and ended its spans.
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
    reply["stop_used"] = waiting
    reply["result"] = result
    if collector is not None and parent.is_valid:
        from .._export.otlp_json import encode_line

        spans = collector.take(parent.trace_id, parent.span_id)
        # One OTLP/JSON line as bytes, not nested dicts: Dask sizes every result it
        # keeps by walking it (a 7-span dict costs ~3 ms of sizeof, bytes nothing).
        reply["spans"] = encode_line(spans) if spans else None
        reply["span_count"] = len(spans)
    return reply
