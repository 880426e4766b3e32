"""
Process slots: how many scripts may be alive at once, granted in the order attempts queued.

Why here, in the run wing, and not beside the orchestrator that makes them: a
:class:`~aiorunner.ScriptRunner` holds its attempt's slot from the spawn to the script's
exit, so both the run and the orchestrator use it, and it must sit below both.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["ProcessSlot", "SlotPool"]


class SlotPool:
    """
    ``max_concurrency`` process slots, granted in the order the attempts were queued
    (:meth:`ProcessSlot` tickets), not in the order they finish preparing: jobs start in
    input order, as the orchestrator promises.
    """

    def __init__(self, size: int) -> None:
        self._free = size
        self._queue: deque[ProcessSlot] = deque()

    def _enqueue(self, slot: ProcessSlot) -> None:
        self._queue.append(slot)

    def _grant(self) -> None:
        queue = self._queue
        while self._free and queue and queue[0]._waiting is not None:
            slot = queue.popleft()
            waiting, slot._waiting = slot._waiting, None
            assert waiting is not None
            self._free -= 1
            slot.held = True
            waiting.set()

    def _leave(self, slot: ProcessSlot) -> None:
        """``slot`` will never ask (its attempt ended before its script started)."""
        try:
            self._queue.remove(slot)
        except ValueError:
            return
        self._grant()

    def _release(self) -> None:
        self._free += 1
        self._grant()


class ProcessSlot:
    """
    One attempt's right to have its script's process alive: one of ``max_concurrency``.

    An executor that declares ``uses_process_slots = True`` takes it right before it
    starts the script and gives it back as soon as the script exited, and the orchestrator
    then lets up to twice ``max_concurrency`` attempts be under way: while scripts run,
    the next attempts read their scripts and make their first spans, and the last ones
    export theirs, instead of a core idling between one script's exit and the next
    start. Executors without the flag get exactly ``max_concurrency`` attempts at once.
    """

    def __init__(
        self,
        pool: SlotPool,
        *,
        on_acquire: Callable[[], None] | None = None,
        keep_on_failure: bool = False,
    ) -> None:
        self._pool = pool
        self._on_acquire = on_acquire
        # fail_fast, last try: a failed script keeps its slot until the orchestrator has
        # stopped the batch, so that no queued script starts after the failure.
        self._keep_on_failure = keep_on_failure
        self._waiting: anyio.Event | None = None
        self.held = False
        pool._enqueue(self)  # the ticket: its place in line is taken now

    async def acquire(self) -> None:
        """Wait for a free slot and this attempt's turn (cancellable)."""
        if not self.held:
            self._waiting = anyio.Event()
            event = self._waiting
            self._pool._grant()
            try:
                await event.wait()
            except BaseException:
                if self.held:  # granted while being cancelled: give it back
                    self.release_kept()
                else:
                    self._waiting = None
                    self._pool._leave(self)
                raise
        if self._on_acquire is not None:
            self._on_acquire()

    def exited(self) -> None:
        """The script's process exited (not reaped yet): give the slot back now, unless
        it is kept to see whether the script failed (``fail_fast``, last try)."""
        self.release(failed=True)  # whether it failed is not known yet

    def release(self, *, failed: bool = False) -> None:
        """Give the slot back: the script's process has exited (or never started)."""
        if self.held and not (failed and self._keep_on_failure):
            self.release_kept()

    def release_kept(self) -> None:
        """Give back a slot kept by a failure (the orchestrator, once it stopped the rest)."""
        if self.held:
            self.held = False
            self._pool._release()

    def close(self) -> None:
        """The attempt is over: give back the slot, or the place in line never used."""
        self.release_kept()
        self._pool._leave(self)
