"""
The session's run-level instruments and the temporality rules shared by every metric.

A run's own process metrics (``process.*``) are one series per run and need no state
beyond the run (see ``aiorunner._run.metricfeed``). The run-level instruments are
aggregated across the session's runs: ``aiorunner.run.duration`` and
``aiorunner.run.memory.peak`` (histograms), ``aiorunner.runs`` (a counter by outcome) and
the export health counters; with cumulative temporality each export carries the running
total since the session started, so the totals live here, under a lock (runs end on any
thread's event loop).

Temporality follows ``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`` as the OTLP
exporter specification defines it (``temporality_for``): ``cumulative`` everywhere;
``delta`` for counters and histograms (UpDownCounters stay cumulative); ``lowmemory``
delta for the synchronous counter and histograms only (the run-level ones), cumulative
for observed counters (``process.cpu.time`` and the other counters read from samples,
and the export health counters).

Why not the SDK's ``MeterProvider``: the values already exist, aggregated, in the
monitor's samples and the pipeline's statistics; a provider would add a reader thread,
views and a callback pass over every live run per collection for nothing the points
below do not already say, and the one thing it adds for free (exemplars) is a trace id
and a span id we have at hand. Its cost is measured in ``benchmarks/bench_metrics.py``.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..backend import CUMULATIVE, DELTA, HISTOGRAM, SUM, ExemplarData, MetricPointData

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "DURATION_BOUNDS",
    "MEMORY_BOUNDS",
    "SessionMeter",
    "temporality_for",
]

#: Instrument kinds, for :func:`temporality_for`.
COUNTER = "counter"  # synchronous counter (aiorunner.runs)
HISTOGRAM_KIND = "histogram"
OBSERVED_COUNTER = "observed_counter"  # read from samples / statistics
UPDOWN = "updowncounter"

#: Seconds: scripts run from a fraction of a second to hours.
DURATION_BOUNDS = (
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)
#: Bytes: 1 MiB to 64 GiB, each bucket 4 times the last.
MEMORY_BOUNDS = tuple(float(1 << (20 + 2 * i)) for i in range(9))

#: The outcomes of ``aiorunner.runs`` and ``aiorunner.run.duration``.
OUTCOMES = ("success", "failed", "timeout", "cancelled", "skipped")

JOB_NAME = "aiorunner.job.name"
OUTCOME = "aiorunner.run.outcome"
BACKEND_NAME = "aiorunner.backend.name"
EXPORT_RESULT = "aiorunner.export.result"


def temporality_for(kind: str, preference: str) -> int:
    """DELTA or CUMULATIVE for an instrument ``kind`` under a temporality preference."""
    if preference == "delta":
        return CUMULATIVE if kind == UPDOWN else DELTA
    if preference == "lowmemory":
        return DELTA if kind in (COUNTER, HISTOGRAM_KIND) else CUMULATIVE
    return CUMULATIVE


@dataclass
class _Histogram:
    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    count: int = 0
    total: float = 0.0
    minimum: float | None = None
    maximum: float | None = None

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def record(self, value: float) -> None:
        # OTLP explicit buckets: (bounds[i-1], bounds[i]], upper bound inclusive.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value
        self.minimum = value if self.minimum is None else min(self.minimum, value)
        self.maximum = value if self.maximum is None else max(self.maximum, value)


class SessionMeter:
    """Run-level instruments of one session (thread safe)."""

    def __init__(self, session: Any) -> None:
        self._session = session
        config = session.config
        self.preference: str = str(config.metrics_temporality or "cumulative")
        self.start_ns = time.time_ns()
        self._lock = threading.Lock()
        self._durations: dict[tuple[str, str], _Histogram] = {}
        self._peaks: dict[str, _Histogram] = {}
        self._runs: dict[tuple[str, str], int] = {}
        # Delta temporality: each series' start is its previous export.
        self._last_export: dict[tuple[Any, ...], int] = {}
        self._last_health: dict[tuple[str, str, str], int] = {}
        self._interval_ns = int(float(config.metrics_interval or 10.0) * 1e9)
        self._health_ns = 0

    def _start(self, key: tuple[Any, ...], temporality: int, now: int) -> int:
        if temporality == CUMULATIVE:
            return self.start_ns
        start = self._last_export.get(key, self.start_ns)
        self._last_export[key] = now
        return start

    def record_run(
        self,
        *,
        job: str,
        outcome: str,
        duration: float,
        peak_bytes: int | None,
        trace_id: int,
        span_id: int,
        resource: Any,
        now: int | None = None,
    ) -> list[MetricPointData]:
        """Record one run's end and return the points to export now: its duration (with
        an exemplar naming the run's trace and span), the runs counter of its outcome,
        its peak memory, and the export health counters."""
        now = now or time.time_ns()
        hist_t = temporality_for(HISTOGRAM_KIND, self.preference)
        exemplar = (ExemplarData(duration, now, trace_id, span_id),) if trace_id else ()
        attributes = {JOB_NAME: job, OUTCOME: outcome}
        points: list[MetricPointData] = []
        with self._lock:
            key = (job, outcome)
            histogram = self._durations.get(key)
            if histogram is None or hist_t == DELTA:
                histogram = self._durations[key] = _Histogram(DURATION_BOUNDS)
            histogram.record(duration)
            points.append(
                self._histogram_point(
                    "aiorunner.run.duration",
                    "s",
                    "Duration of aiorunner runs, from the start of the run to its end.",
                    histogram,
                    attributes,
                    hist_t,
                    self._start(("duration", *key), hist_t, now),
                    now,
                    exemplar,
                    trace_id,
                    resource,
                )
            )
            points.append(self._count_run(key, now, trace_id, resource))
            if peak_bytes:
                peak = self._peaks.get(job)
                if peak is None or hist_t == DELTA:
                    peak = self._peaks[job] = _Histogram(MEMORY_BOUNDS)
                peak.record(float(peak_bytes))
                points.append(
                    self._histogram_point(
                        "aiorunner.run.memory.peak",
                        "By",
                        "Peak resident memory of a run's whole process tree.",
                        peak,
                        {JOB_NAME: job},
                        hist_t,
                        self._start(("peak", job), hist_t, now),
                        now,
                        (ExemplarData(float(peak_bytes), now, trace_id, span_id),)
                        if trace_id
                        else (),
                        trace_id,
                        resource,
                    )
                )
            # The export health counters ride along with a run's end, at most once per
            # interval: a dozen points per run would double what a short run sends.
            if now - self._health_ns >= self._interval_ns:
                self._health_ns = now
                points.extend(self._health(now, trace_id, resource))
        return points

    def record_skipped(self, *, job: str, trace_id: int, resource: Any) -> list[MetricPointData]:
        """A job run_many skipped (a prerequisite failed): ``aiorunner.runs`` with
        outcome ``skipped`` (it has no duration, no memory)."""
        now = time.time_ns()
        with self._lock:
            return [self._count_run((job, "skipped"), now, trace_id, resource)]

    def _count_run(
        self, key: tuple[str, str], now: int, trace_id: int, resource: Any
    ) -> MetricPointData:
        count_t = temporality_for(COUNTER, self.preference)
        runs = self._runs[key] = (self._runs.get(key, 0) if count_t == CUMULATIVE else 0) + 1
        return MetricPointData(
            name="aiorunner.runs",
            unit="{run}",
            kind=SUM,
            description="Runs that ended, by outcome.",
            monotonic=True,
            temporality=count_t,
            start_time_unix_nano=self._start(("runs", *key), count_t, now),
            time_unix_nano=now,
            value=runs,
            attributes={JOB_NAME: key[0], OUTCOME: key[1]},
            trace_id=trace_id,
            resource=resource,
        )

    @staticmethod
    def _histogram_point(
        name: str,
        unit: str,
        description: str,
        histogram: _Histogram,
        attributes: dict[str, Any],
        temporality: int,
        start: int,
        now: int,
        exemplars: tuple[ExemplarData, ...],
        trace_id: int,
        resource: Any,
    ) -> MetricPointData:
        return MetricPointData(
            name=name,
            unit=unit,
            kind=HISTOGRAM,
            description=description,
            temporality=temporality,
            start_time_unix_nano=start,
            time_unix_nano=now,
            attributes=dict(attributes),
            count=histogram.count,
            total=histogram.total,
            bucket_counts=tuple(histogram.counts),
            explicit_bounds=histogram.bounds,
            minimum=histogram.minimum,
            maximum=histogram.maximum,
            exemplars=exemplars,
            trace_id=trace_id,
            resource=resource,
        )

    def _health(self, now: int, trace_id: int, resource: Any) -> list[MetricPointData]:
        """``aiorunner.export.spans`` / ``.log_records`` / ``.metric_points``: what each
        backend exported, spooled, dropped and failed so far (observed counters)."""
        session = self._session
        temporality = temporality_for(OBSERVED_COUNTER, self.preference)
        points = []
        signals: Sequence[tuple[str, str, Any]] = (
            ("aiorunner.export.spans", "{span}", session.statistics()),
            ("aiorunner.export.log_records", "{log_record}", session.log_statistics()),
            ("aiorunner.export.metric_points", "{data_point}", session.metric_statistics()),
        )
        for name, unit, statistics in signals:
            for backend in statistics.backends:
                for result in ("exported", "spooled", "dropped", "failed"):
                    value = int(getattr(backend, result))
                    key = (name, backend.name, result)
                    if temporality == DELTA:
                        previous = self._last_health.get(key, 0)
                        self._last_health[key] = value
                        value -= previous
                    points.append(
                        MetricPointData(
                            name=name,
                            unit=unit,
                            kind=SUM,
                            description="Telemetry items handed to each backend, by result.",
                            monotonic=True,
                            temporality=temporality,
                            start_time_unix_nano=self._start(key, temporality, now),
                            time_unix_nano=now,
                            value=value,
                            attributes={BACKEND_NAME: backend.name, EXPORT_RESULT: result},
                            trace_id=trace_id,
                            resource=resource,
                        )
                    )
        return points
