"""
aiorunner-otlp: OTLP exporter backends for aiorunner (gRPC and HTTP/protobuf).

Entry points (group ``aiorunner.backends``): ``otlp``, ``otlp_grpc``, ``otlp_http``,
``jaeger`` and ``tempo``. Each factory takes the session's ``TracingConfig`` and returns an
async :class:`OtlpBackend` whose ``export`` says *why* a batch failed (retryable or
permanent, with the server's ``Retry-After``), so the aiorunner pipeline can retry within
its deadline; the OpenTelemetry SDK's exporters retry on their own and only return FAILURE.

The payload is exactly OTLP, encoded by ``opentelemetry-exporter-otlp-proto-common``;
settings follow the specification's ``OTEL_EXPORTER_OTLP_*`` variables (see
:func:`resolve_settings`). Presets (``aiorunner-vendors``) build on
:func:`create_otlp_backend`.
"""

from __future__ import annotations

from ._backend import OtlpBackend, OtlpStatistics
from ._factories import (
    create_backend,
    create_grpc_backend,
    create_http_backend,
    create_jaeger_backend,
    create_otlp_backend,
    create_tempo_backend,
)
from ._settings import (
    COMPRESSIONS,
    DEFAULT_GRPC_ENDPOINT,
    DEFAULT_HTTP_ENDPOINT,
    PROTOCOLS,
    OtlpSettings,
    parse_headers,
    resolve_settings,
)
from ._version import __version__

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_GRPC_ENDPOINT",
    "DEFAULT_HTTP_ENDPOINT",
    "PROTOCOLS",
    "OtlpBackend",
    "OtlpSettings",
    "OtlpStatistics",
    "__version__",
    "create_backend",
    "create_grpc_backend",
    "create_http_backend",
    "create_jaeger_backend",
    "create_otlp_backend",
    "create_tempo_backend",
    "parse_headers",
    "resolve_settings",
]
