"""
aiorunner-zipkin: the ``zipkin`` exporter backend for aiorunner (Zipkin v2 JSON over HTTP).

Entry point (group ``aiorunner.backends``): ``zipkin``. Configure it with
``OTEL_EXPORTER_ZIPKIN_ENDPOINT`` (default ``http://localhost:9411/api/v2/spans``) and
``OTEL_EXPORTER_ZIPKIN_TIMEOUT`` (milliseconds), or ``TracingConfig.collector_endpoint``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._backend import ZipkinBackend
from ._settings import DEFAULT_ENDPOINT, ZipkinSettings, resolve_settings

if TYPE_CHECKING:
    from aiorunner.backend import TracingConfig

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_ENDPOINT",
    "ZipkinBackend",
    "ZipkinSettings",
    "__version__",
    "create_backend",
    "resolve_settings",
]


def create_backend(config: TracingConfig) -> ZipkinBackend:
    """
    ``zipkin``: build the backend from the session's config and the environment.

    Raises:
        ConfigError: the endpoint or timeout is malformed (the message names the variable).
    """
    return ZipkinBackend("zipkin", resolve_settings(config))
