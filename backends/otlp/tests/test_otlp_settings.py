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
from aiorunner._config import collect_env_problems

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
    ("var", "value", "expected", "instead"),
    [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift", "accepted: grpc, http/protobuf, http/json",
         ("protocol", "grpc")),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", "accepted: gzip, none", ("compression", "none")),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "ten", "milliseconds", ("timeout", 10.0)),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "-5", "non-negative number of milliseconds",
         ("timeout", 10.0)),
        ("OTEL_EXPORTER_OTLP_INSECURE", "maybe", "only 'true' is true", ("insecure", True)),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://host:99999", "invalid port",
         ("endpoint", "http://localhost:4317")),
    ],
)  # fmt: skip
def test_malformed_variables_are_ignored_with_one_warning(
    monkeypatch, var, value, expected, instead
):
    """A malformed or unsupported variable does not stop the backend: it is reported once
    (naming the variable, the value, what is used instead and what fits) and the default
    is used, as the specification asks."""
    monkeypatch.setenv(var, value)
    with collect_env_problems() as problems:
        settings = resolve_settings(TracingConfig().resolve({}))
    [problem] = problems
    assert (problem.variable, problem.value) == (var, value)
    assert expected in problem.message
    assert "instead. Fix: set " + var in problem.message
    assert getattr(settings, instead[0]) == instead[1]


def test_timeout_zero_means_no_limit(monkeypatch):
    """OTEL_EXPORTER_OTLP_TIMEOUT=0 is a Timeout of 0: no limit (a very long time), no
    warning."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "0")
    with collect_env_problems() as problems:
        settings = resolve_settings(TracingConfig().resolve({}))
    assert problems == []
    assert settings.timeout == (2**31 - 1) / 1000


def test_signal_variable_ignored_falls_back_to_the_generic_one(monkeypatch):
    """A bad OTEL_EXPORTER_OTLP_TRACES_TIMEOUT is passed over for OTEL_EXPORTER_OTLP_TIMEOUT,
    and the warning says so."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "soon")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")
    with collect_env_problems() as problems:
        settings = resolve_settings(TracingConfig().resolve({}))
    assert settings.timeout == 2.5
    assert "using OTEL_EXPORTER_OTLP_TIMEOUT instead" in problems[0].message


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
    """A header entry without '=' makes the variable ignored, with a warning naming the
    variable and the entry's position, never its text (it may be a bare token); given as
    a backend option it is an error, with the same care."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"x-ok=1,{SECRET}")
    with collect_env_problems() as problems:
        settings = resolve_settings(config())
    assert dict(settings.headers) == {}
    [problem] = problems
    assert problem.message.startswith("OTEL_EXPORTER_OTLP_HEADERS='x-ok=[secure],[secure]' ")
    assert "entry 2 is not of the form key=value" in problem.message
    assert SECRET not in problem.message
    with pytest.raises(ConfigError) as caught:
        resolve_settings(config(backend_options={"otlp_headers": f"x-ok=1,{SECRET}"}))
    assert "entry 2" in str(caught.value)
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
    """gRPC pointed at 4318 (or HTTP at 4317), the most common OTLP mistake, is caught:
    from the variables, a warning with the fix (the endpoint is used as given); given as
    collector_endpoint, a ConfigError."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    with collect_env_problems() as problems:
        create_backend(config())
    [problem] = problems
    for message in (problem.message,):
        assert message.startswith("OTEL_EXPORTER_OTLP_ENDPOINT=")
        assert f"port {advice}" in message
        assert "OTEL_EXPORTER_OTLP_PROTOCOL" in message
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    with pytest.raises(ConfigError) as caught:
        create_backend(config(collector_endpoint=endpoint))
    assert "collector_endpoint" in str(caught.value)
    assert f"port {advice}" in str(caught.value)


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
    """mTLS needs both the client key and the client certificate: a lone variable is
    ignored with a warning naming both; lone backend options raise."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_KEY", str(tmp_path / "key.pem"))
    with collect_env_problems() as problems:
        settings = resolve_settings(config())
    assert settings.client_key is None
    assert "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE" in problems[0].message
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_CLIENT_KEY")
    with pytest.raises(ConfigError, match="OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"):
        resolve_settings(config(backend_options={"otlp_client_key": str(tmp_path / "k.pem")}))
