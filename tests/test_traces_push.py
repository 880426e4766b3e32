"""`aiorunner traces push`: recorded traces replayed through the export pipeline into a
real OTLP/gRPC receiver; what arrived is compared with what the file holds."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner
from receivers import OtlpGrpcReceiver
from traces_fixture import T0, TRACE_A, TRACE_B, TRACE_C, known_trace_lines, write

from aiorunner import ScriptRunner
from aiorunner._exceptions import ConfigError, TraceNotFoundError
from aiorunner._traces.listing import list_traces
from aiorunner._traces.push import push_traces
from aiorunner._traces.tree import load_trace
from aiorunner._traces.waterfall import render_waterfall
from aiorunner.cli import main


def push(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["traces", "push", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout + result.stderr


def recorded(path: Path, trace_id: str) -> set[tuple[str, str, str, str]]:
    """(trace id, span id, parent id, name) of the finished spans the file holds."""
    trace = load_trace(path, trace_id)
    return {(s.trace_id, s.span_id, s.parent_span_id, s.name) for s in trace.spans if not s.pending}


def arrived(receiver: OtlpGrpcReceiver) -> set[tuple[str, str, str, str]]:
    return {(s.trace_id, s.span_id, s.parent_span_id or "", s.name) for s in receiver.spans}


@pytest.fixture
def three_runs(traces_file: Path) -> Path:
    """A, B finished; C still running (its marker and first batch only)."""
    return write(
        traces_file,
        *known_trace_lines(TRACE_A),
        *known_trace_lines(TRACE_B, t0=T0 + 60 * 10**9),
        *known_trace_lines(TRACE_C, t0=T0 + 120 * 10**9)[:2],
    )


def test_push_replays_every_finished_span(
    three_runs: Path, otlp_grpc_receiver: OtlpGrpcReceiver
) -> None:
    """Every finished span arrives once with its original ids, parent links, times,
    attributes, events, status and resource; start markers are not sent."""
    code, out = push("--exporter", "otlp", "--endpoint", otlp_grpc_receiver.endpoint)
    assert code == 0, out
    assert "Pushed 21 spans of 3 traces" in out
    assert "otlp: 21 exported" in out
    assert "1 run(s) still going" in out
    expected = recorded(three_runs, TRACE_A) | recorded(three_runs, TRACE_B)
    expected |= recorded(three_runs, TRACE_C)
    assert arrived(otlp_grpc_receiver) == expected
    assert len(otlp_grpc_receiver.spans) == 21
    execute = next(
        s for s in otlp_grpc_receiver.spans if s.name == "execute_script" and s.trace_id == TRACE_A
    )
    assert execute.attributes == {"process.pid": 4242, "process.exit.code": 0}
    assert [e.name for e in execute.events] == ["cpu_monitoring", "memory_monitoring"]
    assert execute.start_time_unix_nano == T0 + 70 * 10**6
    assert execute.end_time_unix_nano == T0 + 1900 * 10**6
    assert execute.resource["service.name"] == "aiorunner"
    transform = next(
        s for s in otlp_grpc_receiver.spans if s.name == "transform" and s.trace_id == TRACE_B
    )
    assert transform.status_code == "ERROR"
    assert transform.status_message == "ValueError: bad row 17"
    assert transform.scope == "etl"
    assert not [s for s in otlp_grpc_receiver.spans if "aiorunner.pending" in s.attributes]


def test_push_one_trace_by_prefix_and_since(
    three_runs: Path, otlp_grpc_receiver: OtlpGrpcReceiver
) -> None:
    """--trace takes a unique prefix; --since keeps runs started since then."""
    code, out = push(
        "-e", "otlp", "--endpoint", otlp_grpc_receiver.endpoint, "--trace", TRACE_B[:29]
    )
    assert code == 0, out
    assert {s.trace_id for s in otlp_grpc_receiver.spans} == {TRACE_B}
    otlp_grpc_receiver.reset()
    code, out = push(
        "-e", "otlp", "--endpoint", otlp_grpc_receiver.endpoint, "--since", "2023-11-14T22:14:00Z"
    )
    assert code == 0, out
    assert {s.trace_id for s in otlp_grpc_receiver.spans} == {TRACE_B, TRACE_C}


def test_push_errors(three_runs: Path) -> None:
    """An ambiguous or unknown --trace and an unknown backend are clear errors; nothing
    is sent."""
    code, out = push("-e", "otlp", "--trace", "4bf92")
    assert code == 1
    assert "ambiguous" in out
    code, out = push("-e", "otlp", "--trace", "abcdef")
    assert code == 1
    assert "no trace 'abcdef'" in out
    code, out = push("-e", "otlpp")
    assert code == 1
    assert "unknown backend 'otlpp'" in out


def test_push_to_a_dead_collector_fails_fast(three_runs: Path) -> None:
    """Nothing listening: exit 1 with the backend's error, after about one export
    timeout (it stops instead of retrying every chunk)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out = push("-e", "otlp", "--endpoint", f"http://127.0.0.1:{port}", "--timeout", "1")
    assert code == 1
    assert "0 exported" in out
    assert "failed" in out
    assert f"127.0.0.1:{port}" in out


def test_push_into_jsonl_copies_the_trace(
    three_runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--to PATH` copies traces into another file: a trace renders there exactly as in
    the original, read from $AIORUNNER_TRACES_FILE, which no longer moves the destination
    too (issue 16.12)."""
    copy = tmp_path / "copy" / "traces.jsonl"
    code, out = push("-e", "jsonl", "--to", str(copy), "--trace", TRACE_A[:29])
    assert code == 0, out
    assert f"jsonl: 9 exported to {copy}" in out
    original = render_waterfall(load_trace(three_runs, TRACE_A), width=100, verbose=True)
    assert render_waterfall(load_trace(copy, TRACE_A), width=100, verbose=True) == original
    # --to alone means jsonl; a second push appends.
    code, out = push("--to", str(copy), "--trace", TRACE_B)
    assert code == 0, out
    assert {TRACE_A, TRACE_B} == {s.trace_id for s in list_traces(copy).traces}


def test_push_destination_errors_say_what_to_do(three_runs: Path, tmp_path: Path) -> None:
    """jsonl without --to, --to onto the file being read (or one of its rotated files),
    --to with a backend that writes no file, and neither --exporter nor --to: each is an
    error naming the flag to give; nothing is written."""
    code, out = push("-e", "jsonl")
    assert code == 1
    assert "name it with --to PATH" in out
    assert f"read from {three_runs} (--file)" in out
    code, out = push("--to", str(three_runs))
    assert code == 1
    assert "is the file being read" in out
    assert "give --to another path" in out
    rotated = write(three_runs.with_name(three_runs.name + ".1"), *known_trace_lines(TRACE_C))
    code, out = push("-e", "otlp,jsonl", "--to", str(rotated))
    assert code == 1
    assert "is the file being read" in out
    code, out = push("-e", "otlp", "--to", str(tmp_path / "x.jsonl"))
    assert code == 1
    assert "--exporter otlp,jsonl" in out
    assert "--endpoint URL" in out
    code, out = push()
    assert code == 2
    assert "--exporter otlp" in out
    assert "--to PATH" in out
    assert not (tmp_path / "x.jsonl").exists()
    assert [p.name for p in three_runs.parent.iterdir() if p.suffix != ".1"] == [three_runs.name]


def test_push_in_small_chunks_loses_nothing(
    traces_file: Path, otlp_grpc_receiver: OtlpGrpcReceiver
) -> None:
    """Forty runs pushed five spans at a time: all 360 spans arrive, none dropped."""
    lines = []
    for i in range(40):
        lines += known_trace_lines(f"{i + 1:032x}", t0=T0 + i * 10**10)
    write(traces_file, *lines)

    async def go():
        return await push_traces(
            traces_file, exporter="otlp", endpoint=otlp_grpc_receiver.endpoint, chunk_size=5
        )

    report = anyio.run(go)
    assert report.ok
    assert (report.traces, report.spans, report.running) == (40, 360, 0)
    assert report.statistics.backend("otlp").exported == 360
    assert len(otlp_grpc_receiver.spans) == 360
    assert len(arrived(otlp_grpc_receiver)) == 360


def test_push_a_real_run(
    traces_file: Path, tmp_path: Path, otlp_grpc_receiver: OtlpGrpcReceiver
) -> None:
    """A script run by ScriptRunner (recorded by the default jsonl backend) replays with
    the run's trace id and the same parent links as in the file."""
    script = tmp_path / "job.py"
    script.write_text("print('working')\n")
    result = ScriptRunner(str(script)).run_script()
    assert result.success
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not traces_file.exists():
        time.sleep(0.05)
    code, out = push(
        "-e", "otlp", "--endpoint", otlp_grpc_receiver.endpoint, "--trace", result.trace_id
    )
    assert code == 0, out
    assert arrived(otlp_grpc_receiver) == recorded(traces_file, result.trace_id)
    names = {s.name for s in otlp_grpc_receiver.spans}
    assert {"ScriptRunner", "execute_script", "upload_traces"} <= names


def test_push_api_errors(tmp_path: Path) -> None:
    """The API raises the same errors the CLI prints."""
    with pytest.raises(TraceNotFoundError):
        anyio.run(lambda: push_traces(tmp_path / "missing.jsonl", exporter="otlp"))
    path = write(tmp_path / "t.jsonl", *known_trace_lines())
    with pytest.raises(ConfigError, match="disabled"):
        anyio.run(lambda: push_traces(path, exporter="none"))
