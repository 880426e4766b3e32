"""
``aiorunner doctor``: would traces arrive, and if not, what exactly to change.

The seed's "No Traces Appearing" checklist, automated: the effective configuration and
where each value came from (secrets masked), the environment values that were ignored (a
run warns about each once and goes on with the default; here each is a problem), which
rule chose the exporters, the installed backends and whether each imports, then for every
configured backend a real test: one span named
``aiorunner.doctor`` exported through the backend itself (so TLS, compression, headers and
the wire protocol are the ones runs use), not merely a TCP connect. When the export fails,
the endpoint is probed to name the fix (``_doctor_probe``): nothing listening, a gRPC
client talking to an HTTP/1.1 port (4318) or the reverse, TLS against a plaintext port or
the reverse, rejected credentials, a legacy Jaeger port (6831, 14250) where OTLP
(4317/4318) is wanted.

Everything that can block (importing plugins, sync exporters, file-system checks) runs in
worker threads; probes use anyio sockets with short deadlines.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread

from .._config import EnvProblem, TracingConfig, collect_env_problems, looks_secret
from .._exceptions import BackendError, ConfigError, UnknownBackendError
from .._export.spool import SpoolUsage, spool_usage
from .probe import Endpoint, explain, redact_url

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from opentelemetry.sdk.trace import ReadableSpan

    from .._export.registry import BackendInfo

__all__ = ["BackendCheck", "DoctorReport", "diagnose", "mask_value"]

DOCTOR_SPAN = "aiorunner.doctor"
#: Variables shown in the report besides OTEL_* and AIORUNNER_* (the vendor presets').
VENDOR_PREFIXES = (
    "DD_",
    "NEW_RELIC_",
    "HONEYCOMB_",
    "GRAFANA_CLOUD_",
    "LS_",
    "DT_",
    "SIGNOZ_",
    "AXIOM_",
    "ELASTIC_APM_",
)
_SECRET_NAME = re.compile(r"(key|token|secret|password|passwd|license|credential)", re.IGNORECASE)


# ---------------------------------------------------------------------------- masking


def _is_secret_name(name: str) -> bool:
    if name.upper().endswith(("_CLIENT_KEY", "_CERTIFICATE")):
        return False  # file paths, worth showing
    return looks_secret(name) or bool(_SECRET_NAME.search(name))


def mask_value(name: str, value: Any) -> str:
    """``value`` as the report prints it: ``[secure]`` for secret-looking names, header
    lists with every value hidden, URL passwords hidden."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={mask_value(str(k), v)}" for k, v in value.items()) or "{}"
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value) or "(none)"
    if value is None:
        return "(none)"
    text = str(value)
    if "HEADER" in name.upper():
        names = [part.partition("=")[0].strip() for part in text.split(",") if part.strip()]
        return ",".join(f"{n}=[secure]" for n in names) if names else "[secure]"
    if _is_secret_name(name):
        return "[secure]" if text else ""
    if name.upper().endswith("RESOURCE_ATTRIBUTES"):
        pairs = (part.partition("=") for part in text.split(",") if part.strip())
        return ",".join(f"{k}={mask_value(k, v)}" if sep else k for k, sep, v in pairs)
    return redact_url(text) if "://" in text else text


def _environment(environ: Mapping[str, str]) -> list[tuple[str, str]]:
    prefixes = ("OTEL_", "AIORUNNER_", *VENDOR_PREFIXES)
    return [
        (name, mask_value(name, environ[name]))
        for name in sorted(environ)
        if name.startswith(prefixes)
    ]


def _settings_rows(config: TracingConfig) -> list[tuple[str, str, str]]:
    rows = []
    for f in dataclasses.fields(config):
        if f.name in ("sources", "ignored", "export_timeout_ms"):
            continue
        value = getattr(config, f.name)
        if f.name == "backend_options":
            shown = {
                k: ("[secure]" if "header" in k.lower() else v) for k, v in dict(value).items()
            }
            text = mask_value(f.name, shown)
        elif f.name in ("logs_file", "metrics_file") and not value:
            # Empty means "beside the traces file": say where that is.
            stem = "logs" if f.name == "logs_file" else "metrics"
            folder = os.path.dirname(os.fspath(config.traces_file or "")) or "."
            text = f"{os.path.join(folder, stem + '.jsonl')} (beside the traces file)"
        else:
            text = mask_value(f.name, value)
        rows.append((f.name, text, config.sources.get(f.name, "")))
    return rows


# ---------------------------------------------------------------------------- report


@dataclass(frozen=True)
class BackendCheck:
    """The verdict on one configured backend."""

    name: str
    ok: bool
    #: Where it sends (an endpoint, a file), for the report.
    target: str
    #: What happened: "test span exported", or the error.
    detail: str
    #: The exact change that should make it work, when known.
    fix: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DoctorReport:
    """Everything ``aiorunner doctor`` prints; ``ok`` decides its exit code."""

    settings: list[tuple[str, str, str]] = field(default_factory=list)
    environment: list[tuple[str, str]] = field(default_factory=list)
    installed: list[BackendInfo] = field(default_factory=list)
    checks: list[BackendCheck] = field(default_factory=list)
    config_error: str | None = None
    #: Environment values a run would ignore (with a warning), each a problem here.
    ignored: list[EnvProblem] = field(default_factory=list)
    #: Which rule chose the exporters ("named by OTEL_TRACES_EXPORTER", the default...).
    exporter_rule: str = ""
    #: The backends' spools under AIORUNNER_SPOOL_DIR: spans waiting for a backend that
    #: could not take them (informational: a run sends them when it can).
    spools: list[SpoolUsage] = field(default_factory=list)
    spool_dir: str = ""

    @property
    def ok(self) -> bool:
        """True when traces would arrive as configured: the configuration is valid, no
        environment value is ignored, and every configured backend took the test span
        (or, for files, can be written)."""
        return (
            self.config_error is None
            and not self.ignored
            and bool(self.checks)
            and all(c.ok for c in self.checks)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "config_error": self.config_error,
            "ignored": [problem.to_dict() for problem in self.ignored],
            "exporter_rule": self.exporter_rule,
            "settings": [{"name": n, "value": v, "source": s} for n, v, s in self.settings],
            "environment": dict(self.environment),
            "installed": [info.to_dict() for info in self.installed],
            "checks": [check.to_dict() for check in self.checks],
            "spool_dir": self.spool_dir,
            "spools": [dataclasses.asdict(usage) for usage in self.spools],
        }


# ----------------------------------------------------------------------------- checks


async def diagnose(
    config: TracingConfig | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> DoctorReport:
    """
    Check ``config`` (default: from the environment) end to end, each configured backend
    concurrently, each within about ``timeout`` seconds.
    """
    with collect_env_problems(log=False) as ignored:
        # Everything below reports here instead of logging: what the config and every
        # backend's factory ignored (worker threads share the list: anyio copies the
        # context into them).
        report = await _diagnose(config, environ, timeout, ignored)
    return dataclasses.replace(report, ignored=list(ignored))


async def _diagnose(
    config: TracingConfig | None,
    environ: Mapping[str, str] | None,
    timeout: float,
    ignored: list[EnvProblem],
) -> DoctorReport:
    from .._export.registry import backend_names, list_backends
    from .._export.resource import OTEL_EXPERIMENTAL_RESOURCE_DETECTORS, check_detectors

    env = dict(os.environ if environ is None else environ)
    installed = await anyio.to_thread.run_sync(list_backends)
    environment = _environment(env)
    try:
        resolved = (config or TracingConfig()).resolve(env)
    except ConfigError as exc:
        return DoctorReport([], environment, installed, [], config_error=str(exc))
    # Resource detector names that are not installed (a session would warn): to ignored.
    await anyio.to_thread.run_sync(
        check_detectors, env.get(OTEL_EXPERIMENTAL_RESOURCE_DETECTORS, "")
    )
    settings = _settings_rows(resolved)
    spool_dir = await anyio.to_thread.run_sync(os.path.abspath, os.fspath(resolved.spool_dir or ""))
    spools = await anyio.to_thread.run_sync(spool_usage, spool_dir)
    names = resolved.exporters
    if resolved.enabled and resolved.sources.get("exporter_type") != "argument":
        # What a run would use: OTEL_TRACES_EXPORTER names that are not installed left
        # out (reported in ignored), the default when none is left.
        names = await anyio.to_thread.run_sync(backend_names, resolved)
    rule = exporter_rule(resolved, names)
    if not resolved.enabled:
        source = resolved.sources.get("enabled", "")
        if "none" in resolved.exporters:
            source = resolved.sources.get("exporter_type", source)
        check = BackendCheck(
            name="(tracing)",
            ok=False,
            target="-",
            detail=f"tracing is turned off ({source}): no trace will be recorded",
            fix="unset OTEL_SDK_DISABLED and set OTEL_TRACES_EXPORTER to a backend "
            "(jsonl, the default, needs nothing else)",
        )
        return DoctorReport(
            settings,
            environment,
            installed,
            [check],
            exporter_rule=rule,
            spools=spools,
            spool_dir=spool_dir,
        )
    checks: dict[str, BackendCheck] = {}

    async def run(name: str) -> None:
        checks[name] = await check_backend(name, resolved, timeout=timeout)

    async with anyio.create_task_group() as tg:
        for name in names:
            tg.start_soon(run, name)
    return DoctorReport(
        settings,
        environment,
        installed,
        [checks[n] for n in names],
        exporter_rule=rule,
        spools=spools,
        spool_dir=spool_dir,
    )


def exporter_rule(config: TracingConfig, used: Sequence[str]) -> str:
    """Which rule chose the exporters of a resolved ``config`` (and what runs use, when a
    name was left out)."""
    source = config.sources.get("exporter_type", "")
    named = ",".join(config.exporters)
    if source == "argument":
        rule = f"{named}: named explicitly (--exporter, or TracingConfig(exporter_type=...))"
    elif source.startswith("env "):
        rule = f"{named}: named by {source[4:]}"
    elif source.startswith("default: "):
        variable = source[len("default: ") :].removesuffix(" is set")
        rule = (
            f"otlp: no exporter is named and {variable} is set (the specification's "
            "default exporter is otlp)"
        )
    else:
        rule = (
            "jsonl: no exporter is named and no OTLP endpoint is set (the embedded default; "
            "OTEL_EXPORTER_OTLP_ENDPOINT alone would select otlp, OTEL_TRACES_EXPORTER "
            "names backends)"
        )
    if tuple(used) != config.exporters and config.enabled:
        rule += f"; runs use {','.join(used)} (see the ignored settings)"
    return rule


async def check_backend(
    name: str,
    config: TracingConfig,
    *,
    timeout: float,
) -> BackendCheck:
    """Build backend ``name`` and send it one test span; explain a failure."""
    if name == "jsonl":
        return await anyio.to_thread.run_sync(_check_file, os.fspath(config.traces_file or ""))
    if name == "console":
        return BackendCheck(name, True, "stderr", "prints every span to stderr")
    from .._export.registry import load_backend

    try:
        backend = await anyio.to_thread.run_sync(load_backend, name, config)
    except UnknownBackendError as exc:
        return BackendCheck(name, False, "-", str(exc), _install_fix(name, exc))
    except ConfigError as exc:
        return BackendCheck(
            name, False, "-", str(exc), "change the setting the message above names"
        )
    except BackendError as exc:
        return BackendCheck(name, False, "-", str(exc), "reinstall or upgrade that package")
    endpoint = _endpoint_of(backend)
    target = endpoint.describe() if endpoint else type(backend).__name__
    try:
        ok, detail = await _test_export(backend, config, timeout)
    finally:
        await _close(backend)
    if name == "memory" and ok:
        detail += " (kept in this process only: the in-memory backend is for tests)"
    if ok:
        return BackendCheck(name, True, target, detail)
    fix = await explain(endpoint, detail, timeout=min(timeout, 3.0)) if endpoint else None
    return BackendCheck(name, False, target, detail, fix)


def _install_fix(name: str, exc: UnknownBackendError) -> str:
    return "install the package the message names, or use one of: " + (
        ", ".join(exc.known) or "jsonl"
    )


def _check_file(path: str) -> BackendCheck:
    """The jsonl backend: can the file be appended to (without writing to it)?"""
    target = os.path.abspath(path)
    fix = "set AIORUNNER_TRACES_FILE to a writable path"
    if os.path.isdir(target):
        return BackendCheck("jsonl", False, target, "the trace file path is a directory", fix)
    if os.path.exists(target):
        if os.access(target, os.W_OK):
            size = os.path.getsize(target)
            return BackendCheck("jsonl", True, target, f"writable ({size} bytes so far)")
        return BackendCheck("jsonl", False, target, "the trace file is not writable", fix)
    parent = os.path.dirname(target)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if os.path.isdir(parent) and os.access(parent, os.W_OK | os.X_OK):
        return BackendCheck("jsonl", True, target, f"will be created (in {parent})")
    reason = "is not a directory" if not os.path.isdir(parent) else "is not writable"
    return BackendCheck("jsonl", False, target, f"cannot create the file: {parent} {reason}", fix)


def _doctor_span(config: TracingConfig) -> ReadableSpan:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

    ids = RandomIdGenerator()
    now = time.time_ns()
    attributes = dict(config.resource_attributes or {})
    attributes["service.name"] = config.service_name or "aiorunner"
    return ReadableSpan(
        name=DOCTOR_SPAN,
        context=SpanContext(ids.generate_trace_id(), ids.generate_span_id(), False, TraceFlags(1)),
        resource=Resource(attributes),
        attributes={"aiorunner.doctor": True},
        kind=SpanKind.INTERNAL,
        start_time=now - 1_000_000,
        end_time=now,
        instrumentation_scope=InstrumentationScope("aiorunner.doctor"),
    )


async def _test_export(
    backend: Any,
    config: TracingConfig,
    timeout: float,
) -> tuple[bool, str]:
    spans = [_doctor_span(config)]
    export = getattr(backend, "export", None)
    if export is None:
        return False, f"{type(backend).__name__} has no export method"
    with anyio.move_on_after(timeout + 1.0):
        try:
            if inspect.iscoroutinefunction(export):
                result = await export(spans, timeout=timeout)
                if result.ok:
                    return True, "test span exported"
                return False, str(result.error or result.status.value)
            outcome = await anyio.to_thread.run_sync(export, spans, abandon_on_cancel=True)
        except Exception as exc:  # noqa: BLE001 - a backend that raises is a finding
            return False, f"the backend raised {type(exc).__name__}: {exc}"
        if getattr(outcome, "name", "") == "SUCCESS":
            return True, "test span exported"
        return False, "the exporter reported FAILURE (its log above says why)"
    return False, f"no answer within {timeout + 1.0:g} s"


async def _close(backend: Any) -> None:
    with anyio.move_on_after(2.0, shield=True):
        try:
            shutdown = backend.shutdown
            if inspect.iscoroutinefunction(shutdown):
                await shutdown(timeout=1.0)
            else:
                await anyio.to_thread.run_sync(shutdown, abandon_on_cancel=True)
        except Exception:  # noqa: BLE001 - best effort: the verdict is already made
            return


def _endpoint_of(backend: Any) -> Endpoint | None:
    """Read the endpoint off the backend (duck-typed: ``settings`` of the OTLP backends,
    else an ``endpoint``/``url`` attribute, as OpenTelemetry's exporters keep it)."""
    settings = getattr(backend, "settings", None)
    if settings is not None and getattr(settings, "endpoint", None):
        protocol = "grpc" if getattr(settings, "protocol", "") == "grpc" else "http"
        url = str(settings.endpoint)
        sources = getattr(settings, "sources", {}) or {}
        headers = tuple(getattr(settings, "headers", {}) or ())
        if protocol == "grpc":
            host, _, port = str(settings.target).rpartition(":")
            tls = not bool(getattr(settings, "insecure", True))
            return Endpoint(
                url, host.strip("[]"), int(port), protocol, tls, sources.get("endpoint"), headers
            )
        found = _from_url(url, "http", sources.get("endpoint"), headers)
        if found is not None and "zipkin" in type(backend).__module__:
            found = dataclasses.replace(found, variable="OTEL_EXPORTER_ZIPKIN_ENDPOINT")
        return found
    for attribute in ("endpoint", "url", "_endpoint"):
        value = getattr(backend, attribute, None)
        if isinstance(value, str) and value:
            protocol = "grpc" if "grpc" in type(backend).__module__ else "http"
            return _from_url(value, protocol, None, ())
    return None


def _from_url(
    url: str, protocol: str, source: str | None, headers: tuple[str, ...]
) -> Endpoint | None:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if not parts.hostname:
        return None
    tls = parts.scheme == "https"
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError:
        return None
    return Endpoint(url, parts.hostname, port, protocol, tls, source, headers)


def installed_rows(installed: Sequence[BackendInfo]) -> list[tuple[str, str, str]]:
    """(name, distribution version [group], loads/error) for the report."""
    rows = []
    for info in installed:
        where = f"{info.distribution or '?'} {info.version or ''}".strip()
        if info.group != "aiorunner.backends":
            where += f" [{info.group}]"
        if info.shadowed:
            state = "shadowed (the aiorunner.backends entry wins)"
        else:
            state = "loads" if info.loads else f"fails to load: {info.error}"
        rows.append((info.name, where, state))
    return rows
