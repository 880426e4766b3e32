"""
The export pipeline: a SpanProcessor that hands spans to its own event loop thread, which
batches them and fans each batch out to every backend.

Why a thread of its own: ``ScriptRunner.run_script()`` calls ``asyncio.run()`` per call, so
callers' loops come and go while a session lives on. The pipeline therefore runs on an
asyncio loop in a daemon thread, started at the first span: a session's three pipelines
(spans, logs, metrics) share one (``export_loop``, see ``loop.py``); a pipeline made
alone owns one.

The hand-off (``on_end``, called on whatever thread ended the span) never blocks and takes
no lock: it appends to a ``collections.deque`` (thread safe) bounded by ``max_queue_size``
spans not yet taken by the batcher, and wakes the export loop with
``call_soon_threadsafe`` only when needed: when a full batch is waiting, or for the first
span after the queue was emptied (to start the ``schedule_delay`` timer).

Threads ending spans flat out can starve the export thread of the GIL (measured: for whole
seconds with 4 threads, where the SDK's BatchSpanProcessor drops most spans). So a
producer finding the queue full sets its oldest full batch aside (``_assist``: the
batcher's own first step, bounded by another ``max_queue_size``), and once the export
thread is late, producers hand it the GIL with ``os.sched_yield`` instead of waiting for
the interpreter's forced switch, which may go to another busy thread. A span that still
does not fit is counted as dropped, globally and for its trace; none is lost uncounted.

On the export loop the batcher (plain callbacks, no task) takes whole batches as soon as
they are full, everything when the delay passes or a flush asks, and gives each batch to
every backend's :class:`~aiorunner._worker.BackendWorker` without waiting for any of them.

Flushes are coalesced: ``flush_trace`` drains the hand-off queue and waits until each
worker has settled everything it had been handed at that moment. Concurrent waiters share
the same batches (a worker merges queued batches before each export), so 100 runs ending
together make a few exports, not 100.

Ordering between the two sides, relied on below: a producer appends first and reads the
flags after; the loop publishes a flag first and re-reads the queue after.

The same class carries log records (``signal="logs"``, one more instance per session):
:meth:`emit` is the producer, the item's trace id is ``record.trace_id``, the workers call
``export_logs``, and there are no start announcements and no tail sampler. A run's pipe
reader asks :meth:`has_room` before handing records over and stops reading the script's
pipe while it is False (back-pressure: the script blocks on its write), so below the
run's cap no output line is dropped, however slow the backend.

And metric points (``signal="metrics"``, a third instance): :meth:`emit` again, the item's
trace id is the run's (``point.trace_id``), so a run's ``upload_traces`` waits for its
final points as for its spans; workers call ``export_metrics``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import select
import threading
import time
import weakref
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

import anyio
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, detach, set_value
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace.status import Status, StatusCode

from .ledger import DEFAULT_MAX_TRACES, TraceLedger
from .retry import DEFAULT_POLICY, RetryPolicy
from .statistics import PipelineStatistics
from .worker import BackendWorker, ErrorLog, redact

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import Span

    from .._result import ExportReport
    from .adapters import BackendAdapter
    from .loop import ExportLoop
    from .spool import Spool
    from .tail_sampling import TailSampler

__all__ = ["ROOT_SPAN_NAME", "ExportPipeline"]

logger = logging.getLogger("aiorunner.export")

#: Root spans of this name are also announced when they start (``on_span_start``).
ROOT_SPAN_NAME = "ScriptRunner"

# Extra time granted to backends' shutdown() when the drain used the whole deadline.
_SHUTDOWN_GRACE = 0.5
# At close, how long past its hedge delay a hedged export still in flight may go on (a
# collector slower than the hedge delay answers, and the hedge is withdrawn instead of
# sent again next time).
_HEDGES_AT_CLOSE = 1.0
# How long the export thread waits for in-flight flush calls to return before it stops.
_TASKS_GRACE = 1.0


_YIELDS_BEFORE_DROP = 16
# Releases the GIL and the CPU for a moment (not a sleep: returns at once when nothing else
# wants to run). Where the OS has no sched_yield, a zero select does the GIL part.
_yield = getattr(os, "sched_yield", None) or (lambda: select.select([], [], [], 0))
# True on a thread running an event loop: on_end there never yields (it would stall the
# loop); a span that finds the queue and the batches set aside full is dropped (counted).
_on_event_loop = asyncio._get_running_loop


def _hand_back(
    caller: asyncio.AbstractEventLoop, waiter: asyncio.Future[Any], task: asyncio.Task[Any]
) -> None:
    """On the export loop: pass a finished task's outcome to a waiter on ``caller``."""

    def settle() -> None:
        if waiter.done():
            return
        if task.cancelled():
            waiter.cancel()
        elif task.exception() is not None:
            waiter.set_exception(task.exception())  # type: ignore[arg-type]
        else:
            waiter.set_result(task.result())

    with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits
        caller.call_soon_threadsafe(settle)


def _trace_ids(batch: list[Any]) -> list[int]:
    # SpanContext is a tuple whose item 0 is the trace id: twice as fast as .trace_id.
    return [span.context[0] for span in batch]


def _record_trace_ids(batch: list[Any]) -> list[int]:
    return [record.trace_id for record in batch]


def _trace_id_of(item: Any) -> int:
    context = getattr(item, "context", None)
    return int(context[0]) if context is not None else int(item.trace_id)


class ExportPipeline(SpanProcessor):
    """
    Batching, fan-out export of finished spans to several backends.

    Args:
        adapters: the backends, already wrapped (``_adapters.adapt``).
        batch_size: spans per export (OTEL_BSP_MAX_EXPORT_BATCH_SIZE).
        max_queue_size: spans waiting for the batcher, and per backend
            (OTEL_BSP_MAX_QUEUE_SIZE).
        schedule_delay: seconds a span may wait for a batch to fill (OTEL_BSP_SCHEDULE_DELAY).
        export_timeout: deadline of one export, retries included (OTEL_BSP_EXPORT_TIMEOUT).
        policy: backoff between retries.
        max_traces: traces whose counts are kept for ``flush_trace`` (oldest forgotten).
        spools: each backend's spool (``None``: that backend is not spooled), in order.
        connect_budget: seconds of retries for a backend that cannot be reached.
        hedge: seconds an export may go unanswered before a spooled backend's batch is
            hedged (a copy spooled, the batch settled as spooled); 0: never.
        export_loop: an export thread shared with the session's other pipelines (see
            ``_export/loop.py``); None: this pipeline starts a thread of its own.
    """

    def __init__(
        self,
        adapters: Sequence[BackendAdapter],
        *,
        batch_size: int = 512,
        max_queue_size: int = 2048,
        schedule_delay: float = 5.0,
        export_timeout: float = 30.0,
        policy: RetryPolicy = DEFAULT_POLICY,
        max_traces: int = DEFAULT_MAX_TRACES,
        tail_sampler: TailSampler | None = None,
        spools: Sequence[Spool | None] | None = None,
        connect_budget: float | None = None,
        signal: str = "traces",
        keep_open: Sequence[BackendAdapter] = (),
        hedge: float = 0.0,
        export_loop: ExportLoop | None = None,
    ) -> None:
        if signal not in ("traces", "logs", "metrics"):
            raise ValueError(f"signal={signal!r}; use 'traces', 'logs' or 'metrics'")
        self.signal = signal
        self._ids = _trace_ids if signal == "traces" else _record_trace_ids
        # Backends another pipeline (the session's traces one) shuts down.
        self._keep_open = tuple(keep_open)
        self.adapters = tuple(adapters)
        self._spools = tuple(spools) if spools is not None else (None,) * len(self.adapters)
        #: Each spooled backend's drainer runs in the background from the export
        #: thread's start; ``aiorunner traces push --spool`` drains in the foreground.
        self.background_drain = True
        if (
            signal == "traces"
            and len(self.adapters) == 1
            and hasattr(self.adapters[0].target, "write_on_export_thread")
        ):
            # Nothing else to hold up: the embedded default (jsonl) writes on the export
            # thread itself (see JsonlBackend.write_on_export_thread).
            self.adapters[0].target.write_on_export_thread = True
        self._batch_size = max(1, min(batch_size, max_queue_size))
        self._max_queue = max_queue_size
        # A backend may cap the delay: the jsonl file wants every ended span on disk
        # within half a second (a runner killed at any moment loses at most that much).
        caps = [getattr(a.target, "max_schedule_delay", None) for a in self.adapters]
        self._delay = min(
            [schedule_delay, *(c for c in caps if isinstance(c, (int, float)) and c >= 0)]
        )
        self.export_timeout = export_timeout
        self.ledger = TraceLedger([a.name for a in self.adapters], max_traces=max_traces)
        self._errors = ErrorLog()
        self._worker_options: dict[str, Any] = {
            "batch_size": self._batch_size,
            # One take may bring the hand-off queue and the batches set aside.
            "max_queue": 2 * max_queue_size,
            "timeout": export_timeout,
            "policy": policy,
            "connect_budget": connect_budget,
            "signal": signal,
            "hedge": hedge,
        }
        self._workers = self._make_workers()
        # Between the hand-off queue and the batcher, on the export thread (issue 6).
        self._tail = tail_sampler if signal == "traces" else None
        # A run announced as running could be sampled out later: no announcements then.
        self._wants_start = (
            signal == "traces"
            and tail_sampler is None
            and any(a.wants_span_start for a in self.adapters)
        )
        # A start needs no wake-up of its own while the batcher's timer runs, if the timer
        # fires before any backend wanting it would announce it: those backends hold a
        # start until the span is that old (the jsonl file: 0.5 s, its delay cap), so it
        # is announced on time; the run's first span end or its flush takes it otherwise.
        holds = [
            getattr(a.target, "span_start_delay", 0.0) for a in self.adapters if a.wants_span_start
        ]
        self._starts_ride_timer = bool(holds) and all(
            isinstance(h, (int, float)) and h >= self._delay for h in holds
        )
        # Shared with producer threads (deque operations are atomic under the GIL).
        self._spans: deque[ReadableSpan] = deque()
        # Full batches a producer moved aside because the hand-off queue was full and the
        # export thread had not run yet (see _assist); bounded like the hand-off queue.
        self._ready: deque[list[ReadableSpan]] = deque()
        self._max_ready = max(1, max_queue_size // self._batch_size)
        self._pressure = min(2 * self._batch_size, max(1, max_queue_size // 2))
        self._starts: deque[ReadableSpan] = deque()
        # Trace ids whose per-trace counts someone will want (see _ledger).
        self._watch: deque[int] = deque()
        self._drops: deque[int] = deque()
        self._wake_pending = False
        self._armed = False
        self._closed = False
        # Owned by the export thread.
        self._taken = 0
        self._dropped = 0
        self._timer: asyncio.TimerHandle | None = None
        self._workers_stopped = False
        self._close_event = asyncio.Event()
        self._close_deadline = 0.0
        # Lifecycle.
        self._export_loop = export_loop
        # Tasks this pipeline started on the export loop (flush calls), for _finish_tasks.
        self._calls: set[asyncio.Task[Any]] = set()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._close_requested = False
        self._finished: concurrent.futures.Future[None] = concurrent.futures.Future()
        if hasattr(os, "register_at_fork"):
            method = weakref.WeakMethod(self._after_fork_in_child)

            def reinit() -> None:
                live = method()
                if live is not None:
                    live()

            os.register_at_fork(after_in_child=reinit)

    def _after_fork_in_child(self) -> None:
        """A forked child has no export thread: start this pipeline over, empty (the
        parent still exports what it had queued), so the child's own spans leave."""
        if self._closed:
            return
        self._lock = threading.Lock()
        self._loop = None
        self._thread = None
        self._close_requested = False
        self._finished = concurrent.futures.Future()
        self._calls = set()
        self._close_event = asyncio.Event()
        for queue in (self._spans, self._ready, self._starts, self._watch, self._drops):
            queue.clear()
        self._wake_pending = self._armed = self._workers_stopped = False
        self._timer = None
        self._taken = self._dropped = 0
        self.ledger = TraceLedger(self.ledger.names, max_traces=self.ledger.max_traces)
        self._workers = self._make_workers()

    def _make_workers(self) -> list[BackendWorker]:
        return [
            BackendWorker(
                index, adapter, self._errors, spool=self._spools[index], **self._worker_options
            )
            for index, adapter in enumerate(self.adapters)
        ]

    # ==================================================== producer side (any thread)

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """A ``ScriptRunner`` span starts: keep per-trace counts for its trace (its run
        will ask, in ``upload_traces``), and, for a root, announce it at once to backends
        that define ``on_span_start`` (the jsonl file's live-runs view shows it as
        running). What they get is a copy with no end time."""
        if span.name != ROOT_SPAN_NAME or self._closed:
            return
        context = span.get_span_context()
        if not context.trace_flags.sampled:
            return
        self._watch.append(context.trace_id)
        if not self._wants_start:
            return
        parent = span.parent
        if parent is not None and not parent.is_remote:
            return
        self._starts.append(
            ReadableSpan(
                name=span.name,
                context=context,
                parent=parent,
                resource=span.resource,
                attributes=dict(span.attributes or {}),
                kind=span.kind,
                status=Status(StatusCode.UNSET),
                start_time=span.start_time,
                end_time=None,
                instrumentation_scope=span.instrumentation_scope,
            )
        )
        if not self._wake_pending and not (self._armed and self._starts_ride_timer):
            self._wake()

    def on_end(self, span: ReadableSpan) -> None:
        """Hand a finished span over. Never blocks, never raises, never drops uncounted."""
        context = span.context
        if context is None or not context.trace_flags.sampled:
            return
        # _enqueue inlined: the call alone cost 0.2 µs a span, +60 % of on_end
        # (bench_pipeline); keep the two in step.
        spans = self._spans
        if self._closed:
            self._drops.append(context.trace_id)
            return
        waiting = len(spans)
        if waiting < self._max_queue or self._assist():
            spans.append(span)
            if waiting >= self._pressure and self._wake_pending and not _on_event_loop():
                # A wake-up was asked for and two batches wait: the export thread is late,
                # most likely waiting for the GIL. Hand it over now, not at the next forced
                # switch (which, with several busy threads, may go to another of them).
                # Never from an event loop's thread: that would stall the loop.
                _yield()
        else:
            # Full, and the batches set aside too: busy threads keep the export thread
            # from getting the GIL (measured: for seconds, with 4 threads ending spans).
            # Before dropping, give the GIL (and the CPU) away a few times: each yield
            # returns at once when nobody else wants to run, and this path is only taken
            # when the alternative is losing the span.
            for _ in range(0 if _on_event_loop() else _YIELDS_BEFORE_DROP):
                _yield()
                if len(spans) < self._max_queue or self._assist():
                    spans.append(span)
                    break
            else:
                self._drops.append(context.trace_id)
        if self._wake_pending:
            return
        if not self._armed or len(spans) >= self._batch_size:
            self._wake()

    def emit(self, record: Any) -> None:
        """Hand a log record over (``signal="logs"``); like :meth:`on_end`. Callers that
        must not lose records ask :meth:`has_room` first."""
        self._enqueue(record, record.trace_id)

    def has_room(self) -> bool:
        """True while the hand-off queue and every backend's queue have room for more
        (any thread; a racy read, off by a record or two, which the queues' slack
        covers). A producer that waits while this is False loses nothing to the queues."""
        limit = self._max_queue
        if len(self._spans) >= limit:
            return False
        return all(worker.queued < limit for worker in self._workers)

    def _enqueue(self, span: Any, trace_id: int) -> None:
        spans = self._spans
        if self._closed:
            self._drops.append(trace_id)
            return
        waiting = len(spans)
        if waiting < self._max_queue or self._assist():
            spans.append(span)
            if waiting >= self._pressure and self._wake_pending and not _on_event_loop():
                # A wake-up was asked for and two batches wait: the export thread is late,
                # most likely waiting for the GIL. Hand it over now, not at the next forced
                # switch (which, with several busy threads, may go to another of them).
                # Never from an event loop's thread: that would stall the loop.
                _yield()
        else:
            # Full, and the batches set aside too: busy threads keep the export thread
            # from getting the GIL (measured: for seconds, with 4 threads ending spans).
            # Before dropping, give the GIL (and the CPU) away a few times: each yield
            # returns at once when nobody else wants to run, and this path is only taken
            # when the alternative is losing the span.
            for _ in range(0 if _on_event_loop() else _YIELDS_BEFORE_DROP):
                _yield()
                if len(spans) < self._max_queue or self._assist():
                    spans.append(span)
                    break
            else:
                self._drops.append(trace_id)
        if self._wake_pending:
            return
        if not self._armed or len(spans) >= self._batch_size:
            self._wake()

    def _assist(self) -> bool:
        """The hand-off queue is full because the export thread is waiting for the GIL
        (with several busy threads that can take tens of milliseconds): move its oldest
        full batch aside, which is what the batcher would do, instead of dropping.
        False when the batches set aside are at their bound too."""
        ready = self._ready
        if len(ready) >= self._max_ready:
            return False
        popleft = self._spans.popleft
        batch: list[ReadableSpan] = []
        try:
            batch.extend(popleft() for _ in range(self._batch_size))
        except IndexError:  # another thread took the rest meanwhile
            pass
        if batch:
            ready.append(batch)
        return True

    def _wake(self) -> None:
        self._wake_pending = True
        loop = self._loop or self._start()
        try:
            loop.call_soon_threadsafe(self._on_wake)
        except RuntimeError:
            # The export loop is closed (session closed meanwhile): the span stays counted
            # as queued by statistics(), or was counted as dropped above.
            pass

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            return self._start_locked()

    def _start_locked(self) -> asyncio.AbstractEventLoop:
        if self._loop is not None:
            return self._loop
        if self._export_loop is not None:
            shared, self._thread = self._export_loop.acquire()
            self._loop = shared
            shared.call_soon_threadsafe(self._start_on_shared)
            return shared
        # Created here, run there: callbacks scheduled before the thread runs the loop
        # simply wait in its ready queue, so nobody has to wait for the thread.
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=self._thread_main, args=(loop,), name="aiorunner-export", daemon=True
        )
        self._thread = thread
        self._loop = loop
        thread.start()
        return loop

    # ================================================== export loop side (one thread)

    def _thread_main(self, loop: asyncio.AbstractEventLoop) -> None:
        self._finished.set_running_or_notify_cancel()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main())
            loop.run_until_complete(self._finish_tasks())
        except BaseException:  # the export thread must not die silently
            logger.exception("the aiorunner export thread stopped on an unexpected error")
        finally:
            # From now on spans are refused (and counted): nothing would take them.
            self._closed = True
            self._workers_stopped = True
            self._count_leftovers()
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                if not self._finished.done():
                    self._finished.set_result(None)

    def _start_on_shared(self) -> None:
        asyncio.get_running_loop().create_task(self._run_on_shared())

    async def _run_on_shared(self) -> None:
        """On a shared export loop: what ``_thread_main`` does on a loop of our own."""
        self._finished.set_running_or_notify_cancel()
        try:
            await self._main()
            await self._finish_tasks()
        except BaseException:  # the pipeline must not stop silently
            logger.exception("the aiorunner export pipeline stopped on an unexpected error")
        finally:
            self._closed = True
            self._workers_stopped = True
            self._count_leftovers()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if not self._finished.done():
                self._finished.set_result(None)
            assert self._export_loop is not None
            self._export_loop.release()

    async def _main(self) -> None:
        # Spans made while exporting (an instrumented HTTP client, say) must not feed back
        # into the pipeline. Tasks and worker threads inherit this context.
        token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            async with anyio.create_task_group() as tg:
                for worker in self._workers:
                    tg.start_soon(worker.run, name=f"aiorunner export to {worker.name}")
                    if worker.spool is not None and self.background_drain:
                        tg.start_soon(worker.drain, name=f"aiorunner spool of {worker.name}")
                # Let the drainers start before a close asked for already is seen: a
                # session closed at once (``aiorunner traces push --spool``'s logs and
                # metrics) still sends its spools back for up to a second (stop_draining).
                await asyncio.sleep(0)
                await self._close_event.wait()
                for worker in self._workers:
                    worker.stop_draining()
                self._drain_all()
                self._release_tail()
                with anyio.move_on_after(max(0.0, self._close_deadline - anyio.current_time())):
                    for worker in self._workers:
                        await worker.wait_settled(worker.received)
                    for worker in self._workers:
                        await worker.wait_drain_stopped()
                left = max(0.0, self._close_deadline - anyio.current_time())
                with anyio.move_on_after(left):
                    for worker in self._workers:
                        await worker.wait_hedges(_HEDGES_AT_CLOSE)
                self._workers_stopped = True
                tg.cancel_scope.cancel()
            self._drain_all()  # late arrivals are counted as dropped
            # What was still in flight or queued goes to the spools, not waited for.
            with anyio.move_on_after(_SHUTDOWN_GRACE + _TASKS_GRACE, shield=True):
                for worker in self._workers:
                    await worker.spool_leftovers()
            budget = max(self._close_deadline - anyio.current_time(), _SHUTDOWN_GRACE)
            async with anyio.create_task_group() as tg:
                for adapter in self.adapters:
                    if adapter not in self._keep_open:
                        tg.start_soon(self._shutdown_backend, adapter, budget)
        finally:
            detach(token)

    async def _shutdown_backend(self, adapter: BackendAdapter, budget: float) -> None:
        with anyio.move_on_after(budget) as scope:
            try:
                await adapter.shutdown(timeout=budget)
            except Exception as exc:  # noqa: BLE001 - a plugin's bug must not stop the others
                logger.warning(
                    "backend %r raised while shutting down: %s",
                    adapter.name,
                    redact(f"{type(exc).__name__}: {exc}"),
                )
        if scope.cancelled_caught:
            logger.warning(
                "backend %r did not shut down within %.3gs; abandoned", adapter.name, budget
            )

    async def _finish_tasks(self) -> None:
        """Let flush calls still in flight return (every waiter was released)."""
        current = asyncio.current_task()
        if self._export_loop is not None:  # the loop's other tasks are other pipelines'
            tasks = [task for task in self._calls if not task.done()]
        else:
            tasks = [task for task in asyncio.all_tasks() if task is not current]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=_TASKS_GRACE)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=_TASKS_GRACE)

    def _on_wake(self) -> None:
        self._wake_pending = False
        self._collect_drops()
        ready = len(self._ready)  # read before the starts: see _take
        waiting = len(self._spans)
        full = waiting - waiting % self._batch_size
        if ready or full or self._starts:
            self._take(ready, full)
        self._rearm()

    def _on_timer(self) -> None:
        self._timer = None
        self._drain_all()

    def _drain_all(self) -> None:
        self._collect_drops()
        self._take(len(self._ready), len(self._spans))
        self._rearm()

    def _rearm(self) -> None:
        """Keep a timer running while spans wait in the hand-off queue.

        A running timer is kept even when the queue was just emptied (by a flush): it
        fires, finds nothing and disarms. Meanwhile producers see the pipeline armed and
        end their spans without waking this thread, which on a busy machine costs more
        than the span itself (a run ends seven spans around its two flushes). A span
        still leaves within ``schedule_delay`` of its end, or at the next flush.
        """
        if self._timer is not None:
            self._armed = True
            return
        if not self._spans and not self._ready:
            self._armed = False
            if not self._spans and not self._ready:
                return  # re-read after publishing: a producer may just have added one
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._delay, self._on_timer)
        self._armed = True

    def _collect_drops(self) -> None:
        drops = self._drops
        ledger = self.ledger
        watch = self._watch
        while watch:
            ledger.watch(watch.popleft())
        while drops:
            trace_id = drops.popleft()
            self._dropped += 1
            ledger.dropped_before_export(trace_id)

    def _take(self, ready: int, count: int) -> None:
        """Move ``ready`` set-aside batches, ``count`` spans of the hand-off queue (both
        read from ``len()`` *before* this call) and every announced start to the workers.
        A start is appended before its span's end, so reading the lengths first makes
        each start travel ahead of its span."""
        watch = self._watch
        while watch:
            self.ledger.watch(watch.popleft())
        starts = self._starts
        while starts:
            span = starts.popleft()
            if not self._workers_stopped:
                for worker in self._workers:
                    worker.put_start(span)
        for _ in range(ready):
            self._dispatch(self._ready.popleft())
        popleft = self._spans.popleft
        size = self._batch_size
        while count > 0:
            n = min(size, count)
            count -= n
            batch: list[ReadableSpan] = []
            try:
                batch.extend(popleft() for _ in range(n))
            except IndexError:  # a producer set some aside meanwhile: taken next time
                count = 0
            if batch:
                self._dispatch(batch)

    def _dispatch(self, batch: list[ReadableSpan]) -> None:
        self._taken += len(batch)
        if self._tail is not None:
            batch = self._tail.offer(batch)
            if not batch:
                return
        self._send(batch)

    def _release_tail(self, trace_id: int | None = None) -> None:
        """Have the tail sampler decide held traces now: one someone waits for, or all."""
        if self._tail is None:
            return
        tail = self._tail
        spans = tail.decide(trace_id) if trace_id is not None else tail.decide_all()
        if spans:
            self._send(spans)

    def _send(self, batch: list[ReadableSpan]) -> None:
        size = self._batch_size
        if len(batch) > size:
            # A tail-sampling decision can release a whole run at once: keep batches at
            # batch_size (a backend's queue bound and the exporters' limits expect it).
            for start in range(0, len(batch), size):
                self._send(batch[start : start + size])
            return
        n = len(batch)
        counts = Counter(self._ids(batch))
        if self._workers_stopped:
            self._dropped += n
            for trace_id, dropped in counts.items():
                self.ledger.dropped_before_export(trace_id, dropped)
            return
        record = self.ledger.record(counts)
        for worker in self._workers:
            worker.put_batch(batch, record)

    def _count_leftovers(self) -> None:
        self._collect_drops()
        self._take(len(self._ready), len(self._spans))
        self._release_tail()

    async def _flush_on_loop(self, trace_id: int | None, timeout: float) -> tuple[bool, Any]:
        if trace_id is not None:
            self.ledger.watch(trace_id)
        self._drain_all()
        self._release_tail(trace_id)
        targets = [(worker, worker.received) for worker in self._workers]
        done = False
        with anyio.move_on_after(timeout):
            for worker, target in targets:
                await worker.wait_settled(target)
            done = True
        report = None
        if trace_id is not None:
            report = self.ledger.report(trace_id)
            if self._tail is not None and self._tail.sampled_out(trace_id):
                report = dataclasses.replace(report, sampled_out=True)
            if done and report.pending:
                # Spans of this trace taken after the flush began (other runs sharing the
                # trace: run_many(trace="batch")) are not what this flush waited for.
                report = dataclasses.replace(
                    report,
                    pending=0,
                    backends=tuple(dataclasses.replace(b, pending=0) for b in report.backends),
                )
        return done, report

    def _forget(self, trace_id: int) -> None:
        self.ledger.forget(trace_id)

    # ===================================================== caller side (any thread/loop)

    async def flush_trace(self, trace_id: int, timeout: float) -> ExportReport:
        """Wait (without blocking the caller's loop) until every span of ``trace_id``
        ended so far is settled by every backend, or ``timeout``; return its counts."""
        _, report = await self._call(timeout, self._flush_on_loop, trace_id, timeout)
        return report if report is not None else self._report_unanswered(trace_id)

    def _report_unanswered(self, trace_id: int) -> ExportReport:
        """The trace's counts when the export thread did not answer (or never ran): the
        spans still waiting for it are pending, not silently fine."""
        report = self.ledger.report(trace_id)
        queued = sum(1 for span in list(self._spans) if _trace_id_of(span) == trace_id)
        queued += sum(
            1 for batch in list(self._ready) for span in batch if _trace_id_of(span) == trace_id
        )
        if not queued:
            return report
        return dataclasses.replace(report, pending=report.pending + queued)

    async def flush_trace_then(
        self, trace_id: int, timeout: float, then: Callable[[ExportReport], None]
    ) -> tuple[ExportReport, ExportReport]:
        """:meth:`flush_trace`, then ``then(report)`` on the export thread, then
        :meth:`flush_trace` again, all within ``timeout``: a run's ``upload_traces``
        records how its spans' export went, ends, and is exported itself, for one
        round trip between the caller's thread and the export thread instead of two."""
        reports: tuple[ExportReport, ExportReport] | None
        _, reports = await self._call(timeout, self._flush_then_on_loop, trace_id, timeout, then)
        if reports is None:  # no span ever ended here, or the export thread was stuck
            report = self._report_unanswered(trace_id)
            return report, report
        return reports

    async def _flush_then_on_loop(
        self, trace_id: int, timeout: float, then: Callable[[ExportReport], None]
    ) -> tuple[bool, tuple[ExportReport, ExportReport]]:
        # With a trace id, _flush_on_loop always returns that trace's report.
        deadline = time.monotonic() + timeout
        _, first = await self._flush_on_loop(trace_id, timeout)
        try:
            then(first)
        except Exception:  # the run's spans must still leave; the caller logs nothing else
            logger.exception("ending the spans of trace %032x failed", trace_id)
        done, second = await self._flush_on_loop(trace_id, max(0.0, deadline - time.monotonic()))
        return done, (first, second)

    async def flush_run(
        self,
        trace_id: int,
        timeout: float,
        then: Callable[[ExportReport], None],
        others: Sequence[ExportPipeline],
    ) -> tuple[ExportReport, ExportReport, tuple[ExportReport, ...]]:
        """:meth:`flush_trace_then`, and :meth:`flush_trace` of ``others`` (pipelines on
        the same shared export loop: the session's logs and metrics) at the same time, in
        one round trip between the caller's thread and the export thread instead of one
        per signal. Returns the two span reports and one report per other pipeline."""
        result: tuple[tuple[ExportReport, ExportReport], list[ExportReport | None]] | None
        _, result = await self._call(
            timeout, self._flush_run_on_loop, trace_id, timeout, then, others
        )
        if result is None:  # no span ever ended here, or the export thread was stuck
            report = self._report_unanswered(trace_id)
            return report, report, tuple(p._report_unanswered(trace_id) for p in others)
        (first, second), found = result
        return (
            first,
            second,
            tuple(
                r if r is not None else p._report_unanswered(trace_id)
                for p, r in zip(others, found, strict=True)
            ),
        )

    async def _flush_run_on_loop(
        self,
        trace_id: int,
        timeout: float,
        then: Callable[[ExportReport], None],
        others: Sequence[ExportPipeline],
    ) -> tuple[bool, tuple[tuple[ExportReport, ExportReport], list[ExportReport | None]]]:
        found: list[ExportReport | None] = [None] * len(others)
        loop = asyncio.get_running_loop()

        async def flush_other(index: int, other: ExportPipeline) -> None:
            # One that never started (no item yet) or has stopped answers for itself.
            if other._loop is loop and not other._finished.done():
                _, found[index] = await other._flush_on_loop(trace_id, timeout)

        async with anyio.create_task_group() as tg:
            for index, other in enumerate(others):
                tg.start_soon(flush_other, index, other)
            done, reports = await self._flush_then_on_loop(trace_id, timeout, then)
        return done, (reports, found)

    async def flush(self, timeout: float) -> bool:
        """Wait until every span ended so far is settled; False on timeout."""
        done, _ = await self._call(timeout, self._flush_on_loop, None, timeout)
        return bool(done)

    async def _call(self, timeout: float, func: Any, *args: Any) -> tuple[bool, Any]:
        """Run ``func(*args)`` on the export loop and wait for it here, at most
        ``timeout`` (plus a grace): ``func`` keeps its own deadline on the export loop, and
        this one holds even if that loop is stuck in a backend's blocking call."""
        loop = self._loop
        if loop is None:
            return True, None  # no span ever ended: nothing to wait for
        if not self._finished.done():
            # Not run_coroutine_threadsafe + wrap_future: a task there, and one wake-up back
            # here when it is done, without a concurrent.futures.Future in between (two
            # flushes a run; on a busy machine every cross-thread step costs).
            caller = asyncio.get_running_loop()
            waiter: asyncio.Future[tuple[bool, Any]] = caller.create_future()
            tasks: list[asyncio.Task[Any]] = []

            def start() -> None:  # on the export loop
                if waiter.done():
                    return  # the caller gave up already
                task = loop.create_task(func(*args))
                tasks.append(task)
                self._calls.add(task)
                task.add_done_callback(self._calls.discard)
                task.add_done_callback(lambda done: _hand_back(caller, waiter, done))

            def give_up() -> None:  # on the caller's loop
                if not waiter.done():
                    waiter.set_result((False, None))

            try:
                loop.call_soon_threadsafe(start)
            except RuntimeError:
                pass  # the export loop closed meanwhile; its counts are final
            else:
                stuck = caller.call_later(timeout + _TASKS_GRACE, give_up)
                try:
                    return await waiter
                except BaseException:
                    with contextlib.suppress(RuntimeError):  # the export loop closed
                        loop.call_soon_threadsafe(lambda: [task.cancel() for task in tasks])
                    raise
                finally:
                    stuck.cancel()
        return self._finished.done(), None

    async def drain_spools(self, timeout: float) -> dict[str, bool]:
        """Send every spooled backend's spool now (``aiorunner traces push --spool``),
        within ``timeout``; per backend name, True when its spool was emptied."""
        self._start()
        _, result = await self._call(timeout, self._drain_spools_on_loop, timeout)
        return result if isinstance(result, dict) else {}

    async def _drain_spools_on_loop(self, timeout: float) -> tuple[bool, dict[str, bool]]:
        emptied = {w.name: False for w in self._workers if w.spool is not None}
        with anyio.move_on_after(timeout):
            for worker in self._workers:
                if worker.spool is not None:
                    emptied[worker.name] = await worker._drain_pass()
        return True, emptied

    def watch_trace(self, trace_id: int) -> None:
        """Keep per-trace counts for ``trace_id`` from now on (runs' traces are watched
        from the start of their ScriptRunner span). Never blocks (any thread)."""
        self._watch.append(trace_id)

    def forget_trace(self, trace_id: int) -> None:
        """Drop the counts kept for ``trace_id`` (they are also forgotten LRU-wise)."""
        loop = self._loop
        if loop is None or self._finished.done():
            self.ledger.forget(trace_id)
            return
        try:
            loop.call_soon_threadsafe(self._forget, trace_id)
        except RuntimeError:
            self.ledger.forget(trace_id)

    def request_close(self, timeout: float) -> concurrent.futures.Future[None]:
        """Start closing (idempotent): refuse new spans (counted as dropped), drain what is
        queued for up to ``timeout`` seconds, stop the workers, shut the backends down.
        Returns a future done when the export thread has stopped."""
        with self._lock:
            self._closed = True
            if self._close_requested:
                return self._finished
            self._close_requested = True
            loop = self._start_locked()
        try:
            loop.call_soon_threadsafe(self._begin_close, timeout)
        except RuntimeError:
            # The export loop is closed: this pipeline stopped on an unexpected error
            # (logged; its leftovers counted then) and its future is done.
            pass
        return self._finished

    def _begin_close(self, timeout: float) -> None:
        # A plain callback (no task): anyio.current_time() needs a task, loop.time() is
        # the same clock.
        self._close_deadline = asyncio.get_running_loop().time() + timeout
        self._close_event.set()

    async def aclose(self, timeout: float) -> None:
        finished = self.request_close(timeout)
        with anyio.move_on_after(timeout + _SHUTDOWN_GRACE + _TASKS_GRACE):
            # Shielded: giving up waiting must not cancel the thread's own future.
            await asyncio.shield(asyncio.wrap_future(finished))

    def close(self, timeout: float) -> None:
        """Blocking close, for interpreter exit and synchronous callers."""
        finished = self.request_close(timeout)
        if threading.current_thread() is self._thread:
            return  # cannot wait for ourselves
        try:
            finished.result(timeout + _SHUTDOWN_GRACE + _TASKS_GRACE)
        except concurrent.futures.TimeoutError:
            logger.warning("the aiorunner export thread did not stop within %.3gs", timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def count_dropped(self, trace_id: int, count: int) -> None:
        """Count ``count`` spans of ``trace_id`` lost before reaching us (a script's
        in-script tracing could not send them). Never blocks (any thread)."""
        self._drops.extend([trace_id] * count)

    def statistics(self) -> PipelineStatistics:
        backends = tuple(worker.statistics() for worker in self._workers)
        # Approximate while producers set batches aside (they are full but for the last).
        queued = len(self._spans) + len(self._ready) * self._batch_size
        dropped = self._dropped + len(self._drops)
        return PipelineStatistics(
            received=self._taken + queued + dropped,
            queued=queued,
            dropped=dropped,
            exported=sum(b.exported for b in backends),
            failed=sum(b.failed for b in backends),
            spooled=sum(b.spooled for b in backends),
            backends=backends,
            tail=self._tail.statistics() if self._tail is not None else None,
        )

    # ============================================================ SpanProcessor API

    def shutdown(self) -> None:
        """``TracerProvider.shutdown()``: close, draining within the export timeout."""
        self.close(self.export_timeout)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """``TracerProvider.force_flush()`` (blocking; prefer ``await session.flush()``)."""
        loop = self._loop
        if loop is None or self._finished.done():
            return True
        if threading.current_thread() is self._thread:
            return False
        timeout = timeout_millis / 1000
        try:
            future = asyncio.run_coroutine_threadsafe(self._flush_on_loop(None, timeout), loop)
            done, _ = future.result(timeout + _TASKS_GRACE)
        except (RuntimeError, concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            return False
        return bool(done)
