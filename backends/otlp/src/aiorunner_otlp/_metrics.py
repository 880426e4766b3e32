"""
Metric points (``aiorunner.backend.MetricPointData``) as an OTLP
``ExportMetricsServiceRequest``.

Built straight from the plain points with the attribute and resource helpers of
``opentelemetry-exporter-otlp-proto-common`` (as the log records are), grouped by
resource (by identity), scope name and metric (name, unit, kind, temporality): one
``Metric`` holds the data points of every run of the batch.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_attributes,
    _encode_resource,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    Exemplar,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from aiorunner.backend import MetricPointData

__all__ = ["encode_metrics", "encode_metrics_json"]


def _number(point: MetricPointData) -> NumberDataPoint:
    out = NumberDataPoint(
        attributes=_encode_attributes(point.attributes) if point.attributes else None,
        start_time_unix_nano=point.start_time_unix_nano,
        time_unix_nano=point.time_unix_nano,
    )
    if type(point.value) is int:
        out.as_int = point.value
    else:
        out.as_double = float(point.value)
    return out


def _histogram(point: MetricPointData) -> HistogramDataPoint:
    out = HistogramDataPoint(
        attributes=_encode_attributes(point.attributes) if point.attributes else None,
        start_time_unix_nano=point.start_time_unix_nano,
        time_unix_nano=point.time_unix_nano,
        count=point.count,
        sum=point.total,
        bucket_counts=list(point.bucket_counts),
        explicit_bounds=list(point.explicit_bounds),
        exemplars=[
            Exemplar(
                filtered_attributes=_encode_attributes(e.filtered_attributes)
                if e.filtered_attributes
                else None,
                time_unix_nano=e.time_unix_nano,
                as_double=float(e.value),
                trace_id=e.trace_id.to_bytes(16, "big") if e.trace_id else b"",
                span_id=e.span_id.to_bytes(8, "big") if e.span_id else b"",
            )
            for e in point.exemplars
        ],
    )
    if point.minimum is not None:
        out.min = point.minimum
    if point.maximum is not None:
        out.max = point.maximum
    return out


def _metric(points: list[MetricPointData]) -> Metric:
    first = points[0]
    metric = Metric(name=first.name, description=first.description, unit=first.unit)
    temporality: Any = first.temporality or 2
    if first.kind == "histogram":
        metric.histogram.CopyFrom(
            Histogram(
                data_points=[_histogram(p) for p in points], aggregation_temporality=temporality
            )
        )
    elif first.kind == "gauge":
        metric.gauge.CopyFrom(Gauge(data_points=[_number(p) for p in points]))
    else:
        metric.sum.CopyFrom(
            Sum(
                data_points=[_number(p) for p in points],
                aggregation_temporality=temporality,
                is_monotonic=first.monotonic,
            )
        )
    return metric


def encode_metrics(points: Sequence[MetricPointData]) -> ExportMetricsServiceRequest:
    """One ``ExportMetricsServiceRequest`` holding ``points``."""
    groups: dict[int, tuple[Any, dict[str, dict[tuple[Any, ...], list[MetricPointData]]]]] = {}
    for point in points:
        group = groups.get(id(point.resource))
        if group is None:
            group = groups[id(point.resource)] = (point.resource, {})
        key = (point.name, point.unit, point.kind, point.temporality, point.monotonic)
        group[1].setdefault(point.scope, {}).setdefault(key, []).append(point)
    resource_metrics = []
    for resource, scopes in groups.values():
        resource_metrics.append(
            ResourceMetrics(
                resource=_encode_resource(resource) if resource is not None else None,
                scope_metrics=[
                    ScopeMetrics(
                        scope=InstrumentationScope(name=name),
                        metrics=[_metric(members) for members in metrics.values()],
                    )
                    for name, metrics in scopes.items()
                ],
                schema_url=getattr(resource, "schema_url", "") or "",
            )
        )
    return ExportMetricsServiceRequest(resource_metrics=resource_metrics)


def encode_metrics_json(points: Sequence[MetricPointData]) -> bytes:
    """The same request in OTLP/JSON: hex ids (exemplars), integer enums (``http/json``)."""
    import base64

    from google.protobuf import json_format

    data = json_format.MessageToDict(encode_metrics(points), use_integers_for_enums=True)
    for resource_metrics in data.get("resourceMetrics", ()):
        for scope_metrics in resource_metrics.get("scopeMetrics", ()):
            for metric in scope_metrics.get("metrics", ()):
                for point in (metric.get("histogram") or {}).get("dataPoints", ()):
                    for exemplar in point.get("exemplars", ()):
                        for key in ("traceId", "spanId"):
                            value = exemplar.get(key)
                            if isinstance(value, str):
                                exemplar[key] = base64.b64decode(value).hex()
    return json.dumps(data, separators=(",", ":")).encode()
