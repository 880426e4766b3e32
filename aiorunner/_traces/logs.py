"""
Reading a trace's log records back from ``logs.jsonl`` (``aiorunner traces show -v`` and
``--logs``, the HTML page).

The file sits beside the traces file (or is ``AIORUNNER_LOGS_FILE``), one OTLP/JSON
``ExportLogsServiceRequest`` a line, rotated like the traces file. It is untrusted input
like the traces file: lines are prefiltered by the trace id's bytes, unreadable lines and
malformed records are skipped and counted (``ReadStats``), never fatal, and at most
:data:`MAX_LOG_LINES` records of one trace are kept (the rest counted). Bodies are shown
through ``printable`` by the callers (no terminal escapes from a script's output).
Synchronous file I/O: call it from a worker thread when on an event loop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._config import AIORUNNER_LOGS_FILE
from .._exceptions import TraceNotFoundError
from .reader import ReadStats, _lines_forward, _parse_request, trace_files

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

__all__ = ["MAX_LOG_LINES", "LogLine", "load_logs", "logs_file_for"]

#: Records of one trace kept for display; the rest are counted.
MAX_LOG_LINES = 100_000
_UINT64_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class LogLine:
    """One log record of a trace, as read back."""

    time_ns: int
    span_id: str
    #: ``stdout``/``stderr`` (``log.iostream``), or "" for records of other origins.
    stream: str
    severity_number: int
    severity_text: str
    body: str
    attributes: dict[str, Any]

    @property
    def is_error(self) -> bool:
        """ERROR or worse (SeverityNumber 17 and up)."""
        return self.severity_number >= 17


def logs_file_for(
    traces_path: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None
) -> Path:
    """The logs file of a traces file: ``AIORUNNER_LOGS_FILE``, else ``logs.jsonl`` beside
    it (what the ``jsonl`` backend writes)."""
    env = os.environ if environ is None else environ
    override = env.get(AIORUNNER_LOGS_FILE, "").strip()
    return Path(override) if override else Path(traces_path).parent / "logs.jsonl"


def _value(value: Any) -> Any:
    if not isinstance(value, dict):
        return None
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])
    return None


def _records(request: dict[str, Any], trace_id: str, stats: ReadStats) -> Iterator[LogLine]:
    resource_logs = request.get("resourceLogs")
    if not isinstance(resource_logs, list):
        stats.bad("resourceLogs is not a list")
        return
    for entry in resource_logs:
        scopes = entry.get("scopeLogs") if isinstance(entry, dict) else None
        if not isinstance(scopes, list):
            stats.bad("scopeLogs is not a list")
            continue
        for scope in scopes:
            records = scope.get("logRecords") if isinstance(scope, dict) else None
            if not isinstance(records, list):
                stats.bad("logRecords is not a list")
                continue
            for record in records:
                try:
                    line = _record(record, trace_id)
                except (TypeError, ValueError, AttributeError) as exc:
                    stats.bad(f"log record: {exc}")
                    continue
                if line is not None:
                    yield line


def _record(record: Any, trace_id: str) -> LogLine | None:
    if not isinstance(record, dict):
        raise TypeError("a log record is not an object")
    if record.get("traceId") != trace_id:
        return None
    time_ns = int(record.get("timeUnixNano") or record.get("observedTimeUnixNano") or 0)
    if not 0 <= time_ns <= _UINT64_MAX:
        raise ValueError(f"timeUnixNano {time_ns} is outside 64 bits")
    severity = record.get("severityNumber", 0)
    if not isinstance(severity, int) or isinstance(severity, bool) or not 0 <= severity <= 24:
        raise ValueError(f"severityNumber {severity!r} is not an integer 0-24")
    body = _value(record.get("body"))
    attributes: dict[str, Any] = {}
    for item in record.get("attributes") or ():
        if isinstance(item, dict) and isinstance(item.get("key"), str):
            attributes[item["key"]] = _value(item.get("value"))
    span_id = record.get("spanId") or ""
    return LogLine(
        time_ns=time_ns,
        span_id=str(span_id),
        stream=str(attributes.get("log.iostream") or ""),
        severity_number=severity,
        severity_text=str(record.get("severityText") or ""),
        body="" if body is None else str(body),
        attributes=attributes,
    )


def load_logs(
    traces_path: str | os.PathLike[str], trace_id: str, *, stats: ReadStats | None = None
) -> tuple[tuple[LogLine, ...], int]:
    """The records of ``trace_id`` (32 hex digits) in time order, and how many more were
    left out past :data:`MAX_LOG_LINES`. No logs file: none."""
    stats = ReadStats() if stats is None else stats
    try:
        files = trace_files(logs_file_for(traces_path))
    except TraceNotFoundError:
        return (), 0
    needle = trace_id.encode()
    found: list[LogLine] = []
    omitted = 0
    for path in reversed(files):
        try:
            for raw in _lines_forward(path):
                if needle not in raw:
                    continue
                request = _parse_request(raw, stats)
                if request is None:
                    continue
                for line in _records(request, trace_id, stats):
                    if len(found) < MAX_LOG_LINES:
                        found.append(line)
                    else:
                        omitted += 1
        except OSError as exc:
            stats.bad(f"cannot read {path}: {exc.strerror or exc}")
    found.sort(key=lambda line: line.time_ns)
    return tuple(found), omitted
