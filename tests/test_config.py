"""``TracingConfig``: every variable from_env reads, the precedence explicit > environment
> default (with sources), clear ConfigErrors for bad explicit values, and the resource and
runner attributes landing on the trace in the real jsonl file."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiorunner import ConfigError, ScriptRunner, TracingConfig
from aiorunner._config import parse_key_values

ENV = {
    "OTEL_SERVICE_NAME": "etl",
    "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team=data%20eng",
    "OTEL_TRACES_EXPORTER": "console,jsonl",
    "OTEL_PROPAGATORS": "tracecontext",
    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
    "OTEL_TRACES_SAMPLER_ARG": "0.25",
    "OTEL_BSP_MAX_QUEUE_SIZE": "4096",
    "OTEL_BSP_SCHEDULE_DELAY": "250",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "64",
    "OTEL_BSP_EXPORT_TIMEOUT": "1500",
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "32",
    "OTEL_SPAN_EVENT_COUNT_LIMIT": "16",
    "AIORUNNER_TRACES_FILE": "/tmp/x/traces.jsonl",
    "AIORUNNER_MONITOR_INTERVAL": "0.2",
    "AIORUNNER_IN_SCRIPT_TRACING": "false",
    "AIORUNNER_TAIL_SAMPLING_THRESHOLD": "2.5",
    "AIORUNNER_INSTRUMENT": "requests, httpx",
}

EXPECTED = {
    "service_name": "etl",
    "resource_attributes": {"deployment.environment": "prod", "team": "data eng"},
    "exporter_type": ("console", "jsonl"),
    "propagators": ("tracecontext",),
    "sampler": "parentbased_traceidratio",
    "sample_rate": 0.25,
    "max_queue_size": 4096,
    "schedule_delay": 0.25,
    "batch_size": 64,
    "export_timeout": 1.5,
    "export_timeout_ms": 1500,
    "max_attributes": 32,
    "max_events": 16,
    "traces_file": "/tmp/x/traces.jsonl",
    "monitor_interval": 0.2,
    "in_script_tracing": False,
    "tail_latency_threshold": 2.5,
    "instrument": ("requests", "httpx"),
}


def test_from_env_reads_every_variable():
    """Each documented variable fills its field (milliseconds become seconds) and the
    source names the variable."""
    config = TracingConfig.from_env(ENV)
    for name, value in EXPECTED.items():
        assert getattr(config, name) == value, name
    assert config.sources["service_name"] == "env OTEL_SERVICE_NAME"
    assert config.sources["export_timeout"] == "env OTEL_BSP_EXPORT_TIMEOUT"
    assert config.sources["instrument"] == "env AIORUNNER_INSTRUMENT"
    assert config.enabled is True


def test_defaults_when_nothing_is_set():
    """With an empty environment every field has its documented default."""
    config = TracingConfig.from_env({})
    assert config.exporter_type == ("jsonl",)
    assert config.service_name == "aiorunner"
    assert config.sampler == "parentbased_always_on"
    assert config.sample_rate == 1.0
    assert config.propagators == ("tracecontext", "baggage")
    assert (config.batch_size, config.max_queue_size) == (512, 2048)
    assert (config.schedule_delay, config.export_timeout, config.export_timeout_ms) == (
        5.0,
        30.0,
        30000,
    )
    assert (config.max_attributes, config.max_events) == (128, 128)
    assert config.in_script_tracing is True and config.instrument == ()
    assert set(config.sources.values()) == {"default"}


def test_explicit_beats_env_beats_default():
    """An argument wins over the environment, which wins over the default; sources say
    which one each value came from."""
    config = TracingConfig(service_name="explicit", batch_size=8).resolve(ENV)
    assert config.service_name == "explicit"
    assert config.sources["service_name"] == "argument"
    assert config.batch_size == 8
    assert config.sample_rate == 0.25
    assert config.sources["sample_rate"] == "env OTEL_TRACES_SAMPLER_ARG"
    assert TracingConfig().resolve({}).sources["batch_size"] == "default"


def test_seed_fields_all_accepted():
    """The seed's programmatic example: every field, export_timeout_ms in milliseconds.
    (Its endpoint, the Jaeger agent's UDP port 6831, is refused: see
    test_seed_jaeger_agent_port_refused_with_directions; here Jaeger's OTLP port.)"""
    config = TracingConfig(
        enabled=True,
        exporter_type="jaeger",
        collector_endpoint="http://localhost:4317",
        service_name="my-app",
        sample_rate=1.0,
        max_attributes=128,
        max_events=128,
        batch_size=512,
        export_timeout_ms=30000,
    ).resolve({})
    assert config.exporter_type == ("jaeger",)
    assert config.collector_endpoint == "http://localhost:4317"
    assert config.export_timeout == 30.0
    assert config.sampler == "parentbased_traceidratio"  # sample_rate given: ratio sampling


def test_sdk_disabled_and_exporter_none_turn_tracing_off():
    """OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none disable tracing; an explicit
    enabled=True beats OTEL_SDK_DISABLED."""
    assert TracingConfig.from_env({"OTEL_SDK_DISABLED": "true"}).enabled is False
    assert TracingConfig.from_env({"OTEL_TRACES_EXPORTER": "none"}).enabled is False
    assert TracingConfig(enabled=True).resolve({"OTEL_SDK_DISABLED": "true"}).enabled is True


def test_batch_size_is_capped_by_queue():
    """A batch cannot be larger than the queue it is taken from."""
    config = TracingConfig(batch_size=1000, max_queue_size=100).resolve({})
    assert config.batch_size == 100


@pytest.mark.parametrize(
    ("env", "kwargs", "pattern"),
    [
        ({}, {"sample_rate": 1.5}, r"sample_rate=1\.5 must be between 0 and 1"),
        (
            {},
            {"sampler": "random"},
            r"sampler='random' is not a known sampler; accepted: always_on",
        ),
        (
            {},
            {"collector_endpoint": "not a url at all"},
            r"collector_endpoint=.* is not a valid endpoint",
        ),
        ({}, {"export_timeout_ms": -5}, r"export_timeout_ms=-5 must be >= 0"),
        ({}, {"exporter_type": "none,otlp"}, r"mixes 'none' with other backends"),
        ({}, {"span_limits": {"max_linkz": 3}}, r"'max_linkz' is not a span limit; accepted"),
        ({}, {"span_limits": {"max_links": -1}}, r"span_limits\['max_links'\]=-1 must be >= 0"),
        (
            {"AIORUNNER_INSTRUMENT": "requests,a b"},
            {},
            r"AIORUNNER_INSTRUMENT: 'a b' is not an instrumentation name",
        ),
        (
            {"AIORUNNER_TAIL_SAMPLING_THRESHOLD": "0"},
            {},
            r"AIORUNNER_TAIL_SAMPLING_THRESHOLD='0' must be a positive number of seconds",
        ),
        (
            {"AIORUNNER_IN_SCRIPT_TRACING": "maybe"},
            {},
            r"AIORUNNER_IN_SCRIPT_TRACING='maybe' is not a boolean; use true or false",
        ),
        ({}, {"batch_size": "big"}, r"batch_size='big' must be a number"),
        ({}, {"monitor_interval": 0}, r"monitor_interval=0 must be > 0"),
    ],
)
def test_invalid_values_name_the_variable_and_the_fix(env, kwargs, pattern):
    """Every bad explicit value, and every bad AIORUNNER_* variable (ours, not the
    specification's), raises ConfigError naming the field or variable, the value, and what
    is accepted. (Bad OTEL_* values warn instead: tests/test_config_env.py.)"""
    with pytest.raises(ConfigError, match=pattern):
        TracingConfig(**kwargs).resolve(env)


def test_config_error_is_a_value_error():
    """ConfigError is both an AiorunnerError and a ValueError."""
    with pytest.raises(ValueError):  # noqa: PT011 - the point is the base class
        TracingConfig(sample_rate=2).resolve({})


def test_set_tracing_config_validates_at_once(make_script):
    """runner.set_tracing_config() resolves and validates immediately."""
    runner = ScriptRunner(make_script("pass"))
    with pytest.raises(ConfigError, match="sample_rate"):
        runner.set_tracing_config(TracingConfig(sample_rate=-0.1))
    with pytest.raises(ConfigError, match="takes a TracingConfig"):
        runner.set_tracing_config({"enabled": True})  # type: ignore[arg-type]


def test_repr_masks_secrets():
    """repr() never shows header values, API keys or URL passwords."""
    config = TracingConfig(
        collector_endpoint="https://user:hunter2@collector:4318",
        backend_options={"headers": {"x-honeycomb-team": "s3cr3t"}, "api_key": "k3y"},
    ).resolve({})
    text = repr(config)
    for secret in ("hunter2", "s3cr3t", "k3y"):
        assert secret not in text
    assert "[secure]" in text and "collector:4318" in text


@given(
    st.dictionaries(
        st.text(min_size=1).filter(lambda k: k.strip() == k),
        st.text().filter(lambda v: v.strip() == v),
        max_size=5,
    )
)
def test_key_value_parser_round_trips(pairs):
    """OTEL_RESOURCE_ATTRIBUTES / headers form: percent-encoded k=v pairs parse back."""
    raw = ",".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs.items())
    assert parse_key_values("OTEL_RESOURCE_ATTRIBUTES", raw) == pairs


async def test_resource_and_runner_attributes_land_on_the_trace(make_script, spans_of, monkeypatch):
    """OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are the resource of every span of
    the run (the script's own too); runner.tracing_attributes are on the root."""
    monkeypatch.setenv("OTEL_SERVICE_NAME", "daily-etl")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=production,team=data")
    script = make_script(
        "from opentelemetry import trace\n"
        "with trace.get_tracer('s').start_as_current_span('inner'): pass\n"
    )
    runner = ScriptRunner(script)
    runner.tracing_attributes = {"pipeline.name": "daily_etl", "custom.team": "platform"}
    result = await runner.run()
    spans = spans_of(result.trace_id)
    assert {s["name"] for s in spans} >= {"ScriptRunner", "inner"}
    for span in spans:
        assert span["resource"]["service.name"] == "daily-etl"
        assert span["resource"]["deployment.environment"] == "production"
        assert span["resource"]["team"] == "data"
    root = next(s for s in spans if s["name"] == "ScriptRunner")
    assert root["attrs"]["pipeline.name"] == "daily_etl"
    assert root["attrs"]["custom.team"] == "platform"


async def test_span_limits_apply_to_script_spans(make_script, spans_of, monkeypatch):
    """OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT / max_attributes bound the script's spans too, and
    the dropped count arrives."""
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "3")
    script = make_script(
        "from opentelemetry import trace\n"
        "with trace.get_tracer('s').start_as_current_span('wide') as s:\n"
        "    for i in range(10): s.set_attribute(f'a{i}', i)\n"
    )
    result = await ScriptRunner(script).run()
    [wide] = [s for s in spans_of(result.trace_id) if s["name"] == "wide"]
    assert len(wide["attrs"]) == 3
    assert wide.get("droppedAttributesCount") == 7
