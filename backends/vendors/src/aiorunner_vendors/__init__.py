"""
aiorunner-vendors: OTLP presets for observability vendors, built on aiorunner-otlp.

Entry points (group ``aiorunner.backends``): ``datadog``, ``newrelic``, ``honeycomb``,
``grafana``, ``lightstep``, ``dynatrace``, ``signoz``, ``axiom`` and ``elastic``. Each reads
its vendor's usual variables (see :mod:`aiorunner_vendors._presets` or the README), fails
with a :class:`aiorunner.ConfigError` naming the variable that is missing, and sends plain
OTLP with the vendor's auth header, whose value is never logged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._presets import PRESETS, Preset, create_vendor_backend

if TYPE_CHECKING:
    from aiorunner_otlp import OtlpBackend

    from aiorunner.backend import TracingConfig

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "Preset",
    "__version__",
    "create_axiom_backend",
    "create_datadog_backend",
    "create_dynatrace_backend",
    "create_elastic_backend",
    "create_grafana_backend",
    "create_honeycomb_backend",
    "create_lightstep_backend",
    "create_newrelic_backend",
    "create_signoz_backend",
    "create_vendor_backend",
]


def create_datadog_backend(config: TracingConfig) -> OtlpBackend:
    """``datadog``: OTLP to the local Datadog Agent (DD_AGENT_HOST); no key needed."""
    return create_vendor_backend("datadog", config)


def create_newrelic_backend(config: TracingConfig) -> OtlpBackend:
    """``newrelic``: New Relic's OTLP endpoint, api-key from NEW_RELIC_LICENSE_KEY."""
    return create_vendor_backend("newrelic", config)


def create_honeycomb_backend(config: TracingConfig) -> OtlpBackend:
    """``honeycomb``: x-honeycomb-team from HONEYCOMB_API_KEY."""
    return create_vendor_backend("honeycomb", config)


def create_grafana_backend(config: TracingConfig) -> OtlpBackend:
    """``grafana``: the Grafana Cloud OTLP gateway with basic auth."""
    return create_vendor_backend("grafana", config)


def create_lightstep_backend(config: TracingConfig) -> OtlpBackend:
    """``lightstep``: ServiceNow Cloud Observability, lightstep-access-token."""
    return create_vendor_backend("lightstep", config)


def create_dynatrace_backend(config: TracingConfig) -> OtlpBackend:
    """``dynatrace``: DT_API_URL with an Api-Token from DT_API_TOKEN."""
    return create_vendor_backend("dynatrace", config)


def create_signoz_backend(config: TracingConfig) -> OtlpBackend:
    """``signoz``: SigNoz Cloud, signoz-ingestion-key from SIGNOZ_INGESTION_KEY."""
    return create_vendor_backend("signoz", config)


def create_axiom_backend(config: TracingConfig) -> OtlpBackend:
    """``axiom``: Axiom with AXIOM_TOKEN and AXIOM_DATASET."""
    return create_vendor_backend("axiom", config)


def create_elastic_backend(config: TracingConfig) -> OtlpBackend:
    """``elastic``: an Elastic APM Server (ELASTIC_APM_SERVER_URL) with its token or key."""
    return create_vendor_backend("elastic", config)
