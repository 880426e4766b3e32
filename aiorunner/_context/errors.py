"""
Failures on spans, as the semantic conventions record them (``recording-errors.md``,
``exceptions-spans.md``): ``error.type`` beside ERROR status, and the ``exception`` event.

The event is the SDK's ``Span.record_exception`` without ``exception.escaped``, which the
conventions deprecated (an exception that does not escape its span should not be
recorded at all; one that does is the span's failure, which its status already says).
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["error_type_of", "exception_attributes", "record_exception"]


def error_type_of(exc_type: type[BaseException]) -> str:
    """``error.type`` (and ``exception.type``) of an exception: its class's canonical
    name, ``ValueError`` for a built-in, ``json.decoder.JSONDecodeError`` otherwise."""
    module = exc_type.__module__
    if not module or module == "builtins":
        return exc_type.__qualname__
    return f"{module}.{exc_type.__qualname__}"


def exception_attributes(exc: BaseException) -> dict[str, str]:
    """The ``exception`` event's attributes: type, message, stack trace."""
    return {
        "exception.type": error_type_of(type(exc)),
        "exception.message": str(exc),
        "exception.stacktrace": "".join(traceback.format_exception(exc)),
    }


def record_exception(span: Span, exc: BaseException) -> None:
    """Add the ``exception`` event for ``exc`` to ``span``."""
    span.add_event("exception", exception_attributes(exc))
