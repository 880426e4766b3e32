"""
``ScriptRunner``: one script, one run, one trace.

The run is the seed's span tree::

    ScriptRunner
    ├─ extract_metadata        path, size, sha256, PEP 723 inline metadata
    ├─ validate_dependencies   imports (ast) and PEP 723 deps vs the target interpreter
    ├─ setup_environment       child env, cwd
    ├─ execute_script          spawn in its own process group; pumps, monitor, wait
    ├─ collect_metrics         samples -> RunResult.metrics
    └─ upload_traces           await export of this run's spans

``run()`` never raises for what the script did: every script-level failure becomes a
``RunResult`` with ``success=False`` and a human ``error``, and ERROR status on the span
where it happened and on the root. Cancellation kills the process group, ends and flushes
the spans, then propagates.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from .._config import TracingConfig, check_names
from .._context.propagation import extract_parent, get_propagator
from .._context.tracer import current_session
from .._exceptions import ConfigError, UsageError
from .._result import RunResult
from .phases import _Outcome, _Run

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

    from .._context.tracer import RunnerTracer
    from .._export.session import Session
    from .._monitor.monitor import ProcessTreeMonitor, Sample
    from .process import OutputCallback
    from .slots import ProcessSlot

__all__ = ["ScriptRunner"]

DEFAULT_TAIL_BYTES = 1 << 20
DEFAULT_KILL_GRACE = 5.0

_loaded_propagators: set[Any] = set()


class ScriptRunner:
    """
    Runs one script as a subprocess and traces the run.

    Args:
        script: path of the script. A ``.py`` file runs with ``interpreter``; anything
            else runs directly and must be executable.
        args: arguments for the script. ``{{traceparent}}`` in an argument becomes the
            ``execute_script`` span's W3C traceparent.
        interpreter: the Python to run ``.py`` scripts with (default ``sys.executable``);
            given explicitly, it runs any script.
        cwd: working directory of the script (default: ours).
        env: variables added to (or overriding) the inherited environment.
        timeout: seconds before the script's process group gets SIGTERM, then SIGKILL
            after ``kill_grace`` seconds.
        config: a :class:`TracingConfig`; default: from the environment.
        session: the :class:`Session` (export pipeline) to use; default: the process-wide
            one for ``config``.
        validate_dependencies: check imports and PEP 723 dependencies before spawning.
        monitor: sample CPU, memory and I/O of the whole process tree while it runs.
        monitor_interval: seconds between samples (default from config, 0.5 s).
        on_sample: called with each live :class:`Sample` (off by default).
        max_memory_bytes / max_cpu_seconds: kill the run when its tree crosses these.
        passthrough: copy the script's output to our stdout/stderr live.
        on_output: called with ``("stdout" | "stderr", bytes)`` as output arrives.
        max_output_bytes: size of the kept stdout/stderr tails (default 1 MiB each).
        kill_grace: seconds between SIGTERM and SIGKILL.
        context / carrier: the parent trace context (an OTel Context, or W3C headers).
        in_script_tracing: spans a Python script makes with the OpenTelemetry API become
            children of ``execute_script`` and leave through this runner's pipeline
            (default: ``config.in_script_tracing``, on).
        instrument: instrumentation names loaded inside a Python script at its start
            (``["requests"]``: opentelemetry-instrumentation-requests).
    """

    def __init__(
        self,
        script: str | os.PathLike[str],
        args: Sequence[str] = (),
        *,
        interpreter: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        config: TracingConfig | None = None,
        session: Session | None = None,
        validate_dependencies: bool = True,
        monitor: bool = True,
        monitor_interval: float | None = None,
        on_sample: Callable[[Sample], object] | None = None,
        max_memory_bytes: int | None = None,
        max_cpu_seconds: float | None = None,
        passthrough: bool = False,
        on_output: OutputCallback | None = None,
        max_output_bytes: int = DEFAULT_TAIL_BYTES,
        kill_grace: float = DEFAULT_KILL_GRACE,
        context: Context | None = None,
        carrier: Mapping[str, str] | None = None,
        in_script_tracing: bool | None = None,
        instrument: Sequence[str] = (),
    ) -> None:
        if not isinstance(script, (str, os.PathLike)):
            raise ConfigError(f"script must be a path (str or os.PathLike), got {script!r}")
        if isinstance(args, (str, bytes)) or not all(isinstance(a, str) for a in args):
            raise ConfigError(
                f"args must be a sequence of str (e.g. ['--day', '2024-10-23']), got {args!r}"
            )
        if env is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise ConfigError("env must map str to str; convert values with str()")
        for name, value in (("timeout", timeout), ("monitor_interval", monitor_interval)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0
            ):
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if not isinstance(max_output_bytes, int) or max_output_bytes < 0:
            raise ConfigError(f"max_output_bytes must be an int >= 0, got {max_output_bytes!r}")
        if kill_grace < 0:
            raise ConfigError(f"kill_grace must be >= 0 seconds, got {kill_grace!r}")
        self.script = os.fspath(script)
        self.args = tuple(args)
        self.interpreter = os.fspath(interpreter) if interpreter is not None else None
        self.cwd = os.fspath(cwd) if cwd is not None else None
        self.env = dict(env or {})
        self.timeout = float(timeout) if timeout is not None else None
        self.validate_dependencies = validate_dependencies
        self.monitor = monitor
        self.monitor_interval = monitor_interval
        self.on_sample = on_sample
        self.max_memory_bytes = max_memory_bytes
        self.max_cpu_seconds = max_cpu_seconds
        self.passthrough = passthrough
        self.on_output = on_output
        self.max_output_bytes = max_output_bytes
        self.kill_grace = float(kill_grace)
        self.context = context
        self.carrier = dict(carrier) if carrier is not None else None
        #: Spans a Python script makes join the run's trace (None: config.in_script_tracing).
        self.in_script_tracing = in_script_tracing
        #: Instrumentations loaded inside a Python script (opentelemetry-instrumentation-*).
        self.instrument = check_names(instrument)
        #: Seed API: set False to run without a trace (RunResult is still filled).
        self.enable_tracing = True
        #: Seed API: attributes added to the root span.
        self.tracing_attributes: dict[str, Any] = {}
        self._config = config
        self._session = session
        self._tracer: RunnerTracer | None = None
        self._monitor: ProcessTreeMonitor | None = None
        self._monitor_event: asyncio.Event | None = None
        #: Set by run_many's LocalExecutor: taken right before the spawn, given back at
        #: the script's exit (see slots.ProcessSlot).
        self._slot: ProcessSlot | None = None
        #: Set by run_many's LocalExecutor (Attempt.on_late_result): gets this run's
        #: result when the run is cancelled after the script ended, during upload_traces.
        self._on_late_result: Callable[[RunResult], None] | None = None

    # -- configuration ----------------------------------------------------------------

    def set_tracing_config(self, config: TracingConfig) -> None:
        """Seed API: use ``config`` for this runner's traces (validated now)."""
        if not isinstance(config, TracingConfig):
            raise ConfigError(f"set_tracing_config() takes a TracingConfig, got {config!r}")
        self._config = config.resolve()
        if self._session is not None and self._session.config is not self._config:
            self._session = None
        if self._config.enabled is False:
            self.enable_tracing = False

    @property
    def config(self) -> TracingConfig:
        if self._config is None or not self._config.resolved:
            self._config = (self._config or TracingConfig()).resolve()
        return self._config

    @property
    def session(self) -> Session:
        """The export pipeline this runner's spans go through."""
        if self._session is None:
            from .._export.session import get_default_session

            self._session = get_default_session(self.config)
        return self._session

    @property
    def tracer(self) -> RunnerTracer:
        """Seed API: ``runner.tracer.trace(name)`` makes spans in this runner's session."""
        if self._tracer is None:
            from .._context.tracer import RunnerTracer

            self._tracer = RunnerTracer(
                lambda: self.session, self._asession, lambda: self.enable_tracing
            )
        return self._tracer

    async def _asession(self) -> Session:
        """:attr:`session` for async code: a default session is made off the loop."""
        if self._session is None:
            from .._export.session import aget_default_session

            self._session = await aget_default_session(self.config)
        return self._session

    # -- live readings ------------------------------------------------------------------

    def _monitor_started(self, monitor: ProcessTreeMonitor) -> None:
        self._monitor = monitor
        if self._monitor_event is None:
            self._monitor_event = asyncio.Event()
        self._monitor_event.set()

    async def live(self) -> AsyncIterator[Sample]:
        """
        Yield live :class:`Sample` readings of the next (or current) run of this runner,
        until its monitoring ends. Iterate it beside ``run()``::

            async with anyio.create_task_group() as tg:
                tg.start_soon(runner.run)
                async for sample in runner.live():
                    print(sample.rss_bytes)

        Costs nothing unless iterated; ``monitor=False`` runs yield nothing.
        """
        if not self.monitor:
            return
        if self._monitor is None or self._monitor.done:
            self._monitor = None
            if self._monitor_event is None or self._monitor_event.is_set():
                self._monitor_event = asyncio.Event()
            await self._monitor_event.wait()
            if self._monitor is None:  # the run ended before its script started
                return
        async for sample in self._monitor.live():
            yield sample

    # -- running ------------------------------------------------------------------------

    def run_script(self) -> RunResult:
        """
        Seed API: the synchronous twin of :meth:`run`.

        Raises:
            UsageError: called from inside a running event loop (use ``await run()``).
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.run())
        raise UsageError(
            "run_script() was called from inside a running event loop, where it would "
            "block the loop; use `result = await runner.run()` instead"
        )

    async def run(
        self, *, context: Context | None = None, carrier: Mapping[str, str] | None = None
    ) -> RunResult:
        """
        Run the script once and return what happened. Never raises for a script-level
        failure (see ``RunResult.error``).

        Args:
            context / carrier: the parent trace context of this run (an OTel Context, or
                W3C headers), overriding the runner's own ``context=``/``carrier=``.

        Raises:
            ConfigError: invalid configuration.
        """
        config = self.config
        session: Session | None = None
        if self.enable_tracing and config.enabled:
            if self._session is None:
                from .._export.session import aget_default_session

                self._session = await aget_default_session(config)
            session = self._session
        tracer: Tracer = trace.NoOpTracer()
        tracing = False
        if session is not None and session.enabled:
            tracer = session.tracer()
            tracing = True
        propagators = tuple(config.propagators or ())
        # An unknown name given in code raises; one from OTEL_PROPAGATORS warns.
        explicit = config.sources.get("propagators") == "argument"
        if (propagators, explicit) not in _loaded_propagators:
            # Loading propagators scans entry points (file system): not on the loop.
            await anyio.to_thread.run_sync(
                functools.partial(get_propagator, propagators, explicit=explicit)
            )
            _loaded_propagators.add((propagators, explicit))
        parent = extract_parent(
            propagators,
            context=context if context is not None else self.context,
            carrier=carrier if carrier is not None else self.carrier,
        )
        started_at = time.time()
        t0 = time.perf_counter()
        root_attrs: dict[str, Any] = {"aiorunner.script": self.script}
        root_attrs.update(self.tracing_attributes)
        root = tracer.start_span("ScriptRunner", context=parent, attributes=root_attrs)
        if not tracing:
            root = _untraced_span(parent)
        root_ctx = trace.set_span_in_context(root, parent)
        outcome = _Outcome()
        run = _Run(self, config, tracer, root, root_ctx, outcome, t0)
        run.session = session
        # The run's root is the current span while it runs: spans made by callbacks of
        # the run (on_output, on_sample, @trace_span code they call) join its trace.
        token = otel_context.attach(root_ctx)
        session_token = current_session.set(session) if session is not None else None
        try:
            await run.execute()
            if self._monitor_event is not None and not self._monitor_event.is_set():
                self._monitor_event.set()  # no script was started: live() ends
        except BaseException as exc:
            if self._monitor_event is not None:
                self._monitor_event.set()
            if isinstance(exc, Exception):
                raise
            outcome.cancelled = True
            if outcome.error is None:
                outcome.error = "run was cancelled"
                outcome.error_type = "cancelled"
            with anyio.CancelScope(shield=True):
                await run.finish(session, cancelled=True)
            raise
        finally:
            if session_token is not None:
                current_session.reset(session_token)
            otel_context.detach(token)
        duration = time.perf_counter() - t0
        try:
            await run.finish(session)
        except anyio.get_cancelled_exc_class():
            # Cancelled while the spans were leaving (Ctrl-C or fail_fast in run_many):
            # the script had ended, so what it did is known and is handed over before
            # the cancellation goes on (the batch reports it, not "cancelled").
            if self._on_late_result is not None:
                self._on_late_result(_result(self, outcome, root, started_at, duration))
            raise
        return _result(self, outcome, root, started_at, duration)


def _result(
    runner: ScriptRunner, outcome: _Outcome, root: Span, started_at: float, duration: float
) -> RunResult:
    sc = root.get_span_context()
    return RunResult(
        script=runner.script,
        success=outcome.error is None,
        exit_code=outcome.exit_code,
        signal=outcome.signal,
        timed_out=outcome.timed_out,
        cancelled=outcome.cancelled,
        error=outcome.error,
        trace_id=format(sc.trace_id, "032x"),
        span_id=format(sc.span_id, "016x"),
        started_at=started_at,
        duration=duration,
        pid=outcome.pid,
        command=outcome.command,
        stdout_bytes=outcome.stdout,
        stderr_bytes=outcome.stderr,
        stdout_truncated=outcome.stdout_truncated,
        stderr_truncated=outcome.stderr_truncated,
        metrics=outcome.metrics,
        export=(
            dataclasses.replace(outcome.export, inscript=outcome.inscript)
            if outcome.export is not None and outcome.inscript is not None
            else outcome.export
        ),
    )


def _untraced_span(parent: Context | None) -> Span:
    """A non-recording root with fresh valid ids, so a run without tracing still has a
    trace id to log and children still get a traceparent (sampled flag off)."""
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    gen = RandomIdGenerator()
    parent_sc = trace.get_current_span(parent).get_span_context()
    trace_id = parent_sc.trace_id if parent_sc.is_valid else gen.generate_trace_id()
    return NonRecordingSpan(
        SpanContext(trace_id, gen.generate_span_id(), is_remote=False, trace_flags=TraceFlags(0))
    )
