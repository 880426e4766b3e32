"""Messages of ``aiorunner`` in the command line's words (issue 16 item 4): errors name
flags, not Python parameters; a bad environment or jobs file is an error without click's
``Usage:`` header (the command line was fine); a binary "script", a broken interpreter
and a garbage ``TRACEPARENT`` are each said plainly. Run as real subprocesses, the way a
user meets them; the Python API keeps naming its parameters."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aiorunner import ScriptRunner


def aiorunner(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiorunner", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **env},
        timeout=60,
    )


@pytest.fixture
def broken_python(tmp_path: Path) -> Path:
    """An interpreter that cannot start: a real CPython with a PYTHONHOME that has no
    standard library, as a venv whose base was removed behaves. It prints Python's own
    "Fatal Python error" and a thread dump ending in "<no Python frame>"."""
    path = tmp_path / "broken-python"
    path.write_text(f'#!/bin/sh\nexec env PYTHONHOME=/nonexistent "{sys.executable}" -c pass\n')
    path.chmod(0o755)
    return path


def _cases(tmp_path: Path) -> list[tuple[list[str], str, str]]:
    """(command line, what the error must say, the Python spelling it must not say)."""
    shell = tmp_path / "job.sh"
    shell.write_text("echo hi\n")  # not executable
    needs = tmp_path / "needs.py"
    needs.write_text("import no_such_module_for_aiorunner_tests\n")
    ok = tmp_path / "ok.py"
    ok.write_text("pass\n")
    return [
        (["run", str(shell)], "or pass --interpreter to run it", "interpreter="),
        (
            ["run", str(needs)],
            "turn the check off with --no-validate-dependencies",
            "validate_dependencies=False",
        ),
        (
            ["run", "--interpreter", str(tmp_path / "nope"), str(needs)],
            "check --interpreter",
            "interpreter=",
        ),
        (["run", "--exporter", ",", str(ok)], "--exporter is empty", "exporter_type"),
        (
            ["run", "--exporter", "none,jsonl", str(ok)],
            "--exporter 'none,jsonl' mixes 'none'",
            "exporter_type",
        ),
        (
            ["run", "--exporter", "nosuch", str(ok)],
            "(or --exporter) to one of them",
            "exporter_type",
        ),
        (["run", str(ok), str(ok), "-j", "0"], "-j must be an integer >= 1, got 0", "None"),
        (
            ["traces", "push", "--exporter", "otlp", "--endpoint", "ftp://x"],
            "--endpoint='ftp://x' is not a valid endpoint",
            "collector_endpoint",
        ),
        (["doctor", "--exporter", ","], "--exporter is empty", "exporter_type"),
    ]


def test_errors_name_the_flags(tmp_path):
    """Each error says the flag to use: --interpreter (not "pass interpreter="),
    --no-validate-dependencies (not validate_dependencies=False), --exporter (not
    exporter_type), -j (not "max_concurrency ... (or None for the CPU count)"),
    --endpoint (not collector_endpoint=)."""
    (tmp_path / "traces.jsonl").write_text("")
    for argv, said, unsaid in _cases(tmp_path):
        proc = aiorunner(*argv, cwd=tmp_path, AIORUNNER_TRACES_FILE=str(tmp_path / "traces.jsonl"))
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, argv
        assert said in out, (argv, out)
        assert unsaid not in out, (argv, out)


async def test_the_python_api_names_its_parameters(make_script):
    """In code the same failures name the parameters (interpreter=,
    validate_dependencies=False): the CLI's words are only the CLI's."""
    shell = make_script("echo hi\n", name="job.sh")
    needs = make_script("import no_such_module_for_aiorunner_tests\n", name="needs.py")
    assert "pass interpreter= to run it" in ((await ScriptRunner(str(shell)).run()).error or "")
    assert "validate_dependencies=False" in ((await ScriptRunner(str(needs)).run()).error or "")


def test_environment_and_jobs_file_errors_have_no_usage_header(tmp_path):
    """A bad AIORUNNER_* variable or jobs file is `Error: ...` (exit 2) without click's
    "Usage: aiorunner run ..." header: the command line was right. A bad flag keeps it."""
    ok = tmp_path / "ok.py"
    ok.write_text("pass\n")
    env = aiorunner("run", str(ok), AIORUNNER_MONITOR_INTERVAL="x")
    assert env.returncode == 2
    assert "Error: AIORUNNER_MONITOR_INTERVAL='x' is not a number of seconds" in env.stderr
    assert "Usage:" not in env.stderr
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(f'max_concurrency = 0\n[[jobs]]\nscript = "{ok}"\n')
    bad_file = aiorunner("run", "--jobs-file", str(jobs))
    assert bad_file.returncode == 2
    assert "max_concurrency must be an integer >= 1, got 0" in bad_file.stderr
    assert "Usage:" not in bad_file.stderr
    bad_flag = aiorunner("run", "--exporter", ",", str(ok))
    assert bad_flag.returncode == 2
    assert "Usage: " in bad_flag.stderr


def test_a_binary_script_is_not_python_text(tmp_path):
    """A .py file holding null bytes is said to be no Python source text, not
    "syntax error in binary.py line None: source code string cannot contain null
    bytes"; with --interpreter too (any file is Python then)."""
    binary = tmp_path / "binary.py"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00print('x')\n")
    other = tmp_path / "data.bin"
    other.write_bytes(b"\x00\x01\x02")
    for argv in (["run", str(binary)], ["run", "--interpreter", sys.executable, str(other)]):
        proc = aiorunner(*argv)
        assert proc.returncode == 1, proc.stderr
        assert "is not Python source text: it contains null bytes" in proc.stderr
        assert "line None" not in proc.stderr


def test_a_broken_interpreter_says_why(tmp_path, broken_python):
    """A broken interpreter's message is its fatal error line (and the exception under
    it), not the "<no Python frame>" fragment that ends its stderr: when the dependency
    check asks it for its modules, and when it runs the script."""
    script = tmp_path / "ok.py"
    script.write_text("pass\n")
    why = "Fatal Python error: init_fs_encoding"
    probe = aiorunner("run", "--interpreter", str(broken_python), str(script))
    assert probe.returncode == 1
    error = probe.stderr.strip().splitlines()[-2]
    assert "failed to list its modules" in error and why in error, probe.stderr
    assert "No module named 'encodings'" in error
    assert "--no-validate-dependencies" in error
    ran = aiorunner(
        "run", "-q", "--no-validate-dependencies", "--interpreter", str(broken_python), str(script)
    )
    assert ran.returncode == 1
    error = ran.stderr.strip().splitlines()[-2]
    assert error.startswith("script exited with code 1: " + why), ran.stderr
    assert "<no Python frame>" not in ran.stderr


def test_a_garbage_traceparent_is_reported_once(make_script, caplog, spans_of):
    """TRACEPARENT=garbage in our environment: one WARNING with the value and what a
    traceparent looks like, however many runs read it; each run starts a new trace."""
    script = make_script("pass")
    os.environ["TRACEPARENT"] = "garbage-for-aiorunner-tests"
    try:
        with caplog.at_level(logging.WARNING, logger="aiorunner"):
            first = ScriptRunner(script).run_script()
            second = ScriptRunner(script).run_script()
    finally:
        del os.environ["TRACEPARENT"]
    assert first.success and second.success
    warnings = [r.getMessage() for r in caplog.records if "TRACEPARENT" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "TRACEPARENT='garbage-for-aiorunner-tests'" in warnings[0]
    assert "00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>" in warnings[0]
    assert "a new trace" in warnings[0]
    assert first.trace_id != second.trace_id
    root = next(s for s in spans_of(first.trace_id) if s["name"] == "ScriptRunner")
    assert not root.get("parentSpanId")


def test_the_cli_warns_about_a_garbage_traceparent(tmp_path):
    """`aiorunner run` with a garbage TRACEPARENT prints the warning once and runs."""
    script = tmp_path / "ok.py"
    script.write_text("print('ran')\n")
    proc = aiorunner("run", str(script), TRACEPARENT="00-xyz-01")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ran\n"
    assert proc.stderr.count("TRACEPARENT='00-xyz-01' is not a W3C traceparent") == 1
