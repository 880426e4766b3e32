"""
Reading the embedded JSONL trace file(s) back: what ``aiorunner traces`` shows.

The file is the Collector's ``otlpjsonfile`` format: one OTLP/JSON
``ExportTraceServiceRequest`` per line, written by the ``jsonl`` backend. A run's spans
may be spread over several lines and lines of many runs interleave. When a run starts, the
writer appends its root span with ``endTimeUnixNano`` "0" and ``aiorunner.pending=true``
(so a run shows as running from its first moment); a later line with the same span id
supersedes it. Rotation keeps ``traces.jsonl`` (newest), ``traces.jsonl.1``,
``traces.jsonl.2`` ... (higher is older); the reader follows them all.

Files can be large and can end with half a line (a crash mid-write), so everything here
streams: the listing reads newest-first in blocks from the end of the newest file and keeps
one small summary per trace, stopping as soon as the answer cannot change (see
:func:`list_traces`); ``show`` scans for one id. Unreadable lines are skipped and counted,
never fatal. Everything here is synchronous file I/O: call it from a worker thread
(``anyio.to_thread.run_sync``) when on an event loop.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._config import AIORUNNER_TRACES_FILE, DEFAULT_TRACES_FILE
from ._exceptions import ConfigError, TraceNotFoundError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

__all__ = [
    "ReadStats",
    "SpanEvent",
    "SpanRecord",
    "Trace",
    "TraceListing",
    "TraceSummary",
    "iter_records",
    "iter_requests",
    "list_traces",
    "load_trace",
    "parse_since",
    "resolve_traces_file",
    "trace_files",
]

PENDING_ATTRIBUTE = "aiorunner.pending"
ROOT_SPAN_NAME = "ScriptRunner"
STATUS_ERROR = 2
_BLOCK = 1 << 16
#: Records read between two checks of whether the listing can stop (amortised O(1)).
_CHECK_EVERY = 64
_LINE_START = b'{"resourceSpans"'
_HEX = re.compile(r"^[0-9a-f]+$")


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class SpanEvent:
    """An event recorded on a span (``span.add_event``, monitoring samples)."""

    name: str
    time_ns: int
    attributes: Mapping[str, Any]


@dataclass(frozen=True)
class SpanRecord:
    """One span as read from the file, with the resource and scope of its line."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    start_ns: int
    #: 0 while the span is pending (its run is still going).
    end_ns: int
    attributes: Mapping[str, Any]
    events: tuple[SpanEvent, ...]
    status_code: int
    status_message: str
    resource: Mapping[str, Any]
    scope: str
    pending: bool

    @property
    def status(self) -> str:
        """``running``, ``error`` or ``ok`` (an unset status reads as ok)."""
        if self.pending:
            return "running"
        return "error" if self.status_code == STATUS_ERROR else "ok"

    @property
    def service(self) -> str:
        return str(self.resource.get("service.name", ""))

    @property
    def script(self) -> str:
        """What the list shows: the run's script path, else the span name."""
        value = self.attributes.get("code.filepath")
        return str(value) if value else self.name


def _decode_value(value: Any) -> Any:
    """An OTLP/JSON ``AnyValue`` as a plain Python value."""
    if not isinstance(value, dict) or not value:
        return None
    kind, raw = next(iter(value.items()))
    if kind == "stringValue":
        return str(raw)
    if kind == "boolValue":
        return bool(raw)
    if kind == "intValue":
        return int(raw)
    if kind == "doubleValue":
        return float(raw)
    if kind == "arrayValue":
        return [_decode_value(v) for v in (raw or {}).get("values", [])]
    if kind == "kvlistValue":
        return _decode_attributes((raw or {}).get("values", []))
    if kind == "bytesValue":
        return base64.b64decode(raw)
    return None


def _decode_attributes(items: Iterable[Any] | None) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for item in items or ():
        if isinstance(item, dict) and "key" in item:
            result[str(item["key"])] = _decode_value(item.get("value"))
    return result


def _id(value: Any) -> str:
    """Span and trace ids are lowercase hex in this format; tolerate base64 writers."""
    if not value:
        return ""
    text = str(value)
    if _HEX.match(text.lower()) and len(text) in (16, 32):
        return text.lower()
    try:
        return base64.b64decode(text, validate=True).hex()
    except ValueError:
        return text.lower()


def _records_of(request: Mapping[str, Any]) -> Iterator[SpanRecord]:
    for resource_spans in request.get("resourceSpans") or ():
        resource = _decode_attributes((resource_spans.get("resource") or {}).get("attributes"))
        for scope_spans in resource_spans.get("scopeSpans") or ():
            scope = str((scope_spans.get("scope") or {}).get("name", ""))
            for span in scope_spans.get("spans") or ():
                attributes = _decode_attributes(span.get("attributes"))
                end_ns = int(span.get("endTimeUnixNano") or 0)
                status = span.get("status") or {}
                yield SpanRecord(
                    trace_id=_id(span.get("traceId")),
                    span_id=_id(span.get("spanId")),
                    parent_span_id=_id(span.get("parentSpanId")),
                    name=str(span.get("name", "")),
                    kind=int(span.get("kind") or 0),
                    start_ns=int(span.get("startTimeUnixNano") or 0),
                    end_ns=end_ns,
                    attributes=attributes,
                    events=tuple(
                        SpanEvent(
                            str(e.get("name", "")),
                            int(e.get("timeUnixNano") or 0),
                            _decode_attributes(e.get("attributes")),
                        )
                        for e in span.get("events") or ()
                    ),
                    status_code=int(status.get("code") or 0),
                    status_message=str(status.get("message") or ""),
                    resource=resource,
                    scope=scope,
                    pending=end_ns == 0 and attributes.get(PENDING_ATTRIBUTE) is True,
                )


# ------------------------------------------------------------------------------- files


def resolve_traces_file(
    file: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None
) -> Path:
    """The trace file to read: ``file``, else ``AIORUNNER_TRACES_FILE``, else the default
    ``.aiorunner/traces.jsonl`` under the current directory (the ``jsonl`` backend's)."""
    if file is not None:
        return Path(file)
    env = os.environ if environ is None else environ
    return Path(env.get(AIORUNNER_TRACES_FILE, "").strip() or DEFAULT_TRACES_FILE)


def trace_files(path: str | os.PathLike[str]) -> list[Path]:
    """``path`` and its rotated predecessors, newest first (``f``, ``f.1``, ``f.2`` ...).

    A path that is itself a rotated file (``traces.jsonl.2``) is read alone.

    Raises:
        TraceNotFoundError: neither the file nor any rotated one exists.
    """
    base = Path(path)
    rotated: list[tuple[int, Path]] = []
    if base.parent.is_dir():
        prefix = base.name + "."
        for entry in base.parent.iterdir():
            suffix = entry.name[len(prefix) :]
            if entry.name.startswith(prefix) and suffix.isdigit() and entry.is_file():
                rotated.append((int(suffix), entry))
    files = ([base] if base.is_file() else []) + [p for _, p in sorted(rotated)]
    if not files:
        raise TraceNotFoundError(
            f"no trace file at {os.fspath(base)!r}: nothing was recorded there yet. Runs write "
            f"to it when OTEL_TRACES_EXPORTER includes 'jsonl' (the default); point "
            f"{AIORUNNER_TRACES_FILE} or --file at the file your runs write to"
        )
    return files


@dataclass
class ReadStats:
    """What reading saw: lines parsed and lines skipped (unreadable, e.g. cut short)."""

    lines: int = 0
    skipped: int = 0


def _parse_request(line: bytes, stats: ReadStats) -> dict[str, Any] | None:
    """One line as a request dict, or None (blank, or unreadable: counted)."""
    line = line.strip()
    if not line:
        return None
    try:
        request = json.loads(line)
    except ValueError:
        # A line cut short by a crash, then followed by the next write on the same line:
        # the last complete request on it is still good.
        start = line.rfind(_LINE_START)
        try:
            request = json.loads(line[start:]) if start > 0 else None
        except ValueError:
            request = None
    if not isinstance(request, dict):
        stats.skipped += 1
        return None
    return request


def _parse_line(line: bytes, stats: ReadStats) -> list[SpanRecord]:
    request = _parse_request(line, stats)
    if request is None:
        return []
    try:
        records = list(_records_of(request))
    except (TypeError, ValueError, AttributeError):
        stats.skipped += 1
        return []
    stats.lines += 1
    return records


def iter_requests(
    files: Iterable[Path], *, stats: ReadStats | None = None
) -> Iterator[dict[str, Any]]:
    """Every line of ``files`` (given newest first) as an OTLP/JSON request dict, in write
    order (oldest first); unreadable lines are skipped and counted in ``stats``."""
    stats = ReadStats() if stats is None else stats
    for path in reversed(list(files)):
        for line in _lines_forward(path):
            request = _parse_request(line, stats)
            if request is not None:
                stats.lines += 1
                yield request


def _lines_forward(path: Path) -> Iterator[bytes]:
    with path.open("rb") as stream:
        yield from stream


def _lines_backward(path: Path, block: int = _BLOCK) -> Iterator[bytes]:
    """The lines of ``path`` from the last to the first, reading blocks from the end."""
    with path.open("rb") as stream:
        position = stream.seek(0, os.SEEK_END)
        tail = b""
        while position > 0:
            size = min(block, position)
            position -= size
            stream.seek(position)
            chunk = stream.read(size) + tail
            lines = chunk.split(b"\n")
            tail = lines[0]
            yield from reversed(lines[1:])
        if tail:
            yield tail


def iter_records(
    files: Iterable[Path], *, stats: ReadStats | None = None, contains: bytes | None = None
) -> Iterator[SpanRecord]:
    """Every span of ``files`` (given newest first) in write order, oldest first.

    ``contains`` skips, before parsing, lines that do not contain those bytes.
    """
    stats = ReadStats() if stats is None else stats
    for path in reversed(list(files)):
        for line in _lines_forward(path):
            if contains is None or contains in line:
                yield from _parse_line(line, stats)


def _records_backward(files: Iterable[Path], stats: ReadStats) -> Iterator[SpanRecord]:
    for path in files:
        for line in _lines_backward(path):
            yield from reversed(_parse_line(line, stats))


# ------------------------------------------------------------------------------- since


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, *, now: float | None = None) -> int:
    """``--since`` as a time in Unix nanoseconds: ``30s``, ``30m``, ``1h``, ``2d``, ``1w``
    ago, or an ISO 8601 date/time (local time unless it names its offset).

    Raises:
        ConfigError: the text is neither.
    """
    now = time.time() if now is None else now
    match = _DURATION.match(text)
    if match:
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
        return int((now - seconds) * 1e9)
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--since {text!r} is neither a duration nor a date; use a number with a unit "
            "(30s, 30m, 1h, 2d, 1w) or an ISO 8601 time such as 2024-10-23T14:00"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return int(moment.timestamp() * 1e9)


# --------------------------------------------------------------------------- summaries


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
    #: A ``code.filepath`` seen on any span: names a running run whose start marker
    #: carries no script yet (extract_metadata has it).
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
        if self.filepath is None and record.attributes.get("code.filepath"):
            self.filepath = str(record.attributes["code.filepath"])
        failed = record.status_code == STATUS_ERROR
        if failed:
            self.errors += 1
            if self.error is None:
                self.error = record.status_message or record.name
        if _is_root_candidate(record):
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
    if root.name == ROOT_SPAN_NAME and "code.filepath" not in root.attributes and filepath:
        return filepath
    return root.script


def _is_root_candidate(record: SpanRecord) -> bool:
    """A run's own root: parentless, or a ScriptRunner span (a nested or propagated run,
    whose parent lives in another process)."""
    return not record.parent_span_id or record.name == ROOT_SPAN_NAME


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
    for record in _records_backward(files, stats):
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


# ------------------------------------------------------------------------------- trace


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
        return any(s.pending for s in self.spans)

    @property
    def status(self) -> str:
        """``running``, ``error`` when a root span (the run itself) failed, else ``ok``."""
        if self.running:
            return "running"
        roots = {s.span_id: s for s in self.roots()}
        roots.update((s.span_id, s) for s in self.spans if _is_root_candidate(s))
        return "error" if any(s.status_code == STATUS_ERROR for s in roots.values()) else "ok"

    @property
    def error_spans(self) -> int:
        return sum(1 for s in self.spans if s.status_code == STATUS_ERROR)

    def span_end(self, span: SpanRecord) -> int:
        """Where a span's bar ends: its end, or now while it is running."""
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
    if not prefix or not _HEX.match(prefix) or len(prefix) > 32:
        raise ConfigError(
            f"{trace_id!r} is not a trace id: give the 32 hex digits of a trace id, or a "
            "unique prefix of one, as printed by `aiorunner traces`"
        )
    return prefix


def load_trace(path: str | os.PathLike[str], trace_id: str, *, now_ns: int | None = None) -> Trace:
    """
    The trace whose id is ``trace_id`` or starts with it, from ``path`` and its rotated
    files.

    Raises:
        ConfigError: ``trace_id`` is not hexadecimal.
        TraceNotFoundError: no trace matches, or the prefix matches several (listed).
    """
    prefix = _prefix(trace_id)
    files = trace_files(path)
    stats = ReadStats()
    found: dict[str, dict[str, SpanRecord]] = {}
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
    return Trace(
        trace_id_full,
        tuple(sorted(spans.values(), key=_order)),
        time.time_ns() if now_ns is None else now_ns,
    )


def format_time(ns: int) -> str:
    """A span or run start as local wall-clock time, to the millisecond."""
    moment = datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def format_duration(seconds: float) -> str:
    """``850µs``, ``12.3ms``, ``1.25s``, ``2m03s``, ``1h02m``: short and unit-bearing."""
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f}µs"
    if seconds < 1:
        ms = seconds * 1000
        return f"{ms:.1f}ms" if ms < 100 else f"{ms:.0f}ms"
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"
    delta = timedelta(seconds=round(seconds))
    minutes, secs = divmod(int(delta.total_seconds()), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
