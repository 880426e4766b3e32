"""
Metric points as plain data, and their OTLP/JSON encoding (``ExportMetricsServiceRequest``).

The point type itself, :class:`~aiorunner.backend.MetricPointData`, lives in the plugin
interface (backends receive it); it is re-exported here.

Encoding follows the OTLP JSON rules of the span and log encoders: lowerCamelCase keys,
trace and span ids (of exemplars) as lowercase hex, enums as integers, 64-bit integers as
decimal strings. Points are grouped by resource (by identity), scope and metric (name,
unit, kind, temporality): one ``Metric`` holds the data points of every run in the batch.
One line of ``metrics.jsonl`` is one request (the OTLP file format holds one signal per
file).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..backend import (
    CUMULATIVE,
    DELTA,
    GAUGE,
    HISTOGRAM,
    METRIC_SCOPE,
    SUM,
    ExemplarData,
    MetricPointData,
)
from .jsonline import dumps_line
from .otlp_json import _attributes, _decode_attributes, _decode_id

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from opentelemetry.sdk.resources import Resource

__all__ = [
    "CUMULATIVE",
    "DELTA",
    "GAUGE",
    "HISTOGRAM",
    "METRIC_SCOPE",
    "SUM",
    "MetricPointData",
    "decode_metrics_request",
    "encode_metrics_line",
    "encode_metrics_request",
]

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

#: The JSON key of each kind's data in a ``Metric``.
_DATA_KEY = {SUM: "sum", GAUGE: "gauge", HISTOGRAM: "histogram"}


def _number(point: MetricPointData) -> dict[str, Any]:
    out: dict[str, Any] = {}
    attributes = _attributes(point.attributes)
    if attributes:
        out["attributes"] = attributes
    if point.start_time_unix_nano:
        out["startTimeUnixNano"] = str(point.start_time_unix_nano)
    out["timeUnixNano"] = str(point.time_unix_nano)
    value = point.value
    if type(value) is int:
        out["asInt"] = str(value)
    else:
        out["asDouble"] = float(value)
    return out


def _exemplar(exemplar: ExemplarData) -> dict[str, Any]:
    out: dict[str, Any] = {
        "timeUnixNano": str(exemplar.time_unix_nano),
        "asDouble": float(exemplar.value),
    }
    attributes = _attributes(exemplar.filtered_attributes)
    if attributes:
        out["filteredAttributes"] = attributes
    if exemplar.trace_id:
        out["traceId"] = f"{exemplar.trace_id:032x}"
    if exemplar.span_id:
        out["spanId"] = f"{exemplar.span_id:016x}"
    return out


def _histogram(point: MetricPointData) -> dict[str, Any]:
    out: dict[str, Any] = {}
    attributes = _attributes(point.attributes)
    if attributes:
        out["attributes"] = attributes
    if point.start_time_unix_nano:
        out["startTimeUnixNano"] = str(point.start_time_unix_nano)
    out["timeUnixNano"] = str(point.time_unix_nano)
    out["count"] = str(point.count)
    out["sum"] = float(point.total)
    out["bucketCounts"] = [str(n) for n in point.bucket_counts]
    out["explicitBounds"] = [float(b) for b in point.explicit_bounds]
    if point.exemplars:
        out["exemplars"] = [_exemplar(e) for e in point.exemplars]
    if point.minimum is not None:
        out["min"] = float(point.minimum)
    if point.maximum is not None:
        out["max"] = float(point.maximum)
    return out


def _metric(first: MetricPointData, points: list[MetricPointData]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": first.name}
    if first.description:
        out["description"] = first.description
    if first.unit:
        out["unit"] = first.unit
    if first.kind == HISTOGRAM:
        data: dict[str, Any] = {"dataPoints": [_histogram(p) for p in points]}
        data["aggregationTemporality"] = first.temporality or CUMULATIVE
    else:
        data = {"dataPoints": [_number(p) for p in points]}
        if first.kind == SUM:
            data["aggregationTemporality"] = first.temporality or CUMULATIVE
            if first.monotonic:
                data["isMonotonic"] = True
    out[_DATA_KEY[first.kind]] = data
    return out


def group(
    points: Iterable[MetricPointData],
) -> list[tuple[Resource | None, dict[str, dict[tuple[Any, ...], list[MetricPointData]]]]]:
    """Points by resource (identity), scope and metric identity, in first-seen order
    (shared with the OTLP protobuf encoder of ``aiorunner-otlp``)."""
    groups: dict[int, tuple[Resource | None, dict[str, dict[tuple[Any, ...], list[Any]]]]] = {}
    for point in points:
        entry = groups.get(id(point.resource))
        if entry is None:
            entry = groups[id(point.resource)] = (point.resource, {})
        metrics = entry[1].setdefault(point.scope, {})
        key = (point.name, point.unit, point.kind, point.temporality, point.monotonic)
        metrics.setdefault(key, []).append(point)
    return list(groups.values())


def encode_metrics_request(points: Iterable[MetricPointData]) -> dict[str, Any]:
    """Encode points as one OTLP/JSON ``ExportMetricsServiceRequest`` dict."""
    resource_metrics = []
    for resource, scopes in group(points):
        attributes = _attributes(resource.attributes) if resource is not None else []
        entry: dict[str, Any] = {
            "resource": {"attributes": attributes} if attributes else {},
            "scopeMetrics": [
                {
                    "scope": {"name": name},
                    "metrics": [_metric(members[0], members) for members in metrics.values()],
                }
                for name, metrics in scopes.items()
            ],
        }
        if resource is not None and resource.schema_url:
            entry["schemaUrl"] = resource.schema_url
        resource_metrics.append(entry)
    return {"resourceMetrics": resource_metrics} if resource_metrics else {}


def encode_metrics_line(points: Iterable[MetricPointData]) -> bytes:
    """One line of ``metrics.jsonl``: the request, compact, UTF-8, newline-terminated."""
    return dumps_line(encode_metrics_request(points))


def _decode_number(item: Mapping[str, Any]) -> float | int:
    if "asInt" in item:
        return int(item["asInt"])
    return float(item.get("asDouble") or 0.0)


def decode_metrics_request(
    request: Mapping[str, Any], *, resource_cache: dict[str, Resource] | None = None
) -> list[MetricPointData]:
    """The points of one OTLP/JSON ``ExportMetricsServiceRequest`` (a line of
    ``metrics.jsonl`` or of a spool).

    Raises:
        ValueError, TypeError, KeyError: the request is malformed (the caller counts it).
    """
    from opentelemetry.sdk.resources import Resource

    out: list[MetricPointData] = []
    for resource_metrics in request.get("resourceMetrics") or ():
        attributes = _decode_attributes(
            (resource_metrics.get("resource") or {}).get("attributes") or ()
        )
        key = _dumps(sorted(attributes.items(), key=lambda kv: kv[0]))
        resource = resource_cache.get(key) if resource_cache is not None else None
        if resource is None:
            resource = Resource(attributes, resource_metrics.get("schemaUrl") or "")
            if resource_cache is not None:
                resource_cache[key] = resource
        for scope_metrics in resource_metrics.get("scopeMetrics") or ():
            scope = str((scope_metrics.get("scope") or {}).get("name") or METRIC_SCOPE)
            for metric in scope_metrics.get("metrics") or ():
                out.extend(_decode_metric(metric, resource, scope))
    return out


def _decode_metric(
    metric: Mapping[str, Any], resource: Resource, scope: str
) -> list[MetricPointData]:
    common: dict[str, Any] = {
        "name": str(metric["name"]),
        "unit": str(metric.get("unit") or ""),
        "description": str(metric.get("description") or ""),
        "resource": resource,
        "scope": scope,
    }
    out = []
    for kind, key in _DATA_KEY.items():
        data = metric.get(key)
        if data is None:
            continue
        temporality = int(data.get("aggregationTemporality") or 0)
        for item in data.get("dataPoints") or ():
            point = MetricPointData(
                kind=kind,
                time_unix_nano=int(item.get("timeUnixNano") or 0),
                start_time_unix_nano=int(item.get("startTimeUnixNano") or 0),
                attributes=_decode_attributes(item.get("attributes") or ()),
                monotonic=bool(data.get("isMonotonic")),
                temporality=temporality,
                **common,
            )
            if kind == HISTOGRAM:
                point.count = int(item.get("count") or 0)
                point.total = float(item.get("sum") or 0.0)
                point.bucket_counts = tuple(int(n) for n in item.get("bucketCounts") or ())
                point.explicit_bounds = tuple(float(b) for b in item.get("explicitBounds") or ())
                point.minimum = float(item["min"]) if "min" in item else None
                point.maximum = float(item["max"]) if "max" in item else None
                point.exemplars = tuple(
                    ExemplarData(
                        value=_decode_number(e),
                        time_unix_nano=int(e.get("timeUnixNano") or 0),
                        trace_id=_decode_id(e.get("traceId"), 16),
                        span_id=_decode_id(e.get("spanId"), 8),
                        filtered_attributes=_decode_attributes(e.get("filteredAttributes") or ()),
                    )
                    for e in item.get("exemplars") or ()
                )
            else:
                point.value = _decode_number(item)
            out.append(point)
    return out
