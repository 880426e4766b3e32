"""
ProcessTreeMonitor against real processes: real scripts started in their own session,
reaped with ``os.wait4`` by the test exactly as the runner does, the truth measured by
the processes themselves (``getrusage(RUSAGE_SELF)`` written to a file before they exit).

Scripts and test coordinate through files (``go``, ``release``) instead of sleeps, so no
test depends on how fast this machine is.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from aiorunner import UsageError
from aiorunner._monitor.monitor import ProcessTreeMonitor, Sample
from aiorunner._monitor.readers import ProcfsReader, PsutilReader
from aiorunner._monitor.sampler import _samplers

pytestmark = pytest.mark.skipif(not hasattr(os, "wait4"), reason="needs os.wait4 (POSIX)")

LINUX = sys.platform == "linux"
MiB = 1024 * 1024
#: An interval no run of these tests outlasts, even on a loaded machine: after the
#: immediate first sample, no tick comes while the script runs.
SLOW = 60.0

# Shared by the scripts: wait for a file, burn CPU, report own usage.
PRELUDE = textwrap.dedent(
    """
    import json, os, resource, subprocess, sys, textwrap, time

    def wait_for(name):
        while not os.path.exists(name):
            time.sleep(0.005)

    def burn(seconds):
        t = time.process_time()
        while time.process_time() - t < seconds:
            pass

    def report(name):
        r = resource.getrusage(resource.RUSAGE_SELF)
        with open(name + ".tmp", "w") as f:
            json.dump({"cpu": r.ru_utime + r.ru_stime, "maxrss": r.ru_maxrss}, f)
        os.replace(name + ".tmp", name)

    def python(code):
        source = "PRELUDE = " + repr(PRELUDE) + "\\n" + PRELUDE + textwrap.dedent(code)
        return subprocess.Popen([sys.executable, "-c", source])
    """
)


def script(tmp_path: Path, code: str, name: str = "main.py") -> Path:
    """A Python file that has the prelude (and the prelude as a string, for children)."""
    body = f"PRELUDE = {PRELUDE!r}\n{PRELUDE}\n{textwrap.dedent(code)}"
    path = tmp_path / name
    path.write_text(body)
    return path


@dataclass
class Run:
    monitor: ProcessTreeMonitor
    metrics: dict[str, float | int]
    returncode: int


async def run_monitored(
    tmp_path: Path,
    code: str,
    *,
    during: Callable[[ProcessTreeMonitor], Coroutine[Any, Any, None]] | None = None,
    stop_before_reap: bool = False,
    use_rusage: bool = True,
    deadline: float = 30.0,
    **options: Any,
) -> Run:
    """
    Start ``code`` in its own session, monitor it, reap it with wait4 and summarise.

    ``during`` runs beside the monitor (to create ``go``/``release`` files when the
    samples show what the test waits for). With ``stop_before_reap`` the test waits for
    the exit without reaping (``waitid(WNOWAIT)``), calls ``monitor.stop()``, then reaps.
    """
    path = script(tmp_path, code)
    proc = await anyio.to_thread.run_sync(
        partial(
            subprocess.Popen,
            [sys.executable, str(path)],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    )
    monitor = ProcessTreeMonitor(proc.pid, **options)
    started = time.perf_counter()
    rusage = None
    try:
        with anyio.fail_after(deadline):
            async with anyio.create_task_group() as tg:
                tg.start_soon(monitor.run)
                if during is not None:
                    tg.start_soon(during, monitor)
                if stop_before_reap:
                    await anyio.to_thread.run_sync(
                        os.waitid,
                        os.P_PID,
                        proc.pid,
                        os.WEXITED | os.WNOWAIT,
                        abandon_on_cancel=True,
                    )
                    await monitor.stop()
                _, status, rusage = await anyio.to_thread.run_sync(
                    os.wait4, proc.pid, 0, abandon_on_cancel=True
                )
                proc.returncode = os.waitstatus_to_exitcode(status)
                tg.cancel_scope.cancel()
    finally:
        if proc.returncode is None:  # the test failed: leave nothing behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # stragglers of a failed test
    metrics = monitor.summary(
        rusage=rusage if use_rusage else None, wall_seconds=time.perf_counter() - started
    )
    return Run(monitor, metrics, proc.returncode)


async def until(monitor: ProcessTreeMonitor, check: Callable[[Sample], bool]) -> Sample:
    """Wait until a sample satisfies ``check`` (the test's deadline bounds this)."""
    while True:
        sample = monitor.last_sample
        if sample is not None and check(sample):
            return sample
        await anyio.sleep(0.005)


async def until_samples(monitor: ProcessTreeMonitor, count: int) -> None:
    """Wait until ``monitor`` has taken ``count`` samples."""
    while len(monitor.samples) < count:
        await anyio.sleep(0.005)


async def touch(path: Path) -> None:
    await anyio.Path(path).touch()


def truth(tmp_path: Path, *names: str) -> list[dict[str, float]]:
    return [json.loads((tmp_path / n).read_text()) for n in names]


READERS = [
    pytest.param(ProcfsReader, id="procfs", marks=pytest.mark.skipif(not LINUX, reason="Linux")),
    pytest.param(PsutilReader, id="psutil"),
]


# -- CPU ------------------------------------------------------------------------------------

GRANDCHILD_BURNS = """
wait_for("go")
child = python('''
gc = python("burn(1.0); report('t_grandchild')")
gc.wait()
report("t_child")
''')
child.wait()
report("t_root")
"""


@pytest.mark.parametrize("reader", READERS)
async def test_cpu_of_a_grandchild_that_lived_between_samples_is_exact(
    tmp_path: Path, reader: type
) -> None:
    """A grandchild burns 1.0 s of CPU and exits before the first tick after the immediate
    sample: wait4's rusage brings it back, and the reported user+system seconds are within
    10 % of what the three processes measured themselves."""

    async def go(monitor: ProcessTreeMonitor) -> None:
        await until(monitor, lambda s: True)  # the immediate sample has been taken
        await touch(tmp_path / "go")

    run = await run_monitored(tmp_path, GRANDCHILD_BURNS, interval=SLOW, during=go, reader=reader())
    assert run.returncode == 0
    true_cpu = sum(t["cpu"] for t in truth(tmp_path, "t_root", "t_child", "t_grandchild"))
    reported = run.metrics["cpu_user_seconds"] + run.metrics["cpu_system_seconds"]
    assert true_cpu >= 1.0
    assert abs(reported - true_cpu) <= 0.10 * true_cpu, (reported, true_cpu)
    assert run.metrics["samples"] == 1  # the grandchild was never sampled
    assert run.metrics["cpu_percent_avg"] > 0


async def test_without_rusage_a_process_never_sampled_is_missed(tmp_path: Path) -> None:
    """The same run summarised without rusage reports far less: proof that the exact
    figure above comes from the kernel's accounting, not from luck with the samples."""

    async def go(monitor: ProcessTreeMonitor) -> None:
        await until(monitor, lambda s: True)
        await touch(tmp_path / "go")

    run = await run_monitored(
        tmp_path, GRANDCHILD_BURNS, interval=SLOW, during=go, use_rusage=False
    )
    reported = run.metrics["cpu_user_seconds"] + run.metrics["cpu_system_seconds"]
    assert reported < 0.5


ORPHAN_BURNS = """
wait_for("go")
child = python('''
python("burn(0.5); report('t_orphan'); wait_for('release')")
wait_for("child_may_exit")
report("t_child")
''')
child.wait()
wait_for("orphan_sampled")
report("t_root")
"""


async def test_orphaned_grandchild_is_counted_once_outside_rusage(tmp_path: Path) -> None:
    """A grandchild whose parent exits is reparented to init: the script never reaps it, so
    its CPU is not in wait4's rusage. The monitor follows it after the reparenting and adds
    its CPU on top, exactly once."""

    async def steer(monitor: ProcessTreeMonitor) -> None:
        await until(monitor, lambda s: True)
        await touch(tmp_path / "go")
        await until(monitor, lambda s: s.processes >= 3)  # root, child, orphan-to-be
        await touch(tmp_path / "child_may_exit")
        while not (tmp_path / "t_orphan").exists():
            await anyio.sleep(0.01)
        seen = monitor.last_sample
        assert seen is not None
        # Two more samples after the orphan reported: its final CPU has been read.
        await until(monitor, lambda s: s.elapsed > seen.elapsed + 2 * monitor.interval)
        await touch(tmp_path / "orphan_sampled")
        await touch(tmp_path / "release")

    run = await run_monitored(tmp_path, ORPHAN_BURNS, interval=0.05, during=steer)
    assert run.returncode == 0
    parts = truth(tmp_path, "t_root", "t_child", "t_orphan")
    true_cpu = sum(t["cpu"] for t in parts)
    reported = run.metrics["cpu_user_seconds"] + run.metrics["cpu_system_seconds"]
    assert abs(reported - true_cpu) <= 0.10 * true_cpu, (reported, true_cpu, parts)


async def test_session_scan_finds_an_orphan_never_seen_under_its_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that starts a grandchild and exits at once leaves an orphan the children
    files never showed; the session scan finds it (the script leads its own session) and
    its CPU is counted."""
    monkeypatch.setattr("aiorunner._monitor.sampler._ORPHAN_SCAN_PERIOD", 0.0)
    code = """
    wait_for("go")
    python('python("burn(0.4); report(\\'t_orphan\\'); wait_for(\\'release\\')")').wait()
    wait_for("release")
    report("t_root")
    """

    async def steer(monitor: ProcessTreeMonitor) -> None:
        await until(monitor, lambda s: True)
        await touch(tmp_path / "go")
        while not (tmp_path / "t_orphan").exists():
            await anyio.sleep(0.01)
        await until(monitor, lambda s: s.cpu_seconds >= 0.4)
        await touch(tmp_path / "release")

    run = await run_monitored(
        tmp_path, code, interval=0.05, during=steer, reader=ProcfsReader() if LINUX else None
    )
    parts = truth(tmp_path, "t_root", "t_orphan")
    reported = run.metrics["cpu_user_seconds"] + run.metrics["cpu_system_seconds"]
    assert reported >= 0.9 * sum(t["cpu"] for t in parts)
    assert run.metrics["processes_max"] >= 2


# -- memory ---------------------------------------------------------------------------------


async def test_memory_spike_between_samples_is_caught_by_ru_maxrss(tmp_path: Path) -> None:
    """A child allocates and touches 200 MiB for 0.2 s between two samples: the reported
    peak is within 10 % of the peak the child measured itself."""
    code = """
    wait_for("go")
    python('''
    data = b"\\\\x01" * (200 * 1024 * 1024)
    time.sleep(0.2)
    report("t_child")
    ''').wait()
    """

    async def go(monitor: ProcessTreeMonitor) -> None:
        await until(monitor, lambda s: True)
        await touch(tmp_path / "go")

    run = await run_monitored(tmp_path, code, interval=SLOW, during=go)
    (child,) = truth(tmp_path, "t_child")
    true_peak = child["maxrss"] * (1 if sys.platform == "darwin" else 1024)
    from aiorunner._monitor.readers import own_peak_rss

    own_peak = own_peak_rss() * 1024  # our VmHWM (+ a margin): what the child may inherit
    if sys.platform == "linux" and own_peak >= true_peak * 0.9:
        # Linux folds the spawning process's memory into the child's ru_maxrss at exec:
        # this test process grew as big as the spike, so the figure cannot tell them
        # apart. tests/test_runner.py checks the same spike from a small process.
        pytest.skip(f"this test process peaked at {own_peak >> 20} MiB, near the spike")
    peak = run.metrics["memory_rss_peak_bytes"]
    assert true_peak >= 200 * MiB
    assert abs(peak - true_peak) <= 0.10 * true_peak, (peak, true_peak)
    assert run.metrics["memory_rss_avg_bytes"] <= peak


@pytest.mark.parametrize("reader", READERS)
async def test_memory_of_the_tree_is_sampled(tmp_path: Path, reader: type) -> None:
    """While a child holds 100 MiB, samples show the tree's RSS above it (a sum over the
    processes alive, not just the script's own)."""
    code = """
    python('data = b"\\\\x01" * (100 * 1024 * 1024); wait_for("release")').wait()
    """

    async def release(monitor: ProcessTreeMonitor) -> None:
        await until(monitor, lambda s: s.rss_bytes >= 100 * MiB)
        await touch(tmp_path / "release")

    run = await run_monitored(tmp_path, code, interval=0.05, during=release, reader=reader())
    assert run.metrics["memory_rss_peak_bytes"] >= 100 * MiB
    assert run.metrics["processes_max"] >= 2


# -- I/O ------------------------------------------------------------------------------------

WRITE_50_MB = """
with open("out.bin", "wb") as f:
    for _ in range(50):
        f.write(b"x" * (1024 * 1024))
"""


@pytest.mark.skipif(not LINUX, reason="per-process I/O counters are exact on Linux only")
@pytest.mark.parametrize("reader", READERS)
async def test_io_write_of_the_last_moment_is_read_from_the_zombie(
    tmp_path: Path, reader: type
) -> None:
    """The script writes 50 MiB and exits before any tick: ``stop()`` before reaping reads
    its final counters from the zombie, so ``io_write_bytes`` >= 50 MiB."""
    run = await run_monitored(
        tmp_path, WRITE_50_MB, interval=SLOW, stop_before_reap=True, reader=reader()
    )
    assert (tmp_path / "out.bin").stat().st_size == 50 * MiB
    assert run.metrics["io_write_bytes"] >= 50 * MiB
    assert run.metrics["io_write_count"] >= 50


@pytest.mark.skipif(not LINUX, reason="per-process I/O counters are exact on Linux only")
async def test_io_of_a_reaped_child_is_counted_through_its_parent(tmp_path: Path) -> None:
    """A child writes 50 MiB and exits between samples; the kernel adds its I/O to the
    script's counters when the script reaps it, and the next sample of the script shows it
    (the runner's cancel-after-reap flow, no ``stop()``)."""
    code = f"""
    python({WRITE_50_MB!r}).wait()
    wait_for("release")
    """

    async def release(monitor: ProcessTreeMonitor) -> None:
        await until(monitor, lambda s: (s.io_write_bytes or 0) >= 50 * MiB)
        await touch(tmp_path / "release")

    run = await run_monitored(tmp_path, code, interval=0.05, during=release)
    assert run.metrics["io_write_bytes"] >= 50 * MiB
    assert run.metrics["io_read_bytes"] > 0  # python read its own modules


@pytest.mark.skipif(LINUX, reason="only where psutil has no I/O counters (macOS)")
async def test_io_keys_absent_where_the_platform_has_no_counters(tmp_path: Path) -> None:
    """On macOS the I/O keys are absent rather than zero."""
    run = await run_monitored(tmp_path, WRITE_50_MB, interval=0.05)
    assert "io_write_bytes" not in run.metrics


# -- discovery ------------------------------------------------------------------------------

TWO_SLEEPERS = """
wait_for("go")
kids = [python('wait_for("release")') for _ in range(2)]
for k in kids:
    k.wait()
"""


@pytest.mark.parametrize(
    "make_reader",
    [
        pytest.param(
            ProcfsReader, id="children-files", marks=pytest.mark.skipif(not LINUX, reason="Linux")
        ),
        pytest.param(
            partial(ProcfsReader, children_files=False),
            id="scan",
            marks=pytest.mark.skipif(not LINUX, reason="Linux"),
        ),
        pytest.param(PsutilReader, id="psutil"),
    ],
)
async def test_children_started_later_are_picked_up(
    tmp_path: Path, make_reader: Callable[[], Any]
) -> None:
    """Two children started after the first sample appear in later samples
    (processes_max >= 3), whether found through children files or process scans."""

    async def steer(monitor: ProcessTreeMonitor) -> None:
        await until(monitor, lambda s: True)
        await touch(tmp_path / "go")
        await until(monitor, lambda s: s.processes >= 3)
        await touch(tmp_path / "release")

    run = await run_monitored(
        tmp_path, TWO_SLEEPERS, interval=0.05, during=steer, reader=make_reader()
    )
    assert run.metrics["processes_max"] >= 3
    assert run.metrics["threads_max"] >= 3
    assert run.metrics["open_fds_max"] >= 3


async def test_processes_vanishing_between_discovery_and_read_do_not_crash(
    tmp_path: Path,
) -> None:
    """A script that starts 150 very short-lived children while sampled every 5 ms: many
    vanish between being listed and being read; monitoring goes on without error."""
    code = """
    for _ in range(150):
        subprocess.run(["true"])
    """
    seen: list[Sample] = []
    run = await run_monitored(tmp_path, code, interval=0.005, on_sample=seen.append)
    assert run.returncode == 0
    assert run.monitor.error is None
    assert run.metrics["samples"] == len(seen) >= 2
    assert run.metrics["cpu_user_seconds"] + run.metrics["cpu_system_seconds"] > 0


async def test_a_pid_already_gone_gives_no_samples_and_no_crash(tmp_path: Path) -> None:
    """Monitoring a process that was already reaped returns at once with no sample; the
    summary has the wall time and no sampled keys (unknown, not zero)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    monitor = ProcessTreeMonitor(proc.pid, interval=0.01)
    with anyio.fail_after(10):
        await monitor.run()
    metrics = monitor.summary(rusage=None, wall_seconds=0.5)
    assert metrics == {"execution_time_seconds": 0.5, "samples": 0}
    assert monitor.events(128) == []


# -- events, live readings, limits -----------------------------------------------------------


async def test_events_are_thinned_keeping_first_and_last(tmp_path: Path) -> None:
    """A run with many samples yields at most max_events events, whole samples only
    (cpu, memory, io in that order), the first and last samples among them."""

    async def release(monitor: ProcessTreeMonitor) -> None:
        await until(monitor, lambda s: monitor.last_sample is not None)
        while len(monitor.samples) < 40:
            await anyio.sleep(0.01)
        await touch(tmp_path / "release")

    run = await run_monitored(tmp_path, 'wait_for("release")', interval=0.01, during=release)
    samples = run.monitor.samples
    assert len(samples) >= 40
    events = run.monitor.events(10)
    kinds = 3 if LINUX else 2
    assert len(events) == (10 // kinds) * kinds <= 10
    names = [name for name, _, _ in events]
    assert names[:kinds] == ["cpu_monitoring", "memory_monitoring", "io_monitoring"][:kinds]
    stamps = [ts for _, _, ts in events]
    assert stamps == sorted(stamps)
    assert stamps[0] == int(samples[0].timestamp * 1e9)
    assert stamps[-1] == int(samples[-1].timestamp * 1e9)
    cpu = events[0][1]
    assert set(cpu) >= {
        "aiorunner.cpu.percent",
        "aiorunner.cpu.user_seconds",
        "aiorunner.cpu.system_seconds",
        "aiorunner.process.count",
    }
    assert events[1][1]["aiorunner.memory.rss_bytes"] > 0
    assert len(run.monitor.events(10_000)) == len(samples) * kinds


async def test_memory_limit_stops_monitoring_with_a_clear_message(tmp_path: Path) -> None:
    """Crossing max_memory_bytes makes run() return with limit_exceeded saying what was
    crossed; the process is left for the caller to kill."""
    path = script(tmp_path, 'data = b"\\x01" * (100 * 1024 * 1024); wait_for("never")')
    proc = subprocess.Popen([sys.executable, str(path)], cwd=tmp_path, start_new_session=True)
    try:
        monitor = ProcessTreeMonitor(proc.pid, interval=0.02, max_memory_bytes=50_000_000)
        with anyio.fail_after(20):
            await monitor.run()
        assert proc.poll() is None  # still running: killing is the runner's job
        assert monitor.limit_exceeded is not None
        assert "exceeded max_memory_bytes=50000000 (50 MB)" in monitor.limit_exceeded
        assert monitor.limit_exceeded.startswith("memory ")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def test_cpu_limit_stops_monitoring_with_a_clear_message(tmp_path: Path) -> None:
    """Crossing max_cpu_seconds (the tree's user+system) makes run() return with
    limit_exceeded naming the limit."""
    path = script(tmp_path, "burn(60)")
    proc = subprocess.Popen([sys.executable, str(path)], cwd=tmp_path, start_new_session=True)
    try:
        monitor = ProcessTreeMonitor(proc.pid, interval=0.02, max_cpu_seconds=0.2)
        with anyio.fail_after(20):
            await monitor.run()
        assert monitor.limit_exceeded is not None
        assert "exceeded max_cpu_seconds=0.2" in monitor.limit_exceeded
        assert monitor.last_sample is not None and monitor.last_sample.cpu_seconds > 0.2
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


async def test_live_iterator_yields_samples_until_monitoring_ends(tmp_path: Path) -> None:
    """live() yields samples as they come and ends when the monitor's run ends."""
    got: list[Sample] = []

    async def consume(monitor: ProcessTreeMonitor) -> None:
        async for sample in monitor.live():
            got.append(sample)
            if len(got) == 3:
                await touch(tmp_path / "release")

    run = await run_monitored(
        tmp_path,
        'wait_for("release")',
        interval=0.02,
        during=consume,
        stop_before_reap=True,
    )
    assert len(got) >= 3
    assert [s.elapsed for s in got] == sorted(s.elapsed for s in got)
    assert run.monitor.live_dropped == 0


async def test_a_failing_on_sample_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An on_sample callback that raises is logged once; monitoring continues."""
    calls: list[Sample] = []

    def broken(sample: Sample) -> None:
        calls.append(sample)
        raise RuntimeError("progress bar broke")

    async def release(monitor: ProcessTreeMonitor) -> None:
        await until(monitor, lambda s: len(calls) >= 3)
        await touch(tmp_path / "release")

    run = await run_monitored(
        tmp_path, 'wait_for("release")', interval=0.02, on_sample=broken, during=release
    )
    assert len(calls) >= 3
    assert run.monitor.error is None
    failures = [r for r in caplog.records if "on_sample callback" in r.getMessage()]
    assert len(failures) == 1


# -- the shared sampler ----------------------------------------------------------------------


async def test_many_monitors_share_one_sampler_and_survive_the_leader_leaving(
    tmp_path: Path,
) -> None:
    """Ten scripts monitored at the same interval share one tick loop; when the script of
    the monitor leading it ends first, the others keep being sampled."""
    path = script(tmp_path, "import sys\nwait_for(sys.argv[1])")
    procs = [
        subprocess.Popen(
            [sys.executable, str(path), f"release{i}"], cwd=tmp_path, start_new_session=True
        )
        for i in range(10)
    ]
    monitors = [ProcessTreeMonitor(p.pid, interval=0.02) for p in procs]
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                scopes = []
                for monitor in monitors:
                    scope = anyio.CancelScope()
                    scopes.append(scope)

                    async def watch(m: ProcessTreeMonitor = monitor, s: Any = scope) -> None:
                        with s:
                            await m.run()

                    tg.start_soon(watch)
                for m in monitors:
                    await until_samples(m, 3)
                (sampler,) = _samplers.get().values()
                assert set(sampler.members) == set(monitors)
                first = monitors.index(sampler.leader)  # type: ignore[arg-type]
                # End the leader's script; cancel its monitor as the runner would.
                await touch(tmp_path / f"release{first}")
                await anyio.to_thread.run_sync(
                    os.wait4, procs[first].pid, 0, abandon_on_cancel=True
                )
                procs[first].returncode = 0
                scopes[first].cancel()
                others = [m for i, m in enumerate(monitors) if i != first]
                counts = [len(m.samples) for m in others]
                for m, count in zip(others, counts, strict=True):
                    await until_samples(m, count + 3)
                assert sampler.leader in others
                for i in range(10):
                    await touch(tmp_path / f"release{i}")
                for p in procs:
                    if p.returncode is None:
                        await anyio.to_thread.run_sync(os.wait4, p.pid, 0, abandon_on_cancel=True)
                        p.returncode = 0
                tg.cancel_scope.cancel()
    finally:
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert all(m.error is None for m in monitors)


async def test_run_twice_is_a_usage_error_and_stop_is_idempotent(tmp_path: Path) -> None:
    """A second concurrent run() is refused with UsageError; stop() ends run() with one
    last sample, and calling it again (or after run ended) does nothing."""
    path = script(tmp_path, 'wait_for("release")')
    proc = subprocess.Popen([sys.executable, str(path)], cwd=tmp_path, start_new_session=True)
    try:
        monitor = ProcessTreeMonitor(proc.pid, interval=SLOW)
        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(monitor.run)
                await until(monitor, lambda s: True)
                with pytest.raises(UsageError, match="already running"):
                    await monitor.run()
                await monitor.stop()  # run() returns: the group can end on its own
            taken = monitor.samples_taken
            assert taken == 2  # the immediate one and stop()'s
            await monitor.stop()
            assert monitor.samples_taken == taken
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
