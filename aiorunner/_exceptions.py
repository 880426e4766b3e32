"""
The one exception tree of aiorunner.

Script-level failures (missing script, non-zero exit, timeout, ...) never raise: they come
back in ``RunResult``. What raises is a mistake the caller can fix in their code or config::

    AiorunnerError
    ├── ConfigError                 invalid TracingConfig field or OTEL_* / AIORUNNER_* value
    │   └── UnknownBackendError     no backend of that name is installed
    ├── BackendError                a backend failed to load or to construct
    ├── ClusterError                the Dask scheduler cannot be reached or take work
    │                               (also a ConnectionError; aiorunner.dask)
    ├── ExportError                 an export failed for good (only raised where asked for)
    ├── TraceNotFoundError          `aiorunner traces`: no trace file, no such trace id, or an
    │                               ambiguous prefix (the message lists the candidates)
    └── UsageError                  the API was used in a way that cannot work
                                    (e.g. run_script() inside a running event loop)
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

__all__ = [
    "AiorunnerError",
    "BackendError",
    "ClusterError",
    "ConfigError",
    "ExportError",
    "TraceNotFoundError",
    "UnknownBackendError",
    "UsageError",
]


class AiorunnerError(Exception):
    """Raised for every error aiorunner itself reports; catch this to catch them all."""


class ConfigError(AiorunnerError, ValueError):
    """Raised when a configuration value is invalid: the message names the field or
    environment variable, the value, and the accepted values.

    ``variable`` is the environment variable the bad value came from (None when it was
    an argument): the command line was fine then, and the CLI says so by not printing
    its usage."""

    def __init__(self, *args: object, variable: str | None = None) -> None:
        super().__init__(*args)
        self.variable = variable


class UnknownBackendError(ConfigError):
    """Raised when an exporter name matches no installed backend; the message lists the
    installed names and, for well-known ones, the pip package that provides them."""

    def __init__(self, message: str, *, name: str, known: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.name = name
        self.known = known


class BackendError(AiorunnerError):
    """Raised when a backend is installed but fails to import or to construct; the message
    names the backend and its distribution."""


class ClusterError(AiorunnerError, ConnectionError):
    """Raised when the Dask scheduler cannot be reached (the message names the address)
    or the cluster cannot take work at all; a script-level failure, a lost worker or a
    scheduler lost mid-run come back as results instead."""


class ExportError(AiorunnerError):
    """Raised when spans could not be exported and the caller asked to be told by an
    exception (the run path never raises it: it reports in ``RunResult.export``)."""


class TraceNotFoundError(AiorunnerError, LookupError):
    """Raised when a recorded trace cannot be found: the trace file does not exist, no
    trace has the given id, or a prefix matches several traces (``candidates`` lists them)."""

    def __init__(self, message: str, *, candidates: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.candidates = candidates


class UsageError(AiorunnerError, RuntimeError):
    """Raised when the API is used in a way that cannot work, such as calling the
    synchronous ``run_script()`` from inside a running event loop."""


# -- how messages name the caller's options ------------------------------------------------

_option_names: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar(
    "aiorunner_option_names", default=None
)


def option_name(python: str) -> str:
    """
    How a message names one of the caller's options: ``python`` as code writes it
    (``"interpreter="``, ``"validate_dependencies=False"``, ``"exporter_type"``), or
    the front end's spelling while one is active (``--interpreter``,
    ``--no-validate-dependencies``, ``--exporter`` under ``aiorunner run``): an error
    tells the fix in the words of whoever made the mistake. Unknown names stay as given.
    """
    names = _option_names.get()
    if names is None:
        return python
    return names.get(python, python)


@contextlib.contextmanager
def naming_options(names: Mapping[str, str]) -> Iterator[None]:
    """Within this context (and tasks and worker threads started in it: they copy the
    context), :func:`option_name` spells options by ``names`` (Python text -> flag)."""
    token = _option_names.set(names)
    try:
        yield
    finally:
        _option_names.reset(token)
