"""
Log records as plain data, and their OTLP/JSON encoding (``ExportLogsServiceRequest``).

The record type itself, :class:`~aiorunner.backend.LogRecordData`, lives in the plugin
interface (backends receive it); it is re-exported here.

Encoding follows the OTLP JSON rules the span encoder (:mod:`.otlp_json`) uses: lowerCamelCase
keys, trace and span ids as lowercase hex, enums as integers, 64-bit integers as decimal
strings, default values omitted. One line of ``logs.jsonl`` is one request (the OTLP file
format holds one signal per file).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..backend import LOG_SCOPE, LogRecordData
from .jsonline import dumps_line
from .otlp_json import _attributes, _decode_attributes, _decode_id, _value

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from opentelemetry.sdk.resources import Resource

__all__ = [
    "LOG_SCOPE",
    "LogRecordData",
    "decode_logs_request",
    "encode_logs_line",
    "encode_logs_request",
]

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _record(record: LogRecordData) -> dict[str, Any]:
    out: dict[str, Any] = {
        "timeUnixNano": str(record.time_unix_nano),
        "observedTimeUnixNano": str(record.observed_time_unix_nano),
    }
    if record.severity_number:
        out["severityNumber"] = record.severity_number
    if record.severity_text:
        out["severityText"] = record.severity_text
    out["body"] = _value(record.body)
    attributes = _attributes(record.attributes)
    if attributes:
        out["attributes"] = attributes
    if record.trace_flags:
        out["flags"] = record.trace_flags
    if record.trace_id:
        out["traceId"] = f"{record.trace_id:032x}"
    if record.span_id:
        out["spanId"] = f"{record.span_id:016x}"
    return out


def encode_logs_request(records: Iterable[LogRecordData]) -> dict[str, Any]:
    """Encode records as one OTLP/JSON ``ExportLogsServiceRequest`` dict, grouped by
    resource (by identity, as the span encoder does) and scope name."""
    groups: dict[int, tuple[Resource | None, dict[str, list[dict[str, Any]]]]] = {}
    for record in records:
        group = groups.get(id(record.resource))
        if group is None:
            group = groups[id(record.resource)] = (record.resource, {})
        group[1].setdefault(record.scope, []).append(_record(record))
    resource_logs = []
    for resource, scopes in groups.values():
        attributes = _attributes(resource.attributes) if resource is not None else []
        entry: dict[str, Any] = {
            "resource": {"attributes": attributes} if attributes else {},
            "scopeLogs": [
                {"scope": {"name": name}, "logRecords": encoded} for name, encoded in scopes.items()
            ],
        }
        if resource is not None and resource.schema_url:
            entry["schemaUrl"] = resource.schema_url
        resource_logs.append(entry)
    return {"resourceLogs": resource_logs} if resource_logs else {}


def encode_logs_line(records: Iterable[LogRecordData]) -> bytes:
    """One line of ``logs.jsonl``: the request, compact, UTF-8, newline-terminated."""
    return dumps_line(encode_logs_request(records))


def decode_logs_request(
    request: Mapping[str, Any], *, resource_cache: dict[str, Resource] | None = None
) -> list[LogRecordData]:
    """The records of one OTLP/JSON ``ExportLogsServiceRequest`` (a line of ``logs.jsonl``
    or of a spool), for the viewer and ``traces push``.

    Raises:
        ValueError, TypeError, KeyError: the request is malformed (the caller counts it).
    """
    from opentelemetry.sdk.resources import Resource

    out: list[LogRecordData] = []
    for resource_logs in request.get("resourceLogs") or ():
        attributes = _decode_attributes(
            (resource_logs.get("resource") or {}).get("attributes") or ()
        )
        key = _dumps(sorted(attributes.items(), key=lambda kv: kv[0]))
        resource = resource_cache.get(key) if resource_cache is not None else None
        if resource is None:
            resource = Resource(attributes, resource_logs.get("schemaUrl") or "")
            if resource_cache is not None:
                resource_cache[key] = resource
        for scope_logs in resource_logs.get("scopeLogs") or ():
            scope = (scope_logs.get("scope") or {}).get("name") or LOG_SCOPE
            for item in scope_logs.get("logRecords") or ():
                body = item.get("body") or {}
                out.append(
                    LogRecordData(
                        time_unix_nano=int(item.get("timeUnixNano") or 0),
                        observed_time_unix_nano=int(item.get("observedTimeUnixNano") or 0),
                        severity_number=int(item.get("severityNumber") or 0),
                        severity_text=str(item.get("severityText") or ""),
                        body=str(body.get("stringValue", "")) if isinstance(body, dict) else "",
                        attributes=_decode_attributes(item.get("attributes") or ()),
                        trace_id=_decode_id(item.get("traceId"), 16),
                        span_id=_decode_id(item.get("spanId"), 8),
                        trace_flags=int(item.get("flags") or 0),
                        resource=resource,
                        scope=str(scope),
                    )
                )
    return out
