"""
Failures on spans, as the semantic conventions record them (``recording-errors.md``,
``exceptions-spans.md``): ``error.type`` beside ERROR status, and the ``exception`` event.

The event is the SDK's ``Span.record_exception`` without ``exception.escaped``, which the
conventions deprecated (an exception that does not escape its span should not be
recorded at all; one that does is the span's failure, which its status already says).

Its stack trace starts at the user's frame: an exception caught by ``@trace_span``'s
wrappers has the wrappers' own frames (``tracer.py``) first, and between the user's
frames when decorated functions call each other; they say nothing about the failure and
are left out.
"""

from __future__ import annotations

import os
import traceback
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.trace import Span

#: The module whose frames wrap the user's code (``@trace_span``, ``runner.tracer``).
_WRAPPER_FILE = os.path.normcase(os.path.join(os.path.dirname(__file__), "tracer.py"))

__all__ = ["error_type_of", "exception_attributes", "record_exception"]


def error_type_of(exc_type: type[BaseException]) -> str:
    """``error.type`` (and ``exception.type``) of an exception: its class's canonical
    name, ``ValueError`` for a built-in, ``json.decoder.JSONDecodeError`` otherwise."""
    module = exc_type.__module__
    if not module or module == "builtins":
        return exc_type.__qualname__
    return f"{module}.{exc_type.__qualname__}"


def _without_wrappers(te: traceback.TracebackException) -> None:
    """Drop our wrappers' frames from ``te`` and the exceptions chained to it (a frame
    is kept when it is the only one)."""
    seen: set[int] = set()
    todo = [te]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        frames = [f for f in current.stack if os.path.normcase(f.filename) != _WRAPPER_FILE]
        if frames and len(frames) != len(current.stack):
            current.stack = traceback.StackSummary.from_list(frames)
        todo.extend(x for x in (current.__cause__, current.__context__) if x is not None)
        todo.extend(getattr(current, "exceptions", None) or ())  # ExceptionGroup members


def exception_attributes(exc: BaseException) -> dict[str, str]:
    """The ``exception`` event's attributes: type, message, stack trace (without the
    frames of our wrappers: it starts at the user's frame)."""
    te = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    _without_wrappers(te)
    return {
        "exception.type": error_type_of(type(exc)),
        "exception.message": str(exc),
        "exception.stacktrace": "".join(te.format()),
    }


def record_exception(span: Span, exc: BaseException) -> None:
    """Add the ``exception`` event for ``exc`` to ``span``."""
    span.add_event("exception", exception_attributes(exc))
