"""
The parts of monitoring that are plain computation over samples (thinning, decimation,
percentages, the summary's keys) and the monitor's argument checks. The samples here are
real ``Sample`` values built directly: there is nothing to spawn for arithmetic.
"""

from __future__ import annotations

import itertools
import os
import resource
from typing import Any

import pytest

from aiorunner import ConfigError
from aiorunner._monitor.monitor import ProcessTreeMonitor, Sample
from aiorunner._monitor.samples import EVENT_NAMES, SampleLog, build_summary


def sample(i: int, *, io: bool = True, rss: int = 1000, cpu: float = 0.0) -> Sample:
    return Sample(
        timestamp=1_700_000_000.0 + i,
        elapsed=float(i),
        cpu_user=cpu,
        cpu_system=0.0,
        cpu_percent=0.0,
        rss_bytes=rss,
        threads=1,
        processes=1,
        open_fds=3 if io else None,
        io_read_bytes=i if io else None,
        io_write_bytes=i if io else None,
    )


def log_of(n: int, *, keep: int = 1024, io: bool = True) -> SampleLog:
    log = SampleLog(1.0, keep=keep)
    for i in range(n):
        log.add(sample(i, io=io), window_ok=True)
    return log


def stamps(events: list[Any]) -> list[int]:
    return sorted({ts for _, _, ts in events})


def test_events_thin_evenly_and_keep_first_and_last() -> None:
    """100 samples, room for 30 events: 10 samples of 3 events, evenly spaced, the first
    and the last sample included."""
    events = log_of(100).events(30)
    assert len(events) == 30
    assert [name for name, _, _ in events[:3]] == list(EVENT_NAMES)
    ts = stamps(events)
    assert len(ts) == 10
    assert ts[0] == int(sample(0).timestamp * 1e9)
    assert ts[-1] == int(sample(99).timestamp * 1e9)
    gaps = {b - a for a, b in itertools.pairwise(ts)}
    assert max(gaps) - min(gaps) <= 1e9  # evenly spaced, to one sample


def test_events_never_exceed_max_events() -> None:
    """Whatever the budget, the total never exceeds it; a budget too small for one whole
    sample gives the first kinds of the last sample; 0 gives none."""
    log = log_of(50)
    for budget in range(40):
        assert len(log.events(budget)) <= budget
    assert log.events(0) == []
    assert [n for n, _, _ in log.events(2)] == ["cpu_monitoring", "memory_monitoring"]
    assert stamps(log.events(2)) == [int(sample(49).timestamp * 1e9)]
    assert stamps(log.events(3)) == [int(sample(49).timestamp * 1e9)]  # one sample: the last


def test_io_events_absent_without_io_figures() -> None:
    """Where the platform has no I/O figures, there is no io_monitoring event and the
    budget goes to more samples."""
    events = log_of(10, io=False).events(8)
    assert {name for name, _, _ in events} == {"cpu_monitoring", "memory_monitoring"}
    assert len(events) == 8


def test_event_attributes_are_named_and_typed() -> None:
    """Attribute names are the documented ones, values are numbers."""
    cpu, memory, io = log_of(1).events(3)
    assert cpu[0] == "cpu_monitoring"
    assert set(cpu[1]) == {
        "aiorunner.cpu.percent",
        "aiorunner.cpu.user_seconds",
        "aiorunner.cpu.system_seconds",
        "aiorunner.process.count",
        "aiorunner.thread.count",
    }
    assert memory[1] == {"aiorunner.memory.rss_bytes": 1000}
    assert io[1] == {
        "aiorunner.io.read_bytes": 0,
        "aiorunner.io.write_bytes": 0,
        "aiorunner.fd.count": 3,
    }
    for _, attrs, _ in (cpu, memory, io):
        assert all(isinstance(v, (int, float)) for v in attrs.values())


def test_kept_samples_stay_bounded_and_even_on_long_runs() -> None:
    """10 000 samples with room for 64: at most 64 kept (+ the latest), evenly spaced,
    first and latest included; the aggregates still cover every sample."""
    log = log_of(10_000, keep=64)
    kept = log.samples()
    assert len(kept) <= 65
    assert kept[0].elapsed == 0.0
    assert kept[-1].elapsed == 9999.0
    steps = {b.elapsed - a.elapsed for a, b in itertools.pairwise(kept[:-1])}
    assert len(steps) == 1
    assert log.count == 10_000


def test_percent_uses_windows_of_at_least_half_an_interval() -> None:
    """CPU percent is measured over a window at least half an interval long, so a sample
    taken right after another does not turn one 10 ms clock tick into 1000 %."""
    log = SampleLog(1.0)
    log.add(sample(0), window_ok=False)
    value, ok = log.percent(0.01, 0.01)  # 10 ms after the first sample
    assert not ok
    value, ok = log.percent(1.0, 0.5)
    assert ok
    assert value == pytest.approx(50.0)


def test_summary_keys_absent_when_unknown() -> None:
    """With no sample and no rusage only the wall time and the sample count are known."""
    assert build_summary(
        SampleLog(0.5), cpu_user=0.0, cpu_system=0.0, io={}, rusage=None, wall_seconds=2.0
    ) == {"execution_time_seconds": 2.0, "samples": 0}


def test_summary_takes_ru_maxrss_when_it_is_higher() -> None:
    """The peak is the larger of the sampled tree peak and ru_maxrss (KiB on Linux)."""
    log = log_of(3)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    metrics = build_summary(
        log, cpu_user=1.0, cpu_system=0.5, io={}, rusage=usage, wall_seconds=3.0
    )
    scale = 1 if os.uname().sysname == "Darwin" else 1024
    assert metrics["memory_rss_peak_bytes"] == max(1000, usage.ru_maxrss * scale)
    assert metrics["cpu_percent_avg"] == 50.0
    assert metrics["cpu_percent_max"] >= metrics["cpu_percent_avg"]
    assert metrics["samples"] == 3
    assert {"ctx_switches_voluntary", "page_faults_minor", "threads_max"} <= set(metrics)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval": 0}, "interval=0 must be a finite number > 0"),
        ({"interval": -1.0}, "interval=-1.0 must be a finite number > 0"),
        ({"interval": "fast"}, "interval='fast' must be a number"),
        ({"interval": float("inf")}, "interval=inf must be a finite number > 0"),
        ({"max_memory_bytes": 0}, "max_memory_bytes=0 must be"),
        ({"max_memory_bytes": 1.5e9}, "max_memory_bytes=1500000000.0 must be an int"),
        ({"max_cpu_seconds": -2}, "max_cpu_seconds=-2 must be"),
        ({"on_sample": 42}, "on_sample=42 must be a function"),
        ({"keep_samples": 1}, "keep_samples=1 must be an int >= 2"),
    ],
)
def test_bad_arguments_are_named_with_the_fix(kwargs: dict[str, Any], message: str) -> None:
    """Each bad argument raises ConfigError naming it, its value and what is expected."""
    with pytest.raises(ConfigError) as info:
        ProcessTreeMonitor(os.getpid(), **kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize("pid", [0, -5, True, "123", 1.5])
def test_bad_pid_is_rejected(pid: Any) -> None:
    """A pid that is not a positive int is a ConfigError naming it."""
    with pytest.raises(ConfigError, match="must be the positive int pid"):
        ProcessTreeMonitor(pid)


def test_coroutine_on_sample_is_rejected_with_the_alternative() -> None:
    """An async on_sample would never be awaited: refused, pointing at live()."""

    async def on_sample(sample: Sample) -> None:
        pass

    with pytest.raises(ConfigError, match=r"monitor.live\(\)"):
        ProcessTreeMonitor(os.getpid(), on_sample=on_sample)


def test_negative_max_events_is_rejected() -> None:
    """events(-1) is a ConfigError naming max_events."""
    with pytest.raises(ConfigError, match="max_events=-1 must be an int >= 0"):
        ProcessTreeMonitor(os.getpid()).events(-1)
