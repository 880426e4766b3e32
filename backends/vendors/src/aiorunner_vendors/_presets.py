"""
Vendor presets: an OTLP endpoint and an auth header, read from each vendor's usual variables.

Each preset is an ``aiorunner-otlp`` backend with a different default endpoint and an auth
header, nothing more: the payload is plain OTLP. Every vendor documented here ingests OTLP
natively (checked against their documentation when written):

========== ============================================ ================================
name       endpoint (default)                           auth
========== ============================================ ================================
datadog    local Datadog Agent, DD_AGENT_HOST:4318/4317 none (the Agent holds DD_API_KEY)
newrelic   otlp.nr-data.net (EU: otlp.eu01.nr-data.net) api-key: NEW_RELIC_LICENSE_KEY
honeycomb  HONEYCOMB_API_ENDPOINT or api.honeycomb.io   x-honeycomb-team: HONEYCOMB_API_KEY
grafana    GRAFANA_CLOUD_OTLP_ENDPOINT (required)       Basic INSTANCE_ID:API_KEY
lightstep  ingest.lightstep.com:443 (gRPC)              lightstep-access-token: LS_ACCESS_TOKEN
dynatrace  DT_API_URL (required)                        Authorization: Api-Token DT_API_TOKEN
signoz     ingest.SIGNOZ_REGION.signoz.cloud:443        signoz-ingestion-key
axiom      AXIOM_URL or api.axiom.co                    Bearer AXIOM_TOKEN + AXIOM_DATASET
elastic    ELASTIC_APM_SERVER_URL (required)            Bearer secret token or ApiKey
========== ============================================ ================================

Endpoint precedence: ``collector_endpoint``, then the vendor's own endpoint variable, then
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``, then the default.
The protocol follows ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` where the vendor takes both
(default http/protobuf, which most of them recommend); HTTP-only services ignore a ``grpc``
there. Key values never appear in a message or a log line.

Log records (the scripts' output) go to the same service over OTLP (``/v1/logs``, or the
gRPC LogsService), except for ``lightstep``; ``OTEL_EXPORTER_OTLP_LOGS_*`` variables apply
to them as the specification says. The Datadog Agent takes OTLP logs only once its
``otlp_config.logs.enabled`` is set.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiorunner_otlp import create_otlp_backend

from aiorunner.backend import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from aiorunner_otlp import OtlpBackend

    from aiorunner.backend import TracingConfig

__all__ = ["PRESETS", "Preset", "Target", "create_vendor_backend"]

GRPC = "grpc"
HTTP = "http/protobuf"
BOTH = (HTTP, GRPC)
HTTP_ONLY = (HTTP,)


@dataclass(frozen=True)
class Target:
    """What a preset read from the environment: auth headers and where to send."""

    headers: dict[str, str] = field(default_factory=dict)
    #: ``(variable, url)`` from the vendor's own endpoint variable (wins over OTEL_*).
    endpoint: Mapping[str, tuple[str, str]] | None = None
    #: Used when no endpoint is configured at all.
    default_endpoint: Mapping[str, str] | None = None
    #: The vendor variable that must name the endpoint when no OTEL_* one does.
    required_endpoint_var: str | None = None


@dataclass(frozen=True)
class Preset:
    """One vendor: its name, the protocols it ingests and how to read its variables."""

    name: str
    title: str
    protocols: tuple[str, ...]
    read: Callable[[Mapping[str, str]], Target]
    #: Where a user finds the key, for the missing-variable message.
    help: str = ""
    #: The service ingests OTLP logs too (the scripts' output is sent to ``/v1/logs``).
    logs: bool = True
    #: The service ingests OTLP metrics too (the runs' metrics are sent to ``/v1/metrics``).
    metrics: bool = True


def _get(env: Mapping[str, str], var: str) -> str | None:
    value = env.get(var, "").strip()
    return value or None


def _require(env: Mapping[str, str], var: str, what: str, where: str) -> str:
    value = _get(env, var)
    if value is None:
        raise ConfigError(f"{var} is not set; it holds {what}. Set it (export {var}=...), {where}")
    return value


def _both(url_http: str, url_grpc: str) -> dict[str, str]:
    return {HTTP: url_http, GRPC: url_grpc}


def _from_var(
    env: Mapping[str, str], var: str, *, grpc: bool = True
) -> dict[str, tuple[str, str]] | None:
    """An endpoint variable holding a base URL, used for both protocols."""
    value = _get(env, var)
    if value is None:
        return None
    source = f"env {var}"
    return {HTTP: (source, value), GRPC: (source, value)} if grpc else {HTTP: (source, value)}


def _datadog(env: Mapping[str, str]) -> Target:
    host = _get(env, "DD_AGENT_HOST")
    if host is None:
        return Target(default_endpoint=_both("http://localhost:4318", "http://localhost:4317"))
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    source = "env DD_AGENT_HOST"
    return Target(
        endpoint={HTTP: (source, f"http://{host}:4318"), GRPC: (source, f"http://{host}:4317")}
    )


def _newrelic(env: Mapping[str, str]) -> Target:
    key = _require(
        env,
        "NEW_RELIC_LICENSE_KEY",
        "your New Relic ingest license key",
        "from one.newrelic.com > API keys (type INGEST - LICENSE)",
    )
    raw_region = _get(env, "NEW_RELIC_REGION")
    region = (raw_region or ("EU" if key.lower().startswith("eu") else "US")).upper()
    hosts = {"US": "otlp.nr-data.net", "EU": "otlp.eu01.nr-data.net"}
    if region not in hosts:
        raise ConfigError(
            f"NEW_RELIC_REGION={raw_region!r} is not a New Relic region; accepted: US, EU"
        )
    host = hosts[region]
    return Target(
        headers={"api-key": key},
        default_endpoint=_both(f"https://{host}:4318", f"https://{host}:4317"),
    )


def _honeycomb(env: Mapping[str, str]) -> Target:
    key = _require(
        env,
        "HONEYCOMB_API_KEY",
        "a Honeycomb ingest API key",
        "from Honeycomb > Environment settings > API keys",
    )
    headers = {"x-honeycomb-team": key}
    dataset = _get(env, "HONEYCOMB_DATASET")
    if dataset is not None:
        headers["x-honeycomb-dataset"] = dataset
    return Target(
        headers=headers,
        endpoint=_from_var(env, "HONEYCOMB_API_ENDPOINT"),
        default_endpoint=_both("https://api.honeycomb.io", "https://api.honeycomb.io:443"),
    )


def _grafana(env: Mapping[str, str]) -> Target:
    instance = _require(
        env,
        "GRAFANA_CLOUD_INSTANCE_ID",
        "the numeric instance ID of your Grafana Cloud stack's OTLP connection",
        "from Grafana Cloud > your stack > OpenTelemetry > Configure",
    )
    token = _require(
        env,
        "GRAFANA_CLOUD_API_KEY",
        "a Grafana Cloud access policy token with the traces:write scope",
        "from Grafana Cloud > Access Policies",
    )
    basic = base64.b64encode(f"{instance}:{token}".encode()).decode()
    return Target(
        headers={"authorization": f"Basic {basic}"},
        endpoint=_from_var(env, "GRAFANA_CLOUD_OTLP_ENDPOINT", grpc=False),
        required_endpoint_var="GRAFANA_CLOUD_OTLP_ENDPOINT",
    )


def _lightstep(env: Mapping[str, str]) -> Target:
    token = _require(
        env,
        "LS_ACCESS_TOKEN",
        "a Cloud Observability (Lightstep) access token",
        "from Project settings > Access tokens",
    )
    return Target(
        headers={"lightstep-access-token": token},
        default_endpoint={GRPC: "https://ingest.lightstep.com:443"},
    )


def _dynatrace(env: Mapping[str, str]) -> Target:
    token = _require(
        env,
        "DT_API_TOKEN",
        "a Dynatrace API token with the openTelemetryTrace.ingest scope",
        "from Dynatrace > Access tokens",
    )
    return Target(
        headers={"authorization": f"Api-Token {token}"},
        endpoint=_from_var(env, "DT_API_URL", grpc=False),
        required_endpoint_var="DT_API_URL",
    )


def _signoz(env: Mapping[str, str]) -> Target:
    key = _require(
        env,
        "SIGNOZ_INGESTION_KEY",
        "a SigNoz Cloud ingestion key",
        "from SigNoz > Settings > Ingestion",
    )
    raw_region = _get(env, "SIGNOZ_REGION")
    region = (raw_region or "us").lower()
    if region not in ("us", "eu", "in"):
        raise ConfigError(
            f"SIGNOZ_REGION={raw_region!r} is not a SigNoz Cloud region; accepted: us, eu, in"
        )
    base = f"https://ingest.{region}.signoz.cloud:443"
    return Target(headers={"signoz-ingestion-key": key}, default_endpoint=_both(base, base))


def _axiom(env: Mapping[str, str]) -> Target:
    token = _require(
        env,
        "AXIOM_TOKEN",
        "an Axiom API token allowed to ingest into the dataset",
        "from Axiom > Settings > API tokens",
    )
    dataset = _require(
        env,
        "AXIOM_DATASET",
        "the name of the Axiom dataset that receives the traces",
        "a dataset created for OpenTelemetry traces",
    )
    return Target(
        headers={"authorization": f"Bearer {token}", "x-axiom-dataset": dataset},
        endpoint=_from_var(env, "AXIOM_URL", grpc=False),
        default_endpoint={HTTP: "https://api.axiom.co"},
    )


def _elastic(env: Mapping[str, str]) -> Target:
    secret = _get(env, "ELASTIC_APM_SECRET_TOKEN")
    api_key = _get(env, "ELASTIC_APM_API_KEY")
    if secret is None and api_key is None:
        raise ConfigError(
            "neither ELASTIC_APM_SECRET_TOKEN nor ELASTIC_APM_API_KEY is set; set "
            "one of them (the APM Server's secret token or an API key) from Kibana > "
            "Observability > APM > Settings"
        )
    auth = f"ApiKey {api_key}" if api_key is not None else f"Bearer {secret}"
    return Target(
        headers={"authorization": auth},
        endpoint=_from_var(env, "ELASTIC_APM_SERVER_URL"),
        required_endpoint_var="ELASTIC_APM_SERVER_URL",
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("datadog", "Datadog Agent", BOTH, _datadog),
        Preset("newrelic", "New Relic", BOTH, _newrelic),
        Preset("honeycomb", "Honeycomb", BOTH, _honeycomb),
        Preset("grafana", "Grafana Cloud", HTTP_ONLY, _grafana),
        # Its OTLP logs intake is not documented for this endpoint: spans only.
        Preset(
            "lightstep",
            "ServiceNow Cloud Observability (Lightstep)",
            (GRPC,),
            _lightstep,
            logs=False,
            metrics=False,
        ),
        Preset("dynatrace", "Dynatrace", HTTP_ONLY, _dynatrace),
        Preset("signoz", "SigNoz Cloud", BOTH, _signoz),
        Preset("axiom", "Axiom", HTTP_ONLY, _axiom),
        Preset("elastic", "Elastic APM", BOTH, _elastic),
    )
}

_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def create_vendor_backend(
    name: str, config: TracingConfig, *, environ: Mapping[str, str] | None = None
) -> OtlpBackend:
    """
    Build the preset ``name`` from the config and the environment.

    Raises:
        ConfigError: a variable the preset needs is missing (named, with where to find
            its value) or malformed.
    """
    env = os.environ if environ is None else environ
    preset = PRESETS[name]
    target = preset.read(env)
    overridden = bool(config.collector_endpoint) or any(_get(env, v) for v in _ENDPOINT_VARS)
    if target.required_endpoint_var and target.endpoint is None and not overridden:
        raise ConfigError(
            f"{target.required_endpoint_var} is not set; it holds the {preset.title} "
            "OTLP endpoint URL (or set OTEL_EXPORTER_OTLP_ENDPOINT)"
        )
    return create_otlp_backend(
        config,
        name=name,
        endpoint=target.endpoint,
        default_endpoint=target.default_endpoint,
        headers=target.headers,
        default_protocol=preset.protocols[0],
        protocols=preset.protocols,
        environ=env,
        logs=preset.logs,
        metrics=preset.metrics,
    )
