"""A run against real collectors: what arrived, a collector that is down for the whole
run, one that comes up 3 s late, and memory/CPU limits that end a run."""

from __future__ import annotations

import logging
import socket

import anyio
import pytest

from aiorunner import ScriptRunner, Session, TracingConfig, run_many

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
    says in result.export that the spans were spooled, not exported, and one warning
    says where (#17: the run's own "did not all arrive" warning is for lost spans)."""
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
    assert (otlp.spooled, otlp.failed, otlp.pending, otlp.dropped) == (7, 0, 0, 0)
    assert otlp.last_error
    assert not result.export.lost
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "spooled to" in warnings[0].getMessage()


def _run_warnings(caplog) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "aiorunner.export" and "did not all arrive:" in r.getMessage()
    ]


async def test_collector_down_warns_once_for_a_batch_not_once_per_run(make_script, caplog):
    """Four runs whose spans cannot leave (and, the spool off, are lost): each result
    says so, but only the first run logs a warning (the rest log at DEBUG), so the
    pipeline's warning is not buried."""
    caplog.set_level(logging.DEBUG, logger="aiorunner.export")
    config = TracingConfig(
        exporter_type="otlp",
        collector_endpoint=f"http://127.0.0.1:{_closed_port()}",
        export_timeout=1.0,
        spool_max_bytes=0,
    )
    # Built off the loop: loading backends scans the installed distributions' entry points.
    async with await anyio.to_thread.run_sync(Session, config) as session:
        results = await run_many([make_script("pass")] * 4, max_concurrency=2, session=session)
    assert [r.success for r in results] == [True] * 4
    assert not any(r.export.ok for r in results)
    runs = _run_warnings(caplog)
    assert [r.levelno for r in runs].count(logging.WARNING) == 1
    assert [r.levelno for r in runs].count(logging.DEBUG) == 3
    (warning,) = [r for r in runs if r.levelno == logging.WARNING]
    assert "further runs" in warning.getMessage()
    assert any(r.trace_id in warning.getMessage() for r in results)


async def test_backend_back_logs_how_many_runs_went_unlogged(make_script, tmp_path, caplog):
    """Three runs whose traces file cannot be written (a file stands where its directory
    should be): one warning. Once the obstacle is gone the next run's traces arrive, and
    an INFO line says the two runs after the first were not logged one by one."""
    caplog.set_level(logging.DEBUG, logger="aiorunner.export")
    blocker = tmp_path / "traces"
    blocker.write_text("not a directory")
    traces = blocker / "runs.jsonl"
    config = TracingConfig(exporter_type="jsonl", traces_file=str(traces), export_timeout=1.0)
    script = make_script("pass")
    async with await anyio.to_thread.run_sync(Session, config) as session:
        failed = await run_many([script] * 3, max_concurrency=1, session=session)
        assert not any(r.export.ok for r in failed)
        blocker.unlink()
        (again,) = await run_many([script], session=session)
    assert again.export.ok, again.export
    assert again.trace_id in traces.read_text()
    runs = _run_warnings(caplog)
    assert [r.levelno for r in runs] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    (back,) = [
        r for r in caplog.records if r.levelno == logging.INFO and "arrived" in r.getMessage()
    ]
    assert again.trace_id in back.getMessage()
    assert "the 2 runs before it" in back.getMessage()


async def test_collector_up_three_seconds_late_loses_nothing(make_script, otlp_grpc_receiver):
    """A collector that starts 3 s after the run: the run does not wait for it (its
    spans are spooled after the connect budget), and the session's drainer delivers
    every span once the collector is up."""
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
        assert not result.export.lost, result.export
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
