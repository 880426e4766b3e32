"""
W3C Trace Context in and out of a run.

A run's parent comes from, in order: a ``context=`` or ``carrier=`` given to the runner;
the OpenTelemetry context current in the calling task; ``TRACEPARENT``/``TRACESTATE``/
``BAGGAGE`` in our own environment (the env-carrier convention, so a script run by
aiorunner that runs scripts with aiorunner yields one trace). Children get the same three
variables for their ``execute_script`` span. Propagators are those of ``OTEL_PROPAGATORS``
(``tracecontext``, ``baggage``, ``b3``, ... as installed), loaded once per name list.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.propagators.composite import CompositePropagator

from .._exceptions import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from opentelemetry.context import Context
    from opentelemetry.propagators.textmap import TextMapPropagator

__all__ = ["ENV_CARRIER_KEYS", "extract_parent", "get_propagator", "inject_env"]

#: Environment variable <-> header name, per the OpenTelemetry env-carrier convention.
ENV_CARRIER_KEYS = {
    "TRACEPARENT": "traceparent",
    "TRACESTATE": "tracestate",
    "BAGGAGE": "baggage",
    # b3 single header and jaeger, for those who use those propagators
    "B3": "b3",
    "UBER_TRACE_ID": "uber-trace-id",
}


#: The API's own propagators (the default ``tracecontext,baggage``), by name, so that the
#: default needs no scan of every installed distribution's entry points (~10 ms at start).
_BUILTIN_PROPAGATORS = {
    "tracecontext": (
        "opentelemetry.trace.propagation.tracecontext",
        "TraceContextTextMapPropagator",
    ),
    "baggage": ("opentelemetry.baggage.propagation", "W3CBaggagePropagator"),
}


@functools.lru_cache(maxsize=16)
def get_propagator(names: tuple[str, ...]) -> TextMapPropagator:
    """The composite propagator for ``names`` (entry point group
    ``opentelemetry_propagator``).

    Raises:
        ConfigError: a name is not installed; the message lists what is.
    """
    propagators = []
    for name in names:
        if name == "none":
            continue
        builtin = _BUILTIN_PROPAGATORS.get(name)
        if builtin is not None:
            import importlib

            propagators.append(getattr(importlib.import_module(builtin[0]), builtin[1])())
            continue
        from opentelemetry.util._importlib_metadata import entry_points

        found = list(entry_points(group="opentelemetry_propagator", name=name))
        if not found:
            installed = sorted(
                {ep.name for ep in entry_points(group="opentelemetry_propagator")} | {"none"}
            )
            hint = " (pip install opentelemetry-propagator-b3)" if name.startswith("b3") else ""
            raise ConfigError(
                f"OTEL_PROPAGATORS names unknown propagator {name!r}{hint}; "
                f"installed: {', '.join(installed)}"
            )
        propagators.append(found[0].load()())
    return CompositePropagator(propagators)


def carrier_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {header: environ[var] for var, header in ENV_CARRIER_KEYS.items() if environ.get(var)}


def extract_parent(
    propagators: Sequence[str],
    *,
    context: Context | None = None,
    carrier: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Context | None:
    """The context a run's root span should take its parent (and baggage) from."""
    if context is not None:
        return context
    propagator = get_propagator(tuple(propagators))
    if carrier is not None:
        return propagator.extract({k.lower(): v for k, v in carrier.items()})
    if trace.get_current_span().get_span_context().is_valid:
        return None  # the current context of the calling task
    env_carrier = carrier_from_env(os.environ if environ is None else environ)
    if env_carrier:
        return propagator.extract(env_carrier)
    return None


def inject_env(propagators: Sequence[str], context: Context, env: dict[str, str]) -> None:
    """Write the context as TRACEPARENT/TRACESTATE/BAGGAGE (and friends) into ``env``,
    replacing what the parent environment had."""
    headers: dict[str, str] = {}
    get_propagator(tuple(propagators)).inject(headers, context=context)
    for var, header in ENV_CARRIER_KEYS.items():
        env.pop(var, None)
        if header in headers:
            env[var] = headers[header]
