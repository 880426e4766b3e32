"""
``aiorunner traces push``: replay recorded traces into any backend, through the export
pipeline, for runs recorded offline (on a laptop, in CI without a collector).

Spans are decoded from the file with their original trace and span ids, parent links,
times, attributes, events, status, scope and resource (``_otlp_json.decode_request``), and
handed to a :class:`Session`'s pipeline as if they had just ended: batching, retries,
timeouts and per-backend counts are the ones live runs get. Start markers of runs (pending
root lines) are never sent; a run still going is pushed without its root. Pushing the same
traces twice sends them twice. A file backend (``jsonl``) writes where ``to`` says,
never to a file implied by the environment: ``AIORUNNER_TRACES_FILE`` names the file
read by default, so taking the destination from it too made a copy impossible.

The file is read in a worker thread, a chunk at a time, and each chunk is flushed before
the next is read, so a big file neither fills memory nor overflows the pipeline's queue;
pushing stops early once a backend fails for good (a dead collector is reported after one
export timeout, not once per chunk).

``push --spool`` (:func:`push_spool`) sends what backends could not take earlier, from
their on-disk spools (``_export/spool.py``), as the next run would in the background.

The log records of the pushed traces (``logs.jsonl`` beside the file, the scripts'
output) follow the spans, through the session's logs pipeline, to the backends that take
logs; a jsonl copy gets them in ``logs.jsonl`` beside ``to`` (not when that is the very
file being read). Malformed records are skipped and counted like malformed spans.
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
from .reader import HEX_ID, ReadStats, iter_requests, span_entries, span_record, trace_files

if TYPE_CHECKING:
    from collections.abc import Generator, Iterable, Sequence
    from pathlib import Path

    from opentelemetry.sdk.trace import ReadableSpan

    from .._export.session import Session
    from .._export.statistics import PipelineStatistics
    from .reader import SpanRecord

__all__ = ["PushReport", "SpoolPushReport", "push_spool", "push_traces"]


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
    #: Malformed spans skipped (never sent: one would fail its whole batch), and the
    #: first one's problem.
    bad_spans: int = 0
    first_problem: str = ""
    #: The file a file backend (jsonl) wrote to.
    to: str | None = None
    #: Log records of the pushed traces handed to the logs pipeline, and its counts.
    logs: int = 0
    log_statistics: PipelineStatistics | None = None
    #: Why the log records were not pushed ("" when they were, or there were none).
    logs_skipped: str = ""

    @property
    def ok(self) -> bool:
        """Every span reached every backend."""
        stats = self.statistics
        logs = self.log_statistics
        return (
            not self.stopped_early
            and stats.dropped == 0
            and all(
                b.failed == 0 and b.dropped == 0 and b.exported == self.spans
                for b in stats.backends
            )
            and (
                logs is None
                or (
                    logs.dropped == 0
                    and all(
                        b.failed == 0 and b.dropped == 0 and b.exported == self.logs
                        for b in logs.backends
                    )
                )
            )
        )


@dataclass
class _Counts:
    spans: int = 0
    #: (trace id, span id) of start markers not (yet) followed by their finished line.
    pending: set[tuple[str, str]] = field(default_factory=set)
    traces: set[str] = field(default_factory=set)


def _select(
    request: dict[str, Any], wanted: set[str] | None, counts: _Counts, stats: ReadStats
) -> dict[str, Any]:
    """A copy of ``request`` holding only the finished spans of the wanted traces that
    can be sent: a malformed span (:func:`span_record` refuses it: a time outside OTLP's
    64 bits, ``null`` for an object) or one whose ids are not OTLP ids is skipped and
    counted, so that it cannot fail the batch of good spans it would travel in."""
    resources: list[dict[str, Any]] = []
    resource_of: Any = None
    scope_of: Any = None
    spans: list[Any] = []
    for resource_spans, scope_spans, span in span_entries(request, stats):
        try:
            record = span_record(span, {}, "")
            problem = _id_problem(record)
        except (TypeError, ValueError, AttributeError) as exc:
            problem = str(exc)
        if problem:
            name = span.get("name") if isinstance(span, dict) else None
            stats.bad(f"span {str(name)!r}: {problem}" if name else problem)
            continue
        if wanted is not None and record.trace_id not in wanted:
            continue
        key = (record.trace_id, record.span_id)
        if not record.end_ns:
            counts.pending.add(key)
            continue
        counts.pending.discard(key)
        counts.traces.add(record.trace_id)
        if resource_spans is not resource_of:
            resource_of, scope_of = resource_spans, None
            resources.append({**resource_spans, "scopeSpans": []})
        if scope_spans is not scope_of:
            scope_of = scope_spans
            spans = []
            resources[-1]["scopeSpans"].append({**scope_spans, "spans": spans})
        spans.append(span)
    return {"resourceSpans": resources}


def _id_problem(record: SpanRecord) -> str:
    """Why the span's ids cannot be sent (an OTLP id is 16 or 8 bytes), or ""."""
    if len(record.trace_id) != 32 or not HEX_ID.match(record.trace_id):
        return f"traceId {record.trace_id!r} is not 16 bytes of hex or base64"
    if len(record.span_id) != 16 or not HEX_ID.match(record.span_id):
        return f"spanId {record.span_id!r} is not 8 bytes of hex or base64"
    parent = record.parent_span_id
    if parent and (len(parent) != 16 or not HEX_ID.match(parent)):
        return f"parentSpanId {parent!r} is not 8 bytes of hex or base64"
    return ""


def _decode(selected: dict[str, Any], stats: ReadStats) -> list[ReadableSpan]:
    """The selected spans as SDK spans; when the line does not decode as a whole, span
    by span, skipping (and counting) the ones that do not."""
    from .._export.otlp_json import decode_request

    errors = (AttributeError, TypeError, ValueError, KeyError)
    try:
        return decode_request(selected)
    except errors:
        pass
    decoded: list[ReadableSpan] = []
    for resource_spans in selected["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                single = {**resource_spans, "scopeSpans": [{**scope_spans, "spans": [span]}]}
                try:
                    decoded.extend(decode_request({"resourceSpans": [single]}))
                except errors as exc:
                    stats.bad(f"span {str(span.get('name', ''))!r}: {exc!r}")
    return decoded


def _chunks(
    files: Sequence[Path], wanted: set[str] | None, size: int, counts: _Counts, stats: ReadStats
) -> Generator[list[ReadableSpan], None, None]:
    """Decoded spans, ``size`` at a time, in file order (runs in a worker thread)."""
    buffer: list[ReadableSpan] = []
    for request in iter_requests(files, stats=stats):
        selected = _select(request, wanted, counts, stats)
        if not selected["resourceSpans"]:
            continue
        buffer.extend(_decode(selected, stats))
        while len(buffer) >= size:
            yield buffer[:size]
            del buffer[:size]
    if buffer:
        yield buffer


def _log_chunks(
    files: Sequence[Path], traces: set[str], size: int, stats: ReadStats
) -> Generator[list[Any], None, None]:
    """The log records of ``traces``, ``size`` at a time, in file order (worker thread)."""
    from .._export.logs import decode_logs_request

    cache: dict[str, Any] = {}
    buffer: list[Any] = []
    for request in iter_requests(files, stats=stats):
        try:
            records = decode_logs_request(request, resource_cache=cache)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            stats.bad(f"log records: {exc!r}")
            continue
        buffer.extend(r for r in records if f"{r.trace_id:032x}" in traces)
        while len(buffer) >= size:
            yield buffer[:size]
            del buffer[:size]
    if buffer:
        yield buffer


async def _push_logs(
    session: Session,
    path: str | os.PathLike[str],
    traces: set[str],
    to: str | os.PathLike[str] | None,
    stats: ReadStats,
) -> tuple[int, str]:
    """Replay the log records of ``traces``; (records handed over, why not)."""
    from .logs import logs_file_for

    logs = session.logs
    if logs is None or not traces:
        return 0, ""
    source = logs_file_for(path)
    try:
        files = await anyio.to_thread.run_sync(trace_files, source)
    except TraceNotFoundError:
        return 0, ""
    if to is not None:
        target = session.config.logs_file or os.path.join(os.path.dirname(to), "logs.jsonl")
        if await anyio.to_thread.run_sync(_same_file, target, files):
            return 0, (
                f"the copy's logs file {target} is the one being read; put --to in another "
                "directory to copy the log records too"
            )
    config = session.config
    size = max(1, min(config.logs_max_queue_size or 2048, 2 * (config.logs_batch_size or 512)))
    chunks = _log_chunks(files, traces, size, stats)
    sent = 0
    try:
        while True:
            chunk = await anyio.to_thread.run_sync(next, chunks, None)
            if chunk is None:
                break
            for record in chunk:
                logs.emit(record)
            sent += len(chunk)
            await session.flush()
            current = session.log_statistics()
            if current.dropped or any(b.failed or b.dropped for b in current.backends):
                break
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(chunks.close)
    return sent, ""


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
    to: str | os.PathLike[str] | None = None,
    since_ns: int | None = None,
    trace_ids: Sequence[str] = (),
    export_timeout: float | None = None,
    chunk_size: int | None = None,
) -> PushReport:
    """
    Replay the traces recorded in ``path`` (and its rotated files) into the backends named
    by ``exporter`` (comma-separated), optionally only those started since ``since_ns`` or
    matching ``trace_ids`` prefixes.

    Args:
        to: the file a file backend (``jsonl``) writes to (created, or appended to);
            required when ``exporter`` names one, refused otherwise.

    Raises:
        TraceNotFoundError: no such file, or a ``trace_ids`` prefix matches no trace or
            several.
        ConfigError: a backend name is unknown or its configuration is invalid, ``to``
            is missing for jsonl, given without it, or is the file being read.
    """
    from .._export.session import Session

    files = await anyio.to_thread.run_sync(trace_files, path)
    wanted = await anyio.to_thread.run_sync(_wanted, files[0], since_ns, trace_ids)
    config = TracingConfig(
        enabled=True,
        exporter_type=exporter,
        collector_endpoint=endpoint,
        export_timeout=export_timeout,
        traces_file=to,
    ).resolve()
    if "jsonl" in config.exporters:
        if to is None:
            raise ConfigError(
                f"--exporter {exporter} writes to a file: name it with --to PATH (e.g. "
                "--to copy.jsonl; created, or appended to). The traces are read from "
                f"{os.fspath(path)} (--file)"
            )
        same = await anyio.to_thread.run_sync(_same_file, to, files)
        if same:
            raise ConfigError(
                f"--to {os.fspath(to)} is the file being read ({os.fspath(path)}): it "
                "would be appended to itself; give --to another path"
            )
    elif to is not None:
        raise ConfigError(
            f"--to {os.fspath(to)} names the file of the jsonl backend, and --exporter "
            f"{exporter} writes no file: add it (--exporter {exporter},jsonl) or drop "
            "--to (a collector's address is --endpoint URL)"
        )
    if to is not None and config.logs:
        # The copy's log records go beside the copy (not beside the file being read).
        config = TracingConfig(
            enabled=True,
            exporter_type=exporter,
            collector_endpoint=endpoint,
            export_timeout=export_timeout,
            traces_file=to,
            logs_file=os.path.join(os.path.dirname(os.fspath(to)), "logs.jsonl"),
        ).resolve()
    session = await anyio.to_thread.run_sync(Session, config)
    counts = _Counts()
    stats = ReadStats()
    stopped = False
    logs_sent, logs_skipped = 0, ""
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
        if not stopped:
            logs_sent, logs_skipped = await _push_logs(session, path, counts.traces, to, stats)
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
        bad_spans=stats.bad_spans,
        first_problem=stats.first_problem,
        to=None if to is None else os.fspath(to),
        logs=logs_sent,
        log_statistics=session.log_statistics() if session.logs is not None else None,
        logs_skipped=logs_skipped,
    )


def _same_file(target: str | os.PathLike[str], files: Sequence[Path]) -> bool:
    """``target`` is one of ``files`` (a destination not created yet is none of them)."""
    try:
        wanted = os.stat(target)
    except OSError:
        return False
    return any(os.path.samestat(wanted, stat) for stat in map(_stat, files) if stat)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except OSError:  # rotated away meanwhile
        return None


@dataclass(frozen=True)
class SpoolPushReport:
    """What ``aiorunner traces push --spool`` did, per backend."""

    statistics: PipelineStatistics
    #: Backend name -> True when its spool is empty now.
    emptied: dict[str, bool]
    #: The spool directory (``AIORUNNER_SPOOL_DIR``, default ``.aiorunner/spool``).
    spool_dir: str

    @property
    def ok(self) -> bool:
        """Every spooled backend's spool was sent and emptied."""
        return bool(self.emptied) and all(self.emptied.values())


async def push_spool(
    *,
    exporter: str | None = None,
    endpoint: str | None = None,
    export_timeout: float | None = None,
) -> SpoolPushReport:
    """
    Send the spools of the backends named by ``exporter`` (default: the configured
    ones, ``OTEL_TRACES_EXPORTER``...) now, oldest first, and remove what was accepted:
    what the next run would do in the background, by hand. The spool kept for a
    backend is the one of its name and destination (``--endpoint``, or its variables).

    Raises:
        ConfigError: a backend name is unknown or its configuration is invalid.
    """
    from .._export.session import Session

    config = TracingConfig(
        enabled=True,
        exporter_type=exporter,
        collector_endpoint=endpoint,
        export_timeout=export_timeout,
    ).resolve()
    session = await anyio.to_thread.run_sync(Session, config)
    pipeline = _pipeline_of(session)
    pipeline.background_drain = False  # drained here, in the foreground
    timeout = float(config.export_timeout or 30.0)
    try:
        # A spool of many batches takes one deadline per batch at most; the drain stops
        # at the first batch the backend does not take (it is down: try again later).
        emptied = await pipeline.drain_spools(max(timeout, 1.0) * 1000)
    finally:
        await session.aclose()
    return SpoolPushReport(
        statistics=session.statistics(),
        emptied=emptied,
        spool_dir=os.fspath(config.spool_dir or ".aiorunner/spool"),
    )
