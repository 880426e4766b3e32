"""`aiorunner traces` (list) and `aiorunner traces show` through click's CliRunner."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from traces_fixture import T0, TRACE_A, TRACE_B, TRACE_C, known_trace_lines, line, span, write

from aiorunner.cli import main


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def _three_runs(path: Path) -> Path:
    failed = line(
        span(
            TRACE_C,
            "c000000000000001",
            None,
            "ScriptRunner",
            0,
            500,
            t0=T0 + 60 * 10**9,
            attributes={"code.filepath": "jobs/bad.py"},
            error="exit code 3",
        )
    )
    return write(
        path,
        *known_trace_lines(TRACE_A),
        *known_trace_lines(TRACE_B, t0=T0 + 30 * 10**9),
        failed,
    )


def test_list_newest_first_from_the_default_file(traces_file: Path) -> None:
    """Without options: every run newest first with time, script, status, duration,
    span count and full trace id, read from AIORUNNER_TRACES_FILE."""
    _three_runs(traces_file)
    code, out, _ = run("traces")
    assert code == 0
    assert out.splitlines() == [
        "TIME                 SCRIPT           STATUS  DURATION  SPANS  TRACE ID",
        f"2023-11-14 22:14:20  jobs/bad.py      error      500ms      1  {TRACE_C}",
        f"2023-11-14 22:13:50  examples/etl.py  ok         2.00s      9  {TRACE_B}",
        f"2023-11-14 22:13:20  examples/etl.py  ok         2.00s      9  {TRACE_A}",
    ]
    code, out_list, _ = run("traces", "list")
    assert (code, out_list) == (0, out)


def test_list_filters_and_json(tmp_path: Path) -> None:
    """--failed, --slowest, --limit and --json select and shape the rows."""
    path = _three_runs(tmp_path / "runs.jsonl")
    code, out, _ = run("traces", "--file", str(path), "--failed")
    assert code == 0
    assert [ln.split()[-1] for ln in out.splitlines()[1:]] == [TRACE_C]
    code, out, _ = run("traces", "list", "-f", str(path), "--slowest", "3", "--json")
    rows = [json.loads(ln) for ln in out.splitlines()]
    # equal durations: the newer first
    assert [r["trace_id"] for r in rows] == [TRACE_B, TRACE_A, TRACE_C]
    assert rows[0]["span_count"] == 9
    code, out, err = run("traces", "-f", str(path), "--limit", "2")
    assert len(out.splitlines()) == 3
    assert "the 2 newest" in err
    code, out, _ = run("traces", "-f", str(path), "--since", "2023-11-14T22:13:40Z", "--json")
    assert [json.loads(ln)["trace_id"] for ln in out.splitlines()] == [TRACE_C, TRACE_B]
    code, out, _ = run("traces", "-f", str(path), "--since", "1h")
    assert code == 0
    assert "No runs recorded" in out


def test_list_running_run(traces_file: Path) -> None:
    """A run that has only written its start marker lists as running."""
    write(traces_file, known_trace_lines()[0])
    _, out, _ = run("traces", "--json")
    (row,) = [json.loads(ln) for ln in out.splitlines()]
    assert row["status"] == "running"
    assert row["span_count"] == 1
    assert row["duration_seconds"] > 0


def test_list_reports_skipped_lines(traces_file: Path) -> None:
    """A truncated last line is skipped with a note on stderr, not a failure."""
    lines = known_trace_lines()
    write(traces_file, *lines, truncated=lines[2][:100])
    code, out, err = run("traces")
    assert code == 0
    assert TRACE_A in out
    assert "skipped 1 unreadable line" in err


def test_list_errors(tmp_path: Path) -> None:
    """A missing file and a bad --since are clear errors with non-zero exit codes."""
    code, _, err = run("traces", "-f", str(tmp_path / "none.jsonl"))
    assert code == 1
    assert "no trace file at" in err
    assert "none.jsonl" in err
    path = _three_runs(tmp_path / "runs.jsonl")
    code, _, err = run("traces", "-f", str(path), "--since", "last tuesday")
    assert code == 2
    assert "'last tuesday' is neither a duration nor a date" in err


def test_show_prefix_prints_the_waterfall(traces_file: Path) -> None:
    """show with a unique prefix prints the waterfall at --width."""
    _three_runs(traces_file)
    code, out, _ = run("traces", "show", "0af7", "--width", "80")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"Trace {TRACE_C}  error  500ms  1 span"
    assert lines[4].startswith("ScriptRunner")
    assert lines[4].endswith("500ms error")
    code, out, _ = run("traces", "show", TRACE_A, "-v", "--width", "100")
    assert "process.pid = 4242" in out
    assert "│  ├─ load_data" in out


def test_show_ambiguous_and_unknown(traces_file: Path) -> None:
    """An ambiguous prefix lists the candidates; an unknown id says how to find ids."""
    _three_runs(traces_file)
    code, _, err = run("traces", "show", "4bf92")
    assert code == 1
    assert "ambiguous" in err
    assert TRACE_A in err
    assert TRACE_B in err
    code, _, err = run("traces", "show", "123456")
    assert code == 1
    assert "no trace '123456'" in err
    assert "aiorunner traces" in err
    code, _, err = run("traces", "show", "xyz")
    assert code == 1
    assert "not a trace id" in err


def test_show_html(traces_file: Path, tmp_path: Path) -> None:
    """--html writes the self-contained file and says where it is."""
    _three_runs(traces_file)
    out_file = tmp_path / "share" / "trace.html"
    out_file.parent.mkdir()
    code, out, _ = run("traces", "show", TRACE_A[:29], "--html", str(out_file))
    assert code == 0
    assert str(out_file) in out
    text = out_file.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert text.count('class="row ') == 9
    code, _, err = run("traces", "show", TRACE_A[:29], "--html", str(tmp_path / "no" / "x.html"))
    assert code == 1
    assert "cannot write" in err


def test_show_width_too_small_is_a_usage_error(traces_file: Path) -> None:
    """--width below the minimum is refused by the option itself."""
    _three_runs(traces_file)
    code, _, err = run("traces", "show", TRACE_A, "--width", "20")
    assert code == 2
    assert "--width" in err
