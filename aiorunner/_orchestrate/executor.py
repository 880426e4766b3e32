"""
Where a job runs: the executor seam of :func:`aiorunner.run_many`.

The orchestrator decides *when* an attempt runs (dependencies, concurrency, retries,
fail-fast) and hands each one to an :class:`Executor`, which decides *where* and *how*.
:class:`LocalExecutor` runs a :class:`ScriptRunner` in this process, as a child process of
ours. A cluster executor (Dask distributed, Ray) plugs in here and changes no
orchestration code: its ``run`` ships ``attempt.job`` (a plain, picklable :class:`Job`)
and ``attempt.carrier()`` (the W3C trace headers of the batch, so the remote run joins
the same trace) to a worker, which runs ``ScriptRunner(job.script, job.args, ...,
carrier=carrier)`` there and sends back its :class:`RunResult`. Cancellation of
``run`` must stop the remote run (that is how fail-fast reaches it).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from .._run.runner import ScriptRunner
from .jobs import Job

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from opentelemetry.context import Context

    from .._export.session import Session
    from .._monitor.monitor import Sample
    from .._result import RunResult
    from .._run.slots import ProcessSlot

__all__ = ["Attempt", "Executor", "LocalExecutor"]

#: The root span attribute that numbers attempts (1 for the first try).
ATTEMPT_ATTRIBUTE = "aiorunner.attempt"
#: The root span attribute that names the job in its batch.
JOB_ATTRIBUTE = "aiorunner.job"


@dataclass(frozen=True)
class Attempt:
    """
    One try of one job, as the orchestrator hands it to an executor.

    Attributes:
        job: what to run: a :class:`Job` (plain data) or a caller's :class:`ScriptRunner`
            (local only: it holds callbacks and cannot leave this process).
        name: the job's unique name in its batch.
        number: 1 for the first try, 2 for the first retry...
        timeout: seconds for this attempt (None: no limit).
        context: parent trace context: the ``run_many`` span when ``trace="batch"``.
        session: the export pipeline the batch shares (None: the runner's default).
        on_sample: the orchestrator's live-readings hook (progress display).
        slot: the process slot to hold while the script runs, for executors with
            ``uses_process_slots`` (None otherwise).
        on_late_result: where an executor hands the script's own result when the attempt
            is cancelled after the script ended (while its spans were being exported):
            the orchestrator reports that result instead of "cancelled". Optional for
            executors: without it the job reads "cancelled", as before the script ended.
    """

    job: Job | ScriptRunner
    name: str
    number: int = 1
    timeout: float | None = None
    context: Context | None = None
    session: Session | None = None
    on_sample: Callable[[Sample], object] | None = None
    slot: ProcessSlot | None = None
    on_late_result: Callable[[RunResult], None] | None = None

    def carrier(self) -> dict[str, str]:
        """The parent context as W3C headers (``traceparent``...), for a remote runner."""
        if self.context is None:
            return {}
        from opentelemetry.propagate import get_global_textmap

        headers: dict[str, str] = {}
        get_global_textmap().inject(headers, context=self.context)
        return headers


@runtime_checkable
class Executor(Protocol):
    """
    Runs one attempt and returns what happened.

    ``run`` must return a :class:`RunResult` for anything the script did (never raise
    for a failed script) and must honour cancellation: when the orchestrator cancels it
    (fail-fast, caller cancelled), the script and its children must be stopped before
    the cancellation propagates.
    """

    async def run(self, attempt: Attempt) -> RunResult: ...


@dataclass
class LocalExecutor:
    """
    Runs attempts as child processes of this process, through :class:`ScriptRunner`.

    Args:
        runner_options: extra :class:`ScriptRunner` keyword arguments for jobs given as
            paths or :class:`Job` specs (e.g. ``{"monitor_interval": 0.2,
            "validate_dependencies": False}``); ``ScriptRunner`` objects keep their own.
        on_output: called with ``(job name, "stdout" | "stderr", bytes)`` as any job
            writes output (the CLI prefixes lines with the job's name).
    """

    runner_options: Mapping[str, Any] = field(default_factory=dict)
    on_output: Callable[[str, str, bytes], None] | None = None
    #: Holds ``Attempt.slot`` from the spawn to the script's exit (see ProcessSlot).
    uses_process_slots: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A subclass with a run() of its own may build its ScriptRunner without
        # runner_for(), which is what hands the slot over: the slot would never be taken
        # and twice max_concurrency scripts could run at once. So such a subclass keeps
        # the slots only when it says so itself.
        if "run" in cls.__dict__ and "uses_process_slots" not in cls.__dict__:
            cls.uses_process_slots = False

    def runner_for(self, attempt: Attempt) -> ScriptRunner:
        """The ScriptRunner for one attempt (a copy for a caller's ScriptRunner, so the
        caller's object is never changed)."""
        job = attempt.job
        if isinstance(job, Job):
            options: dict[str, Any] = dict(self.runner_options)
            options.update(
                env=job.env,
                cwd=job.cwd,
                timeout=attempt.timeout,
                session=attempt.session,
                context=attempt.context,
            )
            if attempt.session is not None:
                options["config"] = attempt.session.config
            if job.interpreter is not None:
                options["interpreter"] = job.interpreter
            runner = ScriptRunner(job.script, job.args, **options)
        else:
            if job._config is not None:
                # Resolved (by the property, which keeps it) once here, not in every
                # attempt's copy: resolving reads ~40 environment variables, ~0.2 ms.
                job._config = job.config
            runner = copy.copy(job)
            runner.tracing_attributes = dict(job.tracing_attributes)
            if runner.timeout is None:
                runner.timeout = attempt.timeout
            if attempt.context is not None:
                runner.context = attempt.context
                runner.carrier = None
            if attempt.session is not None and job._session is None and job._config is None:
                # A runner left to the default session joins the batch's session.
                runner._session = attempt.session
        runner.tracing_attributes[ATTEMPT_ATTRIBUTE] = attempt.number
        runner.tracing_attributes[JOB_ATTRIBUTE] = attempt.name
        runner.on_sample = _chain(runner.on_sample, attempt.on_sample)
        runner._slot = attempt.slot
        runner._on_late_result = attempt.on_late_result
        if self.on_output is not None:
            runner.on_output = _chain_output(runner.on_output, self.on_output, attempt.name)
        return runner

    async def run(self, attempt: Attempt) -> RunResult:
        """Run the attempt here; cancellation kills its process group (ScriptRunner)."""
        return await self.runner_for(attempt).run()


def _chain(
    first: Callable[[Sample], object] | None, second: Callable[[Sample], object] | None
) -> Callable[[Sample], object] | None:
    if first is None or second is None:
        return first or second

    def both(sample: Sample) -> None:
        first(sample)
        second(sample)

    return both


def _chain_output(
    first: Callable[[str, bytes], None] | None,
    second: Callable[[str, str, bytes], None],
    name: str,
) -> Callable[[str, bytes], None]:
    def output(stream: str, data: bytes) -> None:
        if first is not None:
            first(stream, data)
        second(name, stream, data)

    return output
