"""Each run's resource use as OpenTelemetry metrics (issue 19), against real receivers: a
busy script's CPU and memory over gRPC MetricsService, the duration histogram's exemplar
naming the run's trace, the same over HTTP /v1/metrics (protobuf and JSON), series of a
finished run stop, metrics.jsonl parsed strictly as ExportMetricsServiceRequest lines,
temporality, selection and turning off, spooled while the collector is down."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import anyio
import anyio.to_thread
import pytest
from receivers import parse_otlp_metrics_json
from runs import fast_retry_config as _config
from runs import run_in_session as _run

from aiorunner import ScriptRunner, Session, TracingConfig
from aiorunner._exceptions import ConfigError

HELD = 64 * 1024 * 1024

BUSY = f"""
import resource
held = bytearray({HELD})
for i in range(0, len(held), 4096):
    held[i] = 1  # touched: resident
while resource.getrusage(resource.RUSAGE_SELF).ru_utime < 1.5:  # 1.5 s of user CPU
    pass
"""


def _of_run(points, trace_id: str):
    return [p for p in points if p.attributes.get("aiorunner.run.id") == trace_id]


def _last(points, name: str, **attributes: str):
    found = [
        p
        for p in points
        if p.name == name and all(p.attributes.get(k) == v for k, v in attributes.items())
    ]
    assert found, f"no {name} {attributes} among {sorted({p.name for p in points})}"
    return max(found, key=lambda p: p.time_unix_nano)


def _has_duration(points) -> bool:
    return any(p.name == "aiorunner.run.duration" for p in points)


async def test_busy_script_reports_cpu_memory_and_an_exemplar_over_grpc(
    make_script, otlp_grpc_receiver
):
    """A 1.5 s busy script holding 64 MiB: process.cpu.time user >= 1 s and
    process.memory.usage >= 64 MiB for its run id (semconv names, units, attributes; no
    process.pid), and aiorunner.run.duration whose exemplar names the run's trace and
    root span, aiorunner.runs counting a success, over the gRPC MetricsService."""
    config = _config(exporter_type="otlp", collector_endpoint=otlp_grpc_receiver.endpoint)
    result = await _run(make_script(BUSY, name="busy.py"), config)
    assert result.success, result.error
    assert result.export.ok, result.export.describe()
    # The run's points were exported before run() returned (upload_traces waits).
    points = otlp_grpc_receiver.metrics
    run = _of_run(points, result.trace_id)
    user = _last(run, "process.cpu.time", **{"cpu.mode": "user"})
    assert (user.unit, user.kind, user.monotonic, user.temporality) == ("s", "sum", True, 2)
    assert user.value >= 1.0
    memory = _last(run, "process.memory.usage")
    assert (memory.unit, memory.kind, memory.monotonic) == ("By", "sum", False)
    assert memory.value >= HELD
    assert _last(run, "process.memory.virtual").value >= memory.value
    assert _last(run, "process.thread.count").value >= 1
    assert _last(run, "process.unix.file_descriptor.count").value >= 3
    assert _last(run, "process.paging.faults", **{"system.paging.fault.type": "minor"}).value > (
        HELD // 4096 // 2
    )
    assert _last(run, "process.uptime").value >= 1.5
    utilization = _last(run, "process.cpu.utilization", **{"cpu.mode": "user"})
    assert utilization.kind == "gauge" and 0 < utilization.value <= 1
    for name in ("process.disk.io", "process.context_switches"):
        assert _last(run, name)
    for point in run:
        assert point.attributes["aiorunner.job.name"] == "busy.py"
        assert point.attributes["aiorunner.script.name"] == "busy.py"
    assert all("process.pid" not in p.attributes for p in points)
    from test_semconv import DEPRECATED, KEYS

    keys = {k for p in points for k in p.attributes}
    assert {k for k in keys if not k.startswith("aiorunner.")} <= KEYS - DEPRECATED, keys
    assert {"cpu.mode", "disk.io.direction", "process.context_switch.type"} <= keys
    assert "system.paging.fault.type" in keys
    (duration,) = [p for p in points if p.name == "aiorunner.run.duration"]
    assert duration.kind == "histogram" and duration.count == 1 and duration.sum >= 1.5
    assert duration.attributes == {
        "aiorunner.job.name": "busy.py",
        "aiorunner.run.outcome": "success",
    }
    ((value, trace_id, span_id),) = duration.exemplars
    spans = await otlp_grpc_receiver.wait_for_spans(7)
    root = next(s for s in spans if s.name == "ScriptRunner")
    assert (trace_id, span_id) == (result.trace_id, root.span_id)
    assert value == duration.sum
    (runs,) = [p for p in points if p.name == "aiorunner.runs"]
    assert runs.value == 1 and runs.attributes["aiorunner.run.outcome"] == "success"
    (peak,) = [p for p in points if p.name == "aiorunner.run.memory.peak"]
    assert peak.unit == "By" and peak.sum >= HELD
    exported = _last(
        points,
        "aiorunner.export.spans",
        **{"aiorunner.backend.name": "otlp", "aiorunner.export.result": "exported"},
    )
    assert exported.monotonic


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
async def test_metrics_reach_otlp_http_v1_metrics(
    make_script, otlp_http_receiver, monkeypatch, protocol
):
    """Over OTLP/HTTP the points go to /v1/metrics (OTEL_EXPORTER_OTLP_METRICS_* and the
    generic variables apply), in protobuf or OTLP/JSON; a failed run counts as failed."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http_receiver.endpoint)
    result = await _run(make_script("raise SystemExit(3)"), _config(exporter_type="otlp"))
    assert not result.success
    assert {r.path for r in otlp_http_receiver.metric_requests} == {"/v1/metrics"}
    points = otlp_http_receiver.metrics
    (duration,) = [p for p in points if p.name == "aiorunner.run.duration"]
    assert duration.attributes["aiorunner.run.outcome"] == "failed"
    assert duration.exemplars[0][1] == result.trace_id
    assert _last(_of_run(points, result.trace_id), "process.cpu.time", **{"cpu.mode": "user"})


async def test_metrics_endpoint_variable_wins(
    make_script, otlp_grpc_receiver, otlp_http_receiver, monkeypatch
):
    """OTEL_EXPORTER_OTLP_METRICS_ENDPOINT/PROTOCOL send metrics elsewhere than spans."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_grpc_receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf")
    monkeypatch.setenv(
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", otlp_http_receiver.endpoint + "/v1/metrics"
    )
    result = await _run(make_script("pass"), _config(exporter_type="otlp"))
    assert result.success and result.export.ok, result.export.describe()
    assert _has_duration(otlp_http_receiver.metrics)
    assert otlp_grpc_receiver.metrics == []


async def test_series_of_a_finished_run_stop(make_script, otlp_grpc_receiver):
    """While a run goes on its points are exported every metrics_interval; once a run
    has ended, none of its series is reported again (another run of the session keeps
    exporting its own)."""
    config = _config(
        exporter_type="otlp",
        collector_endpoint=otlp_grpc_receiver.endpoint,
        metrics_interval=0.2,
        monitor_interval=0.1,
    )
    short = make_script("pass", name="short.py")
    long = make_script("import time; time.sleep(1.5)", name="long.py")
    async with await anyio.to_thread.run_sync(Session, config) as session:
        first = await ScriptRunner(str(short), session=session).run()
        after_first = len(_of_run(otlp_grpc_receiver.metrics, first.trace_id))
        assert after_first > 0
        second = await ScriptRunner(str(long), session=session, monitor_interval=0.1).run()
        assert second.success
    points = otlp_grpc_receiver.metrics
    assert len(_of_run(points, first.trace_id)) == after_first
    uptimes = [p for p in _of_run(points, second.trace_id) if p.name == "process.uptime"]
    assert len(uptimes) >= 3  # several interval exports, then the final one
    assert len({p.time_unix_nano for p in uptimes}) == len(uptimes)


def test_metrics_jsonl_is_export_metrics_service_request_lines(make_script, traces_file):
    """The default jsonl backend writes metrics.jsonl beside the traces file: every line
    parses strictly as an OTLP/JSON ExportMetricsServiceRequest (exemplar ids hex), and
    holds the run's points."""
    # Alive for a sample (a script gone before the monitor's first reading has no
    # memory usage point: nothing was read while it lived).
    script = make_script("import time\nx = bytearray(10**7)\ntime.sleep(0.3)")
    result = ScriptRunner(str(script)).run_script()
    assert result.success
    path = traces_file.parent / "metrics.jsonl"
    lines = path.read_text().splitlines()
    assert lines
    from receivers import decode_otlp_metrics

    points = [p for line in lines for p in decode_otlp_metrics(parse_otlp_metrics_json(line))]
    assert _last(_of_run(points, result.trace_id), "process.memory.usage").value > 0
    (peak,) = [p for p in points if p.name == "aiorunner.run.memory.peak"]
    assert peak.sum > 10**7
    (duration,) = [p for p in points if p.name == "aiorunner.run.duration"]
    assert duration.exemplars[0][1] == result.trace_id


async def test_delta_temporality(make_script, otlp_grpc_receiver, monkeypatch):
    """OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=delta: two runs of one job give
    two aiorunner.runs points of 1 each (delta, start = the previous export), counters of
    a run are deltas, UpDownCounters stay cumulative."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
    config = _config(exporter_type="otlp", collector_endpoint=otlp_grpc_receiver.endpoint)
    script = make_script("pass")
    async with await anyio.to_thread.run_sync(Session, config) as session:
        for _ in range(2):
            assert (await ScriptRunner(str(script), session=session).run()).success
    runs = [p for p in otlp_grpc_receiver.metrics if p.name == "aiorunner.runs"]
    assert [(p.value, p.temporality) for p in runs] == [(1, 1), (1, 1)]
    assert runs[1].start_time_unix_nano == runs[0].time_unix_nano
    cpu = [p for p in otlp_grpc_receiver.metrics if p.name == "process.cpu.time"]
    assert cpu and all(p.temporality == 1 for p in cpu)
    memory = [p for p in otlp_grpc_receiver.metrics if p.name == "process.memory.usage"]
    assert memory and all(p.temporality == 2 for p in memory)


async def test_turning_metrics_off(make_script, otlp_grpc_receiver, monkeypatch):
    """TracingConfig(metrics=False) and OTEL_METRICS_EXPORTER=none send no metrics (the
    spans still go); a bad temporality argument is a ConfigError naming the choices."""
    script = make_script("pass")
    config = _config(
        exporter_type="otlp", collector_endpoint=otlp_grpc_receiver.endpoint, metrics=False
    )
    assert (await _run(script, config)).success
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    config = _config(exporter_type="otlp", collector_endpoint=otlp_grpc_receiver.endpoint)
    assert (await _run(script, config)).success
    await otlp_grpc_receiver.wait_for_spans(14)
    assert otlp_grpc_receiver.metrics == []
    with pytest.raises(ConfigError, match="cumulative, delta, lowmemory"):
        TracingConfig(metrics_temporality="sometimes").resolve()


def test_bad_env_values_warn_and_use_the_default(caplog):
    """A bad OTEL_METRIC_EXPORT_INTERVAL or temporality preference is one WARNING naming
    the variable; the defaults (10 s, cumulative) are used."""
    with caplog.at_level(logging.WARNING):
        config = TracingConfig().resolve(
            environ={
                "OTEL_METRIC_EXPORT_INTERVAL": "soon",
                "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "often",
            }
        )
    assert (config.metrics_interval, config.metrics_temporality) == (10.0, "cumulative")
    problems = {p.variable for p in config.ignored}
    assert problems == {
        "OTEL_METRIC_EXPORT_INTERVAL",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
    }


async def test_metrics_are_spooled_while_the_collector_is_down_then_delivered(
    make_script, tmp_path
):
    """A collector that refuses connections: the run's metric points go to the backend's
    spool, in files of their own (metrics.*), counted as spooled in RunResult.export; the
    next session that exports there, once the collector is up, sends them (read back
    from the spool's OTLP/JSON lines: the duration's exemplar still names the run)."""
    from receivers import OtlpGrpcReceiver

    receiver = OtlpGrpcReceiver()
    port = receiver.reserve_port()  # bound, not listening: refused
    config = _config(
        exporter_type="otlp",
        collector_endpoint=f"http://127.0.0.1:{port}",
        spool_dir=str(tmp_path / "spool"),
        connect_budget=0.2,
    )
    try:
        first = await _run(make_script("pass"), config)
        spooled = {b.name: b.spooled for b in first.export.metrics}
        assert spooled["otlp"] > 0, first.export.describe()
        assert [p.name for p in (tmp_path / "spool").rglob("metrics.*")]
        receiver.start()
        second = await _run(make_script("pass", name="again.py"), config)
        assert second.export.ok, second.export.describe()
        points = await receiver.wait_for_metrics(
            lambda got: len([p for p in got if p.name == "aiorunner.run.duration"]) >= 2
        )
    finally:
        receiver.stop()
    durations = {p.exemplars[0][1] for p in points if p.name == "aiorunner.run.duration"}
    assert durations == {first.trace_id, second.trace_id}
    assert _last(_of_run(points, first.trace_id), "process.cpu.time", **{"cpu.mode": "user"})


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiorunner", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
    )


def test_cli_no_metrics_and_metrics_exporter_flag(make_script, traces_file):
    """`aiorunner run --no-metrics` writes no metrics.jsonl; `--metrics_exporter console`
    (the flag of OTEL_METRICS_EXPORTER) prints the points; by default they go to
    metrics.jsonl beside the traces."""
    script = str(make_script("pass"))
    metrics_file = traces_file.parent / "metrics.jsonl"
    proc = _cli("run", "--no-metrics", script)
    assert proc.returncode == 0, proc.stderr
    assert traces_file.exists() and not metrics_file.exists()
    proc = _cli("run", "--metrics_exporter", "console", script)
    assert proc.returncode == 0, proc.stderr
    assert "[aiorunner] metric aiorunner.run.duration{" in proc.stderr
    assert not metrics_file.exists()
    proc = _cli("run", script)
    assert proc.returncode == 0, proc.stderr
    assert metrics_file.read_bytes().splitlines()


async def test_run_many_counts_outcomes_with_job_names(make_script, otlp_grpc_receiver):
    """Under run_many the job name is the series' aiorunner.job.name, and aiorunner.runs
    counts each outcome: a failed job, and the job skipped because it needed it."""
    from aiorunner import Job, run_many

    config = _config(exporter_type="otlp", collector_endpoint=otlp_grpc_receiver.endpoint)
    session = await anyio.to_thread.run_sync(Session, config)
    async with session:
        results = await run_many(
            [
                Job(str(make_script("raise SystemExit(1)", name="bad.py")), name="extract"),
                Job(str(make_script("pass", name="ok.py")), name="load", after=["extract"]),
            ],
            session=session,
        )
    assert [r.skipped for r in results] == [False, True]
    runs = {
        (p.attributes["aiorunner.job.name"], p.attributes["aiorunner.run.outcome"]): p.value
        for p in otlp_grpc_receiver.metrics
        if p.name == "aiorunner.runs"
    }
    assert runs == {("extract", "failed"): 1, ("load", "skipped"): 1}
    cpu = [p for p in otlp_grpc_receiver.metrics if p.name == "process.cpu.time"]
    assert {p.attributes["aiorunner.job.name"] for p in cpu} == {"extract"}
    assert {p.attributes["aiorunner.script.name"] for p in cpu} == {"bad.py"}


async def test_an_opentelemetry_metric_exporter_by_name(
    make_script, otlp_grpc_receiver, monkeypatch
):
    """OTEL_METRICS_EXPORTER names an OpenTelemetry metric exporter (its
    opentelemetry_metrics_exporter entry point, here the SDK's OTLP/gRPC one): it gets
    the points as the SDK's MetricsData, exemplar included, in a worker thread."""
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "otlp_proto_grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", otlp_grpc_receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_INSECURE", "true")
    result = await _run(make_script("pass"), _config(exporter_type="jsonl"))
    assert result.success
    assert result.export.ok, result.export.describe()
    assert [b.name for b in result.export.metrics] == ["otlp_proto_grpc"]
    points = otlp_grpc_receiver.metrics
    (duration,) = [p for p in points if p.name == "aiorunner.run.duration"]
    assert duration.exemplars[0][1] == result.trace_id
    assert _last(_of_run(points, result.trace_id), "process.cpu.time", **{"cpu.mode": "user"})


def test_a_run_with_one_sample_gets_no_chart(make_script, traces_file):
    """A run shorter than the monitor interval has one sample: a number (listed in the
    span's details), not a picture, so the HTML view draws no chart for it."""
    script = make_script("import time\ntime.sleep(0.3)")
    result = ScriptRunner(str(script), monitor_interval=10.0).run_script()
    assert result.success and result.metrics["samples"] == 1
    html = traces_file.parent / "one.html"
    proc = _cli("traces", "show", result.trace_id, "--html", str(html))
    assert proc.returncode == 0, proc.stderr
    page = html.read_text()
    assert "execute_script" in page and '<svg class="chart' not in page


def test_html_charts_and_terminal_sparklines(make_script, traces_file):
    """The HTML view draws the run's CPU % and memory over time as inline SVG (no
    network: nothing is fetched), and `traces show -v` a one-line sparkline of each under
    execute_script, both from its monitoring events."""
    script = make_script(
        "import time\nheld = bytearray(32 * 1024 * 1024)\nend = time.time() + 0.8\n"
        "while time.time() < end:\n    pass\n"
    )
    result = ScriptRunner(str(script), monitor_interval=0.1).run_script()
    assert result.success
    html = traces_file.parent / "trace.html"
    proc = _cli("traces", "show", result.trace_id, "--html", str(html))
    assert proc.returncode == 0, proc.stderr
    page = html.read_text()
    for kind in ("cpu", "memory"):
        start = page.index(f'<svg class="chart {kind}"')
        chart = page[start : page.index("</svg>", start)]
        points = chart.split('points="')[1].split('"')[0].split()
        assert len(points) >= 5, chart
    assert "max 32." in page or "max 33." in page or "MiB" in page
    assert "src=" not in page and "http://" not in page and "https://" not in page
    proc = _cli("traces", "show", "-v", result.trace_id)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    cpu = next(line for line in lines if "cpu " in line and "max" in line)
    assert any(block in cpu for block in "▁▂▃▄▅▆▇█")
    assert any("mem " in line and "MiB" in line for line in lines)


def test_charts_skip_hostile_values():
    """Events from an untrusted file: values that are not finite numbers are skipped, a
    chart is bounded in points whatever the number of events."""
    from aiorunner._traces.charts import MAX_POINTS, resource_series, sparkline, svg_chart
    from aiorunner._traces.reader import SpanEvent

    class Span:
        events = (
            *(
                SpanEvent("cpu_monitoring", i, {"aiorunner.cpu.percent": float(i)})
                for i in range(5000)
            ),
            SpanEvent("cpu_monitoring", 1, {"aiorunner.cpu.percent": float("nan")}),
            SpanEvent("cpu_monitoring", 2, {"aiorunner.cpu.percent": "<script>"}),
            SpanEvent("memory_monitoring", 3, {"aiorunner.memory.rss_bytes": True}),
        )

    cpu, memory = resource_series(Span())  # type: ignore[arg-type]
    assert len(cpu) == 5000 and memory == []
    svg = svg_chart(cpu, title="<t>", label="x", start_ns=0, end_ns=5000, css_class="cpu")
    assert len(svg.split('points="')[1].split('"')[0].split()) == MAX_POINTS
    assert "<t>" not in svg
    assert sparkline(cpu, 10)[-1] == "█" and len(sparkline(cpu, 10)) == 10
