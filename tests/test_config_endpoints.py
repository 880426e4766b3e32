"""Endpoint validation in the core config: a legacy Jaeger UDP agent endpoint gets the
directions to OTLP instead of a generic message."""

from __future__ import annotations

import pytest

from aiorunner import ConfigError, TracingConfig


@pytest.mark.parametrize("endpoint", ["udp://localhost:6831", "udp://jaeger-agent:6832"])
def test_legacy_jaeger_agent_endpoint_explained(endpoint):
    """udp:// or a bare agent port names 4317/4318 as the fix."""
    with pytest.raises(ConfigError, match=r"legacy Jaeger agent.*4317.*4318"):
        TracingConfig(exporter_type="jaeger", collector_endpoint=endpoint).resolve()


def test_http_endpoint_accepted():
    """A normal OTLP endpoint passes and is kept as given."""
    config = TracingConfig(collector_endpoint="http://collector:4317").resolve()
    assert config.collector_endpoint == "http://collector:4317"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"exporter_type": 5}, "exporter_type=5 must be a backend name or a list"),
        ({"exporter_type": ["otlp", 3]}, "exporter_type"),
        ({"service_name": 3}, "service_name=3 must be a non-empty string"),
        ({"service_name": ""}, "service_name='' must be a non-empty string"),
        ({"max_events": 1.5}, "max_events=1.5 must be an integer"),
        ({"enabled": "yes"}, "enabled='yes' must be True or False"),
    ],
)
def test_wrong_types_are_config_errors(kwargs, match):
    """A wrong type is a ConfigError naming the field, not a TypeError from inside."""
    with pytest.raises(ConfigError, match=match):
        TracingConfig(**kwargs).resolve()


def test_seed_jaeger_agent_port_refused_with_directions():
    """The seed's TracingConfig(exporter_type='jaeger', collector_endpoint=
    'http://localhost:6831') fails at set_tracing_config, naming the field and the
    OTLP ports to use instead."""
    from aiorunner import ScriptRunner

    config = TracingConfig(
        enabled=True,
        exporter_type="jaeger",
        collector_endpoint="http://localhost:6831",
        service_name="my-app",
    )
    with pytest.raises(ConfigError) as caught:
        ScriptRunner("script.py").set_tracing_config(config)
    message = str(caught.value)
    assert "collector_endpoint='http://localhost:6831'" in message
    assert "http://localhost:4317" in message
    assert "4318" in message
