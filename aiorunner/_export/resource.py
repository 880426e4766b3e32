"""
The Resource of a session's telemetry: who made it, as the SDK's resource detectors say.

Always (no I/O, once per process): ``telemetry.sdk.*``; ``service.instance.id`` (the SDK's
``service_instance`` detector: a random UUID per process, new after a fork); ``os.type``
and ``os.version`` (its ``os`` detector); ``host.name`` and ``host.arch`` and
``process.runtime.name/version/description``, worked out as its ``host`` and
``process`` detectors do. Those two detectors also read files (``/etc/machine-id`` for
``host.id``; ``/proc`` for ``process.owner``) and describe the runner's own process
(``process.pid``, ``process.command``): they run in full only when named.

``OTEL_EXPERIMENTAL_RESOURCE_DETECTORS`` names more detectors (entry point group
``opentelemetry_resource_detector``: ``host``, ``process``, ``aws_ec2``, ``azure_vm``, ...,
or ``*`` for every one installed), run as the SDK runs them (a thread each, 5 s at most),
once per process. ``otel`` (``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME``) is
always applied, last, by ``TracingConfig``. A name that is not installed is one WARNING
(the value, what is used, the fix), and the others are used.

Why not ``Resource.create()``: it joins a thread pool (a blocking call when a session is
made from async code) for detectors whose work ``TracingConfig`` has already done.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import sys
import threading
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.resources import (
    OsResourceDetector,
    Resource,
    ServiceInstanceIdResourceDetector,
)

from .._config import EnvProblem, report_env_problem

if TYPE_CHECKING:
    from collections.abc import Mapping

    from opentelemetry.sdk.resources import ResourceDetector

__all__ = [
    "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS",
    "check_detectors",
    "detected_resource",
    "make_resource",
]

logger = logging.getLogger("aiorunner.config")

OTEL_EXPERIMENTAL_RESOURCE_DETECTORS = "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS"

#: Detectors whose attributes are there without being named (``host`` and ``process``
#: only in part, see the module docstring), and ``otel``, which TracingConfig applies.
_ALWAYS = frozenset({"service_instance", "os", "otel"})

_lock = threading.Lock()
_cache: dict[tuple[int, str], Resource] = {}


def _runtime_version() -> str:
    # As the SDK's ProcessResourceDetector writes it: 3.11.9, or 3.13.0.candidate.1.
    info = sys.version_info
    parts = info[:3] if info.releaselevel == "final" and not info.serial else info
    return ".".join(map(str, parts))


def _always() -> dict[str, Any]:
    from opentelemetry.sdk.version import __version__ as sdk_version

    attributes: dict[str, Any] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": sdk_version,
        "host.name": socket.gethostname(),
        "host.arch": platform.machine(),
        "process.runtime.name": sys.implementation.name,
        "process.runtime.version": _runtime_version(),
        "process.runtime.description": sys.version,
    }
    for detector in (ServiceInstanceIdResourceDetector(), OsResourceDetector()):
        attributes.update(detector.detect().attributes)
    return attributes


def check_detectors(raw: str) -> list[str]:
    """The detector names ``raw`` (a value of ``OTEL_EXPERIMENTAL_RESOURCE_DETECTORS``)
    lists, ``*`` expanded, in order; a name not installed is reported
    (``report_env_problem``: one WARNING per process, and ``aiorunner doctor``'s list)
    and left out."""
    names = list(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))
    if not names:
        return []  # no entry point scan (~10 ms) when none is named
    from opentelemetry.util._importlib_metadata import entry_points

    installed = set(entry_points(group="opentelemetry_resource_detector").names)
    if "*" in names:
        at = names.index("*")
        names[at : at + 1] = sorted(installed - set(names) - _ALWAYS)
    missing = [n for n in names if n not in installed]
    if missing:
        used = [n for n in names if n not in missing]
        plural = "s" if len(missing) > 1 else ""
        report_env_problem(
            EnvProblem(
                OTEL_EXPERIMENTAL_RESOURCE_DETECTORS,
                raw,
                f"names unknown resource detector{plural} {', '.join(map(repr, missing))} "
                f"(installed: {', '.join(sorted(installed))})",
                ",".join(used) or "the default detectors",
                "install the package that provides it, or remove the name from "
                f"{OTEL_EXPERIMENTAL_RESOURCE_DETECTORS}",
            )
        )
    return [n for n in names if n not in missing]


def _named(raw: str) -> list[ResourceDetector]:
    """The detectors ``raw`` names beyond those always run, loaded by entry point."""
    names = check_detectors(raw)
    if not names:
        return []
    from opentelemetry.util._importlib_metadata import entry_points

    detectors: list[ResourceDetector] = []
    for name in names:
        if name in _ALWAYS:
            continue
        try:
            [entry_point] = entry_points(group="opentelemetry_resource_detector", name=name)
            detectors.append(entry_point.load()())
        except Exception as exc:  # noqa: BLE001 - a broken plugin: told, then the others
            logger.warning(
                "%s=%s: resource detector %r failed to load (%s: %s); it is left out",
                OTEL_EXPERIMENTAL_RESOURCE_DETECTORS,
                raw,
                name,
                type(exc).__name__,
                exc,
            )
    return detectors


def detected_resource(environ: Mapping[str, str] | None = None) -> Resource:
    """What the detectors found, once per process (and per fork: a child gets its own
    ``service.instance.id``) and per value of ``OTEL_EXPERIMENTAL_RESOURCE_DETECTORS``.
    Named detectors may do I/O: make sessions off the event loop when naming them."""
    raw = (os.environ if environ is None else environ).get(OTEL_EXPERIMENTAL_RESOURCE_DETECTORS, "")
    key = (os.getpid(), raw)
    found = _cache.get(key)
    if found is not None:
        return found
    with _lock:
        found = _cache.get(key)
        if found is None:
            found = Resource(_always())
            detectors = _named(raw)
            if detectors:
                from opentelemetry.sdk.resources import get_aggregated_resources

                found = get_aggregated_resources(detectors, found)
            _cache[key] = found
    return found


def make_resource(attributes: Mapping[str, Any]) -> Resource:
    """The detected resource with ``attributes`` (the resolved ``OTEL_RESOURCE_ATTRIBUTES``
    and ``service.name``) over it."""
    return detected_resource().merge(Resource(dict(attributes)))
