"""
The seed's tracer API: ``runner.tracer.trace(name)`` and ``@trace_span``.

``trace()`` is one object usable with ``with`` and ``async with``; it starts a span as the
current span of the calling task (so spans made inside a run's task join that run's trace,
and a ``ScriptRunner.run()`` inside it becomes its child), records an exception and ERROR
status if the block raises, and ends the span.

The session behind the tracer is made on first use, and making one scans entry points and
may import plugins (file-system work). The first span with tracing on also instruments
the process's HTTP client libraries (``http.py``: imports), so that requests made inside
a span carry its trace context. ``async with`` and decorated coroutines therefore do both
off the event loop; a plain ``with`` in async code blocks the loop the first time only.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

import anyio.to_thread
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from .errors import error_type_of, record_exception
from .http import instrument_http_clients, started
from .propagation import extract_parent, get_propagator

if TYPE_CHECKING:
    from types import TracebackType

    from opentelemetry.trace import Span

    from .._export.session import Session

__all__ = ["RunnerTracer", "SpanContextManager", "trace_span"]

F = TypeVar("F", bound=Callable[..., Any])

#: A tracer, and the propagators that read TRACEPARENT & co. from our environment.
Target = tuple[trace.Tracer, tuple[str, ...]]

#: The session of the runner whose span or run is current in this context: ``@trace_span``
#: spans made inside ``runner.tracer.trace()`` or a run go where the runner's go.
current_session: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
    "aiorunner_current_session", default=None
)
TracerFactory = Callable[[], Target]
AsyncTracerFactory = Callable[[], Awaitable[Target]]


class SpanContextManager:
    """
    A span for one ``with`` or ``async with`` block (make a new one per block).

    Yields the span: ``set_attribute``, ``add_event``, ``record_exception`` as the
    OpenTelemetry API has them. An exception leaving the block is recorded as an event
    and sets ERROR status, then propagates.
    """

    def __init__(
        self,
        tracer: TracerFactory,
        name: str,
        attributes: Mapping[str, Any] | None,
        *,
        atracer: AsyncTracerFactory | None = None,
    ) -> None:
        self._tracer = tracer
        self._atracer = atracer
        self._name = name
        self._attributes = dict(attributes or {})
        self._cm: Any = None
        self._span: Span = trace.INVALID_SPAN
        self._session_token: contextvars.Token[Session | None] | None = None

    def _start(self, target: Target) -> Span:
        if self._cm is not None:
            raise RuntimeError(
                f"the span context manager for {self._name!r} is already in use; "
                "call trace() again for each block"
            )
        tracer, propagators = target
        # No current span: the parent is TRACEPARENT & co. in our environment, as for a
        # run (a script run by aiorunner that makes spans this way stays in the trace).
        parent = extract_parent(propagators) if propagators else None
        self._cm = tracer.start_as_current_span(
            self._name,
            context=parent,
            attributes=self._attributes,
            # Recorded in __exit__, without the deprecated exception.escaped (errors.py).
            record_exception=False,
            set_status_on_exception=True,
        )
        span: Span = self._cm.__enter__()
        self._span = span
        return span

    def __enter__(self) -> Span:
        return self._start(self._tracer())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        cm, self._cm = self._cm, None
        if isinstance(exc, Exception):  # what the SDK's use_span sets ERROR status for
            record_exception(self._span, exc)
            self._span.set_attribute("error.type", error_type_of(type(exc)))
        result: bool | None = cm.__exit__(exc_type, exc, tb)
        token, self._session_token = self._session_token, None
        if token is not None:
            current_session.reset(token)
        return result

    def bind_session(self, session: Session | None) -> None:
        """Make ``session`` the current session for the block (see current_session)."""
        if session is not None:
            self._session_token = current_session.set(session)

    async def __aenter__(self) -> Span:
        if self._atracer is not None:
            return self._start(await self._atracer())
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        return self.__exit__(exc_type, exc, tb)


_NO_TARGET: Target = (trace.NoOpTracer(), ())
_NO_PROVIDER = trace.NoOpTracerProvider()


def _request_provider() -> Any:
    """The TracerProvider for an HTTP request starting now (see http.py): the session
    whose span is current, else the application's global provider (a no-op unless it
    set one: a request outside any trace gets no span and no header)."""
    session = current_session.get()
    if session is not None:
        return session.tracer_provider if session.enabled else _NO_PROVIDER
    return trace.get_tracer_provider()


def _target(session: Session | None) -> Target:
    if session is None or not session.enabled:
        return _NO_TARGET
    if not started():
        instrument_http_clients(_request_provider)
    return session.tracer(), tuple(session.config.propagators or ())


async def _atarget(session: Session | None) -> Target:
    if session is not None and session.enabled and not started():
        # Imports and file-system look-ups: not on the loop.
        await anyio.to_thread.run_sync(instrument_http_clients, _request_provider)
    target = _target(session)
    if target[1]:
        # Loading propagators scans entry points (file system): not on the loop.
        await anyio.to_thread.run_sync(get_propagator, target[1])
    return target


class RunnerTracer:
    """
    ``runner.tracer``: makes spans in the runner's session (its export pipeline), so
    they leave with the runner's configuration. Spans are no-ops when the runner's
    ``enable_tracing`` is False or its config disables tracing.

    Args:
        session: returns the runner's session (may create it: blocking, first time).
        asession: the same, for async code (creates it off the event loop).
        enabled: returns False when the runner does not trace.
    """

    def __init__(
        self,
        session: Callable[[], Session],
        asession: Callable[[], Awaitable[Session]] | None = None,
        enabled: Callable[[], bool] | None = None,
    ) -> None:
        self._session = session
        self._asession = asession
        self._enabled = enabled

    def _on(self) -> bool:
        return self._enabled is None or self._enabled()

    def trace(self, name: str, attributes: Mapping[str, Any] | None = None) -> SpanContextManager:
        """A span named ``name`` as the current span for the ``with``/``async with``
        block, with ``attributes`` set at its start."""

        def tracer() -> Target:
            if not self._on():
                return _NO_TARGET
            session = self._session()
            cm.bind_session(session)
            return _target(session)

        async def atracer() -> Target:
            if not self._on():
                return _NO_TARGET
            if self._asession is None:
                return tracer()
            session = await self._asession()
            cm.bind_session(session)
            return await _atarget(session)

        cm = SpanContextManager(tracer, name, attributes, atracer=atracer)
        return cm


def _default_session() -> Session:
    session = current_session.get()
    if session is None:
        from .._export.session import get_default_session

        session = get_default_session()
    return session


async def _adefault_session() -> Session:
    session = current_session.get()
    if session is None:
        from .._export.session import aget_default_session

        session = await aget_default_session()
    return session


def _default_tracer() -> Target:
    return _target(_default_session())


async def _adefault_tracer() -> Target:
    return await _atarget(await _adefault_session())


def _default_cm(name: str, attributes: Mapping[str, Any]) -> SpanContextManager:
    """A span of the current (or default) session that is that session's current one
    for its block, so what runs inside (HTTP requests, see http.py) records there."""

    def tracer() -> Target:
        session = _default_session()
        manager.bind_session(session)
        return _target(session)

    async def atracer() -> Target:
        session = await _adefault_session()
        manager.bind_session(session)
        return await _atarget(session)

    manager = SpanContextManager(tracer, name, attributes, atracer=atracer)
    return manager


def _start_detached(
    tracer: trace.Tracer, propagators: tuple[str, ...], name: str, attributes: dict[str, Any]
) -> Span:
    """A span child of the current one (or of TRACEPARENT & co.), not made current."""
    parent = None
    if propagators and not trace.get_current_span().get_span_context().is_valid:
        parent = extract_parent(propagators)
    return tracer.start_span(name, context=parent, attributes=attributes)


def _record_failure(span: Span, exc: BaseException) -> None:
    record_exception(span, exc)
    span.set_attribute("error.type", error_type_of(type(exc)))
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


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
    bare (``@trace_span``) or with a name (``@trace_span("load")``). Spans go to the
    default session (the configuration of the environment) and join the trace current
    at the call (a run's, or one of ``runner.tracer.trace``).
    """
    if callable(name):
        return trace_span()(name)
    if name is not None and not isinstance(name, str):
        from .._exceptions import ConfigError

        raise ConfigError(f"trace_span(name) takes a str or a function, got {name!r}")

    def decorate(func: F) -> F:
        span_name = name or func.__qualname__
        attrs = dict(attributes or {})
        # Semantic conventions (code.md): the fully qualified name, the absolute file and
        # the line of the function (code.function/code.namespace are deprecated).
        attrs.setdefault("code.function.name", f"{func.__module__}.{func.__qualname__}")
        code = getattr(func, "__code__", None)
        if code is not None:
            # Absolute for imported modules and the main script (Python >= 3.9); not a
            # file for code from exec() or the REPL ("<string>", "<stdin>").
            if not code.co_filename.startswith("<"):
                attrs.setdefault("code.file.path", code.co_filename)
            attrs.setdefault("code.line.number", code.co_firstlineno)

        def cm() -> SpanContextManager:
            return _default_cm(span_name, attrs)

        if inspect.isasyncgenfunction(func):

            @functools.wraps(func)
            async def agen_wrapper(*args: Any, **kwargs: Any) -> Any:
                tracer, propagators = await _adefault_tracer()
                span = _start_detached(tracer, propagators, span_name, attrs)
                agen = func(*args, **kwargs)
                to_send: Any = None
                to_throw: BaseException | None = None
                try:
                    while True:
                        with trace.use_span(
                            span,
                            end_on_exit=False,
                            record_exception=False,
                            set_status_on_exception=False,
                        ):
                            try:
                                if to_throw is not None:
                                    exc, to_throw = to_throw, None
                                    item = await agen.athrow(exc)
                                else:
                                    item = await agen.asend(to_send)
                            except StopAsyncIteration:
                                return
                        try:
                            to_send = yield item
                        except GeneratorExit:
                            await agen.aclose()
                            raise
                        except BaseException as exc:  # noqa: BLE001 - thrown in by the consumer, forwarded
                            to_throw = exc
                except GeneratorExit:
                    raise
                except BaseException as exc:
                    _record_failure(span, exc)
                    raise
                finally:
                    span.end()

            return agen_wrapper  # type: ignore[return-value]
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with cm():
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]
        if inspect.isgeneratorfunction(func):

            @functools.wraps(func)
            def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
                # The span is current only while the generator runs, never while it is
                # suspended at a yield (it would leak into the consumer's code).
                tracer, propagators = _default_tracer()
                span = _start_detached(tracer, propagators, span_name, attrs)
                gen = func(*args, **kwargs)
                to_send: Any = None
                to_throw: BaseException | None = None
                try:
                    while True:
                        with trace.use_span(
                            span,
                            end_on_exit=False,
                            record_exception=False,
                            set_status_on_exception=False,
                        ):
                            try:
                                if to_throw is not None:
                                    exc, to_throw = to_throw, None
                                    item = gen.throw(exc)
                                else:
                                    item = gen.send(to_send)
                            except StopIteration as stop:
                                return stop.value
                        try:
                            to_send = yield item
                        except GeneratorExit:
                            gen.close()
                            raise
                        except BaseException as exc:  # noqa: BLE001 - thrown in by the consumer, forwarded
                            to_throw = exc
                except GeneratorExit:
                    raise
                except BaseException as exc:
                    _record_failure(span, exc)
                    raise
                finally:
                    span.end()

            return gen_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with cm():
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
