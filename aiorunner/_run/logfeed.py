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
from .output import OutputAssembler, OutputLine, line_key

if TYPE_CHECKING:
    from collections.abc import Callable

    from opentelemetry.trace import SpanContext

    from .._context.channel import ScriptLogRecord
    from .._export.pipeline import ExportPipeline

__all__ = [
    "HOLD_FLUSH_DELAY",
    "MAX_MATCH_CHARS",
    "MAX_MATCH_LINES",
    "TRUNCATED_ATTRIBUTE",
    "RunLogs",
    "severity_of_level",
]

#: Seconds of quiet after which a held multi-line record (a traceback) is sent anyway.
HOLD_FLUSH_DELAY = 0.2
#: Bytes of a line (or traceback) left out of its record.
TRUNCATED_ATTRIBUTE = "aiorunner.log.truncated_bytes"
#: On ``execute_script``: records past the run's cap (counted, not sent).
DROPPED_ATTRIBUTE = "aiorunner.log.dropped_records"
#: On ``execute_script``: records the run sent to the logs pipeline.
RECORDS_ATTRIBUTE = "aiorunner.log.records"
#: Output lines announced by the script's ``logging`` and not read back yet, kept at
#: most (lines, and characters in all): they arrive right after their record (at most
#: a pipe's buffer behind), so only lines that never come (written to a redirected fd)
#: pile up; past the bound the oldest texts are forgotten, their lines counted in
#: ``unmatched``.
MAX_MATCH_LINES = 16384
MAX_MATCH_CHARS = 4 << 20


def severity_of_level(level: int) -> int:
    """SeverityNumber of a Python ``logging`` level (the logs data model's appendix, as
    OpenTelemetry's ``LoggingHandler`` maps it): DEBUG 10 -> 5, INFO 20 -> 9, WARNING
    30 -> 13, ERROR 40 -> 17, CRITICAL 50 -> 21; levels between step up to 3 within
    their range (DEBUG2..4, INFO2..4, ...); below DEBUG is TRACE (1)."""
    if level < 10:
        return 1
    if level >= 60:
        return 24
    return 5 + 4 * (level // 10 - 1) + min(level % 10, 3)


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
        self._identity = base
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
        #: Reads the script's ``logging`` records queued in the channel now (set by the
        #: run when it has one): called before each chunk of output is read, so a
        #: record is known before its line (the child sends it before writing it).
        self.before_feed: Callable[[], object] | None = None
        # Texts the script's logging announced, not read back yet, oldest first: id ->
        # (stream, first line, the lines after it); by (stream, first line) their ids.
        # A text is written in one write, so its lines come together: once its first
        # line is read, the next ones must follow (self._following) or the text is
        # given up (see MAX_MATCH_*).
        self._texts: dict[int, tuple[str, str, tuple[str, ...]]] = {}
        self._by_first: dict[tuple[str, str], deque[int]] = {}
        self._following: dict[str, tuple[tuple[str, ...], int]] = {}
        self._text_ids = 0
        self._expected_chars = 0
        self._expected_lines = 0
        #: Records of the script's ``logging`` (sent, waiting, or past the cap).
        self.script_records = 0
        #: Output lines left out because they were a ``logging`` record already.
        self.matched = 0
        #: Announced lines forgotten unread (the bound): if they came, they were records.
        self.unmatched = 0
        #: Most records that ever waited for room, and most announced lines kept.
        self.peak_waiting = 0
        self.peak_expected = 0
        pipeline.watch_trace(self._trace_id)

    # ------------------------------------------------------------ from the pipe readers

    def feed(self, stream: str, data: bytes) -> None:
        """A chunk of ``stream`` was read (now)."""
        if self.before_feed is not None:
            self.before_feed()
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

    # ------------------------------------------------------- from the script's logging

    def add_script_record(self, item: ScriptLogRecord) -> None:
        """One record of the script's Python ``logging`` (from the in-script channel):
        a record of its own (its logger as the scope, its level, the script's current
        span), and the lines its handlers wrote for it are not made records again."""
        for stream, text in item.written:
            self._expect(stream, text)
        self.script_records += 1
        if self.records >= self._max:
            self.over_cap += 1
            return
        self.records += 1
        scrub = self._scrub
        body = item.body
        attributes = item.attributes
        if scrub is not None:
            body = scrub(body)
            attributes = {k: scrub(v) if type(v) is str else v for k, v in attributes.items()}
        if self._identity:
            attributes = {**self._identity, **attributes}
        if item.trace_id:
            trace_id, span_id, flags = item.trace_id, item.span_id, item.trace_flags
        else:
            trace_id, span_id, flags = self._trace_id, self._span_id, self._flags
        self._hand_over(
            LogRecordData(
                item.time_unix_nano,
                time.time_ns(),
                severity_of_level(item.level),
                item.level_name,
                body,
                attributes,
                trace_id,
                span_id,
                flags,
                self._resource,
                scope=item.logger or "root",
            )
        )

    def _expect(self, stream: str, text: str) -> None:
        assembler = self._assemblers[stream]
        if assembler.skip is None:
            assembler.skip = functools.partial(self._skip, stream)
        first, *rest = (line_key(line) for line in text.split("\n"))
        text_id = self._text_ids
        self._text_ids += 1
        self._texts[text_id] = (stream, first, tuple(rest))
        self._by_first.setdefault((stream, first), deque()).append(text_id)
        self._expected_lines += 1 + len(rest)
        self._expected_chars += len(first) + sum(map(len, rest))
        while self._expected_lines > MAX_MATCH_LINES or self._expected_chars > MAX_MATCH_CHARS:
            oldest = next(iter(self._texts))
            self.unmatched += self._take(oldest)
        self.peak_expected = max(self.peak_expected, self._expected_lines)

    def _take(self, text_id: int) -> int:
        """Remove an announced text, the oldest with its first line (ids only grow, so
        the oldest of all is the oldest of its own); return its line count."""
        stream, first, rest = self._texts.pop(text_id)
        key = (stream, first)
        ids = self._by_first[key]
        ids.popleft()
        if not ids:
            del self._by_first[key]
        lines = 1 + len(rest)
        self._expected_lines -= lines
        self._expected_chars -= len(first) + sum(map(len, rest))
        return lines

    def _skip(self, stream: str, line: str) -> bool:
        following = self._following.get(stream)
        if following is not None:
            rest, index = following
            if line == rest[index]:
                index += 1
                if index == len(rest):
                    del self._following[stream]
                else:
                    self._following[stream] = (rest, index)
                self.matched += 1
                return True
            # Something else came between (another process on the same pipe): the rest
            # of the text is read as output.
            del self._following[stream]
            self.unmatched += len(rest) - index
        ids = self._by_first.get((stream, line))
        if ids is None:
            return False
        text_id = ids[0]
        rest = self._texts[text_id][2]
        self._take(text_id)
        if rest:
            self._following[stream] = (rest, 0)
        self.matched += 1
        return True

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
        self._hand_over(record)

    def _hand_over(self, record: LogRecordData) -> None:
        if self._waiting or not self._pipeline.has_room():
            waiting = self._waiting
            waiting.append(record)
            self.peak_waiting = max(self.peak_waiting, len(waiting))
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
