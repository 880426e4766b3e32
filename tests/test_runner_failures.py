"""Every bad input named by the core issue: each comes back as a RunResult with
success=False and a clear error, recorded with ERROR status on the trace."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aiorunner import ConfigError, ScriptRunner

ERROR = 2  # OTLP STATUS_CODE_ERROR


def _status(span):
    return span.get("status", {}).get("code", 0)


def _failed_span(spans, name):
    by_name = {s["name"]: s for s in spans}
    assert _status(by_name["ScriptRunner"]) == ERROR, by_name["ScriptRunner"]
    assert _status(by_name[name]) == ERROR, by_name[name]
    return by_name


async def test_missing_script(tmp_path, spans_of):
    """A missing script: error names the path, exit_code None, extract_metadata ERROR."""
    result = await ScriptRunner(tmp_path / "nope.py").run()
    assert not result.success
    assert result.exit_code is None
    assert "script not found" in result.error and "nope.py" in result.error
    spans = spans_of(result.trace_id)
    by_name = _failed_span(spans, "extract_metadata")
    assert "execute_script" not in by_name
    assert "upload_traces" in by_name and "collect_metrics" in by_name
    events = [e["name"] for e in by_name["extract_metadata"].get("events", [])]
    assert "exception" in events


async def test_directory_instead_of_script(tmp_path, spans_of):
    """A directory is refused with a message saying to pass a file."""
    result = await ScriptRunner(tmp_path).run()
    assert not result.success
    assert "is a directory" in result.error
    _failed_span(spans_of(result.trace_id), "extract_metadata")


def test_unreadable_script(tmp_path):
    """A script without read permission fails cleanly. As root (CI) permission checks
    never fail, so the run happens in a child that warms its imports with a readable
    script, then drops to uid 65534 before running the unreadable one."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="aiorunner-perm-"))
    try:
        base.chmod(0o755)
        script = base / "secret.py"
        script.write_text("print('never')\n")
        script.chmod(0o000)
        warm = base / "warm.py"
        warm.write_text("print('warm')\n")
        warm.chmod(0o644)
        code = textwrap.dedent(
            f"""
            import json, os
            os.environ["OTEL_TRACES_EXPORTER"] = "none"
            from aiorunner import ScriptRunner
            assert ScriptRunner({str(warm)!r}).run_script().success
            if os.getuid() == 0:
                os.setgid(65534); os.setuid(65534)
            r = ScriptRunner({str(script)!r}, monitor=False).run_script()
            print(json.dumps({{"success": r.success, "error": r.error, "uid": os.getuid()}}))
            """
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=base, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        assert data["uid"] != 0
        assert data["success"] is False
        assert "not readable" in data["error"]
        assert "chmod" in data["error"]
    finally:
        script.chmod(0o644)
        import shutil

        shutil.rmtree(base, ignore_errors=True)


async def test_syntax_error_fails_before_spawn(make_script, spans_of):
    """A syntax error is reported with its line before any process starts."""
    script = make_script("x = 1\ndef broken(:\n    pass\n")
    result = await ScriptRunner(script).run()
    assert not result.success
    assert result.pid is None
    assert "syntax error" in result.error and "line 2" in result.error
    by_name = _failed_span(spans_of(result.trace_id), "validate_dependencies")
    assert "execute_script" not in by_name


async def test_missing_module_is_listed(make_script, spans_of):
    """Imports that cannot resolve fail early with the list of missing modules."""
    script = make_script(
        """
        import os
        import definitely_not_installed_xyz
        from also_missing_abc.sub import thing
        """
    )
    result = await ScriptRunner(script).run()
    assert not result.success and result.pid is None
    assert "definitely_not_installed_xyz" in result.error
    assert "also_missing_abc" in result.error
    assert "validate_dependencies=False" in result.error
    by_name = _failed_span(spans_of(result.trace_id), "validate_dependencies")
    missing = by_name["validate_dependencies"]["attrs"]["aiorunner.dependencies.missing"]
    assert missing == ["definitely_not_installed_xyz", "also_missing_abc"]


async def test_no_false_alarms(make_script):
    """Guarded imports, TYPE_CHECKING, __future__, version checks and modules beside
    the script are not flagged."""
    make_script("VALUE = 42\n", name="helper_beside.py")
    script = make_script(
        """
        from __future__ import annotations
        import sys
        from typing import TYPE_CHECKING
        import helper_beside
        try:
            import ujson_not_here as json
        except ImportError:
            import json
        if TYPE_CHECKING:
            import mypy_only_module_xyz
        if sys.version_info < (3, 8):
            import importlib_metadata_old_xyz
        print(helper_beside.VALUE)
        """
    )
    result = await ScriptRunner(script).run()
    assert result.success, result.error
    assert result.stdout == "42\n"


async def test_missing_module_at_runtime_when_check_off(make_script):
    """With the check off, the interpreter's own ModuleNotFoundError is the error."""
    script = make_script("import definitely_not_installed_xyz\n")
    result = await ScriptRunner(script, validate_dependencies=False).run()
    assert not result.success and result.exit_code == 1
    assert "ModuleNotFoundError" in result.error
    assert "definitely_not_installed_xyz" in result.error


async def test_pep723_dependencies_checked(make_script):
    """PEP 723 dependencies missing from the interpreter are listed."""
    script = make_script(
        """
        # /// script
        # requires-python = ">=3.8"
        # dependencies = ["anyio>=1", "no-such-distribution-xyz>=2"]
        # ///
        print("hi")
        """
    )
    result = await ScriptRunner(script).run()
    assert not result.success
    assert "no-such-distribution-xyz>=2" in result.error
    assert "anyio" not in result.error.split("PEP 723 dependencies:")[1]


async def test_exit_code_3(make_script, spans_of):
    """A non-zero exit is a failure with the code, on the span and the result."""
    result = await ScriptRunner(make_script("import sys; print('bye'); sys.exit(3)")).run()
    assert not result.success
    assert result.exit_code == 3 and result.signal is None
    assert "exited with code 3" in result.error
    by_name = _failed_span(spans_of(result.trace_id), "execute_script")
    assert by_name["execute_script"]["attrs"]["process.exit.code"] == 3


async def test_exception_traceback_in_error_and_trace(make_script, spans_of):
    """A raising script: the error ends with its traceback; execute_script carries an
    exception event and the stderr tail event."""
    script = make_script(
        """
        def load():
            raise ValueError("bad row 17")
        load()
        """
    )
    result = await ScriptRunner(script).run()
    assert not result.success and result.exit_code == 1
    assert "ValueError: bad row 17" in result.error
    assert "Traceback (most recent call last)" in result.error
    assert "in load" in result.error
    by_name = _failed_span(spans_of(result.trace_id), "execute_script")
    events = {e["name"]: e for e in by_name["execute_script"].get("events", [])}
    exc = {a["key"]: a["value"]["stringValue"] for a in events["exception"]["attributes"]}
    assert exc["exception.type"] == "ValueError"
    assert exc["exception.message"] == "bad row 17"
    tail = events["script.stderr"]["attributes"][0]["value"]["stringValue"]
    assert "bad row 17" in tail


async def test_killed_by_signal(make_script, spans_of):
    """A script that SIGKILLs itself reports the signal."""
    script = make_script("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    result = await ScriptRunner(script).run()
    assert not result.success
    assert result.signal == 9 and result.exit_code is None
    assert result.signal_name == "SIGKILL"
    assert "signal 9 (SIGKILL)" in result.error
    assert result.shell_exit_code == 137
    _failed_span(spans_of(result.trace_id), "execute_script")


async def test_timeout_kills_grandchild(make_script, spans_of, alive):
    """On timeout the whole process group gets SIGTERM then SIGKILL: the sleeping
    grandchild does not outlive the run, and the spans still end with the reason."""
    script = make_script(
        """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(child.pid, flush=True)
        time.sleep(60)
        """
    )
    result = await ScriptRunner(script, timeout=1.0, kill_grace=1.0).run()
    assert not result.success
    assert result.timed_out
    assert "timed out after 1 s" in result.error
    assert result.shell_exit_code == 124
    grandchild = int(result.stdout.split()[0])
    assert not alive(grandchild)
    assert not alive(result.pid)
    by_name = _failed_span(spans_of(result.trace_id), "execute_script")
    assert by_name["ScriptRunner"]["attrs"]["aiorunner.timed_out"] is True


async def test_sigterm_ignoring_script_is_killed(make_script, alive):
    """A script that ignores SIGTERM is SIGKILLed after the grace period."""
    script = make_script(
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    result = await ScriptRunner(script, timeout=0.5, kill_grace=0.5).run()
    assert result.timed_out and not alive(result.pid)
    assert result.signal == 9


async def test_background_grandchild_does_not_hold_the_run(make_script, alive):
    """A script that exits leaving a daemon holding its stdout: the run ends, and the
    leftover of its process group is terminated."""
    script = make_script(
        """
        import subprocess, sys
        p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(p.pid, flush=True)
        """
    )
    result = await ScriptRunner(script, kill_grace=1.0).run()
    assert result.success, result.error
    assert not alive(int(result.stdout.split()[0]))


async def test_cancellation_kills_group_and_ends_spans(
    make_script, spans_in, traces_file, alive, tmp_path
):
    """Cancelling run() kills the process group, ends the spans with status, flushes
    them, and re-raises the cancellation."""
    marker = tmp_path / "pid"
    script = make_script(
        f"""
        import os, time
        open({str(marker)!r}, "w").write(str(os.getpid()))
        time.sleep(60)
        """
    )
    runner = ScriptRunner(script, kill_grace=1.0)
    task = asyncio.create_task(runner.run())
    for _ in range(200):
        if marker.exists() and marker.read_text():
            break
        await asyncio.sleep(0.02)
    pid = int(marker.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not alive(pid)
    spans = spans_in(traces_file)
    roots = [s for s in spans if s["name"] == "ScriptRunner"]
    assert len(roots) == 1 and _status(roots[0]) == ERROR
    assert "cancelled" in roots[0]["status"]["message"]
    names = {s["name"] for s in spans if s["traceId"] == roots[0]["traceId"]}
    assert "execute_script" in names and "upload_traces" in names


async def test_invalid_utf8_output_is_kept(make_script):
    """Invalid UTF-8 on stdout is kept byte for byte, not fatal."""
    script = make_script("import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe end\\n')")
    result = await ScriptRunner(script).run()
    assert result.success, result.error
    assert result.stdout_bytes == b"ok \xff\xfe end\n"
    assert result.stdout == "ok \ufffd\ufffd end\n"
    json.loads(result.to_json())


def test_200mb_stdout_keeps_memory_bounded(tmp_path):
    """200 MB on stdout: the runner keeps a 1 MiB tail and its own peak RSS stays far
    below the output size (measured in a fresh process so the number is its own)."""
    script = tmp_path / "flood.py"
    script.write_text(
        "import sys\nchunk = b'x' * (1 << 20)\n"
        "for _ in range(200):\n    sys.stdout.buffer.write(chunk)\n"
        "sys.stdout.buffer.write(b'END')\n"
    )
    code = textwrap.dedent(
        f"""
        import json, re
        from aiorunner import ScriptRunner
        r = ScriptRunner({str(script)!r}).run_script()
        # VmHWM: this process's own peak since its exec (ru_maxrss would also count
        # the parent's memory, folded in at exec by Linux).
        status = open("/proc/self/status").read()
        hwm_kib = int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
        print(json.dumps({{
            "success": r.success, "tail": len(r.stdout_bytes), "end": r.stdout_bytes[-3:].decode(),
            "truncated": r.stdout_truncated, "maxrss_kib": hwm_kib}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    assert data["success"]
    assert data["tail"] == 1 << 20
    assert data["end"] == "END"
    assert data["truncated"] == 200 * (1 << 20) + 3 - (1 << 20)
    assert data["maxrss_kib"] * 1024 < 150 * (1 << 20), data


async def test_not_executable_non_python(make_script):
    """A non-.py file without the executable bit: error says chmod +x or interpreter=."""
    script = make_script("echo hi\n", name="job.sh", mode=0o644)
    result = await ScriptRunner(script).run()
    assert not result.success
    assert "chmod +x" in result.error and "interpreter=" in result.error


async def test_bad_cwd(make_script, tmp_path):
    """A cwd that does not exist is a failed run naming it."""
    result = await ScriptRunner(make_script("print(1)"), cwd=tmp_path / "nope").run()
    assert not result.success
    assert "nope" in result.error


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"script": 42}, "script must be a path"),
        ({"script": "x.py", "args": "--flag"}, "args must be a sequence of str"),
        ({"script": "x.py", "args": [1, 2]}, "args must be a sequence of str"),
        ({"script": "x.py", "timeout": -1}, "timeout must be a positive"),
        ({"script": "x.py", "env": {"A": 1}}, "env must map str to str"),
    ],
)
def test_programmer_errors_raise_config_error(kwargs, match):
    """Wrong argument types raise ConfigError (an AiorunnerError) at construction."""
    script = kwargs.pop("script")
    with pytest.raises(ConfigError, match=match):
        ScriptRunner(script, **kwargs)


async def test_secrets_echoed_by_a_failing_script_never_reach_the_trace(
    make_script, traces_file, monkeypatch
):
    """A script that echoes its secret arguments and environment while failing (argparse
    error, traceback): the values appear in no span (status messages, stderr tail,
    exception event), checked on the raw bytes of the trace file."""
    monkeypatch.setenv("SERVICE_API_TOKEN", "envtok-98765")
    script = make_script(
        """
        import argparse, os, sys
        print("token is", os.environ["SERVICE_API_TOKEN"], file=sys.stderr)
        print("db", os.environ["DB_PASSWORD"], file=sys.stderr)
        p = argparse.ArgumentParser()
        p.add_argument("--day")
        p.parse_args()
        """
    )
    args = ["--password", "hunter2-xyz", "https://bob:s3cr3t-pw@db.example/x", "api_key=KEY12345"]
    result = await ScriptRunner(script, args, env={"DB_PASSWORD": "dbpw-4242"}).run()
    assert not result.success and result.exit_code == 2
    assert "hunter2-xyz" in result.stderr  # the script did echo it
    raw = traces_file.read_bytes()
    assert b"unrecognized arguments" in raw  # the failure is on the trace...
    for secret in (b"hunter2-xyz", b"s3cr3t-pw", b"KEY12345", b"envtok-98765", b"dbpw-4242"):
        assert secret not in raw, secret  # ...but not the secrets
    assert b"[secure]" in raw
