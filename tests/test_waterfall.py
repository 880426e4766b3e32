"""The terminal waterfall: exact renderings of hand-written traces at fixed widths."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console
from traces_fixture import MS, T0, TRACE_A, known_trace_lines, line, span, write

from aiorunner._exceptions import ConfigError
from aiorunner._traces.tree import load_trace
from aiorunner._traces.waterfall import print_trace, render_trace, render_waterfall


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Start times print in local time: pin it to UTC for exact comparisons."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


KNOWN_100 = """\
Trace 4bf92f3577b34da6a3ce929d0e0e4736  ok  2.00s  9 spans
examples/etl.py · service aiorunner · started 2023-11-14 22:13:20.000

Span                     0s            500ms         1.00s         1.50s     2.00s  Duration Status
ScriptRunner etl.py      █████████████████████████████████████████████████████████     2.00s ok
├─ extract_metadata      █                                                            15.0ms ok
├─ validate_dependencies ██                                                           40.0ms ok
├─ setup_environment      █                                                           10.0ms ok
├─ execute_script         █████████████◆█████████████◆██████████████████████████       1.83s ok
│  ├─ load_data               ███████████████                                          500ms ok
│  └─ transform                             ████████████████████████                   800ms error
├─ collect_metrics                                                             ██     50.0ms ok
└─ upload_traces                                                                ██    50.0ms ok"""


KNOWN_72_VERBOSE = """\
Trace 4bf92f3577b34da6a3ce929d0e0e4736  ok  2.00s  9 spans
examples/etl.py · service aiorunner · started 2023-11-14 22:13:20.000

Span                     0s     500ms  1.00s     2.00s  Duration Status
ScriptRunner etl.py      █████████████████████████████     2.00s ok
│  id a000000000000001  internal  at +0µs
│  code.filepath = "examples/etl.py"
│  process.exit.code = 0
├─ extract_metadata      █                                15.0ms ok
│     id a000000000000002  internal  at +5.0ms
│     aiorunner.script.size_bytes = 2048
│     code.filepath = "examples/etl.py"
├─ validate_dependencies █                                40.0ms ok
│     id a000000000000003  internal  at +20.0ms
├─ setup_environment     ██                               10.0ms ok
│     id a000000000000004  internal  at +60.0ms
├─ execute_script         ██████◆██████◆█████████████      1.83s ok
│  │  id a000000000000005  internal  at +70.0ms
│  │  process.exit.code = 0
│  │  process.pid = 4242
│  │  ◆ +500ms cpu_monitoring  cpu.percent=97.5
│  │  ◆ +1.00s memory_monitoring  memory.rss_bytes=52428800
│  ├─ load_data            █████████                       500ms ok
│  │     id b000000000000001  internal  at +200ms
│  │     rows = 1000
│  └─ transform                    ████████████            800ms error
│        id b000000000000002  internal  at +700ms
│        status error: ValueError: bad row 17
├─ collect_metrics                                  ██    50.0ms ok
│     id a000000000000006  internal  at +1.90s
└─ upload_traces                                     █    50.0ms ok
      id a000000000000007  internal  at +1.95s"""


RUNNING_80 = """\
Trace 4bf92f3577b34da6a3ce929d0e0e4736  running  1.60s so far  6 spans
examples/etl.py · service aiorunner · started 2023-11-14 22:13:20.000

Span                     0s       400ms    800ms         1.60s  Duration Status
ScriptRunner etl.py      ▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒     1.60s running
├─ extract_metadata      █                                        15.0ms ok
├─ validate_dependencies ██                                       40.0ms ok
└─ setup_environment      █                                       10.0ms ok
load_data                    █████████████                         500ms ok
transform                                ███████████████████       800ms error

2 span(s) whose parent is not in the file (another service's, or not written
  yet) are shown as roots"""


def test_known_trace_at_width_100(tmp_path: Path) -> None:
    """The seed's span tree with in-script spans renders exactly: indentation by parent,
    bars scaled to 2 s over 56 cells, events (◆) at 500 ms and 1 s on execute_script,
    duration and status per span."""
    path = write(tmp_path / "t.jsonl", *known_trace_lines())
    assert render_waterfall(load_trace(path, TRACE_A), width=100) == KNOWN_100


def test_known_trace_verbose_at_width_72(tmp_path: Path) -> None:
    """-v adds each span's id, kind, offset, status message, attributes and events under
    it, keeping the tree's guide lines."""
    path = write(tmp_path / "t.jsonl", *known_trace_lines())
    text = render_waterfall(load_trace(path, TRACE_A), width=72, verbose=True)
    assert text == KNOWN_72_VERBOSE


def test_running_trace_renders_elapsed_and_orphans(tmp_path: Path) -> None:
    """A run still going: its root bar (▒) reaches 'now', the header says so far, and
    in-script spans whose parent is not written yet stand as roots with a note."""
    path = write(tmp_path / "t.jsonl", *known_trace_lines()[:3])
    trace = load_trace(path, TRACE_A, now_ns=T0 + 1600 * MS)
    assert render_waterfall(trace, width=80) == RUNNING_80


def test_every_line_fits_the_width(tmp_path: Path) -> None:
    """Long and wide-character names are clipped with an ellipsis; no line is wider than
    asked, at any width."""
    long_name = "transform_" + "x" * 80
    wide = "データ変換" * 6
    path = write(
        tmp_path / "t.jsonl",
        line(
            span(
                TRACE_A,
                "a000000000000001",
                None,
                "ScriptRunner",
                0,
                100,
                attributes={"note": "y" * 300},
            ),
            span(TRACE_A, "a000000000000002", "a000000000000001", long_name, 10, 50),
            span(TRACE_A, "a000000000000003", "a000000000000001", wide, 50, 90),
        ),
    )
    trace = load_trace(path, TRACE_A)
    for width in (60, 61, 80, 133, 200):
        text = render_waterfall(trace, width=width, verbose=True)
        assert all(cell_len(ln) <= width for ln in text.splitlines()), width
        assert "transform_xxx" in text
        assert "…" in text


def test_too_narrow_is_refused(tmp_path: Path) -> None:
    """Below 60 columns there is no room for bars: a clear error names the minimum."""
    path = write(tmp_path / "t.jsonl", *known_trace_lines())
    with pytest.raises(ConfigError, match="use 60 or more"):
        render_waterfall(load_trace(path, TRACE_A), width=40)


def test_zero_duration_trace(tmp_path: Path) -> None:
    """A trace whose spans take no time still draws a one-cell bar per span."""
    path = write(
        tmp_path / "t.jsonl", line(span(TRACE_A, "a000000000000001", None, "instant", 0, 0))
    )
    text = render_waterfall(load_trace(path, TRACE_A), width=60)
    assert "1 span\n" in text
    assert "Span         0s " in text
    assert "\ninstant      █" in text
    assert "0µs ok" in text


def test_render_trace_reads_the_default_file(traces_file: Path) -> None:
    """The helper `make demo` calls: id prefix in, text out, from AIORUNNER_TRACES_FILE."""
    write(traces_file, *known_trace_lines())
    assert render_trace("4bf9", width=100) == KNOWN_100


def test_print_trace_colours_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal the failed span's status is red; the plain text is unchanged."""
    path = write(tmp_path / "t.jsonl", *known_trace_lines())
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, color_system="standard", width=100)
    print_trace(load_trace(path, TRACE_A), width=100, console=console)
    coloured = out.getvalue()
    assert "\x1b[1;31merror" in coloured
    plain = Console(file=io.StringIO(), width=100)
    print_trace(load_trace(path, TRACE_A), width=100, console=plain)
    assert "\n".join(ln.rstrip() for ln in plain.file.getvalue().splitlines()) == KNOWN_100


def test_status_message_line_breaks_are_kept(tmp_path: Path) -> None:
    """`traces show -v`: a status message holding a traceback prints line by line, each
    line under the status (indented by two more), each wrapped to the width; it printed
    as one run-on paragraph. Other control characters in it stay escaped: a line break
    is the only one printed as itself."""
    message = (
        "script exited with code 1: KeyError: 'x'\n"
        "Traceback (most recent call last):\n"
        '  File "/srv/job.py", line 3, in <module>\n'
        "    rows['x']\x1b[2J\n"
        "KeyError: 'x'"
    )
    path = write(
        tmp_path / "t.jsonl",
        line(span(TRACE_A, "a000000000000001", None, "ScriptRunner", 0, 10, error=message)),
    )
    lines = render_waterfall(load_trace(path, TRACE_A), width=80, verbose=True).splitlines()
    at = next(i for i, text in enumerate(lines) if "status error: script exited" in text)
    status_column = lines[at].index("status")
    assert lines[at].endswith("status error: script exited with code 1: KeyError: 'x'")
    expected = [
        "Traceback (most recent call last):",
        '  File "/srv/job.py", line 3, in <module>',
        "    rows['x']\\x1b[2J",
        "KeyError: 'x'",
    ]
    following = lines[at + 1 : at + 1 + len(expected)]
    assert [text[status_column + 2 :] for text in following] == expected
    assert all(text[: status_column + 2].strip() in ("", "│") for text in following)
    assert "\x1b" not in "\n".join(lines)
