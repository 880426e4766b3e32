"""aiorunner-vendors: each preset's variables, its auth header at a real local receiver, and
secrets kept out of errors and logs."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import pytest
from aiorunner_vendors import PRESETS, create_vendor_backend
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from receivers import OtlpGrpcReceiver, OtlpHttpReceiver

from aiorunner import ConfigError, TracingConfig
from aiorunner.backend import ExportStatus

SECRET = "Zx9-vendor-secret-key-0042"


@pytest.fixture(autouse=True)
def _clean_env(clean_otel_env: None) -> None:
    """Every test starts without OTEL_* and vendor variables (see the root conftest)."""


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "vendor-test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("vendor-tests").start_as_current_span("run") as span:
        span.set_attribute("job", "etl")
    provider.shutdown()
    return exporter.get_finished_spans()


@dataclass(frozen=True)
class Case:
    """How to aim one preset at a local receiver and what must arrive there."""

    name: str
    env: dict[str, str]
    #: Variables to set so the preset sends to the receiver (given the receiver).
    aim: Callable[[OtlpHttpReceiver | OtlpGrpcReceiver], dict[str, str]]
    #: Headers that must arrive.
    headers: dict[str, str]
    grpc: bool = False
    path: str = "/v1/traces"
    required: tuple[str, ...] = field(default=())


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


CASES = [
    Case(
        "datadog",
        {},
        lambda r: {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": r.url},
        {},
    ),
    Case(
        "newrelic",
        {"NEW_RELIC_LICENSE_KEY": SECRET},
        lambda r: {"OTEL_EXPORTER_OTLP_ENDPOINT": r.endpoint},
        {"api-key": SECRET},
        required=("NEW_RELIC_LICENSE_KEY",),
    ),
    Case(
        "honeycomb",
        {"HONEYCOMB_API_KEY": SECRET, "HONEYCOMB_DATASET": "runs"},
        lambda r: {"HONEYCOMB_API_ENDPOINT": r.endpoint},
        {"x-honeycomb-team": SECRET, "x-honeycomb-dataset": "runs"},
        required=("HONEYCOMB_API_KEY",),
    ),
    Case(
        "grafana",
        {"GRAFANA_CLOUD_INSTANCE_ID": "123456", "GRAFANA_CLOUD_API_KEY": SECRET},
        lambda r: {"GRAFANA_CLOUD_OTLP_ENDPOINT": r.endpoint + "/otlp"},
        {"authorization": _basic("123456", SECRET)},
        path="/otlp/v1/traces",
        required=(
            "GRAFANA_CLOUD_INSTANCE_ID",
            "GRAFANA_CLOUD_API_KEY",
            "GRAFANA_CLOUD_OTLP_ENDPOINT",
        ),
    ),
    Case(
        "lightstep",
        {"LS_ACCESS_TOKEN": SECRET},
        lambda r: {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": r.endpoint},
        {"lightstep-access-token": SECRET},
        grpc=True,
        required=("LS_ACCESS_TOKEN",),
    ),
    Case(
        "dynatrace",
        {"DT_API_TOKEN": SECRET},
        lambda r: {"DT_API_URL": r.endpoint + "/api/v2/otlp"},
        {"authorization": "Api-Token " + SECRET},
        path="/api/v2/otlp/v1/traces",
        required=("DT_API_TOKEN", "DT_API_URL"),
    ),
    Case(
        "signoz",
        {"SIGNOZ_INGESTION_KEY": SECRET},
        lambda r: {"OTEL_EXPORTER_OTLP_ENDPOINT": r.endpoint},
        {"signoz-ingestion-key": SECRET},
        required=("SIGNOZ_INGESTION_KEY",),
    ),
    Case(
        "axiom",
        {"AXIOM_TOKEN": SECRET, "AXIOM_DATASET": "traces"},
        lambda r: {"AXIOM_URL": r.endpoint},
        {"authorization": "Bearer " + SECRET, "x-axiom-dataset": "traces"},
        required=("AXIOM_TOKEN", "AXIOM_DATASET"),
    ),
    Case(
        "elastic",
        {"ELASTIC_APM_SECRET_TOKEN": SECRET},
        lambda r: {"ELASTIC_APM_SERVER_URL": r.endpoint},
        {"authorization": "Bearer " + SECRET},
        required=("ELASTIC_APM_SERVER_URL",),
    ),
]


def test_every_preset_has_a_case_and_an_entry_point():
    """The test table covers every preset, and each is registered as an entry point."""
    assert sorted(c.name for c in CASES) == sorted(PRESETS)
    registered = {
        ep.name
        for ep in entry_points(group="aiorunner.backends")
        if ep.value.startswith("aiorunner_vendors:")
    }
    assert registered == set(PRESETS)


def _receiver(case: Case) -> OtlpHttpReceiver | OtlpGrpcReceiver:
    return OtlpGrpcReceiver() if case.grpc else OtlpHttpReceiver(path=case.path)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_preset_header_arrives_and_is_never_logged(case, spans, monkeypatch, caplog):
    """The preset's auth header arrives at a local receiver with the configured value, and
    the value shows in no log record, no repr and no error message."""
    caplog.set_level(logging.DEBUG)
    with _receiver(case) as receiver:
        for var, value in {**case.env, **case.aim(receiver)}.items():
            monkeypatch.setenv(var, value)
        ep = next(e for e in entry_points(group="aiorunner.backends") if e.name == case.name)
        backend = ep.load()(TracingConfig().resolve())
        assert backend.name == case.name
        result = await backend.export(spans, timeout=5)
        assert result.ok, result.error
        [request] = receiver.requests
        for header, value in case.headers.items():
            assert request.headers[header] == value
        assert receiver.span("run").service_name == "vendor-test"
        if not case.grpc:
            assert request.path == case.path
        # a collector that refuses the credentials: permanent, and the error is secret-free
        receiver.require_header(next(iter(case.headers), "authorization"), "other")
        refused = await backend.export(spans, timeout=5)
        await backend.shutdown(timeout=5)
    if case.headers:
        assert refused.status is ExportStatus.PERMANENT
    for text in (refused.error or "", repr(backend), repr(backend.settings), caplog.text):
        assert SECRET not in text


@pytest.mark.parametrize(
    ("case", "missing"),
    [(c, var) for c in CASES for var in c.required],
    ids=lambda v: v if isinstance(v, str) else v.name,
)
def test_missing_variable_is_named(case, missing, monkeypatch):
    """Without one of its variables a preset fails with a ConfigError naming it (and no
    secret)."""
    for var, value in case.env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv(missing, raising=False)
    with pytest.raises(ConfigError) as caught:
        create_vendor_backend(case.name, TracingConfig().resolve())
    message = str(caught.value)
    assert f"{missing} is not set" in message
    assert SECRET not in message


def test_elastic_needs_a_token_or_a_key(monkeypatch):
    """elastic: neither secret token nor API key is an error naming both; an API key is
    sent as 'ApiKey ...'."""
    monkeypatch.setenv("ELASTIC_APM_SERVER_URL", "http://apm:8200")
    with pytest.raises(ConfigError, match="ELASTIC_APM_SECRET_TOKEN nor ELASTIC_APM_API_KEY"):
        create_vendor_backend("elastic", TracingConfig().resolve())
    monkeypatch.setenv("ELASTIC_APM_API_KEY", SECRET)
    backend = create_vendor_backend("elastic", TracingConfig().resolve())
    assert backend.settings.headers["authorization"] == "ApiKey " + SECRET
    assert backend.settings.endpoint == "http://apm:8200/v1/traces"


def test_datadog_agent_defaults_and_host(monkeypatch):
    """datadog needs no key: OTLP/HTTP to the local Agent by default, 4317 for gRPC, and
    DD_AGENT_HOST moves both."""
    settings = create_vendor_backend("datadog", TracingConfig().resolve()).settings
    assert (settings.protocol, settings.endpoint) == (
        "http/protobuf",
        "http://localhost:4318/v1/traces",
    )
    assert dict(settings.headers) == {}
    monkeypatch.setenv("DD_AGENT_HOST", "dd-agent")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    settings = create_vendor_backend("datadog", TracingConfig().resolve()).settings
    assert (settings.protocol, settings.target) == ("grpc", "dd-agent:4317")


def test_vendor_defaults_point_at_the_vendor(monkeypatch):
    """With only keys set, each preset targets its vendor's documented OTLP endpoint."""
    env = {
        "NEW_RELIC_LICENSE_KEY": "k",
        "HONEYCOMB_API_KEY": "k",
        "LS_ACCESS_TOKEN": "k",
        "SIGNOZ_INGESTION_KEY": "k",
        "AXIOM_TOKEN": "k",
        "AXIOM_DATASET": "d",
    }
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    endpoints = {
        name: create_vendor_backend(name, TracingConfig().resolve()).settings.endpoint
        for name in ("newrelic", "honeycomb", "lightstep", "signoz", "axiom")
    }
    assert endpoints == {
        "newrelic": "https://otlp.nr-data.net:4318/v1/traces",
        "honeycomb": "https://api.honeycomb.io/v1/traces",
        "lightstep": "https://ingest.lightstep.com:443",
        "signoz": "https://ingest.us.signoz.cloud:443/v1/traces",
        "axiom": "https://api.axiom.co/v1/traces",
    }


def test_regions(monkeypatch):
    """NEW_RELIC_REGION=EU (or an EU license key) and SIGNOZ_REGION pick the region's
    endpoint; an unknown region is named with the accepted ones."""
    monkeypatch.setenv("NEW_RELIC_LICENSE_KEY", "eu01xx" + SECRET)
    settings = create_vendor_backend("newrelic", TracingConfig().resolve()).settings
    assert settings.endpoint == "https://otlp.eu01.nr-data.net:4318/v1/traces"
    monkeypatch.setenv("NEW_RELIC_REGION", "mars")
    with pytest.raises(ConfigError, match=r"NEW_RELIC_REGION='mars'.*accepted: US, EU"):
        create_vendor_backend("newrelic", TracingConfig().resolve())
    monkeypatch.setenv("SIGNOZ_INGESTION_KEY", SECRET)
    monkeypatch.setenv("SIGNOZ_REGION", "EU")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    settings = create_vendor_backend("signoz", TracingConfig().resolve()).settings
    assert settings.target == "ingest.eu.signoz.cloud:443"
    assert not settings.insecure


def test_http_only_vendors_ignore_a_grpc_protocol_variable(monkeypatch):
    """OTEL_EXPORTER_OTLP_PROTOCOL=grpc (set for another backend) does not break the
    HTTP-only presets; an explicit otlp_protocol=grpc option is refused."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("DT_API_TOKEN", SECRET)
    monkeypatch.setenv("DT_API_URL", "https://abc123.live.dynatrace.com/api/v2/otlp")
    settings = create_vendor_backend("dynatrace", TracingConfig().resolve()).settings
    assert settings.protocol == "http/protobuf"
    assert settings.endpoint == "https://abc123.live.dynatrace.com/api/v2/otlp/v1/traces"
    with pytest.raises(ConfigError, match="otlp_protocol='grpc' is not supported"):
        create_vendor_backend(
            "dynatrace", TracingConfig(backend_options={"otlp_protocol": "grpc"}).resolve()
        )


def test_vendor_endpoint_variable_beats_the_otel_one(monkeypatch):
    """A vendor's own endpoint variable wins over OTEL_EXPORTER_OTLP_ENDPOINT, and
    collector_endpoint wins over both."""
    monkeypatch.setenv("HONEYCOMB_API_KEY", SECRET)
    monkeypatch.setenv("HONEYCOMB_API_ENDPOINT", "https://api.eu1.honeycomb.io")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    backend = create_vendor_backend("honeycomb", TracingConfig().resolve())
    assert backend.settings.endpoint == "https://api.eu1.honeycomb.io/v1/traces"
    backend = create_vendor_backend(
        "honeycomb", TracingConfig(collector_endpoint="http://proxy:4318").resolve()
    )
    assert backend.settings.endpoint == "http://proxy:4318/v1/traces"
