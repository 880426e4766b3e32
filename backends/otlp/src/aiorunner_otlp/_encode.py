"""
The OTLP ``ExportTraceServiceRequest`` for a batch of spans: what
``opentelemetry-exporter-otlp-proto-common`` encodes, plus each link's ``trace_state``,
which that encoder leaves out (1.45: ``_encode_links`` writes ids, attributes, dropped
count and flags only). A link's tracestate is part of the span context it points to;
OTLP has a field for it, and the jsonl file writes it too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["encode_request", "items", "rejected"]


def encode_request(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    """The request for ``spans``, links' tracestates included (costs nothing more when
    no link has one)."""
    request = encode_spans(spans)
    states: dict[tuple[int, int], list[str]] = {}
    for span in spans:
        if span.links and any(link.context.trace_state for link in span.links):
            context = span.get_span_context()
            if context is None:
                continue
            states[context.trace_id, context.span_id] = [
                ",".join(f"{k}={v}" for k, v in link.context.trace_state.items())
                for link in span.links
            ]
    if not states:
        return request
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for encoded in scope_spans.spans:
                key = (
                    int.from_bytes(encoded.trace_id, "big"),
                    int.from_bytes(encoded.span_id, "big"),
                )
                found = states.get(key)
                if found is None:
                    continue
                for link, state in zip(encoded.links, found, strict=True):
                    if state:
                        link.trace_state = state
    return request


def items(*, logs: bool, metrics: bool) -> str:
    """What a transport sends, for messages: spans, log records or metric points."""
    return "metric points" if metrics else "log records" if logs else "spans"


def rejected(partial: Any, *, logs: bool, metrics: bool) -> int:
    """The items an Export*ServiceResponse's partial success says were rejected."""
    if metrics:
        return int(partial.rejected_data_points)
    if logs:
        return int(partial.rejected_log_records)
    return int(partial.rejected_spans)
