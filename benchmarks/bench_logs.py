"""
A chatty script's output as log records (issue 18): 100,000 lines written as fast as the
script can, through aiorunner's logs pipeline against the OpenTelemetry SDK's
``BatchLogRecordProcessor`` in the same run (same discarding exporter, same queue of 2048
records and batches of 512):

- ``aiorunner``: ``ScriptRunner`` with logs on, a discarding async backend taking spans
  and log records (monitoring and the dependency check off, so the figures are the
  output's);
- ``aiorunner, logs off``: the same with ``TracingConfig(logs=False)``: the difference is
  what the log records cost;
- ``SDK BatchLogRecordProcessor``: the script run with ``subprocess.Popen``, its stdout read
  line by line and each line emitted as an SDK ``LogRecord`` (what a runner built on the
  SDK would do), the processor's default (drop when the queue is full).

Per mode: lines/s (wall, spawn to last record handed over), the runner's own CPU per
line (every thread of this process, children excluded: ``getrusage(RUSAGE_SELF)``), and
the records that reached the exporter and were dropped. The modes take turns for a few
rounds (medians shown), so the load of a shared machine falls on all alike.

Run alone with ``python benchmarks/bench_logs.py`` (``BENCH_QUICK=1``: 20,000 lines, one
round), or through ``python -m benchmarks logs``.
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiorunner import ScriptRunner, Session, TracingConfig
from aiorunner.backend import ExportResult

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import ReadableSpan

    from aiorunner.backend import LogRecordData

QUEUE, BATCH = 2048, 512
SCRIPT = (
    "import sys\n"
    "w = sys.stdout.write\n"
    "for i in range(int(sys.argv[1])):\n"
    "    w(f'{i} processed row of the nightly batch, status ok, 12 fields\\n')\n"
)


class DiscardingBackend:
    """Counts and forgets spans and log records."""

    name = "discard"

    def __init__(self) -> None:
        self.records = 0

    async def export(self, spans: Sequence[ReadableSpan], *, timeout: float) -> ExportResult:
        return ExportResult.success()

    async def export_logs(
        self, records: Sequence[LogRecordData], *, timeout: float
    ) -> ExportResult:
        self.records += len(records)
        return ExportResult.success()

    async def force_flush(self, *, timeout: float) -> bool:
        return True

    async def shutdown(self, *, timeout: float) -> None:
        return None


@dataclass
class Row:
    mode: str
    lines: int
    wall: float
    cpu: float
    arrived: int

    @property
    def rate(self) -> float:
        return self.lines / self.wall

    @property
    def cpu_us_per_line(self) -> float:
        return self.cpu / self.lines * 1e6

    @property
    def dropped(self) -> int:
        return self.lines - self.arrived


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_aiorunner(script: str, lines: int, *, logs: bool) -> Row:
    backend = DiscardingBackend()
    config = TracingConfig(
        logs=logs,
        logs_max_queue_size=QUEUE,
        logs_batch_size=BATCH,
        max_queue_size=QUEUE,
        batch_size=BATCH,
    )
    session = Session(config, backends=[backend])
    runner = ScriptRunner(
        script, [str(lines)], session=session, monitor=False, validate_dependencies=False
    )
    cpu, wall = _cpu(), time.perf_counter()
    result = asyncio.run(runner.run())
    wall, cpu = time.perf_counter() - wall, _cpu() - cpu
    session.close()
    if not result.success:
        raise SystemExit(f"the script failed: {result.error}")
    mode = "aiorunner" if logs else "aiorunner, logs off"
    return Row(mode, lines, wall, cpu, backend.records if logs else lines)


def run_sdk(script: str, lines: int) -> Row:
    from opentelemetry._logs import LogRecord, SeverityNumber
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import (
        BatchLogRecordProcessor,
        LogRecordExporter,
        LogRecordExportResult,
    )

    class Discarding(LogRecordExporter):
        def __init__(self) -> None:
            self.records = 0

        def export(self, batch):  # type: ignore[no-untyped-def]
            self.records += len(batch)
            return LogRecordExportResult.SUCCESS

        def shutdown(self) -> None:
            return None

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    exporter = Discarding()
    provider = LoggerProvider(shutdown_on_exit=False)
    provider.add_log_record_processor(
        BatchLogRecordProcessor(exporter, max_queue_size=QUEUE, max_export_batch_size=BATCH)
    )
    logger = provider.get_logger("bench")
    emit = logger.emit
    cpu, wall = _cpu(), time.perf_counter()
    with subprocess.Popen([sys.executable, script, str(lines)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            now = time.time_ns()
            emit(
                LogRecord(
                    timestamp=now,
                    observed_timestamp=now,
                    severity_number=SeverityNumber.INFO,
                    severity_text="INFO",
                    body=raw.rstrip(b"\n").decode("utf-8", "replace"),
                    attributes={"log.iostream": "stdout"},
                )
            )
    wall, cpu = time.perf_counter() - wall, _cpu() - cpu
    provider.force_flush(60_000)
    provider.shutdown()
    return Row("SDK BatchLogRecordProcessor", lines, wall, cpu, exporter.records)


def main() -> str:
    quick = os.environ.get("BENCH_QUICK") == "1"
    lines = 20_000 if quick else 100_000
    rounds = 1 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "chatty.py")
        with open(script, "w") as f:
            f.write(SCRIPT)
        rows: dict[str, list[Row]] = {}
        for index in range(rounds):
            order = ["aiorunner", "sdk", "off"]
            if index % 2:
                order.reverse()
            for mode in order:
                if mode == "sdk":
                    row = run_sdk(script, lines)
                else:
                    row = run_aiorunner(script, lines, logs=mode == "aiorunner")
                rows.setdefault(row.mode, []).append(row)
    out = [
        f"### Logs: a script writing {lines:,} lines ({rounds} rounds, medians)",
        "",
        "| mode | lines/s | runner CPU µs/line | records arrived | dropped |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode, found in rows.items():
        rate = statistics.median(r.rate for r in found)
        cpu = statistics.median(r.cpu_us_per_line for r in found)
        arrived = min(r.arrived for r in found)
        dropped = max(r.dropped for r in found)
        out.append(f"| {mode} | {rate:,.0f} | {cpu:.1f} | {arrived:,} | {dropped:,} |")
    out.append("")
    out.append(
        "records arrived: the fewest of any round; dropped: the most. `aiorunner, logs off` "
        "sends no records: its CPU is the run's without them (pipes, tails, spans)."
    )
    return "\n".join(out)


if __name__ == "__main__":
    print(main())
