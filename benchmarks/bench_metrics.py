"""
What the runs' metrics (issue 19) cost the runner: CPU time of this process (every thread,
children excluded) per run of a trivial script with metrics on (the default: process
metrics, run-level instruments and export health to ``metrics.jsonl``) and off
(``TracingConfig(metrics=False)``), the same runs otherwise (tracing to jsonl, monitoring
on). The two configurations take turns in rounds, so a burst of other load falls on both;
the table shows the median of the rounds' means and the lowest round.

A second table sets the way aiorunner makes the points (plain ``MetricPointData`` from the
samples, ``SessionMeter`` for the run-level instruments) beside the OpenTelemetry SDK's
``MeterProvider`` doing the same work per run (the same 15 process series recorded, the
duration histogram with an exemplar under the run's span, the runs counter, a reader's
collect): microseconds of CPU per run, in the same process, taking turns.

Run alone with ``python benchmarks/bench_metrics.py`` (``BENCH_QUICK=1`` for a smoke
run), or through ``python -m benchmarks``, which calls :func:`main`.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TRIVIAL = "pass\n"


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _batches(workdir: Path) -> dict[str, Any]:
    from aiorunner import LocalExecutor, TracingConfig, run_many

    script = workdir / "trivial.py"
    script.write_text(TRIVIAL)
    made = {}
    for name, metrics in (("metrics on (default)", True), ("metrics off", False)):
        config = TracingConfig(
            exporter_type="jsonl",
            traces_file=str(workdir / name.split()[1] / "traces.jsonl"),
            metrics=metrics,
        )
        executor = LocalExecutor()

        async def batch(n: int, config: Any = config, executor: Any = executor) -> None:
            results = await run_many(
                [script] * n, max_concurrency=1, config=config, executor=executor
            )
            failed = [r.error for r in results if not r.success]
            assert not failed, failed[:3]

        made[name] = batch
    return made


def measure(workdir: Path, rounds: int, runs: int) -> dict[str, list[float]]:
    """CPU seconds per run, one figure per round, per configuration."""
    batches = _batches(workdir)
    per_round: dict[str, list[float]] = {name: [] for name in batches}

    async def go() -> None:
        for batch in batches.values():  # warm-up: sessions, imports, caches
            await batch(3)
        for index in range(rounds):
            order = list(batches.items())
            if index % 2:
                order.reverse()
            for name, batch in order:
                c0 = _cpu()
                await batch(runs)
                per_round[name].append((_cpu() - c0) / runs)

    asyncio.run(go())
    return per_round


# ----------------------------------------------------------------- making the points


class _Discard:
    """A metrics pipeline that keeps nothing (what is measured is making the points)."""

    def __init__(self) -> None:
        self.count = 0

    def emit(self, point: Any) -> None:
        self.count += 1


def _ours() -> Any:
    from aiorunner._export.meter import SessionMeter
    from aiorunner._export.statistics import PipelineStatistics
    from aiorunner._monitor.samples import Sample
    from aiorunner._run.metricfeed import RunMetrics

    class _Session:
        config = type("C", (), {"metrics_temporality": "cumulative", "metrics_interval": 10.0})()

        def statistics(self) -> PipelineStatistics:
            return PipelineStatistics()

        log_statistics = metric_statistics = statistics

    meter = SessionMeter(_Session())
    pipeline = _Discard()
    sample = Sample(time.time(), 0.5, 0.01, 0.002, 2.0, 10_000_000, 1, 1, 4, *(0,) * 6)
    summary = {
        "cpu_user_seconds": 0.01,
        "cpu_system_seconds": 0.002,
        "io_read_disk_bytes": 0,
        "io_write_disk_bytes": 0,
        "ctx_switches_voluntary": 3,
        "ctx_switches_involuntary": 1,
        "page_faults_minor": 900,
        "page_faults_major": 0,
    }

    def one(i: int) -> None:
        feed = RunMetrics(
            pipeline,  # type: ignore[arg-type]
            None,
            trace_id=i + 1,
            job="trivial.py",
            script="trivial.py",
            interval=10.0,
            preference="cumulative",
        )
        feed.on_sample(sample)
        feed.finish(summary, 0.02)
        for point in meter.record_run(
            job="trivial.py",
            outcome="success",
            duration=0.02,
            peak_bytes=10_000_000,
            trace_id=i + 1,
            span_id=1,
            resource=None,
        ):
            pipeline.emit(point)

    return one


def _sdk() -> Any:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    meter = provider.get_meter("aiorunner")
    tracer = TracerProvider().get_tracer("bench")
    counters = [meter.create_counter(f"process.c{i}") for i in range(8)]
    updowns = [meter.create_up_down_counter(f"process.u{i}") for i in range(4)]
    gauges = [meter.create_gauge(f"process.g{i}") for i in range(3)]
    duration = meter.create_histogram("aiorunner.run.duration", unit="s")
    peak = meter.create_histogram("aiorunner.run.memory.peak", unit="By")
    runs = meter.create_counter("aiorunner.runs")

    def one(i: int) -> None:
        attributes = {
            "aiorunner.job.name": "trivial.py",
            "aiorunner.script.name": "trivial.py",
            "aiorunner.run.id": f"{i:032x}",
        }
        for instrument in counters:
            instrument.add(1, attributes)
        for instrument in updowns:
            instrument.add(1, attributes)
        for instrument in gauges:
            instrument.set(1.0, attributes)
        with tracer.start_as_current_span("ScriptRunner"):
            outcome = {"aiorunner.job.name": "trivial.py", "aiorunner.run.outcome": "success"}
            duration.record(0.02, outcome)
            peak.record(10_000_000, {"aiorunner.job.name": "trivial.py"})
            runs.add(1, outcome)
        reader.get_metrics_data()  # the run's flush: a collection

    # The SDK keeps every attribute set it saw (each run's series) and reports them
    # again at each collection: the cost grows with the runs; measured on a fresh
    # provider per round, the first ``runs`` runs.
    return one, provider


def measure_making(rounds: int, runs: int) -> dict[str, list[float]]:
    """CPU seconds per run of making one run's points, ours vs the SDK's."""
    per_round: dict[str, list[float]] = {"aiorunner (plain points)": [], "SDK MeterProvider": []}
    for index in range(rounds):
        order = list(per_round)
        if index % 2:
            order.reverse()
        for name in order:
            if name.startswith("SDK"):
                one, provider = _sdk()
            else:
                one, provider = _ours(), None
            one(0)  # warm-up
            c0 = _cpu()
            for i in range(runs):
                one(i + 1)
            per_round[name].append((_cpu() - c0) / runs)
            if provider is not None:
                provider.shutdown()
    return per_round


def table(
    per_round: dict[str, list[float]], making: dict[str, list[float]], rounds: int, runs: int
) -> str:
    lines = [
        (
            f"### Runner CPU per trivial run, metrics on vs off ({rounds} rounds of {runs} "
            "sequential runs, taking turns)"
        ),
        "",
        "| configuration | runner CPU ms/run (median of rounds) | lowest round |",
        "| --- | ---: | ---: |",
    ]
    for name, values in per_round.items():
        lines.append(
            f"| {name} | {statistics.median(values) * 1000:.2f} | {min(values) * 1000:.2f} |"
        )
    on = statistics.median(per_round["metrics on (default)"])
    off = statistics.median(per_round["metrics off"])
    lines += [
        "",
        f"Metrics cost {(on - off) * 1000:.2f} ms of runner CPU per run (median of rounds).",
        "",
        (
            f"### Making one run's points: aiorunner vs the SDK's MeterProvider ({rounds} "
            f"rounds of {runs * 10} runs)"
        ),
        "",
        "| how | CPU µs/run (median of rounds) | lowest round |",
        "| --- | ---: | ---: |",
    ]
    for name, values in making.items():
        lines.append(
            f"| {name} | {statistics.median(values) * 1e6:.0f} | {min(values) * 1e6:.0f} |"
        )
    lines += [
        "",
        (
            "The SDK row records the same series and collects once per run (a run's final "
            "flush); its collection walks every series it has seen, so its cost per run "
            "grows with the runs a session has made, where aiorunner's points of a finished "
            "run are gone."
        ),
    ]
    return "\n".join(lines)


def main() -> str:
    """Measure both tables; return the markdown."""
    quick = os.environ.get("BENCH_QUICK") == "1"
    rounds, runs = (3, 10) if quick else (10, 20)
    workdir = Path(tempfile.mkdtemp(prefix="aiorunner-bench-"))
    try:
        per_round = measure(workdir, rounds, runs)
        making = measure_making(rounds, runs * 10)
        return table(per_round, making, rounds, runs) + "\n"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(print(main()))
