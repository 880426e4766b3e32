"""
The export pipeline against the SDK's BatchSpanProcessor, on the same discarding exporter
and the same queue (2048 spans, batches of 512, 5 s delay):

- spans/s ended on the caller's event loop thread, and from 4 other threads at once;
- spans dropped (queue overflow) in each case;
- CPU µs per span that ``on_end`` costs the thread ending the span (``on_end`` called in a
  tight loop on already-ended spans while the processor's export thread runs), and the
  CPU µs per span of the whole "start, end" on the caller;
- the longest stall of the caller's event loop (a ticker task asking to wake every 1 ms
  records how late it woke), while spans are ended on it in chunks of 32, or on other
  threads;
- and, for the jsonl backend, the direct OTLP/JSON encoder against the protobuf library
  path.

Throughput on a shared 2-core machine is noisy: compare the ratios of one run, not runs.
Run alone with ``python benchmarks/bench_pipeline.py`` (``BENCH_QUICK=1`` for a smoke
run), or through ``python -m benchmarks``, which calls :func:`main`.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from aiorunner._config import TracingConfig
from aiorunner._export.otlp_json import encode_request, encode_request_via_protobuf
from aiorunner._export.session import Session
from aiorunner.backend import ExportResult

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

QUEUE, BATCH, DELAY = 2048, 512, 5.0
THREADS = 4
CHUNK = 32


class DiscardingExporter(SpanExporter):
    """The SDK side: counts and forgets."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS


class DiscardingBackend:
    """Our side: the same, as an async backend."""

    name = "discard"

    def __init__(self) -> None:
        self.exported = 0

    async def export(self, spans: Sequence[ReadableSpan], *, timeout: float) -> ExportResult:
        self.exported += len(spans)
        return ExportResult.success()

    async def force_flush(self, *, timeout: float) -> bool:
        return True

    async def shutdown(self, *, timeout: float) -> None:
        return None


class Setup:
    """One processor under test: a tracer, how to flush and close, and what arrived."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        if kind == "aiorunner":
            self.backend = DiscardingBackend()
            self.session = Session(
                TracingConfig(max_queue_size=QUEUE, batch_size=BATCH, schedule_delay=DELAY),
                backends=[self.backend],
            )
            self.tracer = self.session.tracer("bench")
            self.processor: SpanProcessor = self.session._pipeline  # type: ignore[assignment]
        else:
            self.exporter = DiscardingExporter()
            self.provider = TracerProvider(shutdown_on_exit=False)
            processor: SpanProcessor
            if kind == "sdk":
                processor = BatchSpanProcessor(
                    self.exporter,
                    max_queue_size=QUEUE,
                    max_export_batch_size=BATCH,
                    schedule_delay_millis=DELAY * 1000,
                )
            else:  # "baseline": what span creation costs with a processor doing nothing
                processor = SpanProcessor()
            self.provider.add_span_processor(processor)
            self.processor = processor
            self.tracer = self.provider.get_tracer("bench")

    def finish(self) -> int:
        """Flush, close, and return the number of spans that reached the exporter."""
        if self.kind == "aiorunner":
            asyncio.run(self.session.flush(timeout=60))
            self.session.close()
            return self.backend.exported
        self.provider.force_flush(60_000)
        self.provider.shutdown()
        return self.exporter.exported if self.kind == "sdk" else 0


@dataclass
class Row:
    kind: str
    scenario: str
    spans: int
    wall: float
    caller_cpu: float
    arrived: int
    stall_ms: float

    @property
    def rate(self) -> float:
        return self.spans / self.wall

    @property
    def dropped(self) -> int:
        return self.spans - self.arrived


def end_spans(tracer: Any, count: int) -> None:
    start = tracer.start_span
    for _ in range(count):
        start("bench").end()


async def _ticker(stop: asyncio.Event, worst: list[float]) -> None:
    while not stop.is_set():
        asked = time.perf_counter()
        await asyncio.sleep(0.001)
        worst[0] = max(worst[0], time.perf_counter() - asked - 0.001)


async def on_loop(setup: Setup, count: int) -> tuple[float, float, float]:
    """End ``count`` spans on this loop's thread, in chunks, while a ticker watches."""
    stop, worst = asyncio.Event(), [0.0]
    ticker = asyncio.ensure_future(_ticker(stop, worst))
    await asyncio.sleep(0.01)
    cpu0, wall0 = time.thread_time(), time.perf_counter()
    for _ in range(count // CHUNK):
        end_spans(setup.tracer, CHUNK)
        await asyncio.sleep(0)
    wall, cpu = time.perf_counter() - wall0, time.thread_time() - cpu0
    stop.set()
    await ticker
    return wall, cpu, worst[0] * 1000


async def from_threads(setup: Setup, count: int) -> tuple[float, float, float]:
    """End ``count`` spans from THREADS threads at once; the loop only ticks."""
    stop, worst = asyncio.Event(), [0.0]
    ticker = asyncio.ensure_future(_ticker(stop, worst))
    cpu = [0.0] * THREADS
    go = threading.Barrier(THREADS + 1)

    def produce(index: int) -> None:
        go.wait()
        cpu0 = time.thread_time()
        end_spans(setup.tracer, count // THREADS)
        cpu[index] = time.thread_time() - cpu0

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    await asyncio.sleep(0.01)
    wall0 = time.perf_counter()
    go.wait()
    while any(thread.is_alive() for thread in threads):
        await asyncio.sleep(0.005)
    wall = time.perf_counter() - wall0
    stop.set()
    await ticker
    return wall, sum(cpu), worst[0] * 1000


def measure(kind: str, scenario: str, count: int) -> Row:
    setup = Setup(kind)
    runner: Callable[[Setup, int], Any] = on_loop if scenario == "loop" else from_threads
    end_spans(setup.tracer, 200)  # warm up (starts the export thread), not counted
    setup_arrived_before = 200
    wall, cpu, stall = asyncio.run(runner(setup, count))
    arrived = setup.finish() - setup_arrived_before
    if kind == "baseline":
        arrived = count
    return Row(kind, scenario, count, wall, cpu, arrived, stall)


def median_row(kind: str, scenario: str, count: int, repeats: int) -> Row:
    """Run ``repeats`` times, the implementations taking turns with the caller, and keep
    the median of each figure (a shared machine makes single runs noisy)."""
    runs = [measure(kind, scenario, count) for _ in range(repeats)]

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    return Row(
        kind,
        scenario,
        count,
        median([r.wall for r in runs]),
        median([r.caller_cpu for r in runs]),
        round(median([float(r.arrived) for r in runs])),
        median([r.stall_ms for r in runs]),
    )


def on_end_cost(kind: str, count: int) -> float:
    """CPU µs per call of the processor's on_end alone, on already-ended spans."""
    source = Setup("baseline")
    spans: list[ReadableSpan] = []

    class Keep(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            spans.append(span)

    source.provider.add_span_processor(Keep())
    end_spans(source.tracer, count)
    setup = Setup(kind)
    on_end = setup.processor.on_end
    on_end(spans[0])  # starts the export thread
    cpu0 = time.thread_time()
    for span in spans:
        on_end(span)
    cpu = time.thread_time() - cpu0
    setup.finish()
    return cpu / count * 1e6


def encoder_rows(quick: bool) -> list[str]:
    setup = Setup("baseline")
    spans: list[ReadableSpan] = []

    class Keep(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            spans.append(span)

    setup.provider.add_span_processor(Keep())
    for index in range(BATCH):
        with setup.tracer.start_as_current_span(f"s{index}", attributes={"i": index}) as span:
            span.set_attribute("script", "etl.py")
            span.add_event("checkpoint", {"progress_percent": 50})
    rounds = 3 if quick else 20
    out = []
    for label, encode in (
        ("direct (aiorunner._export.otlp_json)", encode_request),
        ("protobuf + MessageToDict", encode_request_via_protobuf),
    ):
        cpu0 = time.process_time()
        for _ in range(rounds):
            encode(spans)
        per_span = (time.process_time() - cpu0) / rounds / len(spans) * 1e6
        out.append((label, per_span))
    direct, library = out[0][1], out[1][1]
    return [
        "| OTLP/JSON encoder (512-span batches) | CPU µs per span |",
        "|---|---:|",
        *(f"| {label} | {value:.1f} |" for label, value in out),
        "",
        (
            f"The direct encoder is {library / direct:.1f}x faster than the library path "
            "(both produce the same dict; tests/test_jsonl.py checks it)."
        ),
    ]


def main() -> str:
    """Run the benchmark and return its tables as markdown."""
    quick = os.environ.get("BENCH_QUICK") == "1"
    count = 8_000 if quick else 100_000
    repeats = 1 if quick else 3
    rows = {
        (kind, scenario): median_row(kind, scenario, count, repeats)
        for scenario in ("loop", "threads")
        for kind in ("baseline", "sdk", "aiorunner")
    }
    lines = [
        (
            f"### Export pipeline vs the SDK's BatchSpanProcessor ({count} spans per run, "
            f"median of {repeats}, queue {QUEUE}, batch {BATCH}{', quick' if quick else ''})"
        ),
        "",
        (
            "| processor | where spans end | spans/s | dropped | on_end CPU µs/span "
            "| caller CPU µs/span | max loop stall ms |"
        ),
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    on_end_us = {kind: on_end_cost(kind, count // 4) for kind in ("sdk", "aiorunner")}
    for scenario, label in (("loop", "event loop thread"), ("threads", f"{THREADS} threads")):
        base = rows[("baseline", scenario)]
        for kind in ("sdk", "aiorunner"):
            row = rows[(kind, scenario)]
            on_end = on_end_us[kind]
            lines.append(
                f"| {kind} | {label} | {row.rate:,.0f} | {row.dropped} | {on_end:.2f} "
                f"| {row.caller_cpu / row.spans * 1e6:.1f} | {row.stall_ms:.2f} |"
            )
        lines.append(
            f"| (no processor) | {label} | {base.rate:,.0f} | - | 0 "
            f"| {base.caller_cpu / base.spans * 1e6:.1f} | {base.stall_ms:.2f} |"
        )
    lines += ["", "| ratio aiorunner / sdk | event loop thread | 4 threads |", "|---|---:|---:|"]
    loop_sdk, loop_ours = rows[("sdk", "loop")], rows[("aiorunner", "loop")]
    thr_sdk, thr_ours = rows[("sdk", "threads")], rows[("aiorunner", "threads")]
    lines.append(
        f"| throughput | {loop_ours.rate / loop_sdk.rate:.2f} | {thr_ours.rate / thr_sdk.rate:.2f} |"
    )
    lines.append(
        f"| dropped | {loop_ours.dropped} vs {loop_sdk.dropped} "
        f"| {thr_ours.dropped} vs {thr_sdk.dropped} |"
    )
    lines.append(
        f"| max loop stall | {loop_ours.stall_ms:.2f} vs {loop_sdk.stall_ms:.2f} ms "
        f"| {thr_ours.stall_ms:.2f} vs {thr_sdk.stall_ms:.2f} ms |"
    )
    lines.append(
        f"| on_end CPU per span | {on_end_us['aiorunner'] / on_end_us['sdk']:.2f} | (same) |"
    )
    lines += ["", *encoder_rows(quick)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
