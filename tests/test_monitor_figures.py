"""
The figures a monitored run reports are readings of a live tree over matching intervals
(issue 16, items 7 and 8): no sample of a tree that has exited (rss 0, no process), and
CPU time divided by a wall time that covers the same stretch (spawn to exit).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.sdk.trace import SpanProcessor

from aiorunner import ScriptRunner, Session, TracingConfig

if TYPE_CHECKING:
    from aiorunner import Sample

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc (Linux)")

MiB = 1 << 20

HOLD = """
import time
block = bytearray(100 << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
time.sleep(1.5)
"""


async def test_no_sample_reads_zero_and_the_average_is_what_was_held(
    make_script: Any, spans_of: Any
) -> None:
    """A script holding 100 MiB: every sample seen by ``on_sample``, ``live()`` and the
    ``memory_monitoring`` events is of a live tree (rss > 0, at least one process), and
    the time-weighted average is not dragged down by a reading of the exited tree."""
    seen: list[Sample] = []
    runner = ScriptRunner(make_script(HOLD), on_sample=seen.append, monitor_interval=0.1)
    result = await runner.run()
    assert result.success, result.error
    assert len(seen) >= 5
    assert all(s.rss_bytes > 0 and s.processes >= 1 and s.threads >= 1 for s in seen), [
        (round(s.elapsed, 3), s.rss_bytes, s.processes) for s in seen
    ]
    assert result.metrics["samples"] == len(seen)
    assert result.metrics["memory_rss_avg_bytes"] >= 85 * MiB, result.metrics
    [execute] = [s for s in spans_of(result.trace_id) if s["name"] == "execute_script"]
    memory = [e for e in execute.get("events", []) if e["name"] == "memory_monitoring"]
    assert memory
    for event in memory:
        values = [a["value"] for a in event.get("attributes", [])]
        assert values and all(int(v["intValue"]) > 0 for v in values), event


class _HoldTheGil(SpanProcessor):
    """When ``execute_script`` starts, a thread of the app takes the GIL for a while (as
    the export thread may right then): the script runs while the runner's loop waits to
    get the GIL back from the spawn."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if span.name != "execute_script":
            return

        def spin() -> None:
            until = time.perf_counter() + 0.2
            while time.perf_counter() < until:
                pass

        thread = threading.Thread(target=spin)
        thread.start()
        self.threads.append(thread)


async def test_cpu_percent_avg_of_a_one_thread_script_is_at_most_100(
    make_script: Any,
) -> None:
    """A one-thread ``pass`` script cannot use more than one core: its CPU time (counted
    from the fork) is divided by a wall time that starts before the fork, even when the
    runner's loop was held up right after the spawn."""
    script = make_script("pass\n")
    hold = _HoldTheGil()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.05)  # the spinning thread keeps the GIL up to 50 ms at a time
    try:
        async with Session(TracingConfig()) as session:
            session.tracer_provider.add_span_processor(hold)
            for _ in range(3):
                result = await ScriptRunner(script, session=session).run()
                assert result.success, result.error
                metrics = result.metrics
                cpu = metrics["cpu_user_seconds"] + metrics["cpu_system_seconds"]
                assert cpu <= metrics["execution_time_seconds"], metrics
                assert metrics["cpu_percent_avg"] <= 100.0, metrics
    finally:
        sys.setswitchinterval(interval)
        for thread in hold.threads:
            thread.join()
    assert hold.threads
    assert os.cpu_count()


async def test_the_first_sample_of_a_process_just_spawned_has_its_memory() -> None:
    """A process read the instant Popen returns often shows no resident memory yet (its
    exec is still setting up; about 1 read in 15 here). Such a reading is not a sample:
    the monitor reads again at once instead of a whole interval later, so the first
    sample comes promptly and has the process's memory. Thirty spawns, interval 60 s."""
    import subprocess

    import anyio

    from aiorunner import ProcessTreeMonitor

    for _ in range(30):
        proc = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(5)"], start_new_session=True
        )
        try:
            monitor = ProcessTreeMonitor(proc.pid, interval=60.0)
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(monitor.run)
                    while monitor.last_sample is None:
                        await anyio.sleep(0.002)
                    first = monitor.last_sample
                    await monitor.stop()
            assert first.rss_bytes > 0 and first.processes == 1, first
        finally:
            proc.kill()
            proc.wait()


async def test_no_sample_of_a_one_thread_script_reads_above_100_percent(make_script) -> None:
    """/proc counts CPU in 10 ms ticks: over a window of a few ticks a one-thread script
    read 120-200 %. A sample's percent is bounded by the tree's threads."""
    seen: list[Sample] = []
    busy = "import time\nend = time.perf_counter() + 0.6\nwhile time.perf_counter() < end: pass\n"
    runner = ScriptRunner(make_script(busy), on_sample=seen.append, monitor_interval=0.02)
    result = await runner.run()
    assert result.success, result.error
    assert len(seen) >= 10
    assert all(s.threads == 1 for s in seen)
    assert max(s.cpu_percent for s in seen) <= 100.0, [round(s.cpu_percent) for s in seen]
