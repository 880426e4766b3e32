"""How aiorunner-otlp reads OTEL_EXPORTER_OTLP_* (the specification's meaning) and options."""

from __future__ import annotations

import pytest
from aiorunner_otlp import (
    create_backend,
    create_grpc_backend,
    create_http_backend,
    parse_headers,
    resolve_settings,
)
from hypothesis import given
from hypothesis import strategies as st
from receivers import OtlpHttpReceiver

from aiorunner import ConfigError, TracingConfig

SECRET = "hunter2-very-secret"


def config(**kwargs) -> TracingConfig:
    return TracingConfig(**kwargs).resolve()


def test_defaults_follow_the_specification():
    """Defaults: gRPC to localhost:4317 (HTTP to localhost:4318/v1/traces), 10 s, no
    compression, no headers."""
    grpc_settings = resolve_settings(config())
    assert (grpc_settings.protocol, grpc_settings.endpoint) == ("grpc", "http://localhost:4317")
    assert grpc_settings.target == "localhost:4317"
    assert grpc_settings.insecure
    http_settings = resolve_settings(config(), protocol="http/protobuf")
    assert http_settings.endpoint == "http://localhost:4318/v1/traces"
    for settings in (grpc_settings, http_settings):
        assert settings.timeout == 10.0
        assert settings.compression == "none"
        assert dict(settings.headers) == {}
        assert settings.sources["endpoint"] == "default"


async def test_http_generic_endpoint_gets_v1_traces(spans, monkeypatch):
    """OTEL_EXPORTER_OTLP_ENDPOINT is a base URL: /v1/traces is appended, and the spans
    arrive at that path of a receiver mounted under /otlp."""
    with OtlpHttpReceiver(path="/otlp/v1/traces") as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint + "/otlp/")
        backend = create_http_backend(config())
        assert backend.settings.endpoint == receiver.url
        assert (await backend.export(spans, timeout=5)).ok
        assert receiver.requests[0].path == "/otlp/v1/traces"


async def test_http_signal_endpoint_is_used_as_is_and_wins(spans, monkeypatch):
    """OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is the full URL, used unchanged, and beats the
    generic variable."""
    with OtlpHttpReceiver(path="/custom/ingest") as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9/elsewhere")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.url)
        backend = create_http_backend(config())
        assert backend.settings.sources["endpoint"] == "env OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        assert (await backend.export(spans, timeout=5)).ok
        assert receiver.requests[0].path == "/custom/ingest"


async def test_collector_endpoint_beats_the_variables(otlp_grpc_receiver, spans, monkeypatch):
    """TracingConfig.collector_endpoint (an explicit argument) wins over OTEL_* endpoints."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9")
    backend = create_backend(config(collector_endpoint=otlp_grpc_receiver.endpoint))
    assert backend.settings.sources["endpoint"] == "collector_endpoint"
    assert (await backend.export(spans, timeout=5)).ok
    assert len(otlp_grpc_receiver.spans) == 2


def test_collector_endpoint_for_http_gets_the_path_once():
    """A collector_endpoint with or without /v1/traces ends in exactly one /v1/traces."""
    for given_url in ("http://c:4318", "http://c:4318/", "http://c:4318/v1/traces"):
        settings = resolve_settings(config(collector_endpoint=given_url), protocol="http/protobuf")
        assert settings.endpoint == "http://c:4318/v1/traces"


async def test_protocol_variables(otlp_http_receiver, spans, monkeypatch):
    """OTEL_EXPORTER_OTLP_TRACES_PROTOCOL beats OTEL_EXPORTER_OTLP_PROTOCOL for otlp;
    otlp_grpc and otlp_http ignore both."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
    cfg = config(collector_endpoint=otlp_http_receiver.endpoint)
    backend = create_backend(cfg)
    assert backend.settings.protocol == "http/protobuf"
    assert (await backend.export(spans, timeout=5)).ok
    assert len(otlp_http_receiver.spans) == 2
    assert create_grpc_backend(config()).settings.protocol == "grpc"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")
    assert create_http_backend(config()).settings.protocol == "http/protobuf"


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift", "accepted: grpc, http/protobuf"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json", "http/json"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", "accepted: gzip, none"),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "ten", "milliseconds"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "-5", "positive number of milliseconds"),
        ("OTEL_EXPORTER_OTLP_INSECURE", "maybe", "accepted: true, false"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://host:99999", "invalid port"),
    ],
)
def test_malformed_values_name_the_variable(monkeypatch, var, value, expected):
    """A malformed value is a ConfigError naming the variable, the value and what fits."""
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as caught:
        resolve_settings(TracingConfig().resolve({}))
    assert var in str(caught.value)
    assert value in str(caught.value)
    assert expected in str(caught.value)


def test_headers_are_parsed_percent_decoded_and_signal_wins(monkeypatch):
    """Headers: key=value pairs, percent-decoded, names lowercased; the TRACES_ variable
    replaces the generic one; backend options add to them."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-generic=1")
    monkeypatch.setenv(
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS", " Authorization = Basic%20dXNlcjpwYXNz , X-Org=a%2Cb"
    )
    settings = resolve_settings(config(backend_options={"otlp_headers": {"X-Extra": "e"}}))
    assert dict(settings.headers) == {
        "authorization": "Basic dXNlcjpwYXNz",
        "x-org": "a,b",
        "x-extra": "e",
    }
    assert settings.sources["headers"] == "backend option otlp_headers"


def test_malformed_headers_never_echo_a_value(monkeypatch):
    """A header entry without '=' is an error naming the variable and the entry's position,
    never its text (it may be a bare token)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"x-ok=1,{SECRET}")
    with pytest.raises(ConfigError) as caught:
        resolve_settings(config())
    assert "OTEL_EXPORTER_OTLP_HEADERS: entry 2" in str(caught.value)
    assert SECRET not in str(caught.value)
    with pytest.raises(ConfigError, match="'bad name' is not a valid header name") as caught:
        parse_headers("X", "bad name=" + SECRET)
    assert SECRET not in str(caught.value)
    with pytest.raises(ConfigError, match="value of header 'k' has a character") as caught:
        parse_headers("X", "k=caf%C3%A9" + SECRET)
    assert SECRET not in str(caught.value)


@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
        max_size=5,
    )
)
def test_header_round_trip(headers):
    """Any header set percent-encoded the way the specification says parses back."""
    from urllib.parse import quote

    raw = ",".join(f"{k}={quote(v, safe='')}" for k, v in headers.items())
    assert parse_headers("OTEL_EXPORTER_OTLP_HEADERS", raw) == headers


def test_endpoint_credentials_are_masked_in_messages(monkeypatch):
    """user:password in an endpoint URL never shows in a repr or an error message."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://user:{SECRET}@collector:4317")
    settings = resolve_settings(config())
    assert SECRET not in repr(settings)
    assert "[secure]@collector:4317" in repr(settings)
    with pytest.raises(ConfigError) as caught:
        resolve_settings(config(collector_endpoint=f"http://u:{SECRET}@collector:4318"))
    assert SECRET not in str(caught.value)


def test_settings_repr_masks_header_values(monkeypatch):
    """The settings' repr (and so any log of it) shows header names, not values."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "api-key=" + SECRET)
    text = repr(resolve_settings(config()))
    assert "api-key: [secure]" in text
    assert SECRET not in text


def test_grpc_transport_security_follows_the_scheme(monkeypatch):
    """gRPC: http:// is plaintext, https:// is TLS whatever INSECURE says; a bare host:port
    from the OTEL variables is TLS unless OTEL_EXPORTER_OTLP_INSECURE=true."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
    settings = resolve_settings(config(collector_endpoint="https://collector:4317"))
    assert not settings.insecure
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")
    assert resolve_settings(config()).insecure
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", "false")
    settings = resolve_settings(config())
    assert not settings.insecure
    assert settings.target == "collector:4317"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "https://api.example.com")
    assert resolve_settings(config()).target == "api.example.com:443"


@pytest.mark.parametrize(
    ("protocol", "endpoint", "advice"),
    [("grpc", "http://localhost:4318", "4317"), ("http/protobuf", "http://localhost:4317", "4318")],
)
def test_protocol_and_port_mismatch_is_explained(monkeypatch, protocol, endpoint, advice):
    """gRPC pointed at 4318 (or HTTP at 4317), the most common OTLP mistake, is caught."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    with pytest.raises(ConfigError) as caught:
        create_backend(config())
    message = str(caught.value)
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in message
    assert f"port {advice}" in message
    assert "OTEL_EXPORTER_OTLP_PROTOCOL" in message


def test_backend_options_are_explicit_arguments(monkeypatch):
    """otlp_* backend options win over the variables; bad ones are named."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "none")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1000")
    settings = resolve_settings(
        config(
            backend_options={
                "otlp_compression": "gzip",
                "otlp_timeout": 2.5,
                "otlp_protocol": "http/protobuf",
            }
        )
    )
    assert (settings.compression, settings.timeout, settings.protocol) == (
        "gzip",
        2.5,
        "http/protobuf",
    )
    with pytest.raises(ConfigError, match="otlp_timeout=0"):
        resolve_settings(config(backend_options={"otlp_timeout": 0}))
    with pytest.raises(ConfigError, match="otlp_protocol='grpc' is not supported"):
        resolve_settings(
            config(backend_options={"otlp_protocol": "grpc"}), protocols=("http/protobuf",)
        )


def test_client_key_without_certificate_is_refused(monkeypatch, tmp_path):
    """mTLS needs both the client key and the client certificate."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_KEY", str(tmp_path / "key.pem"))
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"):
        resolve_settings(config())
