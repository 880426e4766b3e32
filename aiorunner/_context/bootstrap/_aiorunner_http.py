"""
HTTP requests carry the trace context: OpenTelemetry's HTTP client instrumentations,
loaded by aiorunner itself when tracing is on, one library at a time, at its first
request once the program has imported it.

Used in two interpreters:

- the runner's (``aiorunner._context.http``, on the first use of the tracer API): the
  spans go to the session whose span is current (a run's, ``runner.tracer.trace``'s);
- a Python script's (the bootstrap's ``sitecustomize`` watches the imports of the client
  libraries and calls :func:`on_imported`): the spans go to the script's global
  TracerProvider, which the bootstrap makes send them to the runner.

A library is instrumented only once the program has imported it (this module never
imports a client library) and sends a request through it (see
:meth:`AutoInstrumenter.arm`), only when its instrumentation is installed, and not when
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` names it (comma-separated entry point names,
``*`` for all, as ``opentelemetry-instrument`` reads it). A library imported without its
instrumentation is reported once (at its first request), naming the package to install,
unless another client library of the table that imports it is loaded (``requests`` imports ``urllib3`` and
``urllib.request``: the ``requests`` instrumentation covers those calls).

Written for any Python >= 3.8 with ``opentelemetry-api`` installed; it never imports
``aiorunner`` (the script's interpreter may not have it), and never raises into the
caller: failures are reported through the ``warn`` callable.
"""

from __future__ import annotations

import _thread
import os
import sys

# Not typing (~3 ms) nor threading: a script that imports urllib.request pays for this
# module's import. typing.TYPE_CHECKING is False at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

__all__ = [
    "LIBRARIES",
    "AutoInstrumenter",
    "Library",
    "ResolvingTracerProvider",
    "disabled_names",
    "enabled_libraries",
    "on_imported",
]

DISABLED_VAR = "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"


class Library:
    """An HTTP client library and its OpenTelemetry instrumentation.

    Attributes:
        name: the instrumentation's ``opentelemetry_instrumentor`` entry point name.
        module: the module whose import means the program uses the library.
        instrumentation, instrumentor: the instrumentor class, module and name.
        imported_by: client libraries (names) that import this one themselves.
        triggers: ``module:Class.method``, what every request of the library calls
            first, before what the instrumentation wraps; its first call instruments
            the library.
    """

    __slots__ = ("imported_by", "instrumentation", "instrumentor", "module", "name", "triggers")

    def __init__(
        self,
        name: str,
        module: str,
        instrumentation: str,
        instrumentor: str,
        imported_by: Sequence[str] = (),
        triggers: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.module = module
        self.instrumentation = instrumentation
        self.instrumentor = instrumentor
        self.imported_by = imported_by
        self.triggers = triggers

    @property
    def package(self) -> str:
        """The distribution to ``pip install``."""
        return "opentelemetry-instrumentation-" + self.name


LIBRARIES: dict[str, Library] = {
    lib.name: lib
    for lib in (
        Library(
            "requests",
            "requests",
            "opentelemetry.instrumentation.requests",
            "RequestsInstrumentor",
            triggers=("requests.sessions:Session.send",),
        ),
        Library(
            "httpx",
            "httpx",
            "opentelemetry.instrumentation.httpx",
            "HTTPXClientInstrumentor",
            triggers=(
                "httpx:HTTPTransport.handle_request",
                "httpx:AsyncHTTPTransport.handle_async_request",
            ),
        ),
        Library(
            "aiohttp-client",
            "aiohttp",
            "opentelemetry.instrumentation.aiohttp_client",
            "AioHttpClientInstrumentor",
            # The instrumentation adds itself to each ClientSession as it is made.
            triggers=("aiohttp:ClientSession.__init__",),
        ),
        Library(
            "urllib3",
            "urllib3",
            "opentelemetry.instrumentation.urllib3",
            "URLLib3Instrumentor",
            ("requests",),
            triggers=("urllib3.connectionpool:HTTPConnectionPool.urlopen",),
        ),
        Library(
            "urllib",
            "urllib.request",
            "opentelemetry.instrumentation.urllib",
            "URLLibInstrumentor",
            ("requests", "httpx", "aiohttp-client"),
            triggers=("urllib.request:OpenerDirector.open",),
        ),
    )
}


def disabled_names(value: str | None) -> set[str]:
    """The entry point names in an ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` value."""
    return {part.strip() for part in (value or "").split(",") if part.strip()}


def enabled_libraries(environ: Mapping[str, str] | None = None) -> list[Library]:
    """The libraries of the table that the environment does not disable."""
    disabled = disabled_names((os.environ if environ is None else environ).get(DISABLED_VAR))
    if "*" in disabled:
        return []
    return [lib for lib in LIBRARIES.values() if lib.name not in disabled]


class _ResolvingTracer:
    """A tracer that asks its provider which real tracer to use at each span start."""

    def __init__(self, owner: ResolvingTracerProvider, args: Any, kwargs: Any) -> None:
        self._owner = owner
        self._args = args
        self._kwargs = kwargs
        self._lock = _thread.allocate_lock()
        self._tracers: dict[int, Any] = {}

    def _real(self) -> Any:
        provider = self._owner.resolve()
        key = id(provider)
        tracer = self._tracers.get(key)
        if tracer is None or tracer[0] is not provider:
            real = provider.get_tracer(*self._args, **self._kwargs)
            with self._lock:
                # Few providers live in one process (one per Session); keep it bounded.
                if len(self._tracers) > 64:
                    self._tracers.clear()
                self._tracers[key] = (provider, real)
            return real
        return tracer[1]

    def start_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._real().start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._real().start_as_current_span(*args, **kwargs)


class ResolvingTracerProvider:
    """
    What the instrumentations are given as their ``tracer_provider``: each span asks
    ``resolve()`` for the provider that should record it, at the time it starts.

    Why: an instrumentation binds its tracer once, at ``instrument()``, but the provider
    that must get a request's span depends on the request (the session whose span is
    current, in the runner's process); and in a script it defers making the script's
    provider (the SDK's import) from the library's import to its first request.
    """

    def __init__(self, resolve: Callable[[], Any]) -> None:
        self.resolve = resolve

    def get_tracer(self, *args: Any, **kwargs: Any) -> _ResolvingTracer:
        return _ResolvingTracer(self, args, kwargs)


class AutoInstrumenter:
    """
    Instruments the client libraries of ``libraries`` as the program imports them.

    Args:
        provider: the ``tracer_provider`` given to every instrumentation.
        warn: reports a missing instrumentation (once per library) or a failure.
        where: appended to the "not installed" message (which interpreter).
    """

    def __init__(self, provider: Any, warn: Callable[[str], Any], where: str = "") -> None:
        self.provider = provider
        self._warn = warn
        self._where = where
        self._lock = _thread.RLock()
        self._handled: set[str] = set()
        #: The libraries instrumented here, and those reported missing.
        self.instrumented: list[str] = []
        self.missing: list[str] = []

    def start(self, libraries: Sequence[Library]) -> None:
        """Arm the libraries already imported; watch the imports of the others."""
        watched: dict[str, str] = {}
        for lib in libraries:
            if lib.module in sys.modules:
                self.arm(lib.name)
            else:
                watched[lib.module] = lib.name
        if watched:
            sys.meta_path.insert(0, PostImportFinder(watched, self.arm))

    def arm(self, name: str) -> None:
        """``LIBRARIES[name]`` has been imported: make the first call of each of its
        triggers instrument it (importing an instrumentation costs a script 50-70 ms,
        which a program that imports the library and never sends a request, or imports
        ``urllib.request`` through ``xml.sax``, should not pay). A trigger that is not
        there (another version of the library): instrument at once. Never raises."""
        lib = LIBRARIES[name]
        found = []
        try:
            for trigger in lib.triggers:
                module_name, _, qualified = trigger.partition(":")
                class_name, method = qualified.rsplit(".", 1)
                owner = getattr(sys.modules[module_name], class_name)
                found.append((owner, method, owner.__dict__[method]))
        except (KeyError, AttributeError, ValueError):
            found = []
        if not found:
            self.handle(name)
            return
        armed: list[tuple[Any, str, Any, Any]] = []
        lock = _thread.allocate_lock()

        def disarm() -> None:
            with lock:
                for owner, method, original, trampoline in armed:
                    if owner.__dict__.get(method) is trampoline:
                        setattr(owner, method, original)
                armed.clear()

        def first_call(owner: Any, method: str, original: Any) -> Any:
            def trampoline(self_: Any, *args: Any, **kwargs: Any) -> Any:
                if owner.__dict__.get(method) is not trampoline:
                    # Wrapped by an instrumentation loaded another way (auto_instrument,
                    # instrument=), which took this function for the original: be it.
                    return original.__get__(self_, type(self_))(*args, **kwargs)
                disarm()
                self.handle(name)
                # What the class holds now (the instrumentation's wrapper, or the
                # original), bound to this instance: never a subclass's override again.
                return owner.__dict__[method].__get__(self_, type(self_))(*args, **kwargs)

            trampoline.__name__ = getattr(original, "__name__", method)
            trampoline.__qualname__ = getattr(original, "__qualname__", method)
            trampoline.__doc__ = getattr(original, "__doc__", None)
            trampoline.__wrapped__ = original  # type: ignore[attr-defined]
            return trampoline

        with lock:
            for owner, method, original in found:
                trampoline = first_call(owner, method, original)
                armed.append((owner, method, original, trampoline))
                setattr(owner, method, trampoline)

    def handle(self, name: str) -> None:
        """``LIBRARIES[name]`` has been imported: instrument it (once), or say which
        package to install. Never raises."""
        with self._lock:
            if name in self._handled:
                return
            self._handled.add(name)
            lib = LIBRARIES[name]
            try:
                self._instrument(lib)
            except Exception as exc:  # noqa: BLE001 - one broken instrumentation, not the program
                self._warn(
                    f"the {lib.name} instrumentation failed, so its HTTP requests carry no "
                    f"trace context: {type(exc).__name__}: {exc}"
                )

    def _instrument(self, lib: Library) -> None:
        from importlib.util import find_spec

        try:
            spec = find_spec(lib.instrumentation)
        except ImportError:  # opentelemetry.instrumentation itself is missing
            spec = None
        if spec is None:
            self.missing.append(lib.name)
            if any(LIBRARIES[other].module in sys.modules for other in lib.imported_by):
                return  # imported by another client library, whose instrumentation counts
            self._warn(
                f"{lib.module} is used but {lib.package} is not installed"
                f"{self._where}, so its HTTP requests carry no trace context: "
                f"pip install {lib.package} (all of them: pip install 'aiorunner[http]'), "
                f"or set {DISABLED_VAR}={lib.name} to silence this"
            )
            return
        module = __import__(lib.instrumentation, fromlist=[lib.instrumentor])
        instrumentor = getattr(module, lib.instrumentor)()
        if getattr(instrumentor, "is_instrumented_by_opentelemetry", False):
            return  # the program (or auto_instrument) did it already
        instrumentor.instrument(tracer_provider=self.provider)
        if getattr(instrumentor, "is_instrumented_by_opentelemetry", False):
            self.instrumented.append(lib.name)


class _LoaderProxy:
    """The real loader of a watched module, calling back once the module has executed;
    every other attribute is the real loader's."""

    def __init__(self, loader: Any, on_loaded: Callable[[], None]) -> None:
        self._loader = loader
        self._on_loaded = on_loaded

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        module.__loader__ = self._loader  # invisible afterwards
        spec = getattr(module, "__spec__", None)
        if spec is not None:
            spec.loader = self._loader
        self._on_loaded()


class PostImportFinder:
    """A meta path finder that answers for nothing itself: it lets the other finders
    find each watched module and wraps the loader to call ``callback(name)`` right after
    the module executed. Each module is watched once; the finder leaves ``sys.meta_path``
    when none is left. Costs one dict lookup per import of a module not yet imported."""

    def __init__(self, watched: dict[str, str], callback: Callable[[str], None]) -> None:
        self._watched = dict(watched)
        self._callback = callback

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        name = self._watched.pop(fullname, None)
        if name is None:
            return None
        if not self._watched:
            try:
                sys.meta_path.remove(self)
            except ValueError:
                pass
        for finder in list(sys.meta_path):
            find_spec = getattr(finder, "find_spec", None)
            if finder is self or find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _LoaderProxy(spec.loader, lambda: self._callback(name))
                return spec
        return None


# ------------------------------------------------------------------ in a script

_script: AutoInstrumenter | None = None


def _script_provider() -> Any:
    from opentelemetry import trace

    return trace.get_tracer_provider()  # the bootstrap's, installed now if need be


def _stderr(message: str) -> None:
    try:
        sys.stderr.write("aiorunner: " + message + "\n")
    except Exception:  # noqa: BLE001, S110 - no usable stderr: never fail the script for it
        pass


def on_imported(name: str) -> None:
    """The bootstrap saw the script import the client library ``name`` (a key of
    :data:`LIBRARIES`, not disabled): instrument it for the script's own TracerProvider
    at its first request."""
    global _script
    if _script is None:
        _script = AutoInstrumenter(
            ResolvingTracerProvider(_script_provider), _stderr, f" for {sys.executable}"
        )
    _script.arm(name)
