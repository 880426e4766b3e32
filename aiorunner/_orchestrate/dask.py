"""
:class:`DaskExecutor`: ``run_many``'s attempts as tasks on a Dask distributed cluster.

The orchestrator still decides when (dependencies, concurrency, retries, fail-fast); this
executor decides where: each attempt is one Dask task (``pure=False``, a unique key,
``retries=0``: our orchestrator owns retries) that runs :class:`ScriptRunner` on a worker
(``dask_worker.run_attempt``), under a client span ``dask.task`` that is a child of the
batch's span, so ``trace="batch"`` is one trace across machines.

What Dask does not do, and this module does (measured with distributed 2026.8.0):

- Dask never stops a running task (``future.cancel()`` only marks it): on fail-fast,
  Ctrl-C or cancellation the client calls ``dask_worker.stop_attempt(key)`` on the
  worker running the attempt (``client.run``; on every worker when it is not known
  yet), which cancels the run there, so its script's process group is terminated.
- A killed worker makes the scheduler re-run its task elsewhere, even with
  ``retries=0``: the task's *started* note (a batched message that has left the worker
  before the script is spawned) is remembered by the scheduler's ``AtMostOnce`` plugin
  (``dask_scheduler``), which hands the re-run the first run's worker and pid in its
  annotations, so it returns ``lost`` without running the script again.
- The happy path makes no round trip of its own: no per-attempt event, variable or
  RPC; the scheduler sees two small batched notes per attempt (started, pid).
- OTel SDK objects do not pickle: the worker's session records into memory and the task
  returns its spans, log records and metric points, each signal as one OTLP/JSON line in
  bytes, which the client decodes and hands to its own session's pipelines
  (``export="client"``), ids intact, so every backend works unchanged and workers need
  no path to a collector; the run-level instruments (``aiorunner.run.duration``,
  ``aiorunner.runs``, ...) are recorded here, from each result, in the client's meter
  (the worker's session records none). ``export="worker"`` has each worker export
  every signal itself, run-level instruments included.

``distributed`` is imported only when a :class:`DaskExecutor` is made.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import anyio
import anyio.to_thread
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .._exceptions import ClusterError, ConfigError
from .._result import RunResult
from .dask_worker import TaskSpec, WorkerExport, config_key, run_attempt, stop_attempt
from .executor import ATTEMPT_ATTRIBUTE, JOB_ATTRIBUTE
from .jobs import Job

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.trace import SpanContext
    from typing_extensions import Self

    from .._config import TracingConfig
    from .._export.pipeline import ExportPipeline
    from .._export.session import Session
    from .._result import ExportReport
    from .executor import Attempt

__all__ = ["ClusterError", "DaskExecutor", "WorkerExport"]

logger = logging.getLogger("aiorunner.dask")

#: Seconds to reach the scheduler before giving up (the error names the address).
DEFAULT_CONNECT_TIMEOUT = 3.0
#: Seconds a stopped attempt gets to terminate its script and send its telemetry home,
#: beyond the runner's kill grace.
STOP_MARGIN = 10.0
#: Bytes of a task's log or metric line beyond which the client decodes it in a worker
#: thread, not on the event loop (a run's 100,000 records are ~20 MB of JSON).
DECODE_INLINE_MAX = 256 * 1024
#: Seconds the client waits for room in its logs / metrics pipeline for what a task
#: sent home (when its queue is full), at most; what is still waiting is counted dropped.
HAND_OVER_TIMEOUT = 30.0
_INSTALL_HINT = "pip install 'aiorunner[dask]'"
_KEY_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_executors = itertools.count(1)


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ConfigError(
            f"DaskExecutor needs the 'distributed' package, which is not installed "
            f"({exc}); install it with {_INSTALL_HINT}"
        ) from None
    return distributed


class DaskExecutor:
    """
    Runs ``run_many`` attempts as tasks on a Dask distributed cluster.

    Args:
        address_or_client: the scheduler's address (``"tcp://host:8786"``), for which
            the executor makes and owns an asynchronous ``distributed.Client`` on
            ``run_many``'s loop, or an asynchronous ``Client`` of yours (kept open).
        resources: Dask worker resources every attempt asks for (``{"GPU": 1}``);
            a :class:`Job`'s own ``resources`` are added on top.
        ship_script: send each script file's bytes with its task; the worker runs it
            from a temporary directory (so its local imports must be there too).
            Default: the script path must exist on the worker (shared file system, image).
        export: ``"client"`` (default): the worker returns the run's spans, log
            records and metric points and this process's session exports them (every
            backend, the jsonl default included; the run-level instruments recorded
            here); ``"worker"``: each worker exports through its own pipeline, built
            from ``worker_export`` by a worker plugin (for large clusters).
        worker_export: with ``export="worker"``: a :class:`WorkerExport` (a picklable
            :class:`TracingConfig`; default: each worker's own ``OTEL_*`` environment).
        runner_options: extra :class:`ScriptRunner` keyword arguments for the workers
            (plain data: ``{"monitor_interval": 0.2, "kill_grace": 2}``).
        connect_timeout: seconds to reach the scheduler.
        on_output: called with ``(job name, stream, bytes)`` with each finished
            attempt's output tails (Dask sends no live output).
        on_worker: called with ``(job name, worker address)`` as each attempt starts
            on a worker (the CLI's worker column).

    Raises:
        ConfigError: ``distributed`` is not installed (the message names
            ``pip install 'aiorunner[dask]'``), or an argument is wrong.

    Use it as an async context manager (``async with DaskExecutor(addr) as ex:``) to
    connect up front (a :class:`ClusterError` right there when the scheduler is
    unreachable) and to close the client it made; otherwise it connects at the first
    attempt and ``aclose()`` closes it.
    """

    #: No local process slots: the scripts run on the workers.
    uses_process_slots: ClassVar[bool] = False

    def __init__(
        self,
        address_or_client: Any,
        *,
        resources: Mapping[str, float] | None = None,
        ship_script: bool = False,
        export: Literal["client", "worker"] = "client",
        worker_export: WorkerExport | None = None,
        runner_options: Mapping[str, Any] | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        on_output: Callable[[str, str, bytes], None] | None = None,
        on_worker: Callable[[str, str], None] | None = None,
    ) -> None:
        distributed = _import_distributed()
        self._distributed = distributed
        if isinstance(address_or_client, str):
            if not address_or_client.strip():
                raise ConfigError(
                    "DaskExecutor needs the scheduler's address, e.g. 'tcp://host:8786'"
                )
            self.address: str = address_or_client
            self._client: Any = None
            self._owns_client = True
        elif isinstance(address_or_client, distributed.Client):
            if not address_or_client.asynchronous:
                raise ConfigError(
                    "DaskExecutor needs an asynchronous Client "
                    "(Client(address, asynchronous=True), awaited on run_many's loop), "
                    "or just the scheduler's address"
                )
            self._client = address_or_client
            self.address = str(getattr(address_or_client.scheduler, "address", "") or "")
            self._owns_client = False
        else:
            raise ConfigError(
                f"DaskExecutor takes a scheduler address ('tcp://host:8786') or an "
                f"asynchronous distributed.Client, got {address_or_client!r}"
            )
        self.resources = _check_resources(resources, "DaskExecutor resources")
        if export not in ("client", "worker"):
            raise ConfigError(f"export must be 'client' or 'worker', got {export!r}")
        if worker_export is not None and not isinstance(worker_export, WorkerExport):
            raise ConfigError(
                f"worker_export must be a WorkerExport(config=TracingConfig(...)), "
                f"got {worker_export!r}"
            )
        if isinstance(connect_timeout, bool) or not isinstance(connect_timeout, (int, float)):
            raise ConfigError(f"connect_timeout must be seconds, got {connect_timeout!r}")
        if connect_timeout <= 0:
            raise ConfigError(f"connect_timeout must be > 0 seconds, got {connect_timeout!r}")
        self.ship_script = bool(ship_script)
        self.export = export
        self.worker_export = worker_export or WorkerExport()
        self.runner_options = dict(runner_options or {})
        self.connect_timeout = float(connect_timeout)
        self.on_output = on_output
        self.on_worker = on_worker
        self._id = f"{os.getpid()}-{next(_executors)}-{uuid.uuid4().hex[:8]}"
        self._topic = f"aiorunner-{self._id}"
        self._plugin = f"aiorunner-export-{self._id}"
        self._lock: anyio.Lock | None = None
        self._failures = 0
        self._ready = False
        self._config_keys: dict[int, tuple[TracingConfig | None, str]] = {}
        #: key -> (job name, latest worker, pid) of attempts under way.
        self._under_way: dict[str, list[Any]] = {}
        #: The workers' resources, decoded once (records and points share them).
        self._resources: dict[str, Resource] = {}

    def __repr__(self) -> str:
        return f"<DaskExecutor {self.address or 'client'} export={self.export}>"

    # -- connection -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._connected()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the client this executor made (a given client stays open)."""
        client, self._ready = self._client, False
        if client is None:
            return
        if self.on_worker is not None:
            try:
                client.unsubscribe_topic(self._topic)
            except Exception:  # closing anyway
                logger.debug("unsubscribing %s failed", self._topic, exc_info=True)
        if self.export == "worker":
            # Its teardown flushes and closes each worker's pipeline.
            with anyio.move_on_after(30, shield=True):
                try:
                    await client.unregister_worker_plugin(self._plugin)
                except Exception:  # a worker gone, or the scheduler: nothing to flush
                    logger.debug("removing plugin %s failed", self._plugin, exc_info=True)
        if self._owns_client:
            self._client = None
            with anyio.move_on_after(10, shield=True):
                await client.close()

    async def _connected(self) -> Any:
        """The client, connected (and the worker plugin registered) on first use."""
        if self._ready:
            return self._client
        if self._lock is None:
            self._lock = anyio.Lock()
        failures = self._failures
        async with self._lock:
            if self._ready:
                return self._client
            if self._failures != failures:
                # A concurrent attempt just failed to connect and raised ClusterError,
                # which ends the batch: wait for that cancellation instead of raising
                # the same error once per attempt.
                await anyio.sleep_forever()
            try:
                await self._connect()
            except BaseException:
                self._failures += 1
                raise
            self._ready = True
        return self._client

    async def _connect(self) -> None:
        distributed = self._distributed
        if self._client is None:
            started = time.perf_counter()
            try:
                with anyio.fail_after(self.connect_timeout + 2.0):
                    client = await distributed.Client(
                        self.address,
                        asynchronous=True,
                        timeout=self.connect_timeout,
                        set_as_default=False,
                    )
            except (OSError, TimeoutError, ValueError) as exc:
                raise ClusterError(
                    f"cannot reach the Dask scheduler at {self.address} "
                    f"(gave up after {time.perf_counter() - started:.1f} s: "
                    f"{type(exc).__name__}: {exc}); check the address and that "
                    f"`dask scheduler` is running there and reachable from here"
                ) from exc
            self._client = client
        client = self._client
        if self.on_worker is not None:
            # The workers' notes (started there, the script's pid) come here only when
            # someone shows them: otherwise the scheduler forwards nothing per attempt
            # (the at-most-once plugin reads them there, a stop goes to every worker,
            # and a lost attempt's first worker and pid come back with its re-run).
            client.subscribe_topic(self._topic, self._on_topic)
        await self._register_at_most_once(client)
        if self.export == "worker":
            from .dask_plugin import ExportPlugin

            await client.register_plugin(
                ExportPlugin(self.worker_export, self._plugin), name=self._plugin
            )

    @staticmethod
    async def _register_at_most_once(client: Any) -> None:
        """The scheduler's AtMostOnce plugin (one per scheduler, kept if there)."""
        from .dask_scheduler import PLUGIN_NAME, AtMostOnce

        try:
            await client.register_plugin(AtMostOnce(), name=PLUGIN_NAME)
        except Exception as exc:  # said with what to do
            raise ClusterError(
                f"the Dask scheduler at {client.scheduler.address} refused aiorunner's "
                f"at-most-once plugin ({type(exc).__name__}: {exc}); it is needed so a task "
                "Dask re-runs after a worker death does not run its script twice: install "
                "aiorunner where the scheduler runs (it unpickles each task, as the workers "
                "do) and let it unpickle (distributed.scheduler.pickle: true)"
            ) from exc

    def _config_key(self, config: TracingConfig | None) -> str:
        """``config_key(config)``, computed once per configuration object."""
        cached = self._config_keys.get(id(config))
        if cached is None or cached[0] is not config:
            cached = self._config_keys[id(config)] = (config, config_key(config))
        return cached[1]

    def _on_topic(self, event: tuple[float, Any]) -> None:
        """A worker's note that an attempt started there (and its script's pid)."""
        message = event[1]
        if not isinstance(message, dict):
            return
        entry = self._under_way.get(message.get("key", ""))
        if entry is None:
            return
        worker = message.get("worker")
        if message.get("pid") is not None:
            entry[2] = message["pid"]
        if worker and worker != entry[1]:
            entry[1] = worker
            if self.on_worker is not None:
                self.on_worker(entry[0], worker)

    # -- one attempt ---------------------------------------------------------------------------

    async def run(self, attempt: Attempt) -> RunResult:
        """Run the attempt as one Dask task; cancellation stops its script on the worker."""
        job = attempt.job
        if not isinstance(job, Job):
            raise ConfigError(
                f"DaskExecutor runs Job specs and script paths; job {attempt.name!r} is a "
                "ScriptRunner object, which holds callbacks and cannot leave this process: "
                "give aiorunner.Job(script, args, ...) instead"
            )
        client = await self._connected()
        session = attempt.session
        if session is None:
            from .._export.session import aget_default_session

            session = await aget_default_session()
        key = (
            f"aiorunner-{_KEY_SAFE.sub('_', attempt.name)[:60]}-{attempt.number}-{uuid.uuid4().hex}"
        )
        span = session.tracer().start_span(
            "dask.task",
            context=attempt.context,
            kind=SpanKind.CLIENT,
            attributes={
                JOB_ATTRIBUTE: attempt.name,
                ATTEMPT_ATTRIBUTE: attempt.number,
                "aiorunner.dask.key": key,
                "aiorunner.dask.scheduler": self.address,
                "aiorunner.script": job.script,
            },
        )
        carrier: dict[str, str] = {}
        context = span.get_span_context()
        if context.is_valid:
            TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
            session.watch_trace(context.trace_id)
            if self.export == "client":
                # The run's records and points are counted per trace from now on too.
                for pipeline in (session.logs, session.metrics):
                    if pipeline is not None:
                        pipeline.watch_trace(context.trace_id)
        script_bytes = None
        if self.ship_script:
            script_bytes = await _read_script(job.script)
        resources = {**self.resources, **job.resources}
        spec_config = session.config if session.enabled else None
        spec = TaskSpec(
            job=job,
            name=attempt.name,
            number=attempt.number,
            key=key,
            timeout=attempt.timeout,
            carrier=carrier,
            config=spec_config,
            runner_options=self.runner_options,
            export=self.export,
            script_bytes=script_bytes,
            topic=self._topic,
            plugin=self._plugin if self.export == "worker" else None,
            config_key=self._config_key(spec_config),
        )
        self._under_way[key] = [attempt.name, None, None]
        started_at = time.time()
        t0 = time.perf_counter()
        future = client.submit(
            run_attempt,
            spec,
            key=key,
            pure=False,
            retries=0,
            resources=resources or None,
        )
        reply: dict[str, Any] | None = None
        try:
            try:
                reply = await self._outcome(future)
            except BaseException:
                # Cancelled (fail-fast, Ctrl-C, caller): stop the script on its worker and
                # wait, bounded, for its spans and the word that its process group is gone.
                with anyio.CancelScope(shield=True):
                    stopped = await self._stop(client, key, future)
                    if stopped is not None:
                        await self._bring_home(session, stopped, context.trace_id)
                    ended = stopped.get("result") if stopped is not None else None
                    self._record_run(
                        session,
                        attempt.name,
                        ended if isinstance(ended, RunResult) else None,
                        context,
                        time.perf_counter() - t0,
                        cancelled=True,
                    )
                    span.set_attribute("error.type", "cancelled")
                    span.set_status(Status(StatusCode.ERROR, "cancelled"))
                    self._end_span(span, stopped)
                raise
            result = self._result(
                attempt, reply, self._under_way[key], started_at, time.perf_counter() - t0
            )
            if reply.get("status") not in ("ran", "cancelled") and context.is_valid:
                # No run came back: the result points at the client's span of the task.
                result = dataclasses.replace(
                    result,
                    trace_id=format(context.trace_id, "032x"),
                    span_id=format(context.span_id, "016x"),
                )
            handed = await self._bring_home(session, reply, context.trace_id)
            self._record_run(session, attempt.name, result, context, result.duration)
            if not result.success:
                span.set_attribute("error.type", _error_type(result, reply))
                span.set_status(Status(StatusCode.ERROR, result.error or "failed"))
            self._end_span(span, reply)
            if context.is_valid and context.trace_flags.sampled:
                timeout = session.config.export_timeout
                with anyio.move_on_after((timeout or 30.0) + 1.0):
                    if self.export == "client":
                        report = await session.flush_run(context.trace_id, timeout=timeout)
                        report = _with_worker_counts(report, result.export, handed)
                    else:
                        report = await session.flush_trace(context.trace_id, timeout=timeout)
                    result = dataclasses.replace(result, export=report)
        finally:
            self._under_way.pop(key, None)
            # Nothing else to clear on the scheduler: the task was the only state.
            future.release()
        if self.on_output is not None:
            for stream, data in (("stdout", result.stdout_bytes), ("stderr", result.stderr_bytes)):
                if data:
                    self.on_output(attempt.name, stream, data)
        return result

    async def _outcome(self, future: Any) -> dict[str, Any]:
        """The task's reply, or a reply that says why there is none (never raises for
        what happened on the cluster; cancellation of the caller propagates)."""
        distributed = self._distributed
        try:
            reply: dict[str, Any] = await future.result()
        except distributed.client.FutureCancelledError as exc:
            # Not our own cancellation (that is asyncio's CancelledError itself): the
            # scheduler dropped the task, e.g. its connection broke.
            return {"status": "scheduler-lost", "reason": getattr(exc, "reason", str(exc))}
        except Exception as exc:  # noqa: BLE001 - the task's own error, or the cluster's
            if type(exc).__name__ == "KilledWorker":
                return {"status": "lost", "reason": str(exc)}
            if isinstance(exc, OSError) or type(exc).__name__ == "CommClosedError":
                return {"status": "scheduler-lost", "reason": f"{type(exc).__name__}: {exc}"}
            return {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
        return reply

    async def _stop(self, client: Any, key: str, future: Any) -> dict[str, Any] | None:
        """Stop the attempt on its worker; return the task's reply once it stopped."""
        grace = float(self.runner_options.get("kill_grace", 5.0))
        entry = self._under_way.get(key)
        worker = entry[1] if entry is not None else None
        with anyio.move_on_after(grace + STOP_MARGIN):
            try:
                # The worker that said the attempt started there; else every worker (the
                # task may be queued on any of them, or start on one meanwhile: a stop
                # that comes first is remembered there and the task does not run).
                await client.run(
                    stop_attempt, key, workers=[worker] if worker else None, on_error="ignore"
                )
                return await self._outcome(future)
            except Exception:  # the cluster is gone: nothing more to stop
                logger.debug("stopping %s failed", key, exc_info=True)
        return None

    async def _bring_home(
        self, session: Session, reply: Mapping[str, Any], trace_id: int
    ) -> int | None:
        """
        Hand what the worker sent to this process's session: its spans, then its log
        records and metric points (ids as the worker made them: records tied to the
        run's spans, exemplars to its trace), waiting for room in those pipelines as a
        local run does, at most :data:`HAND_OVER_TIMEOUT`; what cannot be handed over,
        and the records the worker made but could not send, are counted dropped for the
        run's trace. Returns the log records handed over (None: no run's records).
        """
        data = reply.get("spans")
        if data:
            from .._export.otlp_json import decode_line

            try:
                spans = decode_line(data)
            except ValueError:
                logger.warning("the spans a Dask task sent home could not be read; dropped")
            else:
                session.submit_spans(spans)
        if self.export != "client" or not trace_id:
            return None
        worker_result = reply.get("result")
        worker_report = worker_result.export if isinstance(worker_result, RunResult) else None
        handed: int | None = None
        logs = session.logs
        if logs is not None:
            from .._export.logs import decode_logs_request

            records = await self._decode(reply.get("logs"), decode_logs_request, "log records")
            handed = await _hand_over(logs, records, trace_id)
            if worker_report is not None:
                # Made on the worker, but not among what came home: the worker's
                # pipeline, or its collector's bound, dropped them.
                missing = worker_report.log_records - int(reply.get("log_count") or 0)
                if missing > 0:
                    logs.count_dropped(trace_id, missing)
        metrics = session.metrics
        if metrics is not None:
            from .._export.metrics import decode_metrics_request

            points = await self._decode(reply.get("metrics"), decode_metrics_request, "metrics")
            for point in points:
                point.trace_id = trace_id  # not exported: the per-run accounting's key
            await _hand_over(metrics, points, trace_id)
        return handed

    async def _decode(self, data: Any, decode: Callable[..., list[Any]], what: str) -> list[Any]:
        """One OTLP/JSON line a task sent, decoded (a long one in a worker thread)."""
        if not data:
            return []
        resources = self._resources

        def read() -> list[Any]:
            return decode(json.loads(data), resource_cache=resources)

        try:
            if len(data) <= DECODE_INLINE_MAX:
                return read()
            return await anyio.to_thread.run_sync(read)
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning(
                "the %s a Dask task sent home could not be read (%s); dropped", what, exc
            )
            return []

    def _record_run(
        self,
        session: Session,
        job: str,
        result: RunResult | None,
        context: SpanContext,
        duration: float,
        *,
        cancelled: bool = False,
    ) -> None:
        """
        The attempt's run-level instruments (``aiorunner.run.duration`` with an exemplar
        naming the run's trace and root span, ``aiorunner.runs``, ``.memory.peak``, the
        export health counters), in this session's meter, as a local run records them:
        with ``export="client"`` the worker's session records none, so each run counts
        once, in one series for the whole batch. An attempt whose run never came back
        (a lost worker) counts as failed, its exemplar the client's span of the task.
        """
        meter = session.meter
        pipeline = session.metrics
        if self.export != "client" or meter is None or pipeline is None:
            return
        if not context.is_valid or not context.trace_flags.sampled:
            return
        if cancelled or (result is not None and result.cancelled):
            outcome = "cancelled"
        elif result is not None and result.success:
            outcome = "success"
        elif result is not None and result.timed_out:
            outcome = "timeout"
        else:
            outcome = "failed"
        trace_id, span_id = context.trace_id, context.span_id
        peak = None
        if result is not None:
            duration = result.duration if result.duration is not None else duration
            run_trace = int(result.trace_id or "0", 16)
            if run_trace == trace_id:
                span_id = int(result.span_id or "0", 16) or span_id
            value = result.metrics.get("memory_rss_peak_bytes") if result.metrics else None
            peak = int(value) if value else None
        points = meter.record_run(
            job=job,
            outcome=outcome,
            duration=float(duration),
            peak_bytes=peak,
            trace_id=trace_id,
            span_id=span_id,
            resource=session.resource,
        )
        for point in points:
            pipeline.emit(point)

    @staticmethod
    def _end_span(span: Any, reply: Mapping[str, Any] | None) -> None:
        if reply is not None and reply.get("worker"):
            span.set_attribute("aiorunner.dask.worker", reply["worker"])
            span.set_attribute("host.name", reply.get("host") or "")
        span.end()

    def _result(
        self,
        attempt: Attempt,
        reply: Mapping[str, Any],
        under_way: list[Any],
        started_at: float,
        duration: float,
    ) -> RunResult:
        job = attempt.job
        assert isinstance(job, Job)
        status = reply.get("status")
        worker = reply.get("worker")
        if status in ("ran", "cancelled"):
            result: RunResult = reply["result"]
            error = result.error
            if result.pid is None and error is not None:
                # Never started there (missing script, missing dependency): say where.
                error = f"{error} (on Dask worker {worker}, host {reply.get('host')})"
            return dataclasses.replace(result, error=error, worker=worker)
        # The worker that ran the script first, and its pid: as the scheduler's plugin
        # handed them to the re-run, else as the worker told us.
        first = reply.get("first") or (None, None)
        first_worker = first[0] or under_way[1]
        pid = first[1] if first[1] is not None else under_way[2]
        if status == "lost":
            where = f"Dask worker {first_worker}" if first_worker else "its Dask worker"
            error = (
                f"worker lost: {where} died while running job {attempt.name!r}; the script "
                "was not run again (Dask re-ran the task; aiorunner refused)"
            )
            if reply.get("reason"):
                error += f" ({reply['reason']})"
            error += "; give retries=N to run it again"
        elif status == "scheduler-lost":
            error = (
                f"scheduler lost: the connection to the Dask scheduler at {self.address} "
                f"broke while job {attempt.name!r} ran ({reply.get('reason')}); whether "
                "its script finished is unknown"
            )
        else:
            error = f"the Dask task of job {attempt.name!r} failed: {reply.get('reason')}"
        return RunResult(
            script=job.script,
            success=False,
            error=error,
            started_at=started_at,
            duration=duration,
            pid=pid,
            worker=first_worker or worker,
        )


async def _hand_over(pipeline: ExportPipeline, items: list[Any], trace_id: int) -> int:
    """Emit ``items`` while ``pipeline`` has room, waiting (polling: it has no event for
    it) at most :data:`HAND_OVER_TIMEOUT`; what is still waiting then is counted as
    dropped for ``trace_id``. Returns how many were handed over."""
    total = len(items)
    index = 0
    emit = pipeline.emit
    with anyio.move_on_after(HAND_OVER_TIMEOUT):
        while True:
            while index < total and pipeline.has_room():
                emit(items[index])
                index += 1
            if index == total:
                break
            await anyio.sleep(0.01)
    if index < total:
        pipeline.count_dropped(trace_id, total - index)
    return index


def _with_worker_counts(
    report: ExportReport, worker: ExportReport | None, handed: int | None
) -> ExportReport:
    """The client's report of a Dask run, with what only the worker knows: the run's
    in-script channel, its log records past the cap; ``log_records`` are those handed to
    this session's logs pipeline (what a local run's report counts)."""
    if worker is None:
        return report
    return dataclasses.replace(
        report,
        inscript=worker.inscript,
        log_records=handed or 0,
        log_records_over_cap=worker.log_records_over_cap if handed is not None else 0,
    )


def _error_type(result: RunResult, reply: Mapping[str, Any]) -> str:
    status = reply.get("status")
    if status == "lost":
        return "worker_lost"
    if status == "scheduler-lost":
        return "scheduler_lost"
    if result.timed_out:
        return "timeout"
    if result.cancelled:
        return "cancelled"
    return "script_failed"


def _check_resources(value: Any, what: str) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str)
        and k
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
        and v > 0
        for k, v in value.items()
    ):
        raise ConfigError(
            f"{what} must map resource names to positive amounts (e.g. {{'GPU': 1}}), got {value!r}"
        )
    return {k: float(v) for k, v in value.items()}


async def _read_script(path: str) -> bytes:
    def read() -> bytes:
        with open(path, "rb") as f:
            return f.read()

    try:
        return await anyio.to_thread.run_sync(read)
    except OSError as exc:
        raise ConfigError(
            f"ship_script: cannot read {path} to send it to the workers: "
            f"{exc.strerror or exc}; check the path"
        ) from None
