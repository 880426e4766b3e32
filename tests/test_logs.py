"""The script's output as OpenTelemetry log records (issue 18), against real receivers:
ids tie records to execute_script, stream and severity, one record per traceback, every
one of 50,000 lines, a 10 MB line cut and counted, the record cap, a shell script, the
jsonl file parsed strictly as ExportLogsServiceRequest lines, selection and turning off."""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys

import anyio
import anyio.to_thread
import pytest
from receivers import parse_otlp_logs_json
from runs import fast_retry_config as _config
from runs import run_in_session as _run

from aiorunner import ScriptRunner, Session, TracingConfig
from aiorunner._exceptions import ConfigError

SCRIPT = r"""
import sys, logging
print("hello out")
print("WARNING: careful", file=sys.stderr)
logging.basicConfig()
logging.getLogger("etl").error("bad row")
try:
    1 / 0
except ZeroDivisionError:
    import traceback
    traceback.print_exc()
print('{"level": "warn", "msg": "json says", "rows": 3}')
sys.stdout.write("no newline at the end")
"""


def _check_script_records(records, result, exec_span) -> None:
    by_body = {r.body: r for r in records}
    hello = by_body["hello out"]
    assert hello.attributes["log.iostream"] == "stdout"
    assert (hello.severity_number, hello.severity_text) == (9, "INFO")
    assert hello.trace_id == result.trace_id
    assert hello.span_id == exec_span.span_id
    assert hello.flags & 1  # sampled
    assert hello.scope == "aiorunner.output"
    assert hello.resource["service.name"] == exec_span.resource["service.name"]
    warning = by_body["WARNING: careful"]
    assert warning.attributes["log.iostream"] == "stderr"
    assert warning.severity_number == 13
    # Python logging, once configured, comes through the bootstrap: its logger is the
    # scope, and its stderr line "ERROR:etl:bad row" is not a second record.
    bad_row = by_body["bad row"]
    assert (bad_row.scope, bad_row.severity_number, bad_row.severity_text) == ("etl", 17, "ERROR")
    assert (bad_row.trace_id, bad_row.span_id) == (result.trace_id, exec_span.span_id)
    assert "log.iostream" not in bad_row.attributes
    assert "ERROR:etl:bad row" not in by_body
    (traceback,) = [r for r in records if r.body.startswith("Traceback")]
    assert traceback.severity_number == 17
    assert traceback.body.splitlines()[-1] == "ZeroDivisionError: division by zero"
    assert "1 / 0" in traceback.body
    json_line = by_body["json says"]
    assert json_line.severity_number == 13
    assert json_line.attributes["rows"] == 3
    assert by_body["no newline at the end"].attributes["log.iostream"] == "stdout"
    assert len(records) == 6, [r.body for r in records]


async def test_records_reach_otlp_grpc_tied_to_execute_script(make_script, otlp_grpc_receiver):
    """Over OTLP/gRPC (LogsService): one record per line, the traceback as one ERROR
    record, severity from what the line says, log.iostream, and the trace id, span id
    and flags of the run's execute_script span, with the resource of its spans."""
    script = make_script(SCRIPT)
    config = _config(exporter_type="otlp", collector_endpoint=otlp_grpc_receiver.endpoint)
    result = await _run(script, config)
    assert result.success and result.export.ok, result.export.describe()
    assert result.export.log_records == 6
    assert [b.exported for b in result.export.logs] == [6]
    spans = await otlp_grpc_receiver.wait_for_spans(7)
    (exec_span,) = [s for s in spans if s.name == "execute_script"]
    assert exec_span.attributes["aiorunner.log.records"] == 6
    records = await otlp_grpc_receiver.wait_for_logs(6)
    _check_script_records(records, result, exec_span)


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
async def test_records_reach_otlp_http_v1_logs(
    make_script, otlp_http_receiver, monkeypatch, protocol
):
    """Over OTLP/HTTP the records are POSTed to /v1/logs of the base endpoint, as
    protobuf or as strict OTLP/JSON (hex ids, integer enums: the receiver refuses
    anything else)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_http_receiver.endpoint)
    script = make_script(SCRIPT)
    result = await _run(script, _config(exporter_type="otlp"))
    assert result.success and result.export.ok, result.export.describe()
    spans = await otlp_http_receiver.wait_for_spans(7)
    (exec_span,) = [s for s in spans if s.name == "execute_script"]
    records = await otlp_http_receiver.wait_for_logs(6)
    assert {r.path for r in otlp_http_receiver.log_requests} == {"/v1/logs"}
    _check_script_records(records, result, exec_span)


async def test_logs_endpoint_variable_wins_for_logs_only(
    make_script, otlp_grpc_receiver, otlp_http_receiver, monkeypatch
):
    """OTEL_EXPORTER_OTLP_LOGS_* apply to the records and not to the spans: spans go to
    the generic endpoint (gRPC), records to the logs one (HTTP, used as is)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_grpc_receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/protobuf")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", otlp_http_receiver.endpoint + "/v1/logs")
    result = await _run(make_script("print('to the logs endpoint')"), _config(exporter_type="otlp"))
    assert result.success and result.export.ok, result.export.describe()
    (record,) = await otlp_http_receiver.wait_for_logs(1)
    assert record.body == "to the logs endpoint"
    assert await otlp_grpc_receiver.wait_for_spans(7)
    assert otlp_grpc_receiver.logs == [] and otlp_http_receiver.spans == []


async def test_fifty_thousand_lines_all_arrive_through_a_tiny_queue(
    make_script, otlp_grpc_receiver
):
    """50,000 lines written as fast as the script can, through a logs queue of 64
    records: the run's pipe reader waits for room (the script blocks on its write)
    instead of dropping, so every line arrives, in order, and nothing is counted lost."""
    script = make_script("import sys\nfor i in range(50000):\n    print(f'line {i}')\n")
    config = _config(
        exporter_type="otlp",
        collector_endpoint=otlp_grpc_receiver.endpoint,
        logs_max_queue_size=64,
        logs_batch_size=64,
    )
    result = await _run(script, config)
    assert result.success and result.export.ok, result.export.describe()
    assert result.export.log_records == 50000
    assert result.export.logs_dropped == 0
    assert result.export.logs[0].exported == 50000
    records = await otlp_grpc_receiver.wait_for_logs(50000, timeout=30)
    assert [r.body for r in records] == [f"line {i}" for i in range(50000)]


async def test_a_ten_megabyte_line_is_cut_and_counted(make_script, otlp_grpc_receiver):
    """A 10 MB line becomes one record of 16 KiB; aiorunner.log.truncated_bytes says how
    many bytes were left out, and the line after it is a record of its own."""
    script = make_script(
        "import sys\nsys.stdout.write('x' * (10 * 1024 * 1024) + '\\n')\nprint('after')\n"
    )
    config = _config(exporter_type="otlp", collector_endpoint=otlp_grpc_receiver.endpoint)
    result = await _run(script, config)
    assert result.success and result.export.ok, result.export.describe()
    big, after = await otlp_grpc_receiver.wait_for_logs(2)
    assert big.body == "x" * 16384
    assert big.attributes["aiorunner.log.truncated_bytes"] == 10 * 1024 * 1024 - 16384
    assert after.body == "after" and "aiorunner.log.truncated_bytes" not in after.attributes


async def test_records_past_the_cap_are_counted_not_sent(
    make_script, otlp_grpc_receiver, monkeypatch
):
    """AIORUNNER_LOG_MAX_RECORDS=10: the first 10 lines are sent, the other 15 counted
    on execute_script (aiorunner.log.dropped_records) and in RunResult.export, which
    stays ok (a configured limit, not a failure)."""
    monkeypatch.setenv("AIORUNNER_LOG_MAX_RECORDS", "10")
    script = make_script("for i in range(25):\n    print(i)\n")
    config = _config(exporter_type="otlp", collector_endpoint=otlp_grpc_receiver.endpoint)
    result = await _run(script, config)
    assert result.success and result.export.ok, result.export.describe()
    assert (result.export.log_records, result.export.log_records_over_cap) == (10, 15)
    assert result.to_dict()["export"]["logs"]["over_cap"] == 15
    spans = await otlp_grpc_receiver.wait_for_spans(7)
    (exec_span,) = [s for s in spans if s.name == "execute_script"]
    assert exec_span.attributes["aiorunner.log.dropped_records"] == 15
    records = await otlp_grpc_receiver.wait_for_logs(10)
    assert [r.body for r in records] == [str(i) for i in range(10)]


def test_a_bad_record_cap_is_a_config_error(monkeypatch):
    """AIORUNNER_LOG_MAX_RECORDS is ours: a bad value raises ConfigError naming it."""
    monkeypatch.setenv("AIORUNNER_LOG_MAX_RECORDS", "lots")
    with pytest.raises(ConfigError, match="AIORUNNER_LOG_MAX_RECORDS"):
        TracingConfig().resolve()


def test_bad_blrp_values_warn_and_use_the_defaults(monkeypatch, caplog):
    """A bad OTEL_BLRP_* value is one WARNING naming the variable and the fix; the
    default is used."""
    caplog.set_level(logging.WARNING, logger="aiorunner")
    monkeypatch.setenv("OTEL_BLRP_MAX_QUEUE_SIZE", "-3")
    monkeypatch.setenv("OTEL_BLRP_SCHEDULE_DELAY", "soon")
    config = TracingConfig().resolve()
    assert (config.logs_max_queue_size, config.logs_schedule_delay) == (2048, 1.0)
    assert "OTEL_BLRP_MAX_QUEUE_SIZE" in caplog.text and "OTEL_BLRP_SCHEDULE_DELAY" in caplog.text
    assert {p.variable for p in config.ignored} >= {
        "OTEL_BLRP_MAX_QUEUE_SIZE",
        "OTEL_BLRP_SCHEDULE_DELAY",
    }


async def test_a_shell_script_output_is_records_too(make_script, otlp_grpc_receiver):
    """Any language: a shell script's lines are records, its stderr levels read."""
    script = make_script(
        "#!/bin/sh\necho 'from sh'\necho 'ERROR: disk full' >&2\necho '[warn] low' >&2\n",
        name="job.sh",
        mode=0o755,
    )
    config = _config(exporter_type="otlp", collector_endpoint=otlp_grpc_receiver.endpoint)
    result = await _run(script, config)
    assert result.success and result.export.ok, result.export.describe()
    records = await otlp_grpc_receiver.wait_for_logs(3)
    got = sorted((r.body, r.severity_number, r.attributes["log.iostream"]) for r in records)
    assert got == [
        ("ERROR: disk full", 17, "stderr"),
        ("[warn] low", 13, "stderr"),
        ("from sh", 9, "stdout"),
    ]
    assert {r.trace_id for r in records} == {result.trace_id}


async def test_jsonl_logs_file_parses_strictly(make_script, traces_file):
    """The default jsonl backend writes logs.jsonl beside traces.jsonl: every line is an
    ExportLogsServiceRequest in strict OTLP/JSON (protobuf's parser, after hex ids are
    turned to base64; integer enums), holding the run's records."""
    result = await _run(make_script(SCRIPT), _config(exporter_type="jsonl"))
    assert result.success and result.export.ok, result.export.describe()
    logs_file = traces_file.parent / "logs.jsonl"
    lines = logs_file.read_bytes().splitlines()
    assert lines
    bodies = []
    for line in lines:
        request = parse_otlp_logs_json(line)  # raises on anything but strict OTLP/JSON
        for resource_logs in request.resource_logs:
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    assert record.trace_id.hex() == result.trace_id
                    bodies.append(record.body.string_value)
    assert "hello out" in bodies and len(bodies) == 6
    raw = json.loads(lines[0])
    record = raw["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    assert isinstance(record["severityNumber"], int) and len(record["traceId"]) == 32


async def test_logs_file_override(make_script, tmp_path, monkeypatch):
    """AIORUNNER_LOGS_FILE puts the records elsewhere."""
    target = tmp_path / "elsewhere" / "out.jsonl"
    monkeypatch.setenv("AIORUNNER_LOGS_FILE", str(target))
    result = await _run(make_script("print('x')"), _config(exporter_type="jsonl"))
    assert result.success and result.export.ok
    (line,) = target.read_bytes().splitlines()
    assert parse_otlp_logs_json(line).resource_logs[0].scope_logs[0].log_records[0].body


@pytest.mark.parametrize("how", ["argument", "env"])
async def test_logs_turned_off(make_script, traces_file, monkeypatch, how):
    """TracingConfig(logs=False) or OTEL_LOGS_EXPORTER=none: no records, no logs file,
    the spans as before."""
    overrides: dict[str, object] = {"exporter_type": "jsonl"}
    if how == "argument":
        overrides["logs"] = False
    else:
        monkeypatch.setenv("OTEL_LOGS_EXPORTER", "none")
    result = await _run(make_script("print('quiet')"), _config(**overrides))
    assert result.success and result.export.ok
    assert result.export.logs == () and result.export.log_records == 0
    assert traces_file.exists()
    assert not (traces_file.parent / "logs.jsonl").exists()


async def test_otel_logs_exporter_picks_other_backends(
    make_script, traces_file, capsys, monkeypatch
):
    """OTEL_LOGS_EXPORTER=console: records are printed (not written to logs.jsonl),
    while spans still go to the traces' backend."""
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "console")
    result = await _run(
        make_script("print('shown on the console')"), _config(exporter_type="jsonl")
    )
    assert result.success and result.export.ok, result.export.describe()
    assert [b.name for b in result.export.logs] == ["console"]
    err = capsys.readouterr().err
    assert "[aiorunner] log" in err and "shown on the console" in err
    assert traces_file.exists() and not (traces_file.parent / "logs.jsonl").exists()


async def test_an_opentelemetry_log_exporter_works_by_its_name(
    make_script, otlp_grpc_receiver, monkeypatch
):
    """An exporter of OpenTelemetry's opentelemetry_logs_exporter group (the SDK's own
    OTLP/gRPC LogExporter, sync, taking SDK records) works by its name: the records are
    converted and sent from a worker thread."""
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "otlp_proto_grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", otlp_grpc_receiver.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_INSECURE", "true")
    result = await _run(
        make_script("print('via the sdk exporter')"), _config(exporter_type="jsonl")
    )
    assert result.success and result.export.ok, result.export.describe()
    (record,) = await otlp_grpc_receiver.wait_for_logs(1)
    assert record.body == "via the sdk exporter"
    assert record.trace_id == result.trace_id
    assert record.attributes["log.iostream"] == "stdout"


async def test_a_backend_without_logs_says_so_once(make_script, caplog):
    """A backend without export_logs keeps exporting spans and gets no records; the
    session says once that it takes none."""
    from aiorunner.backend import ExportResult

    class SpansOnly:
        """A third-party backend written before log records existed."""

        name = "spans-only"

        def __init__(self) -> None:
            self.spans: list[object] = []

        async def export(self, spans, *, timeout):
            self.spans.extend(spans)
            return ExportResult.success()

        async def force_flush(self, *, timeout):
            return True

        async def shutdown(self, *, timeout):
            return None

    caplog.set_level(logging.WARNING, logger="aiorunner")
    backend = SpansOnly()
    make = functools.partial(Session, _config(), backends=[backend])
    async with await anyio.to_thread.run_sync(make) as session:
        result = await ScriptRunner(str(make_script("print(1)")), session=session).run()
    assert result.success and result.export.ok
    assert len(backend.spans) == 7
    assert result.export.logs == ()
    assert "'spans-only' takes no log records" in caplog.text


async def test_the_in_memory_test_backend_keeps_records_and_points(make_script):
    """aiorunner.testing.InMemoryBackend takes log records and metric points besides
    spans, so an application's tests can assert on a run's output and resource use."""
    from aiorunner.testing import InMemoryBackend

    backend = InMemoryBackend()
    make = functools.partial(Session, _config(), backends=[backend])
    async with await anyio.to_thread.run_sync(make) as session:
        script = make_script("import sys\nprint('out')\nprint('WARNING: low', file=sys.stderr)")
        result = await ScriptRunner(str(script), session=session).run()
    assert result.success and result.export.ok
    records = backend.get_log_records()
    assert [(r.body, r.severity_number) for r in records] == [("out", 9), ("WARNING: low", 13)]
    execute = next(s for s in backend.get_finished_spans() if s.name == "execute_script")
    assert {r.span_id for r in records} == {execute.context.span_id}
    names = {p.name for p in backend.get_metric_points()}
    assert "process.cpu.time" in names and "aiorunner.run.duration" in names
    backend.clear()
    assert backend.get_log_records() == () and backend.get_metric_points() == ()


async def test_job_identity_on_records(make_script, traces_file):
    """Under run_many each record carries the job's name and attempt (aiorunner.job,
    aiorunner.attempt), as the run's root span does."""
    from aiorunner import Job, run_many

    script = make_script("print('from a job')")
    (result,) = await run_many(
        [Job(str(script), name="extract")], config=_config(exporter_type="jsonl")
    )
    assert result.success
    line = (traces_file.parent / "logs.jsonl").read_bytes().splitlines()[0]
    record = parse_otlp_logs_json(line).resource_logs[0].scope_logs[0].log_records[0]
    attributes = {kv.key: kv.value for kv in record.attributes}
    assert attributes["aiorunner.job"].string_value == "extract"
    assert attributes["aiorunner.attempt"].int_value == 1


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiorunner", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
    )


def test_cli_no_logs_and_logs_exporter_flag(make_script, traces_file):
    """`aiorunner run --no-logs` writes no logs.jsonl; `--logs_exporter console` (the
    opentelemetry-instrument style flag of OTEL_LOGS_EXPORTER) prints the records."""
    script = str(make_script("print('cli line')"))
    logs_file = traces_file.parent / "logs.jsonl"
    proc = _cli("run", "--no-logs", script)
    assert proc.returncode == 0, proc.stderr
    assert traces_file.exists() and not logs_file.exists()
    proc = _cli("run", "--logs_exporter", "console", script)
    assert proc.returncode == 0, proc.stderr
    assert "[aiorunner] log" in proc.stderr and "cli line" in proc.stderr
    assert not logs_file.exists()
    proc = _cli("run", script)
    assert proc.returncode == 0, proc.stderr
    (line,) = logs_file.read_bytes().splitlines()
    assert parse_otlp_logs_json(line).resource_logs[0].scope_logs[0].log_records[0].body
