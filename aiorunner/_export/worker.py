"""
One backend's queue and export task on the export loop: the unit of isolation.

Every backend gets its own :class:`BackendWorker`, so a backend that hangs until the export
timeout, fails, or raises delays nobody else: the batcher hands each batch to every worker
without waiting, and each worker exports at its own pace. A worker's queue is bounded (in
spans, by twice ``max_queue_size``) while its backend is busy with an export; when a stuck
backend lets it fill up, further batches are dropped *for that backend only*, and counted.

Batches waiting in the queue are merged up to ``batch_size`` before an export, which is what
makes flushes coalesce: while one export is in flight, the spans of every run that asked
for a flush meanwhile gather into the next one.

A root span's start (``on_span_start``) is announced at once, except to a backend that
asks for a ``span_start_delay`` (the jsonl file, where announcing a start is writing an
entry of its live-runs view): there the worker holds the start that long and announces it
only if the span's end has not come through meanwhile, so a short run costs that backend
nothing at its start. A held start counts as settled at once: flushes never wait for it.

A batch the backend could not take (unreachable within the connect budget, or retryable
until its deadline: the pipeline's export timeout, or the backend's own
``export_timeout`` when shorter) goes to the backend's :class:`~.spool.Spool` and is
settled as *spooled*. The backend is then *down* for a while (1 s, doubling per failed
probe up to 30 s): batches meanwhile go straight to the spool instead of waiting out
another deadline, so a dead collector costs a run one connect budget, not one per
batch. The worker's drainer (:meth:`BackendWorker.drain`) sends the spool back, oldest
line first, at the session's start and whenever the backend comes back; its first
success ends the outage. One WARNING per outage says where the spans went.

Hedging (``AIORUNNER_SPOOL_HEDGE``, 1 s by default; spooled backends only). A hung
collector (it accepts the connection, never answers) is not known to be down until a
whole deadline has passed (``OTEL_EXPORTER_OTLP_TIMEOUT``, 10 s), and a run waiting for
its spans would wait that long. So an export runs as a task of its own, and once it has
gone unanswered for the hedge delay the worker writes a copy of the batch to the spool (a
locked hedge file, see :mod:`.spool`) and settles the batch as *spooled*: the runs
waiting on it go on, while the attempt goes on within its own deadline. Meanwhile the
backend counts as down (later batches go straight to the spool, the drainer waits). If
the attempt succeeds, the hedge is withdrawn (its file removed; the batch counts as
exported and ``hedges_withdrawn``) and the drainer sends what was spooled meanwhile; if
it fails, the file stays, a spooled batch like any other (counted once, as spooled). At
close, an attempt still in flight gets a short grace (the pipeline's
``_HEDGES_AT_CLOSE``, 1 s: a collector slower than the hedge answers then, and its copy is
withdrawn instead of being sent again by the next session: measured, a 1.5 s collector
got 5 of a run's 7 spans twice without it), then is cancelled and its hedge stays.
The counts add up: exported + failed + dropped + spooled - hedges_withdrawn = spans
settled.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import re
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import anyio

from ..backend import ExportStatus
from .ledger import DROPPED, EXPORTED, FAILED, SPOOLED
from .retry import DEFAULT_POLICY, Outcome, RetryPolicy, export_with_retry
from .statistics import BackendStatistics

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from opentelemetry.sdk.trace import ReadableSpan

    from ..backend import ExportResult
    from .adapters import BackendAdapter
    from .ledger import BatchRecord
    from .spool import Hedge, Spool

__all__ = ["BackendWorker", "ErrorLog"]

logger = logging.getLogger("aiorunner.export")

# Header-like "key: value" / "key=value" pairs whose value must never reach a log.
_SECRET_PAIR = re.compile(
    r"(?i)\b(authorization|proxy-authorization|api[-_]?key|x-api-key|[\w-]*token[\w-]*|"
    r"[\w-]*secret[\w-]*|password|x-honeycomb-team|dd-api-key)(\s*[:=]\s*)"
    r"(bearer\s+|basic\s+)?([^\s,;'\"]+)"
)


def redact(text: str) -> str:
    """Mask values that look like credentials (``api-key=abc`` -> ``api-key=[secure]``)."""
    return _SECRET_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3) or ''}[secure]", text)


_DIGITS = re.compile(r"\d+")

#: How long a backend that failed is left alone before it is tried again (doubling).
_DOWN_FIRST = 1.0
_DOWN_MAX = 30.0
#: At close, the drainer goes on sending this long (a small spool empties; a big one
#: does not hold the process's exit up), then stops after the line in flight.
_DRAIN_AT_CLOSE = 1.0


class ErrorLog:
    """Logs each distinct error of each backend once, so a dead collector makes one
    warning rather than one per batch."""

    def __init__(self, limit: int = 1000) -> None:
        self._seen: set[tuple[str, str]] = set()
        self._limit = limit

    def warn(
        self,
        backend: str,
        message: str,
        *,
        spans: int,
        exc: BaseException | None = None,
        unit: str = "span",
    ) -> None:
        # The same error with other counts ("gave up after 9 attempts" / "10 attempts")
        # is the same error: digits do not make it distinct.
        key = (backend, unit + _DIGITS.sub("#", message))
        if key in self._seen:
            return
        if len(self._seen) >= self._limit:
            self._seen.clear()
        self._seen.add(key)
        logger.warning(
            "backend %r could not export %d %s%s: %s (logged once per distinct error; "
            "RunResult.export and Session.statistics() count every failure)",
            backend,
            spans,
            unit,
            "" if spans == 1 else "s",
            message,
            exc_info=exc,
        )


def _encode_spans(spans: Sequence[Any]) -> bytes:
    from .otlp_json import encode_line

    return encode_line(spans)


def _decode_spans(line: bytes) -> list[Any]:
    from .otlp_json import decode_line

    return decode_line(line)


def _encode_logs(records: Sequence[Any]) -> bytes:
    from .logs import encode_logs_line

    return encode_logs_line(records)


def _decode_logs(line: bytes) -> list[Any]:
    import json

    from .logs import decode_logs_request

    try:
        return decode_logs_request(json.loads(line))
    except (TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"not an ExportLogsServiceRequest line: {exc}") from exc


def _encode_metrics(points: Sequence[Any]) -> bytes:
    from .metrics import encode_metrics_line

    return encode_metrics_line(points)


def _decode_metrics(line: bytes) -> list[Any]:
    import json

    from .metrics import decode_metrics_request

    try:
        return decode_metrics_request(json.loads(line))
    except (TypeError, KeyError, AttributeError) as exc:
        raise ValueError(f"not an ExportMetricsServiceRequest line: {exc}") from exc


#: How a spool line is written and read back, per signal.
_LINE_FORMATS: dict[str, tuple[Callable[[Sequence[Any]], bytes], Callable[[bytes], list[Any]]]] = {
    "traces": (_encode_spans, _decode_spans),
    "logs": (_encode_logs, _decode_logs),
    "metrics": (_encode_metrics, _decode_metrics),
}
#: Each signal's export verb (a BackendAdapter method) and what one item is called.
_VERBS = {
    "traces": ("export", "span"),
    "logs": ("export_logs", "log record"),
    "metrics": ("export_metrics", "metric point"),
}


class _Batch:
    __slots__ = ("records", "spans")

    def __init__(self, spans: Sequence[ReadableSpan], records: list[BatchRecord]) -> None:
        self.spans = spans
        self.records = records


class _Attempt:
    """One hedged export in flight: its task sets ``outcome`` and ``done``; once the
    worker has hedged it (``hedge`` set), the task concludes the batch itself."""

    __slots__ = ("batch", "done", "hedge", "outcome", "started")

    def __init__(self, batch: _Batch) -> None:
        self.batch = batch
        self.started = anyio.current_time()
        self.done = anyio.Event()
        self.outcome: Outcome | None = None
        self.hedge: Hedge | None = None


class _Start:
    __slots__ = ("span",)

    def __init__(self, span: ReadableSpan) -> None:
        self.span = span


class BackendWorker:
    """The queue and export task of one backend. Lives on the export loop only."""

    def __init__(
        self,
        index: int,
        adapter: BackendAdapter,
        errors: ErrorLog,
        *,
        batch_size: int,
        max_queue: int,
        timeout: float,
        policy: RetryPolicy = DEFAULT_POLICY,
        spool: Spool | None = None,
        connect_budget: float | None = None,
        signal: str = "traces",
        hedge: float = 0.0,
    ) -> None:
        self.index = index
        self.adapter = adapter
        self.name = adapter.name
        # The export verb and the spool's line format, chosen once: spans, or log
        # records (the logs pipeline).
        verb, self._unit = _VERBS[signal]
        self._verb: Callable[..., Awaitable[ExportResult]] = getattr(adapter, verb)
        self._encode, self._decode = _LINE_FORMATS[signal]
        self._errors = errors
        self._batch_size = batch_size
        self._max_queue = max_queue
        self._timeout = timeout
        # The deadline of one batch, retries included: the backend's own bound
        # (OTEL_EXPORTER_OTLP_TIMEOUT for aiorunner-otlp) when it is the shorter.
        own = getattr(adapter.target, "export_timeout", None)
        self._limit_name = "export timeout, OTEL_BSP_EXPORT_TIMEOUT"
        self._deadline = timeout
        if isinstance(own, (int, float)) and not isinstance(own, bool) and 0 < own < timeout:
            self._deadline = float(own)
            self._limit_name = "the backend's own timeout, e.g. OTEL_EXPORTER_OTLP_TIMEOUT"
        self._policy = policy
        self.spool = spool
        self._connect_budget = connect_budget
        # Hedging: only with a spool, and only when it can fire before the deadline.
        self._hedge = hedge if spool is not None and 0 < hedge < self._deadline else 0.0
        self._hedge_reason = (
            f"no answer within {hedge:g}s (AIORUNNER_SPOOL_HEDGE); the export goes on in "
            "the background and its spooled copy is removed if it succeeds"
        )
        # Hedged attempts in flight (the backend counts as down meanwhile).
        self._hedged: set[_Attempt] = set()
        self._hedges_over: asyncio.Event | None = None
        self._attempts: anyio.abc.TaskGroup | None = None
        # Outage state (loop clock): while now < _down_until, batches go to the spool.
        self._down_until = 0.0
        self._down_streak = 0
        self._drain_wakeup: asyncio.Event | None = None
        self._drain_running = False
        self._drain_stopped: asyncio.Event | None = None
        self._stop_draining = False
        self._drain_until = 0.0
        # Batches left at close (in flight, queued): spooled by spool_leftovers().
        self._leftovers: list[_Batch] = []
        self._queue: deque[_Batch | _Start] = deque()
        self._queued_spans = 0
        self._wakeup: asyncio.Event | None = None
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._tiebreak = itertools.count()
        self._inflight: _Batch | None = None
        # Exports that complete without awaiting (see _send).
        self._inline = getattr(adapter.target, "write_on_export_thread", False) is True
        delay = getattr(adapter.target, "span_start_delay", 0.0)
        self._start_delay = float(delay) if isinstance(delay, (int, float)) and delay > 0 else 0.0
        # Starts held back (span id -> (when due on the loop's clock, span)), in the order
        # they came, which with one delay for all is the order they fall due.
        self._held: dict[int, tuple[float, ReadableSpan]] = {}
        # True while the task works through its queue (an export or a start in flight);
        # False while it waits for work, even if it was just woken and has not run yet.
        self._busy = False
        #: Items handed to this worker (a span, or a span start, counts 1), and how many of
        #: them are done with; flushes wait for ``settled`` to catch up with ``received``.
        self.received = 0
        self.settled = 0
        self.exported = 0
        self.failed = 0
        self.dropped = 0
        self.export_calls = 0
        self.retries = 0
        self.timeouts = 0
        self.spooled = 0
        self.unspooled = 0
        self.spool_evicted = 0
        self.hedged = 0
        self.hedges_withdrawn = 0
        self.last_error: str | None = None

    # ---------------------------------------------------------------- fed by the batcher

    def put_batch(self, spans: Sequence[ReadableSpan], record: BatchRecord) -> None:
        """Queue a batch (never blocks). While the backend is busy with an earlier export,
        its queue is bounded: a batch that does not fit is dropped for this backend only,
        and counted. An idle worker takes everything: it will run before the batcher
        does again."""
        size = len(spans)
        self.received += size
        if self._busy and self._queued_spans + size > self._max_queue:
            variable = {
                "span": "OTEL_BSP_MAX_QUEUE_SIZE",
                "log record": "OTEL_BLRP_MAX_QUEUE_SIZE",
            }.get(self._unit, "AIORUNNER_METRICS_MAX_QUEUE_SIZE")
            error = (
                f"queue full ({self._max_queue} {self._unit}s waiting, {variable}): "
                f"the backend is slower than the {self._unit}s arrive"
            )
            self._settle_dropped(_Batch(spans, [record]), error)
            return
        self._queue.append(_Batch(spans, [record]))
        self._queued_spans += size
        self._wake()

    def put_start(self, span: ReadableSpan) -> None:
        """Queue a root span that just started (for backends with ``on_span_start``)."""
        if self.adapter.wants_span_start:
            self.received += 1
            self._queue.append(_Start(span))
            self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    @property
    def queued(self) -> int:
        return self._queued_spans

    # ------------------------------------------------------------------------ the task

    async def run(self) -> None:
        """Export queued batches one merged batch at a time, until cancelled; then count
        whatever is left as dropped (the session closed before it could go)."""
        self._wakeup = asyncio.Event()
        try:
            async with anyio.create_task_group() as attempts:
                self._attempts = attempts
                await self._loop()
        finally:
            self._attempts = None
            self._abandon()

    async def _loop(self) -> None:
        assert self._wakeup is not None
        while True:
            if self._held:
                await self._announce_due()
            if not self._queue:
                self._busy = False
                self._wakeup.clear()
                if not self._held:
                    await self._wakeup.wait()
                    continue
                with anyio.move_on_after(self._next_due()):
                    await self._wakeup.wait()
                continue
            self._busy = True
            item = self._queue.popleft()
            if isinstance(item, _Start):
                if self._start_delay:
                    span_id = item.span.context.span_id  # type: ignore[union-attr]
                    # Held until the span is that old (it may have waited for its batch).
                    started = item.span.start_time
                    age = max(0, time.time_ns() - started) / 1e9 if started else 0.0
                    due = anyio.current_time() + max(0.0, self._start_delay - age)
                    self._held[span_id] = (due, item.span)
                else:
                    await self._span_start(item.span)
                self._settled(1)
                continue
            batch = self._merge(item)
            self._queued_spans -= len(batch.spans)
            if self._held:
                self._release_ended(batch.spans)
            self._inflight = batch
            await self._export(batch)
            self._inflight = None

    def _next_due(self) -> float:
        """Seconds until the first held start falls due (some start is held)."""
        due, _ = next(iter(self._held.values()))
        return max(0.0, due - anyio.current_time())

    async def _announce_due(self) -> None:
        """Announce the held starts whose delay has passed (their spans are still open)."""
        held = self._held
        now = anyio.current_time()
        while held:
            span_id, (due, span) = next(iter(held.items()))
            if due > now:
                return
            del held[span_id]
            self._busy = True
            await self._span_start(span)

    def _release_ended(self, spans: Sequence[ReadableSpan]) -> None:
        """Forget held starts whose span ended in ``spans``: nothing to announce."""
        held = self._held
        for span in spans:
            context = span.context
            if context is not None:
                held.pop(context.span_id, None)

    def _merge(self, first: _Batch) -> _Batch:
        queue = self._queue
        if not queue or not isinstance(queue[0], _Batch):
            return first
        spans = list(first.spans)
        records = list(first.records)
        while queue:
            head = queue[0]
            if not isinstance(head, _Batch) or len(spans) + len(head.spans) > self._batch_size:
                break
            queue.popleft()
            spans.extend(head.spans)
            records.extend(head.records)
        return _Batch(spans, records)

    async def _send(self, spans: Sequence[Any]) -> Outcome:
        """One batch to the backend, retried inside its deadline (and, when it is
        unreachable, inside the connect budget)."""
        send = self._verb
        if self._inline:
            # The embedded jsonl file writing on this thread: its export never awaits, so a
            # deadline could not interrupt it, and a first attempt needs no cancel scope
            # (issue 21: two or three exports a run). Anything but an answer other than
            # "retry" goes the general way below (retries inside the deadline).
            self.export_calls += 1
            first: ExportResult | None
            try:
                first = await send(spans, timeout=self._deadline)
            except Exception:  # noqa: BLE001 - retried (and reported) below
                first = None
            if first is not None and first.status is not ExportStatus.RETRYABLE:
                return Outcome(first, 1)

        async def attempt(time_left: float) -> ExportResult:
            self.export_calls += 1
            return await send(spans, timeout=time_left)

        outcome = await export_with_retry(
            attempt,
            timeout=self._deadline,
            policy=self._policy,
            describe=f"export to {self.name!r}",
            connect_budget=self._connect_budget if self.spool is not None else None,
            limit_name=self._limit_name,
        )
        self.retries += max(0, outcome.attempts - 1)
        if outcome.timed_out:
            self.timeouts += 1
        return outcome

    @property
    def down(self) -> bool:
        """True while the backend is left alone after a failure, or while a hedged
        export is in flight (batches are spooled)."""
        return bool(self._hedged) or self._down_until > anyio.current_time()

    async def _export(self, batch: _Batch) -> None:
        if self.spool is not None and self.down:
            reason = self._hedge_reason if self._hedged else None
            await self._to_spool(batch, reason or self.last_error or "the backend is unreachable")
            return
        if self._hedge and self._attempts is not None:
            await self._export_hedged(batch, self._attempts)
            return
        await self._conclude(batch, await self._send(batch.spans))

    async def _export_hedged(self, batch: _Batch, attempts: anyio.abc.TaskGroup) -> None:
        """Export in a task of its own; if it has not ended after the hedge delay, spool
        a copy (a hedge) and settle the batch as spooled, leaving the attempt to go on."""
        attempt = _Attempt(batch)
        attempts.start_soon(self._attempt, attempt, name=f"aiorunner export to {self.name}")
        with anyio.move_on_after(self._hedge):
            await attempt.done.wait()
        if attempt.done.is_set():
            assert attempt.outcome is not None
            await self._conclude(batch, attempt.outcome)
            return
        spool = self.spool
        assert spool is not None
        spans = batch.spans
        line = self._encode(spans)

        def write() -> tuple[int, int, str | None, Hedge | None]:
            outcome, hedge = spool.hedge(line, len(spans))
            return outcome.written, outcome.evicted, outcome.error, hedge

        with anyio.CancelScope(shield=True):
            written, evicted, problem, hedge = await anyio.to_thread.run_sync(write)
        self._count_evicted(evicted)
        if hedge is None:
            # No copy could be made (full disk): wait for the attempt, as unhedged.
            logger.debug("backend %r: no hedge (%s)", self.name, problem)
            await attempt.done.wait()
            assert attempt.outcome is not None
            await self._conclude(batch, attempt.outcome)
            return
        if attempt.done.is_set():
            # It ended while the copy was written: it is the spool copy, or not needed.
            assert attempt.outcome is not None
            if attempt.outcome.ok:
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(hedge.withdraw)
                await self._conclude(batch, attempt.outcome)
                return
            hedge.release()
            if attempt.outcome.result.status is not ExportStatus.RETRYABLE:
                await self._conclude(batch, attempt.outcome)  # permanent: reported
                return
            self.last_error = redact(attempt.outcome.result.error or "export failed")
            self._mark_down()
            self._settle_spooled(batch, self.last_error, written)
            return
        # Hedged: the runs waiting on this batch go on; the attempt's task concludes.
        attempt.hedge = hedge
        self._hedged.add(attempt)
        self.hedged += written
        self._settle_spooled(batch, self._hedge_reason, written)

    async def _attempt(self, attempt: _Attempt) -> None:
        """The task of one hedgeable export: send; if hedged meanwhile, conclude it."""
        try:
            attempt.outcome = await self._send(attempt.batch.spans)
        finally:
            attempt.done.set()
            if attempt.hedge is not None and attempt.outcome is None:
                # Cancelled (the session closes): the hedge stays, for the drainers.
                attempt.hedge.release()
                self._hedged.discard(attempt)
        if attempt.hedge is None:
            return  # not hedged: the worker concludes
        try:
            await self._conclude_hedged(attempt, attempt.hedge, attempt.outcome)
        finally:
            attempt.hedge.release()
            self._hedged.discard(attempt)
            if self._drain_wakeup is not None:
                self._drain_wakeup.set()
            if not self._hedged and self._hedges_over is not None:
                self._hedges_over.set()

    async def wait_hedges(self, grace: float) -> None:
        """At close: return once no hedged export is in flight, or once the latest has
        been going for the hedge delay and ``grace`` more (so the logs and traces
        pipelines, closed one after the other, do not each add a grace)."""
        if not self._hedged:
            return
        until = max(a.started for a in self._hedged) + self._hedge + grace
        with anyio.move_on_after(until - anyio.current_time()):
            while self._hedged:
                self._hedges_over = asyncio.Event()
                await self._hedges_over.wait()

    async def _conclude_hedged(self, attempt: _Attempt, hedge: Hedge, outcome: Outcome) -> None:
        """A hedged attempt ended: withdraw its copy if it succeeded (or failed for good:
        the copy would never be taken); else the copy stays, counted once as spooled."""
        batch = attempt.batch
        size = len(batch.spans)
        if outcome.ok:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(hedge.withdraw)
            self.exported += size
            self.hedges_withdrawn += size
            for record in batch.records:
                record.settle(self.index, EXPORTED)
            self._up(hedged=True)
            return
        error = redact(outcome.result.error or "export failed")
        self.last_error = error
        if outcome.result.status is ExportStatus.RETRYABLE:
            self._mark_down()
            return
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(hedge.withdraw)
        self.failed += size
        self.hedges_withdrawn += size
        for record in batch.records:
            record.settle(self.index, FAILED, error)
        self._errors.warn(self.name, error, spans=size, unit=self._unit)

    async def _conclude(self, batch: _Batch, outcome: Outcome) -> None:
        """Settle a batch whose export ended: exported, spooled (retryable, with a
        spool) or failed."""
        size = len(batch.spans)
        if outcome.ok:
            self._up()
            self.exported += size
            for record in batch.records:
                record.settle(self.index, EXPORTED)
            self._settled(size)
            return
        error = redact(outcome.result.error or "export failed")
        self.last_error = error
        if self.spool is not None and outcome.result.status is ExportStatus.RETRYABLE:
            self._mark_down()
            await self._to_spool(batch, error)
            return
        self.failed += size
        for record in batch.records:
            record.settle(self.index, FAILED, error)
        self._errors.warn(self.name, error, spans=size, unit=self._unit)
        self._settled(size)

    # ------------------------------------------------------------------- the spool

    def _mark_down(self) -> None:
        self._down_streak += 1
        pause = min(_DOWN_MAX, _DOWN_FIRST * 2 ** (self._down_streak - 1))
        self._down_until = anyio.current_time() + pause

    def _up(self, *, hedged: bool = False) -> None:
        if not self._down_streak and not hedged:
            return
        self._down_streak = 0
        self._down_until = 0.0
        if self.adapter.outage_warned:
            self.adapter.outage_warned = False
            logger.info("backend %r takes spans again; its spool is being sent", self.name)
        if self._drain_wakeup is not None:
            self._drain_wakeup.set()

    async def _to_spool(self, batch: _Batch, error: str) -> None:
        """Append the batch to the spool (in a worker thread) and settle it as spooled,
        or as dropped when the spool cannot take it."""
        spool = self.spool
        assert spool is not None
        spans = batch.spans
        size = len(spans)
        encode = self._encode

        def write() -> tuple[int, int, str | None, bool]:
            outcome = spool.append(encode(spans), size)
            return outcome.written, outcome.evicted, outcome.error, outcome.disk_full

        with anyio.CancelScope(shield=True):
            written, evicted, problem, _ = await anyio.to_thread.run_sync(write)
        self._count_evicted(evicted)
        if problem is not None:
            self._settle_dropped(batch, redact(f"{error}; not spooled: {problem}"))
            return
        self._settle_spooled(batch, error, written)

    def _count_evicted(self, evicted: int) -> None:
        self.spool_evicted += evicted
        if evicted:
            assert self.spool is not None
            logger.warning(
                "the spool of backend %r is at its bound (AIORUNNER_SPOOL_MAX_BYTES=%d): "
                "its %d oldest spans were removed to make room",
                self.name,
                self.spool.max_bytes,
                evicted,
            )

    def _settle_spooled(self, batch: _Batch, error: str, written: int) -> None:
        """Count a batch written to the spool, warn once per outage, settle it."""
        spool = self.spool
        assert spool is not None
        size = len(batch.spans)
        self.spooled += written
        for record in batch.records:
            record.settle(self.index, SPOOLED, error)
        if not self.adapter.outage_warned:
            # Once per outage and backend, whichever signal (spans, log records) met it
            # first: the two pipelines share the backend's adapter.
            self.adapter.outage_warned = True
            if error == self._hedge_reason:
                logger.warning(
                    "backend %r has not answered within %gs (AIORUNNER_SPOOL_HEDGE): %d "
                    "%s%s spooled to %s meanwhile. The export goes on in the background "
                    "(the spooled copy is removed if it succeeds); otherwise they are sent "
                    "when it takes them again (the next run, or `aiorunner traces push "
                    "--spool`). Logged once per outage; RunResult.export counts them",
                    self.name,
                    self._hedge,
                    size,
                    self._unit,
                    "" if size == 1 else "s",
                    os.fspath(spool.directory),
                )
            else:
                logger.warning(
                    "backend %r could not take %d %s%s (%s): spooled to %s; they are "
                    "sent when it takes them again (the next run, or `aiorunner traces "
                    "push --spool`). Logged once per outage; RunResult.export counts them",
                    self.name,
                    size,
                    self._unit,
                    "" if size == 1 else "s",
                    error,
                    os.fspath(spool.directory),
                )
        if self._drain_wakeup is not None:
            self._drain_wakeup.set()
        self._settled(size)

    def stop_draining(self) -> None:
        """The session closes: the drainer goes on for up to a second while the backend
        takes lines, then finishes the line in flight and stops."""
        self._stop_draining = True
        self._drain_until = anyio.current_time() + _DRAIN_AT_CLOSE
        if self._drain_wakeup is not None:
            self._drain_wakeup.set()

    @property
    def _draining_over(self) -> bool:
        return self._stop_draining and (self.down or anyio.current_time() >= self._drain_until)

    async def drain(self) -> None:
        """Send the spool back, oldest first, whenever the backend may take it: at the
        start, after an outage's pause, when it comes back. Until cancelled."""
        if self.spool is None:
            return
        wakeup = self._drain_wakeup = asyncio.Event()
        self._drain_stopped = asyncio.Event()
        self._drain_running = True
        try:
            await self._drain_loop(wakeup)
        finally:
            self._drain_running = False
            self._drain_stopped.set()

    async def wait_drain_stopped(self) -> None:
        """At close, after :meth:`stop_draining`: return once the drainer has finished
        the line in flight (so that a line the backend accepts is also recorded as
        accepted, and not sent again by the next session)."""
        if self._drain_running and self._drain_stopped is not None:
            await self._drain_stopped.wait()

    async def _drain_loop(self, wakeup: asyncio.Event) -> None:
        wakeup.set()
        while not self._stop_draining:
            await wakeup.wait()
            wakeup.clear()
            while not self._stop_draining:
                if self._hedged:
                    # A hedged export is in flight: wait for its end (it wakes us).
                    await wakeup.wait()
                    wakeup.clear()
                    continue
                pause = self._down_until - anyio.current_time()
                if pause > 0:
                    with anyio.move_on_after(pause):
                        await wakeup.wait()
                    wakeup.clear()
                    continue
                if await self._drain_pass():
                    break  # empty: wait for the next spooled batch

    async def _drain_pass(self) -> bool:
        """Send claimed spool files until none is left (True) or the backend fails
        (False: it is marked down) or the session closes."""
        spool = self.spool
        assert spool is not None
        decode = self._decode

        while not self._draining_over:
            claim = await anyio.to_thread.run_sync(spool.claim)
            if claim is None:
                return True
            finished = False
            try:
                while not self._draining_over:
                    item = await anyio.to_thread.run_sync(claim.next_line)
                    if item is None:
                        await anyio.to_thread.run_sync(claim.finish)
                        finished = True
                        break
                    line, end = item
                    try:
                        spans = await anyio.to_thread.run_sync(decode, line)
                    except ValueError as exc:
                        self._errors.warn(
                            self.name, f"skipped an unreadable spool line: {exc}", spans=0
                        )
                        await anyio.to_thread.run_sync(claim.commit, end)
                        continue
                    outcome = await self._send(spans)
                    if outcome.ok:
                        with anyio.CancelScope(shield=True):
                            await anyio.to_thread.run_sync(claim.commit, end)
                        self.unspooled += len(spans)
                        self._up()
                        continue
                    error = redact(outcome.result.error or "export failed")
                    self.last_error = error
                    if outcome.result.status is ExportStatus.RETRYABLE:
                        self._mark_down()
                        return False
                    # Permanent: this line will never be taken; report it, go on.
                    self.failed += len(spans)
                    self._errors.warn(
                        self.name, f"spooled spans refused: {error}", spans=len(spans)
                    )
                    await anyio.to_thread.run_sync(claim.commit, end)
            finally:
                if not finished:
                    claim.release()
        return True

    async def _span_start(self, span: ReadableSpan) -> None:
        with anyio.move_on_after(self._timeout) as scope:
            try:
                await self.adapter.on_span_start(span)
            except Exception as exc:  # noqa: BLE001 - logged; the export path never raises
                self._errors.warn(
                    self.name,
                    redact(f"on_span_start raised {type(exc).__name__}: {exc}"),
                    spans=1,
                )
        if scope.cancelled_caught:
            self._errors.warn(self.name, "on_span_start timed out", spans=1)

    # ------------------------------------------------------------------- bookkeeping

    def _settle_dropped(self, batch: _Batch, error: str) -> None:
        size = len(batch.spans)
        self.dropped += size
        self.last_error = error
        for record in batch.records:
            record.settle(self.index, DROPPED, error)
        self._errors.warn(self.name, error, spans=size, unit=self._unit)
        self._settled(size)

    def _abandon(self) -> None:
        """Count what the session closed on: the batch in flight as failed, queued ones
        as dropped; with a spool, keep them for :meth:`spool_leftovers` instead. Wakes
        every waiter: nothing more will settle. Hedges still held are let go (their
        attempts were cancelled): they stay in the spool."""
        for attempt in self._hedged:
            if attempt.hedge is not None:
                attempt.hedge.release()
        self._hedged.clear()
        if self.spool is not None:
            if self._inflight is not None:
                self._leftovers.append(self._inflight)
                self._inflight = None
            while self._queue:
                item = self._queue.popleft()
                if isinstance(item, _Batch):
                    self._queued_spans -= len(item.spans)
                    self._leftovers.append(item)
        if self._inflight is not None:
            batch, self._inflight = self._inflight, None
            size = len(batch.spans)
            error = "the session closed while this export was in flight (shutdown deadline)"
            self.failed += size
            self.last_error = error
            for record in batch.records:
                record.settle(self.index, FAILED, error)
            self._settled(size)
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, _Batch):
                self._queued_spans -= len(item.spans)
                self._settle_dropped(item, "the session closed before these spans were exported")
        self.settled = max(self.settled, self.received)
        self._release(all_waiters=True)

    async def spool_leftovers(self) -> None:
        """At close: spool what was still in flight or queued (what is still pending at
        exit is spooled, not waited for twice)."""
        leftovers, self._leftovers = self._leftovers, []
        for batch in leftovers:
            await self._to_spool(batch, "the session closed before the backend took these")

    def _settled(self, count: int) -> None:
        self.settled += count
        self._release()

    def _release(self, *, all_waiters: bool = False) -> None:
        waiters = self._waiters
        while waiters and (all_waiters or waiters[0][0] <= self.settled):
            _, _, future = heapq.heappop(waiters)
            if not future.done():
                future.set_result(None)

    async def wait_settled(self, target: int) -> None:
        """Return once ``target`` spans handed to this worker are exported or failed."""
        if self.settled >= target:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (target, next(self._tiebreak), future))
        await future

    def statistics(self) -> BackendStatistics:
        return BackendStatistics(
            name=self.name,
            kind=self.adapter.kind,
            queued=self._queued_spans,
            exported=self.exported,
            failed=self.failed,
            dropped=self.dropped,
            export_calls=self.export_calls,
            retries=self.retries,
            timeouts=self.timeouts,
            spooled=self.spooled,
            unspooled=self.unspooled,
            spool_evicted=self.spool_evicted,
            hedged=self.hedged,
            hedges_withdrawn=self.hedges_withdrawn,
            spool_dir=os.fspath(self.spool.directory) if self.spool is not None else None,
            abandoned_threads=self.adapter.abandoned_threads,
            last_error=self.last_error,
        )
