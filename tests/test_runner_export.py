"""A run against real collectors: what arrived, a collector that is down for the whole
run, one that comes up 3 s late, and memory/CPU limits that end a run."""

from __future__ import annotations

import logging
import socket

import anyio
import pytest

from aiorunner import ScriptRunner, TracingConfig

CHILDREN = {
    "extract_metadata",
    "validate_dependencies",
    "setup_environment",
    "execute_script",
    "collect_metrics",
    "upload_traces",
}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_run_exported_to_otlp_grpc_receiver(make_script, otlp_grpc_receiver):
    """The run's whole tree arrives at a real OTLP/gRPC receiver: names, parents,
    service.name and the seed's custom attributes."""
    runner = ScriptRunner(make_script("print('hi')"))
    runner.set_tracing_config(
        TracingConfig(
            exporter_type="otlp",
            collector_endpoint=otlp_grpc_receiver.endpoint,
            service_name="etl-service",
        )
    )
    runner.tracing_attributes = {"pipeline.name": "daily_etl"}
    result = await runner.run()
    assert result.success and result.export.ok, result.export
    spans = [s for s in await otlp_grpc_receiver.wait_for_spans(7) if s.trace_id == result.trace_id]
    by_name = {s.name: s for s in spans}
    assert set(by_name) == CHILDREN | {"ScriptRunner"}
    root = by_name["ScriptRunner"]
    assert root.span_id == result.span_id
    assert root.attributes["pipeline.name"] == "daily_etl"
    assert root.resource["service.name"] == "etl-service"
    assert all(by_name[n].parent_span_id == root.span_id for n in CHILDREN)


async def test_collector_down_for_the_whole_run(make_script, caplog):
    """With the collector down, the run still succeeds, returns within the export
    timeout plus a little (the bound is generous: it catches a hang, not a slow box),
    says in result.export that the spans did not arrive, and logs a warning."""
    caplog.set_level(logging.WARNING, logger="aiorunner")
    runner = ScriptRunner(make_script("print('hi')"))
    runner.set_tracing_config(
        TracingConfig(
            exporter_type="otlp",
            collector_endpoint=f"http://127.0.0.1:{_closed_port()}",
            export_timeout_ms=2000,
        )
    )
    with anyio.fail_after(20):
        result = await runner.run()
    assert result.success
    assert result.export is not None
    assert not result.export.ok
    (otlp,) = result.export.backends
    assert otlp.exported == 0
    assert otlp.failed + otlp.pending + otlp.dropped >= 5
    assert otlp.last_error
    assert "did not all arrive" in caplog.text


async def test_collector_up_three_seconds_late_loses_nothing(make_script, otlp_grpc_receiver):
    """A collector that starts 3 s after the run: retries deliver every span."""
    from receivers import start_late  # type: ignore[import-not-found]

    receiver = type(otlp_grpc_receiver)()
    with start_late(receiver, 3.0):
        runner = ScriptRunner(make_script("print('hi')"))
        runner.set_tracing_config(
            TracingConfig(
                exporter_type="otlp", collector_endpoint=receiver.endpoint, export_timeout_ms=15000
            )
        )
        result = await runner.run()
        assert result.success
        assert result.export.ok, result.export
        spans = await receiver.wait_for_spans(7, timeout=15)
        names = {s.name for s in spans if s.trace_id == result.trace_id}
        assert names == CHILDREN | {"ScriptRunner"}


@pytest.mark.parametrize(
    ("limits", "body", "expected"),
    [
        (
            {"max_memory_bytes": 50_000_000},
            (
                "import time\nx = bytearray(200 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1\n"
                "time.sleep(30)\n"
            ),
            "exceeded max_memory_bytes",
        ),
        (
            {"max_cpu_seconds": 0.3},
            "import time\nend = time.time() + 30\nwhile time.time() < end: pass\n",
            "exceeded max_cpu_seconds",
        ),
    ],
)
async def test_limits_kill_the_run(make_script, alive, spans_of, limits, body, expected):
    """Crossing max_memory_bytes or max_cpu_seconds kills the run's process group and
    fails it with a sentence naming the limit, on the result and the trace."""
    runner = ScriptRunner(make_script(body), monitor_interval=0.05, kill_grace=1.0, **limits)
    with anyio.fail_after(25):
        result = await runner.run()
    assert not result.success
    assert expected in result.error
    assert "killed" in result.error
    assert not result.timed_out
    assert not alive(result.pid)
    spans = {s["name"]: s for s in spans_of(result.trace_id)}
    assert spans["execute_script"]["status"]["code"] == 2
    assert expected in spans["execute_script"]["status"]["message"]
