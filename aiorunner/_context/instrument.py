"""
``auto_instrument(*names)``: OpenTelemetry instrumentations, by name, here and in children.

An instrumentation is found the way ``opentelemetry-instrument`` finds it: the entry point
``<name>`` of the group ``opentelemetry_instrumentor`` that each
``opentelemetry-instrumentation-<name>`` distribution registers. Loading it in the runner
process makes the library's calls spans of the runner's session (children of the span
current at the call, e.g. ``runner.tracer.trace("fetch_batch")``). The names are also
remembered and forwarded to every Python script run afterwards, whose in-script bootstrap
loads them at start-up (see ``aiorunner._context.channel``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._config import check_names
from .._exceptions import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from opentelemetry.trace import TracerProvider

    from .._export.session import Session

__all__ = ["auto_instrument", "load_instrumentor", "requested"]

_GROUP = "opentelemetry_instrumentor"

#: Names given to auto_instrument() in this process, in order (forwarded to children).
_requested: dict[str, None] = {}


def requested() -> tuple[str, ...]:
    """The instrumentations asked for with :func:`auto_instrument` so far."""
    return tuple(_requested)


def _pip_name(name: str) -> str:
    return f"opentelemetry-instrumentation-{name.replace('_', '-')}"


def _entry_point(name: str) -> Any:
    from opentelemetry.util._importlib_metadata import entry_points

    found = list(entry_points(group=_GROUP, name=name))
    if not found:
        installed = sorted({ep.name for ep in entry_points(group=_GROUP)})
        raise ConfigError(
            f"no OpenTelemetry instrumentation named {name!r} is installed; "
            f"pip install {_pip_name(name)}"
            + (f" (installed: {', '.join(installed)})" if installed else "")
        )
    return found[0]


def load_instrumentor(name: str) -> Any:
    """The instrumentor object for ``name`` (not yet instrumenting).

    Raises:
        ConfigError: not installed (the message names the pip package), or it fails to
            import.
    """
    entry_point = _entry_point(name)
    try:
        return entry_point.load()()
    except Exception as exc:
        raise ConfigError(
            f"instrumentation {name!r} ({entry_point.value}) failed to load: "
            f"{type(exc).__name__}: {exc}; reinstall {_pip_name(name)}"
        ) from exc


def check_installed(names: Iterable[str]) -> None:
    """Raise ConfigError naming the pip package of every name not installed here."""
    from opentelemetry.util._importlib_metadata import entry_points

    installed = {ep.name for ep in entry_points(group=_GROUP)}
    missing = [name for name in names if name not in installed]
    if missing:
        raise ConfigError(
            f"OpenTelemetry instrumentation{'s' if len(missing) > 1 else ''} not installed: "
            f"{', '.join(missing)}; pip install {' '.join(_pip_name(n) for n in missing)}"
            + (f" (installed: {', '.join(sorted(installed))})" if installed else "")
        )


def auto_instrument(
    *names: str,
    session: Session | None = None,
    tracer_provider: TracerProvider | None = None,
) -> None:
    """
    Seed API: instrument libraries (``auto_instrument('requests', 'httpx')``) in this
    process, and in every Python script run afterwards by any runner of this process.

    Every name is checked before any library is instrumented, so a typo changes nothing.
    It blocks (entry point scan, imports): call it at start-up, or from async code through
    ``await anyio.to_thread.run_sync(auto_instrument, "requests")``.

    Args:
        names: suffixes of ``opentelemetry-instrumentation-<name>`` distributions.
        session: whose TracerProvider gets the spans (default: the default session).
        tracer_provider: or give a TracerProvider directly.

    Raises:
        ConfigError: a name is not installed (the message names the pip package to
            install), fails to load, or the library it instruments is missing or of a
            version it does not support.
    """
    checked = check_names(names, field="auto_instrument()")
    check_installed(checked)
    instrumentors = [(name, load_instrumentor(name)) for name in checked]
    if tracer_provider is None:
        if session is None:
            from .._export.session import get_default_session

            session = get_default_session()
        tracer_provider = session.tracer_provider
    from opentelemetry.instrumentation.dependencies import DependencyConflictError

    for name, instrumentor in instrumentors:
        if getattr(instrumentor, "is_instrumented_by_opentelemetry", False):
            continue
        try:
            instrumentor.instrument(
                tracer_provider=tracer_provider, raise_exception_on_conflict=True
            )
        except DependencyConflictError as exc:
            raise ConfigError(
                f"instrumentation {name!r} cannot instrument this environment: {exc}; "
                "install the library it instruments (or a supported version)"
            ) from exc
        _requested[name] = None
