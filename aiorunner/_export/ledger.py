"""
Per-trace accounting: what became of each trace's spans, for ``Session.flush_trace``.

Only the export thread writes here (no locks). The cost is kept off the per-span path:
each batch the batcher takes becomes one :class:`BatchRecord` (its span count per trace,
and one outcome slot per backend); a *watched* trace's row lists the records it appears
in (one append per batch), and a backend settles a whole record at once. Counts are
summed only when someone asks for a report.

Only watched traces get a row: a run's trace (watched from the start of its
``ScriptRunner`` span), a trace passed to ``Session.watch_trace``, and a trace someone
called ``flush_trace`` for. A trace watched late finds its earlier spans in the last
``recent`` batch records kept for that purpose (spans of it taken longer ago are not in
its counts). Bookkeeping for every trace would cost a dictionary insert per span when
each span is a trace of its own, as root spans made outside runs are.

The ledger keeps the last ``max_traces`` traces watched and forgets the oldest, so a
long-lived session does not grow without bound; ``forget`` drops one explicitly.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

from .._result import BackendReport, ExportReport

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "DEFAULT_MAX_TRACES",
    "DROPPED",
    "EXPORTED",
    "FAILED",
    "SPOOLED",
    "BatchRecord",
    "TraceLedger",
]

DEFAULT_MAX_TRACES = 10_000
#: Batch records kept for traces watched late (memory: at most this many batches' counts).
DEFAULT_RECENT = 64

# A backend's outcome for a batch.
# SPOOLED: appended to the backend's on-disk spool, to be sent later (spool.py).
PENDING, EXPORTED, FAILED, DROPPED, SPOOLED = 0, 1, 2, 3, 4


class BatchRecord:
    """One batch taken by the batcher: spans per trace, and each backend's outcome."""

    __slots__ = ("counts", "errors", "outcomes")

    def __init__(self, counts: Mapping[int, int], width: int) -> None:
        self.counts = counts
        self.outcomes = [PENDING] * width
        self.errors: list[str | None] | None = None

    def settle(self, index: int, outcome: int, error: str | None = None) -> None:
        self.outcomes[index] = outcome
        if error is not None:
            if self.errors is None:
                self.errors = [None] * len(self.outcomes)
            self.errors[index] = error


class TraceLedger:
    """Cumulative per-trace counts for every backend of one pipeline."""

    def __init__(
        self,
        names: Sequence[str],
        *,
        max_traces: int = DEFAULT_MAX_TRACES,
        recent: int = DEFAULT_RECENT,
    ) -> None:
        self.names = tuple(names)
        self.max_traces = max_traces
        self._recent: deque[BatchRecord] = deque(maxlen=recent)
        # trace id -> [spans dropped before export, BatchRecord, BatchRecord, ...];
        # oldest first by first sight, evicted in that order.
        self._rows: OrderedDict[int, list[Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def watch(self, trace_id: int) -> None:
        """Keep counts for ``trace_id`` from now on."""
        if trace_id not in self._rows:
            row: list[Any] = [0]
            row.extend(record for record in self._recent if trace_id in record.counts)
            self._rows[trace_id] = row
            if len(self._rows) > self.max_traces:
                self._rows.popitem(last=False)

    def watching(self, trace_id: int) -> bool:
        return trace_id in self._rows

    def record(self, counts: Mapping[int, int]) -> BatchRecord:
        """Register a batch the batcher took (``counts``: spans per trace id)."""
        record = BatchRecord(counts, len(self.names))
        self._recent.append(record)
        rows = self._rows
        if rows:
            for trace_id in counts:
                row = rows.get(trace_id)
                if row is not None:
                    row.append(record)
        return record

    def dropped_before_export(self, trace_id: int, count: int = 1) -> None:
        row = self._rows.get(trace_id)
        if row is not None:
            row[0] += count

    def forget(self, trace_id: int) -> None:
        self._rows.pop(trace_id, None)

    def report(self, trace_id: int) -> ExportReport:
        """The cumulative report of one trace (all zeros for a trace never seen)."""
        row = self._rows.get(trace_id)
        width = len(self.names)
        if row is None:
            return ExportReport(backends=tuple(BackendReport(name) for name in self.names))
        # per backend: [pending, exported, failed, dropped, spooled]
        sums = [[0, 0, 0, 0, 0] for _ in range(width)]
        errors: list[str | None] = [None] * width
        for record in row[1:]:
            count = record.counts[trace_id]
            for index, outcome in enumerate(record.outcomes):
                sums[index][outcome] += count
                if outcome in (FAILED, DROPPED, SPOOLED) and record.errors is not None:
                    errors[index] = record.errors[index]
        backends = tuple(
            BackendReport(
                name,
                exported=sums[i][EXPORTED],
                failed=sums[i][FAILED],
                dropped=sums[i][DROPPED],
                spooled=sums[i][SPOOLED],
                last_error=errors[i],
                pending=sums[i][PENDING],
            )
            for i, name in enumerate(self.names)
        )
        pending = max((b.pending for b in backends), default=0)
        return ExportReport(backends=backends, dropped=row[0], pending=pending)
