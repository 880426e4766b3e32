"""
Session: the TracerProvider it builds from TracingConfig (resource, limits, samplers),
tracing turned off, default sessions, per-trace bookkeeping, and no blocking on the loop.
"""

from __future__ import annotations

import asyncio

import anyio
import pytest
from blockbuster import BlockingError
from opentelemetry import trace

from aiorunner._config import TracingConfig
from aiorunner._exceptions import ConfigError
from aiorunner._export import registry as _registry
from aiorunner._export.ledger import TraceLedger
from aiorunner._export.session import Session, aget_default_session, get_default_session
from aiorunner.testing import InMemoryBackend


def config(**overrides: object) -> TracingConfig:
    values: dict[str, object] = {"schedule_delay": 60.0, "export_timeout": 10.0}
    values.update(overrides)
    return TracingConfig(**values)  # type: ignore[arg-type]


def exported(session: Session, backend: InMemoryBackend, *names: str):
    tracer = session.tracer()
    for name in names:
        with tracer.start_as_current_span(name):
            pass
    assert asyncio.run(session.flush())
    return backend.get_finished_spans()


def test_resource_carries_service_name_and_attributes() -> None:
    """Exported spans carry service.name and the configured resource attributes."""
    backend = InMemoryBackend()
    session = Session(
        config(service_name="etl", resource_attributes={"deployment.environment": "prod"}),
        backends=[backend],
    )
    (span,) = exported(session, backend, "work")
    assert span.resource.attributes["service.name"] == "etl"
    assert span.resource.attributes["deployment.environment"] == "prod"
    assert span.resource.attributes["telemetry.sdk.name"] == "opentelemetry"
    session.close()


def test_otel_service_name_beats_resource_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_SERVICE_NAME wins over service.name in OTEL_RESOURCE_ATTRIBUTES, which wins
    over the default name (the OpenTelemetry specification's precedence)."""
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes,team=data")
    backend = InMemoryBackend()
    session = Session(config(), backends=[backend])
    (span,) = exported(session, backend, "a")
    assert span.resource.attributes["service.name"] == "from-attributes"
    assert span.resource.attributes["team"] == "data"
    session.close()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-service-name")
    backend = InMemoryBackend()
    session = Session(config(), backends=[backend])
    (span,) = exported(session, backend, "b")
    assert span.resource.attributes["service.name"] == "from-service-name"
    session.close()


def test_span_limits_come_from_the_config() -> None:
    """max_attributes and max_events bound what a span keeps (and count what it drops)."""
    backend = InMemoryBackend()
    session = Session(config(max_attributes=2, max_events=1), backends=[backend])
    with session.tracer().start_as_current_span("busy") as span:
        span.set_attributes({f"k{i}": i for i in range(5)})
        span.add_event("one")
        span.add_event("two")
    assert asyncio.run(session.flush())
    (busy,) = backend.get_finished_spans()
    assert len(busy.attributes) == 2 and busy.dropped_attributes == 3
    assert len(busy.events) == 1 and busy.dropped_events == 1
    session.close()


@pytest.mark.parametrize(
    ("sampler", "rate", "kept"),
    [
        ("always_on", 1.0, 1),
        ("always_off", 1.0, 0),
        ("traceidratio", 0.0, 0),
        ("traceidratio", 1.0, 1),
        ("parentbased_always_on", 1.0, 1),
        ("parentbased_always_off", 1.0, 0),
    ],
)
def test_sampler_from_the_config(sampler: str, rate: float, kept: int) -> None:
    """The head sampler named in the config decides what is recorded and exported."""
    backend = InMemoryBackend()
    session = Session(config(sampler=sampler, sample_rate=rate), backends=[backend])
    assert len(exported(session, backend, "root")) == kept
    session.close()


@pytest.mark.parametrize(
    ("env", "value"), [("OTEL_SDK_DISABLED", "true"), ("OTEL_TRACES_EXPORTER", "none")]
)
def test_tracing_turned_off(monkeypatch: pytest.MonkeyPatch, env: str, value: str) -> None:
    """OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none: a no-op tracer, no thread, and
    flush_trace says tracing is disabled."""
    monkeypatch.setenv(env, value)
    session = Session()
    assert not session.enabled
    with session.tracer().start_as_current_span("nothing") as span:
        assert not span.get_span_context().is_valid
    report = asyncio.run(session.flush_trace(1))
    assert report.disabled and report.ok
    assert asyncio.run(session.flush())
    assert session.statistics().received == 0
    session.close()


def test_explicit_enabled_beats_otel_sdk_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """TracingConfig(enabled=True) given in code wins over OTEL_SDK_DISABLED, which the
    SDK would otherwise obey on its own."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    backend = InMemoryBackend()
    session = Session(config(enabled=True), backends=[backend])
    assert [s.name for s in exported(session, backend, "kept")] == ["kept"]
    session.close()


def test_the_provider_is_not_installed_globally() -> None:
    """A session never replaces the application's global TracerProvider."""
    before = trace.get_tracer_provider()
    session = Session(config(), backends=[InMemoryBackend()])
    assert trace.get_tracer_provider() is before
    assert trace.get_tracer_provider() is not session.tracer_provider
    session.close()


def test_default_session_is_one_per_distinct_config() -> None:
    """get_default_session returns the same session for equal configs, another for a
    different one, and a fresh one once the previous was closed."""
    first = get_default_session(TracingConfig(service_name="a"))
    assert get_default_session(TracingConfig(service_name="a")) is first
    other = get_default_session(TracingConfig(service_name="b"))
    assert other is not first
    first.close()
    again = get_default_session(TracingConfig(service_name="a"))
    assert again is not first and not again.closed


async def test_flush_trace_accepts_hex_ids_and_rejects_garbage() -> None:
    """flush_trace takes RunResult.trace_id's 32 hex digits as well as an int."""
    backend = InMemoryBackend()
    session = await anyio.to_thread.run_sync(lambda: Session(config(), backends=[backend]))
    with session.tracer().start_as_current_span("work") as span:
        pass
    report = await session.flush_trace(format(span.get_span_context().trace_id, "032x"))
    assert report.backends[0].exported == 1
    with pytest.raises(ConfigError, match="not a trace id"):
        await session.flush_trace("not-hex")
    with pytest.raises(ConfigError, match="timeout=-1"):
        await session.flush(timeout=-1)
    await session.aclose()


async def test_forget_trace_drops_its_counts() -> None:
    """forget_trace releases the counts kept for a trace (the ledger no longer holds it)."""
    backend = InMemoryBackend()
    session = await anyio.to_thread.run_sync(lambda: Session(config(), backends=[backend]))
    with session.tracer().start_as_current_span("work") as span:
        pass
    trace_id = span.get_span_context().trace_id
    assert (await session.flush_trace(trace_id)).backends[0].exported == 1
    ledger = session._pipeline.ledger
    assert ledger.watching(trace_id)
    session.forget_trace(trace_id)
    await session.flush()  # runs after the forget on the export loop
    assert not ledger.watching(trace_id)
    await session.aclose()


def test_ledger_forgets_the_oldest_traces_beyond_its_bound() -> None:
    """Per-trace counts are bounded: past max_traces the oldest trace is forgotten."""
    ledger = TraceLedger(["b"], max_traces=2)
    for trace_id in (1, 2, 3):
        ledger.watch(trace_id)
        ledger.record({trace_id: 1})
    assert len(ledger) == 2
    assert ledger.report(1).backends[0].pending == 0
    assert ledger.report(3).backends[0].pending == 1


def test_ledger_keeps_counts_only_for_watched_traces() -> None:
    """Counts are kept for watched traces; one watched late still finds its spans in the
    recent batches, but not in batches older than that window."""
    ledger = TraceLedger(["b"], recent=2)
    ledger.record({7: 1, 8: 1})
    assert len(ledger) == 0
    ledger.watch(8)
    assert ledger.report(8).backends[0].pending == 1
    ledger.record({9: 1})
    ledger.record({9: 1})
    ledger.watch(7)  # its batch left the window
    assert ledger.report(7).backends[0].pending == 0
    ledger.watch(9)
    assert ledger.report(9).backends[0].pending == 2


def test_provider_force_flush_from_plain_code() -> None:
    """The SDK's own tracer_provider.force_flush() works too (blocking, from sync code)."""
    backend = InMemoryBackend()
    session = Session(config(), backends=[backend])
    with session.tracer().start_as_current_span("work"):
        pass
    assert session.tracer_provider.force_flush(10_000)
    assert len(backend.get_finished_spans()) == 1
    session.tracer_provider.shutdown()
    assert session.closed


def test_session_rejects_a_config_that_is_not_one() -> None:
    """Passing something else than a TracingConfig is a clear ConfigError."""
    with pytest.raises(ConfigError, match="takes a TracingConfig"):
        Session({"service_name": "x"})  # type: ignore[arg-type]


async def test_nothing_blocks_the_callers_loop() -> None:
    """With blockbuster watching aiorunner's calls on every event loop thread (autouse
    fixture), a session made with aget_default_session exports through the jsonl file,
    flushes and closes without a blocking call. Building one directly on the loop with a
    cold registry is caught, which shows the check is live (a plugin's name needs the scan
    of installed distributions; the core's own names do not)."""
    _registry.clear_cache()
    with pytest.raises(BlockingError):
        Session(TracingConfig(exporter_type="zipkin"))
    session = await aget_default_session(TracingConfig(schedule_delay=60.0))
    assert await aget_default_session(TracingConfig(schedule_delay=60.0)) is session
    tracer = session.tracer()
    with tracer.start_as_current_span("ScriptRunner") as root, tracer.start_as_current_span("step"):
        pass
    report = await session.flush_trace(root.get_span_context().trace_id)
    assert report.ok and report.backends[0].exported == 2
    await session.aclose()
