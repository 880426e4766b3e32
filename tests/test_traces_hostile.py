"""Hostile trace files (issue 16, items 9 and 10): what a script or a broken writer put in
the file cannot drive the user's terminal, crash `aiorunner traces`, `show` or `push`,
sink the good spans around a bad one, or make reading quadratic."""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from receivers import OtlpGrpcReceiver
from traces_fixture import MS, T0, TRACE_A, TRACE_B, known_trace_lines, line, span, write

from aiorunner._traces.listing import list_traces
from aiorunner._traces.printable import printable
from aiorunner._traces.reader import _lines_backward
from aiorunner._traces.tree import load_trace
from aiorunner.cli import main

ROOT = "a000000000000001"


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


def _span_of(text: str) -> dict[str, Any]:
    """The one span of a line made by ``line(span(...))``, to corrupt by hand."""
    request: dict[str, Any] = json.loads(text)
    spans: list[dict[str, Any]] = request["resourceSpans"][0]["scopeSpans"][0]["spans"]
    return spans[0]


def _with(spans: list[dict[str, Any]]) -> str:
    """One line holding ``spans`` (already OTLP/JSON dicts)."""
    request: dict[str, Any] = json.loads(line())
    request["resourceSpans"][0]["scopeSpans"][0]["spans"] = spans
    return json.dumps(request)


def _child(span_id: str, name: str, start_ms: float = 1, end_ms: float = 2) -> dict[str, Any]:
    return span(TRACE_A, span_id, ROOT, name, start_ms, end_ms)


# ------------------------------------------------------------ 16.9: control characters

ESC_NAME = "load\x1b[2J\x1b[H"
TITLE = "\x1b]0;pwned\x07"


@pytest.fixture
def escapes(tmp_path: Path) -> Path:
    """A run whose script put terminal commands everywhere a viewer prints text."""
    root = span(
        TRACE_A,
        ROOT,
        None,
        "ScriptRunner",
        0,
        100,
        attributes={"code.filepath": "/tmp/\x1b[2Jjob.py"},
        error="boom\x1b[31m red\rover",
    )
    child = span(
        TRACE_A,
        "a000000000000002",
        ROOT,
        ESC_NAME,
        10,
        90,
        attributes={"key\x1b[1m": "value\x9b2J\x7f", "plain": "\u202etxt.exe"},
        events=[(TITLE, 50, {"e\x1bk": 1})],
    )
    return write(tmp_path / "t.jsonl", line(root, child, service="svc\x1b[5m"))


def test_list_and_show_print_no_control_character(escapes: Path) -> None:
    """`traces`, `traces show -v` and `--html`'s message print escapes (\\x1b) in place
    of every control character from the file: no ESC, BEL, CR, DEL, C1 or bidi
    override reaches the terminal (or the pipe), and the text stays readable."""
    outputs = [
        run("traces", "-f", str(escapes)),
        run("traces", "show", TRACE_A[:8], "-f", str(escapes), "-v", "--width", "200"),
        run("traces", "show", TRACE_A[:8], "-f", str(escapes), "--width", "100"),
    ]
    for code, out, err in outputs:
        assert code == 0, err
        for bad in ("\x1b", "\x07", "\r", "\x7f", "\x9b", "\u202e"):
            assert bad not in out + err, (bad, out)
    listing, verbose, plain = (out for _, out, _ in outputs)
    assert "/tmp/\\x1b[2Jjob.py" in listing
    assert "load\\x1b[2J\\x1b[H" in plain
    assert "\\x1b]0;pwned\\x07" in verbose
    assert "boom\\x1b[31m red\\rover" in verbose
    assert "key\\x1b[1m" in verbose
    assert "value\\x9b2J\\x7f" in verbose
    assert "\\u202etxt.exe" in verbose
    assert "svc\\x1b[5m" in verbose


def test_error_messages_quote_the_file_safely(tmp_path: Path) -> None:
    """An ambiguous prefix lists the trace ids the file holds: escaped as well."""
    path = write(
        tmp_path / "t.jsonl",
        line(span("4bf9\x1b[2J", ROOT, None, "a", 0, 1)),
        line(span("4bf9\x1b]0;x\x07", "a000000000000002", None, "b", 0, 1)),
    )
    code, out, err = run("traces", "show", "4bf9", "-f", str(path))
    assert code == 1
    assert "ambiguous" in err
    assert "4bf9\\x1b[2j" in err  # ids are lowercased by the reader
    assert "\x1b" not in out + err


def test_printable_keeps_what_is_safe() -> None:
    """Printable text, non-ASCII letters and, when asked, line breaks stay as they are."""
    assert printable("naïve 日本 ✓ ◆") == "naïve 日本 ✓ ◆"
    assert printable("a\nb\tc") == "a\\nb\\tc"
    assert printable("a\nb\x1b", newlines=True) == "a\nb\\x1b"
    assert printable("\x00\x85\u2028\u2066") == "\\x00\\x85\\u2028\\u2066"


# ----------------------------------------------------------------- 16.10: bad spans


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    """A good run, with malformed spans and entries mixed into its lines."""
    late = _child("a000000000000003", "late")
    late["endTimeUnixNano"] = str(10**30)  # above 2**64: overflowed timedelta
    beyond = _child("a000000000000004", "beyond")
    beyond["startTimeUnixNano"] = str(2**64)
    negative = _child("a000000000000005", "negative")
    negative["startTimeUnixNano"] = "-5"
    event = span(TRACE_A, "a000000000000006", ROOT, "event", 1, 2, events=[("e", 1.5, {})])
    event["events"][0]["timeUnixNano"] = str(2**70)
    big_int = _child("a000000000000007", "big_int")
    big_int["attributes"] = [{"key": "n", "value": {"intValue": str(2**63)}}]
    words = _child("a000000000000008", "words")
    words["endTimeUnixNano"] = "soon"
    good = [_child(f"b{i:015x}", f"good{i}", 1 + i, 2 + i) for i in range(3)]
    return write(
        tmp_path / "t.jsonl",
        line(span(TRACE_A, ROOT, None, "ScriptRunner", 0, 100)),
        _with([good[0], late, beyond, None, 7, good[1]]),  # type: ignore[list-item]
        _with([negative, event, big_int, words, good[2]]),
        '{"resourceSpans":[null]}',
        '{"resourceSpans":[{"scopeSpans":[null,{"spans":{"a":1}}]}]}',
        '{"resourceSpans":"nope"}',
    )


GOOD = {"ScriptRunner", "good0", "good1", "good2"}


def test_bad_spans_are_skipped_and_counted_by_the_viewer(hostile: Path) -> None:
    """Times outside OTLP's unsigned 64 bits (above 2**64, negative, an event's), an int
    attribute outside int64, a time that is not a number, null or a number where an
    object belongs: each is skipped and counted, the good spans of the same lines are
    shown, and nothing raises (an end above 2**64 crashed `traces` with OverflowError)."""
    listing = list_traces(hostile)
    assert [t.span_count for t in listing.traces] == [4]
    assert listing.stats.bad_spans == 12
    assert listing.stats.skipped == 0
    assert listing.stats.first_problem == "resourceSpans is a string, not an array"  # last line
    trace = load_trace(hostile, TRACE_A)
    assert {s.name for s in trace.spans} == GOOD
    assert trace.stats.bad_spans == 8  # the lines without the trace id are not parsed
    assert trace.stats.first_problem == (
        "span 'late': endTimeUnixNano '1000000000000000000000000000000' is not a Unix time "
        "in nanoseconds (0 to 2**64-1)"
    )
    for args in (["traces"], ["traces", "--json"], ["traces", "show", TRACE_A, "-v"]):
        code, out, err = run(*args, "-f", str(hostile))
        assert code == 0, err
        assert "malformed span(s)" in err
    code, out, err = run("traces", "show", TRACE_A, "-f", str(hostile), "--width", "100")
    assert "good2" in out
    assert "late" not in out
    html = hostile.with_suffix(".html")
    code, out, err = run("traces", "show", TRACE_A, "-f", str(hostile), "--html", str(html))
    assert code == 0, err
    assert "good2" in html.read_text(encoding="utf-8")


def test_push_skips_bad_spans_and_sends_the_good_ones(
    tmp_path: Path, otlp_grpc_receiver: OtlpGrpcReceiver
) -> None:
    """128 good spans and one with a negative start in the same line: the 128 arrive at
    the collector (the bad one failed the whole batch and stopped the push), the bad
    one is reported, and `{"resourceSpans":[null]}` is counted instead of crashing
    push with AttributeError."""
    negative = _child("c000000000000001", "negative")
    negative["startTimeUnixNano"] = "-5"
    good = [_child(f"b{i:015x}", f"good{i}") for i in range(128)]
    path = write(
        tmp_path / "t.jsonl",
        line(span(TRACE_A, ROOT, None, "ScriptRunner", 0, 100)),
        _with([*good[:64], negative, *good[64:]]),
        '{"resourceSpans":[null]}',
        *known_trace_lines(TRACE_B, t0=T0 + 10_000 * MS),
    )
    result = CliRunner().invoke(
        main,
        [
            "traces",
            "push",
            "-f",
            str(path),
            "-e",
            "otlp",
            "--endpoint",
            otlp_grpc_receiver.endpoint,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Pushed 138 spans of 2 traces" in result.stdout
    assert "skipped 2 malformed span(s)" in result.stderr
    assert "span 'negative': startTimeUnixNano '-5'" in result.stderr
    arrived = {(s.trace_id, s.name) for s in otlp_grpc_receiver.spans}
    assert len(otlp_grpc_receiver.spans) == 138
    assert {(TRACE_A, f"good{i}") for i in range(128)} <= arrived
    assert (TRACE_A, "negative") not in arrived
    assert (TRACE_B, "transform") in arrived


def test_push_skips_spans_whose_ids_cannot_be_sent(
    tmp_path: Path, otlp_grpc_receiver: OtlpGrpcReceiver
) -> None:
    """A span id that is not 8 bytes (hex or base64) cannot travel in OTLP: it is
    skipped and counted; the rest of its line arrives."""
    odd = _child("abc", "odd")
    path = write(
        tmp_path / "t.jsonl",
        _with([span(TRACE_A, ROOT, None, "ScriptRunner", 0, 100), odd, _child("b" * 16, "ok")]),
    )
    result = CliRunner().invoke(
        main,
        [
            "traces",
            "push",
            "-f",
            str(path),
            "-e",
            "otlp",
            "--endpoint",
            otlp_grpc_receiver.endpoint,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "spanId 'abc' is not 8 bytes" in result.stderr
    assert sorted(s.name for s in otlp_grpc_receiver.spans) == ["ScriptRunner", "ok"]


# ------------------------------------------------------------ 16.10: reading is linear

LONG = 20 * 2**20


def test_backward_reader_holds_a_long_line_once(tmp_path: Path) -> None:
    """A 20 MiB line read from the end costs its size once: the reader's peak memory
    stays under 1.5 times the line (re-joining the pieces block after block was
    quadratic in time and peaked at three times the line)."""
    path = tmp_path / "long.jsonl"
    path.write_bytes(b"first\n" + b"x" * LONG + b"\nlast\n")
    tracemalloc.start()
    try:
        lengths = [len(chunk) for chunk in _lines_backward(path)]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lengths == [0, 4, LONG, 5]
    assert peak < 1.5 * LONG, peak / LONG


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("block", "longest"), [(1, 3000), (7, 3000), (64, 4 * 2**20)])
def test_backward_reader_with_long_lines_in_small_blocks(
    tmp_path: Path, block: int, longest: int
) -> None:
    """Lines shorter and far longer than the block, at the start, the end and without a
    final newline, come back whole, last first (a 4 MiB line in 64-byte blocks re-joined
    piece by piece copies ~140 GB: it never finished)."""
    lines = [b"x" * longest, b"", b"short", b"y" * 300, b"z" * 64, b"w" * 65, b"end"]
    path = tmp_path / "lines.txt"
    path.write_bytes(b"\n".join(lines))
    got = list(_lines_backward(path, block))
    assert [len(g) for g in got] == [len(x) for x in reversed(lines)]
    assert got == lines[::-1]


def test_a_huge_garbage_line_is_skipped(tmp_path: Path) -> None:
    """A 20 MiB line that is not JSON between two runs: counted as unreadable, both
    runs listed, and `show` finds a run past it. The listing holds the line once (it
    was decoded to text too, and before that re-joined: three times its size)."""
    path = tmp_path / "t.jsonl"
    first = known_trace_lines(TRACE_A)[-1]
    with path.open("wb") as out:
        out.write(first.encode() + b"\n")
        out.write(b"{" + b"x" * LONG + b"\n")
        for text in known_trace_lines(TRACE_B, t0=T0 + 10_000 * MS):
            out.write(text.encode() + b"\n")
    tracemalloc.start()
    try:
        listing = list_traces(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * LONG, peak / LONG
    assert {t.trace_id for t in listing.traces} == {TRACE_A, TRACE_B}
    assert listing.stats.skipped == 1
    spans = json.loads(first)["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert len(load_trace(path, TRACE_A).spans) == len(spans)
