"""
The embedded ``jsonl`` backend and its OTLP/JSON encoding: the file read back and checked
as the Collector's otlpjsonfile format, parsed by protobuf, decoded into spans; pending
lines; unwritable paths; rotation; several processes writing one file; exit-time drain.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from aiorunner._config import TracingConfig
from aiorunner._exceptions import ConfigError
from aiorunner._export.otlp_json import (
    decode_line,
    encode_line,
    encode_request,
    encode_request_via_protobuf,
    hex_ids_to_base64,
    line_to_request,
)
from aiorunner._export.session import Session
from aiorunner.testing import InMemoryBackend

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")


def rich_spans() -> list[Any]:
    """Spans using every field the encoder handles: every attribute type, events,
    links with attributes, error status, a remote parent with trace state, kinds."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource({"service.name": "enc", "host.cores": 2}), shutdown_on_exit=False
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests.encoder", "1.2.3")
    remote = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "x1")]),
    )
    with tracer.start_as_current_span(
        "root",
        context=set_span_in_context(NonRecordingSpan(remote)),
        kind=SpanKind.SERVER,
        attributes={
            "s": "text",
            "empty": "",
            "i": 42,
            "zero": 0,
            "big": 2**62,
            "f": 1.5,
            "whole": 2.0,
            "yes": True,
            "no": False,
            "strings": ["a", "b"],
            "ints": [1, 2, 3],
            "floats": [0.5],
            "bools": [True, False],
        },
    ) as root:
        root.add_event("checkpoint", {"progress_percent": 50, "stage": "load"})
        root.add_event("bare")
        with tracer.start_as_current_span(
            "child",
            kind=SpanKind.CLIENT,
            links=[Link(root.get_span_context(), {"link.kind": "follows"})],
        ) as child:
            child.set_status(Status(StatusCode.ERROR, "boom"))
        with tracer.start_as_current_span("ok") as ok:
            ok.set_status(Status(StatusCode.OK))
    return list(exporter.get_finished_spans())


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def spans_of(line: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        span
        for resource_spans in line["resourceSpans"]
        for scope_spans in resource_spans["scopeSpans"]
        for span in scope_spans["spans"]
    ]


def all_keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        keys = set(value)
        for item in value.values():
            keys |= all_keys(item)
        return keys
    if isinstance(value, list):
        return set().union(*(all_keys(item) for item in value)) if value else set()
    return set()


async def open_session(cfg: TracingConfig) -> Session:
    """Build a session off the event loop: the first one scans entry points (file reads),
    which the autouse blockbuster fixture would rightly flag on the loop."""
    return await anyio.to_thread.run_sync(Session, cfg)


def config(**overrides: Any) -> TracingConfig:
    values: dict[str, Any] = {"schedule_delay": 60.0, "export_timeout": 10.0}
    values.update(overrides)
    return TracingConfig(**values)


def test_direct_encoder_matches_the_protobuf_library_path() -> None:
    """The fast encoder gives exactly the dict of encode_spans + MessageToDict (+ hex ids),
    for every field and attribute type."""
    spans = rich_spans()
    assert encode_request(spans) == encode_request_via_protobuf(spans)


def test_decode_round_trips_through_the_encoder() -> None:
    """A line decoded into ReadableSpans encodes back to the same request."""
    spans = rich_spans()
    line = encode_line(spans)
    decoded = decode_line(line)
    assert encode_request(decoded) == encode_request(spans)
    assert [s.context.span_id for s in decoded] == [s.context.span_id for s in spans]


def test_malformed_lines_raise_value_error() -> None:
    """A truncated line (a crash mid-write) or a non-request is a ValueError."""
    line = encode_line(rich_spans())
    with pytest.raises(ValueError, match="not a JSON line"):
        decode_line(line[: len(line) // 2])
    with pytest.raises(ValueError, match="expected an object"):
        line_to_request("[1, 2]")


async def test_session_writes_otlp_json_lines(traces_file: Path) -> None:
    """The default backend writes OTLP/JSON: lowerCamelCase keys, hex ids, parent links,
    integers as strings, enums as numbers, the resource's service.name; protobuf parses it
    once ids are base64 again."""
    async with await open_session(config(service_name="etl-app")) as session:
        assert session.backend_names == ("jsonl",)
        tracer = session.tracer()
        with (
            tracer.start_as_current_span("work") as root,
            tracer.start_as_current_span("step", attributes={"rows": 10}) as step,
        ):
            step.add_event("progress", {"percent": 50})
        report = await session.flush_trace(root.get_span_context().trace_id)
    assert report.ok
    assert report.backends[0].exported == 2
    (line,) = read_lines(traces_file)
    assert not [key for key in all_keys(line) if "_" in key]
    resource = line["resourceSpans"][0]["resource"]["attributes"]
    assert {"key": "service.name", "value": {"stringValue": "etl-app"}} in resource
    spans = {span["name"]: span for span in spans_of(line)}
    work, step_span = spans["work"], spans["step"]
    assert HEX32.match(work["traceId"]) and HEX16.match(work["spanId"])
    assert work["traceId"] == format(root.get_span_context().trace_id, "032x")
    assert "parentSpanId" not in work
    assert step_span["parentSpanId"] == work["spanId"]
    assert step_span["traceId"] == work["traceId"]
    assert step_span["kind"] == 1
    assert isinstance(step_span["startTimeUnixNano"], str)
    assert int(step_span["endTimeUnixNano"]) >= int(step_span["startTimeUnixNano"])
    assert {"key": "rows", "value": {"intValue": "10"}} in step_span["attributes"]
    assert step_span["events"][0]["name"] == "progress"
    message = ExportTraceServiceRequest()
    json_format.ParseDict(hex_ids_to_base64(line), message)
    parsed = message.resource_spans[0].scope_spans[0].spans
    assert {span.name for span in parsed} == {"work", "step"}
    assert {span.trace_id.hex() for span in parsed} == {work["traceId"]}
    assert line_to_request(json.dumps(line)) == message


def live_entries(traces_file: Path) -> list[dict[str, Any]]:
    """The entries of the live-runs directory beside ``traces_file``."""
    directory = Path(str(traces_file) + ".live")
    if not directory.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]


async def wait_for_live_entry(traces_file: Path, seconds: float = 30.0) -> list[dict[str, Any]]:
    """Poll (off the loop) until the live-runs directory holds an entry."""
    with anyio.fail_after(seconds):
        while True:
            entries = await anyio.to_thread.run_sync(live_entries, traces_file)
            if entries:
                return entries
            await anyio.sleep(0.05)


async def test_running_root_is_in_the_live_view_not_in_the_file(traces_file: Path) -> None:
    """A root ScriptRunner span still going after the hold is entered in the live-runs
    directory (its data, our pid and process start time), never written to the trace
    file; once it ends the file holds it exactly once, finished, and the entry is gone."""
    import psutil

    async with await open_session(config()) as session:
        tracer = session.tracer()
        with tracer.start_as_current_span(
            "ScriptRunner", attributes={"code.file.path": "/w/etl.py"}
        ) as root:
            with tracer.start_as_current_span("extract_metadata"):
                pass
            await session.flush()
            (entry,) = await wait_for_live_entry(traces_file)
            await session.flush()
            in_file_while_running = read_lines(traces_file)
        await session.flush_trace(root.get_span_context().trace_id)
        left = live_entries(traces_file)
    context = root.get_span_context()
    assert entry["pid"] == os.getpid()
    assert entry["process_start"] == psutil.Process().create_time()
    (live_span,) = spans_of(entry["request"])
    assert live_span["spanId"] == format(context.span_id, "016x")
    assert live_span["endTimeUnixNano"] == "0"
    assert {"key": "code.file.path", "value": {"stringValue": "/w/etl.py"}} in live_span[
        "attributes"
    ]
    assert "aiorunner.pending" not in {a["key"] for a in live_span["attributes"]}
    names_running = [s["name"] for line in in_file_while_running for s in spans_of(line)]
    assert names_running == ["extract_metadata"]
    spans = [s for line in read_lines(traces_file) for s in spans_of(line)]
    assert [s["name"] for s in spans] == ["extract_metadata", "ScriptRunner"]
    assert int(spans[1]["endTimeUnixNano"]) > 0
    assert left == []
    assert not list(Path(str(traces_file) + ".live").iterdir())


async def test_a_short_run_never_enters_the_live_view(traces_file: Path) -> None:
    """A root that ends within the hold is written once, finished, and no live-runs
    entry is ever made for it (the sidecar directory is not even created)."""
    async with await open_session(config()) as session:
        tracer = session.tracer()
        with tracer.start_as_current_span("ScriptRunner") as root:
            await session.flush()
        await session.flush_trace(root.get_span_context().trace_id)
        await anyio.sleep(0.7)  # past the hold: a held start would have been written now
        await session.flush()
    assert [s["name"] for line in read_lines(traces_file) for s in spans_of(line)] == [
        "ScriptRunner"
    ]
    assert not Path(str(traces_file) + ".live").exists()


def test_every_line_of_real_runs_parses_strictly_and_holds_each_span_once(
    traces_file: Path, make_script: Any
) -> None:
    """Runs of a real script (a long one that shows in the live view, a failing one, a
    short one) leave a file whose every line json_format.Parse accepts as an
    ExportTraceServiceRequest (unknown fields are errors there; ids hex->base64 as OTLP
    JSON says), where no spanId appears twice, every root has ended and the failed run's
    root keeps its ERROR status: what the Collector's otlpjsonfile receiver forwards."""
    from aiorunner import ScriptRunner

    slow = make_script("import time; time.sleep(0.9)", name="slow.py")
    bad = make_script("raise SystemExit(3)", name="bad.py")
    quick = make_script("pass", name="quick.py")
    results = [ScriptRunner(path).run_script() for path in (slow, bad, quick)]
    assert [r.success for r in results] == [True, False, True]
    seen: list[str] = []
    roots = {}
    for text in traces_file.read_text().splitlines():
        message = ExportTraceServiceRequest()
        json_format.Parse(json.dumps(hex_ids_to_base64(json.loads(text))), message)
        for resource_spans in message.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    seen.append(span.span_id.hex())
                    assert span.end_time_unix_nano >= span.start_time_unix_nano > 0
                    if span.name == "ScriptRunner":
                        roots[span.trace_id.hex()] = span
    assert len(seen) == len(set(seen))
    assert set(roots) == {r.trace_id for r in results}
    assert roots[results[1].trace_id].status.code == 2  # STATUS_CODE_ERROR
    assert not list(Path(str(traces_file) + ".live").glob("*.json"))


async def test_unwritable_traces_file_is_a_clear_permanent_failure(tmp_path: Path) -> None:
    """A traces file whose directory cannot exist fails permanently (not retried), with a
    message naming the path and how to change it."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    target = blocker / "traces.jsonl"
    async with await open_session(config(traces_file=target)) as session:
        tracer = session.tracer()
        with tracer.start_as_current_span("work") as root:
            pass
        report = await session.flush_trace(root.get_span_context().trace_id)
        stats = session.statistics().backends[0]
    (backend,) = report.backends
    assert backend.failed == 1
    assert str(target) in (backend.last_error or "")
    assert "AIORUNNER_TRACES_FILE" in (backend.last_error or "")
    assert stats.retries == 0


async def test_default_file_is_under_dot_aiorunner_of_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing configured, spans go to .aiorunner/traces.jsonl under the current
    directory, created on first write."""
    monkeypatch.delenv("AIORUNNER_TRACES_FILE")
    monkeypatch.chdir(tmp_path)
    async with await open_session(config()) as session:
        with session.tracer().start_as_current_span("work"):
            pass
        await session.flush()
    (line,) = read_lines(tmp_path / ".aiorunner" / "traces.jsonl")
    assert spans_of(line)[0]["name"] == "work"


async def test_rotation_keeps_the_configured_number_of_backups(
    traces_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past AIORUNNER_TRACES_FILE_MAX_BYTES the file is renamed .1 (older ones shift), and
    only AIORUNNER_TRACES_FILE_BACKUPS are kept; no line is ever cut."""
    monkeypatch.setenv("AIORUNNER_TRACES_FILE_MAX_BYTES", "3000")
    monkeypatch.setenv("AIORUNNER_TRACES_FILE_BACKUPS", "2")
    async with await open_session(config()) as session:
        tracer = session.tracer()
        names = []
        for index in range(40):
            with tracer.start_as_current_span(f"span-{index:02d}", attributes={"pad": "x" * 200}):
                pass
            names.append(f"span-{index:02d}")
            await session.flush()
    files = sorted(p.name for p in traces_file.parent.iterdir() if p.name.startswith("traces"))
    assert files == ["traces.jsonl", "traces.jsonl.1", "traces.jsonl.2"]
    kept: list[str] = []
    for suffix in (".2", ".1", ""):
        path = traces_file.with_name(traces_file.name + suffix)
        assert path.stat().st_size <= 3000
        kept.extend(spans_of(line)[0]["name"] for line in read_lines(path))
    assert kept == names[-len(kept) :]  # the newest spans, in order, with no gap
    assert len(kept) < len(names)


def test_bad_rotation_setting_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed AIORUNNER_TRACES_FILE_MAX_BYTES fails at session creation, naming it."""
    monkeypatch.setenv("AIORUNNER_TRACES_FILE_MAX_BYTES", "64MB")
    with pytest.raises(ConfigError, match="AIORUNNER_TRACES_FILE_MAX_BYTES='64MB'"):
        Session(config())


def test_processes_writing_one_file_never_interleave_lines(traces_file: Path) -> None:
    """Three processes appending to the same file at once (with rotation off): every line
    is whole, and every span of every process is there."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        from aiorunner._config import TracingConfig
        from aiorunner._export.session import Session

        async def main(tag):
            async with Session(TracingConfig(schedule_delay=60.0)) as session:
                tracer = session.tracer()
                for index in range(60):
                    with tracer.start_as_current_span(f"{tag}-{index}", attributes={"pad": "y" * 3000}):
                        pass
                    await session.flush()

        asyncio.run(main(sys.argv[1]))
        """
    )
    env = {**os.environ, "AIORUNNER_TRACES_FILE_MAX_BYTES": "0"}
    procs = [
        subprocess.Popen([sys.executable, "-c", script, tag], env=env) for tag in ("a", "b", "c")
    ]
    assert [proc.wait(timeout=120) for proc in procs] == [0, 0, 0]
    names = [spans_of(line)[0]["name"] for line in read_lines(traces_file)]
    assert sorted(names) == sorted(f"{tag}-{i}" for tag in "abc" for i in range(60))


def test_spans_are_drained_at_interpreter_exit(traces_file: Path) -> None:
    """A process that ends spans through the default session and exits without closing it
    still gets them written (the atexit drain; aiofiles could not write then)."""
    script = textwrap.dedent(
        """
        from aiorunner._export.session import get_default_session
        tracer = get_default_session().tracer()
        for index in range(3):
            with tracer.start_as_current_span(f"late-{index}"):
                pass
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    names = sorted(span["name"] for line in read_lines(traces_file) for span in spans_of(line))
    assert names == ["late-0", "late-1", "late-2"]


async def test_decoded_lines_can_be_replayed_into_another_backend(traces_file: Path) -> None:
    """Spans decoded from the file export again with their original ids and parents."""
    async with await open_session(config()) as session:
        tracer = session.tracer()
        with tracer.start_as_current_span("work"), tracer.start_as_current_span("step"):
            pass
        await session.flush()
    decoded = [span for line in traces_file.read_text().splitlines() for span in decode_line(line)]
    memory = InMemoryBackend()
    async with Session(config(), backends=[memory]) as replay:
        for span in decoded:
            replay._pipeline.on_end(span)  # as `aiorunner traces push` hands them over
        await replay.flush()
    by_name = {span.name: span for span in memory.get_finished_spans()}
    assert by_name["step"].parent.span_id == by_name["work"].context.span_id
    assert by_name["work"].context.trace_id == decoded[0].context.trace_id


# ------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB tmpfs mounted for the test (needs root and CAP_SYS_ADMIN, as in
    this project's CI; elsewhere the RLIMIT_FSIZE test below covers the same code)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _whole_lines(path: Path) -> list[str]:
    """The file's lines, each asserted to be a whole OTLP JSON request."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "the file ends in a fragment"
    lines = data.decode().splitlines()
    for text in lines:
        line_to_request(text)  # raises on a fragment or two requests glued together
    return lines


async def test_full_disk_fails_at_once_leaves_no_fragment_and_warns_once(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On a real full tmpfs a line that does not fit is cut short by the kernel, then
    ENOSPC: the file is truncated back (no fragment for the next line to be glued to),
    the export fails at once (no retry for the export timeout), the spans are counted
    as failed, and two such exports log one warning naming the path. Once there is room
    again, lines are written whole after the old ones."""
    caplog.set_level(logging.WARNING, logger="aiorunner.export")
    target = small_disk / "traces.jsonl"
    filler = small_disk / "filler"
    async with await open_session(config(traces_file=target)) as session:
        tracer = session.tracer()
        with tracer.start_as_current_span("fits"):
            pass
        await session.flush()
        before = target.read_bytes()
        free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
        filler.write_bytes(b"x" * (free - 4096))  # one page left: part of a line fits
        for index in range(2):
            with tracer.start_as_current_span(f"too-big-{index}", attributes={"pad": "y" * 9000}):
                pass
            await session.flush()
        stats = session.statistics().backends[0]
        assert target.read_bytes() == before
        filler.unlink()
        with tracer.start_as_current_span("after"):
            pass
        await session.flush()
    assert (stats.failed, stats.retries, stats.exported) == (2, 0, 1)
    assert "No space left on device" in (stats.last_error or "")
    warnings = [r.getMessage() for r in caplog.records if r.name == "aiorunner.export"]
    assert len(warnings) == 1, warnings
    assert str(target) in warnings[0]
    names = [spans_of(json.loads(text))[0]["name"] for text in _whole_lines(target)]
    assert names == ["fits", "after"]


def test_file_size_limit_short_write_is_truncated_back(traces_file: Path) -> None:
    """The same with RLIMIT_FSIZE (SIGXFSZ ignored, so the kernel's short write ends in
    EFBIG), which works without root: in a fresh process whose limit lets a line be
    written only in part, the export fails at once and is counted, the file keeps only
    whole lines, and one warning names the path."""
    script = textwrap.dedent(
        """
        import asyncio, json, os, resource, signal, sys
        from aiorunner._config import TracingConfig
        from aiorunner._export.session import Session

        async def main():
            async with Session(TracingConfig(schedule_delay=60.0, export_timeout=10.0)) as s:
                tracer = s.tracer()
                with tracer.start_as_current_span("fits"):
                    pass
                await s.flush()
                size = os.path.getsize(os.environ["AIORUNNER_TRACES_FILE"])
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (size + 2000, resource.RLIM_INFINITY))
                for index in range(2):
                    with tracer.start_as_current_span(f"big-{index}", attributes={"pad": "y" * 9000}):
                        pass
                    await s.flush()
                b = s.statistics().backends[0]
                print(json.dumps([b.exported, b.failed, b.retries, size]))

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    exported, failed, retries, size = json.loads(done.stdout)
    assert (exported, failed, retries) == (1, 2, 0)
    assert traces_file.stat().st_size == size
    assert [spans_of(json.loads(t))[0]["name"] for t in _whole_lines(traces_file)] == ["fits"]
    warnings = [line for line in done.stderr.splitlines() if "could not export" in line]
    assert len(warnings) == 1, done.stderr
    assert str(traces_file) in warnings[0] and "File too large" in warnings[0]


async def test_a_fragment_left_by_a_crash_does_not_swallow_the_next_line(
    traces_file: Path,
) -> None:
    """A file ending in half a line (a writer killed mid-write) gets a newline before the
    next line, which is then whole and readable on its own (not glued to the fragment)."""
    traces_file.write_text('{"resourceSpans":[{"resource":{"attri')
    async with await open_session(config()) as session:
        with session.tracer().start_as_current_span("after-crash"):
            pass
        await session.flush()
    fragment, text = traces_file.read_text().splitlines()
    assert fragment == '{"resourceSpans":[{"resource":{"attri'
    assert spans_of(json.loads(text))[0]["name"] == "after-crash"
