"""
The many-scripts display passes output through line by line, prefixed with the job's
name, and stays linear on a line that never ends (issue 16, item 14): the partial line is
capped and passed through in pieces, so a 40 MB line without a newline costs neither
memory in proportion to it nor time in proportion to its square.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aiorunner.cli.progress import PARTIAL_LINE_LIMIT, ProgressDisplay

pytestmark = pytest.mark.skipif(not hasattr(os, "wait4"), reason="needs os.wait4 (POSIX)")

MiB = 1 << 20

LONG_LINE = """
import os
piece = b"x" * 65536
for _ in range({pieces}):
    os.write(1, piece)
os.write(1, b"\\nafter\\n")
"""


def _run_cli(tmp_path: Path, name: str, pieces: int) -> tuple[int, bytes, int]:
    """``aiorunner run -j 1`` of a script writing ``pieces`` 64 KiB pieces of one line;
    returns (exit code, what reached stdout, the CLI's own peak RSS in bytes)."""
    script = tmp_path / f"{name}.py"
    script.write_text(LONG_LINE.format(pieces=pieces))
    out = tmp_path / f"{name}.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            # --no-monitor: the script's own peak stays out of the CLI's rusage below
            [sys.executable, "-m", "aiorunner", "run", "-j", "1", "--no-monitor", str(script)],
            stdout=sink,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "AIORUNNER_TRACES_FILE": str(tmp_path / "traces.jsonl")},
        )
        _, status, rusage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss of a reaped child: the largest of it and its descendants (the script
    # writes from a 64 KiB buffer, so the largest is the CLI).
    return proc.returncode, out.read_bytes(), rusage.ru_maxrss * 1024


def test_a_40_mb_line_without_newline_is_passed_through_in_bounded_memory(
    tmp_path: Path,
) -> None:
    """Under ``aiorunner run -j 1`` a 40 MB line without a newline arrives whole on
    stdout, in prefixed pieces of at most ``PARTIAL_LINE_LIMIT`` bytes, and the CLI's
    peak RSS is within a few MiB of the same CLI passing a short line through."""
    code, small_out, small_peak = _run_cli(tmp_path, "short", 1)
    assert code == 0
    assert small_out.count(b"x") == 65536
    code, out, peak = _run_cli(tmp_path, "long", 640)
    assert code == 0
    lines = out.split(b"\n")
    prefix = f"{tmp_path / 'long.py'} | ".encode()
    body = [line for line in lines if line.startswith(prefix) and b"x" in line]
    assert sum(len(line) - len(prefix) for line in body) == 640 * 65536
    assert all(len(line) - len(prefix) <= PARTIAL_LINE_LIMIT for line in body)
    assert prefix + b"after" in lines
    assert prefix not in lines  # no empty line after a line that went out in pieces
    # Before the fix: ~160 MB above the short run (the partial line re-joined per chunk).
    assert peak - small_peak < 24 * MiB, (peak >> 20, small_peak >> 20)


def test_lines_split_across_chunks_are_joined_and_a_capped_piece_goes_out() -> None:
    """Whole lines are written once each, a line split across chunks is joined, and a
    partial line reaching the cap is written as a piece; the rest of the line follows."""
    import io

    out = io.BytesIO()
    display = ProgressDisplay(1, live=False, stdout=out, stderr=io.BytesIO())
    display.on_output("job", "stdout", b"one\ntw")
    display.on_output("job", "stdout", b"o\nthr")
    assert out.getvalue() == b"job | one\njob | two\n"
    display.on_output("job", "stdout", b"e" * PARTIAL_LINE_LIMIT)
    assert (
        out.getvalue()
        == b"job | one\njob | two\njob | thr" + b"e" * (PARTIAL_LINE_LIMIT - 3) + b"\n"
    )
    display.on_output("job", "stdout", b"\n")
    assert out.getvalue().endswith(b"job | eee\n")
    with display:
        display.on_output("job", "stdout", b"tail")
    assert out.getvalue().endswith(b"job | tail\n")
