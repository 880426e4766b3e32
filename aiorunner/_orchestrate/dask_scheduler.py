"""
The scheduler side of :class:`aiorunner.dask.DaskExecutor`'s at-most-once promise.

Dask re-runs a task whose worker died (even with ``retries=0``), and recomputes one whose
result was lost with its worker. :class:`AtMostOnce`, a ``SchedulerPlugin``, remembers
each attempt that began on a worker (the task's *started* note, a ``log_event`` the worker
sends on its ordinary batched stream before it spawns the script, and the pid note after)
and, when such a task goes back to ``released`` to be run again, writes the first run's
worker and pid into the task's annotations, which the scheduler sends to the worker with
the task: the re-run reads them locally and returns ``lost`` without running the script.
The happy path costs the scheduler two small batched messages per attempt and no round
trip (the per-attempt ``distributed.Event`` it replaced cost three).

The scheduler imports aiorunner anyway (it unpickles each task, whose function and spec
are aiorunner's), so the plugin is registered by reference; this module imports only
``distributed``'s plugin base class, nothing else of aiorunner.
"""

from __future__ import annotations

from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

__all__ = ["LOST_ANNOTATION", "NOTE_TOPIC_PREFIX", "PLUGIN_NAME", "AtMostOnce"]

#: One plugin per scheduler, shared by every executor (versioned: a changed plugin is
#: registered beside an older one instead of being refused as already there).
PLUGIN_NAME = "aiorunner-at-most-once-1"
#: Topics of the notes the plugin reads (each executor's topic begins with it).
NOTE_TOPIC_PREFIX = "aiorunner-"
#: The task annotation a re-run finds: ``[first worker, first pid]``.
LOST_ANNOTATION = "aiorunner.lost"


class AtMostOnce(SchedulerPlugin):  # type: ignore[misc]
    """Remembers attempts that began on a worker; marks their re-runs as lost."""

    name = PLUGIN_NAME
    #: Registering it again (each executor does, once) keeps the one already there
    #: and what it remembers.
    idempotent = True

    def __init__(self) -> None:
        #: task key -> [worker address, script pid or None], until the task is forgotten.
        self.started: dict[str, list[Any]] = {}
        self.scheduler: Any = None

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def log_event(self, topic: str, msg: Any) -> None:
        if not topic.startswith(NOTE_TOPIC_PREFIX) or not isinstance(msg, dict):
            return
        key = msg.get("key")
        if not isinstance(key, str):
            return
        entry = self.started.get(key)
        if entry is None:
            # Only a task the scheduler still has: a late note of a forgotten task
            # would otherwise stay here for ever.
            if self.scheduler is None or key not in self.scheduler.tasks:
                return
            entry = self.started[key] = [msg.get("worker"), None]
        if msg.get("pid") is not None:
            entry[1] = msg["pid"]

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "forgotten":
            self.started.pop(key, None)
            return
        if finish != "released":
            return
        entry = self.started.get(key)
        if entry is None or self.scheduler is None:
            return
        # Released after it began: its worker died (processing -> released) or its
        # result was lost with its worker (memory -> released), and Dask will run it
        # again; or its client let it go (then it is forgotten next, and this is moot).
        task = self.scheduler.tasks.get(key)
        if task is not None:
            task.annotations = {**(task.annotations or {}), LOST_ANNOTATION: list(entry)}
