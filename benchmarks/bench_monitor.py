"""
What monitoring costs the runner: CPU time of this process while it watches 50 sleeping
scripts at the default interval (0.5 s) for 20 s, as a fraction of one core, beside the
same 50 scripts with monitoring off, and with the portable psutil reader for comparison.

Issue 5's goal: under 1 % of a core at 50 scripts.

Run alone with ``python benchmarks/bench_monitor.py`` (``BENCH_QUICK=1`` for a 3 s smoke
run), or through ``python -m benchmarks``, which calls :func:`main`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from aiorunner._monitor.monitor import ProcessTreeMonitor
from aiorunner._monitor.readers import PsutilReader, Reader, default_reader

if TYPE_CHECKING:
    from collections.abc import Callable

SCRIPTS = 50
INTERVAL = 0.5
SLEEPER = "import sys, time; time.sleep(float(sys.argv[1]))"


@dataclass
class Row:
    mode: str
    wall: float
    cpu: float
    samples: int

    @property
    def core_percent(self) -> float:
        return self.cpu / self.wall * 100.0

    def per_sample_us(self) -> str:
        if not self.samples:
            return "-"
        return f"{self.cpu / self.samples * 1e6:.0f}"


def _spawn(count: int, seconds: float) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", SLEEPER, str(seconds)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(count)
    ]


def _reap(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    for proc in procs:
        proc.wait()


async def _phase(mode: str, duration: float, make_reader: Callable[[], Reader] | None) -> Row:
    procs = await anyio.to_thread.run_sync(_spawn, SCRIPTS, duration + 30)
    monitors: list[ProcessTreeMonitor] = []
    try:
        await anyio.sleep(1.0)  # let the interpreters start: their startup is not ours
        async with anyio.create_task_group() as tg:
            if make_reader is not None:
                reader = make_reader()
                monitors = [
                    ProcessTreeMonitor(p.pid, interval=INTERVAL, reader=reader) for p in procs
                ]
                for monitor in monitors:
                    tg.start_soon(monitor.run)
                await anyio.sleep(INTERVAL * 2)  # first samples and the first shared ticks
            before = sum(m.samples_taken for m in monitors)
            cpu0, wall0 = time.process_time(), time.perf_counter()
            await anyio.sleep(duration)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            taken = sum(m.samples_taken for m in monitors) - before
            tg.cancel_scope.cancel()
    finally:
        await anyio.to_thread.run_sync(_reap, procs)
    return Row(mode, wall, cpu, taken)


async def _run(duration: float) -> list[Row]:
    return [
        await _phase("monitoring off", duration, None),
        await _phase("monitoring on (default reader)", duration, default_reader),
        await _phase("monitoring on (psutil reader)", duration, PsutilReader),
    ]


def main() -> str:
    """Run the benchmark and return its results as a markdown table."""
    quick = os.environ.get("BENCH_QUICK") == "1"
    duration = 3.0 if quick else 20.0
    rows = anyio.run(_run, duration)
    title = (
        f"### Monitoring cost: {SCRIPTS} sleeping scripts, interval {INTERVAL:g} s, "
        f"{duration:g} s{' (quick)' if quick else ''}"
    )
    lines = [
        title,
        "",
        "| mode | runner CPU s | wall s | % of one core | samples | CPU µs per sample |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines.extend(
        f"| {r.mode} | {r.cpu:.3f} | {r.wall:.1f} | {r.core_percent:.2f} % | {r.samples} "
        f"| {r.per_sample_us()} |"
        for r in rows
    )
    off = rows[0].core_percent
    on = rows[1].core_percent
    lines += [
        "",
        f"Monitoring adds {on - off:.2f} % of one core (goal: under 1 % at {SCRIPTS} scripts).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
