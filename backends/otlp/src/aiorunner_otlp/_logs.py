"""
Log records (``aiorunner.backend.LogRecordData``) as an OTLP ``ExportLogsServiceRequest``.

Built straight from the plain records with the attribute and resource helpers of
``opentelemetry-exporter-otlp-proto-common`` (the span encoder's own), not through the
SDK's ``LogRecord``: a run sends up to 100,000 of them and the SDK's records cost several
times more to make. Records are grouped by resource (by identity, as the span encoder
does) and scope name.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_attributes,
    _encode_resource,
)
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiorunner.backend import LogRecordData

__all__ = ["encode_logs", "encode_logs_json"]


def encode_logs(records: Sequence[LogRecordData]) -> ExportLogsServiceRequest:
    """One ``ExportLogsServiceRequest`` holding ``records``."""
    groups: dict[int, tuple[Any, dict[str, list[LogRecord]]]] = {}
    for record in records:
        group = groups.get(id(record.resource))
        if group is None:
            group = groups[id(record.resource)] = (record.resource, {})
        group[1].setdefault(record.scope, []).append(
            LogRecord(
                time_unix_nano=record.time_unix_nano,
                observed_time_unix_nano=record.observed_time_unix_nano,
                severity_number=record.severity_number,  # type: ignore[arg-type]
                severity_text=record.severity_text,
                body=AnyValue(string_value=record.body),
                attributes=_encode_attributes(record.attributes) if record.attributes else None,
                flags=record.trace_flags,
                trace_id=record.trace_id.to_bytes(16, "big") if record.trace_id else b"",
                span_id=record.span_id.to_bytes(8, "big") if record.span_id else b"",
            )
        )
    resource_logs = []
    for resource, scopes in groups.values():
        resource_logs.append(
            ResourceLogs(
                resource=_encode_resource(resource) if resource is not None else None,
                scope_logs=[
                    ScopeLogs(scope=InstrumentationScope(name=name), log_records=encoded)
                    for name, encoded in scopes.items()
                ],
                schema_url=getattr(resource, "schema_url", "") or "",
            )
        )
    return ExportLogsServiceRequest(resource_logs=resource_logs)


def encode_logs_json(records: Sequence[LogRecordData]) -> bytes:
    """The same request in OTLP/JSON: hex ids, integer enums (``http/json``)."""
    import base64

    from google.protobuf import json_format

    data = json_format.MessageToDict(encode_logs(records), use_integers_for_enums=True)
    for resource_logs in data.get("resourceLogs", ()):
        for scope_logs in resource_logs.get("scopeLogs", ()):
            for record in scope_logs.get("logRecords", ()):
                for key in ("traceId", "spanId"):
                    value = record.get(key)
                    if isinstance(value, str):
                        record[key] = base64.b64decode(value).hex()
    return json.dumps(data, separators=(",", ":")).encode()
