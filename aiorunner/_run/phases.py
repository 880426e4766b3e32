"""
The phases of one run (``_Run``): the span tree that ``_runner.py``'s docstring draws,
phase by phase, and what each phase puts on ``RunResult``.

Apart from ``_runner.py`` so that ``ScriptRunner`` (the public object: options, sessions,
live readings) and what one run does stay readable on their own.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import resource
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from .. import _offload
from .._context.bootstrap import precompile
from .._context.channel import open_channel
from .._context.errors import record_exception
from .._context.propagation import inject_env
from .._exceptions import option_name
from .._redact import Scrubber, redact_args, secret_values
from .._result import ExportReport, InscriptReport
from . import deps as _deps
from .dep_check import FOREIGN_ENV, check_dependencies, inventory_for, is_own_interpreter
from .logfeed import DROPPED_ATTRIBUTE, RECORDS_ATTRIBUTE, RunLogs
from .metadata import ScriptInfo, ScriptProblem, read_script
from .metricfeed import RunMetrics
from .phase_span import PhaseSpans
from .process import ChildProcess, OutputCallback
from .tail import last_error_line

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

    from .._config import TracingConfig
    from .._context.channel import SpanChannel
    from .._export.session import Session
    from .._monitor.readers import Reader
    from .runner import ScriptRunner


STDERR_EVENT_BYTES = 4096
TRACEBACK_BYTES = 2048
# After the script exits, how long its output pipes may stay open (held by a descendant)
# before the leftovers of its process group are terminated.
PIPE_GRACE = 0.5
# A cancelled run (Ctrl-C, fail_fast, a caller's timeout) still flushes its spans, within this.
CANCELLED_FLUSH_TIMEOUT = 5.0
TRACEPARENT_PLACEHOLDER = "{{traceparent}}"


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
    #: What the in-script channel delivered and discarded (None: the run had none).
    inscript: InscriptReport | None = None
    #: The ``error.type`` of the first failure (see ``ERROR_TYPES``).
    error_type: str | None = None


#: On ``execute_script`` under run_many: seconds the run waited for a process slot.
SLOT_WAIT_ATTRIBUTE = "aiorunner.slot_wait_seconds"

#: ``error.type`` of a failed run, on the span that failed and on the root (semantic
#: conventions, ``docs/cli/cli-spans.md`` and ``docs/general/recording-errors.md``): low
#: cardinality, documented in the README. Besides these: the exit code of a script that
#: exited with one other than 0 (``"1"``, ``"2"``, ...) and the name of the signal that
#: killed it (``"SIGKILL"``, ``"SIGSEGV"``, ...).
ERROR_TYPES = (
    "timeout",  # the run's timeout= ended it
    "cancelled",  # the caller cancelled the run (Ctrl-C, fail_fast, an outer timeout)
    "memory_limit",  # max_memory_bytes crossed
    "cpu_limit",  # max_cpu_seconds crossed
    "script_unavailable",  # not found, a directory, not readable
    "syntax_error",  # a Python script that does not compile
    "pep723_invalid",  # its inline metadata does not parse
    "dependency_missing",  # an import or PEP 723 dependency the interpreter lacks
    "dependency_check_failed",  # the target interpreter could not be asked
    "cwd_missing",  # cwd= does not exist
    "not_executable",  # a non-Python script without the x bit
    "spawn_failed",  # exec failed (ENOENT interpreter, E2BIG, ...)
    "export_incomplete",  # upload_traces only: not every span was exported in time
)


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
        #: The program exec'd, links resolved (what /proc/<pid>/exe shows): the
        #: interpreter of a Python script, else the script itself.
        self.executable: str | None = None
        self.cwd_path = runner.cwd or "."
        self.cwd_ok = True
        self._scrubber: Scrubber | None = None
        self.slot_wait = 0.0
        self._phases: PhaseSpans | bool | None = None
        #: The run's output as log records (None: logs off, or nowhere to send them).
        self.logs: RunLogs | None = None
        #: The run's resource use as metric points (None: metrics off or not sampled).
        self.metricfeed: RunMetrics | None = None

    def span(self, name: str, **kwargs: Any) -> Span:
        """A phase span under the run's root: a :class:`PhaseSpan` (see ``_phase_span``
        for why) when the root is a recording, sampled SDK span, else the tracer's."""
        phases = self._phases
        if phases is None:
            limits = self.session.span_limits if self.session is not None else None
            phases = PhaseSpans.for_run(self.tracer, self.root, self.root_ctx, limits) or False
            self._phases = phases
        if isinstance(phases, PhaseSpans):
            return phases.start(name, **kwargs)
        return self.tracer.start_span(name, context=self.root_ctx, **kwargs)

    def scrub(self, text: str) -> str:
        """``text`` without the secret values this run knows of. Scripts echo their
        arguments and environment (argparse errors, tracebacks): what leaves on a span
        is scrubbed. Built on first use, so successful runs pay nothing."""
        if self._scrubber is None:
            env = self.child_env or {**os.environ, **self.runner.env}
            self._scrubber = Scrubber(secret_values(self.runner.args, env))
        return self._scrubber(text)

    def fail(
        self, span: Span, message: str, error_type: str, exc: BaseException | None = None
    ) -> None:
        """Mark ``span`` (and, at the end, the run) failed: ERROR status with ``message``
        and ``error.type`` ``error_type`` (one of ``ERROR_TYPES``, an exit code or a
        signal name). The run's error is the first failure's, scrubbed of the run's
        secrets like the status (``RunResult.error`` is printed by the CLI and kept)."""
        outcome = self.outcome
        message = self.scrub(message)
        if outcome.error is None:
            outcome.error = message
            outcome.error_type = error_type
        if exc is not None:
            record_exception(span, exc)
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, message))

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
            own = not any(k in runner.env for k in FOREIGN_ENV)
        else:  # realpath reads links: off the loop
            own = await anyio.to_thread.run_sync(is_own_interpreter, interpreter, runner.env)
        inventory: _deps.InterpreterInventory | str | None = None
        if runner.validate_dependencies and not own:
            inventory = await inventory_for(interpreter, runner.env)

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
            if isinstance(info, ScriptInfo):
                self.executable = (
                    _executable(interpreter, runner.env.get("PATH", os.environ.get("PATH")))
                    if info.is_python
                    else os.path.realpath(self.script_path)
                )
            report: _deps.DependencyReport | SyntaxError | None = None
            if isinstance(info, ScriptInfo) and info.is_python and runner.validate_dependencies:
                report = check_dependencies(info, interpreter, own, inventory, runner.env)
            t_deps_end = time.time_ns()
            if own and isinstance(info, ScriptInfo) and info.is_python:
                precompile()  # the in-script bootstrap's .pyc: once per process
            return info, t_meta, t_meta_end, report, t_deps_end

        # Abandoned on cancel: reading a file nobody waits for is harmless.
        info, t_meta, t_meta_end, report, t_deps_end = await _offload.run_sync(
            work, abandon_on_cancel=True
        )
        # One absolute path, on the root and on extract_metadata.
        self.root.set_attribute("code.file.path", self.script_path)
        # Attributes given at start: one call into the SDK per span rather than several.
        meta_attributes: dict[str, Any] = {"code.file.path": self.script_path}
        if isinstance(info, ScriptInfo):
            meta_attributes.update(info.span_attributes())
        meta_span = self.span("extract_metadata", start_time=t_meta, attributes=meta_attributes)
        if isinstance(info, ScriptProblem):
            self.fail(meta_span, str(info), "script_unavailable", info)
            meta_span.end(end_time=t_meta_end)
            raise _Failure
        self.outcome.info = info
        if info.pep723_error:
            meta_span.add_event("pep723_invalid", {"aiorunner.pep723.error": info.pep723_error})
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
                self.fail(deps_span, inventory, "dependency_check_failed")
                raise _Failure
            if isinstance(report, SyntaxError) and b"\0" in info.source:
                message = (
                    f"{info.path} is not Python source text: it contains null bytes (a "
                    "compiled program or a data file?); give the script's .py source, or run "
                    "a program itself (executable, without a .py name"
                    + (f" or {option_name('interpreter=')}" if runner.interpreter else "")
                    + ")"
                )
                self.fail(deps_span, message, "syntax_error")
                raise _Failure
            if isinstance(report, SyntaxError):
                message = f"syntax error in {info.path} line {report.lineno}: {report.msg}" + (
                    f"\n    {report.text.rstrip()}" if report.text else ""
                )
                self.fail(deps_span, message, "syntax_error", report)
                raise _Failure
            if info.pep723_error and runner.validate_dependencies:
                self.fail(deps_span, info.pep723_error, "pep723_invalid")
                raise _Failure
            if isinstance(report, _deps.DependencyReport):
                deps_span.set_attribute("aiorunner.dependencies.imports", list(report.imports))
                if not report.ok:
                    deps_span.set_attribute(
                        "aiorunner.dependencies.missing",
                        [*report.missing_modules, *report.missing_distributions],
                    )
                    self.fail(deps_span, report.describe(interpreter), "dependency_missing")
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
                "process.working_directory": self.cwd_path,
                "aiorunner.env.overridden": sorted(runner.env),
            },
        )
        env = _environ_copy()
        env.update(runner.env)
        self.child_env = env
        if not self.cwd_ok:
            self.fail(
                span,
                f"working directory does not exist: {runner.cwd}; create it or fix "
                f"{option_name('cwd=')}",
                "cwd_missing",
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
        # The CLI caller span of the semantic conventions (docs/cli/cli-spans.md): kind
        # CLIENT, the process.* attributes; named execute_script (the seed's tree; the
        # conventions allow another low-cardinality name).
        attributes: dict[str, Any] = {"process.working_directory": self.cwd_path}
        if self.slot_wait:
            # run_many: how long this run waited for a process slot (the gap before it).
            attributes[SLOT_WAIT_ATTRIBUTE] = self.slot_wait
        span = self.span("execute_script", kind=trace.SpanKind.CLIENT, attributes=attributes)
        self.exec_span = span
        exec_ctx = trace.set_span_in_context(span, self.root_ctx)
        inject_env(tuple(self.config.propagators or ()), exec_ctx, self.child_env)
        # {{traceparent}} is W3C whatever OTEL_PROPAGATORS says (b3multi writes none).
        sc = span.get_span_context()
        argv = self._argv(
            info,
            f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"
            if sc.is_valid
            else None,
        )
        outcome.command = tuple(argv)
        executable = self.executable or argv[0]
        span.set_attributes(
            {
                "process.executable.name": os.path.basename(executable),
                "process.executable.path": executable,
                "process.command_args": redact_args(argv),
            }
        )
        if not info.is_python and not info.executable:
            self.fail(
                span,
                f"script is not executable: {info.path}; make it executable (chmod +x) "
                f"or pass {option_name('interpreter=')} to run it with one",
                "not_executable",
            )
            span.end()
            raise _Failure
        on_output = runner.on_output
        if runner.passthrough:
            on_output = _passthrough(on_output)
        logs = self.logs = self._make_logs(span)
        channel = open_channel(
            self.session,
            self.config,
            span,
            self.child_env,
            python=info.is_python,
            enabled=runner.in_script_tracing,
            instrument=runner.instrument,
            report_peak=runner.monitor,
            logs=logs is not None,
        )
        if channel is not None and logs is not None:
            # The script's logging records join the run's logs; its channel is read
            # before each chunk of output so a record is known before its lines.
            channel.on_log = logs.add_script_record
            channel.ready = logs.ready
            logs.before_feed = channel.drain_queued
        reader = None
        if runner.monitor:
            from .._monitor.readers import default_reader

            reader = default_reader()
        self.metricfeed = self._make_metrics()
        try:
            child = await ChildProcess.spawn(
                argv,
                cwd=runner.cwd,
                env=self.child_env,
                tail_limit=runner.max_output_bytes,
                on_output=on_output,
                pass_fds=(channel.child_fd,) if channel is not None else (),
                logs=logs,
            )
        except OSError as exc:
            if channel is not None:
                channel.close()
            self.fail(span, f"cannot start {argv[0]}: {exc.strerror or exc}", "spawn_failed", exc)
            span.end()
            raise _Failure from None
        outcome.pid = child.pid
        if runner._slot is not None:
            child.on_exit = runner._slot.exited
        span.set_attribute("process.pid", child.pid)
        if channel is not None:
            channel.child_started(child.pid)
        # From just before the fork: the same interval as the child's CPU time (#16).
        t_start = child.spawned_at
        monitor = self._make_monitor(child.pid, reader, child.token)
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
                # What left the group (a daemon's double fork) ends with the run too.
                await child.end_escapees(runner.kill_grace, _tracked(monitor))
                if logs is not None:
                    # Back-pressure may still hold output the script wrote before it
                    # ended (in the pipes): read on while it is being worked through.
                    child.output_moving()
                    with anyio.move_on_after(self._logs_timeout()):
                        while not await child.wait_output(0.1) and child.output_moving():
                            pass
                await child.wait_output(1.0)
                if monitor is not None and not monitor.done:
                    # Only then: anyio's cancel() formats the task's repr (~50 µs a run).
                    tg.cancel_scope.cancel()
        except BaseException:
            with anyio.CancelScope(shield=True), anyio.move_on_after(2 * runner.kill_grace + 4):
                await child.terminate_group(runner.kill_grace)
                await child.end_escapees(runner.kill_grace, _tracked(monitor))
            if channel is not None:
                channel.close()
                self._record_inscript(span, channel)
            if logs is not None:
                with anyio.CancelScope(shield=True):
                    await logs.finish(min(1.0, self._logs_timeout()))
                self._record_logs(span, logs)
            self._record_exit(child, span, monitor, t_start)
            self.fail(span, "run was cancelled; its process group was terminated", "cancelled")
            span.end()
            raise
        finally:
            child.close()
            if channel is not None:
                channel.close()  # reads what the script wrote before it ended
        if logs is not None:
            await logs.finish(self._logs_timeout())
            self._record_logs(span, logs)
        exit_peak = None
        if channel is not None:
            self._record_inscript(span, channel)
            exit_peak = channel.exit_peaks.get(child.pid)
        self._record_exit(child, span, monitor, t_start, exit_peak)
        code = child.returncode
        assert code is not None
        if limit_reason:
            kind = "memory_limit" if limit_reason[0].startswith("memory") else "cpu_limit"
            self.fail(span, f"{limit_reason[0]}; the run was killed", kind)
        elif outcome.timed_out:
            self.fail(
                span,
                f"script timed out after {runner.timeout:g} s; its process group got SIGTERM"
                f" (SIGKILL after {runner.kill_grace:g} s grace)",
                "timeout",
            )
        elif code < 0:
            name = _signal_name(-code)
            self.fail(span, f"script was killed by signal {-code} ({name})", name)
        elif code != 0:
            self._fail_exit(span, code, child)
        if outcome.error is not None:
            tail = child.stderr.last_lines(STDERR_EVENT_BYTES)
            if tail:
                span.add_event("script.stderr", {"aiorunner.stderr.tail": self.scrub(tail)})
        span.end()

    def _record_inscript(self, span: Span, channel: SpanChannel) -> None:
        """What the script's channel lost, onto ``execute_script`` (only what is not
        zero) and into ``RunResult.export.inscript``."""
        report = InscriptReport(
            received=channel.received,
            dropped_spans=channel.dropped,
            dropped_messages=channel.discarded,
            dropped_bytes=channel.discarded_bytes,
            limited=channel.limited,
        )
        self.outcome.inscript = report
        attributes = {
            f"aiorunner.inscript.{key}": value
            for key, value in report.to_dict().items()
            if key != "received" and value
        }
        if attributes:
            span.set_attributes(attributes)

    def _make_logs(self, span: Span) -> RunLogs | None:
        """The run's log records, when its session sends logs and the run is sampled."""
        session = self.session
        if session is None or session.logs is None:
            return None
        context = span.get_span_context()
        if not context.is_valid or not context.trace_flags.sampled:
            return None
        identity = {
            key: value
            for key, value in self.runner.tracing_attributes.items()
            if key in ("aiorunner.job", "aiorunner.attempt")
        }
        return RunLogs(
            session.logs,
            context,
            session.resource,
            attributes=identity,
            max_records=int(
                self.config.log_max_records if self.config.log_max_records is not None else 0
            ),
            scrub=self.scrub,
        )

    def _job_name(self) -> str:
        """The run's job (run_many, jobs files), else its script's file name: bounded."""
        job = self.runner.tracing_attributes.get("aiorunner.job")
        return str(job) if job else os.path.basename(os.fspath(self.runner.script))

    def _make_metrics(self) -> RunMetrics | None:
        """The run's metric points, when its session sends metrics and it is sampled."""
        session = self.session
        if session is None or session.metrics is None:
            return None
        context = self.root.get_span_context()
        if not context.is_valid or not context.trace_flags.sampled:
            return None
        return RunMetrics(
            session.metrics,
            session.resource,
            trace_id=context.trace_id,
            job=self._job_name(),
            script=os.path.basename(os.fspath(self.runner.script)),
            # The session's: it owns the pipeline and the run-level temporality.
            interval=float(session.config.metrics_interval or 10.0),
            preference=str(session.config.metrics_temporality or "cumulative"),
        )

    def _record_metrics(self, session: Session | None, cancelled: bool) -> None:
        """collect_metrics: the run's final values and its run-level instruments, handed
        to the metrics pipeline now (a short run is not lost to the export interval),
        inside the run's span: the duration's exemplar names its trace and span."""
        outcome = self.outcome
        feed = self.metricfeed
        if feed is not None:
            feed.finish(outcome.metrics, self.execution_time)
        meter = session.meter if session is not None else None
        if meter is None or session is None or session.metrics is None:
            return
        context = self.root.get_span_context()
        if not context.is_valid or not context.trace_flags.sampled:
            return
        if outcome.error is None:
            result = "success"
        elif outcome.timed_out:
            result = "timeout"
        elif cancelled or outcome.cancelled or outcome.error_type == "cancelled":
            result = "cancelled"
        else:
            result = "failed"
        peak = outcome.metrics.get("memory_rss_peak_bytes")
        points = meter.record_run(
            job=self._job_name(),
            outcome=result,
            duration=time.perf_counter() - self.t0,
            peak_bytes=int(peak) if peak else None,
            trace_id=context.trace_id,
            span_id=context.span_id,
            resource=session.resource,
        )
        if feed is not None:
            feed.points += len(points)
        emit = session.metrics.emit
        for point in points:
            emit(point)

    def _logs_timeout(self) -> float:
        return float(self.config.logs_export_timeout or self.config.export_timeout or 30.0)

    @staticmethod
    def _record_logs(span: Span, logs: RunLogs) -> None:
        attributes: dict[str, int] = {RECORDS_ATTRIBUTE: logs.records - logs.lost}
        if logs.over_cap:
            attributes[DROPPED_ATTRIBUTE] = logs.over_cap
        span.set_attributes(attributes)

    def _record_exit(
        self,
        child: ChildProcess,
        span: Span,
        monitor: Any,
        t_start: float,
        exit_peak: int | None = None,
    ) -> None:
        """Exit status, output and metrics onto the outcome. ``exit_peak``: the script's
        own peak RSS as it reported it at exit (Python scripts, in-script channel)."""
        outcome = self.outcome
        self.execution_time = time.perf_counter() - t_start
        code = child.returncode
        attributes: dict[str, int] = {}
        if code is not None:
            if code < 0:
                outcome.signal = -code
                attributes["aiorunner.signal"] = -code
                # process.exit.code is required on a CLI span; a signal death has none
                # of its own, so the shell's: 128 + the signal number (what $? shows).
                attributes["process.exit.code"] = 128 - code
            else:
                outcome.exit_code = code
                attributes["process.exit.code"] = code
        outcome.stdout = child.stdout.getvalue()
        outcome.stderr = child.stderr.getvalue()
        outcome.stdout_truncated = child.stdout.truncated
        outcome.stderr_truncated = child.stderr.truncated
        attributes["aiorunner.stdout.bytes"] = child.stdout.total
        attributes["aiorunner.stderr.bytes"] = child.stderr.total
        if child.escapees_ended:  # processes that left the group, ended with the run
            attributes["aiorunner.escaped_processes"] = child.escapees_ended
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
            if exit_peak and exit_peak > metrics.get("memory_rss_peak_bytes", 0):
                metrics["memory_rss_peak_bytes"] = exit_peak
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
            last = last_error_line(stderr)
            if last:
                message += f": {last}"
        self.fail(span, message, str(code))

    def _make_monitor(self, pid: int, reader: Reader | None, token: str) -> Any:
        runner = self.runner
        if reader is None:
            return None
        from .._monitor.monitor import ProcessTreeMonitor

        monitor = ProcessTreeMonitor(
            pid,
            reader=reader,
            interval=float(runner.monitor_interval or self.config.monitor_interval or 0.5),
            on_sample=_both(runner.on_sample, self.metricfeed),
            max_memory_bytes=runner.max_memory_bytes,
            max_cpu_seconds=runner.max_cpu_seconds,
            run_token=token,
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
        self._record_metrics(session, cancelled)
        span.end()
        root = self.root
        attributes: dict[str, str | int | bool] = {}
        if outcome.info is not None:
            attributes["aiorunner.script.sha256"] = outcome.info.sha256
        if outcome.exit_code is not None:
            attributes["process.exit.code"] = outcome.exit_code
        elif outcome.signal is not None:
            attributes["process.exit.code"] = 128 + outcome.signal  # as on execute_script
            attributes["aiorunner.signal"] = outcome.signal
        if outcome.timed_out:
            attributes["aiorunner.timed_out"] = True
        if outcome.error is not None:
            # The first failure's type; a cancellation that came before any is "cancelled".
            attributes["error.type"] = outcome.error_type or (
                "cancelled" if outcome.cancelled else "_OTHER"
            )
        if attributes:
            root.set_attributes(attributes)
        if outcome.error is not None:
            root.set_status(
                # outcome.error is scrubbed already (fail()).
                Status(StatusCode.ERROR, outcome.error.splitlines()[0][:1000])
            )
        # A run that succeeded leaves the root's status UNSET: instrumentation SHOULD NOT
        # set OK (recording-errors.md); OK is for the application to say.
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
                upload.set_attribute("error.type", "export_incomplete")
                upload.set_status(Status(StatusCode.ERROR, first.describe()))
            upload.end()
            root.end()

        try:
            _, report = await session._flush_trace_then(trace_id, timeout, end_upload)
        except anyio.get_cancelled_exc_class():
            # Cancelled while the spans leave (Ctrl-C, fail_fast): the wait was dropped
            # with it. Flush again as a cancelled run does, not for a whole export
            # timeout, so the last two spans still end and leave; then let it go on.
            with anyio.CancelScope(shield=True):
                _, report = await session._flush_trace_then(
                    trace_id, min(timeout, CANCELLED_FLUSH_TIMEOUT), end_upload
                )
                end_upload(report)
                if self.logs is not None:
                    report = dataclasses.replace(
                        report,
                        log_records=self.logs.records - self.logs.lost,
                        log_records_over_cap=self.logs.over_cap,
                    )
                outcome.export = report
            raise
        end_upload(report)  # does nothing when the export thread did it
        if self.logs is not None:
            report = dataclasses.replace(
                report,
                log_records=self.logs.records - self.logs.lost,
                log_records_over_cap=self.logs.over_cap,
            )
        outcome.export = report
        session._run_export_log.record(report, self.runner.script, trace_id)


def _both(on_sample: Any, feed: RunMetrics | None) -> Any:
    """The monitor's callback: the user's ``on_sample``, and the run's metric feed."""
    if feed is None:
        return on_sample
    if on_sample is None:
        return feed.on_sample

    def both(sample: Any) -> object:
        feed.on_sample(sample)
        return on_sample(sample)

    return both


def _tracked(monitor: Any) -> list[tuple[int, int]]:
    """``(pid, start)`` of the processes the monitor last saw alive in the run's tree."""
    return monitor.tracked() if monitor is not None else []


def _signal_name(number: int) -> str:
    """``SIGKILL`` for 9; ``SIG64`` for a number without a name (real-time signals)."""
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


@functools.lru_cache(maxsize=32)
def _executable(interpreter: str, path: str | None) -> str:
    """The interpreter's full path, links resolved (as ``/proc/<pid>/exe`` shows it): a
    bare name is looked up in ``path`` as exec does. File system calls: off the loop."""
    found = interpreter
    if not os.path.dirname(interpreter):
        found = shutil.which(interpreter, path=path) or interpreter
    return os.path.realpath(found)


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
