"""Python ``logging`` inside the script as log records (issue 18 item 5), against real
scripts and real receivers: once the script configures logging, each record arrives once
(its stderr or stdout line is not a second record), with its level, its logger as the
scope and the script's own current span; a script that never configures logging loads
nothing for it; a flood stays bounded; and records spooled while the collector was down
are delivered once by the next process (#17)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from receivers import OtlpGrpcReceiver, decode_otlp_logs, parse_otlp_logs_json
from runs import fast_retry_config as _config
from runs import run_in_session as _run

from aiorunner._run import logfeed

ETL = r"""
import logging
from opentelemetry import trace

logging.basicConfig(level=logging.INFO)
log = logging.getLogger("etl.load")
with trace.get_tracer("etl").start_as_current_span("load"):
    log.info("loading %d rows", 3)
    log.warning("row 7 has no date")
    try:
        {}["date"]
    except KeyError:
        log.error("load failed", exc_info=True)
print("done")
"""


def _jsonl_records(path: Path):
    return [
        record
        for line in path.read_bytes().splitlines()
        for record in decode_otlp_logs(parse_otlp_logs_json(line))
    ]


@pytest.fixture
def run_logs(monkeypatch):
    """The RunLogs of the runs made in the test (the real ones, observed)."""
    made: list[logfeed.RunLogs] = []
    original = logfeed.RunLogs.__init__

    def observe(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(logfeed.RunLogs, "__init__", observe)
    return made


@pytest.mark.parametrize("where", ["otlp", "jsonl"])
async def test_logging_records_arrive_once_with_level_logger_and_the_scripts_span(
    make_script, otlp_grpc_receiver, traces_file, spans_of, where
):
    """basicConfig, a logger "etl.load" logging INFO, WARNING and ERROR with exc_info
    inside the script's own span: three records, each once (their stderr lines, the
    traceback included, are not records again), severity 9/13/17 with the level names,
    the logger as the instrumentation scope, the trace and span id of the script's
    "load" span, code.* and exception.* attributes; the script's stderr still shows the
    lines. Over OTLP/gRPC and in logs.jsonl alike."""
    script = make_script(ETL)
    if where == "otlp":
        config = _config(exporter_type="otlp", collector_endpoint=otlp_grpc_receiver.endpoint)
    else:
        config = _config(exporter_type="jsonl")
    result = await _run(script, config)
    assert result.success and result.export.ok, result.export.describe()
    assert "WARNING:etl.load:row 7 has no date" in result.stderr
    assert "KeyError: 'date'" in result.stderr
    assert result.export.log_records == 4
    if where == "otlp":
        spans = await otlp_grpc_receiver.wait_for_spans(8)
        (load,) = [s for s in spans if s.name == "load"]
        load_span_id = load.span_id
        records = await otlp_grpc_receiver.wait_for_logs(4)
    else:
        (load,) = [s for s in spans_of(result.trace_id) if s["name"] == "load"]
        load_span_id = load["spanId"]
        records = _jsonl_records(traces_file.parent / "logs.jsonl")
    assert len(records) == 4, [r.body for r in records]
    assert Counter(r.body for r in records) == {
        "loading 3 rows": 1,
        "row 7 has no date": 1,
        "load failed": 1,
        "done": 1,
    }
    logged = [r for r in records if r.scope == "etl.load"]
    assert [(r.body, r.severity_number, r.severity_text) for r in logged] == [
        ("loading 3 rows", 9, "INFO"),
        ("row 7 has no date", 13, "WARNING"),
        ("load failed", 17, "ERROR"),
    ]
    for record in logged:
        assert (record.trace_id, record.span_id) == (result.trace_id, load_span_id)
        assert record.flags & 1
        assert "log.iostream" not in record.attributes
        assert record.attributes["code.file.path"] == str(script)
        assert record.attributes["code.function.name"] == "<module>"
        assert isinstance(record.attributes["code.line.number"], int)
        assert record.resource["service.name"] == "aiorunner"
    failed = logged[2]
    assert failed.attributes["exception.type"] == "KeyError"
    assert failed.attributes["exception.message"] == "'date'"
    assert failed.attributes["exception.stacktrace"].endswith("KeyError: 'date'")
    assert "exception.type" not in logged[0].attributes
    (done,) = [r for r in records if r.body == "done"]
    assert done.scope == "aiorunner.output" and done.attributes["log.iostream"] == "stdout"


async def test_logging_outside_any_span_gets_execute_script(make_script, otlp_grpc_receiver):
    """A script that logs without tracing: its records carry the run's execute_script
    span (the default parent of everything in the run), and it never loads
    OpenTelemetry for that."""
    script = make_script(
        """
        import logging, sys
        logging.basicConfig()
        logging.getLogger("quiet").error("no span here")
        print(any(m.startswith("opentelemetry") for m in sys.modules))
        """
    )
    config = _config(exporter_type="otlp", collector_endpoint=otlp_grpc_receiver.endpoint)
    result = await _run(script, config)
    assert result.success and result.export.ok, result.export.describe()
    assert result.stdout.strip() == "False"
    spans = await otlp_grpc_receiver.wait_for_spans(7)
    (exec_span,) = [s for s in spans if s.name == "execute_script"]
    records = await otlp_grpc_receiver.wait_for_logs(2)
    (record,) = [r for r in records if r.scope == "quiet"]
    assert (record.trace_id, record.span_id) == (result.trace_id, exec_span.span_id)
    assert record.body == "no span here" and record.severity_number == 17
    assert len(records) == 2, [r.body for r in records]


async def test_a_script_that_never_configures_logging_loads_nothing_for_it(
    make_script, traces_file
):
    """No logging import by the bootstrap: a script that never imports logging has no
    ``logging`` module; one that imports it and logs through an unconfigured logger
    (Python's last-resort handler writes the line) loads no module of ours for it, and
    its stderr line is a record read from the output, as any line is."""
    never = make_script(
        "import sys\nprint('logging' in sys.modules, "
        "sorted(m for m in sys.modules if m.startswith('_aiorunner')))\n",
        name="never.py",
    )
    result = await _run(never, _config(exporter_type="jsonl"))
    assert result.success, result.error
    assert result.stdout.strip() == "False []"
    unconfigured = make_script(
        """
        import logging, sys
        logging.getLogger("lib").warning("nobody configured me")
        print(sorted(m for m in sys.modules if m.startswith("_aiorunner")))
        """,
        name="unconfigured.py",
    )
    result = await _run(unconfigured, _config(exporter_type="jsonl"))
    assert result.success, result.error
    assert result.stdout.strip() == "[]"
    records = _jsonl_records(traces_file.parent / "logs.jsonl")
    (line,) = [r for r in records if r.body == "nobody configured me"]
    assert line.scope == "aiorunner.output" and line.attributes["log.iostream"] == "stderr"


async def test_logging_to_stdout_and_to_a_second_handler(make_script, traces_file):
    """Logging configured to write to stdout with a timestamped format, and a logger with
    a second handler on stderr: each record is one record (the stdout line and the
    stderr line it also made are not records), and a print() between them still is."""
    script = make_script(
        """
        import logging, sys
        logging.basicConfig(
            stream=sys.stdout, level=logging.DEBUG,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        app = logging.getLogger("app")
        app.addHandler(logging.StreamHandler(sys.stderr))
        app.debug("starting")
        print("a plain print")
        app.critical("out of disk")
        """
    )
    result = await _run(script, _config(exporter_type="jsonl"))
    assert result.success, result.error
    assert " CRITICAL app: out of disk" in result.stdout
    assert "out of disk" in result.stderr
    records = _jsonl_records(traces_file.parent / "logs.jsonl")
    got = sorted((r.scope, r.body, r.severity_number, r.severity_text) for r in records)
    assert got == [
        ("aiorunner.output", "a plain print", 9, "INFO"),
        ("app", "out of disk", 21, "CRITICAL"),
        ("app", "starting", 5, "DEBUG"),
    ]


async def test_a_traceback_printed_while_logging_one_is_two_records(make_script, traces_file):
    """A script's first handler prints a traceback itself (the ValueError being logged,
    chained to a KeyError) while the record is being handled, after the record was
    announced and before the stream handler writes the logged traceback: the printed
    one stays one whole record read from stderr, although it starts with the very lines
    the logged one has; the logged one is the logging record, its lines matched only as
    the block they were written as."""
    script = make_script(
        """
        import logging, traceback

        class PrintsAnother(logging.Handler):
            def emit(self, record):
                try:
                    {}["k"]
                except KeyError:
                    traceback.print_exc()

        logging.basicConfig(handlers=[PrintsAnother(), logging.StreamHandler()])
        try:
            int("x")
        except ValueError:
            logging.getLogger("job").exception("could not parse")
        """
    )
    result = await _run(script, _config(exporter_type="jsonl"))
    assert result.success, result.error
    assert result.stderr.count("Traceback (most recent call last):") == 3
    records = _jsonl_records(traces_file.parent / "logs.jsonl")
    assert len(records) == 2, [r.body for r in records]
    # The printed traceback is held until its end is known: it may come second.
    (printed,) = [r for r in records if r.scope == "aiorunner.output"]
    (logged,) = [r for r in records if r.scope == "job"]
    assert printed.severity_number == 17
    assert printed.body.startswith("Traceback (most recent call last):")
    assert "During handling of the above exception" in printed.body
    assert printed.body.endswith("KeyError: 'k'")
    assert (logged.scope, logged.body, logged.severity_number) == ("job", "could not parse", 17)
    assert logged.attributes["exception.type"] == "ValueError"


async def test_logging_into_a_replaced_sys_stderr_announces_no_line(
    make_script, traces_file, run_logs
):
    """A script that swapped sys.stderr for a StringIO before configuring logging: its
    handler writes nowhere aiorunner reads, so the record is sent with no line to look
    for (nothing waits to be matched), and a line it then writes to the real stderr
    with the same text is a record of the output."""
    script = make_script(
        """
        import io, logging, sys
        sys.stderr = io.StringIO()
        logging.basicConfig(format="%(message)s")
        logging.getLogger("hidden").warning("same text")
        sys.__stderr__.write("same text\\n")
        """
    )
    result = await _run(script, _config(exporter_type="jsonl"))
    assert result.success, result.error
    records = _jsonl_records(traces_file.parent / "logs.jsonl")
    assert sorted((r.scope, r.body) for r in records) == [
        ("aiorunner.output", "same text"),
        ("hidden", "same text"),
    ]
    (logs,) = run_logs
    assert (logs.script_records, logs.peak_expected, logs.matched) == (1, 0, 0)


async def test_a_flood_of_logging_calls_stays_bounded(make_script, otlp_grpc_receiver, run_logs):
    """100,000 logging calls, to a file (so no pipe slows the script down) and every
    tenth also to stderr, through a logs queue of 64 records: the channel's reader
    waits for room as the pipe readers do (the script blocks on its writes), so the
    records waiting in the runner stay few (about a socket buffer's worth; 52,000 of
    them when the channel was read without waiting), the announced lines not read back
    yet stay within MAX_MATCH_LINES, every record arrives once and in order, and none
    of the 10,000 stderr lines is made a record."""
    script = make_script(
        """
        import logging, sys
        logging.basicConfig(filename="app.log", format="%(levelname)s %(message)s")
        log = logging.getLogger("flood")
        loud = logging.StreamHandler(sys.stderr)
        loud.setLevel(logging.ERROR)
        log.addHandler(loud)
        for i in range(100000):
            log.log(logging.ERROR if i % 10 == 0 else logging.WARNING, "row %d", i)
        """
    )
    config = _config(
        exporter_type="otlp",
        collector_endpoint=otlp_grpc_receiver.endpoint,
        logs_max_queue_size=64,
        logs_batch_size=64,
    )
    result = await _run(script, config, passthrough=False, cwd=str(script.parent))
    assert result.success and result.export.ok, result.export.describe()
    assert result.export.log_records == 100000
    assert len((script.parent / "app.log").read_text().splitlines()) == 100000
    records = await otlp_grpc_receiver.wait_for_logs(100000, timeout=60)
    assert [r.body for r in records] == [f"row {i}" for i in range(100000)]
    assert {r.scope for r in records} == {"flood"}
    assert [r.severity_number for r in records[:11]] == [17] + [13] * 9 + [17]
    (logs,) = run_logs
    assert (logs.script_records, logs.matched, logs.unmatched) == (100000, 10000, 0)
    assert logs.peak_waiting <= 10000, logs.peak_waiting
    assert logs.peak_expected <= logfeed.MAX_MATCH_LINES


async def test_the_record_cap_counts_logging_and_output_together(
    make_script, traces_file, monkeypatch
):
    """AIORUNNER_LOG_MAX_RECORDS applies to the sum: 20,000 logging records and 10
    printed lines with a cap of 1,000 send 1,000 and count the other 19,010, each once
    (a logging record past the cap does not come back as its stderr line)."""
    monkeypatch.setenv("AIORUNNER_LOG_MAX_RECORDS", "1000")
    script = make_script(
        """
        import logging
        logging.basicConfig()
        for i in range(10):
            print("printed", i)
        for i in range(20000):
            logging.getLogger("cap").error("logged %d", i)
        """
    )
    result = await _run(script, _config(exporter_type="jsonl"), passthrough=False)
    assert result.success and result.export.ok, result.export.describe()
    assert (result.export.log_records, result.export.log_records_over_cap) == (1000, 19010)
    assert len(_jsonl_records(traces_file.parent / "logs.jsonl")) == 1000


async def test_a_malformed_or_unasked_log_message_is_discarded_and_counted(
    make_script, traces_file, monkeypatch
):
    """The channel is the script's to write to: a log message that does not read as one
    (a time that is not a number, an unknown stream) is discarded and counted in
    RunResult.export.inscript, and the records after it still arrive; with logs off, a
    log message nobody asked for is discarded the same way and the bootstrap loads
    nothing for the script's logging."""
    script = make_script(
        """
        import logging, sys
        logging.basicConfig()
        channel = sys.modules["_aiorunner_inscript"].channel()
        channel._write(b'{"lg": {"tm": "soon", "lv": 30, "ln": "W", "n": "x", "b": "y"}}')
        channel._write(b'{"lg": {"tm": 1, "lv": 30, "ln": "W", "n": "x", "b": "y", "w": [["z", "y"]]}}')
        logging.getLogger("after").warning("still here")
        """
    )
    result = await _run(script, _config(exporter_type="jsonl"))
    assert result.success, result.error + result.stderr
    assert result.export.inscript.dropped_messages == 2
    assert not result.export.ok  # something the script sent was lost, and says so
    records = _jsonl_records(traces_file.parent / "logs.jsonl")
    assert [(r.scope, r.body) for r in records] == [("after", "still here")]

    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "none")
    unasked = make_script(
        """
        import logging, sys
        from opentelemetry import trace  # loads the channel's writer
        logging.basicConfig()
        sys.modules["_aiorunner_inscript"].channel().send_log(
            {"tm": 1, "lv": 30, "ln": "WARNING", "n": "x", "b": "unasked"}
        )
        print("_aiorunner_logging" in sys.modules)
        """,
        name="unasked.py",
    )
    result = await _run(unasked, _config(exporter_type="jsonl"))
    assert result.success, result.error + result.stderr
    assert result.stdout.strip() == "False"
    assert result.export.inscript.dropped_messages == 1


# ------------------------------------------------------------ spooled, then delivered


def _aiorunner(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiorunner", *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _wait_for_logs(receiver: OtlpGrpcReceiver, n: int, timeout: float = 10.0) -> list:
    deadline = time.monotonic() + timeout
    while len(receiver.logs) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return receiver.logs


def _spooled_logs(spool_dir: Path) -> list:
    return [
        record
        for path in spool_dir.rglob("logs.*.jsonl")
        for line in path.read_bytes().splitlines()
        for record in decode_otlp_logs(parse_otlp_logs_json(line))
    ]


def test_log_records_spooled_while_the_collector_is_down_arrive_once(tmp_path: Path) -> None:
    """Run 1 finds the collector's port refusing connections: its log records (output
    lines and logging records alike) are spooled beside its spans. The collector then
    starts on that port; run 2 (another process) delivers run 1's records and its own,
    each once, and the spool keeps no records."""
    spool_dir = Path(os.environ["AIORUNNER_SPOOL_DIR"])
    scripts = []
    for name in ("one", "two"):
        path = tmp_path / f"{name}.py"
        path.write_text(
            "import logging\n"
            "logging.basicConfig()\n"
            f"print('printed by {name}')\n"
            f"logging.getLogger('{name}').warning('logged by {name}')\n"
        )
        scripts.append(str(path))
    receiver = OtlpGrpcReceiver()
    port = receiver.reserve_port()  # bound, not listening: refused
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    }
    try:
        first = _aiorunner("run", scripts[0], env=env, cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        spooled = _spooled_logs(spool_dir)
        assert sorted((r.scope, r.body) for r in spooled) == [
            ("aiorunner.output", "printed by one"),
            ("one", "logged by one"),
        ]
        receiver.start()
        second = _aiorunner("run", scripts[1], env=env, cwd=tmp_path)
        assert second.returncode == 0, second.stderr
        records = _wait_for_logs(receiver, 4)
        receiver.wait_for_spans_sync(14, timeout=10)
    finally:
        receiver.stop()
    assert Counter((r.scope, r.body) for r in records) == {
        ("aiorunner.output", "printed by one"): 1,
        ("one", "logged by one"): 1,
        ("aiorunner.output", "printed by two"): 1,
        ("two", "logged by two"): 1,
    }
    assert _spooled_logs(spool_dir) == []
