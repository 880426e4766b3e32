"""
Trace context in and out of a run, through any propagator.

A run's parent comes from, in order: a ``context=`` or ``carrier=`` given to the runner;
the OpenTelemetry context current in the calling task; our own environment, read with
the propagators of ``OTEL_PROPAGATORS`` (``tracecontext,baggage`` by default; ``b3``,
``b3multi``, ``jaeger``, ``xray``, ... as installed). Children get the same propagators'
fields for their ``execute_script`` span, so a script run by aiorunner that runs scripts
with aiorunner yields one trace.

The environment is a carrier by OpenTelemetry's env-carrier rules
(``opentelemetry.propagators._envcarrier``, used when the installed API has it): a field
name becomes its variable by upper-casing it and turning every other character than a
letter, digit or ``_`` into ``_``. So ``traceparent`` is ``TRACEPARENT`` and b3multi's
``x-b3-traceid`` is ``X_B3_TRACEID``: whatever fields a propagator declares travel,
not a fixed list of names.

A name in ``OTEL_PROPAGATORS`` that is not installed is a warning (the specification's
rule for an unknown value): it is left out, the others are used, and with none left the
default. Given in code (``TracingConfig(propagators=...)``), it is a ``ConfigError``.
"""

from __future__ import annotations

import functools
import os
import re
from typing import TYPE_CHECKING

from opentelemetry import baggage, trace
from opentelemetry.propagators.composite import CompositePropagator

from .._config import EnvProblem, report_env_problem
from .._exceptions import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping, MutableMapping, Sequence

    from opentelemetry.context import Context
    from opentelemetry.propagators.textmap import TextMapPropagator

    from .._config import TracingConfig

__all__ = [
    "DEFAULT_PROPAGATORS",
    "check_propagators",
    "env_var",
    "extract_parent",
    "get_propagator",
    "inject_env",
]

OTEL_PROPAGATORS = "OTEL_PROPAGATORS"

#: The specification's default of ``OTEL_PROPAGATORS``.
DEFAULT_PROPAGATORS = ("tracecontext", "baggage")

#: The API's own propagators (the default ``tracecontext,baggage``), by name, so that the
#: default needs no scan of every installed distribution's entry points (~10 ms at start).
_BUILTIN_PROPAGATORS = {
    "tracecontext": (
        "opentelemetry.trace.propagation.tracecontext",
        "TraceContextTextMapPropagator",
    ),
    "baggage": ("opentelemetry.baggage.propagation", "W3CBaggagePropagator"),
}

#: Propagator name -> the distribution that registers it, for the "pip install" hint.
KNOWN_PACKAGES = {
    "b3": "opentelemetry-propagator-b3",
    "b3multi": "opentelemetry-propagator-b3",
    "jaeger": "opentelemetry-propagator-jaeger",
    "xray": "opentelemetry-propagator-aws-xray",
    "xray-lambda": "opentelemetry-propagator-aws-xray",
    "ottrace": "opentelemetry-propagator-ot-trace",
    "gcp_trace": "opentelemetry-propagator-gcp",
}

#: Fields of the common propagators, removed from a child's inherited environment
#: whatever propagators are in use: a child whose own SDK reads another format than
#: ours must not find the context we inherited (it would skip the run's spans).
_WELL_KNOWN_FIELDS = (
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "uber-trace-id",
    "x-amzn-trace-id",
    "ot-tracer-traceid",
    "ot-tracer-spanid",
    "ot-tracer-sampled",
)

try:  # opentelemetry-api >= 1.39 ships the env carrier; older ones: the same rules here
    from opentelemetry.propagators._envcarrier import (  # type: ignore[import-not-found,unused-ignore]
        EnvironmentGetter as _EnvironmentGetter,
    )
    from opentelemetry.propagators._envcarrier import (  # type: ignore[import-not-found,unused-ignore]
        EnvironmentSetter as _EnvironmentSetter,
    )
    from opentelemetry.propagators._envcarrier import (  # type: ignore[import-not-found,unused-ignore]
        _normalize_key,
    )
except ImportError:  # pragma: no cover - exercised with an older API only
    from opentelemetry.propagators.textmap import Getter, Setter

    _NOT_NAME = re.compile(r"[^A-Za-z0-9_]")

    def _normalize_key(key: str) -> str:
        if not key:
            return "_"
        result = _NOT_NAME.sub("_", key).upper()
        return "_" + result if result[0].isdigit() else result

    class _EnvironmentGetter(Getter["Mapping[str, str]"]):  # type: ignore[no-redef]
        def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
            value = carrier.get(_normalize_key(key))
            return None if value is None else [value]

        def keys(self, carrier: Mapping[str, str]) -> list[str]:
            return [k for k in carrier if _normalize_key(k) == k]

    class _EnvironmentSetter(Setter["MutableMapping[str, str]"]):  # type: ignore[no-redef]
        def set(self, carrier: MutableMapping[str, str], key: str, value: str) -> None:
            carrier[_normalize_key(key)] = value


_GETTER = _EnvironmentGetter()
_SETTER = _EnvironmentSetter()


def env_var(field: str) -> str:
    """The environment variable that carries a propagator's ``field``
    (``x-b3-traceid`` -> ``X_B3_TRACEID``)."""
    return str(_normalize_key(field))


class _Loaded:
    """A composite propagator and what ``inject_env`` needs of it, built once."""

    __slots__ = ("missing", "propagator", "stale_vars", "used")

    def __init__(
        self, propagator: TextMapPropagator, used: tuple[str, ...], missing: tuple[str, ...]
    ) -> None:
        self.propagator = propagator
        self.used = used
        self.missing = missing
        fields = set(_WELL_KNOWN_FIELDS) | set(propagator.fields)
        #: Variables a child must not inherit: ours replace them.
        self.stale_vars = tuple(sorted({env_var(f) for f in fields}))


def _installed() -> list[str]:
    from opentelemetry.util._importlib_metadata import entry_points

    return sorted(
        {ep.name for ep in entry_points(group="opentelemetry_propagator")}
        | set(_BUILTIN_PROPAGATORS)
        | {"none"}
    )


def _load_one(name: str) -> TextMapPropagator | None:
    builtin = _BUILTIN_PROPAGATORS.get(name)
    if builtin is not None:
        import importlib

        cls = getattr(importlib.import_module(builtin[0]), builtin[1])
        return cls()  # type: ignore[no-any-return]
    from opentelemetry.util._importlib_metadata import entry_points

    found = list(entry_points(group="opentelemetry_propagator", name=name))
    if not found:
        return None
    return found[0].load()()  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=16)
def _load(names: tuple[str, ...]) -> _Loaded:
    propagators: list[TextMapPropagator] = []
    used: list[str] = []
    missing: list[str] = []
    for name in names:
        if name == "none":
            used.append(name)
            continue
        propagator = _load_one(name)
        if propagator is None:
            missing.append(name)
        else:
            propagators.append(propagator)
            used.append(name)
    if missing and not used:
        # Nothing usable left: the specification's default.
        return _Loaded(_load(DEFAULT_PROPAGATORS).propagator, DEFAULT_PROPAGATORS, tuple(missing))
    return _Loaded(CompositePropagator(propagators), tuple(used), tuple(missing))


def _hint(names: Sequence[str]) -> str:
    packages = sorted({KNOWN_PACKAGES[n] for n in names if n in KNOWN_PACKAGES})
    return f" (pip install {' '.join(packages)})" if packages else ""


def _unknown(loaded: _Loaded) -> str:
    plural = "s" if len(loaded.missing) > 1 else ""
    return f"unknown propagator{plural} {', '.join(repr(n) for n in loaded.missing)}"


def get_propagator(names: Sequence[str], *, explicit: bool = False) -> TextMapPropagator:
    """The composite propagator for ``names`` (entry point group
    ``opentelemetry_propagator``; the API's own two without a scan), loaded once per list.

    A name that is not installed is left out with one WARNING per process and list
    (variable, value, what is used instead, the package to install); with no name left,
    the default ``tracecontext,baggage`` is used.

    Args:
        names: propagator names, as ``OTEL_PROPAGATORS`` lists them.
        explicit: the names were given in code (``TracingConfig(propagators=...)``): an
            unknown one raises instead.

    Raises:
        ConfigError: ``explicit`` and a name is not installed; the message lists what is.
    """
    key = tuple(names)
    loaded = _load(key)
    if loaded.missing:
        installed = ", ".join(_installed())
        if explicit:
            raise ConfigError(
                f"propagators={list(key)!r} names {_unknown(loaded)}{_hint(loaded.missing)}; "
                f"installed: {installed}; install it or remove it from propagators="
            )
        # One WARNING per process and value; aiorunner doctor collects it.
        report_env_problem(
            EnvProblem(
                OTEL_PROPAGATORS,
                ",".join(key),
                f"names {_unknown(loaded)}{_hint(loaded.missing)} (installed: {installed})",
                ",".join(loaded.used) or "none",
                f"install the package that provides it, or remove the name from {OTEL_PROPAGATORS}",
            )
        )
    return loaded.propagator


def check_propagators(config: TracingConfig) -> None:
    """Report the ``OTEL_PROPAGATORS`` names of a resolved ``config`` that are not
    installed, as a run would (for ``aiorunner doctor``, in ``collect_env_problems``)."""
    if str(config.sources.get("propagators", "")).startswith("env"):
        get_propagator(tuple(config.propagators or ()))


def extract_parent(
    propagators: Sequence[str],
    *,
    context: Context | None = None,
    carrier: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Context | None:
    """The context a run's root span should take its parent (and baggage) from, or None
    for the calling task's current context."""
    if context is not None:
        return context
    propagator = get_propagator(propagators)
    if carrier is not None:
        return propagator.extract({k.lower(): v for k, v in carrier.items()})
    if trace.get_current_span().get_span_context().is_valid:
        return None  # the current context of the calling task
    env = os.environ if environ is None else environ
    extracted = propagator.extract(env, getter=_GETTER)
    if trace.get_current_span(extracted).get_span_context().is_valid:
        return extracted
    _check_traceparent(propagators, env)
    if baggage.get_all(extracted):
        return extracted
    return None


#: What a W3C ``traceparent`` looks like, for the warning about one that is not.
_TRACEPARENT_FORM = (
    "a W3C traceparent: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>, ids not "
    "all zeros, e.g. 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
)


def _check_traceparent(propagators: Sequence[str], env: Mapping[str, str]) -> None:
    """A ``TRACEPARENT`` in our environment that the tracecontext propagator could not
    read: warned about once per value (the run starts a new trace, as the
    specification's extract does). Silently, the run would leave the trace its caller
    meant it to join, and nothing would say why."""
    var = env_var("traceparent")
    raw = env.get(var)
    if not raw or not raw.strip() or "tracecontext" not in _load(tuple(propagators)).used:
        return
    shown = raw if len(raw) <= 120 else raw[:120] + "..."
    report_env_problem(
        EnvProblem(
            var,
            shown,
            f"is not {_TRACEPARENT_FORM}",
            "a new trace (no parent)",
            f"set {var} to a valid traceparent, or unset it",
        )
    )


def inject_env(propagators: Sequence[str], context: Context, env: dict[str, str]) -> None:
    """Write the context into ``env`` as the propagators' fields (env-carrier names:
    ``TRACEPARENT``, ``X_B3_TRACEID``, ...), replacing any such variable ``env``
    inherited, ours or of another common format."""
    get_propagator(propagators)  # warns once for unknown names
    loaded = _load(tuple(propagators))
    for var in loaded.stale_vars:
        env.pop(var, None)
    loaded.propagator.inject(env, context=context, setter=_SETTER)
