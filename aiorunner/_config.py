"""
``TracingConfig``: every setting of a session, and where each value came from.

Precedence is explicit argument > environment > default. A field left ``None`` is "not
given" and is filled by :meth:`TracingConfig.resolve` from the environment (the OTEL_*
variables mean what the OpenTelemetry specification says) or the default. ``resolve()``
also records the source of every value in ``sources`` so ``aiorunner doctor`` can say why a
value is what it is. Times are seconds as ``float``; OTEL_* milliseconds are converted here.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from ._exceptions import ConfigError
from ._redact import redact_text

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

__all__ = ["TracingConfig", "check_names"]

# Environment variables, one constant each (names from the OpenTelemetry specification).
OTEL_SDK_DISABLED = "OTEL_SDK_DISABLED"
OTEL_SERVICE_NAME = "OTEL_SERVICE_NAME"
OTEL_RESOURCE_ATTRIBUTES = "OTEL_RESOURCE_ATTRIBUTES"
OTEL_TRACES_EXPORTER = "OTEL_TRACES_EXPORTER"
OTEL_PROPAGATORS = "OTEL_PROPAGATORS"
OTEL_TRACES_SAMPLER = "OTEL_TRACES_SAMPLER"
OTEL_TRACES_SAMPLER_ARG = "OTEL_TRACES_SAMPLER_ARG"
OTEL_BSP_MAX_QUEUE_SIZE = "OTEL_BSP_MAX_QUEUE_SIZE"
OTEL_BSP_SCHEDULE_DELAY = "OTEL_BSP_SCHEDULE_DELAY"
OTEL_BSP_MAX_EXPORT_BATCH_SIZE = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"
OTEL_BSP_EXPORT_TIMEOUT = "OTEL_BSP_EXPORT_TIMEOUT"
OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT = "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT"
OTEL_SPAN_EVENT_COUNT_LIMIT = "OTEL_SPAN_EVENT_COUNT_LIMIT"
OTEL_EXPORTER_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
AIORUNNER_TRACES_FILE = "AIORUNNER_TRACES_FILE"
AIORUNNER_MONITOR_INTERVAL = "AIORUNNER_MONITOR_INTERVAL"
AIORUNNER_IN_SCRIPT_TRACING = "AIORUNNER_IN_SCRIPT_TRACING"
AIORUNNER_TAIL_THRESHOLD = "AIORUNNER_TAIL_SAMPLING_THRESHOLD"
AIORUNNER_INSTRUMENT = "AIORUNNER_INSTRUMENT"

#: Limits the SDK reads from the environment itself: checked here so a bad value is a
#: ConfigError naming the variable, not a ValueError from deep inside the SDK.
_SDK_LIMIT_VARS = (
    "OTEL_SPAN_LINK_COUNT_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
)
#: Exporter variables every OTLP backend reads (checked early here, with the same rules).
_EXPORTER_TIMEOUT_VARS = ("OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
_EXPORTER_CHOICES = {
    "OTEL_EXPORTER_OTLP_PROTOCOL": ("grpc", "http/protobuf", "http/json"),
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": ("grpc", "http/protobuf", "http/json"),
    "OTEL_EXPORTER_OTLP_COMPRESSION": ("gzip", "none"),
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": ("gzip", "none"),
}
OTEL_EXPORTER_ZIPKIN_ENDPOINT = "OTEL_EXPORTER_ZIPKIN_ENDPOINT"

DEFAULT_TRACES_FILE = os.path.join(".aiorunner", "traces.jsonl")

SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
    "tailbased",
)

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def _parse_bool(var: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{var}={raw!r} is not a boolean; use true or false")


def _parse_int(minimum: int) -> Callable[[str, str], int]:
    def parse(var: str, raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ConfigError(f"{var}={raw!r} is not an integer") from None
        if value < minimum:
            raise ConfigError(f"{var}={raw!r} must be an integer >= {minimum}")
        return value

    return parse


def _parse_millis(var: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a number of milliseconds") from None
    if value < 0:
        raise ConfigError(f"{var}={raw!r} must be a non-negative number of milliseconds")
    return value / 1000.0


def _parse_seconds(var: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise ConfigError(f"{var}={raw!r} must be a positive number of seconds")
    return value


def _parse_list(var: str, raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _parse_str(var: str, raw: str) -> str:
    return raw.strip()


def _parse_sampler(var: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in SAMPLERS:
        raise ConfigError(f"{var}={raw!r} is not a known sampler; accepted: {', '.join(SAMPLERS)}")
    return value


def _parse_float(var: str, raw: str) -> float:
    try:
        return float(raw.strip())
    except ValueError:
        raise ConfigError(f"{var}={raw!r} is not a number") from None


def parse_key_values(var: str, raw: str) -> dict[str, str]:
    """Parse the ``k1=v1,k2=v2`` form of OTEL_RESOURCE_ATTRIBUTES and OTLP headers
    (values percent-decoded, as the specification asks)."""
    from urllib.parse import unquote

    result: dict[str, str] = {}
    for part in raw.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{var}: {part.strip()!r} is not of the form key=value")
        result[unquote(key.strip())] = unquote(value.strip())
    return result


# A DNS name, an IPv4 address, or an IPv6 address (urlparse strips its brackets).
_HOST = re.compile(r"[A-Za-z0-9_.-]+|[0-9A-Fa-f:.]+")


# UDP-only ports of the Jaeger agent: nothing OTLP ever listens there.
_JAEGER_AGENT_PORTS = (5775, 6831, 6832)


def validate_endpoint(name: str, value: str) -> str:
    """Check that an endpoint is a URL with a scheme and a host (or a host:port)."""
    candidate = value.strip()
    parsed = urlparse(candidate if "://" in candidate else f"http://{candidate}")
    try:
        port = parsed.port
    except ValueError:
        port = -1
    host_ok = bool(parsed.hostname) and _HOST.fullmatch(parsed.hostname or "") is not None
    if parsed.scheme == "udp" or port in _JAEGER_AGENT_PORTS:
        raise ConfigError(
            f"{name}={value!r} is a legacy Jaeger agent endpoint ({port or 'udp'}): "
            "UDP/Thrift, which aiorunner does not speak; Jaeger accepts OTLP "
            f"natively: set {name} to http://localhost:4317 (OTLP/gRPC) or "
            "http://localhost:4318 (OTLP/HTTP) on your Jaeger host"
        )
    if not host_ok or port == -1 or parsed.scheme not in ("http", "https", "grpc"):
        raise ConfigError(
            f"{name}={value!r} is not a valid endpoint; use a URL such as "
            "http://localhost:4317 (scheme http or https, a host and an optional port)"
        )
    return candidate


@dataclass(frozen=True)
class _Spec:
    env: str | None
    parse: Callable[[str, str], Any] | None
    default: Any


# field name -> where it comes from when not given explicitly
_SPECS: dict[str, _Spec] = {
    "enabled": _Spec(None, None, True),
    "exporter_type": _Spec(OTEL_TRACES_EXPORTER, _parse_list, ("jsonl",)),
    "collector_endpoint": _Spec(None, None, None),
    "service_name": _Spec(OTEL_SERVICE_NAME, _parse_str, "aiorunner"),
    "resource_attributes": _Spec(OTEL_RESOURCE_ATTRIBUTES, parse_key_values, {}),
    "sampler": _Spec(OTEL_TRACES_SAMPLER, _parse_sampler, "parentbased_always_on"),
    "sample_rate": _Spec(OTEL_TRACES_SAMPLER_ARG, _parse_float, 1.0),
    "tail_latency_threshold": _Spec(AIORUNNER_TAIL_THRESHOLD, _parse_seconds, 10.0),
    "propagators": _Spec(OTEL_PROPAGATORS, _parse_list, ("tracecontext", "baggage")),
    "max_attributes": _Spec(OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT, _parse_int(0), 128),
    "max_events": _Spec(OTEL_SPAN_EVENT_COUNT_LIMIT, _parse_int(0), 128),
    "batch_size": _Spec(OTEL_BSP_MAX_EXPORT_BATCH_SIZE, _parse_int(1), 512),
    "max_queue_size": _Spec(OTEL_BSP_MAX_QUEUE_SIZE, _parse_int(1), 2048),
    "schedule_delay": _Spec(OTEL_BSP_SCHEDULE_DELAY, _parse_millis, 5.0),
    "export_timeout": _Spec(OTEL_BSP_EXPORT_TIMEOUT, _parse_millis, 30.0),
    "traces_file": _Spec(AIORUNNER_TRACES_FILE, _parse_str, DEFAULT_TRACES_FILE),
    "monitor_interval": _Spec(AIORUNNER_MONITOR_INTERVAL, _parse_seconds, 0.5),
    "in_script_tracing": _Spec(AIORUNNER_IN_SCRIPT_TRACING, _parse_bool, True),
    "instrument": _Spec(AIORUNNER_INSTRUMENT, _parse_list, ()),
    "backend_options": _Spec(None, None, {}),
}


@dataclass
class TracingConfig:
    """
    How runs are traced and where their spans go.

    Every field of the seed document is here (``enabled``, ``exporter_type``,
    ``collector_endpoint``, ``service_name``, ``sample_rate``, ``max_attributes``,
    ``max_events``, ``batch_size``, ``export_timeout_ms``). Leave a field ``None`` to take
    it from the environment or the default; call :meth:`resolve` (sessions do) to get a
    config with every value filled and ``sources`` saying where each came from.

    Args:
        enabled: ``False`` turns tracing off; runs still work and fill ``RunResult``.
            ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` do the same.
        exporter_type: one backend name or several (``"otlp"``, ``["otlp", "console"]``).
        collector_endpoint: endpoint handed to the backends (overrides the exporters'
            own endpoint variables).
        export_timeout_ms: the seed's name for ``export_timeout`` (in milliseconds).
        export_timeout: the deadline of one export, retries included, in seconds.
        schedule_delay: seconds a span may wait in the queue before a batch leaves.
        sampler / sample_rate: an OpenTelemetry sampler name and its argument.
        tail_latency_threshold: for ``tailbased``: runs slower than this are always kept.
        traces_file: the embedded ``jsonl`` backend's file.
        monitor_interval: seconds between two samples of the script's process tree.
        in_script_tracing: spans a Python script makes with the OpenTelemetry API join the
            run's trace (a bootstrap on its PYTHONPATH, a channel back to the runner).
        instrument: instrumentation names loaded inside Python scripts at their start.
        backend_options: free-form options a backend may read (``config.option(...)``).
    """

    enabled: bool | None = None
    exporter_type: str | Sequence[str] | None = None
    collector_endpoint: str | None = None
    service_name: str | None = None
    sample_rate: float | None = None
    max_attributes: int | None = None
    max_events: int | None = None
    batch_size: int | None = None
    export_timeout_ms: int | None = None
    # Beyond the seed:
    resource_attributes: Mapping[str, str] | None = None
    sampler: str | None = None
    tail_latency_threshold: float | None = None
    propagators: Sequence[str] | None = None
    max_queue_size: int | None = None
    schedule_delay: float | None = None
    export_timeout: float | None = None
    traces_file: str | os.PathLike[str] | None = None
    monitor_interval: float | None = None
    in_script_tracing: bool | None = None
    instrument: Sequence[str] | None = None
    backend_options: Mapping[str, Any] | None = None
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __repr__(self) -> str:
        # Secrets print as [secure]: backend options such as headers or API keys, and
        # credentials inside URLs, must not reach logs through a repr().
        fields = ", ".join(
            f"{f.name}={_masked(f.name, getattr(self, f.name))!r}"
            for f in dataclasses.fields(self)
            if f.repr
        )
        return f"TracingConfig({fields})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> TracingConfig:
        """Build a resolved config from ``environ`` (default ``os.environ``), with
        ``overrides`` taking precedence as explicit arguments."""
        return cls(**overrides).resolve(environ)

    @property
    def resolved(self) -> bool:
        """True once :meth:`resolve` filled every field."""
        return bool(self.sources)

    @property
    def exporters(self) -> tuple[str, ...]:
        """The backend names of a resolved config (empty when tracing is off)."""
        value = self.exporter_type
        if value is None:
            return ()
        if isinstance(value, str):
            return _parse_list("exporter_type", value)
        return tuple(value)

    def option(self, key: str, default: Any = None) -> Any:
        """A free-form backend option (``backend_options``), or ``default``."""
        return (self.backend_options or {}).get(key, default)

    def resolve(self, environ: Mapping[str, str] | None = None) -> TracingConfig:
        """
        Return a copy with every field filled (argument > environment > default) and
        validated, and ``sources`` naming where each value came from.

        Raises:
            ConfigError: a value (given or from the environment) is invalid; the message
                names the field or variable and the accepted values.
        """
        if self.resolved:
            return self
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        explicit = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if explicit["export_timeout"] is None and explicit["export_timeout_ms"] is not None:
            explicit["export_timeout"] = (
                _check_number("export_timeout_ms", explicit["export_timeout_ms"], minimum=0)
                / 1000.0
            )
        for name, spec in _SPECS.items():
            given = explicit[name]
            if given is not None:
                values[name] = given
                sources[name] = "argument"
            elif spec.env is not None and spec.parse is not None and env.get(spec.env):
                values[name] = spec.parse(spec.env, env[spec.env])
                sources[name] = f"env {spec.env}"
            else:
                values[name] = spec.default
                sources[name] = "default"
        disabled = env.get(OTEL_SDK_DISABLED)
        if explicit["enabled"] is None and disabled and _parse_bool(OTEL_SDK_DISABLED, disabled):
            values["enabled"] = False
            sources["enabled"] = f"env {OTEL_SDK_DISABLED}"
        _check_types(values)
        if isinstance(values["exporter_type"], str):
            values["exporter_type"] = _parse_list("exporter_type", values["exporter_type"])
        values["exporter_type"] = tuple(values["exporter_type"])
        if not values["exporter_type"]:
            raise ConfigError("exporter_type is empty; name at least one backend, or 'none'")
        if "none" in values["exporter_type"]:
            if len(values["exporter_type"]) > 1:
                raise ConfigError(
                    f"exporter_type {','.join(values['exporter_type'])!r} mixes 'none' "
                    "with other backends; use 'none' alone to turn export off"
                )
            values["enabled"] = False
        if values["collector_endpoint"] is not None:
            values["collector_endpoint"] = validate_endpoint(
                "collector_endpoint", values["collector_endpoint"]
            )
        _check_environment(env)
        values["sampler"] = _parse_sampler("sampler", str(values["sampler"]))
        if sources["sampler"] == "default" and sources["sample_rate"] == "argument":
            # The seed's TracingConfig(sample_rate=0.1) means "sample 10 %".
            values["sampler"] = "parentbased_traceidratio"
            sources["sampler"] = "argument sample_rate"
        rate_name = (
            "sample_rate" if sources["sample_rate"] == "argument" else OTEL_TRACES_SAMPLER_ARG
        )
        rate = _check_number(rate_name, values["sample_rate"], minimum=0)
        if rate > 1:
            raise ConfigError(f"{rate_name}={values['sample_rate']!r} must be between 0 and 1")
        values["sample_rate"] = float(rate)
        for name in ("max_attributes", "max_events"):
            values[name] = int(_check_number(name, values[name], minimum=0, integer=True))
        for name in ("batch_size", "max_queue_size"):
            values[name] = int(_check_number(name, values[name], minimum=1, integer=True))
        for name in ("schedule_delay", "export_timeout"):
            values[name] = float(_check_number(name, values[name], minimum=0))
        for name in ("monitor_interval", "tail_latency_threshold"):
            values[name] = float(_check_number(name, values[name], minimum=0, strict=True))
        values["batch_size"] = min(values["batch_size"], values["max_queue_size"])
        values["traces_file"] = os.fspath(values["traces_file"])
        values["propagators"] = tuple(values["propagators"])
        values["instrument"] = check_names(
            values["instrument"],
            field="instrument" if sources["instrument"] == "argument" else AIORUNNER_INSTRUMENT,
        )
        values["resource_attributes"] = dict(values["resource_attributes"])
        values["backend_options"] = dict(values["backend_options"])
        values["enabled"] = bool(values["enabled"])
        values["export_timeout_ms"] = round(values["export_timeout"] * 1000)
        sources["export_timeout_ms"] = sources["export_timeout"]
        return TracingConfig(**values, sources=sources)


def check_names(names: Iterable[Any], *, field: str = "instrument") -> tuple[str, ...]:
    """Validate instrumentation names (non-empty strings, no separators).

    Raises:
        ConfigError: a name is not a plain string.
    """
    checked = []
    if isinstance(names, (str, bytes)):
        raise ConfigError(f"{field} must be a list of names such as ['requests'], got {names!r}")
    for name in names:
        if not isinstance(name, str) or not name.strip() or any(c in name for c in ",;= "):
            raise ConfigError(
                f"{field}: {name!r} is not an instrumentation name; use names such as "
                "'requests', 'httpx', 'sqlite3' (the suffix of opentelemetry-instrumentation-*)"
            )
        checked.append(name.strip())
    return tuple(dict.fromkeys(checked))


SECURE = "[secure]"


def _masked(key: str, value: Any, *, inside_headers: bool = False) -> Any:
    """``value`` with secrets replaced by ``[secure]``, for repr() and logs."""
    if isinstance(value, dict):
        headers = inside_headers or "header" in key.lower()
        return {k: _masked(str(k), v, inside_headers=headers) for k, v in value.items()}
    if value is not None and (inside_headers or looks_secret(key)):
        return SECURE
    if isinstance(value, str):
        return redact_text(value)
    return value


def _check_environment(env: Mapping[str, str]) -> None:
    """Check the OTEL_* variables that the SDK or the exporters read on their own."""
    for var in (
        OTEL_EXPORTER_OTLP_ENDPOINT,
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
        OTEL_EXPORTER_ZIPKIN_ENDPOINT,
    ):
        if env.get(var):
            validate_endpoint(var, env[var])
    for var in _SDK_LIMIT_VARS:
        if env.get(var):
            _parse_int(0)(var, env[var])
    for var in _EXPORTER_TIMEOUT_VARS:
        if env.get(var):
            _parse_millis(var, env[var])
    for var, choices in _EXPORTER_CHOICES.items():
        raw = env.get(var)
        if raw and raw.strip().lower() not in choices:
            raise ConfigError(f"{var}={raw!r} is not supported; accepted: {', '.join(choices)}")


def _check_types(values: dict[str, Any]) -> None:
    """Fields whose wrong type would otherwise surface as a TypeError deep inside."""
    exporters = values["exporter_type"]
    if not isinstance(exporters, str) and not (
        isinstance(exporters, (list, tuple)) and all(isinstance(e, str) for e in exporters)
    ):
        raise ConfigError(
            f"exporter_type={exporters!r} must be a backend name or a list of names, "
            "e.g. 'otlp' or ['otlp', 'console']"
        )
    for name in ("service_name", "traces_file"):
        if not isinstance(values[name], (str, os.PathLike)) or not os.fspath(values[name]):
            raise ConfigError(f"{name}={values[name]!r} must be a non-empty string")
    for name in ("enabled", "in_script_tracing"):
        if not isinstance(values[name], bool):
            raise ConfigError(f"{name}={values[name]!r} must be True or False")


def _check_number(
    name: str, value: Any, *, minimum: float, strict: bool = False, integer: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}={value!r} must be a number")
    if integer and not isinstance(value, int):
        raise ConfigError(f"{name}={value!r} must be an integer")
    if value < minimum or (strict and value == minimum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ConfigError(f"{name}={value!r} must be {bound}")
    return float(value)


_SECRET_KEY = re.compile(
    r"(pass(word)?|secret|token|api[-_]?key|auth|credential|private)", re.IGNORECASE
)


def looks_secret(key: str) -> bool:
    """True for names like ``password``, ``api_key``, ``X-Auth-Token``."""
    return bool(_SECRET_KEY.search(key))
