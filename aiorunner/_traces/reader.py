"""
Reading the embedded JSONL trace file(s) back: what ``aiorunner traces`` shows.

The file is the Collector's ``otlpjsonfile`` format: one OTLP/JSON
``ExportTraceServiceRequest`` per line, written by the ``jsonl`` backend. A run's spans
may be spread over several lines and lines of many runs interleave; each span is in the
file once, when it has ended. Runs still going are not in the file: the writer keeps them
in the live-runs directory beside it (``traces.jsonl.live/``, see ``_export.live``), read
by :func:`live_records`; an entry whose runner process is gone reads as ``lost``. Files
written before issue 15 also hold start markers (a root with ``endTimeUnixNano`` "0" and
``aiorunner.pending=true``, superseded by a later line with the same span id): they still
read as running. Rotation keeps ``traces.jsonl`` (newest), ``traces.jsonl.1``,
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
import dataclasses
import json
import math
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
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
    "lines_backward",
    "live_records",
    "parse_since",
    "records_backward",
    "resolve_traces_file",
    "span_entries",
    "span_record",
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
# OTLP times are fixed64 and int attributes int64: what lies outside cannot be a span.
_UINT64_MAX = (1 << 64) - 1
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
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
    #: 0 while the span is pending (its run is still going, or was lost).
    end_ns: int
    attributes: Mapping[str, Any]
    events: tuple[SpanEvent, ...]
    status_code: int
    status_message: str
    resource: Mapping[str, Any]
    scope: str
    pending: bool
    #: A pending root from the live-runs view whose runner process is gone: it will
    #: never end (the runner was killed, or the machine went down).
    lost: bool = False

    @property
    def status(self) -> str:
        """``running``, ``lost``, ``error`` or ``ok`` (an unset status reads as ok)."""
        if self.pending:
            return "lost" if self.lost else "running"
        return "error" if self.status_code == STATUS_ERROR else "ok"

    @property
    def service(self) -> str:
        return str(self.resource.get("service.name", ""))

    @property
    def script_path(self) -> str | None:
        """The absolute script path of a run's span: ``code.file.path`` (semantic
        conventions), or ``code.filepath`` in files written before issue 15."""
        value = self.attributes.get("code.file.path") or self.attributes.get("code.filepath")
        return str(value) if value else None

    @property
    def script(self) -> str:
        """What the list shows: the run's script path, else the span name."""
        # code.file.path is absolute and set once the script was found; aiorunner.script
        # (the path as given) is on the root from its first moment, so running runs too.
        value = self.script_path or self.attributes.get("aiorunner.script")
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
        number = int(raw)
        if not _INT64_MIN <= number <= _INT64_MAX:
            raise ValueError(f"intValue {raw!r} is out of the int64 range")
        return number
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


def _time(span: Mapping[str, Any], key: str) -> int:
    """A ``*UnixNano`` field: OTLP's fixed64, so an integer in [0, 2**64)."""
    raw = span.get(key) or 0
    value = int(raw)
    if not 0 <= value <= _UINT64_MAX:
        raise ValueError(f"{key} {raw!r} is not a Unix time in nanoseconds (0 to 2**64-1)")
    return value


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return _JSON_TYPES.get(type(value), "a number")


def _entries(container: Any, key: str, what: str) -> list[Any]:
    """``container[key]``, a JSON array (missing or null: empty); ``what`` names the
    container in the error."""
    if not isinstance(container, dict):
        raise TypeError(f"{what} is {_json_type(container)}, not an object")
    items = container.get(key) or []
    if not isinstance(items, list):
        raise TypeError(f"{key} is {_json_type(items)}, not an array")
    return items


def span_record(span: Any, resource: Mapping[str, Any], scope: str) -> SpanRecord:
    """
    One OTLP/JSON span as a :class:`SpanRecord`.

    Raises:
        TypeError, ValueError: the span is malformed (not an object, a time outside
            OTLP's unsigned 64 bits, an int attribute outside int64, a number that is
            not one). Readers skip and count such a span (:class:`ReadStats`), and
            ``traces push`` never sends it: one bad span must not sink a batch of good
            ones at the collector.
    """
    if not isinstance(span, dict):
        raise TypeError(f"a span is {_json_type(span)}, not an object")
    attributes = _decode_attributes(span.get("attributes"))
    end_ns = _time(span, "endTimeUnixNano")
    status = span.get("status") or {}
    return SpanRecord(
        trace_id=_id(span.get("traceId")),
        span_id=_id(span.get("spanId")),
        parent_span_id=_id(span.get("parentSpanId")),
        name=str(span.get("name", "")),
        kind=int(span.get("kind") or 0),
        start_ns=_time(span, "startTimeUnixNano"),
        end_ns=end_ns,
        attributes=attributes,
        events=tuple(
            SpanEvent(
                str(e.get("name", "")),
                _time(e, "timeUnixNano"),
                _decode_attributes(e.get("attributes")),
            )
            for e in _entries(span, "events", "a span")
        ),
        status_code=int(status.get("code") or 0),
        status_message=str(status.get("message") or ""),
        resource=resource,
        scope=scope,
        pending=end_ns == 0 and attributes.get(PENDING_ATTRIBUTE) is True,
    )


def span_entries(request: Mapping[str, Any], stats: ReadStats) -> Iterator[tuple[Any, Any, Any]]:
    """``(resource_spans, scope_spans, span)`` of every span of ``request``; malformed
    entries (``{"resourceSpans": [null]}``, a non-array) are skipped and counted in
    ``stats.bad_spans``."""
    try:
        resources = _entries(request, "resourceSpans", "a request")
    except TypeError as exc:
        stats.bad(exc)
        return
    for resource_spans in resources:
        try:
            scopes = _entries(resource_spans, "scopeSpans", "a resourceSpans entry")
        except TypeError as exc:
            stats.bad(exc)
            continue
        for scope_spans in scopes:
            try:
                spans = _entries(scope_spans, "spans", "a scopeSpans entry")
            except TypeError as exc:
                stats.bad(exc)
                continue
            for span in spans:
                yield resource_spans, scope_spans, span


def _records_of(request: Mapping[str, Any], stats: ReadStats) -> Iterator[SpanRecord]:
    resource: Mapping[str, Any] = {}
    resource_of: Any = None
    for resource_spans, scope_spans, span in span_entries(request, stats):
        try:
            if resource_spans is not resource_of:
                resource = _decode_attributes(
                    (resource_spans.get("resource") or {}).get("attributes")
                )
                resource_of = resource_spans
            scope = str((scope_spans.get("scope") or {}).get("name", ""))
            record = span_record(span, resource, scope)
        except (TypeError, ValueError, AttributeError) as exc:
            resource_of = None
            name = span.get("name") if isinstance(span, dict) else None
            stats.bad(f"span {str(name)!r}: {exc}" if name else exc)
            continue
        yield record


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
    """What reading saw: lines parsed, lines skipped (unreadable, e.g. cut short) and
    spans skipped (malformed: a time outside OTLP's 64 bits, ``null`` in place of an
    object ...), with the first such span's problem, for the note the CLI prints."""

    lines: int = 0
    skipped: int = 0
    bad_spans: int = 0
    first_problem: str = ""

    def bad(self, problem: Exception | str) -> None:
        """Count one malformed span (or span container) and remember the first
        problem."""
        self.bad_spans += 1
        if not self.first_problem:
            text = str(problem)
            self.first_problem = text if len(text) <= 160 else text[:159] + "…"


def _parse_request(line: bytes, stats: ReadStats) -> dict[str, Any] | None:
    """One line as a request dict, or None (blank, or unreadable: counted)."""
    # No strip(): it would copy a huge line; json.loads skips the whitespace itself.
    tail = line[-64:].rstrip() or line.rstrip()
    if not tail:
        return None
    if not tail.endswith(b"}"):
        # Not a JSON object, whatever it holds: skipped without decoding it (a 50 MB
        # garbage line would cost as much again as text).
        stats.skipped += 1
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
    stats.lines += 1
    # A bad span is skipped and counted on its own: the good ones of its line stay.
    return list(_records_of(request, stats))


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
    """
    The lines of ``path`` from the last to the first, reading blocks from the end.

    Linear in the file's size whatever its lines: a line longer than a block is not
    re-joined block after block (quadratic: a 50 MB line cost 20 s and 200 MB), its
    start is searched for and the line then read in one piece, so a line costs its
    length once in memory.
    """
    with path.open("rb") as stream:
        position = stream.seek(0, os.SEEK_END)
        end = position  # where the line being looked for ends
        tail = b""  # its part read so far, while that is within one block
        long = False  # it is longer: read it whole once its start is found
        while position > 0:
            size = min(block, position)
            position -= size
            stream.seek(position)
            chunk = stream.read(size)
            cut = chunk.rfind(b"\n")
            if cut < 0:
                if not long and len(tail) + len(chunk) <= block:
                    tail = chunk + tail
                else:
                    long, tail = True, b""
                continue
            if long:
                stream.seek(position + cut + 1)
                yield stream.read(end - position - cut - 1)
                long = False
            else:
                yield chunk[cut + 1 :] + tail
            lines = chunk[:cut].split(b"\n")
            yield from reversed(lines[1:])
            tail = lines[0]
            end = position + len(tail)
        if long:
            stream.seek(0)
            tail = stream.read(end)
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
    for records in lines_backward(files, stats):
        yield from reversed(records)


def lines_backward(files: Iterable[Path], stats: ReadStats) -> Iterator[list[SpanRecord]]:
    """The spans of each line of ``files`` (given newest first), newest line first."""
    for path in files:
        for line in _lines_backward(path):
            yield _parse_line(line, stats)


def live_records(path: str | os.PathLike[str], stats: ReadStats | None = None) -> list[SpanRecord]:
    """
    The root spans of the runs in ``path``'s live-runs directory: pending, and ``lost``
    when the process that wrote the entry is gone (pid and creation time checked, so a
    reused pid does not keep a dead run alive). Read them *before* the file: a run that
    ends meanwhile is then found finished there, never missing from both.
    """
    from .._export.live import read_entries

    stats = ReadStats() if stats is None else stats
    entries, unreadable = read_entries(path)
    stats.skipped += unreadable
    return [
        dataclasses.replace(record, pending=True, lost=entry.lost)
        for entry in entries
        for record in _records_of(entry.request, stats)
    ]


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
    if not math.isfinite(seconds):
        return "?"
    # Integer arithmetic: a duration of any size prints (timedelta overflows).
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
