"""
``TracingConfig``: every setting of a session, and where each value came from.

Precedence is explicit argument > environment > default. A field left ``None`` is "not
given" and is filled by :meth:`TracingConfig.resolve` from the environment (the OTEL_*
variables mean what the OpenTelemetry specification says) or the default. ``resolve()``
also records the source of every value in ``sources`` so ``aiorunner doctor`` can say why a
value is what it is. Times are seconds as ``float``; OTEL_* milliseconds are converted here.

Bad values are treated by who wrote them:

- an explicit argument (``TracingConfig(...)``, a command-line flag) raises
  :class:`ConfigError`: the caller wrote it and can fix it now;
- an ``OTEL_*`` variable that cannot be parsed or is out of range is ignored, as the
  specification asks ("SHOULD generate a warning and gracefully ignore the setting"): one
  WARNING per process and variable value (:func:`report_env_problem`) names the variable,
  the value, what is used instead and the fix; the default is used and the run goes on.
  ``TracingConfig.ignored`` keeps them, and ``aiorunner doctor`` reports them as problems;
- ``AIORUNNER_*`` variables are ours, not the specification's: a bad one raises, like an
  argument.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import math
import os
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from ._exceptions import ConfigError, option_name
from ._redact import redact_text

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

__all__ = [
    "EnvProblem",
    "TracingConfig",
    "check_names",
    "collect_env_problems",
    "report_env_problem",
]

logger = logging.getLogger("aiorunner.config")

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
OTEL_ATTRIBUTE_COUNT_LIMIT = "OTEL_ATTRIBUTE_COUNT_LIMIT"
OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT = "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT"
OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT = "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT"
OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT = "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT"
OTEL_SPAN_EVENT_COUNT_LIMIT = "OTEL_SPAN_EVENT_COUNT_LIMIT"
OTEL_SPAN_LINK_COUNT_LIMIT = "OTEL_SPAN_LINK_COUNT_LIMIT"
OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT = "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT"
OTEL_LINK_ATTRIBUTE_COUNT_LIMIT = "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT"
OTEL_EXPORTER_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
OTEL_EXPORTER_ZIPKIN_ENDPOINT = "OTEL_EXPORTER_ZIPKIN_ENDPOINT"
#: Declarative configuration (the specification's in-development name, and the name the
#: Python SDK reads now). aiorunner does not read such a file: setting either warns.
OTEL_EXPERIMENTAL_CONFIG_FILE = "OTEL_EXPERIMENTAL_CONFIG_FILE"
OTEL_CONFIG_FILE = "OTEL_CONFIG_FILE"
AIORUNNER_TRACES_FILE = "AIORUNNER_TRACES_FILE"
AIORUNNER_MONITOR_INTERVAL = "AIORUNNER_MONITOR_INTERVAL"
AIORUNNER_IN_SCRIPT_TRACING = "AIORUNNER_IN_SCRIPT_TRACING"
AIORUNNER_TAIL_THRESHOLD = "AIORUNNER_TAIL_SAMPLING_THRESHOLD"
AIORUNNER_INSTRUMENT = "AIORUNNER_INSTRUMENT"
AIORUNNER_SPOOL_DIR = "AIORUNNER_SPOOL_DIR"
AIORUNNER_SPOOL_MAX_BYTES = "AIORUNNER_SPOOL_MAX_BYTES"
AIORUNNER_CONNECT_BUDGET = "AIORUNNER_CONNECT_BUDGET"
AIORUNNER_SPOOL_HEDGE = "AIORUNNER_SPOOL_HEDGE"
OTEL_LOGS_EXPORTER = "OTEL_LOGS_EXPORTER"
OTEL_BLRP_SCHEDULE_DELAY = "OTEL_BLRP_SCHEDULE_DELAY"
OTEL_BLRP_EXPORT_TIMEOUT = "OTEL_BLRP_EXPORT_TIMEOUT"
OTEL_BLRP_MAX_QUEUE_SIZE = "OTEL_BLRP_MAX_QUEUE_SIZE"
OTEL_BLRP_MAX_EXPORT_BATCH_SIZE = "OTEL_BLRP_MAX_EXPORT_BATCH_SIZE"
AIORUNNER_LOG_MAX_RECORDS = "AIORUNNER_LOG_MAX_RECORDS"
AIORUNNER_LOGS_FILE = "AIORUNNER_LOGS_FILE"
OTEL_METRICS_EXPORTER = "OTEL_METRICS_EXPORTER"
OTEL_METRIC_EXPORT_INTERVAL = "OTEL_METRIC_EXPORT_INTERVAL"
OTEL_METRIC_EXPORT_TIMEOUT = "OTEL_METRIC_EXPORT_TIMEOUT"
OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE = (
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"
)
AIORUNNER_METRICS_FILE = "AIORUNNER_METRICS_FILE"
#: OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE's values (the OTLP exporter spec).
TEMPORALITIES = ("cumulative", "delta", "lowmemory")

DEFAULT_TRACES_FILE = os.path.join(".aiorunner", "traces.jsonl")
#: Where spans a backend could not take wait for it (next to the default traces file).
DEFAULT_SPOOL_DIR = os.path.join(".aiorunner", "spool")
#: The spool's bound per backend: 256 MiB (oldest dropped first, counted).
DEFAULT_SPOOL_MAX_BYTES = 256 * 1024 * 1024

#: A Timeout of 0 means "no limit" (specification, "Timeout"); like the specification
#: allows, it is stored as a very long time: the largest 32-bit number of milliseconds
#: (24.8 days), so that every deadline computed from it still works.
NO_LIMIT_MS = 2**31 - 1

SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
    "tailbased",
)
#: The samplers that read OTEL_TRACES_SAMPLER_ARG / sample_rate (the others ignore it).
SAMPLERS_WITH_ARG = ("traceidratio", "parentbased_traceidratio", "tailbased")

#: The span limits beyond ``max_attributes``/``max_events``, by ``SpanLimits`` keyword: the
#: variable that sets each, and the variable it falls back to (then the default).
SPAN_LIMITS: dict[str, tuple[str, str | None, int | None]] = {
    "max_links": (OTEL_SPAN_LINK_COUNT_LIMIT, None, 128),
    "max_event_attributes": (OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT, OTEL_ATTRIBUTE_COUNT_LIMIT, 128),
    "max_link_attributes": (OTEL_LINK_ATTRIBUTE_COUNT_LIMIT, OTEL_ATTRIBUTE_COUNT_LIMIT, 128),
    "max_attribute_length": (OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT, None, None),
    "max_span_attribute_length": (
        OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT,
        OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT,
        None,
    ),
}

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


# --------------------------------------------------------------------- ignored values


@dataclass(frozen=True)
class EnvProblem:
    """
    One environment value that was ignored, and why.

    ``value`` is as it may be shown (header values and URL credentials masked).
    ``message`` is the one WARNING logged for it: the variable, the value, the reason, what
    is used instead and the fix.
    """

    variable: str
    value: str
    #: Why it cannot be used ("is not an integer"), a phrase following ``VAR='value'``.
    reason: str
    #: What is used in its place ("the default 2048").
    instead: str
    #: How to fix it ("set OTEL_BSP_MAX_QUEUE_SIZE to an integer >= 1, or unset it").
    fix: str

    @property
    def message(self) -> str:
        return (
            f"{self.variable}={self.value!r} {self.reason}; using {self.instead} instead. "
            f"Fix: {self.fix}"
        )

    def to_dict(self) -> dict[str, str]:
        return {**dataclasses.asdict(self), "message": self.message}


_logged_lock = threading.Lock()
_logged: set[tuple[str, str]] = set()
_collector: contextvars.ContextVar[tuple[list[EnvProblem], bool] | None] = contextvars.ContextVar(
    "aiorunner_env_problems", default=None
)


def report_env_problem(problem: EnvProblem) -> None:
    """
    Report an ignored environment value: one WARNING on the ``aiorunner.config`` logger per
    process for each variable and value (a thousand runs under one bad variable log it
    once), and a record in the active :func:`collect_env_problems` list, if any.

    Backends report their own variables' problems through this (``aiorunner.backend``
    re-exports it), so the same variable is never warned about twice.
    """
    active = _collector.get()
    if active is not None:
        problems, log = active
        if not any((p.variable, p.value) == (problem.variable, problem.value) for p in problems):
            problems.append(problem)
        if not log:
            return
    key = (problem.variable, problem.value)
    with _logged_lock:
        if key in _logged:
            return
        _logged.add(key)
    logger.warning("%s", problem.message)


@contextlib.contextmanager
def collect_env_problems(*, log: bool = True) -> Iterator[list[EnvProblem]]:
    """
    Collect every :class:`EnvProblem` reported in this context (worker threads started
    with ``anyio.to_thread`` included: they copy the context), e.g. to show them in
    ``aiorunner doctor``. ``log=False`` collects without logging.
    """
    problems: list[EnvProblem] = []
    token = _collector.set((problems, log))
    try:
        yield problems
    finally:
        _collector.reset(token)


def shown_value(variable: str, raw: str) -> str:
    """``raw`` as a message may show it: header lists as their names only, URL
    credentials and tokens masked."""
    if "HEADERS" in variable.upper():
        # Names only; an entry without "=" may be a bare token: not even its text.
        return (
            ",".join(
                f"{part.partition('=')[0].strip()}=[secure]" if "=" in part else "[secure]"
                for part in raw.split(",")
                if part.strip()
            )
            or "[secure]"
        )
    return redact_text(raw)


class _Invalid(Exception):
    """A value that cannot be used: ``reason`` follows ``VAR='value'`` in a message,
    ``accepted`` says what would be (for the fix)."""

    def __init__(self, reason: str, accepted: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.accepted = accepted


def _is_spec_variable(var: str) -> bool:
    """OTEL_* variables follow the specification (warn and ignore); ours raise."""
    return var.startswith("OTEL_")


class _EnvReader:
    """Reads variables for one ``resolve()``: an empty value is unset (specification,
    "Parsing empty value"); a bad OTEL_* value becomes an :class:`EnvProblem`."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[EnvProblem] = []
        self._read: dict[str, Any] = {}

    def raw(self, var: str) -> str | None:
        value = self.env.get(var)
        return value if value is not None and value.strip() else None

    def ignore(self, var: str, raw: str, reason: str, instead: str, fix: str) -> None:
        self.problems.append(EnvProblem(var, shown_value(var, raw), reason, instead, fix))

    def read(self, var: str, parse: Callable[[str], Any], instead: str) -> Any | None:
        """The parsed value of ``var``; None when unset or ignored (then ``instead`` is
        what the caller uses, for the message). A variable is parsed, and reported, once
        per resolve, however many settings fall back to it."""
        if var in self._read:
            return self._read[var]
        raw = self.raw(var)
        value = None
        if raw is not None:
            try:
                value = parse(raw)
            except _Invalid as exc:
                if not _is_spec_variable(var):
                    raise ConfigError(f"{var}={raw!r} {exc.reason}", variable=var) from None
                fix = f"set {var} to {exc.accepted}, or unset it"
                self.ignore(var, raw, exc.reason, instead, fix)
        self._read[var] = value
        return value


# --------------------------------------------------------------------------- parsers


def _parse_bool(var: str, raw: str) -> bool:
    """Our own booleans (AIORUNNER_*): true/false, 1/0, yes/no, on/off."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{var}={raw!r} is not a boolean; use true or false", variable=var)


def _our_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise _Invalid("is not a boolean; use true or false", "true or false")


def _int(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        accepted = f"an integer >= {minimum}"
        try:
            value = int(raw.strip())
        except ValueError:
            raise _Invalid("is not an integer", accepted) from None
        if value < minimum:
            raise _Invalid(f"must be an integer >= {minimum}", accepted)
        return value

    return parse


def _millis(raw: str) -> float:
    """A Duration: milliseconds >= 0, returned in seconds."""
    accepted = "a number of milliseconds >= 0"
    try:
        value = float(raw.strip())
    except ValueError:
        raise _Invalid("is not a number of milliseconds", accepted) from None
    if not 0 <= value < math.inf:
        raise _Invalid("must be a non-negative number of milliseconds", accepted)
    return value / 1000.0


def _timeout_millis(raw: str) -> float:
    """A Timeout: milliseconds >= 0 where 0 means no limit; returned in seconds."""
    accepted = "a number of milliseconds >= 0 (0 means no limit)"
    try:
        value = float(raw.strip())
    except ValueError:
        raise _Invalid("is not a number of milliseconds", accepted) from None
    if not 0 <= value < math.inf:
        raise _Invalid("must be a non-negative number of milliseconds", accepted)
    return (value or NO_LIMIT_MS) / 1000.0


def _seconds(raw: str) -> float:
    accepted = "a positive number of seconds"
    try:
        value = float(raw.strip())
    except ValueError:
        raise _Invalid("is not a number of seconds", accepted) from None
    if not 0 < value < math.inf:
        raise _Invalid("must be a positive number of seconds", accepted)
    return value


def _seconds_or_off(raw: str) -> float:
    accepted = "a number of seconds >= 0 such as 1 or 0.5 (0 turns it off)"
    try:
        value = float(raw.strip())
    except ValueError:
        raise _Invalid(f"is not a number of seconds; use {accepted}", accepted) from None
    if not 0 <= value < math.inf:
        raise _Invalid(f"must be a number of seconds >= 0; use {accepted}", accepted)
    return value


_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_SIZE = re.compile(r"\s*(\d+)\s*([A-Za-z]*)\s*")


def _bytes(raw: str) -> int:
    """A size in bytes: ``268435456``, ``64MiB``, ``512k``, ``1GB``; 0 is allowed."""
    accepted = "a number of bytes >= 0 such as 268435456 or 256MiB (0 turns the spool off)"
    match = _SIZE.fullmatch(raw)
    unit = _BYTE_UNITS.get(match.group(2).lower()) if match else None
    if match is None or unit is None:
        raise _Invalid(f"is not a size in bytes; use {accepted}", accepted)
    return int(match.group(1)) * unit


def _parse_list(var: str, raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _list(raw: str) -> tuple[str, ...]:
    return _parse_list("", raw)


def _text(raw: str) -> str:
    return raw.strip()


def _temporality(raw: str) -> str:
    value = raw.strip().lower()
    if value not in TEMPORALITIES:
        raise _Invalid("is not a temporality preference", f"one of {', '.join(TEMPORALITIES)}")
    return value


def _interval_millis(raw: str) -> float:
    """OTEL_METRIC_EXPORT_INTERVAL: milliseconds > 0, returned in seconds."""
    value = _millis(raw)
    if value <= 0:
        raise _Invalid("must be a positive number of milliseconds", "a number of ms > 0")
    return value


def _sampler(raw: str) -> str:
    value = raw.strip().lower()
    if value not in SAMPLERS:
        raise _Invalid("is not a known sampler", f"one of {', '.join(SAMPLERS)}")
    return value


def _ratio(raw: str) -> float:
    accepted = "a number between 0 and 1, such as 0.25"
    try:
        value = float(raw.strip())
    except ValueError:
        raise _Invalid("is not a number", accepted) from None
    if not 0 <= value <= 1:
        raise _Invalid("must be between 0 and 1", accepted)
    return value


def _parse_sampler(var: str, raw: str) -> str:
    """A sampler name given in code: a ConfigError when unknown."""
    try:
        return _sampler(raw)
    except _Invalid as exc:
        raise ConfigError(f"{var}={raw!r} {exc.reason}; accepted: {', '.join(SAMPLERS)}") from None


def _key_values(raw: str) -> dict[str, str]:
    from urllib.parse import unquote

    result: dict[str, str] = {}
    for part in raw.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise _Invalid(
                f"has {part.strip()!r}, which is not of the form key=value",
                "key1=value1,key2=value2 (values percent-encoded)",
            )
        result[unquote(key.strip())] = unquote(value.strip())
    return result


def parse_key_values(var: str, raw: str) -> dict[str, str]:
    """Parse the ``k1=v1,k2=v2`` form of OTEL_RESOURCE_ATTRIBUTES and OTLP headers
    (values percent-decoded, as the specification asks).

    Raises:
        ConfigError: an entry is not ``key=value``.
    """
    try:
        return _key_values(raw)
    except _Invalid:
        bad = next(p.strip() for p in raw.split(",") if p.strip() and not _is_pair(p))
        raise ConfigError(f"{var}: {bad!r} is not of the form key=value") from None


def _is_pair(part: str) -> bool:
    key, sep, _ = part.partition("=")
    return bool(sep and key.strip())


# A DNS name, an IPv4 address, or an IPv6 address (urlparse strips its brackets).
_HOST = re.compile(r"[A-Za-z0-9_.-]+|[0-9A-Fa-f:.]+")


# UDP-only ports of the Jaeger agent: nothing OTLP ever listens there.
_JAEGER_AGENT_PORTS = (5775, 6831, 6832)


def validate_endpoint(name: str, value: str) -> str:
    """Check that an endpoint is a URL with a scheme and a host (or a host:port).

    Raises:
        ConfigError: it is not, or it is a legacy Jaeger agent (UDP) endpoint.
    """
    try:
        return _endpoint(value)
    except _Invalid as exc:
        raise ConfigError(f"{name}={value!r} {exc.reason}; {exc.accepted}") from None


def _endpoint(value: str) -> str:
    candidate = value.strip()
    parsed = urlparse(candidate if "://" in candidate else f"http://{candidate}")
    try:
        port = parsed.port
    except ValueError:
        port = -1
    host_ok = bool(parsed.hostname) and _HOST.fullmatch(parsed.hostname or "") is not None
    if parsed.scheme == "udp" or port in _JAEGER_AGENT_PORTS:
        raise _Invalid(
            f"is a legacy Jaeger agent endpoint ({port or 'udp'}): UDP/Thrift, which "
            "aiorunner does not speak",
            "Jaeger accepts OTLP natively: use http://localhost:4317 (OTLP/gRPC) or "
            "http://localhost:4318 (OTLP/HTTP) on your Jaeger host",
        )
    if not host_ok or port == -1 or parsed.scheme not in ("http", "https", "grpc"):
        raise _Invalid(
            "is not a valid endpoint",
            "use a URL such as http://localhost:4317 (scheme http or https, a host and an "
            "optional port)",
        )
    return candidate


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if value is None:
        return "no limit"
    return str(value)


@dataclass(frozen=True)
class _Spec:
    env: str | None
    parse: Callable[[str], Any] | None
    default: Any
    #: What a message says is used instead of a bad value, when not "the default X".
    instead: str | None = None


# field name -> where it comes from when not given explicitly. Fields whose environment
# rules are more than "one variable, else the default" (exporter_type, sampler and
# sample_rate, max_attributes, enabled, span_limits) are resolved by hand in resolve().
_SPECS: dict[str, _Spec] = {
    "enabled": _Spec(None, None, True),
    "exporter_type": _Spec(None, None, ("jsonl",)),
    "collector_endpoint": _Spec(None, None, None),
    "service_name": _Spec(OTEL_SERVICE_NAME, _text, "aiorunner"),
    "resource_attributes": _Spec(
        OTEL_RESOURCE_ATTRIBUTES, _key_values, {}, "no resource attributes from it"
    ),
    "sampler": _Spec(None, None, "parentbased_always_on"),
    "sample_rate": _Spec(None, None, 1.0),
    "tail_latency_threshold": _Spec(AIORUNNER_TAIL_THRESHOLD, _seconds, 10.0),
    "propagators": _Spec(OTEL_PROPAGATORS, _list, ("tracecontext", "baggage")),
    "max_attributes": _Spec(None, None, 128),
    "max_events": _Spec(OTEL_SPAN_EVENT_COUNT_LIMIT, _int(0), 128),
    "batch_size": _Spec(OTEL_BSP_MAX_EXPORT_BATCH_SIZE, _int(1), 512),
    "max_queue_size": _Spec(OTEL_BSP_MAX_QUEUE_SIZE, _int(1), 2048),
    "schedule_delay": _Spec(OTEL_BSP_SCHEDULE_DELAY, _millis, 5.0, "the default 5000 ms"),
    "export_timeout": _Spec(OTEL_BSP_EXPORT_TIMEOUT, _timeout_millis, 30.0, "the default 30000 ms"),
    "traces_file": _Spec(AIORUNNER_TRACES_FILE, _text, DEFAULT_TRACES_FILE),
    "monitor_interval": _Spec(AIORUNNER_MONITOR_INTERVAL, _seconds, 0.5),
    "in_script_tracing": _Spec(AIORUNNER_IN_SCRIPT_TRACING, _our_bool, True),
    "instrument": _Spec(AIORUNNER_INSTRUMENT, _list, ()),
    "spool_dir": _Spec(AIORUNNER_SPOOL_DIR, _text, DEFAULT_SPOOL_DIR),
    "spool_max_bytes": _Spec(AIORUNNER_SPOOL_MAX_BYTES, _bytes, DEFAULT_SPOOL_MAX_BYTES),
    "connect_budget": _Spec(AIORUNNER_CONNECT_BUDGET, _seconds, 1.0),
    "spool_hedge": _Spec(AIORUNNER_SPOOL_HEDGE, _seconds_or_off, 1.0),
    "span_limits": _Spec(None, None, None),
    "backend_options": _Spec(None, None, {}),
    "logs": _Spec(None, None, True),
    "logs_exporter": _Spec(None, None, ()),
    "logs_batch_size": _Spec(OTEL_BLRP_MAX_EXPORT_BATCH_SIZE, _int(1), 512),
    "logs_max_queue_size": _Spec(OTEL_BLRP_MAX_QUEUE_SIZE, _int(1), 2048),
    "logs_schedule_delay": _Spec(OTEL_BLRP_SCHEDULE_DELAY, _millis, 1.0, "the default 1000 ms"),
    "logs_export_timeout": _Spec(
        OTEL_BLRP_EXPORT_TIMEOUT, _timeout_millis, 30.0, "the default 30000 ms"
    ),
    "log_max_records": _Spec(AIORUNNER_LOG_MAX_RECORDS, _int(0), 100_000),
    "logs_file": _Spec(AIORUNNER_LOGS_FILE, _text, ""),
    "metrics": _Spec(None, None, True),
    "metrics_exporter": _Spec(None, None, ()),
    # The specification's default is 60 s; a script's run is often shorter than that,
    # and its final values are flushed when it ends anyway: 10 s (documented).
    "metrics_interval": _Spec(
        OTEL_METRIC_EXPORT_INTERVAL, _interval_millis, 10.0, "aiorunner's default 10000 ms"
    ),
    "metrics_export_timeout": _Spec(
        OTEL_METRIC_EXPORT_TIMEOUT, _timeout_millis, 30.0, "the default 30000 ms"
    ),
    "metrics_temporality": _Spec(
        OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE, _temporality, "cumulative"
    ),
    "metrics_file": _Spec(AIORUNNER_METRICS_FILE, _text, ""),
}


@dataclass
class TracingConfig:
    """
    How runs are traced and where their spans go.

    Every field of the seed document is here (``enabled``, ``exporter_type``,
    ``collector_endpoint``, ``service_name``, ``sample_rate``, ``max_attributes``,
    ``max_events``, ``batch_size``, ``export_timeout_ms``). Leave a field ``None`` to take
    it from the environment or the default; call :meth:`resolve` (sessions do) to get a
    config with every value filled, ``sources`` saying where each came from and
    ``ignored`` listing the environment values that could not be used.

    Args:
        enabled: ``False`` turns tracing off; runs still work and fill ``RunResult``.
            ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none`` do the same.
        exporter_type: one backend name or several (``"otlp"``, ``["otlp", "console"]``).
            When neither this nor ``OTEL_TRACES_EXPORTER`` names one: ``otlp`` if an OTLP
            endpoint variable is set (the specification's default), else ``jsonl``.
        collector_endpoint: endpoint handed to the backends (overrides the exporters'
            own endpoint variables).
        export_timeout_ms: the seed's name for ``export_timeout`` (in milliseconds).
        export_timeout: the deadline of one export, retries included, in seconds; ``0``
            means no limit (kept as :data:`NO_LIMIT_MS`, 24.8 days).
        schedule_delay: seconds a span may wait in the queue before a batch leaves.
        sampler / sample_rate: an OpenTelemetry sampler name and its argument (read only
            by the samplers that take one: ``*traceidratio`` and ``tailbased``).
        tail_latency_threshold: for ``tailbased``: runs slower than this are always kept.
        max_attributes: attributes per span (``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT``, else
            ``OTEL_ATTRIBUTE_COUNT_LIMIT``, else 128).
        span_limits: the other span limits, by ``SpanLimits`` keyword (``max_links``,
            ``max_event_attributes``, ``max_link_attributes``, ``max_attribute_length``,
            ``max_span_attribute_length``; ``None`` is no limit); the keys not given come
            from their OTEL_* variables.
        traces_file: the embedded ``jsonl`` backend's file.
        monitor_interval: seconds between two samples of the script's process tree.
        in_script_tracing: spans a Python script makes with the OpenTelemetry API join the
            run's trace (a bootstrap on its PYTHONPATH, a channel back to the runner).
        instrument: instrumentation names loaded inside Python scripts at their start.
        spool_dir: where spans a backend could not take are kept for it (one directory
            per backend and destination), default ``.aiorunner/spool``.
        spool_max_bytes: the bound of each backend's spool (oldest dropped first,
            counted); ``0`` turns the spool off (such spans then count as failed).
        connect_budget: seconds spent retrying a backend that refuses connections or
            whose name does not resolve, before its spans are spooled (about 1 s).
        spool_hedge: seconds an export attempt may go unanswered before a copy of its
            batch is spooled and the batch counts as spooled for the runs waiting on it
            (the attempt goes on; its copy is removed if it succeeds); ``0`` turns
            hedging off (a run then waits up to the export deadline).
        backend_options: free-form options a backend may read (``config.option(...)``).
        logs: ``False`` sends no log records of the scripts' output (``--no-logs``;
            ``OTEL_LOGS_EXPORTER=none`` does the same).
        logs_exporter: the backends log records go to (``OTEL_LOGS_EXPORTER``); empty:
            the traces' backends that take logs.
        logs_batch_size / logs_max_queue_size / logs_schedule_delay /
            logs_export_timeout: the logs pipeline's ``OTEL_BLRP_*`` settings.
        log_max_records: records one run may send (``AIORUNNER_LOG_MAX_RECORDS``); the
            rest are counted, not sent.
        logs_file: the ``jsonl`` backend's logs file (``AIORUNNER_LOGS_FILE``); empty:
            ``logs.jsonl`` beside the traces file.
        metrics: ``False`` sends no metrics (``--no-metrics``; ``OTEL_METRICS_EXPORTER=none``
            does the same).
        metrics_exporter: the backends metrics go to (``OTEL_METRICS_EXPORTER``); empty:
            the traces' backends that take metrics.
        metrics_interval: seconds between two exports of a running script's metrics
            (``OTEL_METRIC_EXPORT_INTERVAL``, default 10 s); a run's final values are
            exported when it ends whatever this is.
        metrics_export_timeout: the metrics pipeline's export timeout
            (``OTEL_METRIC_EXPORT_TIMEOUT``).
        metrics_temporality: ``cumulative`` (default), ``delta`` or ``lowmemory``
            (``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE``).
        metrics_file: the ``jsonl`` backend's metrics file (``AIORUNNER_METRICS_FILE``);
            empty: ``metrics.jsonl`` beside the traces file.
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
    spool_dir: str | os.PathLike[str] | None = None
    spool_max_bytes: int | None = None
    connect_budget: float | None = None
    spool_hedge: float | None = None
    span_limits: Mapping[str, int | None] | None = None
    backend_options: Mapping[str, Any] | None = None
    logs: bool | None = None
    logs_exporter: str | Sequence[str] | None = None
    logs_batch_size: int | None = None
    logs_max_queue_size: int | None = None
    logs_schedule_delay: float | None = None
    logs_export_timeout: float | None = None
    log_max_records: int | None = None
    logs_file: str | os.PathLike[str] | None = None
    metrics: bool | None = None
    metrics_exporter: str | Sequence[str] | None = None
    metrics_interval: float | None = None
    metrics_export_timeout: float | None = None
    metrics_temporality: str | None = None
    metrics_file: str | os.PathLike[str] | None = None
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    #: The environment values :meth:`resolve` ignored (each also logged once).
    ignored: tuple[EnvProblem, ...] = field(default=(), compare=False, repr=False)

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
        validated, ``sources`` naming where each value came from, and ``ignored`` the
        environment values that could not be used (each logged once as a WARNING, and
        replaced by what the next source gives).

        Raises:
            ConfigError: an explicit argument, or an ``AIORUNNER_*`` variable, is
                invalid; the message names the field or variable and what is accepted.
        """
        if self.resolved:
            return self
        reader = _EnvReader(os.environ if environ is None else environ)
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
            value = None
            if given is not None:
                values[name], sources[name] = given, "argument"
                continue
            if spec.env is not None and spec.parse is not None:
                instead = spec.instead or f"the default {_show(spec.default)}"
                value = reader.read(spec.env, spec.parse, instead)
            if value is not None:
                values[name], sources[name] = value, f"env {spec.env}"
            else:
                values[name], sources[name] = spec.default, "default"
        if explicit["enabled"] is None:
            _env_disabled(reader, values, sources)
        if explicit["exporter_type"] is None:
            values["exporter_type"], sources["exporter_type"] = _env_exporters(reader)
        if explicit["logs_exporter"] is None:
            _env_logs_exporter(reader, values, sources, logs_given=explicit["logs"] is not None)
        if explicit["metrics_exporter"] is None:
            _env_logs_exporter(
                reader,
                values,
                sources,
                logs_given=explicit["metrics"] is not None,
                signal="metrics",
            )
        if explicit["sampler"] is None:
            _env_sampler(reader, values, sources, rate_given=explicit["sample_rate"] is not None)
        if explicit["sample_rate"] is None:
            _env_sample_rate(reader, values, sources)
        if explicit["max_attributes"] is None:
            _env_max_attributes(reader, values, sources)
        values["span_limits"] = _span_limits(reader, explicit["span_limits"])
        for var in (OTEL_EXPERIMENTAL_CONFIG_FILE, OTEL_CONFIG_FILE):
            raw = reader.raw(var)
            if raw is not None:
                reader.ignore(
                    var,
                    raw,
                    "names a declarative configuration file, which aiorunner does not read",
                    "the other OTEL_* variables",
                    "configure aiorunner through the OTEL_* variables, TracingConfig or the "
                    f"flags of `aiorunner run`, and unset {var}",
                )

        _check_types(values)
        if isinstance(values["exporter_type"], str):
            values["exporter_type"] = _parse_list("exporter_type", values["exporter_type"])
        values["exporter_type"] = tuple(values["exporter_type"])
        if not values["exporter_type"]:
            raise ConfigError(
                f"{option_name('exporter_type')} is empty; name at least one backend, or 'none'"
            )
        if "none" in values["exporter_type"]:
            if len(values["exporter_type"]) > 1:
                raise ConfigError(
                    f"{option_name('exporter_type')} {','.join(values['exporter_type'])!r} "
                    "mixes 'none' "
                    "with other backends; use 'none' alone to turn export off"
                )
            values["enabled"] = False
        if values["collector_endpoint"] is not None:
            values["collector_endpoint"] = validate_endpoint(
                option_name("collector_endpoint"), values["collector_endpoint"]
            )
        values["sampler"] = _parse_sampler("sampler", str(values["sampler"]))
        rate = _check_number("sample_rate", values["sample_rate"], minimum=0)
        if rate > 1:
            raise ConfigError(f"sample_rate={values['sample_rate']!r} must be between 0 and 1")
        values["sample_rate"] = float(rate)
        for name in ("max_attributes", "max_events"):
            values[name] = int(_check_number(name, values[name], minimum=0, integer=True))
        for name in ("batch_size", "max_queue_size"):
            values[name] = int(_check_number(name, values[name], minimum=1, integer=True))
        for name in ("schedule_delay", "export_timeout"):
            values[name] = float(_check_number(name, values[name], minimum=0))
        if values["export_timeout"] in (0, NO_LIMIT_MS / 1000.0):
            values["export_timeout"] = NO_LIMIT_MS / 1000.0
            sources["export_timeout"] += " (0: no limit)"
        for name in ("monitor_interval", "tail_latency_threshold", "connect_budget"):
            values[name] = float(_check_number(name, values[name], minimum=0, strict=True))
        values["spool_hedge"] = float(
            _check_number("spool_hedge", values["spool_hedge"], minimum=0)
        )
        values["spool_max_bytes"] = int(
            _check_number("spool_max_bytes", values["spool_max_bytes"], minimum=0, integer=True)
        )
        values["spool_dir"] = os.fspath(values["spool_dir"])
        values["batch_size"] = min(values["batch_size"], values["max_queue_size"])
        values["traces_file"] = os.fspath(values["traces_file"])
        values["propagators"] = tuple(values["propagators"])
        values["instrument"] = check_names(
            values["instrument"],
            field="instrument" if sources["instrument"] == "argument" else AIORUNNER_INSTRUMENT,
        )
        values["resource_attributes"] = dict(values["resource_attributes"])
        values["backend_options"] = dict(values["backend_options"])
        _check_logs(values)
        _check_metrics(values)
        values["enabled"] = bool(values["enabled"])
        values["export_timeout_ms"] = round(values["export_timeout"] * 1000)
        sources["export_timeout_ms"] = sources["export_timeout"]
        sources["span_limits"] = (
            "argument"
            if explicit["span_limits"] is not None
            else "env"
            if any(reader.raw(v) for v, _, _ in SPAN_LIMITS.values())
            else "default"
        )
        for problem in reader.problems:
            report_env_problem(problem)
        return TracingConfig(**values, sources=sources, ignored=tuple(reader.problems))


def _env_logs_exporter(
    reader: _EnvReader,
    values: dict[str, Any],
    sources: dict[str, str],
    *,
    logs_given: bool,
    signal: str = "logs",
) -> None:
    """OTEL_LOGS_EXPORTER (or OTEL_METRICS_EXPORTER with ``signal="metrics"``): backend
    names for that signal, ``none`` for none; unset: the traces' backends that take it."""
    var = OTEL_LOGS_EXPORTER if signal == "logs" else OTEL_METRICS_EXPORTER
    raw = reader.raw(var)
    if raw is None:
        return
    names = _list(raw)
    if "none" in names and len(names) > 1:
        rest = tuple(dict.fromkeys(n for n in names if n != "none"))
        reader.ignore(
            var,
            raw,
            "mixes 'none' with other backends",
            f"{','.join(rest)} (without 'none')",
            f"name the backends alone, or 'none' alone to send no {signal}",
        )
        names = rest
    if names == ("none",):
        if not logs_given:
            values[signal], sources[signal] = False, f"env {var}"
        return
    values[f"{signal}_exporter"], sources[f"{signal}_exporter"] = names, f"env {var}"


def _check_switch(values: dict[str, Any], signal: str) -> None:
    """``<signal>`` (a bool) and ``<signal>_exporter`` (names; ``none`` alone turns the
    signal off), checked and normalised: the part logs and metrics share."""
    if not isinstance(values[signal], bool):
        raise ConfigError(f"{signal}={values[signal]!r} must be True or False")
    names = values[f"{signal}_exporter"]
    if isinstance(names, str):
        names = _parse_list(f"{signal}_exporter", names)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ConfigError(
            f"{signal}_exporter={names!r} must be a backend name or a list of names, "
            "e.g. 'otlp' or ['otlp', 'console']"
        )
    names = tuple(names)
    if "none" in names:
        if len(names) > 1:
            raise ConfigError(
                f"{signal}_exporter {','.join(names)!r} mixes 'none' with other backends; "
                f"use 'none' alone to send no {signal}"
            )
        values[signal], names = False, ()
    values[f"{signal}_exporter"] = names


def _check_metrics(values: dict[str, Any]) -> None:
    """The metrics fields, checked and normalised (explicit values raise ConfigError)."""
    _check_switch(values, "metrics")
    interval = _check_number("metrics_interval", values["metrics_interval"], minimum=0)
    if not interval > 0:
        raise ConfigError(
            f"metrics_interval={values['metrics_interval']!r} must be a positive number of "
            "seconds, e.g. 10.0"
        )
    values["metrics_interval"] = float(interval)
    timeout = float(
        _check_number("metrics_export_timeout", values["metrics_export_timeout"], minimum=0)
    )
    values["metrics_export_timeout"] = timeout or NO_LIMIT_MS / 1000.0
    temporality = values["metrics_temporality"]
    if not isinstance(temporality, str) or temporality.lower() not in TEMPORALITIES:
        raise ConfigError(
            f"metrics_temporality={temporality!r} is not a temporality preference; use one "
            f"of {', '.join(TEMPORALITIES)}"
        )
    values["metrics_temporality"] = temporality.lower()
    if not isinstance(values["metrics_file"], (str, os.PathLike)):
        raise ConfigError(f"metrics_file={values['metrics_file']!r} must be a path")
    values["metrics_file"] = os.fspath(values["metrics_file"])


def _check_logs(values: dict[str, Any]) -> None:
    """The logs fields, checked and normalised (explicit values raise ConfigError)."""
    _check_switch(values, "logs")
    for name in ("logs_batch_size", "logs_max_queue_size"):
        values[name] = int(_check_number(name, values[name], minimum=1, integer=True))
    values["logs_batch_size"] = min(values["logs_batch_size"], values["logs_max_queue_size"])
    values["log_max_records"] = int(
        _check_number("log_max_records", values["log_max_records"], minimum=0, integer=True)
    )
    for name in ("logs_schedule_delay", "logs_export_timeout"):
        values[name] = float(_check_number(name, values[name], minimum=0))
    if values["logs_export_timeout"] in (0, NO_LIMIT_MS / 1000.0):
        values["logs_export_timeout"] = NO_LIMIT_MS / 1000.0
    if not isinstance(values["logs_file"], (str, os.PathLike)):
        raise ConfigError(f"logs_file={values['logs_file']!r} must be a path")
    values["logs_file"] = os.fspath(values["logs_file"])


def _env_disabled(reader: _EnvReader, values: dict[str, Any], sources: dict[str, str]) -> None:
    """OTEL_SDK_DISABLED is a Boolean: true only for a case-insensitive ``true``; any
    other value than ``false`` is warned about and read as false (specification)."""
    raw = reader.raw(OTEL_SDK_DISABLED)
    if raw is None:
        return
    word = raw.strip().lower()
    if word == "true":
        values["enabled"], sources["enabled"] = False, f"env {OTEL_SDK_DISABLED}"
    elif word != "false":
        reader.ignore(
            OTEL_SDK_DISABLED,
            raw,
            "is not a boolean (only 'true' disables the SDK)",
            "false (tracing stays on)",
            f"set {OTEL_SDK_DISABLED} to true or false, or unset it",
        )


def _env_exporters(reader: _EnvReader) -> tuple[tuple[str, ...], str]:
    """OTEL_TRACES_EXPORTER, else the default: ``otlp`` when an OTLP endpoint variable is
    set (the specification's default exporter; platforms that inject only the endpoint
    get their traces), else the embedded ``jsonl`` file. Unknown names are the
    registry's to find (it knows what is installed)."""
    raw = reader.raw(OTEL_TRACES_EXPORTER)
    names = _list(raw) if raw is not None else ()
    if raw is not None and "none" in names and len(names) > 1:
        rest = tuple(dict.fromkeys(n for n in names if n != "none"))
        reader.ignore(
            OTEL_TRACES_EXPORTER,
            raw,
            "mixes 'none' with other backends",
            f"{','.join(rest)} (without 'none')",
            "name the backends alone, or 'none' alone to turn export off",
        )
        names = rest
    if names:
        return names, f"env {OTEL_TRACES_EXPORTER}"
    endpoint = otlp_endpoint_variable(reader.env, reader)
    if endpoint is not None:
        return ("otlp",), f"default: {endpoint} is set"
    return ("jsonl",), "default"


def otlp_endpoint_variable(env: Mapping[str, str], reader: _EnvReader | None = None) -> str | None:
    """The OTLP endpoint variable whose value selects the ``otlp`` default, if any (the
    traces one first); an invalid value is ignored (reported through ``reader``)."""
    found = None
    bad: list[tuple[str, str, _Invalid]] = []
    for var in (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT):
        raw = env.get(var, "")
        if not raw.strip():
            continue
        try:
            _endpoint(raw)
        except _Invalid as invalid:
            bad.append((var, raw, invalid))
            continue
        found = found or var
    if reader is not None:
        instead = f"otlp (through {found})" if found else "the embedded jsonl file"
        for var, raw, why in bad:
            reader.ignore(var, raw, why.reason, instead, f"set {var}: {why.accepted}; or unset it")
    return found


def _env_sampler(
    reader: _EnvReader, values: dict[str, Any], sources: dict[str, str], *, rate_given: bool
) -> None:
    sampler = reader.read(OTEL_TRACES_SAMPLER, _sampler, f"the default {values['sampler']}")
    if sampler is not None:
        values["sampler"], sources["sampler"] = sampler, f"env {OTEL_TRACES_SAMPLER}"
    elif rate_given:
        # The seed's TracingConfig(sample_rate=0.1) means "sample 10 %".
        values["sampler"], sources["sampler"] = "parentbased_traceidratio", "argument sample_rate"


def _env_sample_rate(reader: _EnvReader, values: dict[str, Any], sources: dict[str, str]) -> None:
    """OTEL_TRACES_SAMPLER_ARG, read only by the samplers that take an argument (the
    specification: "Each Sampler type defines its own expected input, if any")."""
    sampler = str(values["sampler"])
    if sampler in SAMPLERS_WITH_ARG:
        rate = reader.read(OTEL_TRACES_SAMPLER_ARG, _ratio, "the default 1.0")
        if rate is not None:
            values["sample_rate"], sources["sample_rate"] = rate, f"env {OTEL_TRACES_SAMPLER_ARG}"
    elif reader.raw(OTEL_TRACES_SAMPLER_ARG) is not None:
        sources["sample_rate"] = f"default ({OTEL_TRACES_SAMPLER_ARG} is not read by {sampler})"


def _env_max_attributes(
    reader: _EnvReader, values: dict[str, Any], sources: dict[str, str]
) -> None:
    """OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT, else the general OTEL_ATTRIBUTE_COUNT_LIMIT, else
    128 (the SDK's precedence for span attributes)."""
    general = reader.read(OTEL_ATTRIBUTE_COUNT_LIMIT, _int(0), "the default 128")
    fallback, source, shown = 128, "default", "the default 128"
    if general is not None:
        fallback, source = general, f"env {OTEL_ATTRIBUTE_COUNT_LIMIT}"
        shown = f"{general} (from {OTEL_ATTRIBUTE_COUNT_LIMIT})"
    value = reader.read(OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT, _int(0), shown)
    if value is not None:
        fallback, source = value, f"env {OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT}"
    values["max_attributes"], sources["max_attributes"] = fallback, source


def _span_limits(reader: _EnvReader, given: Mapping[str, Any] | None) -> dict[str, int | None]:
    """Every limit of SPAN_LIMITS: given in code (checked), else its variable, else its
    fallback variable, else the default. Passed to ``SpanLimits`` explicitly, so that the
    SDK never reads (and raises on) these variables itself."""
    if given is not None:
        if not isinstance(given, dict) and not hasattr(given, "items"):
            raise ConfigError(
                f"span_limits={given!r} must be a mapping such as {{'max_links': 32}}"
            )
        for key, value in given.items():
            if key not in SPAN_LIMITS:
                raise ConfigError(
                    f"span_limits: {key!r} is not a span limit; accepted: {', '.join(SPAN_LIMITS)}"
                )
            if value is not None:
                _check_number(f"span_limits[{key!r}]", value, minimum=0, integer=True)
    limits: dict[str, int | None] = {}
    for key, (var, fallback_var, default) in SPAN_LIMITS.items():
        if given is not None and key in given:
            limits[key] = given[key]
            continue
        fallback = default
        shown = "no limit (the default)" if default is None else f"the default {default}"
        if fallback_var is not None:
            general = reader.read(fallback_var, _int(0), shown)
            if general is not None:
                fallback, shown = general, f"{general} (from {fallback_var})"
        value = reader.read(var, _int(0), shown)
        limits[key] = value if value is not None else fallback
    return limits


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
    for name in ("service_name", "traces_file", "spool_dir"):
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
