"""The core run: a real script, its RunResult, and its span tree read back from the
embedded OTLP/JSON lines file."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys

import pytest

from aiorunner import RunResult, ScriptRunner, TracingConfig, UsageError

CHILDREN = [
    "extract_metadata",
    "validate_dependencies",
    "setup_environment",
    "execute_script",
    "collect_metrics",
    "upload_traces",
]


async def test_successful_run_fills_result(make_script):
    """A script that prints and exits 0 gives success, its output, ids and metrics."""
    script = make_script("print('hello'); import sys; print('warn', file=sys.stderr)")
    result = await ScriptRunner(script).run()
    assert result.success, result.error
    assert result.exit_code == 0
    assert result.error is None
    assert result.stdout == "hello\n"
    assert result.stderr == "warn\n"
    assert re.fullmatch(r"[0-9a-f]{32}", result.trace_id)
    assert re.fullmatch(r"[0-9a-f]{16}", result.span_id)
    assert result.trace_id != "0" * 32
    assert result.metrics["execution_time_seconds"] > 0
    assert result.duration >= result.metrics["execution_time_seconds"]
    assert result.pid is not None
    assert result.command[0] == sys.executable


async def test_span_tree_in_jsonl_file(make_script, traces_file, spans_of):
    """The jsonl file holds the seed's span tree as OTLP/JSON: hex ids, lowerCamelCase
    keys, every child parented to the root, semantic-convention attributes."""
    script = make_script("print('x')")
    runner = ScriptRunner(script, ["--day", "2024-10-23"])
    runner.tracing_attributes = {"pipeline.name": "daily_etl", "team": "data"}
    result = await runner.run()
    assert result.success
    lines = traces_file.read_text().splitlines()
    assert lines, "nothing was written"
    for line in lines:
        request = json.loads(line)
        assert set(request) == {"resourceSpans"}
    spans = spans_of(result.trace_id)
    by_name = {s["name"]: s for s in spans}
    assert sorted(by_name) == sorted(["ScriptRunner", *CHILDREN])
    root = by_name["ScriptRunner"]
    assert root["spanId"] == result.span_id
    assert not root.get("parentSpanId")
    assert root["attrs"]["pipeline.name"] == "daily_etl"
    assert root["attrs"]["code.file.path"] == str(script)
    for name in CHILDREN:
        span = by_name[name]
        assert span["parentSpanId"] == result.span_id
        assert re.fullmatch(r"[0-9a-f]{16}", span["spanId"])
        assert "startTimeUnixNano" in span and "endTimeUnixNano" in span
        assert int(span["startTimeUnixNano"]) >= int(root["startTimeUnixNano"])
        assert int(span["endTimeUnixNano"]) <= int(root["endTimeUnixNano"])
    # children are in seed order in time
    starts = [int(by_name[n]["startTimeUnixNano"]) for n in CHILDREN]
    assert starts == sorted(starts)
    execute = by_name["execute_script"]["attrs"]
    assert by_name["execute_script"]["kind"] == 3  # CLIENT: it spawns the process
    assert execute["process.pid"] == result.pid
    assert execute["process.exit.code"] == 0
    assert execute["process.executable.path"] == os.path.realpath(sys.executable)
    assert execute["process.executable.name"] == os.path.basename(os.path.realpath(sys.executable))
    assert execute["process.working_directory"] == os.getcwd()
    assert execute["process.command_args"][-2:] == ["--day", "2024-10-23"]
    assert "error.type" not in execute
    meta = by_name["extract_metadata"]["attrs"]
    assert meta["code.file.path"] == str(script)
    assert len(meta["aiorunner.script.sha256"]) == 64
    assert root["resource"]["service.name"] == "aiorunner"
    assert by_name["collect_metrics"]["attrs"]["aiorunner.execution_time_seconds"] > 0
    # Success leaves the status UNSET (instrumentation SHOULD NOT set OK).
    assert root.get("status", {}).get("code") in (None, 0)
    assert "error.type" not in root["attrs"]
    assert result.export is not None and result.export.ok, result.export


async def test_concurrent_runs_get_their_own_traces(make_script, spans_of):
    """Runs gathered in one loop each get a complete trace of their own."""
    script = make_script("import sys, time; time.sleep(0.05); print(sys.argv[1])")
    results = await asyncio.gather(*(ScriptRunner(script, [str(i)]).run() for i in range(6)))
    assert [r.stdout.strip() for r in results] == [str(i) for i in range(6)]
    assert len({r.trace_id for r in results}) == 6
    for r in results:
        names = sorted(s["name"] for s in spans_of(r.trace_id))
        assert names == sorted(["ScriptRunner", *CHILDREN])


def test_run_script_sync_twin(make_script, spans_of):
    """run_script() runs the script synchronously (seed Quick Start) and traces it."""
    script = make_script("print('sync')")
    runner = ScriptRunner(script)
    runner.enable_tracing = True
    result = runner.run_script()
    assert result.success and result.stdout == "sync\n"
    assert len(spans_of(result.trace_id)) == 7


async def test_run_script_inside_running_loop_raises():
    """run_script() from inside a running loop raises UsageError naming await run()."""
    with pytest.raises(UsageError, match=r"await runner\.run\(\)"):
        ScriptRunner("whatever.py").run_script()


async def test_env_and_cwd_and_args(make_script, tmp_path):
    """env adds to the inherited environment, cwd is the child's working directory."""
    work = tmp_path / "work"
    work.mkdir()
    script = make_script(
        "import os, sys; print(os.getcwd()); print(os.environ['DAY']); "
        "print(os.environ.get('PATH') is not None); print(sys.argv[1:])"
    )
    result = await ScriptRunner(script, ["a b", "c"], cwd=work, env={"DAY": "2024-10-23"}).run()
    assert result.success, result.error
    assert result.stdout.splitlines() == [str(work), "2024-10-23", "True", "['a b', 'c']"]


async def test_non_python_executable_runs_directly(make_script):
    """A non-.py executable runs directly (bash here) and also sees TRACEPARENT."""
    script = make_script('#!/bin/sh\necho "tp=$TRACEPARENT"\n', name="job.sh", mode=0o755)
    result = await ScriptRunner(script).run()
    assert result.success, result.error
    assert result.stdout.startswith(f"tp=00-{result.trace_id}-")


async def test_result_serialises_to_json(make_script):
    """RunResult.to_json() round-trips through json with the documented keys."""
    result = await ScriptRunner(make_script("print(1)")).run()
    data = json.loads(result.to_json())
    assert data["success"] is True
    assert data["trace_id"] == result.trace_id
    assert data["stdout"] == "1\n"
    assert data["metrics"]["execution_time_seconds"] > 0
    assert data["export"]["ok"] is True
    assert isinstance(result, RunResult)


async def test_tracing_disabled_by_env(make_script, traces_file, monkeypatch):
    """OTEL_SDK_DISABLED=true: the run works, nothing is written, ids stay valid."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    result = await ScriptRunner(make_script("print('ok')")).run()
    assert result.success and result.stdout == "ok\n"
    assert re.fullmatch(r"[0-9a-f]{32}", result.trace_id) and result.trace_id != "0" * 32
    assert not traces_file.exists() or traces_file.read_text() == ""
    assert result.export is not None and result.export.disabled


async def test_exporter_none_turns_tracing_off(make_script, traces_file, monkeypatch):
    """OTEL_TRACES_EXPORTER=none turns tracing off; runs still work."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    result = await ScriptRunner(make_script("print('ok')")).run()
    assert result.success
    assert not traces_file.exists() or traces_file.read_text() == ""


async def test_enable_tracing_false(make_script, traces_file):
    """runner.enable_tracing = False runs without writing a trace."""
    runner = ScriptRunner(make_script("print('ok')"))
    runner.enable_tracing = False
    result = await runner.run()
    assert result.success
    assert not traces_file.exists() or traces_file.read_text() == ""


async def test_set_tracing_config_file(make_script, tmp_path, spans_of, spans_in):
    """set_tracing_config(TracingConfig(traces_file=...)) sends the trace there."""
    target = tmp_path / "elsewhere" / "t.jsonl"
    runner = ScriptRunner(make_script("print('ok')"))
    runner.set_tracing_config(TracingConfig(traces_file=target, service_name="etl"))
    result = await runner.run()
    assert result.success
    spans = [s for s in spans_in(target) if s["traceId"] == result.trace_id]
    assert len(spans) == 7
    assert spans[0]["resource"]["service.name"] == "etl"
    assert spans_of(result.trace_id) == []


async def test_monitoring_reaches_result_and_trace(make_script, spans_of, tmp_path):
    """The monitor's figures land in RunResult.metrics, as aiorunner.* attributes on
    collect_metrics, and as cpu/memory/io events on execute_script (capped by
    max_events); the script's own last writes are counted (read from its zombie)."""
    out = tmp_path / "out.bin"
    script = make_script(
        f"""
        import time
        block = bytearray(64 << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(0.3)
        with open({str(out)!r}, "wb") as f:
            for _ in range(50):
                f.write(b"x" * (1 << 20))
        """
    )
    runner = ScriptRunner(script, monitor_interval=0.05)
    runner.set_tracing_config(TracingConfig(max_events=6))
    result = await runner.run()
    assert result.success, result.error
    m = result.metrics
    for key in (
        "execution_time_seconds",
        "cpu_user_seconds",
        "cpu_system_seconds",
        "cpu_percent_avg",
        "cpu_percent_max",
        "memory_rss_peak_bytes",
        "memory_rss_avg_bytes",
        "threads_max",
        "processes_max",
        "samples",
    ):
        assert key in m, key
    assert m["memory_rss_peak_bytes"] >= 64 << 20
    if sys.platform == "linux":
        assert m["io_write_bytes"] >= 50 << 20
    spans = {s["name"]: s for s in spans_of(result.trace_id)}
    collect = spans["collect_metrics"]["attrs"]
    assert collect["aiorunner.memory_rss_peak_bytes"] == m["memory_rss_peak_bytes"]
    assert collect["aiorunner.samples"] == m["samples"]
    events = [e["name"] for e in spans["execute_script"].get("events", [])]
    assert {"cpu_monitoring", "memory_monitoring", "io_monitoring"} <= set(events)
    assert len(events) <= 6


async def test_live_samples_beside_run(make_script):
    """runner.live() yields the run's samples while it runs, and ends with it."""
    import anyio

    runner = ScriptRunner(make_script("import time; time.sleep(0.6)"), monitor_interval=0.05)
    samples = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(runner.run)
        async for sample in runner.live():
            samples.append(sample)
    assert len(samples) >= 3
    assert max(s.rss_bytes for s in samples) > 1 << 20  # the last one may be the zombie


async def test_live_ends_when_script_never_starts(tmp_path):
    """live() returns when the run fails before a process exists."""
    import anyio

    runner = ScriptRunner(tmp_path / "missing.py")
    seen = []
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.run)
            async for sample in runner.live():
                seen.append(sample)
    assert seen == []


def test_peak_memory_is_the_scripts_not_the_runners(make_script):
    """A trivial script's peak RSS is its own, not the runner's memory that Linux folds
    into the child's ru_maxrss at exec. The runner holds 200 MB of ballast, in a process
    of its own so this test's high-water mark does not leak into other tests."""
    import subprocess
    import textwrap

    script = make_script("pass\n")
    code = textwrap.dedent(
        f"""
        import json
        ballast = bytearray(200 << 20)
        for i in range(0, len(ballast), 4096):
            ballast[i] = 1
        from aiorunner import ScriptRunner
        r = ScriptRunner({str(script)!r}, monitor_interval=0.05).run_script()
        print(json.dumps(r.metrics))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    # Absent when no reading caught the (very short) script resident: unknown, not 0.
    assert 0 < metrics.get("memory_rss_peak_bytes", 1) < 100 << 20, metrics


def test_memory_spike_between_samples_through_the_runner(make_script):
    """A script allocates and touches 200 MB for 0.2 s between two samples (interval
    2 s): the runner's peak is within 10 % of the script's own VmHWM. Run from a small
    process so the runner's own memory (folded into ru_maxrss at exec) stays below it."""
    import subprocess
    import textwrap

    script = make_script(
        """
        import re, time
        data = bytearray(200 << 20)
        for i in range(0, len(data), 4096):
            data[i] = 1
        time.sleep(0.2)
        status = open("/proc/self/status").read()
        print(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
        """
    )
    code = textwrap.dedent(
        f"""
        import json
        from aiorunner import ScriptRunner
        r = ScriptRunner({str(script)!r}, monitor_interval=2.0).run_script()
        print(json.dumps({{"peak": r.metrics["memory_rss_peak_bytes"], "out": r.stdout,
                           "samples": r.metrics["samples"]}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    true_peak = int(data["out"].split()[0]) * 1024
    assert true_peak >= 200 << 20
    assert abs(data["peak"] - true_peak) <= 0.10 * true_peak, (data, true_peak)


def test_short_script_smaller_than_the_runner_reports_its_own_peak(make_script):
    """A Python script that touches 60 MB and ends long before the first sample, run by
    a runner that once held 250 MB (so ru_maxrss, which starts at the runner's peak, says
    nothing): the script's own VmHWM, sent as it exits, is the reported peak. Without the
    in-script channel, or when the script leaves by os._exit, only the first reading is
    left (the documented limit), well below 60 MB."""
    import subprocess
    import textwrap

    body = """
        import os, re, sys
        data = bytearray(60 << 20)
        for i in range(0, len(data), 4096):
            data[i] = 1
        status = open("/proc/self/status").read()
        print(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1), flush=True)
        if sys.argv[1:] == ["exit"]:
            os._exit(0)
        """
    script = make_script(body)
    code = textwrap.dedent(
        f"""
        import json
        from aiorunner import ScriptRunner
        big = bytearray(250 << 20)
        for i in range(0, len(big), 4096):
            big[i] = 1
        del big
        out = {{}}
        for name, args, kwargs in (
            ("channel", [], {{}}),
            ("no channel", [], {{"in_script_tracing": False}}),
            ("os._exit", ["exit"], {{}}),
        ):
            r = ScriptRunner({str(script)!r}, args=args, monitor_interval=30.0, **kwargs).run_script()
            assert r.success, r.error
            out[name] = [r.metrics.get("memory_rss_peak_bytes", 0), int(r.stdout.split()[0]) * 1024]
        print(json.dumps(out))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    reported, own = data["channel"]
    assert own >= 60 << 20
    assert own <= reported <= own * 1.05, data  # it may grow a little after the print
    assert data["no channel"][0] < 60 << 20, data
    assert data["os._exit"][0] < 60 << 20, data
