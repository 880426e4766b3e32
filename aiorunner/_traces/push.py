"""
``aiorunner traces push``: replay recorded traces into any backend, through the export
pipeline, for runs recorded offline (on a laptop, in CI without a collector).

Spans are decoded from the file with their original trace and span ids, parent links,
times, attributes, events, status, scope and resource (``_otlp_json.decode_request``), and
handed to a :class:`Session`'s pipeline as if they had just ended: batching, retries,
timeouts and per-backend counts are the ones live runs get. Start markers of runs (pending
root lines) are never sent; a run still going is pushed without its root. Pushing the same
traces twice sends them twice.

The file is read in a worker thread, a chunk at a time, and each chunk is flushed before
the next is read, so a big file neither fills memory nor overflows the pipeline's queue;
pushing stops early once a backend fails for good (a dead collector is reported after one
export timeout, not once per chunk).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from .._config import TracingConfig
from .._exceptions import ConfigError, TraceNotFoundError
from .listing import list_traces
from .reader import ReadStats, iter_requests, trace_files

if TYPE_CHECKING:
    from collections.abc import Generator, Iterable, Sequence
    from pathlib import Path

    from opentelemetry.sdk.trace import ReadableSpan

    from .._export.session import Session
    from .._export.statistics import PipelineStatistics

__all__ = ["PushReport", "push_traces"]


@dataclass(frozen=True)
class PushReport:
    """What a push did."""

    traces: int
    #: Spans handed to the pipeline.
    spans: int
    #: Runs still going (start markers without their finished line): their roots are
    #: not sent.
    running: int
    #: Lines that could not be read (cut short), skipped.
    unreadable: int
    statistics: PipelineStatistics
    #: True when a backend failed for good and the rest of the file was not sent.
    stopped_early: bool = False

    @property
    def ok(self) -> bool:
        """Every span reached every backend."""
        stats = self.statistics
        return (
            not self.stopped_early
            and stats.dropped == 0
            and all(
                b.failed == 0 and b.dropped == 0 and b.exported == self.spans
                for b in stats.backends
            )
        )


@dataclass
class _Counts:
    spans: int = 0
    #: (trace id, span id) of start markers not (yet) followed by their finished line.
    pending: set[tuple[str, str]] = field(default_factory=set)
    traces: set[str] = field(default_factory=set)


def _select(request: dict[str, Any], wanted: set[str] | None, counts: _Counts) -> dict[str, Any]:
    """A copy of ``request`` holding only the finished spans of the wanted traces."""
    resources = []
    for resource_spans in request.get("resourceSpans") or ():
        scopes = []
        for scope_spans in resource_spans.get("scopeSpans") or ():
            spans = []
            for span in scope_spans.get("spans") or ():
                trace_id = str(span.get("traceId", "")).lower()
                if wanted is not None and trace_id not in wanted:
                    continue
                key = (trace_id, str(span.get("spanId", "")).lower())
                if not int(span.get("endTimeUnixNano") or 0):
                    counts.pending.add(key)
                    continue
                counts.pending.discard(key)
                spans.append(span)
                counts.traces.add(trace_id)
            if spans:
                scopes.append({**scope_spans, "spans": spans})
        if scopes:
            resources.append({**resource_spans, "scopeSpans": scopes})
    return {"resourceSpans": resources}


def _chunks(
    files: Sequence[Path], wanted: set[str] | None, size: int, counts: _Counts, stats: ReadStats
) -> Generator[list[ReadableSpan], None, None]:
    """Decoded spans, ``size`` at a time, in file order (runs in a worker thread)."""
    from .._export.otlp_json import decode_request

    buffer: list[ReadableSpan] = []
    for request in iter_requests(files, stats=stats):
        selected = _select(request, wanted, counts)
        if not selected["resourceSpans"]:
            continue
        try:
            buffer.extend(decode_request(selected))
        except (AttributeError, TypeError, ValueError, KeyError):
            stats.skipped += 1
            continue
        while len(buffer) >= size:
            yield buffer[:size]
            del buffer[:size]
    if buffer:
        yield buffer


def _wanted(path: Path, since_ns: int | None, prefixes: Iterable[str]) -> set[str] | None:
    """The trace ids to push (None: all), from ``--since`` and ``--trace`` prefixes."""
    prefixes = [p.strip().lower() for p in prefixes]
    if since_ns is None and not prefixes:
        return None
    known = [t.trace_id for t in list_traces(path, since_ns=since_ns, limit=None).traces]
    if not prefixes:
        return set(known)
    wanted: set[str] = set()
    for prefix in prefixes:
        matches = [t for t in known if t.startswith(prefix)]
        if not matches:
            raise TraceNotFoundError(
                f"no trace {prefix!r} in {os.fspath(path)}"
                + (" since that time" if since_ns is not None else "")
                + "; `aiorunner traces` lists the recorded ones"
            )
        if len(matches) > 1:
            raise TraceNotFoundError(
                f"trace id prefix {prefix!r} is ambiguous: it matches {', '.join(matches)}; "
                "give more digits",
                candidates=tuple(matches),
            )
        wanted.add(matches[0])
    return wanted


def _pipeline_of(session: Session) -> Any:
    # The session's pipeline is the SpanProcessor its TracerProvider calls on_end on:
    # replayed spans enter exactly where live spans do.
    pipeline = getattr(session, "_pipeline", None)
    if pipeline is None:
        raise ConfigError(
            "tracing is disabled for this push (exporter 'none'?); name a backend with "
            "--exporter, e.g. --exporter otlp"
        )
    return pipeline


async def push_traces(
    path: str | os.PathLike[str],
    *,
    exporter: str,
    endpoint: str | None = None,
    since_ns: int | None = None,
    trace_ids: Sequence[str] = (),
    export_timeout: float | None = None,
    chunk_size: int | None = None,
) -> PushReport:
    """
    Replay the traces recorded in ``path`` (and its rotated files) into the backends named
    by ``exporter`` (comma-separated), optionally only those started since ``since_ns`` or
    matching ``trace_ids`` prefixes.

    Raises:
        TraceNotFoundError: no such file, or a ``trace_ids`` prefix matches no trace or
            several.
        ConfigError: a backend name is unknown or its configuration is invalid, or the
            target is the file being read.
    """
    from .._export.session import Session

    files = await anyio.to_thread.run_sync(trace_files, path)
    wanted = await anyio.to_thread.run_sync(_wanted, files[0], since_ns, trace_ids)
    config = TracingConfig(
        enabled=True,
        exporter_type=exporter,
        collector_endpoint=endpoint,
        export_timeout=export_timeout,
    ).resolve()
    if "jsonl" in config.exporters:
        same = await anyio.to_thread.run_sync(_same_file, config.traces_file, files)
        if same:
            raise ConfigError(
                f"--exporter jsonl would append {os.fspath(path)} to itself; set "
                "AIORUNNER_TRACES_FILE to another file to copy traces into it"
            )
    session = await anyio.to_thread.run_sync(Session, config)
    counts = _Counts()
    stats = ReadStats()
    stopped = False
    queue = config.max_queue_size or 2048
    size = chunk_size or max(1, min(queue, 2 * (config.batch_size or 512)))
    chunks = _chunks(files, wanted, size, counts, stats)
    try:
        pipeline = _pipeline_of(session)
        while True:
            chunk = await anyio.to_thread.run_sync(next, chunks, None)
            if chunk is None:
                break
            for span in chunk:
                pipeline.on_end(span)
            counts.spans += len(chunk)
            await session.flush()
            current = session.statistics()
            if current.dropped or any(b.failed or b.dropped for b in current.backends):
                stopped = True
                break
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(chunks.close)  # closes the file being read
        await session.aclose()
    return PushReport(
        traces=len(counts.traces),
        spans=counts.spans,
        running=len(counts.pending),
        unreadable=stats.skipped,
        statistics=session.statistics(),
        stopped_early=stopped,
    )


def _same_file(target: str | os.PathLike[str] | None, files: Sequence[Path]) -> bool:
    if target is None:
        return False
    try:
        return any(os.path.samefile(target, f) for f in files)
    except OSError:
        return False
