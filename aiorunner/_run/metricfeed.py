"""
A run's resource use as OpenTelemetry metrics, from the monitor's samples (no second
sampler): the semantic conventions' process metrics (``docs/system/process-metrics.md``)
for the run's whole process tree, summed.

Each run is its own series: attributes ``aiorunner.job.name`` (the job, or the script's
file name), ``aiorunner.script.name`` (the script's file name) and ``aiorunner.run.id``
(its trace id, so a series leads to its trace); never ``process.pid``. While the script
runs, the latest sample's values are handed to the session's metrics pipeline every
``metrics_interval`` (``OTEL_METRIC_EXPORT_INTERVAL``, 10 s); when it ends,
:meth:`RunMetrics.finish` hands over the final values (exact CPU, I/O and fault totals
from the reaped rusage), so a run shorter than the interval is not lost. Nothing is sent
for the run after that: its series stop.

Counters read from samples are observed counters: cumulative since the run's start, or
(``delta`` preference) the difference since the run's previous export.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from .._export.meter import OBSERVED_COUNTER, UPDOWN, temporality_for
from ..backend import CUMULATIVE, GAUGE, SUM, MetricPointData

if TYPE_CHECKING:
    from .._export.pipeline import ExportPipeline
    from .._monitor.samples import Sample

__all__ = ["RunMetrics"]

JOB_NAME = "aiorunner.job.name"
SCRIPT_NAME = "aiorunner.script.name"
RUN_ID = "aiorunner.run.id"

_CPUS = os.cpu_count() or 1

# (name, unit, kind, description, attribute key or None)
_CPU_TIME = (
    "process.cpu.time",
    "s",
    OBSERVED_COUNTER,
    "Total CPU seconds broken down by CPU mode.",
)
_CPU_UTIL = ("process.cpu.utilization", "1", GAUGE, "CPU time over elapsed time and CPUs.")
_MEMORY = ("process.memory.usage", "By", UPDOWN, "Resident memory of the run's process tree.")
_VIRTUAL = ("process.memory.virtual", "By", UPDOWN, "Virtual memory of the run's process tree.")
_DISK = ("process.disk.io", "By", OBSERVED_COUNTER, "Disk bytes transferred.")
_THREADS = ("process.thread.count", "{thread}", UPDOWN, "Threads of the run's process tree.")
_FDS = (
    "process.unix.file_descriptor.count",
    "{file_descriptor}",
    UPDOWN,
    "File descriptors open in the run's process tree.",
)
_CTX = ("process.context_switches", "{context_switch}", OBSERVED_COUNTER, "Context switches.")
_FAULTS = ("process.paging.faults", "{fault}", OBSERVED_COUNTER, "Page faults.")
_UPTIME = ("process.uptime", "s", GAUGE, "The time the run's script has been running.")


class RunMetrics:
    """The metric points of one run; lives on the run's event loop."""

    def __init__(
        self,
        pipeline: ExportPipeline,
        resource: Any,
        *,
        trace_id: int,
        job: str,
        script: str,
        interval: float,
        preference: str,
        start_ns: int | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._resource = resource
        self.trace_id = trace_id
        self._interval = interval
        self._preference = preference
        self.start_ns = start_ns or time.time_ns()
        self._base = {JOB_NAME: job, SCRIPT_NAME: script, RUN_ID: f"{trace_id:032x}"}
        self._last_emit = time.monotonic()
        self._previous: Sample | None = None  # the sample before the latest
        self.last: Sample | None = None
        # delta: per series, the value and time of the previous export.
        self._sent: dict[tuple[str, str], tuple[float, int]] = {}
        #: Points handed to the pipeline (all exports of this run).
        self.points = 0
        self.finished = False

    # -- the monitor's callback ---------------------------------------------------------

    def on_sample(self, sample: Sample) -> None:
        """Each sample of the run (on the loop): every ``interval``, export the latest."""
        self._previous, self.last = self.last, sample
        now = time.monotonic()
        if now - self._last_emit >= self._interval and not self.finished:
            self._last_emit = now
            self._emit(self._points(sample, None, final=False))

    # -- the end ------------------------------------------------------------------------

    def finish(self, summary: dict[str, float | int], wall_seconds: float) -> None:
        """Export the run's final values (``RunResult.metrics`` figures: exact totals),
        then nothing more: its series stop."""
        if self.finished:
            return
        self.finished = True
        self._emit(self._points(self.last, summary, final=True, wall=wall_seconds))

    # -- building points ----------------------------------------------------------------

    def _emit(self, points: list[MetricPointData]) -> None:
        if points:
            self.points += len(points)
            emit = self._pipeline.emit
            for point in points:
                emit(point)

    def _point(
        self,
        spec: tuple[str, str, str, str],
        value: float,
        now: int,
        extra: tuple[str, str] | None = None,
    ) -> MetricPointData:
        name, unit, kind, description = spec
        attributes = dict(self._base)
        if extra is not None:
            attributes[extra[0]] = extra[1]
        if kind == GAUGE:
            return MetricPointData(
                name=name,
                unit=unit,
                kind=GAUGE,
                description=description,
                time_unix_nano=now,
                value=value,
                attributes=attributes,
                trace_id=self.trace_id,
                resource=self._resource,
            )
        temporality = temporality_for(kind, self._preference)
        start = self.start_ns
        if temporality != CUMULATIVE:
            key = (name, extra[1] if extra else "")
            previous, since = self._sent.get(key, (0, self.start_ns))
            self._sent[key] = (value, now)
            value, start = value - previous, since
        return MetricPointData(
            name=name,
            unit=unit,
            kind=SUM,
            description=description,
            monotonic=kind == OBSERVED_COUNTER,
            temporality=temporality,
            start_time_unix_nano=start,
            time_unix_nano=now,
            value=value,
            attributes=attributes,
            trace_id=self.trace_id,
            resource=self._resource,
        )

    def _points(
        self,
        sample: Sample | None,
        summary: dict[str, float | int] | None,
        *,
        final: bool,
        wall: float = 0.0,
    ) -> list[MetricPointData]:
        now = time.time_ns()
        figures = summary or {}
        out: list[MetricPointData] = []
        point = self._point

        def pick(key: str, attr: str) -> Any:
            value = figures.get(key)
            if value is None and sample is not None:
                value = getattr(sample, attr)
            return value

        user = pick("cpu_user_seconds", "cpu_user")
        system = pick("cpu_system_seconds", "cpu_system")
        if user is not None and system is not None:
            out.append(point(_CPU_TIME, float(user), now, ("cpu.mode", "user")))
            out.append(point(_CPU_TIME, float(system), now, ("cpu.mode", "system")))
            utilization = self._utilization(sample, float(user), float(system), final, wall)
            if utilization is not None:
                out.append(point(_CPU_UTIL, utilization[0], now, ("cpu.mode", "user")))
                out.append(point(_CPU_UTIL, utilization[1], now, ("cpu.mode", "system")))
        if sample is not None:
            out.append(point(_MEMORY, int(sample.rss_bytes), now))
            if sample.vms_bytes is not None:
                out.append(point(_VIRTUAL, int(sample.vms_bytes), now))
            out.append(point(_THREADS, int(sample.threads), now))
            if sample.open_fds is not None:
                out.append(point(_FDS, int(sample.open_fds), now))
        read = pick("io_read_disk_bytes", "io_read_disk_bytes")
        write = pick("io_write_disk_bytes", "io_write_disk_bytes")
        if read is not None and write is not None:
            out.append(point(_DISK, int(read), now, ("disk.io.direction", "read")))
            out.append(point(_DISK, int(write), now, ("disk.io.direction", "write")))
        voluntary = pick("ctx_switches_voluntary", "ctx_switches_voluntary")
        involuntary = pick("ctx_switches_involuntary", "ctx_switches_involuntary")
        if voluntary is not None and involuntary is not None:
            kind = "process.context_switch.type"
            out.append(point(_CTX, int(voluntary), now, (kind, "voluntary")))
            out.append(point(_CTX, int(involuntary), now, (kind, "involuntary")))
        minor = pick("page_faults_minor", "page_faults_minor")
        major = pick("page_faults_major", "page_faults_major")
        if minor is not None and major is not None:
            kind = "system.paging.fault.type"
            out.append(point(_FAULTS, int(minor), now, (kind, "minor")))
            out.append(point(_FAULTS, int(major), now, (kind, "major")))
        uptime = wall if final else (sample.elapsed if sample is not None else None)
        if uptime is not None:
            out.append(point(_UPTIME, float(uptime), now))
        return out

    def _utilization(
        self, sample: Sample | None, user: float, system: float, final: bool, wall: float
    ) -> tuple[float, float] | None:
        """Per mode: the CPU seconds since the previous sample over the time between
        them and the CPUs (the whole run's average at the end)."""
        if final:
            if wall <= 0:
                return None
            return user / (wall * _CPUS), system / (wall * _CPUS)
        previous = self._previous
        if sample is None or previous is None:
            return None
        window = sample.elapsed - previous.elapsed
        if window <= 0:
            return None
        return (
            max(0.0, sample.cpu_user - previous.cpu_user) / (window * _CPUS),
            max(0.0, sample.cpu_system - previous.cpu_system) / (window * _CPUS),
        )
