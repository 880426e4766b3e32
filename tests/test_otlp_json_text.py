"""
The jsonl line is written as text directly (``encode_line``): byte for byte what
``json.dumps`` of the dict encoder (``encode_request``) gives, for every field and value
kind the encoder knows, and for the spans of a real run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from aiorunner import ScriptRunner, Session, TracingConfig
from aiorunner._export.otlp_json import encode_line, encode_request
from aiorunner.testing import InMemoryBackend


def reference(spans: list[Any]) -> bytes:
    text = json.dumps(encode_request(spans), separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", errors="surrogatepass") + b"\n"


def made_spans() -> list[Any]:
    """Spans with every field and value kind: odd strings, big and negative numbers,
    non-finite floats, bytes, nested sequences, an empty key, events, links, trace state,
    a remote parent, dropped counts, error and OK status, two scopes."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource({"service.name": "enc \u00e9\u4e2d", "n": 3}, schema_url="https://r"),
        span_limits=SpanLimits(max_span_attributes=30, max_events=3, max_links=1),
        shutdown_on_exit=False,
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests.text", "9.9", schema_url="https://s")
    other = provider.get_tracer("tests.other")
    remote = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "x1"), ("b", "2")]),
    )
    attributes: dict[str, Any] = {
        "s": 'quote " backslash \\ newline \n tab \t nul \x00 \u2028 emoji \U0001f600',
        "empty": "",
        "": "no key",
        "i": -42,
        "big": 2**62,
        "f": -1.5e-300,
        "whole": 2.0,
        "nan": math.nan,
        "inf": math.inf,
        "ninf": -math.inf,
        "yes": True,
        "no": False,
        "strings": ["a", "\u00e9"],
        "ints": [1, -2],
        "floats": [0.5, math.nan],
        "bools": [True],
        "empty list": [],
    }
    with tracer.start_as_current_span(
        "root \u00e9",
        context=set_span_in_context(NonRecordingSpan(remote)),
        kind=SpanKind.SERVER,
        attributes=attributes,
        links=[
            Link(remote, {"link.kind": "follows", "n": 1}),
            Link(remote),  # over max_links: dropped and counted
        ],
    ) as root:
        for n in range(5):  # over max_events: counted as dropped
            root.add_event(f"event {n}", {"progress": n / 3, "stage": "load", "ok": n > 2})
        root.add_event("bare", timestamp=1)
        for n in range(40):  # over max_span_attributes: counted as dropped
            root.set_attribute(f"extra.{n}", n)
        with other.start_as_current_span("child", kind=SpanKind.CLIENT) as child:
            child.set_status(Status(StatusCode.ERROR, 'boom \u00e9 "x"'))
        with tracer.start_as_current_span("ok", kind=SpanKind.CONSUMER) as ok:
            ok.set_status(Status(StatusCode.OK))
        with tracer.start_as_current_span("", kind=SpanKind.PRODUCER):
            pass
    return list(exporter.get_finished_spans())


def odd_spans(resource: Resource) -> list[ReadableSpan]:
    """Hand-made spans the SDK would not make: bytes and mapping values, no scope,
    a pending copy (no end), a start of 0, a scope with attributes."""
    context = SpanContext(1, 2, is_remote=False, trace_flags=TraceFlags(1))
    scope = InstrumentationScope("scoped", None, None, {"scope.attr": "v"})
    return [
        ReadableSpan(
            name="odd",
            context=context,
            resource=resource,
            attributes={"raw": b"\x00\xffbytes", "map": {"k": 1, "nested": ["x"]}},
            start_time=0,
            end_time=None,
        ),
        ReadableSpan(
            name="scoped",
            context=context,
            resource=resource,
            instrumentation_scope=scope,
            start_time=5,
            end_time=6,
        ),
    ]


def test_text_line_equals_the_dict_encoding() -> None:
    """Every field and value kind: encode_line is exactly json.dumps of encode_request."""
    spans = made_spans()
    assert encode_line(spans) == reference(spans)
    for span in spans:  # one at a time too (each its own request)
        assert encode_line([span]) == reference([span])


def test_text_line_odd_values_and_several_resources() -> None:
    """Bytes and mapping values, spans without scope, a pending copy, two resources in
    one request, and the empty request."""
    first = odd_spans(Resource({"r": 1}))
    second = odd_spans(Resource({}))
    mixed = [*first, *made_spans(), *second]
    assert encode_line(mixed) == reference(mixed)
    assert encode_line([]) == reference([]) == b"{}\n"
    again = encode_line(mixed)  # resources and scopes come from the cache now
    assert again == reference(mixed)
    assert json.loads(again) == encode_request(mixed)


async def test_text_line_of_a_real_run(tmp_path: Path) -> None:
    """The seven spans of a run (monitor events, metrics, command line) encode alike."""
    script = tmp_path / "job.py"
    script.write_text("print('hello')\n")
    backend = InMemoryBackend()
    config = TracingConfig(traces_file=str(tmp_path / "unused.jsonl"))
    async with Session(config, backends=[backend]) as s:
        result = await ScriptRunner(script, ["a b", "--x=\u00e9"], session=s).run()
    assert result.success, result.error
    spans = list(backend.get_finished_spans())
    assert len(spans) == 7
    assert sum(len(span.events) for span in spans) >= 3  # the monitor's events
    assert encode_line(spans) == reference(spans)
