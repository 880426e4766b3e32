"""
Short blocking calls of a run's hot path, sent to worker threads at a third of the cost
of ``anyio.to_thread.run_sync``.

A run makes a few small blocking calls: read the script, read ``/proc``, append a line
to the traces file (when jsonl shares the session with other backends).
``anyio.to_thread.run_sync`` costs 90-130 µs of CPU per call on a 2-core machine (an
extra checkpoint, the capacity limiter, pool bookkeeping, ``queue.Queue``'s conditions);
this module costs about 35 µs: a few daemon threads take jobs from a ``SimpleQueue`` and
hand results back with ``call_soon_threadsafe``. On 2 cores every 1 ms of the runner's
CPU per run costs about 7 % of throughput (issue 7), so the few calls of a run are worth
it. Long or unbounded calls (waiting for a process, a user's exporter) stay on
``anyio.to_thread``.

Semantics are those of ``anyio.to_thread.run_sync`` on asyncio: contextvars are copied
into the thread; by default a cancelled caller still waits for the call to finish (the
thread is never abandoned, so what the call made always comes back to the caller) and
the cancellation is delivered right after; ``abandon_on_cancel=True`` frees the caller at
once and the call's result is dropped.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import queue
import threading
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.lowlevel

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["run_sync"]

T = TypeVar("T")

#: Threads kept at most; more concurrent calls wait in the queue.
MAX_THREADS = 8
#: A thread idle this long exits (a new one starts on demand).
IDLE_SECONDS = 10.0

_Job = tuple[
    asyncio.AbstractEventLoop,
    "asyncio.Future[Any]",
    contextvars.Context,
    "Callable[..., Any]",
    tuple[Any, ...],
]

_jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
_lock = threading.Lock()
# Under _lock: threads alive, and threads waiting for a job. A submitter starts a thread
# when the queued jobs outnumber the waiting threads (a count, not semaphore tokens: a
# token left behind by a thread that took a job it was not woken for outlived every
# thread once, and the next job waited forever).
_threads = 0
_waiting = 0


def _deliver(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # the caller gave up (abandon_on_cancel)
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _worker() -> None:
    global _threads, _waiting
    while True:
        with _lock:
            _waiting += 1
        try:
            job = _jobs.get(timeout=IDLE_SECONDS)
        except queue.Empty:
            with _lock:
                _waiting -= 1
                if _jobs.empty():  # checked under the lock a submitter takes
                    _threads -= 1
                    return
            continue
        with _lock:
            _waiting -= 1
            # A submitter may have counted on this thread before it took this job.
            _start_if_needed()
        loop, future, context, func, args = job
        try:
            result: tuple[bool, Any] = (True, context.run(func, *args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, like anyio does
            result = (False, exc)
        del job, func, args, context
        try:
            loop.call_soon_threadsafe(_deliver, future, *result)
        except RuntimeError:  # the caller's loop is closed: nobody waits any more
            pass
        del result, future, loop


def _start_if_needed() -> None:
    """Under _lock: start a thread when queued jobs outnumber the threads waiting."""
    global _threads
    if _jobs.qsize() > _waiting and _threads < MAX_THREADS:
        _threads += 1
        threading.Thread(target=_worker, name="aiorunner-worker", daemon=True).start()


def _submit(job: _Job) -> None:
    with _lock:
        _jobs.put(job)
        _start_if_needed()


def _after_fork_in_child() -> None:
    """A forked child has none of the parent's threads: start from nothing."""
    global _jobs, _lock, _threads, _waiting
    _jobs = queue.SimpleQueue()
    _lock = threading.Lock()
    _threads = _waiting = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


async def run_sync(func: Callable[..., T], *args: Any, abandon_on_cancel: bool = False) -> T:
    """
    Call ``func(*args)`` in a worker thread and return its result (or raise its error).

    Args:
        abandon_on_cancel: when the caller is cancelled, return at once and leave the call
            to finish on its own (its result is dropped). By default the caller waits for
            the call to finish, then the cancellation is delivered.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    _submit((loop, future, contextvars.copy_context(), func, args))
    if abandon_on_cancel:
        return await future
    with anyio.CancelScope(shield=True):
        result = await future
    await anyio.lowlevel.checkpoint_if_cancelled()
    return result
