"""
Counters of a session's export pipeline, as frozen snapshots (``Session.statistics()``).

Counts are of spans, cumulative since the session started. They are read from whatever
thread asks while the export thread updates them, so a snapshot taken mid-export may be
off by the batch in flight; after ``flush()`` or ``aclose()`` they are exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .tail_sampling import TailSamplingStatistics

__all__ = ["BackendStatistics", "PipelineStatistics"]


@dataclass(frozen=True)
class BackendStatistics:
    """What one backend did with the spans handed to it."""

    name: str
    #: "async", "sync" (an OpenTelemetry SpanExporter in a worker thread) or "broken".
    kind: str
    #: Spans waiting in this backend's own queue (taken from the hand-off queue).
    queued: int = 0
    exported: int = 0
    #: Spans whose export failed for good (permanent error, retries or deadline exhausted).
    failed: int = 0
    #: Spans this backend never got: its queue was full, the session closed first, or
    #: its spool could not take them (full disk, larger than the spool's bound).
    dropped: int = 0
    #: Spans it could not take now (unreachable, no answer in time), kept in its spool.
    spooled: int = 0
    #: Spans sent from the spool (this session's or earlier ones', any process's).
    unspooled: int = 0
    #: Older spooled spans removed to make room (AIORUNNER_SPOOL_MAX_BYTES).
    spool_evicted: int = 0
    #: Spans spooled as a hedge (AIORUNNER_SPOOL_HEDGE): their export went unanswered
    #: for the hedge delay and went on in the background (included in ``spooled``).
    hedged: int = 0
    #: Hedged spans whose export then ended after all (exported, or refused for good):
    #: their spool copy was removed. They are in ``spooled`` and in ``exported`` (or
    #: ``failed``), so ``exported + failed + dropped + spooled - hedges_withdrawn`` is
    #: every span this backend settled.
    hedges_withdrawn: int = 0
    #: The backend's spool directory (None: this backend is not spooled).
    spool_dir: str | None = None
    #: Calls to the backend's export (after merging queued batches), retries included.
    export_calls: int = 0
    retries: int = 0
    timeouts: int = 0
    #: Worker threads of a sync exporter given up on after the export timeout.
    abandoned_threads: int = 0
    last_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class PipelineStatistics:
    """The pipeline as a whole: the hand-off queue, then each backend."""

    #: Spans handed to the pipeline by ``on_end`` (accepted or dropped).
    received: int = 0
    #: Spans waiting in the hand-off queue for the batcher.
    queued: int = 0
    #: Spans lost before reaching any backend (hand-off queue full, session closed).
    dropped: int = 0
    #: Span exports that succeeded, summed over backends.
    exported: int = 0
    #: Span exports that failed for good, summed over backends.
    failed: int = 0
    #: Spans spooled for a later export, summed over backends.
    spooled: int = 0
    backends: tuple[BackendStatistics, ...] = ()
    #: The tail sampler's counters (held, kept, sampled out) when the sampler is
    #: ``tailbased``; its spans are counted in ``received`` as taken from the queue.
    tail: TailSamplingStatistics | None = None

    def backend(self, name: str) -> BackendStatistics:
        """The statistics of the backend called ``name``.

        Raises:
            KeyError: no backend of that name in this session.
        """
        for entry in self.backends:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        data = {
            key: value for key, value in self.__dict__.items() if key not in ("backends", "tail")
        }
        data["backends"] = [b.to_dict() for b in self.backends]
        data["tail"] = dict(self.tail.__dict__) if self.tail is not None else None
        return data
