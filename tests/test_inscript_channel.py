"""The in-script channel's wire format and accounting: a span survives the trip from the
child's encoder to the runner's decoder field by field, and what the child could not
send, or sent broken, is counted rather than lost silently."""

from __future__ import annotations

import json
import logging

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from aiorunner import ScriptRunner
from aiorunner._context.bootstrap import _aiorunner_inscript as child
from aiorunner._context.channel import decode_span


def _make_span():
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=SpanLimits(max_span_attributes=4, max_events=1))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("lib", "1.2", schema_url="https://opentelemetry.io/schemas/1.21.0")
    parent = SpanContext(
        0xABC,
        0xDEF,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("k", "v")]),
    )
    link = Link(
        SpanContext(0x123, 0x456, is_remote=False, trace_flags=TraceFlags(1)), {"why": "retry"}
    )
    with tracer.start_as_current_span(
        "handle",
        context=trace.set_span_in_context(trace.NonRecordingSpan(parent)),
        kind=SpanKind.SERVER,
        links=[link],
        attributes={"s": "x", "i": 3, "f": 1.5, "b": True, "l": [1, 2]},
    ) as span:
        span.add_event("first", {"n": 1})
        span.add_event("second")
        span.set_status(Status(StatusCode.ERROR, "went wrong"))
    provider.shutdown()
    [finished] = exporter.get_finished_spans()
    return finished


def test_span_round_trip():
    """Every field a backend exports survives encode (child) -> JSON -> decode (runner),
    dropped counts included; the runner's resource replaces the child's."""
    original = _make_span()
    resource = Resource({"service.name": "runner"})
    decoded = decode_span(json.loads(json.dumps(child.encode_span(original))), resource)
    assert decoded.name == "handle"
    assert decoded.context.trace_id == original.context.trace_id == 0xABC
    assert decoded.context.span_id == original.context.span_id
    assert decoded.context.trace_flags == original.context.trace_flags
    assert decoded.context.trace_state == original.context.trace_state
    # A remote parent that is not execute_script stays remote, as the SDK had it.
    assert decoded.parent.span_id == 0xDEF and decoded.parent.is_remote
    assert decoded.kind is SpanKind.SERVER
    assert (decoded.start_time, decoded.end_time) == (original.start_time, original.end_time)
    assert dict(decoded.attributes) == dict(original.attributes)
    assert decoded.dropped_attributes == original.dropped_attributes == 1
    assert [(e.name, e.timestamp, dict(e.attributes)) for e in decoded.events] == [
        (e.name, e.timestamp, dict(e.attributes)) for e in original.events
    ]
    assert decoded.dropped_events == original.dropped_events == 1
    [dlink] = decoded.links
    assert (dlink.context.trace_id, dlink.context.span_id) == (0x123, 0x456)
    assert dict(dlink.attributes) == {"why": "retry"}
    assert decoded.status.status_code is StatusCode.ERROR
    assert decoded.status.description == "went wrong"
    scope = decoded.instrumentation_scope
    assert (scope.name, scope.version, scope.schema_url) == (
        "lib",
        "1.2",
        "https://opentelemetry.io/schemas/1.21.0",
    )
    assert decoded.resource is resource


SEND_RAW = """\
import os, sys
from opentelemetry import trace

channel = sys.modules["_aiorunner_inscript"].channel()  # loaded by the bootstrap
trace_id = os.environ["TRACEPARENT"].split("-")[1]
channel._write(b"this is not json")
channel._write(('{"d": {"%s": 2}}' % trace_id).encode())
with trace.get_tracer("s").start_as_current_span("after-garbage"):
    pass
"""


async def test_child_drops_are_counted_and_garbage_is_skipped(make_script, spans_of, caplog):
    """Spans the child reports it could not send count as dropped in RunResult.export;
    an unreadable payload is skipped with a warning; spans after it still arrive."""
    caplog.set_level(logging.WARNING, logger="aiorunner.inscript")
    result = await ScriptRunner(make_script(SEND_RAW)).run()
    assert result.success, result.error + result.stderr
    assert "after-garbage" in {s["name"] for s in spans_of(result.trace_id)}
    assert result.export is not None
    assert result.export.dropped == 2 and not result.export.ok
    assert "could not be read" in caplog.text
