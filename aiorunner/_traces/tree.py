"""
One trace read back whole (``aiorunner traces show``): its spans deduplicated, arranged
as the tree the waterfall and the HTML page draw.

A run still going has its root in the live-runs directory beside the file, not in the
file: it is read first, and a finished root found in the file (the run ended meanwhile)
replaces it. For files written before issue 15, a later line supersedes an earlier one
for the same span id (the finished root replaces its start marker), except that a start
marker never replaces a finished span. Spans whose parent is not in the file (another
service's, or not written yet) are roots; a parent cycle in malformed input cannot hide
a span.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .._exceptions import ConfigError, TraceNotFoundError
from .logs import load_logs
from .reader import (
    HEX_ID,
    STATUS_ERROR,
    ReadStats,
    is_root_candidate,
    iter_records,
    live_records,
    trace_files,
)

if TYPE_CHECKING:
    from .logs import LogLine
    from .reader import SpanRecord

__all__ = ["Trace", "TreeRow", "load_trace"]


@dataclass(frozen=True)
class TreeRow:
    """A span in display order: its depth and, per ancestor level, whether a guide line
    continues below (``guides``), and whether it is the last of its siblings."""

    span: SpanRecord
    depth: int
    guides: tuple[bool, ...]
    last: bool


@dataclass(frozen=True)
class Trace:
    """Every span of one trace, deduplicated (a finished line supersedes its pending one)."""

    trace_id: str
    spans: tuple[SpanRecord, ...]
    #: The moment the file was read; a running span's bar ends here.
    now_ns: int
    #: What reading the file skipped (unreadable lines, malformed spans), for a note.
    stats: ReadStats = field(default_factory=ReadStats, compare=False)
    #: The trace's log records (the scripts' output, from logs.jsonl), in time order,
    #: and how many more were left out (``_traces.logs.MAX_LOG_LINES``).
    logs: tuple[LogLine, ...] = field(default=(), compare=False)
    logs_omitted: int = 0
    #: What reading logs.jsonl skipped (unreadable lines, malformed records).
    logs_stats: ReadStats = field(default_factory=ReadStats, compare=False)

    def logs_of(self, span_id: str) -> list[LogLine]:
        """The log records made under the span ``span_id``."""
        return [line for line in self.logs if line.span_id == span_id]

    @property
    def start_ns(self) -> int:
        return min((s.start_ns for s in self.spans), default=0)

    @property
    def end_ns(self) -> int:
        end = max((s.end_ns for s in self.spans), default=0)
        if self.running:
            end = max(end, self.now_ns)
        return end

    @property
    def duration(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1e9

    @property
    def running(self) -> bool:
        """A span is still going and its runner is alive (a lost run is not running)."""
        return any(s.pending and not s.lost for s in self.spans)

    @property
    def lost(self) -> bool:
        """The run's root never ended and never will: its runner process died."""
        return not self.running and any(s.lost for s in self.spans)

    @property
    def status(self) -> str:
        """``running``, ``lost`` (its runner died), ``error`` when a root span (the run
        itself) failed, else ``ok``."""
        if self.running:
            return "running"
        if self.lost:
            return "lost"
        roots = {s.span_id: s for s in self.roots()}
        roots.update((s.span_id, s) for s in self.spans if is_root_candidate(s))
        return "error" if any(s.status_code == STATUS_ERROR for s in roots.values()) else "ok"

    @property
    def error_spans(self) -> int:
        return sum(1 for s in self.spans if s.status_code == STATUS_ERROR)

    def span_end(self, span: SpanRecord) -> int:
        """Where a span's bar ends: its end, or now while it is running (for a lost run:
        the last end recorded)."""
        return span.end_ns if not span.pending else max(self.end_ns, span.start_ns)

    def roots(self) -> list[SpanRecord]:
        """Spans without a parent in this trace (their parent may live in another
        service's file), in start order."""
        ids = {s.span_id for s in self.spans}
        return sorted(
            (s for s in self.spans if not s.parent_span_id or s.parent_span_id not in ids),
            key=_order,
        )

    def rows(self) -> list[TreeRow]:
        """The spans in waterfall order: depth-first, children by start time."""
        children: dict[str, list[SpanRecord]] = {}
        for span in self.spans:
            children.setdefault(span.parent_span_id, []).append(span)
        for siblings in children.values():
            siblings.sort(key=_order)
        rows: list[TreeRow] = []
        seen: set[str] = set()

        def walk(span: SpanRecord, depth: int, guides: tuple[bool, ...], last: bool) -> None:
            if span.span_id in seen:
                return
            seen.add(span.span_id)
            rows.append(TreeRow(span, depth, guides, last))
            kids = children.get(span.span_id, [])
            for index, kid in enumerate(kids):
                walk(kid, depth + 1, (*guides, not last) if depth else (), index == len(kids) - 1)

        tops = self.roots()
        # A parent cycle (malformed input) leaves spans unreachable: show them as roots.
        for top in [*tops, *sorted(self.spans, key=_order)]:
            walk(top, 0, (), True)
        return rows


def _order(span: SpanRecord) -> tuple[int, str, str]:
    return (span.start_ns, span.name, span.span_id)


def _prefix(trace_id: str) -> str:
    prefix = trace_id.strip().lower()
    if not prefix or not HEX_ID.match(prefix) or len(prefix) > 32:
        raise ConfigError(
            f"{trace_id!r} is not a trace id: give the 32 hex digits of a trace id, or a "
            "unique prefix of one, as printed by `aiorunner traces`"
        )
    return prefix


def load_trace(path: str | os.PathLike[str], trace_id: str, *, now_ns: int | None = None) -> Trace:
    """
    The trace whose id is ``trace_id`` or starts with it, from ``path`` and its rotated
    files, and the live-runs directory beside it.

    Raises:
        ConfigError: ``trace_id`` is not hexadecimal.
        TraceNotFoundError: no trace matches, or the prefix matches several (listed).
    """
    prefix = _prefix(trace_id)
    stats = ReadStats()
    found: dict[str, dict[str, SpanRecord]] = {}
    # Live roots first: a run that ends while the file is read is then found finished.
    for record in live_records(path, stats):
        if record.trace_id.startswith(prefix):
            found.setdefault(record.trace_id, {})[record.span_id] = record
    try:
        files = trace_files(path)
    except TraceNotFoundError:
        if not found:
            raise
        files = []  # the run is going on and nothing of it is written yet
    for record in iter_records(files, stats=stats, contains=prefix.encode()):
        if not record.trace_id.startswith(prefix):
            continue
        spans = found.setdefault(record.trace_id, {})
        previous = spans.get(record.span_id)
        # A later line supersedes an earlier one, except that a pending line never
        # replaces a finished one.
        if previous is None or previous.pending or not record.pending:
            spans[record.span_id] = record
    if not found:
        raise TraceNotFoundError(
            f"no trace {prefix!r} in {', '.join(os.fspath(f) for f in files)}; "
            "`aiorunner traces` lists the recorded ones"
        )
    if len(found) > 1:
        candidates = tuple(sorted(found))
        raise TraceNotFoundError(
            f"trace id prefix {prefix!r} is ambiguous: it matches {', '.join(candidates)}; "
            "give more digits",
            candidates=candidates,
        )
    (trace_id_full, spans) = next(iter(found.items()))
    logs_stats = ReadStats()
    logs, omitted = load_logs(path, trace_id_full, stats=logs_stats)
    return Trace(
        trace_id_full,
        tuple(sorted(spans.values(), key=_order)),
        time.time_ns() if now_ns is None else now_ns,
        stats,
        logs,
        omitted,
        logs_stats,
    )
