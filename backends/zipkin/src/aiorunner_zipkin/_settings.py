"""
Where the Zipkin backend sends: ``ZipkinSettings`` from the config and the OTEL_* variables.

``OTEL_EXPORTER_ZIPKIN_ENDPOINT`` is the full URL (default
``http://localhost:9411/api/v2/spans``); ``OTEL_EXPORTER_ZIPKIN_TIMEOUT`` is in milliseconds,
as the OpenTelemetry specification says (the Python SDK's exporter reads seconds), and
``0`` means no limit. An explicit ``collector_endpoint`` wins; without a path it gets
``/api/v2/spans``.

A variable that cannot be used is ignored as the specification asks: one WARNING
(``aiorunner.backend.report_env_problem``) names it, the default used instead and the fix.
A bad ``collector_endpoint`` (given in code or on the command line) raises.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from aiorunner.backend import ConfigError, EnvProblem, TracingConfig, report_env_problem

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["DEFAULT_ENDPOINT", "ZipkinSettings", "resolve_settings"]

OTEL_EXPORTER_ZIPKIN_ENDPOINT = "OTEL_EXPORTER_ZIPKIN_ENDPOINT"
OTEL_EXPORTER_ZIPKIN_TIMEOUT = "OTEL_EXPORTER_ZIPKIN_TIMEOUT"

DEFAULT_ENDPOINT = "http://localhost:9411/api/v2/spans"
DEFAULT_TIMEOUT = 10.0
#: A Timeout of 0 means no limit: the largest 32-bit number of milliseconds, in seconds.
NO_LIMIT = (2**31 - 1) / 1000.0
SPANS_PATH = "/api/v2/spans"

#: Ports that speak OTLP, not Zipkin: a frequent copy-paste mistake.
_OTLP_PORTS = {4317: "OTLP/gRPC", 4318: "OTLP/HTTP"}


@dataclass(frozen=True)
class ZipkinSettings:
    """The resolved endpoint and timeout; ``sources`` says where each came from."""

    endpoint: str = DEFAULT_ENDPOINT
    timeout: float = DEFAULT_TIMEOUT
    service_name: str = "aiorunner"
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)


def redact_url(url: str) -> str:
    """The URL with any ``user:password@`` replaced by ``[secure]@``, for messages."""
    return re.sub(r"(?<=//)[^/@]*@", "[secure]@", url)


def _check(source: str, raw: str, *, add_path: bool) -> str:
    candidate = raw.strip()
    if "://" not in candidate:
        candidate = "http://" + candidate
    parts = urlsplit(candidate)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{source}={redact_url(raw)!r} has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{source}={raw!r} is not a valid Zipkin endpoint; use a URL such as {DEFAULT_ENDPOINT}"
        )
    if port in _OTLP_PORTS:
        raise ConfigError(
            f"{source}={redact_url(raw)!r} is the standard {_OTLP_PORTS[port]} port: the zipkin "
            "backend sends Zipkin v2 JSON (port 9411, path /api/v2/spans); for OTLP use the "
            "otlp backend (pip install aiorunner-otlp)"
        )
    path = parts.path
    if path.rstrip("/").endswith("/api/v1/spans"):
        raise ConfigError(
            f"{source}={redact_url(raw)!r} is Zipkin's v1 API; this backend sends v2 JSON: "
            f"use the path {SPANS_PATH}"
        )
    if add_path and path in ("", "/"):
        path = SPANS_PATH
    return urlunsplit((parts.scheme, parts.netloc, path or "/", parts.query, ""))


def resolve_settings(
    config: TracingConfig, *, environ: Mapping[str, str] | None = None
) -> ZipkinSettings:
    """
    Resolve the Zipkin backend's settings.

    Raises:
        ConfigError: ``collector_endpoint`` is malformed, an OTLP port or Zipkin's v1 API;
            the message names it and the fix.
    """
    env = os.environ if environ is None else environ
    sources: dict[str, str] = {}
    raw_env = env.get(OTEL_EXPORTER_ZIPKIN_ENDPOINT, "").strip()
    endpoint, sources["endpoint"] = DEFAULT_ENDPOINT, "default"
    if config.collector_endpoint:
        endpoint = _check("collector_endpoint", config.collector_endpoint, add_path=True)
        sources["endpoint"] = "collector_endpoint"
    elif raw_env:
        try:
            endpoint = _check(OTEL_EXPORTER_ZIPKIN_ENDPOINT, raw_env, add_path=False)
            sources["endpoint"] = f"env {OTEL_EXPORTER_ZIPKIN_ENDPOINT}"
        except ConfigError as exc:
            prefix = f"{OTEL_EXPORTER_ZIPKIN_ENDPOINT}={raw_env!r} "
            text = str(exc)
            for start in (prefix, f"{OTEL_EXPORTER_ZIPKIN_ENDPOINT}={redact_url(raw_env)!r} "):
                text = text.removeprefix(start)
            report_env_problem(
                EnvProblem(
                    OTEL_EXPORTER_ZIPKIN_ENDPOINT,
                    redact_url(raw_env),
                    text,
                    f"the default {DEFAULT_ENDPOINT}",
                    f"set {OTEL_EXPORTER_ZIPKIN_ENDPOINT} to a Zipkin v2 URL such as "
                    f"{DEFAULT_ENDPOINT}, or unset it",
                )
            )

    timeout, sources["timeout"] = DEFAULT_TIMEOUT, "default"
    raw_timeout = env.get(OTEL_EXPORTER_ZIPKIN_TIMEOUT, "").strip()
    if raw_timeout:
        try:
            millis = float(raw_timeout)
        except ValueError:
            millis = -1.0
        if 0 <= millis < float("inf"):
            timeout = millis / 1000.0 if millis else NO_LIMIT
            sources["timeout"] = f"env {OTEL_EXPORTER_ZIPKIN_TIMEOUT}"
        else:
            report_env_problem(
                EnvProblem(
                    OTEL_EXPORTER_ZIPKIN_TIMEOUT,
                    raw_timeout,
                    "is not a non-negative number of milliseconds",
                    f"the default {DEFAULT_TIMEOUT * 1000:g} ms",
                    f"set {OTEL_EXPORTER_ZIPKIN_TIMEOUT} to a number of milliseconds such as "
                    "10000 (0 means no limit), or unset it",
                )
            )
    return ZipkinSettings(
        endpoint=endpoint,
        timeout=timeout,
        service_name=config.service_name or "aiorunner",
        sources=sources,
    )
