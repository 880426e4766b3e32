"""
Find exporter backends by name, lazily, through entry points.

Two entry point groups are searched, in this order:

- ``aiorunner.backends``: ``name = "package.module:factory"``, where ``factory(config)``
  returns an async :class:`~aiorunner.backend.Backend` or a sync OpenTelemetry
  ``SpanExporter``;
- ``opentelemetry_traces_exporter``: OpenTelemetry's own group (what the SDK consults for
  ``OTEL_TRACES_EXPORTER``), whose entries are exporter classes constructed with no
  arguments. Any exporter installed there works by its name, with no adapter.

Nothing is scanned or imported until a backend is needed: ``import aiorunner`` stays cheap
and never imports grpc. The scan of a group is cached for the life of the process
(:func:`clear_cache` forgets it, for tests that install a plugin on the fly).

Errors, decided here and documented in the README:

- an unknown name raises :class:`UnknownBackendError` listing the installed names and, for
  well-known ones, the pip package that provides it;
- a factory raising :class:`ConfigError` (a missing API key variable, a bad endpoint) is a
  configuration mistake: it propagates, prefixed with the backend's name;
- a plugin that fails to import or raises anything else while being built is a broken
  install: :class:`BackendError` names it and its distribution. ``Session`` logs it and
  keeps going with the other backends, reporting the broken one as failed in every
  ``ExportReport``.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._config import OTEL_TRACES_EXPORTER, EnvProblem, otlp_endpoint_variable, report_env_problem
from .._exceptions import BackendError, ConfigError, UnknownBackendError, option_name

if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.metadata import EntryPoint

    from opentelemetry.sdk.trace import ReadableSpan

    from .._config import TracingConfig
    from ..backend import ExportResult

__all__ = [
    "AIORUNNER_GROUP",
    "BUILTIN",
    "OTEL_GROUP",
    "BackendInfo",
    "backend_names",
    "clear_cache",
    "create_none_backend",
    "describe_entry_point",
    "find_entry_point",
    "installed_names",
    "list_backends",
    "load_backend",
    "load_log_exporter",
    "load_metric_exporter",
    "log_exporter_installed",
]

AIORUNNER_GROUP = "aiorunner.backends"
OTEL_GROUP = "opentelemetry_traces_exporter"
#: OpenTelemetry's group of log exporters (``OTEL_LOGS_EXPORTER``): classes whose sync
#: ``export`` takes the SDK's log records.
OTEL_LOGS_GROUP = "opentelemetry_logs_exporter"
#: OpenTelemetry's group of metric exporters (``OTEL_METRICS_EXPORTER``).
OTEL_METRICS_GROUP = "opentelemetry_metrics_exporter"

#: The core's own backends. Registered as entry points too (``aiorunner backends`` lists
#: them), but resolved from this table: the embedded default then needs no scan of every
#: installed distribution's metadata (importlib.metadata and its email parser, ~10 ms of
#: a CLI start). A plugin cannot take over these names.
BUILTIN: dict[str, tuple[str, str]] = {
    "jsonl": ("aiorunner._export.jsonl", "create_backend"),
    "console": ("aiorunner._export.console", "create_backend"),
    "none": ("aiorunner._export.registry", "create_none_backend"),
    "memory": ("aiorunner.testing", "create_backend"),
}

logger = logging.getLogger("aiorunner.export")

# Well-known names that may not be installed, and the pip package that provides each.
_OTLP = "aiorunner-otlp (pip install 'aiorunner[otlp]')"
_VENDORS = "aiorunner-vendors (pip install 'aiorunner[vendors]')"
WELL_KNOWN: dict[str, str] = {
    "otlp": _OTLP,
    "otlp_grpc": _OTLP,
    "otlp_http": _OTLP,
    "jaeger": _OTLP,
    "tempo": _OTLP,
    "zipkin": "aiorunner-zipkin (pip install 'aiorunner[zipkin]')",
    "datadog": _VENDORS,
    "newrelic": _VENDORS,
    "honeycomb": _VENDORS,
    "grafana": _VENDORS,
    "lightstep": _VENDORS,
    "dynatrace": _VENDORS,
    "signoz": _VENDORS,
    "axiom": _VENDORS,
    "elastic": _VENDORS,
    "otlp_proto_grpc": "opentelemetry-exporter-otlp-proto-grpc",
    "otlp_proto_http": "opentelemetry-exporter-otlp-proto-http",
    "zipkin_json": "opentelemetry-exporter-zipkin-json",
    "zipkin_proto": "opentelemetry-exporter-zipkin-proto-http",
    "gcp_trace": "opentelemetry-exporter-gcp-trace",
}


def _entry_points_module() -> Any:
    """OpenTelemetry's cached ``entry_points()`` when the API has it, else the stdlib's.

    Why: reading every installed distribution's entry points costs a few ms, and the
    OpenTelemetry API has already done it once (to load its context implementation) in
    any process that traces: sharing its cache makes our lookup free.
    """
    try:
        from opentelemetry.util import _importlib_metadata as shared
    except ImportError:  # an API older than the cache
        import importlib.metadata as shared  # type: ignore[no-redef]
    return shared


@functools.cache
def _group(group: str) -> tuple[EntryPoint, ...]:
    return tuple(_entry_points_module().entry_points(group=group))


def clear_cache() -> None:
    """Forget the cached entry point scans (after installing a plugin at run time)."""
    _group.cache_clear()
    cached = getattr(_entry_points_module(), "_original_entry_points_cached", None)
    if cached is not None:
        cached.cache_clear()


def _catalog() -> dict[str, list[EntryPoint]]:
    """Every name, with its entry points in lookup order (ours before OpenTelemetry's)."""
    catalog: dict[str, list[EntryPoint]] = {}
    for group in (AIORUNNER_GROUP, OTEL_GROUP):
        for ep in _group(group):
            catalog.setdefault(ep.name, []).append(ep)
    return catalog


def installed_names() -> tuple[str, ...]:
    """The names of every installed backend, sorted."""
    return tuple(sorted(_catalog()))


def _distribution(ep: EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    try:
        return dist.metadata["Name"], dist.version
    except Exception:  # noqa: BLE001 - broken metadata: show what we can
        return None, None


def describe_entry_point(ep: EntryPoint) -> str:
    """``'name' (package 1.2, group aiorunner.backends)`` for error messages."""
    name, version = _distribution(ep)
    where = f"{name} {version}" if name and version else (name or "unknown distribution")
    return f"{ep.name!r} ({where}, entry point {ep.value} in group {ep.group})"


def _unknown(name: str) -> UnknownBackendError:
    installed = installed_names()
    listing = ", ".join(installed) if installed else "none"
    if name in WELL_KNOWN:
        message = (
            f"backend {name!r} is not installed; it is provided by {WELL_KNOWN[name]}. "
            f"Installed backends: {listing}"
        )
    else:
        import difflib

        message = f"unknown backend {name!r}; installed: {listing}"
        candidates = list(dict.fromkeys([*installed, *WELL_KNOWN]))
        close = difflib.get_close_matches(name, candidates, n=3)
        if close:
            message += f" (did you mean {' or '.join(repr(c) for c in close)}?)"
        known = sorted(set(WELL_KNOWN) - set(installed))
        message += (
            f". Other well-known names, once their package is installed: {', '.join(known)}"
            if known
            else ""
        )
    message += (
        f". Set OTEL_TRACES_EXPORTER (or {option_name('TracingConfig(exporter_type=...)')}) "
        "to one of them."
    )
    return UnknownBackendError(message, name=name, known=installed)


def find_entry_point(name: str) -> EntryPoint:
    """
    The entry point a backend name resolves to (``aiorunner.backends`` wins over
    OpenTelemetry's group when both have the name).

    Raises:
        UnknownBackendError: no installed backend has that name.
    """
    found = _catalog().get(name)
    if not found:
        raise _unknown(name)
    return found[0]


def _installed(name: str) -> bool:
    return name in BUILTIN or name in _catalog()


def backend_names(config: TracingConfig) -> tuple[str, ...]:
    """
    The backends a session of the resolved ``config`` loads, in order.

    Names given in code (``exporter_type``) are kept as they are: an unknown one raises
    :class:`UnknownBackendError` when it is loaded. Names from ``OTEL_TRACES_EXPORTER``
    follow the specification ("if the user provides a value the implementation does not
    recognize, the implementation MUST generate a warning and gracefully ignore the
    setting"): each one that is not installed is reported once
    (:func:`~aiorunner._config.report_env_problem`: the name, the package that provides it
    when it is a well-known one, what is used instead) and the others still export; when
    none is left, the default applies. The ``otlp`` default that an OTLP endpoint selects
    falls back to ``jsonl`` when ``aiorunner-otlp`` is not installed, also with a warning.
    """
    names = tuple(dict.fromkeys(config.exporters))
    source = config.sources.get("exporter_type", "")
    if source == "argument" or not names:
        return names
    if source.startswith("env"):
        kept = tuple(name for name in names if _installed(name))
        missing = [name for name in names if name not in kept]
        if not missing:
            return names
        default = _default_names()
        instead = ",".join(kept) if kept else f"the default {','.join(default)}"
        # One problem for the variable's value (warned once), naming every missing name.
        report_env_problem(
            EnvProblem(
                OTEL_TRACES_EXPORTER,
                ",".join(names),
                "; and ".join(_missing_reason(name) for name in missing),
                instead,
                "; ".join(_missing_fix(name) for name in missing),
            )
        )
        return kept or default
    if names == ("otlp",) and not _installed("otlp"):
        # The default an OTLP endpoint variable chose (see TracingConfig).
        var = otlp_endpoint_variable(os.environ) or "OTEL_EXPORTER_OTLP_ENDPOINT"
        report_env_problem(
            EnvProblem(
                var,
                os.environ.get(var, ""),
                "selects the otlp exporter (the specification's default when an OTLP "
                f"endpoint is set), which is not installed: it is provided by {_OTLP}",
                "the embedded jsonl file",
                f"install {_OTLP}, or name the exporter in {OTEL_TRACES_EXPORTER}",
            )
        )
        return ("jsonl",)
    return names


def _default_names() -> tuple[str, ...]:
    """What an unset OTEL_TRACES_EXPORTER means here and now."""
    if otlp_endpoint_variable(os.environ) is not None and _installed("otlp"):
        return ("otlp",)
    return ("jsonl",)


def _missing_reason(name: str) -> str:
    if name in WELL_KNOWN:
        return f"names {name!r}, which is not installed: it is provided by {WELL_KNOWN[name]}"
    import difflib

    installed = installed_names()
    reason = f"names {name!r}, which is no installed backend (installed: {', '.join(installed)})"
    close = difflib.get_close_matches(name, list(dict.fromkeys([*installed, *WELL_KNOWN])), n=3)
    if close:
        reason += f"; did you mean {' or '.join(repr(c) for c in close)}?"
    return reason


def _missing_fix(name: str) -> str:
    remove = f"remove {name!r} from OTEL_TRACES_EXPORTER"
    if name in WELL_KNOWN:
        return f"install {WELL_KNOWN[name]}, or {remove}"
    return f"{remove} (`aiorunner backends` lists the installed names)"


def load_backend(name: str, config: TracingConfig) -> Any:
    """
    Import and build the backend called ``name``: the object its factory returns (an
    async ``Backend`` or a sync ``SpanExporter``).

    Raises:
        UnknownBackendError: no backend of that name is installed.
        ConfigError: the factory rejected the configuration (its message is kept).
        BackendError: the plugin failed to import or to construct.
    """
    builtin = BUILTIN.get(name)
    if builtin is not None:
        import importlib

        factory = getattr(importlib.import_module(builtin[0]), builtin[1])
        try:
            return factory(config)
        except ConfigError as exc:
            raise ConfigError(f"backend {name!r}: {exc}") from exc
    ep = find_entry_point(name)
    # describe_entry_point() reads the distribution's metadata files: only on errors.
    try:
        target = ep.load()
    except Exception as exc:
        raise BackendError(
            f"backend {describe_entry_point(ep)} failed to import: {type(exc).__name__}: "
            f"{exc}. Reinstall or upgrade that package, or remove it from "
            "OTEL_TRACES_EXPORTER."
        ) from exc
    try:
        if ep.group == OTEL_GROUP:
            # OpenTelemetry's convention: the entry point is the exporter class itself.
            return target()
        return target(config)
    except ConfigError as exc:
        raise ConfigError(f"backend {name!r}: {exc}") from exc
    except Exception as exc:
        raise BackendError(
            f"backend {describe_entry_point(ep)} failed to construct: {type(exc).__name__}: {exc}"
        ) from exc


def log_exporter_installed(name: str) -> bool:
    """True when ``name`` is an installed backend (ours or OpenTelemetry's traces group),
    or an OpenTelemetry log exporter."""
    return _installed(name) or any(ep.name == name for ep in _group(OTEL_LOGS_GROUP))


def _load_signal_exporter(group: str, name: str, kind: str, variable: str, field: str) -> Any:
    """OpenTelemetry's ``kind`` exporter ``name`` from entry point ``group`` (a class
    constructed with no arguments); errors name ``variable`` / ``TracingConfig(field=)``."""
    found = [ep for ep in _group(group) if ep.name == name]
    if not found:
        names = sorted({*installed_names(), *(ep.name for ep in _group(group))})
        raise UnknownBackendError(
            f"unknown {kind}s exporter {name!r}; installed: {', '.join(names)}. Set "
            f"{variable} (or TracingConfig({field}=...)) to one of them",
            name=name,
            known=tuple(names),
        )
    ep = found[0]
    try:
        return ep.load()()
    except Exception as exc:
        raise BackendError(
            f"{kind} exporter {describe_entry_point(ep)} failed to load: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def load_log_exporter(name: str) -> Any:
    """
    Build OpenTelemetry's log exporter called ``name`` (group
    ``opentelemetry_logs_exporter``: a class constructed with no arguments).

    Raises:
        UnknownBackendError: no log exporter of that name is installed.
        BackendError: it failed to import or to construct.
    """
    return _load_signal_exporter(
        OTEL_LOGS_GROUP, name, "log", "OTEL_LOGS_EXPORTER", "logs_exporter"
    )


def load_metric_exporter(name: str) -> Any:
    """
    Build OpenTelemetry's metric exporter called ``name`` (group
    ``opentelemetry_metrics_exporter``: a class constructed with no arguments).

    Raises:
        UnknownBackendError: no metric exporter of that name is installed.
        BackendError: it failed to import or to construct.
    """
    return _load_signal_exporter(
        OTEL_METRICS_GROUP, name, "metric", "OTEL_METRICS_EXPORTER", "metrics_exporter"
    )


@dataclass(frozen=True)
class BackendInfo:
    """One installed backend name, where it comes from, and whether it imports."""

    name: str
    group: str
    value: str
    distribution: str | None
    version: str | None
    loads: bool
    error: str | None = None
    #: The name also exists in an earlier group, which wins: this entry is never used.
    shadowed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "group": self.group,
            "value": self.value,
            "distribution": self.distribution,
            "version": self.version,
            "loads": self.loads,
            "error": self.error,
            "shadowed": self.shadowed,
        }


def list_backends(*, check: bool = True) -> list[BackendInfo]:
    """
    Every installed backend entry point, sorted by name (the one used first), with its
    distribution and whether it imports (``check=False`` skips the import).
    """
    infos: list[BackendInfo] = []
    for name, eps in sorted(_catalog().items()):
        for index, ep in enumerate(eps):
            dist, version = _distribution(ep)
            loads, error = True, None
            if check:
                try:
                    ep.load()
                except Exception as exc:  # noqa: BLE001 - reported, not raised
                    loads, error = False, f"{type(exc).__name__}: {exc}"
            elif index:
                loads = False
            infos.append(
                BackendInfo(
                    name=name,
                    group=ep.group,
                    value=ep.value,
                    distribution=dist,
                    version=version,
                    loads=loads,
                    error=error,
                    shadowed=index > 0,
                )
            )
    return infos


class NoneBackend:
    """The ``none`` backend: accepts every span and keeps none (export turned off)."""

    name = "none"

    async def export(self, spans: Sequence[ReadableSpan], *, timeout: float) -> ExportResult:
        from ..backend import ExportResult

        return ExportResult.success()

    async def force_flush(self, *, timeout: float) -> bool:
        return True

    async def shutdown(self, *, timeout: float) -> None:
        return None


def create_none_backend(config: TracingConfig) -> NoneBackend:
    """Entry point ``none``. ``OTEL_TRACES_EXPORTER=none`` turns tracing off before any
    backend is loaded; this factory exists so that the name is listed and loadable."""
    return NoneBackend()
