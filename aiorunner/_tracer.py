"""
The seed's tracer API: ``runner.tracer.trace(name)`` and ``@trace_span``.

``trace()`` is one object usable with ``with`` and ``async with``; it starts a span as the
current span of the calling task (so spans made inside a run's task join that run's trace,
and a ``ScriptRunner.run()`` inside it becomes its child), records an exception and ERROR
status if the block raises, and ends the span.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

from opentelemetry import trace

if TYPE_CHECKING:
    from types import TracebackType

    from opentelemetry.trace import Span

    from ._session import Session

__all__ = ["RunnerTracer", "SpanContextManager", "trace_span"]

F = TypeVar("F", bound=Callable[..., Any])


class SpanContextManager:
    """A span for a ``with`` or ``async with`` block."""

    def __init__(
        self, tracer: trace.Tracer, name: str, attributes: Mapping[str, Any] | None
    ) -> None:
        self._tracer = tracer
        self._name = name
        self._attributes = dict(attributes or {})
        self._cm: Any = None

    def __enter__(self) -> Span:
        self._cm = self._tracer.start_as_current_span(
            self._name,
            attributes=self._attributes,
            record_exception=True,
            set_status_on_exception=True,
        )
        span: Span = self._cm.__enter__()
        return span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        result: bool | None = self._cm.__exit__(exc_type, exc, tb)
        return result

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return self.__exit__(exc_type, exc, tb)


class RunnerTracer:
    """``runner.tracer``: makes spans in the runner's session (its export pipeline)."""

    def __init__(self, session: Callable[[], Session]) -> None:
        self._session = session

    def _tracer(self) -> trace.Tracer:
        session = self._session()
        return session.tracer() if session.enabled else trace.NoOpTracer()

    def trace(self, name: str, attributes: Mapping[str, Any] | None = None) -> SpanContextManager:
        """A span named ``name`` as the current span for the ``with`` block."""
        return SpanContextManager(self._tracer(), name, attributes)


def _default_tracer() -> trace.Tracer:
    from ._session import get_default_session

    session = get_default_session()
    return session.tracer() if session.enabled else trace.NoOpTracer()


@overload
def trace_span(name: F) -> F: ...
@overload
def trace_span(
    name: str | None = None, attributes: Mapping[str, Any] | None = None
) -> Callable[[F], F]: ...


def trace_span(name: Any = None, attributes: Mapping[str, Any] | None = None) -> Any:
    """
    Trace every call of the decorated function as a span (seed: Span Decorators).

    Works on sync and async functions, generators and async generators (the span covers
    the whole iteration). Exceptions are recorded with ERROR status and re-raised. Usable
    bare (``@trace_span``) or with a name (``@trace_span("load")``).
    """
    if callable(name):
        return trace_span()(name)

    def decorate(func: F) -> F:
        span_name = name or func.__qualname__
        attrs = dict(attributes or {})
        attrs.setdefault("code.function", func.__qualname__)
        attrs.setdefault("code.namespace", func.__module__)

        def cm() -> SpanContextManager:
            return SpanContextManager(_default_tracer(), span_name, attrs)

        if inspect.isasyncgenfunction(func):

            @functools.wraps(func)
            async def agen_wrapper(*args: Any, **kwargs: Any) -> Any:
                with cm():
                    async for item in func(*args, **kwargs):
                        yield item

            return agen_wrapper  # type: ignore[return-value]
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with cm():
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]
        if inspect.isgeneratorfunction(func):

            @functools.wraps(func)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
                with cm():
                    return (yield from func(*args, **kwargs))

            return gen_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with cm():
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
