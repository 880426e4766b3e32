"""The log records seen locally (issue 18 item 6): `traces show -v` prints each span's
log lines under it, `--logs` only the logs, the HTML page shows them in the span's
details with errors highlighted, `traces push` replays them; logs.jsonl is untrusted
input (bounded, counted, never a traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import anyio.to_thread
from click.testing import CliRunner
from receivers import parse_otlp_logs_json

from aiorunner import ScriptRunner, Session, TracingConfig
from aiorunner.cli import main

SCRIPT = r"""
import sys
print("loading rows")
print("<b>not html</b> \x1b[2J", file=sys.stderr)
raise SystemExit("ERROR: row 7 is bad")
"""


async def _run(script: Path):
    config = TracingConfig(exporter_type="jsonl", export_timeout=20.0)
    async with await anyio.to_thread.run_sync(Session, config) as session:
        return await ScriptRunner(str(script), session=session).run()


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


async def test_show_verbose_and_logs_only(make_script, traces_file):
    """-v prints the script's lines under execute_script (time, stream, severity,
    body; terminal escapes neutralised); --logs prints only the records."""
    result = await _run(make_script(SCRIPT))
    assert not result.success
    code, out = await anyio.to_thread.run_sync(
        _cli, "traces", "show", result.trace_id, "-v", "--width", "120"
    )
    assert code == 0, out
    assert "\x1b" not in out
    execute = out.index("execute_script")
    collect = out.index("collect_metrics")
    loading = out.index("stdout INFO    loading rows")
    assert execute < loading < collect
    assert "stderr ERROR   ERROR: row 7 is bad" in out
    code, logs = await anyio.to_thread.run_sync(
        _cli, "traces", "show", result.trace_id[:12], "--logs", "--width", "120"
    )
    assert code == 0, logs
    assert "3 log records" in logs and "loading rows" in logs
    assert "execute_script" not in logs and "Duration" not in logs


async def test_html_shows_logs_escaped_and_errors_highlighted(make_script, traces_file, tmp_path):
    """The HTML page lists each span's records in its details; an ERROR record has the
    log-error class; a body is escaped, never markup."""
    result = await _run(make_script(SCRIPT))
    page = tmp_path / "t.html"
    code, out = await anyio.to_thread.run_sync(
        _cli, "traces", "show", result.trace_id, "--html", str(page)
    )
    assert code == 0, out
    html = page.read_text()
    assert '<ul class="logs">' in html
    assert '<li class="log log-error">' in html and "ERROR: row 7 is bad" in html
    assert "&lt;b&gt;not html&lt;/b&gt;" in html and "<b>not html</b>" not in html


async def test_hostile_logs_file_is_counted_not_fatal(make_script, traces_file):
    """Garbage lines, a record with a string severity, a time beyond 64 bits and a body
    that is an object in logs.jsonl: show still works, the good records are printed and
    the bad ones counted in the note, with no traceback."""
    result = await _run(make_script("print('good line')"))
    logs_file = traces_file.parent / "logs.jsonl"
    trace_id = result.trace_id
    bad = [
        {"severityNumber": "high", "traceId": trace_id, "timeUnixNano": "1"},
        {"severityNumber": 9, "traceId": trace_id, "timeUnixNano": str(1 << 70)},
        "not a record",
    ]
    request = {"resourceLogs": [{"scopeLogs": [{"logRecords": bad}]}]}
    with logs_file.open("a") as f:
        f.write(f"garbage {trace_id} {{\n")
        f.write(json.dumps(request) + "\n")
        f.write(json.dumps({"resourceLogs": f"{trace_id}"}) + "\n")
    code, out = await anyio.to_thread.run_sync(
        _cli, "traces", "show", trace_id, "--logs", "--width", "100"
    )
    assert code == 0, out
    assert "good line" in out
    assert "Traceback" not in out
    assert "unreadable line(s) and 4 malformed log record(s) of" in out


async def test_push_replays_logs_to_otlp_and_to_a_copy(
    make_script, traces_file, otlp_grpc_receiver, tmp_path
):
    """`traces push` sends the pushed traces' records too: to an OTLP collector (same
    trace and span ids), and to logs.jsonl beside a jsonl copy."""
    result = await _run(make_script("print('replayed line')"))
    code, out = await anyio.to_thread.run_sync(
        _cli,
        "traces",
        "push",
        "--exporter",
        "otlp",
        "--endpoint",
        otlp_grpc_receiver.endpoint,
        "--trace",
        result.trace_id,
    )
    assert code == 0, out
    assert "and 1 log records" in out
    (record,) = await otlp_grpc_receiver.wait_for_logs(1)
    assert (record.body, record.trace_id) == ("replayed line", result.trace_id)
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    code, out = await anyio.to_thread.run_sync(
        _cli, "traces", "push", "--to", str(copy_dir / "traces.jsonl")
    )
    assert code == 0, out
    (line,) = (copy_dir / "logs.jsonl").read_bytes().splitlines()
    copied = parse_otlp_logs_json(line).resource_logs[0].scope_logs[0].log_records[0]
    assert copied.body.string_value == "replayed line"
    assert copied.trace_id.hex() == result.trace_id
