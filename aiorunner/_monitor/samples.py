"""
From readings to what a run reports: the :class:`Sample` stream, its running aggregates,
the final ``RunResult.metrics`` and the thinned span events.

Memory stays bounded on long runs: aggregates are running sums, and the samples kept for
events are decimated (every other one dropped, keeping the first, when the buffer fills),
so they stay evenly spaced; the latest sample is always kept beside them.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import resource

__all__ = ["EVENT_NAMES", "IO_FIELDS", "Event", "Sample", "SampleLog", "build_summary"]

#: (name, attributes, timestamp in ns since the epoch), ready for ``span.add_event``.
Event = tuple[str, dict[str, float | int], int]

EVENT_NAMES = ("cpu_monitoring", "memory_monitoring", "io_monitoring")


_MAX_PERCENT = 100.0 * (os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class Sample:
    """
    One reading of the whole process tree (the script and every descendant alive at that
    moment). CPU and I/O figures are cumulative since the script started and include
    descendants that already exited; ``rss_bytes``, ``threads``, ``processes`` and
    ``open_fds`` are sums over the processes alive at ``timestamp``. A figure the platform
    does not give is ``None``, never 0.
    """

    timestamp: float  # time.time() of the reading
    elapsed: float  # seconds since the monitor was created (about when the script started)
    cpu_user: float  # seconds, cumulative, whole tree
    cpu_system: float
    cpu_percent: float  # of one core over the last interval (can exceed 100)
    rss_bytes: int
    threads: int
    processes: int
    open_fds: int | None = None
    io_read_bytes: int | None = None  # bytes passed to read()-like syscalls (Linux rchar)
    io_write_bytes: int | None = None  # bytes passed to write()-like syscalls (Linux wchar)
    io_read_count: int | None = None
    io_write_count: int | None = None
    io_read_disk_bytes: int | None = None  # storage layer (Linux read_bytes)
    io_write_disk_bytes: int | None = None
    ctx_switches_voluntary: int | None = None  # only where psutil samples them
    ctx_switches_involuntary: int | None = None
    vms_bytes: int | None = None  # virtual memory, summed over the processes alive
    page_faults_minor: int | None = None  # cumulative, whole tree, like the CPU seconds
    page_faults_major: int | None = None

    @property
    def cpu_seconds(self) -> float:
        """User plus system seconds."""
        return self.cpu_user + self.cpu_system

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


IO_FIELDS = (
    "io_read_bytes",
    "io_write_bytes",
    "io_read_count",
    "io_write_count",
    "io_read_disk_bytes",
    "io_write_disk_bytes",
)


class SampleLog:
    """Running aggregates of a monitor's samples, and the evenly thinned ones kept."""

    def __init__(self, interval: float, *, keep: int = 1024) -> None:
        self.interval = interval
        self.count = 0
        self.first: Sample | None = None
        self.last: Sample | None = None
        self.rss_peak = 0
        self.threads_max = 0
        self.processes_max = 0
        self.fds_max: int | None = None
        self.percent_max: float | None = None
        self.ctx_max: tuple[int, int] | None = None
        self._rss_area = 0.0  # byte-seconds, trapezoids between samples
        self._keep = max(2, keep)
        self._kept: list[Sample] = []
        self._stride = 1
        self._history: deque[tuple[float, float]] = deque(maxlen=64)  # (elapsed, cpu)

    def percent(self, elapsed: float, cpu: float, *, threads: int = 0) -> tuple[float, bool]:
        """
        CPU percent of one core over the latest window at least half an interval long
        (``/proc`` counts CPU in 10 ms clock ticks, so shorter windows are mostly noise).
        Returns the value and whether the window was long enough to count for the max.
        The value is also bounded by the tree's threads (``threads``, when known): with
        10 ms ticks a one-thread script read 200 % over a 5 ms window, 120 % over 25 ms.
        """
        start_elapsed, start_cpu = 0.0, 0.0
        for past_elapsed, past_cpu in reversed(self._history):
            if elapsed - past_elapsed >= self.interval / 2:
                start_elapsed, start_cpu = past_elapsed, past_cpu
                break
        window = elapsed - start_elapsed
        if window <= 0:
            return 0.0, False
        # The first window starts at the monitor's start, but the tree's CPU counters
        # started at fork: a short first window can read as thousands of percent. No
        # tree can use more than every core, so that is the bound.
        value = min(max(0.0, (cpu - start_cpu) / window * 100.0), _MAX_PERCENT)
        if threads > 0:
            value = min(value, threads * 100.0)
        return value, window >= self.interval / 2

    def add(self, sample: Sample, *, window_ok: bool) -> None:
        self._history.append((sample.elapsed, sample.cpu_seconds))
        if self.last is not None:
            span = sample.elapsed - self.last.elapsed
            if span > 0:
                self._rss_area += (sample.rss_bytes + self.last.rss_bytes) / 2 * span
        if self.first is None:
            self.first = sample
        self.last = sample
        self.count += 1
        self.rss_peak = max(self.rss_peak, sample.rss_bytes)
        self.threads_max = max(self.threads_max, sample.threads)
        self.processes_max = max(self.processes_max, sample.processes)
        if sample.open_fds is not None:
            self.fds_max = max(self.fds_max or 0, sample.open_fds)
        if window_ok:
            self.percent_max = max(self.percent_max or 0.0, sample.cpu_percent)
        if sample.ctx_switches_voluntary is not None:
            v, i = self.ctx_max or (0, 0)
            self.ctx_max = (
                max(v, sample.ctx_switches_voluntary),
                max(i, sample.ctx_switches_involuntary or 0),
            )
        if (self.count - 1) % self._stride == 0:
            self._kept.append(sample)
            if len(self._kept) >= self._keep:
                self._kept = self._kept[::2]
                self._stride *= 2

    @property
    def rss_avg(self) -> float | None:
        """Time-weighted mean RSS over the sampled span (the one value if one sample)."""
        if self.first is None or self.last is None:
            return None
        span = self.last.elapsed - self.first.elapsed
        if span <= 0:
            return float(self.last.rss_bytes)
        return self._rss_area / span

    def samples(self) -> list[Sample]:
        """The kept samples, evenly spaced, first and latest included."""
        kept = list(self._kept)
        if self.last is not None and (not kept or kept[-1] is not self.last):
            kept.append(self.last)
        return kept

    def events(self, max_events: int) -> list[Event]:
        """
        Span events for the kept samples: per sample one ``cpu_monitoring``, one
        ``memory_monitoring`` and (where the platform has the figures) one
        ``io_monitoring``, at most ``max_events`` in total. Samples are thinned evenly
        keeping the first and the last; with room for one sample only, the last is kept
        (its cumulative figures say the most).
        """
        samples = self.samples()
        if max_events <= 0 or not samples:
            return []
        has_io = any(_has_io(s) for s in samples)
        kinds = 3 if has_io else 2
        per = max_events // kinds
        if per == 0:
            return _sample_events(samples[-1], has_io)[:max_events]
        if per == 1:
            chosen = [samples[-1]]
        elif len(samples) <= per:
            chosen = samples
        else:
            n = len(samples)
            chosen = [samples[round(i * (n - 1) / (per - 1))] for i in range(per)]
        events: list[Event] = []
        for sample in chosen:
            events.extend(_sample_events(sample, has_io))
        return events


def _has_io(sample: Sample) -> bool:
    return sample.open_fds is not None or any(getattr(sample, f) is not None for f in IO_FIELDS)


#: The keys of the monitoring events. Ours, under ``aiorunner.``: the semantic
#: conventions own ``cpu.*``, ``process.*``, ``thread.*`` (and have no key for these
#: figures; theirs, such as ``process.cpu.time``, are metric names), so a backend that
#: knows the registry must not read ours as its own.
CPU_PERCENT = "aiorunner.cpu.percent"
CPU_USER = "aiorunner.cpu.user_seconds"
CPU_SYSTEM = "aiorunner.cpu.system_seconds"
CTX_VOLUNTARY = "aiorunner.cpu.ctx_switches_voluntary"
CTX_INVOLUNTARY = "aiorunner.cpu.ctx_switches_involuntary"
PROCESS_COUNT = "aiorunner.process.count"
THREAD_COUNT = "aiorunner.thread.count"
MEMORY_RSS = "aiorunner.memory.rss_bytes"
FD_COUNT = "aiorunner.fd.count"
_IO_KEYS = {name: "aiorunner.io." + name[3:] for name in IO_FIELDS}  # aiorunner.io.read_bytes


def _sample_events(sample: Sample, has_io: bool) -> list[Event]:
    ts = int(sample.timestamp * 1e9)
    cpu: dict[str, float | int] = {
        CPU_PERCENT: round(sample.cpu_percent, 2),
        CPU_USER: round(sample.cpu_user, 6),
        CPU_SYSTEM: round(sample.cpu_system, 6),
        PROCESS_COUNT: sample.processes,
        THREAD_COUNT: sample.threads,
    }
    if sample.ctx_switches_voluntary is not None:
        cpu[CTX_VOLUNTARY] = sample.ctx_switches_voluntary
        cpu[CTX_INVOLUNTARY] = sample.ctx_switches_involuntary or 0
    events: list[Event] = [
        ("cpu_monitoring", cpu, ts),
        ("memory_monitoring", {MEMORY_RSS: sample.rss_bytes}, ts),
    ]
    if has_io:
        io: dict[str, float | int] = {}
        for name, key in _IO_KEYS.items():
            value = getattr(sample, name)
            if value is not None:
                io[key] = value
        if sample.open_fds is not None:
            io[FD_COUNT] = sample.open_fds
        events.append(("io_monitoring", io, ts))
    return events


def build_summary(
    log: SampleLog,
    *,
    cpu_user: float,
    cpu_system: float,
    io: dict[str, int],
    rusage: resource.struct_rusage | None,
    wall_seconds: float,
) -> dict[str, float | int]:
    """
    The stable metric keys of a run (documented in the README's Monitoring section).
    A key is absent when its figure is unknown on this platform or for this run.
    """
    out: dict[str, float | int] = {"execution_time_seconds": round(wall_seconds, 6)}
    known_cpu = log.count > 0 or rusage is not None
    if known_cpu:
        out["cpu_user_seconds"] = round(cpu_user, 6)
        out["cpu_system_seconds"] = round(cpu_system, 6)
        if wall_seconds > 0:
            avg = (cpu_user + cpu_system) / wall_seconds * 100.0
            out["cpu_percent_avg"] = round(avg, 2)
            out["cpu_percent_max"] = round(max(avg, log.percent_max or 0.0), 2)
    peak = log.rss_peak if log.count else None
    if rusage is not None and rusage.ru_maxrss > 0:
        # ru_maxrss: the largest single process of the waited set, so a spike between
        # two samples is not missed. KiB on Linux and the BSDs, bytes on macOS.
        scale = 1 if sys.platform == "darwin" else 1024
        peak = max(peak or 0, rusage.ru_maxrss * scale)
    # 0 means no reading caught the script resident (it ended before the first one
    # after its start, and ru_maxrss was set aside as possibly ours): unknown, so absent.
    if peak:
        out["memory_rss_peak_bytes"] = int(peak)
    rss_avg = log.rss_avg
    if rss_avg:
        out["memory_rss_avg_bytes"] = int(rss_avg)
    out.update(io)
    if log.count:
        out["threads_max"] = log.threads_max
        out["processes_max"] = log.processes_max
    if log.fds_max is not None:
        out["open_fds_max"] = log.fds_max
    if rusage is not None:
        out["ctx_switches_voluntary"] = max(rusage.ru_nvcsw, (log.ctx_max or (0, 0))[0])
        out["ctx_switches_involuntary"] = max(rusage.ru_nivcsw, (log.ctx_max or (0, 0))[1])
        out["page_faults_minor"] = rusage.ru_minflt
        out["page_faults_major"] = rusage.ru_majflt
    elif log.ctx_max is not None:
        out["ctx_switches_voluntary"], out["ctx_switches_involuntary"] = log.ctx_max
    out["samples"] = log.count
    return out
