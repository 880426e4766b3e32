"""The runs' phase spans (``_phase_span``) against the SDK's own spans: the same calls on
both, through one real TracerProvider, must export the same span (limits included), and
the lean path is only taken under a recording, sampled root."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind
from opentelemetry.trace.status import Status, StatusCode

from aiorunner._context.errors import exception_attributes
from aiorunner._run.phase_span import PhaseSpan, PhaseSpans

LIMITS = {
    "defaults": {},
    "tight": {
        "max_span_attributes": 3,
        "max_span_attribute_length": 8,
        "max_attribute_length": 5,
        "max_events": 2,
        "max_event_attributes": 2,
    },
}


def _exported(span: ReadableSpan) -> dict[str, Any]:
    return {
        "name": span.name,
        "parent": span.parent,
        "trace_id": span.context.trace_id,
        "flags": span.context.trace_flags,
        "kind": span.kind,
        "attributes": dict(span.attributes),
        "dropped_attributes": span.dropped_attributes,
        "events": [(e.name, dict(e.attributes or {}), e.timestamp) for e in span.events],
        "dropped_events": span.dropped_events,
        "status": (span.status.status_code, span.status.description),
        "times": (span.start_time, span.end_time),
        "resource": span.resource,
        "scope": span.instrumentation_scope,
    }


def _drive(span: trace.Span, error: BaseException) -> None:
    span.set_attribute("process.command_args", ["python", "job.py", "--day", "1"])
    span.set_attribute("aiorunner.long", "a value longer than eight characters")
    span.set_attributes({"process.pid": 4242, "aiorunner.ok": True, "aiorunner.n": 1.5})
    span.add_event("cpu_monitoring", {"cpu.percent": 12.5, "cpu.user": 0.25}, timestamp=5)
    span.add_event("memory_monitoring", {"memory.rss": 1 << 20, "note": "abcdefghij"}, 6)
    span.add_event("io_monitoring", {"io.read": 1, "io.write": 2, "io.extra": 3}, timestamp=7)
    if isinstance(span, PhaseSpan):
        span.record_exception(error, timestamp=8)
    else:  # the SDK's record_exception less the deprecated exception.escaped (see below)
        span.add_event("exception", exception_attributes(error), timestamp=8)
    span.update_name("execute_script")
    span.set_status(Status(StatusCode.ERROR, "script exited with code 3"))
    span.set_status(Status(StatusCode.UNSET))  # ignored, as by the SDK
    span.end(end_time=9)
    span.set_attribute("after.end", 1)  # ignored once ended
    span.end(end_time=10)  # a second end changes nothing


@pytest.mark.parametrize("limits", LIMITS.values(), ids=LIMITS.keys())
def test_a_phase_span_exports_what_the_sdk_span_exports(limits: dict[str, int]) -> None:
    span_limits = SpanLimits(**limits)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=span_limits)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("aiorunner", "1")
    root = tracer.start_span("ScriptRunner")
    root_ctx = trace.set_span_in_context(root)
    phases = PhaseSpans.for_run(tracer, root, root_ctx, span_limits)
    assert phases is not None
    try:
        raise ValueError("bad row 17")
    except ValueError as exc:
        error = exc
    attributes = {"aiorunner.slot_wait_seconds": 0.5, "aiorunner.a": "x" * 20}
    lean = phases.start("phase", attributes=attributes, start_time=1, kind=SpanKind.INTERNAL)
    assert isinstance(lean, PhaseSpan) and lean.is_recording()
    sdk = tracer.start_span("phase", context=root_ctx, attributes=attributes, start_time=1)
    for name in ("name", "parent", "kind", "resource", "instrumentation_scope", "start_time"):
        # What a span processor may read in on_start reads as on the SDK's span.
        assert getattr(lean, name) == getattr(sdk, name), name
    if not limits:  # with limits, ours are applied at end(): the exports are compared below
        assert dict(lean.attributes) == dict(sdk.attributes)
    assert lean.context.trace_id == sdk.context.trace_id
    _drive(lean, error)
    _drive(sdk, error)
    assert not lean.is_recording()
    root.end()
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["execute_script", "execute_script", "ScriptRunner"]
    ours, theirs = (_exported(s) for s in spans[:2])
    assert ours.pop("trace_id") == theirs.pop("trace_id") == root.get_span_context().trace_id
    assert spans[0].context.span_id != spans[1].context.span_id
    assert ours == theirs
    if limits:  # the limits did bite: the comparison is not between two unbounded spans
        assert theirs["dropped_attributes"] > 0 and theirs["dropped_events"] > 0
        assert all(len(v) <= 8 for v in theirs["attributes"].values() if isinstance(v, str))
    provider.shutdown()


def test_phase_spans_need_a_recording_sampled_sdk_root() -> None:
    limits = SpanLimits()
    sampled_out = TracerProvider(sampler=ALWAYS_OFF).get_tracer("aiorunner")
    root = sampled_out.start_span("ScriptRunner")
    assert PhaseSpans.for_run(sampled_out, root, trace.set_span_in_context(root), limits) is None
    tracer = TracerProvider().get_tracer("aiorunner")
    root = tracer.start_span("ScriptRunner")
    ctx = trace.set_span_in_context(root)
    assert PhaseSpans.for_run(trace.NoOpTracer(), root, ctx, limits) is None
    assert PhaseSpans.for_run(tracer, root, ctx, None) is None
    root.end()
    assert PhaseSpans.for_run(tracer, root, ctx, limits) is None  # ended: not recording


def test_exception_event_is_the_sdks_without_escaped() -> None:
    """A phase span's exception event is the SDK's record_exception, less the
    exception.escaped that the semantic conventions deprecated (issue 15)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("aiorunner", "1")
    root = tracer.start_span("ScriptRunner")
    phases = PhaseSpans.for_run(tracer, root, trace.set_span_in_context(root), SpanLimits())
    assert phases is not None
    try:
        raise KeyError("row")
    except KeyError as exc:
        error = exc
    for span in (phases.start("lean"), tracer.start_span("sdk")):
        span.record_exception(error, timestamp=8)
        span.end()
    lean, sdk = (dict(s.events[0].attributes or {}) for s in exporter.get_finished_spans())
    assert sdk.pop("exception.escaped") == "False"
    assert lean == sdk
    assert lean["exception.type"] == "KeyError"
    provider.shutdown()
