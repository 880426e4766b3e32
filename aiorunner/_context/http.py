"""
HTTP requests made inside ``runner.tracer.trace(...)`` (or a ``@trace_span`` function, or
a run) carry the trace context, with no ``auto_instrument`` call: on the first use of
the tracer API with tracing on, the HTTP client libraries of this process that have an
OpenTelemetry instrumentation installed (requests, httpx, urllib3, urllib, aiohttp
client) are instrumented, each as soon as the program has imported it; libraries it
never imports are never imported. ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` (entry point
names, ``*`` for all) leaves libraries out. Python scripts get the same from the
bootstrap (``bootstrap/_aiorunner_http.py``, which holds the shared logic).

Each request's client span goes to the session whose span is current (the one of
``runner.tracer.trace``, a ``@trace_span`` function or a run, see
``tracer.current_session``); outside of them, to the application's own global
TracerProvider, a no-op unless it set one: no span and no header for requests that are
not part of a trace.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["instrument_http_clients", "instrumenter"]

logger = logging.getLogger("aiorunner.instrument")

_lock = threading.Lock()
_started = False
_instrumenter: Any = None


def instrumenter() -> Any:
    """The process's ``AutoInstrumenter`` (None before the first use of the tracer API,
    or when every library is disabled)."""
    return _instrumenter


def started() -> bool:
    """True once :func:`instrument_http_clients` has run in this process."""
    return _started


def instrument_http_clients(resolve: Callable[[], Any]) -> None:
    """
    Instrument the HTTP client libraries of this process, once per process: those
    imported already now, the others when they are imported (blocking the first time:
    imports, file-system look-ups; call it off the event loop). Never raises; a library
    imported without its instrumentation is logged once (WARNING) with the package to
    install.

    Args:
        resolve: returns the TracerProvider that should record a request starting now
            (called at each request).
    """
    global _started, _instrumenter
    if _started:
        return
    with _lock:
        if _started:
            return
        _started = True
        try:
            from .bootstrap import _aiorunner_http as http

            libraries = http.enabled_libraries()
            if not libraries:
                return
            _instrumenter = http.AutoInstrumenter(
                http.ResolvingTracerProvider(resolve), logger.warning
            )
            _instrumenter.start(libraries)
        except Exception as exc:  # noqa: BLE001 - never into the caller's span
            logger.warning("HTTP client instrumentation is off: %s: %s", type(exc).__name__, exc)
