"""
Many scripts at once: :func:`run_many` (results in input order) and :func:`as_completed`
(results as they finish).

The orchestrator decides *when* each attempt runs; the executor (``_executor.py``) decides
*where*. One anyio task group holds the batch: a job's task is started once all its
prerequisites succeeded, and a :class:`anyio.CapacityLimiter` bounds how many attempts
run at once (FIFO, so jobs start in input order). A retry waits its backoff *outside* the
limiter so a waiting job does not hold a slot. ``fail_fast`` (and :meth:`_Batch.stop`,
which the CLI calls on Ctrl-C) cancels the group: every running ``ScriptRunner`` then
terminates its process group and flushes its spans before the cancellation finishes, and
every job without a result gets one that says ``cancelled``. Cancelling the caller does
the same, then propagates.

All runs share one :class:`Session`. With ``trace="batch"`` a root span ``run_many`` is
the parent of every run's ``ScriptRunner`` span, so the whole batch is one trace.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import anyio
from opentelemetry import trace as otel_trace
from opentelemetry.trace import Status, StatusCode

from .._exceptions import ConfigError, option_name
from .._result import RunResult
from .._run.slots import ProcessSlot, SlotPool
from .executor import Attempt, Executor, LocalExecutor
from .jobs import TRACE_MODES, Job, JobLike, Node, plan

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found]

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Callable, Iterable
    from types import TracebackType

    from anyio.abc import TaskGroup
    from opentelemetry.context import Context
    from opentelemetry.trace import Span
    from typing_extensions import Self

    from .._config import TracingConfig
    from .._export.session import Session
    from .._monitor.monitor import Sample

__all__ = ["AsCompleted", "JobEvent", "as_completed", "run_many"]

logger = logging.getLogger("aiorunner.orchestrate")

DEFAULT_RETRY_BACKOFF = 0.5
#: Longest wait between two attempts, however many retries.
MAX_RETRY_DELAY = 60.0

TraceMode = Literal["per-run", "batch"]
EventKind = Literal["started", "sample", "retrying", "finished"]


@dataclass(frozen=True)
class JobEvent:
    """
    Something that happened to a job, for progress displays (``on_event``).

    ``started``: an attempt got a slot and starts now. ``sample``: a live reading of a
    running attempt (``sample``). ``retrying``: an attempt failed (``result``) and the
    next starts after ``delay`` seconds. ``finished``: the job's final ``result``
    (succeeded, failed, skipped or cancelled).
    """

    kind: EventKind
    name: str
    index: int
    attempt: int
    timestamp: float
    sample: Sample | None = None
    result: RunResult | None = None
    delay: float | None = None


def _check_options(
    max_concurrency: int | None,
    retries: int,
    retry_backoff: float,
    timeout: float | None,
    trace: str,
    executor: Executor | None,
) -> int:
    if max_concurrency is None:
        max_concurrency = os.cpu_count() or 1
    if (
        isinstance(max_concurrency, bool)
        or not isinstance(max_concurrency, int)
        or (max_concurrency < 1)
    ):
        name = option_name("max_concurrency")  # -j on the command line: no None there
        cpus = " (or None for the CPU count)" if name == "max_concurrency" else ""
        raise ConfigError(f"{name} must be an integer >= 1{cpus}, got {max_concurrency!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConfigError(f"retries must be an integer >= 0, got {retries!r}")
    if (
        isinstance(retry_backoff, bool)
        or not isinstance(retry_backoff, (int, float))
        or retry_backoff < 0
    ):
        raise ConfigError(f"retry_backoff must be a number of seconds >= 0, got {retry_backoff!r}")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
    ):
        raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if trace not in TRACE_MODES:
        raise ConfigError(f"trace must be one of {', '.join(TRACE_MODES)}, got {trace!r}")
    if executor is not None and not callable(getattr(executor, "run", None)):
        raise ConfigError(
            f"executor must have an async run(attempt) method (see aiorunner.Executor), "
            f"got {executor!r}"
        )
    return max_concurrency


class _Batch:
    """One call of run_many / as_completed: its state, from plan to last result."""

    def __init__(
        self,
        jobs: Iterable[JobLike],
        *,
        max_concurrency: int | None = None,
        fail_fast: bool = False,
        retries: int = 0,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF,
        timeout: float | None = None,
        session: Session | None = None,
        config: TracingConfig | None = None,
        trace: TraceMode = "per-run",
        executor: Executor | None = None,
        on_event: Callable[[JobEvent], object] | None = None,
    ) -> None:
        self.max_concurrency = _check_options(
            max_concurrency, retries, retry_backoff, timeout, trace, executor
        )
        self.nodes: list[Node] = plan(jobs)
        self.fail_fast = bool(fail_fast)
        self.retries = retries
        self.retry_backoff = float(retry_backoff)
        self.timeout = float(timeout) if timeout is not None else None
        self.trace = trace
        self.executor: Executor = executor if executor is not None else LocalExecutor()
        self.on_event = on_event
        self._session_arg = session
        self._config_arg = config
        self.session: Session | None = None
        self.results: list[RunResult | None] = [None] * len(self.nodes)
        self._pending = [len(node.after) for node in self.nodes]
        self._attempt = [0] * len(self.nodes)
        self._running = [False] * len(self.nodes)
        self._started_at = [0.0] * len(self.nodes)
        self._started_perf = [0.0] * len(self.nodes)
        # Results of attempts cancelled after their script ended (Attempt.on_late_result).
        self._late: dict[int, RunResult] = {}
        self._stop_reason: str | None = None
        self._scope: anyio.CancelScope | None = None
        # Attempts under way, and (for executors that take them) slots for live scripts:
        # twice as many attempts as scripts, so that preparing and exporting overlap
        # with running (see _run.slots.ProcessSlot).
        self._slots: SlotPool | None = None
        if getattr(self.executor, "uses_process_slots", False):
            self._slots = SlotPool(self.max_concurrency)
            self._limiter = anyio.CapacityLimiter(2 * self.max_concurrency)
        else:
            self._limiter = anyio.CapacityLimiter(self.max_concurrency)
        self._emit: Callable[[RunResult], None] | None = None
        self._root: Span | None = None
        self._root_ctx: Context | None = None

    # -- control --------------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """Cancel every job still running or waiting; their results say ``reason``."""
        if self._stop_reason is None:
            self._stop_reason = reason
        if self._scope is not None:
            self._scope.cancel()

    @property
    def stopped(self) -> str | None:
        """Why the batch was stopped early (fail-fast, Ctrl-C), or None."""
        return self._stop_reason

    # -- running --------------------------------------------------------------------------

    async def run(self, emit: Callable[[RunResult], None] | None = None) -> list[RunResult]:
        """Run every job; ``emit`` gets each final result as it is known."""
        self._emit = emit
        await self._open_session()
        self._start_root()
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                if self._stop_reason is not None:
                    scope.cancel()
                async with anyio.create_task_group() as tg:
                    for node in self.nodes:
                        if not node.after:
                            tg.start_soon(self._run_node, node, tg)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self._end_root(cancelled=True)
            error = _single_error(exc)
            if error is not None:
                raise error from None
            raise
        now = time.time()
        for node in self.nodes:
            if self.results[node.index] is None:
                self._finish(node, self._cancelled_result(node, now))
        await self._end_root(cancelled=False)
        return [r for r in self.results if r is not None]

    async def _open_session(self) -> None:
        """The batch's one session: given, or the default one for ``config`` (created in
        a worker thread: the first creation scans entry points and imports plugins)."""
        if self._session_arg is not None:
            self.session = self._session_arg
            return
        from .._export.session import aget_default_session

        self.session = await aget_default_session(self._config_arg)

    def _start_root(self) -> None:
        if self.trace != "batch" or self.session is None or not self.session.enabled:
            return
        from .._context.propagation import extract_parent

        parent = extract_parent(self.session.config.propagators or ("tracecontext", "baggage"))
        self._root = self.session.tracer().start_span(
            "run_many",
            context=parent,
            attributes={
                "aiorunner.jobs": len(self.nodes),
                "aiorunner.max_concurrency": self.max_concurrency,
                "aiorunner.fail_fast": self.fail_fast,
                "aiorunner.retries": self.retries,
            },
        )
        self._root_ctx = otel_trace.set_span_in_context(self._root, parent)

    async def _end_root(self, *, cancelled: bool) -> None:
        root, session = self._root, self.session
        if root is None or session is None:
            return
        self._root = None
        done = [r for r in self.results if r is not None]
        counts = {
            "succeeded": sum(r.success for r in done),
            "failed": sum(not r.success and not r.skipped and not r.cancelled for r in done),
            "skipped": sum(r.skipped for r in done),
            "cancelled": sum(r.cancelled for r in done),
        }
        root.set_attributes({f"aiorunner.{k}": v for k, v in counts.items()})
        for result, node in zip(self.results, self.nodes, strict=True):
            if result is not None and (result.skipped or result.cancelled):
                root.add_event(
                    "job.skipped" if result.skipped else "job.cancelled",
                    {"aiorunner.job": node.name, "aiorunner.reason": result.error or ""},
                )
        # Success leaves the status UNSET: instrumentation SHOULD NOT set OK
        # (semantic conventions, recording-errors.md); a failure gets error.type too.
        if cancelled:
            root.set_attribute("error.type", "cancelled")
            root.set_status(Status(StatusCode.ERROR, "run_many was cancelled"))
        elif len(done) - counts["succeeded"]:
            root.set_attribute("error.type", "jobs_failed")
            root.set_status(
                Status(
                    StatusCode.ERROR,
                    f"{len(done) - counts['succeeded']} of {len(done)} jobs did not succeed",
                )
            )
        root.end()
        timeout = session.config.export_timeout
        with anyio.move_on_after((timeout or 30.0) + 1.0):
            report = await session.flush_trace(root.get_span_context().trace_id, timeout=timeout)
            if not report.ok and not report.sampled_out:
                logger.warning(
                    "traces of the run_many batch %032x did not all arrive: %s",
                    root.get_span_context().trace_id,
                    report.describe(),
                )

    def _event(self, kind: EventKind, node: Node, **fields: Any) -> None:
        if self.on_event is not None:
            self.on_event(
                JobEvent(
                    kind, node.name, node.index, self._attempt[node.index], time.time(), **fields
                )
            )

    def _retries_for(self, node: Node) -> int:
        if isinstance(node.job, Job) and node.job.retries is not None:
            return node.job.retries
        return self.retries

    def _timeout_for(self, node: Node) -> float | None:
        if isinstance(node.job, Job) and node.job.timeout is not None:
            return node.job.timeout
        return self.timeout

    async def _run_node(self, node: Node, tg: TaskGroup) -> None:
        retries = self._retries_for(node)
        on_sample = None
        if self.on_event is not None:

            def on_sample(sample: Sample) -> None:
                self._event("sample", node, sample=sample)

        number = 0
        while True:
            number += 1
            async with self._limiter:
                slot = None
                if self._slots is not None:
                    # Its place in line is taken here, in the order attempts get under way.
                    slot = ProcessSlot(
                        self._slots,
                        on_acquire=partial(self._began, node, number),
                        keep_on_failure=self.fail_fast and number > retries,
                    )
                else:
                    self._began(node, number)
                attempt = Attempt(
                    job=node.job,
                    name=node.name,
                    number=number,
                    timeout=self._timeout_for(node),
                    context=self._root_ctx,
                    session=self.session,
                    on_sample=on_sample,
                    slot=slot,
                    on_late_result=partial(self._late_result, node, number),
                )
                try:
                    result = await self.executor.run(attempt)
                    self._attempt[node.index] = number
                    self._running[node.index] = False
                    # A run that never started (missing script, syntax error, missing
                    # dependency) would fail the same way again: not retried.
                    final = result.success or number > retries or result.pid is None
                    if final and not result.success and self.fail_fast:
                        # Before the slot is released, so no queued job starts meanwhile.
                        self.stop(f"cancelled: job {node.name!r} failed and fail_fast is on")
                finally:
                    if slot is not None:
                        slot.close()
            if final:
                break
            delay = min(self.retry_backoff * 2 ** (number - 1), MAX_RETRY_DELAY)
            self._event("retrying", node, result=result, delay=delay)
            await anyio.sleep(delay)
        self._finish(node, dataclasses.replace(result, attempts=number, name=node.name), tg)

    def _began(self, node: Node, number: int) -> None:
        """Attempt ``number`` of ``node`` starts its script (it holds a process slot)."""
        self._attempt[node.index] = number
        self._started_at[node.index] = time.time()
        self._started_perf[node.index] = time.perf_counter()
        self._running[node.index] = True
        self._event("started", node)

    def _finish(self, node: Node, result: RunResult, tg: TaskGroup | None = None) -> None:
        """Record a final result, then start or skip the jobs that waited for it.

        A worklist, not recursion: a failure at the head of a long chain skips every job
        of the chain without nesting a call per job.
        """
        work = [(node, result)]
        while work:
            node, result = work.pop()
            if self.results[node.index] is not None:
                continue
            self.results[node.index] = result
            self._event("finished", node, result=result)
            if self._emit is not None:
                self._emit(result)
            for index in node.dependants:
                dependant = self.nodes[index]
                if self.results[index] is not None:
                    continue
                if not result.success:
                    work.append((dependant, self._skipped_result(dependant, node, result)))
                    continue
                self._pending[index] -= 1
                if self._pending[index] == 0 and tg is not None:
                    tg.start_soon(self._run_node, dependant, tg)

    # -- results for jobs that did not run ------------------------------------------------

    def _skipped_result(self, node: Node, prerequisite: Node, failed: RunResult) -> RunResult:
        if failed.skipped:
            why = f"prerequisite {prerequisite.name!r} was skipped"
            cause = (failed.error or "").removeprefix("skipped: ")
            why += f" ({cause})" if cause else ""
        elif failed.cancelled:
            why = f"prerequisite {prerequisite.name!r} was cancelled"
        else:
            why = f"prerequisite {prerequisite.name!r} failed"
        self._count_skipped(node)
        return RunResult(
            script=node.script,
            name=node.name,
            success=False,
            skipped=True,
            error=f"skipped: {why}",
            attempts=0,
            started_at=time.time(),
            trace_id=self._trace_id(),
        )

    def _count_skipped(self, node: Node) -> None:
        """``aiorunner.runs`` counts a skipped job (outcome ``skipped``)."""
        session = self.session
        if session is None or session.meter is None or session.metrics is None:
            return
        root = self._root
        trace_id = root.get_span_context().trace_id if root is not None else 0
        emit = session.metrics.emit
        for point in session.meter.record_skipped(
            job=node.name, trace_id=trace_id, resource=session.resource
        ):
            emit(point)

    def _late_result(self, node: Node, number: int, result: RunResult) -> None:
        """Attempt ``number`` was cancelled after its script ended: keep what it did."""
        self._late[node.index] = dataclasses.replace(result, attempts=number, name=node.name)

    def _cancelled_result(self, node: Node, now: float) -> RunResult:
        late = self._late.get(node.index)
        if late is not None:
            # The script had ended when the batch was stopped (its spans were leaving):
            # its own exit code, output and metrics, not "cancelled".
            return late
        attempts = self._attempt[node.index]
        reason = self._stop_reason or "cancelled"
        if attempts:
            if self._running[node.index]:
                error = f"{reason}; the run was stopped and its process group terminated"
            else:
                error = f"{reason} (while waiting to retry)"
            started_at = self._started_at[node.index]
            duration = time.perf_counter() - self._started_perf[node.index]
        else:
            error = f"{reason} (before it started)"
            started_at, duration = now, 0.0
        return RunResult(
            script=node.script,
            name=node.name,
            success=False,
            cancelled=True,
            error=error,
            attempts=attempts,
            started_at=started_at,
            duration=duration,
            trace_id=self._trace_id(),
        )

    def _trace_id(self) -> str:
        if self._root is not None:
            return format(self._root.get_span_context().trace_id, "032x")
        return "0" * 32


async def run_many(
    jobs: Iterable[JobLike],
    *,
    max_concurrency: int | None = None,
    fail_fast: bool = False,
    retries: int = 0,
    retry_backoff: float = DEFAULT_RETRY_BACKOFF,
    timeout: float | None = None,
    session: Session | None = None,
    config: TracingConfig | None = None,
    trace: TraceMode = "per-run",
    executor: Executor | None = None,
    on_event: Callable[[JobEvent], object] | None = None,
) -> list[RunResult]:
    """
    Run many scripts concurrently and return their results in the order of ``jobs``.

    Never raises for what a script did: failed, skipped and cancelled jobs come back as
    results (``success=False`` with ``error``, ``skipped``, ``cancelled``).

    Args:
        jobs: script paths, :class:`Job` specs (with ``after=[...]`` dependencies) or
            :class:`ScriptRunner` objects (which are copied, never changed).
        max_concurrency: attempts running at once (default: the CPU count).
        fail_fast: the first job that fails for good cancels the others: their process
            groups are terminated and their results say ``cancelled``.
        retries: extra attempts for a failed run (a :class:`Job` may set its own); a run
            that never started (missing script, syntax error, missing dependency) is not
            retried. Each attempt is its own trace (its root span has ``aiorunner.attempt``)
            and the result's ``attempts`` counts them.
        retry_backoff: seconds before the first retry, doubled for each next one (at most
            60 s between two attempts).
        timeout: seconds for each attempt of a job that sets none (not for the batch).
        session: the export pipeline every run shares (default: the process-wide one).
        config: the :class:`TracingConfig` for the default session.
        trace: ``"per-run"`` (each run its own trace) or ``"batch"`` (one root span
            ``run_many`` with every run beneath it: ``result.trace_id`` is the same for all).
        executor: where attempts run (default :class:`LocalExecutor`, here).
        on_event: called with a :class:`JobEvent` as jobs start, report live samples,
            retry and finish (for progress displays).

    Raises:
        ConfigError: a bad option or job, a duplicate job name, a prerequisite that is
            not a job, or a dependency cycle (checked before anything runs).
    """
    batch = _Batch(
        jobs,
        max_concurrency=max_concurrency,
        fail_fast=fail_fast,
        retries=retries,
        retry_backoff=retry_backoff,
        timeout=timeout,
        session=session,
        config=config,
        trace=trace,
        executor=executor,
        on_event=on_event,
    )
    return await batch.run()


class AsCompleted:
    """
    The results of a batch in completion order: ``async for result in as_completed(...)``.

    Leaving the loop early (``break``) leaves the rest of the batch running until the
    iterator is closed; use it as a context manager to stop the rest right there::

        async with aiorunner.as_completed(jobs) as results:
            async for result in results:
                if not result.success:
                    break   # the other jobs are cancelled when the block exits
    """

    def __init__(self, batch: _Batch) -> None:
        self._batch = batch
        self._iterator: AsyncGenerator[RunResult, None] | None = None

    def __aiter__(self) -> AsyncGenerator[RunResult, None]:
        if self._iterator is None:
            self._iterator = _iterate(self._batch)
        return self._iterator

    async def __anext__(self) -> RunResult:
        return await self.__aiter__().__anext__()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the jobs still running (their results are not delivered)."""
        if self._iterator is not None:
            await self._iterator.aclose()


async def _iterate(batch: _Batch) -> AsyncGenerator[RunResult, None]:
    """Run ``batch``, yielding results as they come.

    A module function, not a method: the generator must not reference its AsCompleted
    (a reference cycle would leave an unclosed iterator to the cycle collector, which
    finalises the streams it holds before the generator can close them).
    """
    send, receive = anyio.create_memory_object_stream[RunResult](math.inf)

    def emit(result: RunResult) -> None:
        # The consumer may have stopped listening (closed the iterator) meanwhile.
        try:
            send.send_nowait(result)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    async def drive() -> None:
        async with send:
            await batch.run(emit)

    # The group is entered and exited by hand, not with `async with`, for one case:
    # an iterator left with `break` and never closed is finalised later by the
    # garbage collector in *another* task, where exiting the group would raise
    # "exit cancel scope in a different task". Then the batch is stopped and the
    # group is left to end on its own (drive returns once its runs cleaned up).
    tg = anyio.create_task_group()
    await tg.__aenter__()
    host = anyio.get_current_task().id
    error: BaseException | None = None
    try:
        tg.start_soon(drive)
        async with receive:
            async for result in receive:
                yield result
    except GeneratorExit:
        pass  # closed: by aclose() / `async with`, or by the garbage collector
    except BaseException as exc:  # noqa: BLE001 - handed to the group's exit below
        error = exc
    finally:
        # Stops the batch's own scope (inside drive), never the group's: cancelling
        # the group's scope from another task would cancel the consumer's task.
        batch.stop("cancelled: the as_completed() iterator was closed")
    if anyio.get_current_task().id != host:
        warnings.warn(
            "an as_completed() iterator was left without being closed, so the jobs "
            "still running were only stopped when it was garbage collected; use "
            "`async with as_completed(...) as results:` to stop them where you leave",
            ResourceWarning,
            stacklevel=1,
        )
        return
    if error is None:
        await tg.__aexit__(None, None, None)
    elif not await tg.__aexit__(type(error), error, error.__traceback__):
        raise error


def as_completed(
    jobs: Iterable[JobLike],
    *,
    max_concurrency: int | None = None,
    fail_fast: bool = False,
    retries: int = 0,
    retry_backoff: float = DEFAULT_RETRY_BACKOFF,
    timeout: float | None = None,
    session: Session | None = None,
    config: TracingConfig | None = None,
    trace: TraceMode = "per-run",
    executor: Executor | None = None,
    on_event: Callable[[JobEvent], object] | None = None,
) -> AsCompleted:
    """
    Like :func:`run_many` (same arguments), but yields each result as its job finishes:
    ``async for result in aiorunner.as_completed(jobs): ...``. Every job yields exactly
    one result (skipped and cancelled ones too); ``result.name`` says which job it is.

    Raises:
        ConfigError: as :func:`run_many`, when called (before anything runs).
    """
    return AsCompleted(
        _Batch(
            jobs,
            max_concurrency=max_concurrency,
            fail_fast=fail_fast,
            retries=retries,
            retry_backoff=retry_backoff,
            timeout=timeout,
            session=session,
            config=config,
            trace=trace,
            executor=executor,
            on_event=on_event,
        )
    )


def _single_error(exc: BaseException) -> BaseException | None:
    """The one real error inside (nested) exception groups, if there is exactly one."""
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for inner in e.exceptions:
                walk(inner)
        elif not isinstance(e, anyio.get_cancelled_exc_class()):
            leaves.append(e)

    if not isinstance(exc, BaseExceptionGroup):
        return None
    walk(exc)
    return leaves[0] if len(leaves) == 1 else None
