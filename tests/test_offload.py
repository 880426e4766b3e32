"""
The worker-thread pool of the run's short blocking calls (``aiorunner._offload``): jobs
always find a thread, including after every thread left for being idle.
"""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from aiorunner import _offload


def _thread_name() -> str:
    return threading.current_thread().name


async def _wait_for_no_threads() -> None:
    with anyio.fail_after(10):
        while _offload._threads:
            await anyio.sleep(0.01)


async def test_a_job_after_every_thread_left_idle_still_runs(monkeypatch: pytest.MonkeyPatch):
    """Threads leave after IDLE_SECONDS without work; the next jobs start new ones (a
    semaphore token left behind once made such a job wait forever)."""
    monkeypatch.setattr(_offload, "IDLE_SECONDS", 0.05)
    for _ in range(3):
        async with anyio.create_task_group() as tg:  # several threads at once
            for _ in range(4):
                tg.start_soon(_offload.run_sync, time.sleep, 0.02)
        assert await _offload.run_sync(_thread_name) == "aiorunner-worker"
        await _wait_for_no_threads()
        with anyio.fail_after(5):
            assert await _offload.run_sync(_thread_name) == "aiorunner-worker"
        await _wait_for_no_threads()


async def test_more_jobs_than_threads_all_run_and_threads_stay_bounded():
    """Jobs beyond MAX_THREADS wait in the queue and run; no more threads than that."""
    peak = 0
    lock = threading.Lock()
    running = 0

    def job() -> None:
        nonlocal peak, running
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with lock:
            running -= 1

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for _ in range(3 * _offload.MAX_THREADS):
                tg.start_soon(_offload.run_sync, job)
    assert 1 <= peak <= _offload.MAX_THREADS
    assert _offload._threads <= _offload.MAX_THREADS
