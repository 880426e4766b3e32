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
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import os
import re
from collections import deque
from typing import TYPE_CHECKING, Any

import anyio

from ..backend import ExportStatus
from .ledger import DROPPED, EXPORTED, FAILED, SPOOLED
from .retry import DEFAULT_POLICY, RetryPolicy, export_with_retry
from .statistics import BackendStatistics

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from opentelemetry.sdk.trace import ReadableSpan

    from ..backend import ExportResult
    from .adapters import BackendAdapter
    from .ledger import BatchRecord
    from .retry import Outcome
    from .spool import Spool

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
                        due = anyio.current_time() + self._start_delay
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
        finally:
            self._abandon()

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
        """True while the backend is left alone after a failure (batches are spooled)."""
        return self._down_until > anyio.current_time()

    async def _export(self, batch: _Batch) -> None:
        spans = batch.spans
        size = len(spans)
        if self.spool is not None and self.down:
            await self._to_spool(batch, self.last_error or "the backend is unreachable")
            return
        outcome = await self._send(spans)
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

    def _up(self) -> None:
        if not self._down_streak:
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
        self.spool_evicted += evicted
        if evicted:
            logger.warning(
                "the spool of backend %r is at its bound (AIORUNNER_SPOOL_MAX_BYTES=%d): "
                "its %d oldest spans were removed to make room",
                self.name,
                spool.max_bytes,
                evicted,
            )
        if problem is not None:
            self._settle_dropped(batch, redact(f"{error}; not spooled: {problem}"))
            return
        self.spooled += written
        for record in batch.records:
            record.settle(self.index, SPOOLED, error)
        if not self.adapter.outage_warned:
            # Once per outage and backend, whichever signal (spans, log records) met it
            # first: the two pipelines share the backend's adapter.
            self.adapter.outage_warned = True
            logger.warning(
                "backend %r could not take %d %s%s (%s): spooled to %s; they are sent "
                "when it takes them again (the next run, or `aiorunner traces push "
                "--spool`). Logged once per outage; RunResult.export counts them",
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
        every waiter: nothing more will settle."""
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
            spool_dir=os.fspath(self.spool.directory) if self.spool is not None else None,
            abandoned_threads=self.adapter.abandoned_threads,
            last_error=self.last_error,
        )
