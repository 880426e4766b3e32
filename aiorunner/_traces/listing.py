"""
The listing of ``aiorunner traces``: one small summary per trace, newest first.

Runs still going come from the live-runs directory beside the file (read first, see
``reader.live_records``), finished ones from the file, read newest-first (blocks from the
end of the newest file, then the rotated ones) keeping, per trace, a handful of numbers
rather than its spans.

The scan stops as soon as older lines cannot change the answer. Lines are appended in the
order they are written, and a line is written soon after the latest end among its spans:
within :data:`LATE_WRITE_MARGIN` (the jsonl backend writes an ended span within half a
second, a batch at most an export timeout later). So once the scan has passed a line whose
spans all ended before ``T - LATE_WRITE_MARGIN``, every older line was written before
``T``, and a trace whose root started after ``T`` is complete (no span of it can be
further back). The listing stops when ``limit`` complete traces are newer than every
incomplete one, or, with ``--since``, when the lines are older than ``--since``. A line
written later than that margin after its spans ended (a disk hung for minutes) could be
missed from a run's span count; ``--limit 0`` and ``--slowest`` always read everything.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .._exceptions import TraceNotFoundError
from .reader import (
    ROOT_SPAN_NAME,
    STATUS_ERROR,
    ReadStats,
    is_root_candidate,
    lines_backward,
    live_records,
    trace_files,
)

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping
    from pathlib import Path

    from .reader import SpanRecord

__all__ = ["LATE_WRITE_MARGIN", "TraceListing", "TraceSummary", "list_traces"]

#: Lines read between two checks of whether the listing can stop (amortised O(1)).
_CHECK_EVERY = 64
#: Seconds by which a line may be written after the latest end among its spans (see the
#: module docstring): far above what any writer of this format takes, batch delay,
#: export timeout and a few retries included.
LATE_WRITE_MARGIN = 300.0


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
    #: ``ok``, ``error`` (the run, i.e. a root span, failed), ``running``, or ``lost``
    #: (running when its runner process died: it will never end).
    status: str
    #: The failed root's status message.
    error: str = ""
    #: Spans of the trace with an error status (a run may succeed despite some).
    error_spans: int = 0

    @property
    def duration(self) -> float:
        """Seconds from the first span's start to the last span's end (for a running
        trace: to the moment the file was read; for a lost one: to the last span end
        recorded)."""
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
    #: Root candidates without an end (live-runs entries, old start markers); the lost
    #: ones among them; and those seen finished (a finished line beats a pending one).
    pending: set[str] = field(default_factory=set)
    lost: set[str] = field(default_factory=set)
    finished: set[str] = field(default_factory=set)
    #: The earliest start of a root candidate: no span of the run starts before it.
    root_start: int | None = None

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
                if record.lost:
                    self.lost.add(record.span_id)
            else:
                self.finished.add(record.span_id)
            if self.root_start is None or record.start_ns < self.root_start:
                self.root_start = record.start_ns
            if self.root is None or _root_rank(record) < _root_rank(self.root):
                self.root = record

    def complete(self, horizon: int | None) -> bool:
        """True when no span of this trace can be in the lines not read yet, every one of
        which was written before ``horizon`` (None: nothing is known of them)."""
        return horizon is not None and self.root_start is not None and self.root_start > horizon

    def status(self) -> str:
        open_roots = self.pending - self.finished
        if open_roots - self.lost:
            return "running"
        if open_roots:
            return "lost"
        error = self.root_error if self.root is not None else self.error
        return "error" if error is not None else "ok"

    def summary(self, now_ns: int) -> TraceSummary:
        root = self.root
        status = self.status()
        error = self.root_error if root is not None else self.error
        end_ns = self.end_ns
        if status == "running":
            end_ns = max(end_ns, now_ns)
        elif status == "lost":
            end_ns = max(end_ns, self.start_ns)
        return TraceSummary(
            trace_id=self.trace_id,
            start_ns=self.start_ns,
            end_ns=end_ns,
            span_count=len(self.span_ids),
            name=root.name if root else "",
            script=_script_of(root, self.filepath),
            service=root.service if root else "",
            status=status,
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
    ``slowest`` ones, slowest first, with the runs still going (or lost) from its
    live-runs directory.

    The scan reads lines newest-first and stops once older lines cannot change the
    answer (see the module docstring).

    Raises:
        TraceNotFoundError: there is no such file, and no run is going.
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    want = slowest if slowest is not None else limit
    stats = ReadStats()
    accumulators: dict[str, _Accumulator] = {}
    # Live runs first: one that ends while the file is read is then found finished in it.
    for record in live_records(path, stats):
        _accumulator(accumulators, record.trace_id).add(record)
    try:
        files = trace_files(path)
    except TraceNotFoundError:
        if not accumulators:
            raise
        files = []  # runs going on, none finished yet
    margin = int(LATE_WRITE_MARGIN * 1e9)
    # Every line not read yet was written before this (None: nothing known yet).
    horizon: int | None = None
    since_check = 0
    scanned_all = True
    for records in lines_backward(files, stats):
        latest = 0
        for record in records:
            _accumulator(accumulators, record.trace_id).add(record)
            latest = max(latest, record.end_ns, record.start_ns)
        if latest and (horizon is None or latest + margin < horizon):
            horizon = latest + margin
        since_check += 1
        if horizon is not None and since_check >= max(_CHECK_EVERY, len(accumulators)):
            since_check = 0
            if _can_stop(accumulators, horizon, failed, slowest, since_ns, want, now_ns):
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


def _accumulator(accumulators: dict[str, _Accumulator], trace_id: str) -> _Accumulator:
    acc = accumulators.get(trace_id)
    if acc is None:
        acc = accumulators[trace_id] = _Accumulator(trace_id)
    return acc


def _passes(summary: TraceSummary, failed: bool, since_ns: int | None) -> bool:
    if failed and summary.status != "error":
        return False
    return since_ns is None or summary.start_ns >= since_ns


def _can_stop(
    accumulators: Mapping[str, _Accumulator],
    horizon: int,
    failed: bool,
    slowest: int | None,
    since_ns: int | None,
    want: int | None,
    now_ns: int,
) -> bool:
    # The lines not read yet were written before ``horizon``: their spans ended before
    # it, so a trace with a span there started before it too. Traces not seen at all
    # started before it; incomplete ones may still get earlier starts, or fail.
    if since_ns is not None and horizon < since_ns:
        return True
    if slowest is not None or want is None:
        return False
    starts = sorted(
        (
            a.start_ns
            for a in accumulators.values()
            if a.complete(horizon) and _passes(a.summary(now_ns), failed, since_ns)
        ),
        reverse=True,
    )
    if len(starts) < want:
        return False
    threshold = starts[want - 1]
    return all(a.start_ns < threshold for a in accumulators.values() if not a.complete(horizon))
