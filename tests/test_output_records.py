"""
A script's output as records (issue 18, items 1-3): one record per line, a traceback or a
warning as one record, severity from what the line says, long lines cut and counted, and
the same records whatever the chunks the pipe delivered.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from aiorunner._run.output import LINE_LIMIT, OutputAssembler, OutputLine, classify


def _records(stream: str, *chunks: bytes) -> list[OutputLine]:
    out: list[OutputLine] = []
    assembler = OutputAssembler(stream, out.append)
    for chunk in chunks:
        assembler.feed(chunk)
    assembler.flush()
    return out


def _real_stderr(code: str) -> bytes:
    """What a real Python process writes to stderr running ``code``."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
    return proc.stderr


def test_one_record_per_line_and_the_unfinished_last_line() -> None:
    """Lines split anywhere by the pipe come out whole; a last line without a newline is a
    record too; invalid UTF-8 is replaced; CRLF loses its CR."""
    records = _records("stdout", b"one\ntw", b"o\r\nthr\xffee\nno newline")
    assert [r.body for r in records] == ["one", "two", "thr\ufffdee", "no newline"]
    assert {(r.severity_number, r.severity_text) for r in records} == {(9, "INFO")}


def test_a_real_traceback_is_one_error_record() -> None:
    """The traceback a real interpreter prints, chained exceptions included, is one ERROR
    record; the line before it and the line after it are records of their own."""
    stderr = _real_stderr(
        "import sys\n"
        "print('before', file=sys.stderr, flush=True)\n"
        "try:\n    {}['k']\nexcept KeyError as e:\n    raise ValueError('bad') from e\n"
    )
    records = _records("stderr", stderr, b"after\n")
    assert records[0].body == "before"
    [traceback] = [r for r in records if "Traceback" in r.body]
    assert traceback.severity_number == 17 and traceback.severity_text == "ERROR"
    assert traceback.body.startswith("Traceback (most recent call last):")
    assert "KeyError: 'k'" in traceback.body
    assert "direct cause" in traceback.body
    assert traceback.body.endswith("ValueError: bad")
    assert records[-1].body == "after"
    assert len(records) == 3


def test_exception_group_traceback_is_one_record() -> None:
    """An exception group's indented traceback is one record, ended by the next line."""
    stderr = _real_stderr("raise ExceptionGroup('eg', [ValueError(1), TypeError(2)])")
    records = _records("stderr", stderr, b"next\n")
    assert len(records) == 2, [r.body for r in records]
    assert records[0].severity_number == 17
    assert "ExceptionGroup: eg" in records[0].body and "TypeError: 2" in records[0].body
    assert records[1].body == "next"


def test_a_real_warning_and_its_source_line_are_one_warn_record(tmp_path: Path) -> None:
    """``warnings.warn`` as the interpreter prints it from a file: WARN, with its source
    line; the next line is a record of its own."""
    script = tmp_path / "warn.py"
    script.write_text(
        "import sys, warnings\nwarnings.warn('careful')\nprint('x', file=sys.stderr)\n"
    )
    stderr = subprocess.run([sys.executable, str(script)], capture_output=True, check=True).stderr
    record, after = _records("stderr", stderr)
    assert after.body == "x" and after.severity_number == 9
    assert record.severity_number == 13
    assert "UserWarning: careful" in record.body
    assert record.body.endswith("warnings.warn('careful')")


def test_severity_of_stderr_lines() -> None:
    """stderr lines that name their level get it; others are INFO; stdout stays INFO."""
    cases = {
        "WARNING:root:disk almost full": (13, "WARNING"),
        "ERROR:etl:load failed": (17, "ERROR"),
        "CRITICAL:root:gone": (21, "CRITICAL"),
        "DEBUG:x:y": (5, "DEBUG"),
        "[warn] slow": (13, "WARN"),
        "2026-12-07 11:00:00,123 - etl - ERROR - boom": (17, "ERROR"),
        'ts=1 level=error msg="x"': (17, "ERROR"),
        "E: no such file": (17, "E"),
        "just text": (9, "INFO"),
        "Errors: 0": (9, "INFO"),
    }
    for line, expected in cases.items():
        severity, text, body, _ = classify("stderr", line)
        assert (severity, text) == expected, line
        assert body == line
    assert classify("stdout", "ERROR:root:x")[:2] == (9, "INFO")


def test_json_lines_give_level_body_and_attributes() -> None:
    """A JSON object line (either stream): level from its field, body from msg/message/
    event, the other fields as attributes (nested values as JSON text)."""
    line = json.dumps({"level": "error", "msg": "load failed", "rows": 3, "ctx": {"a": 1}})
    severity, text, body, attributes = classify("stdout", line)
    assert (severity, text, body) == (17, "error", "load failed")
    assert attributes == {"rows": 3, "ctx": '{"a": 1}'}
    severity, _, body, attributes = classify("stderr", json.dumps({"event": "hi", "n": 2**70}))
    assert (severity, body, attributes) == (9, "hi", {"n": str(2**70)})
    assert classify("stdout", "{not json}")[2] == "{not json}"


def test_a_long_line_is_cut_and_counted_in_bounded_memory() -> None:
    """A 10 MB line (fed in 64 KiB chunks) is cut at 16 KiB, at a character boundary, and
    what was left out is counted exactly; the assembler never holds more than the limit."""
    chunk = ("é" * 32768).encode()  # 64 KiB of two-byte characters
    out: list[OutputLine] = []
    assembler = OutputAssembler("stdout", out.append)
    for _ in range(160):
        assembler.feed(chunk)
        assert sum(len(p) for p in assembler._pieces) <= LINE_LIMIT
    assembler.feed(b"\nshort\n")
    assembler.flush()
    assert len(out) == 2
    assert out[0].body == "é" * (LINE_LIMIT // 2)
    assert len(out[0].body.encode()) + out[0].truncated_bytes == 160 * len(chunk)
    assert out[1].body == "short" and out[1].truncated_bytes == 0


def test_a_cut_inside_a_character_drops_its_first_bytes() -> None:
    """When 16 KiB falls inside a UTF-8 character, that character is left out whole."""
    data = b"a" + ("é" * LINE_LIMIT).encode() + b"\n"
    [record] = _records("stdout", data)
    assert record.body == "a" + "é" * ((LINE_LIMIT - 2) // 2)
    assert len(record.body.encode()) + record.truncated_bytes == len(data) - 1


_LINES = st.lists(
    st.one_of(
        st.text(alphabet=st.characters(blacklist_characters="\n\r"), max_size=40),
        st.sampled_from(["Traceback (most recent call last):", '  File "x.py", line 1', "E: x"]),
    ),
    max_size=20,
)


@settings(max_examples=200, deadline=None)
@given(lines=_LINES, cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=10))
def test_chunking_never_changes_the_records(lines: list[str], cuts: list[int]) -> None:
    """Whatever chunks the pipe delivers the stream in, the records are the same."""
    data = "\n".join(lines).encode("utf-8", errors="surrogatepass")
    whole = _records("stderr", data)
    points = sorted({min(cut, len(data)) for cut in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert _records("stderr", *chunks) == whole
