"""
The listing of ``aiorunner traces``: one small summary per trace, newest first.

The file is read newest-first (blocks from the end of the newest file, then the rotated
ones) keeping, per trace, a handful of numbers rather than its spans, and the scan stops as
soon as older lines cannot change the answer: a run's start marker (its pending root line)
is written before any other line of that run, so once ``limit`` runs whose markers were
seen are newer than every trace still incomplete, everything further back is older.
Files without markers (other writers) are read whole, streamed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .reader import (
    ROOT_SPAN_NAME,
    STATUS_ERROR,
    ReadStats,
    is_root_candidate,
    records_backward,
    trace_files,
)

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping
    from pathlib import Path

    from .reader import SpanRecord

__all__ = ["TraceListing", "TraceSummary", "list_traces"]

#: Records read between two checks of whether the listing can stop (amortised O(1)).
_CHECK_EVERY = 64


@dataclass(frozen=True)
class TraceSummary:
    """One line of ``aiorunner traces``."""

    trace_id: str
    start_ns: int
    end_ns: int
    span_count: int
    name: str
    script: str
    service: str
    #: ``ok``, ``error`` (the run, i.e. a root span, failed) or ``running``.
    status: str
    #: The failed root's status message.
    error: str = ""
    #: Spans of the trace with an error status (a run may succeed despite some).
    error_spans: int = 0

    @property
    def duration(self) -> float:
        """Seconds from the first span's start to the last span's end (for a running
        trace: to the moment the file was read)."""
        return max(0, self.end_ns - self.start_ns) / 1e9

    def to_dict(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "start": datetime.fromtimestamp(self.start_ns / 1e9, tz=timezone.utc).isoformat(),
            "start_unix_nano": self.start_ns,
            "duration_seconds": round(self.duration, 6),
            "status": self.status,
            "script": self.script,
            "name": self.name,
            "service": self.service,
            "span_count": self.span_count,
            "error": self.error or None,
            "error_spans": self.error_spans,
        }


@dataclass
class _Accumulator:
    """What the listing keeps of one trace while scanning: a few numbers, not spans."""

    trace_id: str
    span_ids: set[int] = field(default_factory=set)
    start_ns: int = 0
    end_ns: int = 0
    root: SpanRecord | None = None
    #: The first error message of a root (the run failed), and of any span.
    root_error: str | None = None
    error: str | None = None
    errors: int = 0
    #: A ``code.file.path`` (``code.filepath`` in older files) seen on any span: names
    #: a running run whose start marker carries no script yet (extract_metadata has it).
    filepath: str | None = None
    pending: set[str] = field(default_factory=set)
    finished: set[str] = field(default_factory=set)
    #: Saw the start marker of a parentless root: every span of the trace comes after it.
    complete: bool = False

    def add(self, record: SpanRecord) -> None:
        self.span_ids.add(hash(record.span_id))
        if record.start_ns and (not self.start_ns or record.start_ns < self.start_ns):
            self.start_ns = record.start_ns
        self.end_ns = max(self.end_ns, record.end_ns)
        if self.filepath is None and record.script_path:
            self.filepath = record.script_path
        failed = record.status_code == STATUS_ERROR
        if failed:
            self.errors += 1
            if self.error is None:
                self.error = record.status_message or record.name
        if is_root_candidate(record):
            if failed and self.root_error is None:
                self.root_error = record.status_message or record.name
            if record.pending:
                self.pending.add(record.span_id)
                if not record.parent_span_id:
                    self.complete = True
            else:
                self.finished.add(record.span_id)
            if self.root is None or _root_rank(record) < _root_rank(self.root):
                self.root = record

    def summary(self, now_ns: int) -> TraceSummary:
        root = self.root
        running = bool(self.pending - self.finished)
        error = self.root_error if root is not None else self.error
        return TraceSummary(
            trace_id=self.trace_id,
            start_ns=self.start_ns,
            end_ns=max(self.end_ns, now_ns) if running else self.end_ns,
            span_count=len(self.span_ids),
            name=root.name if root else "",
            script=_script_of(root, self.filepath),
            service=root.service if root else "",
            status="running" if running else ("error" if error is not None else "ok"),
            error=error or "",
            error_spans=self.errors,
        )


def _script_of(root: SpanRecord | None, filepath: str | None) -> str:
    if root is None:
        return filepath or ""
    if root.name == ROOT_SPAN_NAME and root.script_path is None and filepath:
        return filepath
    return root.script


def _root_rank(record: SpanRecord) -> tuple[int, int, int]:
    # Parentless first, then the earliest; a finished line beats the pending one it ends.
    return (1 if record.parent_span_id else 0, record.start_ns, 1 if record.pending else 0)


@dataclass(frozen=True)
class TraceListing:
    """The answer of :func:`list_traces`."""

    traces: tuple[TraceSummary, ...]
    files: tuple[Path, ...]
    stats: ReadStats
    #: False when the scan stopped early because older lines could not change the answer.
    scanned_all: bool


def list_traces(
    path: str | os.PathLike[str],
    *,
    failed: bool = False,
    slowest: int | None = None,
    since_ns: int | None = None,
    limit: int | None = 20,
    now_ns: int | None = None,
) -> TraceListing:
    """
    The traces recorded in ``path`` (and its rotated files), newest first, or the
    ``slowest`` ones, slowest first.

    The scan reads lines newest-first and stops once older lines cannot change the answer:
    a run's start marker (its pending root line) comes before all its other lines, so when
    ``limit`` runs whose markers were seen are newer than every trace still incomplete, the
    rest of the file is older. Files without markers (other writers) are read whole.

    Raises:
        TraceNotFoundError: there is no such file.
    """
    files = trace_files(path)
    now_ns = time.time_ns() if now_ns is None else now_ns
    want = slowest if slowest is not None else limit
    stats = ReadStats()
    accumulators: dict[str, _Accumulator] = {}
    frontier: int | None = None
    since_check = 0
    scanned_all = True
    for record in records_backward(files, stats):
        acc = accumulators.get(record.trace_id)
        if acc is None:
            acc = accumulators[record.trace_id] = _Accumulator(record.trace_id)
        acc.add(record)
        if record.pending and not record.parent_span_id:
            frontier = record.start_ns if frontier is None else min(frontier, record.start_ns)
        since_check += 1
        if frontier is not None and since_check >= max(_CHECK_EVERY, len(accumulators)):
            since_check = 0
            if _can_stop(accumulators, frontier, failed, slowest, since_ns, want, now_ns):
                scanned_all = False
                break
    summaries = [
        s
        for s in (acc.summary(now_ns) for acc in accumulators.values())
        if _passes(s, failed, since_ns)
    ]
    if slowest is not None:
        summaries.sort(key=lambda s: (-s.duration, -s.start_ns, s.trace_id))
    else:
        summaries.sort(key=lambda s: (-s.start_ns, s.trace_id))
    if want is not None:
        summaries = summaries[:want]
    return TraceListing(tuple(summaries), tuple(files), stats, scanned_all)


def _passes(summary: TraceSummary, failed: bool, since_ns: int | None) -> bool:
    if failed and summary.status != "error":
        return False
    return since_ns is None or summary.start_ns >= since_ns


def _can_stop(
    accumulators: Mapping[str, _Accumulator],
    frontier: int,
    failed: bool,
    slowest: int | None,
    since_ns: int | None,
    want: int | None,
    now_ns: int,
) -> bool:
    # Traces not seen at all started before the frontier (all their lines are older than
    # the oldest marker read); incomplete ones may only get older starts or become failed.
    incomplete_newest = max(
        (a.start_ns for a in accumulators.values() if not a.complete), default=None
    )
    if (
        since_ns is not None
        and frontier < since_ns
        and (incomplete_newest is None or incomplete_newest < since_ns)
    ):
        return True
    if slowest is not None or want is None:
        return False
    starts = sorted(
        (
            a.start_ns
            for a in accumulators.values()
            if a.complete and _passes(a.summary(now_ns), failed, since_ns)
        ),
        reverse=True,
    )
    if len(starts) < want:
        return False
    return incomplete_newest is None or incomplete_newest < starts[want - 1]
