"""
A run's output as log records: the pipe readers' bytes -> records -> the logs pipeline.

One :class:`RunLogs` per run with logs on. The child's pipe readers (``process.py``) hand
it every chunk they read; an :class:`~.output.OutputAssembler` per stream turns chunks
into records (one per line, a traceback as one), which get the run's ids, resource and
attributes here and wait in a small local queue until the session's logs pipeline has
room. While they wait, :meth:`RunLogs.ready` is False and the reader stops reading the
pipe (back-pressure: the script blocks on its write), so below the run's cap
(``AIORUNNER_LOG_MAX_RECORDS``) no record is dropped however slow the backend is; past
the cap records are counted, not made.

Everything here runs on the run's event loop thread; nothing blocks.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import anyio

from ..backend import LogRecordData
from .output import OutputAssembler, OutputLine

if TYPE_CHECKING:
    from collections.abc import Callable

    from opentelemetry.trace import SpanContext

    from .._export.pipeline import ExportPipeline

__all__ = ["HOLD_FLUSH_DELAY", "TRUNCATED_ATTRIBUTE", "RunLogs"]

#: Seconds of quiet after which a held multi-line record (a traceback) is sent anyway.
HOLD_FLUSH_DELAY = 0.2
#: Bytes of a line (or traceback) left out of its record.
TRUNCATED_ATTRIBUTE = "aiorunner.log.truncated_bytes"
#: On ``execute_script``: records past the run's cap (counted, not sent).
DROPPED_ATTRIBUTE = "aiorunner.log.dropped_records"
#: On ``execute_script``: records the run sent to the logs pipeline.
RECORDS_ATTRIBUTE = "aiorunner.log.records"


class RunLogs:
    """
    The log records of one run.

    Args:
        pipeline: the session's logs pipeline.
        context: the ``execute_script`` span's context (ids and flags of every record).
        resource: the session's resource (the run's spans have it too).
        attributes: the run's identity (``aiorunner.job``, ``aiorunner.attempt``), added
            to every record.
        max_records: records this run may send; the rest are counted in ``over_cap``.
        scrub: replaces the run's secrets (its secret arguments and environment values,
            credentials in URLs, bearer tokens) in bodies and string attributes: what we
            export is scrubbed like what we print.
    """

    def __init__(
        self,
        pipeline: ExportPipeline,
        context: SpanContext,
        resource: Any,
        *,
        attributes: dict[str, Any] | None = None,
        max_records: int,
        scrub: Callable[[str], str] | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._scrub = scrub
        self._trace_id = context.trace_id
        self._span_id = context.span_id
        self._flags = int(context.trace_flags)
        self._resource = resource
        self._max = max_records
        base = dict(attributes or {})
        self._base = {
            "stdout": {"log.iostream": "stdout", **base},
            "stderr": {"log.iostream": "stderr", **base},
        }
        self._assemblers = {
            name: OutputAssembler(name, functools.partial(self._add, name))
            for name in ("stdout", "stderr")
        }
        self._waiting: deque[LogRecordData] = deque()
        self._now = 0
        #: Records made (sent, or waiting for room), and records past the cap.
        self.records = 0
        self.over_cap = 0
        #: Records that could not be handed over before the run gave up waiting.
        self.lost = 0
        self._feeds = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        pipeline.watch_trace(self._trace_id)

    # ------------------------------------------------------------ from the pipe readers

    def feed(self, stream: str, data: bytes) -> None:
        """A chunk of ``stream`` was read (now)."""
        self._now = time.time_ns()
        assembler = self._assemblers[stream]
        assembler.feed(data)
        self._feeds += 1
        if assembler.holding and self._timer is None:
            self._arm()
        if self._waiting:
            self._drain()

    def eof(self, stream: str) -> None:
        """``stream`` ended: what it held (an unfinished line, a traceback) is a record."""
        self._now = time.time_ns()
        self._assemblers[stream].flush()
        self._drain()

    def ready(self) -> bool:
        """True when every record made so far is with the pipeline (the reader may read
        on); False while some wait for room (the reader pauses and asks again later)."""
        if self._waiting:
            self._drain()
        return not self._waiting

    # ------------------------------------------------------------------- at the end

    async def finish(self, timeout: float) -> None:
        """Flush both streams and hand every waiting record over, waiting (polling, the
        pipeline has no event for it) at most ``timeout`` for room; what is still
        waiting then is counted as dropped for the run's trace (``lost``)."""
        self.close()
        self._now = time.time_ns()
        for assembler in self._assemblers.values():
            assembler.flush()
        self._drain()
        if self._waiting:
            with anyio.move_on_after(timeout):
                while self._waiting:
                    await anyio.sleep(0.01)
                    self._drain()
        if self._waiting:
            self.lost = len(self._waiting)
            self._pipeline.count_dropped(self._trace_id, self.lost)
            self._waiting.clear()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ---------------------------------------------------------------------- inside

    def _add(self, stream: str, line: OutputLine) -> None:
        if self.records >= self._max:
            self.over_cap += 1
            return
        self.records += 1
        attributes = self._base[stream]
        scrub = self._scrub
        body = line.body if scrub is None else scrub(line.body)
        if line.attributes or line.truncated_bytes:
            extra = line.attributes or {}
            if scrub is not None:
                extra = {k: scrub(v) if type(v) is str else v for k, v in extra.items()}
            attributes = {**attributes, **extra}
            if line.truncated_bytes:
                attributes[TRUNCATED_ATTRIBUTE] = line.truncated_bytes
        else:
            attributes = dict(attributes)
        now = self._now
        record = LogRecordData(
            now,
            now,
            line.severity_number,
            line.severity_text,
            body,
            attributes,
            self._trace_id,
            self._span_id,
            self._flags,
            self._resource,
        )
        if self._waiting or not self._pipeline.has_room():
            self._waiting.append(record)
        else:
            self._pipeline.emit(record)

    def _drain(self) -> None:
        waiting = self._waiting
        pipeline = self._pipeline
        while waiting and pipeline.has_room():
            pipeline.emit(waiting.popleft())

    def _arm(self) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        self._timer = loop.call_later(HOLD_FLUSH_DELAY, self._on_timer, self._feeds)

    def _on_timer(self, feeds: int) -> None:
        self._timer = None
        if feeds != self._feeds:  # output came meanwhile: wait for another quiet moment
            if any(a.holding for a in self._assemblers.values()):
                self._arm()
            return
        self._now = time.time_ns()
        for assembler in self._assemblers.values():
            if assembler.holding:
                assembler.flush_held()
        self._drain()
