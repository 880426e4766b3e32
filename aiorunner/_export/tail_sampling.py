"""
Tail-based sampling, done in our own pipeline (``OTEL_TRACES_SAMPLER=tailbased``).

We hold the whole trace of a run (the script's own spans come back through the in-script
channel), so the decision can wait until the run is over and look at how it went, which
a head sampler cannot. A run is kept when

- it failed: any of its spans has ERROR status (the runner sets it on the failing phase
  and on the root);
- it was slow: its spans cover more than ``threshold`` seconds (last end - first start);
- else with probability ``rate``, decided from the trace id as ``TraceIdRatioBased`` does
  (so every process that sees the trace decides alike).

When the decision is taken: when the trace's *local root* ends (a span without parent,
or with a remote one: the run's ``ScriptRunner`` span under ``TRACEPARENT``), or when
someone waits for the trace (``flush_trace``: ``upload_traces`` of the run), or for
everything at ``flush()`` and close. Spans of the trace arriving after a decision wait for
the next one; once a trace has been kept, the rest of it is kept too (a trace is never cut
after its first kept part). A dropped span is counted as *sampled out*, never as lost, and
``ExportReport.sampled_out`` says so for a trace of which nothing was kept.

Memory is bounded: past ``max_held_spans`` the oldest trace is decided early.

The sampler is not thread safe: it lives on the export pipeline's own thread, between the
hand-off queue and the batcher.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry.trace import StatusCode

if TYPE_CHECKING:
    from collections.abc import Iterable

    from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["TailSampler", "TailSamplingStatistics"]

_TRACE_ID_LIMIT = (1 << 64) - 1
DEFAULT_MAX_HELD_SPANS = 100_000
DEFAULT_MAX_TRACES = 10_000


@dataclass(frozen=True)
class TailSamplingStatistics:
    """Counters of a tail sampler (cumulative, spans and decided trace parts)."""

    #: Spans waiting for a decision now.
    held: int = 0
    #: Spans passed on to the batcher.
    kept: int = 0
    #: Spans dropped by a decision (not lost: nothing was meant to leave).
    sampled_out: int = 0
    #: Decisions taken, by reason.
    kept_failed: int = 0
    kept_slow: int = 0
    kept_ratio: int = 0
    kept_trace: int = 0
    dropped: int = 0


class _Held:
    __slots__ = ("error", "first_start", "last_end", "spans")

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []
        self.first_start: int | None = None
        self.last_end: int | None = None
        self.error = False

    def add(self, span: ReadableSpan) -> None:
        self.spans.append(span)
        start, end = span.start_time, span.end_time
        if start is not None and (self.first_start is None or start < self.first_start):
            self.first_start = start
        if end is not None and (self.last_end is None or end > self.last_end):
            self.last_end = end
        if span.status.status_code is StatusCode.ERROR:
            self.error = True

    @property
    def duration(self) -> float:
        if self.first_start is None or self.last_end is None:
            return 0.0
        return (self.last_end - self.first_start) / 1e9


class TailSampler:
    """
    Holds each trace's spans until a decision, then passes on or drops them.

    Args:
        rate: probability of keeping a run that neither failed nor was slow (0..1).
        threshold: runs whose spans cover more than this many seconds are kept.
        max_held_spans: past this many held spans, the oldest trace is decided early.
        max_traces: how many traces' outcomes are remembered (oldest forgotten).
    """

    def __init__(
        self,
        *,
        rate: float,
        threshold: float,
        max_held_spans: int = DEFAULT_MAX_HELD_SPANS,
        max_traces: int = DEFAULT_MAX_TRACES,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate={rate!r} must be between 0 and 1")
        self.rate = rate
        self.threshold = threshold
        self.max_held_spans = max_held_spans
        self.max_traces = max_traces
        self._bound = round(rate * (_TRACE_ID_LIMIT + 1))
        self._held: OrderedDict[int, _Held] = OrderedDict()
        self._held_count = 0
        # trace id -> [kept spans, sampled-out spans], most recent last
        self._outcomes: OrderedDict[int, list[int]] = OrderedDict()
        self._kept = 0
        self._sampled_out = 0
        self._reasons = {"failed": 0, "slow": 0, "ratio": 0, "trace": 0, "dropped": 0}

    # ----------------------------------------------------------------- the stage

    def offer(self, spans: Iterable[ReadableSpan]) -> list[ReadableSpan]:
        """Take finished spans; return those whose trace got decided (kept) now."""
        released: list[ReadableSpan] = []
        held = self._held
        for span in spans:
            context = span.context
            if context is None:
                continue
            trace_id = context.trace_id
            entry = held.get(trace_id)
            if entry is None:
                entry = held[trace_id] = _Held()
            entry.add(span)
            self._held_count += 1
            parent = span.parent
            if parent is None or parent.is_remote:
                released.extend(self._decide(trace_id))
        while self._held_count > self.max_held_spans and held:
            released.extend(self._decide(next(iter(held))))
        return released

    def decide(self, trace_id: int) -> list[ReadableSpan]:
        """Decide ``trace_id``'s held spans now (someone waits for them); return the kept."""
        if trace_id not in self._held:
            return []
        return self._decide(trace_id)

    def decide_all(self) -> list[ReadableSpan]:
        """Decide every held trace now (flush, close); return the kept spans."""
        released: list[ReadableSpan] = []
        for trace_id in list(self._held):
            released.extend(self._decide(trace_id))
        return released

    # ------------------------------------------------------------------ reading

    def sampled_out(self, trace_id: int) -> bool:
        """True when spans of ``trace_id`` were dropped by a decision and none kept."""
        outcome = self._outcomes.get(trace_id)
        return outcome is not None and outcome[0] == 0 and outcome[1] > 0

    def sampled_out_spans(self, trace_id: int) -> int:
        """Spans of ``trace_id`` dropped by a decision so far."""
        outcome = self._outcomes.get(trace_id)
        return outcome[1] if outcome is not None else 0

    def statistics(self) -> TailSamplingStatistics:
        reasons = self._reasons
        return TailSamplingStatistics(
            held=self._held_count,
            kept=self._kept,
            sampled_out=self._sampled_out,
            kept_failed=reasons["failed"],
            kept_slow=reasons["slow"],
            kept_ratio=reasons["ratio"],
            kept_trace=reasons["trace"],
            dropped=reasons["dropped"],
        )

    # ----------------------------------------------------------------- deciding

    def _reason(self, trace_id: int, entry: _Held) -> str | None:
        """Why the held part of a trace is kept, or None to drop it."""
        outcome = self._outcomes.get(trace_id)
        if outcome is not None and outcome[0]:
            return "trace"  # an earlier part was kept: never cut a kept trace
        if entry.error:
            return "failed"
        if entry.duration > self.threshold:
            return "slow"
        if (trace_id & _TRACE_ID_LIMIT) < self._bound:
            return "ratio"
        return None

    def _decide(self, trace_id: int) -> list[ReadableSpan]:
        entry = self._held.pop(trace_id)
        count = len(entry.spans)
        self._held_count -= count
        reason = self._reason(trace_id, entry)
        outcome = self._outcomes.get(trace_id)
        if outcome is None:
            outcome = self._outcomes[trace_id] = [0, 0]
            if len(self._outcomes) > self.max_traces:
                self._outcomes.popitem(last=False)
        else:
            self._outcomes.move_to_end(trace_id)
        if reason is None:
            self._reasons["dropped"] += 1
            self._sampled_out += count
            outcome[1] += count
            return []
        self._reasons[reason] += 1
        self._kept += count
        outcome[0] += count
        return entry.spans
