"""
Reading the embedded JSONL trace file(s) back: what ``aiorunner traces`` shows.

The file is the Collector's ``otlpjsonfile`` format: one OTLP/JSON
``ExportTraceServiceRequest`` per line, written by the ``jsonl`` backend. A run's spans
may be spread over several lines and lines of many runs interleave. When a run starts, the
writer appends its root span with ``endTimeUnixNano`` "0" and ``aiorunner.pending=true``
(so a run shows as running from its first moment); a later line with the same span id
supersedes it. Rotation keeps ``traces.jsonl`` (newest), ``traces.jsonl.1``,
``traces.jsonl.2`` ... (higher is older); the reader follows them all.

This module holds the parts every reader shares: decoding a line into :class:`SpanRecord`
objects, finding the files, streaming their lines forwards or backwards (blocks from the
end, for the newest-first listing in ``_traces_list``), ``--since`` and the formatting of
times. One trace read whole lives in ``_traces_tree``. Files can be large and can end with
half a line (a crash mid-write): everything streams, and unreadable lines are skipped and
counted, never fatal. Everything here is synchronous file I/O: call it from a worker
thread (``anyio.to_thread.run_sync``) when on an event loop.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._config import AIORUNNER_TRACES_FILE, DEFAULT_TRACES_FILE
from .._exceptions import ConfigError, TraceNotFoundError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

__all__ = [
    "MIN_WIDTH",
    "ReadStats",
    "SpanEvent",
    "SpanRecord",
    "format_duration",
    "format_time",
    "is_root_candidate",
    "iter_records",
    "iter_requests",
    "parse_since",
    "records_backward",
    "resolve_traces_file",
    "trace_files",
]

PENDING_ATTRIBUTE = "aiorunner.pending"
ROOT_SPAN_NAME = "ScriptRunner"
#: The narrowest terminal waterfall (columns). Here rather than in ``waterfall`` so that
#: the CLI can declare its ``--width`` option without importing rich.
MIN_WIDTH = 60
STATUS_ERROR = 2
_BLOCK = 1 << 16
_LINE_START = b'{"resourceSpans"'
HEX_ID = re.compile(r"^[0-9a-f]+$")


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
        # code.filepath is absolute and set once the script was found; aiorunner.script
        # (the path as given) is on the root from its first moment, so running runs too.
        value = self.attributes.get("code.filepath") or self.attributes.get("aiorunner.script")
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
    if HEX_ID.match(text.lower()) and len(text) in (16, 32):
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


def records_backward(files: Iterable[Path], stats: ReadStats) -> Iterator[SpanRecord]:
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


def is_root_candidate(record: SpanRecord) -> bool:
    """A run's own root: parentless, or a ScriptRunner span (a nested or propagated run,
    whose parent lives in another process)."""
    return not record.parent_span_id or record.name == ROOT_SPAN_NAME


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
