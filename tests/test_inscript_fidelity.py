"""In-script spans keep what the script's SDK gave them (issue 15 item 7): a link's
``is_remote`` and tracestate, the dropped-attribute counts of events and links, the
dropped event, link and attribute counts of a span its limits thinned, and a string
UTF-8 cannot hold (a lone surrogate) replaced, not the span lost. Checked on what
arrives in the jsonl file and at a real OTLP/gRPC receiver, the spans made by a real
script run through ScriptRunner."""

from __future__ import annotations

import pytest

from aiorunner import ScriptRunner, TracingConfig

receivers = pytest.importorskip("receivers")
pytest.importorskip("aiorunner_otlp")

#: OTLP span/link flags: the is_remote bit is known, and set.
HAS_IS_REMOTE, IS_REMOTE = 0x100, 0x200

REMOTE_TRACE, REMOTE_SPAN = "1" * 32, "2" * 16
LOCAL_TRACE, LOCAL_SPAN = "3" * 32, "4" * 16

SCRIPT = f"""\
from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, TraceFlags, TraceState

remote = SpanContext(
    0x{REMOTE_TRACE}, 0x{REMOTE_SPAN}, is_remote=True, trace_flags=TraceFlags(1),
    trace_state=TraceState([("vendor", "v1"), ("other", "x")]),
)
local = SpanContext(0x{LOCAL_TRACE}, 0x{LOCAL_SPAN}, is_remote=False, trace_flags=TraceFlags(1))
tracer = trace.get_tracer("fidelity")
# max_links=2: the oldest of three links is dropped (the SDK keeps the newest).
links = [Link(local), Link(local, {{"k": 1}}), Link(remote, {{"a": 1, "b": 2, "c": 3}})]
with tracer.start_as_current_span("thinned", links=links) as span:
    for i in range(10):
        span.add_event(f"e{{i}}", {{"x": 1, "y": 2, "z": 3}})
    span.set_attribute("one", 1)
    span.set_attribute("two", 2)
    span.set_attribute("bad", "caf\\udce9 ok")  # a lone surrogate (os.fsdecode of b"\\xe9")
with tracer.start_as_current_span("plain"):
    pass
"""

LIMITS = {
    "max_links": 2,
    "max_event_attributes": 2,
    "max_link_attributes": 2,
}


def _config(endpoint: str) -> TracingConfig:
    return TracingConfig(
        exporter_type="otlp_grpc,jsonl",
        collector_endpoint=endpoint,
        max_attributes=2,
        max_events=4,
        span_limits=LIMITS,
    )


async def test_script_span_fields_arrive_in_jsonl_and_at_otlp_receiver(make_script, spans_of):
    """A script's span thinned by its limits, with a remote link carrying a tracestate
    and a lone surrogate in an attribute, arrives whole in both places: the link's
    is_remote flag and tracestate, each event's and link's dropped-attribute count, the
    span's dropped attribute/event/link counts, and U+FFFD where the surrogate was."""
    with receivers.OtlpGrpcReceiver() as receiver:
        result = await ScriptRunner(make_script(SCRIPT), config=_config(receiver.endpoint)).run()
        assert result.success, (result.error or "") + result.stderr
        assert result.export is not None and result.export.ok, result.export
        received = {s.name: s for s in await receiver.wait_for_spans(7)}
    assert result.export.inscript is not None
    assert result.export.inscript.received == 2
    assert result.export.inscript.dropped_spans == 0

    # The jsonl file.
    spans = {s["name"]: s for s in spans_of(result.trace_id)}
    assert "plain" in spans
    thinned = spans["thinned"]
    assert thinned["attrs"] == {"two": 2, "bad": "caf\ufffd ok"}
    assert thinned["droppedAttributesCount"] == 1
    assert [e["name"] for e in thinned["events"]] == ["e6", "e7", "e8", "e9"]
    assert thinned["droppedEventsCount"] == 6
    assert all(e["droppedAttributesCount"] == 1 for e in thinned["events"])
    assert thinned["droppedLinksCount"] == 1
    local, remote = thinned["links"]
    assert (remote["traceId"], remote["spanId"]) == (REMOTE_TRACE, REMOTE_SPAN)
    assert remote["flags"] == HAS_IS_REMOTE | IS_REMOTE
    assert remote["traceState"] == "vendor=v1,other=x"
    assert remote["droppedAttributesCount"] == 1
    assert (local["traceId"], local["spanId"]) == (LOCAL_TRACE, LOCAL_SPAN)
    assert local["flags"] == HAS_IS_REMOTE
    assert "traceState" not in local and "droppedAttributesCount" not in local

    # The OTLP/gRPC receiver.
    proto = received["thinned"].proto
    assert received["thinned"].attributes == {"two": 2, "bad": "caf\ufffd ok"}
    assert proto.dropped_attributes_count == 1
    assert [e.name for e in proto.events] == ["e6", "e7", "e8", "e9"]
    assert proto.dropped_events_count == 6
    assert [e.dropped_attributes_count for e in proto.events] == [1, 1, 1, 1]
    assert proto.dropped_links_count == 1
    glocal, gremote = proto.links
    assert (gremote.trace_id.hex(), gremote.span_id.hex()) == (REMOTE_TRACE, REMOTE_SPAN)
    assert gremote.flags & (HAS_IS_REMOTE | IS_REMOTE) == HAS_IS_REMOTE | IS_REMOTE
    assert gremote.trace_state == "vendor=v1,other=x"
    assert gremote.dropped_attributes_count == 1
    assert glocal.flags & (HAS_IS_REMOTE | IS_REMOTE) == HAS_IS_REMOTE
    assert glocal.trace_state == "" and glocal.dropped_attributes_count == 0
    # execute_script's children are spans of this same run: their parent is local.
    assert received["thinned"].parent_span_id == received["execute_script"].span_id
    assert proto.flags & (HAS_IS_REMOTE | IS_REMOTE) == HAS_IS_REMOTE


async def test_lone_surrogate_in_name_and_event_keeps_the_span(make_script, spans_of):
    """Lone surrogates anywhere in a span (its name, an event name, a list value) are
    replaced by U+FFFD; the span is sent, not counted as dropped."""
    script = make_script(
        """
        from opentelemetry import trace
        with trace.get_tracer("s").start_as_current_span("n\\udc80me") as span:
            span.add_event("ev\\ud800", {"list": ["ok", "\\udfff"]})
        """
    )
    result = await ScriptRunner(script).run()
    assert result.success, (result.error or "") + result.stderr
    assert result.export is not None and result.export.ok and result.export.dropped == 0
    [span] = [s for s in spans_of(result.trace_id) if s["name"] == "n\ufffdme"]
    [event] = span["events"]
    assert event["name"] == "ev\ufffd"
    assert event["attributes"][0]["value"]["arrayValue"]["values"][1] == {"stringValue": "\ufffd"}
