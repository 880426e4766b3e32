"""
The entry points: ``otlp``, ``otlp_grpc``, ``otlp_http``, ``jaeger`` and ``tempo``.

Jaeger and Tempo both take OTLP natively (4317 gRPC, 4318 HTTP), so their backends are OTLP
with a check that catches the ports of their other, non-OTLP interfaces, which users copy
from old guides (the seed's own example points Jaeger at 6831).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from aiorunner.backend import ConfigError, EnvProblem, TracingConfig, report_env_problem

from ._backend import OtlpBackend
from ._settings import GRPC, HTTP_PROTOBUF, PROTOCOLS, OtlpSettings, redact_url, resolve_settings

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

__all__ = [
    "create_backend",
    "create_grpc_backend",
    "create_http_backend",
    "create_jaeger_backend",
    "create_otlp_backend",
    "create_tempo_backend",
]

#: Jaeger ports that do not speak OTLP, and what listens there.
JAEGER_LEGACY_PORTS = {
    5775: "agent port for Zipkin Thrift over UDP (removed)",
    5778: "agent/collector sampling-configuration port",
    6831: "agent port for Thrift compact over UDP (the agent is deprecated)",
    6832: "agent port for Thrift binary over UDP (the agent is deprecated)",
    14250: "collector port for its own model.proto gRPC protocol",
    14268: "collector port for Thrift over HTTP",
    14269: "admin/health-check port",
    16686: "web UI and query API port",
}

#: Tempo ports that do not take OTLP.
TEMPO_OTHER_PORTS = {
    3200: "HTTP API and query port",
    9095: "internal gRPC port (queriers and distributors)",
    9411: "Zipkin receiver port (use the zipkin backend for it)",
    6831: "Jaeger Thrift compact (UDP) receiver port",
    6832: "Jaeger Thrift binary (UDP) receiver port",
    14250: "Jaeger gRPC receiver port",
    14268: "Jaeger Thrift HTTP receiver port",
}

#: The deprecated variables of OpenTelemetry's removed Jaeger Thrift exporter.
JAEGER_THRIFT_VARS = (
    "OTEL_EXPORTER_JAEGER_AGENT_HOST",
    "OTEL_EXPORTER_JAEGER_AGENT_PORT",
    "OTEL_EXPORTER_JAEGER_ENDPOINT",
)


def create_otlp_backend(
    config: TracingConfig,
    *,
    name: str,
    protocol: str | None = None,
    endpoint: tuple[str, str] | Mapping[str, tuple[str, str]] | None = None,
    default_endpoint: str | Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    default_protocol: str = GRPC,
    protocols: Collection[str] = PROTOCOLS,
    environ: Mapping[str, str] | None = None,
    logs: bool = True,
    metrics: bool = True,
) -> OtlpBackend:
    """
    Build an OTLP backend called ``name``: the building block of presets such as the
    vendor backends of ``aiorunner-vendors``. With ``logs`` (the default) it also sends
    log records (the scripts' output), resolved with ``signal="logs"``
    (``OTEL_EXPORTER_OTLP_LOGS_*``, ``/v1/logs``); with ``metrics`` (the default) the
    runs' metrics, resolved with ``signal="metrics"`` (``OTEL_EXPORTER_OTLP_METRICS_*``,
    ``/v1/metrics``).

    Arguments are those of :func:`aiorunner_otlp.resolve_settings`; a preset passes its
    endpoint (``(variable, url)``), its auth ``headers`` and the ``protocols`` its service
    accepts, and the user's OTEL_* variables still apply.

    Raises:
        ConfigError: a setting is malformed (the message names it and what is accepted).
    """
    options = {
        "protocol": protocol,
        "endpoint": endpoint,
        "default_endpoint": default_endpoint,
        "headers": headers,
        "default_protocol": default_protocol,
        "protocols": protocols,
        "environ": environ,
    }
    settings = resolve_settings(config, **options)  # type: ignore[arg-type]
    logs_settings = None
    if logs and config.logs is not False:
        logs_settings = resolve_settings(config, signal="logs", **options)  # type: ignore[arg-type]
    metrics_settings = None
    if metrics and config.metrics is not False:
        metrics_settings = resolve_settings(config, signal="metrics", **options)  # type: ignore[arg-type]
    return OtlpBackend(name, settings, logs_settings, metrics_settings)


def create_backend(config: TracingConfig) -> OtlpBackend:
    """``otlp``: gRPC, or HTTP with protobuf or JSON bodies when
    ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` says ``http/protobuf`` or ``http/json``."""
    return create_otlp_backend(config, name="otlp")


def create_grpc_backend(config: TracingConfig) -> OtlpBackend:
    """``otlp_grpc``: OTLP over gRPC whatever the protocol variables say."""
    return create_otlp_backend(config, name="otlp_grpc", protocol=GRPC)


def create_http_backend(config: TracingConfig) -> OtlpBackend:
    """``otlp_http``: OTLP over HTTP/protobuf whatever the protocol variables say."""
    return create_otlp_backend(config, name="otlp_http", protocol=HTTP_PROTOBUF)


def _refuse_port(settings: OtlpSettings, ports: Mapping[int, str], product: str) -> None:
    """A port of the product's other interfaces: an explicit endpoint raises; one from an
    OTEL_* variable is reported (used as given: nothing else would be right either)."""
    port = settings.port
    if port is None or port not in ports:
        return
    reason = f"is {product}'s {ports[port]} ({port}), which does not take OTLP"
    fix = (
        f"{product} accepts OTLP natively: point at port 4317 for OTLP/gRPC (e.g. "
        "OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4317) or port 4318 for OTLP/HTTP "
        "(with OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf)"
    )
    source = settings.sources.get("endpoint", "")
    if source.startswith("env "):
        report_env_problem(
            EnvProblem(source[4:], redact_url(settings.endpoint), reason, "it as given", fix)
        )
        return
    raise ConfigError(
        f"{settings.describe('endpoint')} is {redact_url(settings.endpoint)!r}, "
        f"{product}'s {ports[port]} ({port}), which does not take OTLP. {fix}"
    )


def create_jaeger_backend(config: TracingConfig) -> OtlpBackend:
    """``jaeger``: OTLP to Jaeger (v1.35+ and v2 receive OTLP on 4317 and 4318)."""
    env = os.environ
    settings = resolve_settings(config, environ=env)
    if settings.sources.get("endpoint") == "default":
        for var in (var for var in JAEGER_THRIFT_VARS if env.get(var)):
            report_env_problem(
                EnvProblem(
                    var,
                    redact_url(env[var]),
                    "configures OpenTelemetry's removed Jaeger Thrift exporter",
                    f"the default OTLP endpoint {settings.endpoint}",
                    "Jaeger receives OTLP: set OTEL_EXPORTER_OTLP_ENDPOINT=http://JAEGER_HOST:4317 "
                    "(gRPC) or http://JAEGER_HOST:4318 with "
                    f"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf, and unset {var}",
                )
            )
    _refuse_port(settings, JAEGER_LEGACY_PORTS, "Jaeger")
    return OtlpBackend("jaeger", settings)


def create_tempo_backend(config: TracingConfig) -> OtlpBackend:
    """``tempo``: OTLP to Grafana Tempo (its distributor receives OTLP on 4317 and 4318)."""
    settings = resolve_settings(config)
    _refuse_port(settings, TEMPO_OTHER_PORTS, "Tempo")
    return OtlpBackend("tempo", settings)
