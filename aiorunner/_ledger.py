"""
Per-trace accounting: what became of each trace's spans, for ``Session.flush_trace``.

Only the export thread writes here (no locks). The cost is kept off the per-span path:
each batch the batcher takes becomes one :class:`BatchRecord` (its span count per trace,
and one outcome slot per backend); a trace's row lists the records it appears in (one
append per trace per batch), and a backend settles a whole record at once. Counts are
summed only when someone asks for a report. A trace of its own per span is common (every
root span made outside a run) and costs one dictionary insert.

The ledger keeps the last ``max_traces`` traces it saw and forgets the oldest, so a
long-lived session does not grow without bound; ``forget`` drops one explicitly.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from ._result import BackendReport, ExportReport

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["DEFAULT_MAX_TRACES", "DROPPED", "EXPORTED", "FAILED", "BatchRecord", "TraceLedger"]

DEFAULT_MAX_TRACES = 10_000

# A backend's outcome for a batch.
PENDING, EXPORTED, FAILED, DROPPED = 0, 1, 2, 3


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

    def __init__(self, names: Sequence[str], *, max_traces: int = DEFAULT_MAX_TRACES) -> None:
        self.names = tuple(names)
        self.max_traces = max_traces
        # trace id -> [spans dropped before export, BatchRecord, BatchRecord, ...];
        # oldest first by first sight, evicted in that order.
        self._rows: OrderedDict[int, list[Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def _row(self, trace_id: int) -> list[Any]:
        row = self._rows.get(trace_id)
        if row is None:
            row = self._rows[trace_id] = [0]
            if len(self._rows) > self.max_traces:
                self._rows.popitem(last=False)
        return row

    def record(self, counts: Mapping[int, int]) -> BatchRecord:
        """Register a batch the batcher took (``counts``: spans per trace id)."""
        record = BatchRecord(counts, len(self.names))
        rows = self._rows
        for trace_id in counts:
            row = rows.get(trace_id)
            if row is None:
                row = self._row(trace_id)
            row.append(record)
        return record

    def dropped_before_export(self, trace_id: int, count: int = 1) -> None:
        self._row(trace_id)[0] += count

    def forget(self, trace_id: int) -> None:
        self._rows.pop(trace_id, None)

    def report(self, trace_id: int) -> ExportReport:
        """The cumulative report of one trace (all zeros for a trace never seen)."""
        row = self._rows.get(trace_id)
        width = len(self.names)
        if row is None:
            return ExportReport(backends=tuple(BackendReport(name) for name in self.names))
        # per backend: [pending, exported, failed, dropped]
        sums = [[0, 0, 0, 0] for _ in range(width)]
        errors: list[str | None] = [None] * width
        for record in row[1:]:
            count = record.counts[trace_id]
            for index, outcome in enumerate(record.outcomes):
                sums[index][outcome] += count
                if outcome in (FAILED, DROPPED) and record.errors is not None:
                    errors[index] = record.errors[index]
        backends = tuple(
            BackendReport(
                name,
                exported=sums[i][EXPORTED],
                failed=sums[i][FAILED],
                dropped=sums[i][DROPPED],
                last_error=errors[i],
                pending=sums[i][PENDING],
            )
            for i, name in enumerate(self.names)
        )
        pending = max((b.pending for b in backends), default=0)
        return ExportReport(backends=backends, dropped=row[0], pending=pending)
