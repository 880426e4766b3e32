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

import ast
import asyncio
import math
import os
import re
import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags

from . import _deps, _offload
from ._bootstrap import precompile
from ._config import TracingConfig
from ._exceptions import ConfigError, UsageError
from ._inscript import open_channel
from ._instrument import check_names
from ._metadata import ScriptInfo, ScriptProblem, read_script
from ._process import ChildProcess, OutputCallback
from ._propagation import extract_parent, get_propagator, inject_env
from ._redact import Scrubber, redact_args, secret_values
from ._result import ExportReport, RunResult
from ._tracer import current_session

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Mapping, Sequence

    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

    from ._executor import ProcessSlot
    from ._monitor import ProcessTreeMonitor, Sample
    from ._monitor_readers import Reader
    from ._session import Session
    from ._tracer import RunnerTracer

__all__ = ["ScriptRunner"]

DEFAULT_TAIL_BYTES = 1 << 20
STDERR_EVENT_BYTES = 4096
TRACEBACK_BYTES = 2048
DEFAULT_KILL_GRACE = 5.0
# After the script exits, how long its output pipes may stay open (held by a descendant)
# before the leftovers of its process group are terminated.
PIPE_GRACE = 0.5
# A cancelled run (Ctrl-C, fail_fast, a caller's timeout) still flushes its spans, within this.
CANCELLED_FLUSH_TIMEOUT = 5.0
TRACEPARENT_PLACEHOLDER = "{{traceparent}}"

_loaded_propagators: set[Any] = set()
_AST_LOCK = threading.Lock()
_interpreter_cache: dict[tuple[str, str], _deps.InterpreterInventory | str] = {}
#: Top-level imports of scripts that parsed, by the sha256 of their source.
_imports_cache: dict[str, tuple[str, ...]] = {}
_IMPORTS_CACHE_SIZE = 512


@dataclass
class _Outcome:
    """What the run learned, filled phase by phase."""

    info: ScriptInfo | None = None
    command: tuple[str, ...] = ()
    pid: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    cancelled: bool = False
    error: str | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_truncated: int = 0
    stderr_truncated: int = 0
    metrics: dict[str, float | int] = field(default_factory=dict)
    export: ExportReport | None = None


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
        #: the script's exit (see _executor.ProcessSlot).
        self._slot: ProcessSlot | None = None

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
            from ._session import get_default_session

            self._session = get_default_session(self.config)
        return self._session

    @property
    def tracer(self) -> RunnerTracer:
        """Seed API: ``runner.tracer.trace(name)`` makes spans in this runner's session."""
        if self._tracer is None:
            from ._tracer import RunnerTracer

            self._tracer = RunnerTracer(
                lambda: self.session, self._asession, lambda: self.enable_tracing
            )
        return self._tracer

    async def _asession(self) -> Session:
        """:attr:`session` for async code: a default session is made off the loop."""
        if self._session is None:
            from ._session import aget_default_session

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
                from ._session import aget_default_session

                self._session = await aget_default_session(config)
            session = self._session
        tracer: Tracer = trace.NoOpTracer()
        tracing = False
        if session is not None and session.enabled:
            tracer = session.tracer()
            tracing = True
        propagators = tuple(config.propagators or ())
        if propagators not in _loaded_propagators:
            # Loading propagators scans entry points (file system): not on the loop.
            await anyio.to_thread.run_sync(get_propagator, propagators)
            _loaded_propagators.add(propagators)
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
            outcome.error = outcome.error or "run was cancelled"
            with anyio.CancelScope(shield=True):
                await run.finish(session, cancelled=True)
            raise
        finally:
            if session_token is not None:
                current_session.reset(session_token)
            otel_context.detach(token)
        duration = time.perf_counter() - t0
        await run.finish(session)
        sc = root.get_span_context()
        return RunResult(
            script=self.script,
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
            export=outcome.export,
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


#: On ``execute_script`` under run_many: seconds the run waited for a process slot.
SLOT_WAIT_ATTRIBUTE = "aiorunner.slot_wait_seconds"


class _Failure(Exception):
    """A phase failed in a way that ends the run (not an error of aiorunner's)."""


class _Run:
    """The phases of one run; a helper object so ``ScriptRunner`` stays reusable."""

    def __init__(
        self,
        runner: ScriptRunner,
        config: TracingConfig,
        tracer: Tracer,
        root: Span,
        root_ctx: Context,
        outcome: _Outcome,
        t0: float,
    ) -> None:
        self.runner = runner
        self.config = config
        self.tracer = tracer
        self.root = root
        self.root_ctx = root_ctx
        self.outcome = outcome
        self.t0 = t0
        self.child_env: dict[str, str] = {}
        self.exec_span: Span | None = None
        self.session: Session | None = None
        self.execution_time = 0.0
        self.script_path = runner.script
        self.cwd_path = runner.cwd or "."
        self.cwd_ok = True
        self._scrubber: Scrubber | None = None
        self.slot_wait = 0.0

    def span(self, name: str, **kwargs: Any) -> Span:
        return self.tracer.start_span(name, context=self.root_ctx, **kwargs)

    def scrub(self, text: str) -> str:
        """``text`` without the secret values this run knows of. Scripts echo their
        arguments and environment (argparse errors, tracebacks): what leaves on a span
        is scrubbed. Built on first use, so successful runs pay nothing."""
        if self._scrubber is None:
            env = self.child_env or {**os.environ, **self.runner.env}
            self._scrubber = Scrubber(secret_values(self.runner.args, env))
        return self._scrubber(text)

    def fail(self, span: Span, message: str, exc: BaseException | None = None) -> None:
        self.outcome.error = self.outcome.error or message
        if exc is not None:
            span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, self.scrub(message)))

    async def execute(self) -> None:
        try:
            info = await self.inspect()
            self.setup_environment()
            await self.execute_script(info)
        except _Failure:
            pass

    # -- extract_metadata + validate_dependencies -------------------------------------

    def _interpreter(self) -> str:
        return self.runner.interpreter or sys.executable

    async def inspect(self) -> ScriptInfo:
        runner = self.runner
        explicit_python = True if runner.interpreter is not None else None
        path = runner.script
        if runner.cwd is not None and not os.path.isabs(path):
            path = os.path.join(runner.cwd, path)
        interpreter = self._interpreter()
        if runner.interpreter is None:
            own = not any(k in runner.env for k in _FOREIGN_ENV)
        else:  # realpath reads links: off the loop
            own = await anyio.to_thread.run_sync(_is_own_interpreter, interpreter, runner.env)
        inventory: _deps.InterpreterInventory | str | None = None
        if runner.validate_dependencies and not own:
            inventory = await _inventory_for(interpreter, runner.env)

        def work() -> tuple[Any, ...]:
            # Everything that touches the file system happens here, off the loop.
            self.script_path = os.path.abspath(path)
            self.cwd_path = os.path.abspath(runner.cwd or os.getcwd())
            self.cwd_ok = runner.cwd is None or os.path.isdir(runner.cwd)
            t_meta = time.time_ns()
            try:
                info: ScriptInfo | ScriptProblem = read_script(path, python=explicit_python)
            except ScriptProblem as exc:
                info = exc
            t_meta_end = time.time_ns()
            report: _deps.DependencyReport | SyntaxError | None = None
            if isinstance(info, ScriptInfo) and info.is_python and runner.validate_dependencies:
                report = _check_dependencies(info, interpreter, own, inventory, runner.env)
            t_deps_end = time.time_ns()
            if own and isinstance(info, ScriptInfo) and info.is_python:
                precompile()  # the in-script bootstrap's .pyc: once per process
            return info, t_meta, t_meta_end, report, t_deps_end

        # Abandoned on cancel: reading a file nobody waits for is harmless.
        info, t_meta, t_meta_end, report, t_deps_end = await _offload.run_sync(
            work, abandon_on_cancel=True
        )
        self.root.set_attribute("code.filepath", self.script_path)
        # Attributes given at start: one call into the SDK per span rather than several.
        meta_span = self.span(
            "extract_metadata",
            start_time=t_meta,
            attributes=info.span_attributes() if isinstance(info, ScriptInfo) else None,
        )
        if isinstance(info, ScriptProblem):
            self.fail(meta_span, str(info), info)
            meta_span.end(end_time=t_meta_end)
            raise _Failure
        self.outcome.info = info
        if info.pep723_error:
            meta_span.add_event("pep723_invalid", {"error": info.pep723_error})
        meta_span.end(end_time=t_meta_end)

        deps_span = self.span(
            "validate_dependencies",
            start_time=t_meta_end,
            attributes={
                "aiorunner.dependencies.enabled": runner.validate_dependencies,
                "aiorunner.interpreter": interpreter,
            },
        )
        try:
            if isinstance(inventory, str):  # the probe itself failed
                self.fail(deps_span, inventory)
                raise _Failure
            if isinstance(report, SyntaxError):
                message = f"syntax error in {info.path} line {report.lineno}: {report.msg}" + (
                    f"\n    {report.text.rstrip()}" if report.text else ""
                )
                self.fail(deps_span, message, report)
                raise _Failure
            if info.pep723_error and runner.validate_dependencies:
                self.fail(deps_span, info.pep723_error)
                raise _Failure
            if isinstance(report, _deps.DependencyReport):
                deps_span.set_attribute("aiorunner.dependencies.imports", list(report.imports))
                if not report.ok:
                    deps_span.set_attribute(
                        "aiorunner.dependencies.missing",
                        [*report.missing_modules, *report.missing_distributions],
                    )
                    self.fail(deps_span, report.describe(interpreter))
                    raise _Failure
        finally:
            deps_span.end(end_time=t_deps_end)
        assert isinstance(info, ScriptInfo)
        return info

    # -- setup_environment ----------------------------------------------------------------

    def setup_environment(self) -> None:
        runner = self.runner
        # Names only: environment values are never exported (they hold secrets).
        span = self.span(
            "setup_environment",
            attributes={
                "aiorunner.cwd": self.cwd_path,
                "aiorunner.env.overridden": sorted(runner.env),
            },
        )
        env = _environ_copy()
        env.update(runner.env)
        self.child_env = env
        if not self.cwd_ok:
            self.fail(
                span, f"working directory does not exist: {runner.cwd}; create it or fix cwd="
            )
            span.end()
            raise _Failure
        span.end()

    # -- execute_script -----------------------------------------------------------------

    def _argv(self, info: ScriptInfo, traceparent: str | None) -> list[str]:
        args = list(self.runner.args)
        if traceparent is not None:
            args = [a.replace(TRACEPARENT_PLACEHOLDER, traceparent) for a in args]
        path = info.path
        if info.is_python:
            return [self._interpreter(), path, *args]
        return [path if os.path.dirname(path) else os.path.join(".", path), *args]

    async def execute_script(self, info: ScriptInfo) -> None:
        slot = self.runner._slot
        if slot is None:
            await self._execute_script(info)
            return
        # run_many: one of max_concurrency slots for the script's process, taken here (the
        # script read, its first spans made) and given back at its exit (its spans not yet
        # exported), so that this work overlaps with other scripts running.
        queued = time.perf_counter()
        await slot.acquire()
        self.slot_wait = time.perf_counter() - queued
        try:
            await self._execute_script(info)
        finally:
            slot.release(failed=self.outcome.error is not None)

    async def _execute_script(self, info: ScriptInfo) -> None:
        runner = self.runner
        outcome = self.outcome
        span = self.span(
            "execute_script",
            kind=trace.SpanKind.INTERNAL,
            # run_many: how long this run waited for a process slot (the gap before it).
            attributes={SLOT_WAIT_ATTRIBUTE: self.slot_wait} if self.slot_wait else None,
        )
        self.exec_span = span
        exec_ctx = trace.set_span_in_context(span, self.root_ctx)
        inject_env(tuple(self.config.propagators or ()), exec_ctx, self.child_env)
        argv = self._argv(info, self.child_env.get("TRACEPARENT"))
        outcome.command = tuple(argv)
        span.set_attributes(
            {"process.executable.path": argv[0], "process.command_args": redact_args(argv)}
        )
        if not info.is_python and not info.executable:
            self.fail(
                span,
                f"script is not executable: {info.path}; make it executable (chmod +x) "
                "or pass interpreter= to run it with one",
            )
            span.end()
            raise _Failure
        on_output = runner.on_output
        if runner.passthrough:
            on_output = _passthrough(on_output)
        channel = open_channel(
            self.session,
            self.config,
            span,
            self.child_env,
            python=info.is_python,
            enabled=runner.in_script_tracing,
            instrument=runner.instrument,
        )
        reader = None
        if runner.monitor:
            from ._monitor_readers import default_reader

            reader = default_reader()
        try:
            child = await ChildProcess.spawn(
                argv,
                cwd=runner.cwd,
                env=self.child_env,
                tail_limit=runner.max_output_bytes,
                on_output=on_output,
                pass_fds=(channel.child_fd,) if channel is not None else (),
            )
        except OSError as exc:
            if channel is not None:
                channel.close()
            self.fail(span, f"cannot start {argv[0]}: {exc.strerror or exc}", exc)
            span.end()
            raise _Failure from None
        outcome.pid = child.pid
        if runner._slot is not None:
            child.on_exit = runner._slot.exited
        span.set_attribute("process.pid", child.pid)
        if channel is not None:
            channel.child_started()
        t_start = time.perf_counter()
        monitor = self._make_monitor(child.pid, reader)
        limit_reason: list[str] = []
        try:
            async with anyio.create_task_group() as tg:
                wait_scope = anyio.CancelScope(
                    deadline=anyio.current_time() + runner.timeout
                    if runner.timeout is not None
                    else math.inf
                )
                if monitor is not None:

                    async def watch() -> None:
                        await monitor.run()
                        if monitor.limit_exceeded:
                            limit_reason.append(monitor.limit_exceeded)
                            wait_scope.cancel()

                    tg.start_soon(watch)
                if channel is not None:
                    channel.start_reading()
                with wait_scope:
                    await child.wait_exit_ready()
                if child.exit_ready:
                    if monitor is not None:
                        # A last reading of the zombie's final counters before reaping.
                        with anyio.move_on_after(1.0):
                            await monitor.stop()
                    child.reap()
                if not child.exited:
                    outcome.timed_out = not limit_reason
                    await child.terminate_group(runner.kill_grace)
                elif not await child.wait_output(PIPE_GRACE):
                    # A descendant holds the pipes: the run owns its group, end it.
                    await child.terminate_group(runner.kill_grace)
                await child.wait_output(1.0)
                if monitor is not None and not monitor.done:
                    # Only then: anyio's cancel() formats the task's repr (~50 µs a run).
                    tg.cancel_scope.cancel()
        except BaseException:
            with anyio.CancelScope(shield=True), anyio.move_on_after(runner.kill_grace + 2):
                await child.terminate_group(runner.kill_grace)
            self._record_exit(child, span, monitor, t_start)
            self.fail(span, "run was cancelled; its process group was terminated")
            span.end()
            raise
        finally:
            child.close()
            if channel is not None:
                channel.close()  # reads what the script wrote before it ended
        self._record_exit(child, span, monitor, t_start)
        code = child.returncode
        assert code is not None
        if limit_reason:
            self.fail(span, f"{limit_reason[0]}; the run was killed")
        elif outcome.timed_out:
            self.fail(
                span,
                f"script timed out after {runner.timeout:g} s; its process group got SIGTERM"
                f" (SIGKILL after {runner.kill_grace:g} s grace)",
            )
        elif code < 0:
            try:
                name = __import__("signal").Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            self.fail(span, f"script was killed by signal {-code} ({name})")
        elif code != 0:
            self._fail_exit(span, code, child)
        if outcome.error is not None:
            tail = child.stderr.last_lines(STDERR_EVENT_BYTES)
            if tail:
                span.add_event("script.stderr", {"stderr.tail": self.scrub(tail)})
        span.end()

    def _record_exit(self, child: ChildProcess, span: Span, monitor: Any, t_start: float) -> None:
        outcome = self.outcome
        self.execution_time = time.perf_counter() - t_start
        code = child.returncode
        attributes: dict[str, int] = {}
        if code is not None:
            if code < 0:
                outcome.signal = -code
                attributes["aiorunner.signal"] = -code
            else:
                outcome.exit_code = code
                attributes["process.exit.code"] = code
        outcome.stdout = child.stdout.getvalue()
        outcome.stderr = child.stderr.getvalue()
        outcome.stdout_truncated = child.stdout.truncated
        outcome.stderr_truncated = child.stderr.truncated
        attributes["aiorunner.stdout.bytes"] = child.stdout.total
        attributes["aiorunner.stderr.bytes"] = child.stderr.total
        span.set_attributes(attributes)
        metrics: dict[str, float | int] = {"execution_time_seconds": self.execution_time}
        if monitor is not None:
            metrics = dict(
                monitor.summary(
                    # Our own peak at the spawn bounds what Linux may have folded
                    # into the child's ru_maxrss at exec (our address space).
                    rusage=_own_maxrss(child.rusage, monitor.runner_peak_rss),
                    wall_seconds=self.execution_time,
                )
            )
            for name, attrs, ts in monitor.events(self.config.max_events):
                span.add_event(name, attrs, timestamp=ts)
        elif child.rusage is not None:
            metrics["cpu_user_seconds"] = child.rusage.ru_utime
            metrics["cpu_system_seconds"] = child.rusage.ru_stime
        outcome.metrics = metrics

    def _fail_exit(self, span: Span, code: int, child: ChildProcess) -> None:
        stderr = child.stderr.last_lines(TRACEBACK_BYTES * 4, max_lines=200)
        message = f"script exited with code {code}"
        tb = _python_traceback(stderr)
        if tb is not None:
            exc_type, exc_message, text = tb
            message += f": {exc_type}" + (f": {exc_message}" if exc_message else "")
            message += "\n" + text
            span.add_event(
                "exception",
                {
                    "exception.type": exc_type,
                    "exception.message": self.scrub(exc_message),
                    "exception.stacktrace": self.scrub(text),
                },
            )
        else:
            last = [line for line in stderr.splitlines() if line.strip()][-1:]
            if last:
                message += f": {last[0].strip()[:500]}"
        self.fail(span, message)

    def _make_monitor(self, pid: int, reader: Reader | None) -> Any:
        runner = self.runner
        if reader is None:
            return None
        from ._monitor import ProcessTreeMonitor

        monitor = ProcessTreeMonitor(
            pid,
            reader=reader,
            interval=float(runner.monitor_interval or self.config.monitor_interval or 0.5),
            on_sample=runner.on_sample,
            max_memory_bytes=runner.max_memory_bytes,
            max_cpu_seconds=runner.max_cpu_seconds,
        )
        runner._monitor_started(monitor)
        return monitor

    # -- collect_metrics + upload_traces ------------------------------------------------

    async def finish(self, session: Session | None, *, cancelled: bool = False) -> None:
        outcome = self.outcome
        if not outcome.metrics:
            outcome.metrics = {"execution_time_seconds": self.execution_time}
        span = self.span(
            "collect_metrics",
            attributes={f"aiorunner.{k}": v for k, v in outcome.metrics.items()},
        )
        span.end()
        root = self.root
        attributes: dict[str, str | int | bool] = {}
        if outcome.info is not None:
            attributes["aiorunner.script.sha256"] = outcome.info.sha256
        if outcome.exit_code is not None:
            attributes["process.exit.code"] = outcome.exit_code
        if outcome.timed_out:
            attributes["aiorunner.timed_out"] = True
        if attributes:
            root.set_attributes(attributes)
        if outcome.error is not None:
            root.set_status(
                Status(StatusCode.ERROR, self.scrub(outcome.error.splitlines()[0][:1000]))
            )
        else:
            root.set_status(Status(StatusCode.OK))
        upload = self.span("upload_traces")
        if session is None or not session.enabled:
            upload.end()
            root.end()
            outcome.export = ExportReport(disabled=True)
            return
        if not root.get_span_context().trace_flags.sampled:
            upload.end()
            root.end()
            outcome.export = ExportReport(sampled_out=True)
            return
        trace_id = root.get_span_context().trace_id
        timeout = float(self.config.export_timeout or 0.0)
        if cancelled:
            # Whoever cancelled wants out: flush, but not for a whole export timeout.
            timeout = min(timeout, CANCELLED_FLUSH_TIMEOUT)

        ended: list[bool] = []
        end_lock = threading.Lock()

        def end_upload(first: ExportReport) -> None:
            # On the export thread, between the flush of the spans so far and the flush
            # of these last two (one round trip for both); here if that thread was stuck.
            with end_lock:
                if ended:
                    return
                ended.append(True)
            upload.set_attributes(
                {"aiorunner.export.ok": first.ok, "aiorunner.export.spans": first.exported}
            )
            if not first.ok:
                upload.set_status(Status(StatusCode.ERROR, first.describe()))
            upload.end()
            root.end()

        _, report = await session._flush_trace_then(trace_id, timeout, end_upload)
        end_upload(report)  # does nothing when the export thread did it
        outcome.export = report
        if not report.ok and not report.sampled_out:
            import logging

            logging.getLogger("aiorunner.export").warning(
                "traces of run %s (trace %032x) did not all arrive: %s",
                self.runner.script,
                trace_id,
                report.describe(),
            )


_environ_snapshot: tuple[dict[bytes, bytes], dict[str, str]] | None = None


def _environ_copy() -> dict[str, str]:
    """A copy of ``os.environ`` as a plain dict.

    ``dict(os.environ)`` decodes every variable (~40 µs a run); CPython keeps the
    environment as bytes in ``os.environ._data``, so the decoded copy is reused while
    that is unchanged (comparing two dicts of bytes is a few hundred nanoseconds).
    """
    global _environ_snapshot
    data = getattr(os.environ, "_data", None)
    if not isinstance(data, dict):
        return dict(os.environ)
    snapshot = _environ_snapshot
    if snapshot is None or snapshot[0] != data:
        raw = dict(data)  # decoded from this very copy: another thread may change it
        decoded = {os.fsdecode(key): os.fsdecode(value) for key, value in raw.items()}
        snapshot = _environ_snapshot = (raw, decoded)
    return dict(snapshot[1])


def _own_maxrss(
    rusage: resource.struct_rusage | None, inherited: int
) -> resource.struct_rusage | None:
    """``rusage`` with ``ru_maxrss`` zeroed when it may be the runner's own memory.

    At exec, Linux folds the high-water RSS of the old address space (the fork's copy of
    the runner, or the runner itself under vfork) into the child's ``ru_maxrss``. A
    figure not above the runner's own peak at spawn may be that inheritance, so the
    sampled peak is used instead; a real spike above it is kept.
    """
    if rusage is None or rusage.ru_maxrss > inherited:
        return rusage
    values = list(rusage)
    values[2] = 0  # ru_maxrss
    return resource.struct_rusage(values)


def _passthrough(inner: OutputCallback | None) -> OutputCallback:
    out = {"stdout": sys.stdout, "stderr": sys.stderr}

    def write(stream: str, data: bytes) -> None:
        target = out[stream]
        buffer = getattr(target, "buffer", None)
        if buffer is not None:
            buffer.write(data)
            buffer.flush()
        else:
            target.write(data.decode("utf-8", errors="replace"))
            target.flush()
        if inner is not None:
            inner(stream, data)

    return write


_TB_START = "Traceback (most recent call last):"
_EXC_LINE = re.compile(
    r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|\w*))"
    r"(?::\s?(?P<msg>.*))?$"
)


def _python_traceback(stderr: str) -> tuple[str, str, str] | None:
    """(type, message, last lines of the traceback) of the last traceback in stderr."""
    at = stderr.rfind(_TB_START)
    if at < 0:
        return None
    lines = stderr[at:].rstrip().splitlines()
    last = lines[-1].strip() if lines else ""
    match = _EXC_LINE.match(last)
    exc_type, exc_msg = (match.group("type"), match.group("msg") or "") if match else ("", last)
    text = "\n".join(lines[-12:])[-TRACEBACK_BYTES:]
    return exc_type, exc_msg, text


_FOREIGN_ENV = ("PYTHONHOME", "VIRTUAL_ENV", "PYTHONNOUSERSITE")


def _is_own_interpreter(interpreter: str, env: Mapping[str, str]) -> bool:
    if any(k in env for k in _FOREIGN_ENV):
        return False
    if os.path.realpath(interpreter) == os.path.realpath(sys.executable):
        # same binary; a venv and its base share the binary but not the prefix
        return os.path.abspath(interpreter) == os.path.abspath(sys.executable) or (
            sys.prefix == sys.base_prefix
        )
    return False


async def _inventory_for(
    interpreter: str, env: Mapping[str, str]
) -> _deps.InterpreterInventory | str:
    """What ``interpreter`` can import, probed once and cached; a string on failure."""
    key = (interpreter, env.get("PYTHONPATH", ""))
    cached = _interpreter_cache.get(key)
    if cached is not None:
        return cached
    probe_env = dict(os.environ)
    probe_env.update(env)
    try:
        result = await anyio.run_process(
            [interpreter, "-I" if "PYTHONPATH" not in env else "-s", "-c", _deps.PROBE],
            env=probe_env,
            check=False,
        )
    except OSError as exc:
        return f"cannot run interpreter {interpreter}: {exc.strerror or exc}; check interpreter="
    if result.returncode != 0:
        err = result.stderr.decode(errors="replace").strip().splitlines()[-1:]
        return (
            f"interpreter {interpreter} failed to list its modules"
            f"{': ' + err[0] if err else ''}; pass validate_dependencies=False to skip the check"
        )
    inventory = _deps.probe_interpreter(result.stdout)
    _interpreter_cache[key] = inventory
    return inventory


def _check_dependencies(
    info: ScriptInfo,
    interpreter: str,
    own: bool,
    inventory: _deps.InterpreterInventory | str | None,
    env: Mapping[str, str],
) -> _deps.DependencyReport | SyntaxError | None:
    """Blocking (worker thread): parse the script and check its imports."""
    imports = _imports_cache.get(info.sha256)
    if imports is None:
        try:
            # CPython 3.11 can fail ast.parse in concurrent threads with "AST constructor
            # recursion depth mismatch" (gh-106905): one parse at a time.
            with _AST_LOCK:
                tree = ast.parse(info.source, filename=info.path)
        except SyntaxError as exc:
            if own:
                return exc
            return None  # another interpreter may know newer syntax: let it decide
        except ValueError:  # null bytes
            return None
        imports = _deps.top_level_imports(tree)
        # The imports are a function of the source alone: a script run again (the same
        # sha256) is not parsed again. Bounded; the oldest entry goes first.
        with _AST_LOCK:  # worker threads: evict and insert as one step
            if len(_imports_cache) >= _IMPORTS_CACHE_SIZE:
                del _imports_cache[next(iter(_imports_cache))]
            _imports_cache[info.sha256] = imports
    script_dir = os.path.dirname(os.path.abspath(info.path))
    if own:
        return _deps.check_with_own_interpreter(
            imports,
            script_dir=script_dir,
            env=env,
            dependencies=info.dependencies,
            requires_python=info.requires_python,
        )
    if isinstance(inventory, _deps.InterpreterInventory):
        return _deps.check_with_inventory(
            inventory,
            imports,
            script_dir=script_dir,
            env=env,
            dependencies=info.dependencies,
            requires_python=info.requires_python,
        )
    return None
