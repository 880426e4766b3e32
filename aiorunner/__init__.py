"""
aiorunner: run scripts as asyncio subprocesses, watch them, trace every run.

The public API is what ``__all__`` lists; everything in ``_``-prefixed modules is private.
"""

from __future__ import annotations

from ._config import TracingConfig
from ._exceptions import (
    AiorunnerError,
    BackendError,
    ConfigError,
    ExportError,
    UnknownBackendError,
    UsageError,
)
from ._executor import Attempt, Executor, LocalExecutor
from ._instrument import auto_instrument
from ._jobs import Job, JobsFile, load_jobs_file
from ._monitor import ProcessTreeMonitor, Sample
from ._orchestrate import AsCompleted, JobEvent, as_completed, run_many
from ._result import BackendReport, ExportReport, RunResult
from ._runner import ScriptRunner
from ._session import Session
from ._tracer import RunnerTracer, SpanContextManager, trace_span

__version__ = "0.1.0"

__all__ = [
    "AiorunnerError",
    "AsCompleted",
    "Attempt",
    "BackendError",
    "BackendReport",
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

for _name in __all__:
    _obj = globals()[_name]
    if hasattr(_obj, "__module__"):
        try:
            _obj.__module__ = "aiorunner"
        except (AttributeError, TypeError):
            pass
del _name, _obj
