"""Fixtures of the aiorunner-otlp tests: real SDK spans and a clean environment."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode


@pytest.fixture(autouse=True)
def _clean_env(clean_otel_env: None) -> None:
    """Every test starts without OTEL_* and vendor variables (see the root conftest)."""


def make_spans(service: str = "otlp-test") -> tuple[ReadableSpan, ...]:
    """A small real trace: a root with attributes and a child with an event and an error."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("aiorunner-otlp-tests", "1.2.3")
    with tracer.start_as_current_span("run", kind=SpanKind.SERVER) as root:
        root.set_attribute("process.pid", 4242)
        root.set_attribute("process.command_args", ["python", "etl.py"])
        root.set_attribute("ratio", 0.5)
        with tracer.start_as_current_span("execute_script") as child:
            child.add_event("cpu_monitoring", {"cpu.percent": 12.5})
            child.set_status(Status(StatusCode.ERROR, "exit code 3"))
    provider.shutdown()
    return exporter.get_finished_spans()


@pytest.fixture
def spans() -> tuple[ReadableSpan, ...]:
    """The trace of :func:`make_spans` (two spans, service ``otlp-test``)."""
    return make_spans()


@pytest.fixture
def span_maker():
    """:func:`make_spans` itself, for tests that need another service name."""
    return make_spans
