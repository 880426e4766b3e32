"""
One export thread for a session's pipelines: spans, log records and metric points.

Why shared: every run hands items to all three pipelines and then waits for all three
(``upload_traces``). With a thread and a loop per pipeline, each run woke three threads
for its items and made three flush round trips; on 2 cores every cross-thread wake-up
costs (issue 21: the metrics pipeline's own thread cost ~1.2 ms of runner CPU per trivial
run, the items' export work a fraction of that). On one loop, wake-ups that come close
together are served by one pass of the loop, and a run's flush of all three signals is
one round trip (``Session._flush_trace_then``).

Isolation is kept where it matters: each pipeline still has its own queues, batcher,
workers (one task per backend) and deadlines; a backend's blocking call would hold every
signal's exports, as it held every backend of its own pipeline before (sync exporters run
in worker threads; the embedded jsonl file writes microseconds on this thread).

The loop runs while any pipeline using it is running (``acquire`` at a pipeline's start,
``release`` when its drain is over); the last one out stops it, and a pipeline starting
later gets a new thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref

__all__ = ["ExportLoop"]

logger = logging.getLogger("aiorunner.export")


class ExportLoop:
    """An asyncio loop in one daemon thread, shared by the pipelines of one session."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self._users = 0
        if hasattr(os, "register_at_fork"):
            ref = weakref.ref(self)

            def reinit() -> None:
                live = ref()
                if live is not None:
                    live._after_fork_in_child()

            os.register_at_fork(after_in_child=reinit)

    def _after_fork_in_child(self) -> None:
        """A forked child has none of the parent's threads: start from nothing."""
        self._lock = threading.Lock()
        self._loop = None
        self.thread = None
        self._users = 0

    def acquire(self) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
        """The running loop (started if needed) and its thread, for one more pipeline.
        Callbacks scheduled before the thread runs simply wait in the loop's queue."""
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=self._thread_main, args=(loop,), name="aiorunner-export", daemon=True
                )
                self._loop, self.thread = loop, thread
                thread.start()
            self._users += 1
            assert self.thread is not None
            return self._loop, self.thread

    def release(self) -> None:
        """On the loop: a pipeline is done with it; the last one stops it."""
        with self._lock:
            self._users -= 1
            if self._users > 0 or self._loop is None:
                return
            loop, self._loop, self.thread = self._loop, None, None
        loop.stop()

    @staticmethod
    def _thread_main(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        except BaseException:  # the export thread must not die silently
            logger.exception("the aiorunner export thread stopped on an unexpected error")
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
