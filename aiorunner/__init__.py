"""
aiorunner: run scripts as asyncio subprocesses, watch them, trace every run.

The public API is what ``__all__`` lists; everything in ``_``-prefixed modules is private.

``import aiorunner`` costs nothing: each public name is imported from its module on first
use (PEP 562 ``__getattr__`` over the table below, as scientific-python's ``lazy_loader``
does), so a program that only needs ``aiorunner.TracingConfig``, or the ``aiorunner``
command's ``--help``, never loads the OpenTelemetry SDK, psutil, anyio or rich. Type
checkers and ``dir()`` still see every name.
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING

from ._version import __version__

if TYPE_CHECKING:
    from typing import Any

    from ._config import TracingConfig
    from ._context.instrument import auto_instrument
    from ._context.tracer import RunnerTracer, SpanContextManager, trace_span
    from ._exceptions import (
        AiorunnerError,
        BackendError,
        ClusterError,
        ConfigError,
        ExportError,
        UnknownBackendError,
        UsageError,
    )
    from ._export.session import Session
    from ._monitor.monitor import ProcessTreeMonitor
    from ._monitor.samples import Sample
    from ._orchestrate.executor import Attempt, Executor, LocalExecutor
    from ._orchestrate.jobs import Job, JobsFile, load_jobs_file
    from ._orchestrate.many import AsCompleted, JobEvent, as_completed, run_many
    from ._result import BackendReport, ExportReport, RunResult
    from ._run.runner import ScriptRunner

#: public name -> the module that defines it (relative to this package)
_LAZY: dict[str, str] = {
    "AiorunnerError": "._exceptions",
    "AsCompleted": "._orchestrate.many",
    "Attempt": "._orchestrate.executor",
    "BackendError": "._exceptions",
    "BackendReport": "._result",
    "ClusterError": "._exceptions",
    "ConfigError": "._exceptions",
    "Executor": "._orchestrate.executor",
    "ExportError": "._exceptions",
    "ExportReport": "._result",
    "Job": "._orchestrate.jobs",
    "JobEvent": "._orchestrate.many",
    "JobsFile": "._orchestrate.jobs",
    "LocalExecutor": "._orchestrate.executor",
    "ProcessTreeMonitor": "._monitor.monitor",
    "RunResult": "._result",
    "RunnerTracer": "._context.tracer",
    "Sample": "._monitor.samples",
    "ScriptRunner": "._run.runner",
    "Session": "._export.session",
    "SpanContextManager": "._context.tracer",
    "TracingConfig": "._config",
    "UnknownBackendError": "._exceptions",
    "UsageError": "._exceptions",
    "as_completed": "._orchestrate.many",
    "auto_instrument": "._context.instrument",
    "load_jobs_file": "._orchestrate.jobs",
    "run_many": "._orchestrate.many",
    "trace_span": "._context.tracer",
}

__all__ = [
    "AiorunnerError",
    "AsCompleted",
    "Attempt",
    "BackendError",
    "BackendReport",
    "ClusterError",
    "ConfigError",
    "Executor",
    "ExportError",
    "ExportReport",
    "Job",
    "JobEvent",
    "JobsFile",
    "LocalExecutor",
    "ProcessTreeMonitor",
    "RunResult",
    "RunnerTracer",
    "Sample",
    "ScriptRunner",
    "Session",
    "SpanContextManager",
    "TracingConfig",
    "UnknownBackendError",
    "UsageError",
    "__version__",
    "as_completed",
    "auto_instrument",
    "load_jobs_file",
    "run_many",
    "trace_span",
]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use, then keep it here."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'aiorunner' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module_name, __name__), name)
    # Tracebacks and reprs read ``aiorunner.ExportError``, not the private module.
    if getattr(value, "__module__", "").startswith("aiorunner."):
        try:
            value.__module__ = "aiorunner"
        except (AttributeError, TypeError):
            pass
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
