"""Fixtures of the aiorunner-zipkin tests: real SDK spans and a clean environment."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode


@pytest.fixture(autouse=True)
def _clean_env(clean_otel_env: None) -> None:
    """Every test starts without OTEL_* variables (see the root conftest)."""


def _trace(service: str, root_name: str) -> tuple[ReadableSpan, ...]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("zipkin-tests")
    with tracer.start_as_current_span(root_name, kind=SpanKind.CLIENT) as root:
        root.set_attribute("process.pid", 99)
        root.set_attribute("flag", True)
        root.set_attribute("process.command_args", ["python", "x" * 300])
        with tracer.start_as_current_span("child") as child:
            child.add_event("checkpoint", {"progress_percent": 50})
            child.set_status(Status(StatusCode.ERROR, "boom"))
    provider.shutdown()
    return exporter.get_finished_spans()


@pytest.fixture
def spans() -> tuple[ReadableSpan, ...]:
    """Root (CLIENT, attributes) and child (event, error status) of service zipkin-test."""
    return _trace("zipkin-test", "root")


@pytest.fixture
def other_service_spans() -> tuple[ReadableSpan, ...]:
    """A second trace whose resource says service.name=script."""
    return _trace("script", "script-root")
