"""
aiorunner's in-script tracing bootstrap: start-up half (see ``aiorunner/_bootstrap``).

Runs inside the script's interpreter before the script, so it must cost next to nothing:
it imports only what the interpreter has already loaded, reads and removes its two
environment variables, installs an import hook on ``opentelemetry.trace`` and on the HTTP
client libraries (each answered once), and runs the ``sitecustomize`` this one shadows.
Everything else happens in ``_aiorunner_inscript`` when (and only if) the script touches
OpenTelemetry, or at once when instrumentations were asked for, and in
``_aiorunner_http`` when (and only if) the script imports an HTTP client library
(``requests``, ``httpx``, ``aiohttp``, ``urllib3``, ``urllib.request``) that
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` does not name: its OpenTelemetry
instrumentation is loaded, so its requests carry the run's trace context; and, when
the run sends logs, on ``logging``: once the script configures logging (its root logger
gets a handler), ``_aiorunner_logging`` sends each record to the runner. Nothing here
may raise into the script.

What "next to nothing" means, measured: a trivial script starts in ~13 ms; importing
``__future__`` and ``importlib.machinery`` here (which pulls ``importlib`` and
``warnings`` from source) cost it ~1 ms more, ~7 % of ``run_many``'s throughput on two
cores. So this module has no ``from __future__`` import (annotations are quoted: they
are evaluated at definition) and takes the import system's classes from the frozen
modules the interpreter loaded before ``site`` (see :func:`_importlib`).
"""

import os
import sys

# Not typing.TYPE_CHECKING: importing typing would cost more than this whole module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType
    from typing import Any

# Mirrors of aiorunner._context.channel's constants (this module cannot import aiorunner).
_SETTINGS_VAR = "AIORUNNER_INSCRIPT"
_PYTHONPATH_VAR = "AIORUNNER_INSCRIPT_PYTHONPATH"
_HOOKED = "opentelemetry.trace"
# Mirror of _aiorunner_http.LIBRARIES: watched module -> instrumentation entry point name.
_HTTP_MODULES = {
    "requests": "requests",
    "httpx": "httpx",
    "aiohttp": "aiohttp-client",
    "urllib3": "urllib3",
    "urllib.request": "urllib",
}
_DISABLED_VAR = "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"


def _warn(message: "str") -> None:
    try:
        sys.stderr.write("aiorunner: " + message + "\n")
    except Exception:  # noqa: BLE001, S110 - no usable stderr: never fail the script for it
        pass


def _parse(raw: "str") -> "dict[str, str]":
    settings = {}
    for part in raw.split(";"):
        key, _, value = part.partition("=")
        if key:
            settings[key] = value
    return settings


class _LoaderProxy:
    """Wraps the real loader of a watched module to run our set-up right after the
    module has executed; every other attribute is the real loader's."""

    def __init__(self, loader: "object", on_loaded: "object", failure: "str") -> None:
        self._loader = loader
        self._on_loaded = on_loaded
        self._failure = failure

    def __getattr__(self, name: "str") -> "object":
        return getattr(self._loader, name)

    def create_module(self, spec: "object") -> "object":
        return self._loader.create_module(spec)  # type: ignore[attr-defined]

    def exec_module(self, module: "object") -> None:
        self._loader.exec_module(module)  # type: ignore[attr-defined]
        # Be invisible afterwards: the module reports its real loader.
        module.__loader__ = self._loader  # type: ignore[attr-defined]
        spec = getattr(module, "__spec__", None)
        if spec is not None:
            spec.loader = self._loader
        try:
            self._on_loaded(module)  # type: ignore[operator]
        except Exception as exc:  # noqa: BLE001 - the script must run on regardless
            _warn(f"{self._failure}: {type(exc).__name__}: {exc}")


class _ImportHook:
    """A meta path finder that lets the other finders find ``opentelemetry.trace`` (for
    the tracing set-up) and the HTTP client libraries in ``http`` (module -> name, to
    instrument them), and wraps their loaders; each module once. It leaves
    ``sys.meta_path`` when it has nothing left to watch."""

    def __init__(self, settings: "dict[str, str]", http: "dict[str, str]") -> None:
        self._settings = settings
        self._trace = True
        self._http = http
        # The runner asked for the script's logging records (logs on for this run).
        self._logging = settings.get("logs") == "1"

    def find_spec(
        self,
        name: "str",
        path: "Sequence[str] | None" = None,
        target: "ModuleType | None" = None,
    ) -> "ModuleSpec | None":
        if name == _HOOKED and self._trace:
            self._trace = False
            on_loaded: object = self._loaded
            failure = "in-script tracing is off for this script"
        elif name == "logging" and self._logging:
            self._logging = False
            on_loaded = _LoggingLoaded(self._settings)
            failure = "the script's logging records are not sent"
        else:
            library = self._http.pop(name, None)
            if library is None:
                return None
            on_loaded = _HttpLoaded(library)
            failure = f"the {library} instrumentation failed"
        if not self._trace and not self._http and not self._logging:
            try:
                sys.meta_path.remove(self)
            except ValueError:
                pass
        for finder in list(sys.meta_path):
            find_spec = getattr(finder, "find_spec", None)
            if finder is self or find_spec is None:
                continue
            spec: ModuleSpec | None = find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _LoaderProxy(spec.loader, on_loaded, failure)  # type: ignore[assignment]
                return spec
        return None

    def _loaded(self, module: "object") -> None:
        _inscript().on_trace_imported(module, self._settings)  # type: ignore[attr-defined]


class _HttpLoaded:
    """Instruments one HTTP client library once the script has imported it."""

    def __init__(self, library: "str") -> None:
        self.library = library

    def __call__(self, module: "object" = None) -> None:
        try:
            _load("_aiorunner_http").on_imported(self.library)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - the script must run on regardless
            _warn(f"the {self.library} instrumentation failed: {type(exc).__name__}: {exc}")


class _LoggingLoaded:
    """Once the script imported ``logging``: wraps ``Logger.addHandler`` so that the
    root logger's first handler (the script configured logging) loads
    ``_aiorunner_logging``, which sends each record to the runner. Until then nothing
    of ours is loaded, and the wrapper steps aside after that one call."""

    def __init__(self, settings: "dict[str, str]") -> None:
        self.settings = settings

    def __call__(self, logging: "Any") -> None:
        original = logging.Logger.addHandler
        settings = self.settings

        def addHandler(self: "Any", hdlr: "Any") -> None:
            original(self, hdlr)
            if self is logging.root and logging.Logger.addHandler is addHandler:
                logging.Logger.addHandler = original
                _install_logging(settings)

        addHandler.__doc__ = original.__doc__
        logging.Logger.addHandler = addHandler
        if logging.root.handlers:  # configured before we saw it (a .pth file)
            logging.Logger.addHandler = original
            _install_logging(settings)


def _install_logging(settings: "dict[str, str]") -> None:
    try:
        _load("_aiorunner_logging").install(settings, _inscript())  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - the script must run on regardless
        _warn(f"the script's logging records are not sent: {type(exc).__name__}: {exc}")


def _http_modules() -> "dict[str, str]":
    """The watched modules of the HTTP libraries ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``
    leaves on (comma-separated entry point names, ``*`` for all)."""
    disabled = {part.strip() for part in os.environ.get(_DISABLED_VAR, "").split(",")}
    if "*" in disabled:
        return {}
    return {module: name for module, name in _HTTP_MODULES.items() if name not in disabled}


def _inscript() -> "object":
    """Our second module (see :func:`_load`)."""
    return _load("_aiorunner_inscript")


def _load(name: "str") -> "object":
    """One of our modules, by file path: the script may have changed ``sys.path``."""
    module = sys.modules.get(name)
    if module is None:
        bootstrap, external = _importlib()
        here = os.path.dirname(os.path.abspath(__file__))
        path = os.path.join(here, name + ".py")
        spec = external.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {path}")
        module = bootstrap.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return module


def _importlib() -> "tuple[Any, Any]":
    """``importlib._bootstrap`` and ``importlib._bootstrap_external``: the import system
    itself (``PathFinder``, ``module_from_spec``, ``spec_from_file_location`` are the very
    objects ``importlib.machinery``/``importlib.util`` re-export). CPython loads them,
    frozen, before ``site``, so they cost nothing here; ``importlib`` would be imported
    from source. Other interpreters get the public package."""
    try:
        import _frozen_importlib
        import _frozen_importlib_external
    except ImportError:
        from importlib import _bootstrap, _bootstrap_external

        return _bootstrap, _bootstrap_external
    return _frozen_importlib, _frozen_importlib_external


def _restore_pythonpath() -> None:
    # "+<value>" was the user's PYTHONPATH, "-" means there was none.
    original = os.environ.pop(_PYTHONPATH_VAR, None)
    if original is None:
        return
    if original.startswith("+"):
        os.environ["PYTHONPATH"] = original[1:]
    else:
        os.environ.pop("PYTHONPATH", None)


def _chain(here: "str") -> None:
    """Run the ``sitecustomize`` our directory shadows (a distribution's, a venv's or
    the user's), as ``site`` would have, and let it stand in ``sys.modules``."""
    bootstrap, external = _importlib()
    paths = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = external.PathFinder.find_spec("sitecustomize", paths)
    if spec is None or spec.loader is None:
        return
    module = bootstrap.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - what site.py does for a broken sitecustomize
        if sys.flags.verbose:
            sys.excepthook(*sys.exc_info())  # type: ignore[arg-type]
        else:
            sys.stderr.write(
                f"Error in sitecustomize; set PYTHONVERBOSE for traceback:\n"
                f"{type(exc).__name__}: {exc}\n"
            )


def _report_peak_at_exit(fd: "int", ino: "int", pid: "int") -> None:
    """Send the script's own peak RSS (``VmHWM``) to the runner as the interpreter exits.

    Why: the runner reads the script every ``monitor_interval``, and the kernel's
    ``ru_maxrss`` of a child spawned by the runner starts at the runner's own peak (Linux
    folds the old address space into it at exec), so a script shorter than one interval,
    smaller than the runner, had no usable peak. ``VmHWM`` is the script's own address
    space's. The last exit hook (registered first), so it runs after the script's own;
    skipped on ``os._exit`` and signals (the runner then keeps what it sampled). Only
    the process the runner started reports (a forked child runs this hook too).
    ``atexit`` is compiled into the interpreter: importing it reads no file.
    """
    import atexit

    def report() -> None:
        if os.getpid() != pid:
            return
        try:
            with open("/proc/self/status", "rb") as f:
                status = f.read()
            start = status.index(b"VmHWM:") + 6
            peak = int(status[start : status.index(b"kB", start)]) * 1024
        except (OSError, ValueError):
            return  # not Linux, or /proc not mounted: nothing to report
        payload = b'{"m":{"hwm":' + str(peak).encode() + b"}}"
        inscript = sys.modules.get("_aiorunner_inscript")
        channel = inscript.channel() if inscript is not None else None  # type: ignore[attr-defined]
        try:
            if channel is not None:  # its lock keeps chunks of one payload together
                channel._write(payload)
            elif os.fstat(fd).st_ino == ino:  # still our socket (a daemon closes fds)
                # _aiorunner_inscript's chunk header ("!IB": pid, no chunk follows).
                os.write(fd, pid.to_bytes(4, "big") + b"\x00" + payload)
        except OSError:
            pass  # the runner is gone

    atexit.register(report)


def _main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    raw = os.environ.pop(_SETTINGS_VAR, None)
    settings: dict[str, str] = {}
    loaded: list[str] = []
    _restore_pythonpath()
    if raw:
        settings = _parse(raw)
        try:
            fd = int(settings.get("fd", ""))
            # The very socket the runner made, not whatever else has that number here.
            if os.fstat(fd).st_ino != int(settings.get("ino", "")):
                raise ValueError("not our socket")
            # Ours alone: a grandchild started with os.exec*/close_fds=False must not
            # inherit it (aiorunner hands each run its own channel).
            os.set_inheritable(fd, False)
        except (ValueError, OSError):
            settings = {}
            _warn("in-script tracing is off: the span channel was not inherited")
        else:
            http = _http_modules()
            # Imported already (by a .pth file): handled below, after _chain.
            loaded = [name for module, name in http.items() if module in sys.modules]
            for module in [m for m in http if m in sys.modules]:
                del http[module]
            hook = _ImportHook(settings, http)
            if _HOOKED in sys.modules:  # a .pth file imported it already
                hook._trace = False
                try:
                    hook._loaded(sys.modules[_HOOKED])
                except Exception as exc:  # noqa: BLE001 - the script must run on regardless
                    _warn(f"in-script tracing is off: {type(exc).__name__}: {exc}")
            if hook._logging and "logging" in sys.modules:  # a .pth file imported it
                hook._logging = False
                try:
                    _LoggingLoaded(settings)(sys.modules["logging"])
                except Exception as exc:  # noqa: BLE001 - the script must run on regardless
                    _warn(f"the script's logging records are not sent: {exc}")
            if hook._trace or hook._http or hook._logging:
                sys.meta_path.insert(0, hook)
            if settings.get("hwm") == "1":
                _report_peak_at_exit(fd, int(settings["ino"]), os.getpid())
    _chain(here)
    for library in loaded:
        _HttpLoaded(library)()
    if settings.get("instrument"):
        try:
            _inscript().instrument(settings)  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - the script must run on regardless
            _warn(f"instrumentation failed: {type(exc).__name__}: {exc}")


_main()
