"""``aiorunner run``: live output, the summary line, --json, and the exit codes
(script's, 124 timeout, 128+N signal, 2 usage). Run as a real subprocess, the way a
user runs it, so exit codes and streams are the real ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def aiorunner(*args, cwd=None, env=None, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "aiorunner", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def test_success_output_is_live_and_summarised(make_script, spans_of):
    """Output passes through; one summary line gives status, duration and trace id."""
    script = make_script("print('row 1'); print('row 2')")
    proc = aiorunner("run", str(script))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "row 1\nrow 2\n"
    last = proc.stderr.strip().splitlines()[-1]
    assert "succeeded" in last and "trace " in last
    trace_id = last.rsplit("trace ", 1)[1].split()[0]
    assert len(spans_of(trace_id)) == 7


def test_exit_code_passthrough(make_script):
    """The script's exit code becomes ours, and the error is printed."""
    proc = aiorunner("run", str(make_script("import sys; sys.exit(3)")))
    assert proc.returncode == 3
    assert "exit 3" in proc.stderr


def test_timeout_exit_124(make_script):
    """--timeout: 124 like timeout(1)."""
    proc = aiorunner("run", "--timeout", "0.5", str(make_script("import time; time.sleep(30)")))
    assert proc.returncode == 124
    assert "timed out" in proc.stderr


def test_signal_exit_128_plus_n(make_script):
    """Killed by signal N: 128+N."""
    script = make_script("import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    proc = aiorunner("run", str(script))
    assert proc.returncode == 128 + 15
    assert "SIGTERM" in proc.stderr


def test_json_output(make_script):
    """--json prints the RunResult on stdout; the script's output goes to stderr."""
    script = make_script("import os; print('out', os.environ['DAY'])")
    proc = aiorunner("run", "--json", "--env", "DAY=mon", str(script), "arg1")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["success"] is True
    assert data["stdout"] == "out mon\n"
    assert data["command"][-1] == "arg1"
    assert "out mon" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["run"],
        ["run", "--env", "NOEQUALS", "x.py"],
        ["run", "--timeout", "-1", "x.py"],
        ["run", "--timout", "1", "x.py"],
        ["nosuchcommand"],
    ],
)
def test_usage_errors_exit_2(args):
    """Usage errors exit 2 with a message."""
    proc = aiorunner(*args)
    assert proc.returncode == 2
    assert "Error" in proc.stderr or "Usage" in proc.stderr


def test_bad_env_var_warns_and_the_script_runs(make_script):
    """An invalid OTEL_* value in the environment is one warning naming the variable, the
    value, what is used instead and the fix; the script runs (exit 0). The same value as
    a flag is the caller's own: a usage error (exit 2) naming the flag."""
    script = str(make_script("print('ran')"))
    proc = aiorunner("run", script, env={"OTEL_BSP_SCHEDULE_DELAY": "soon"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ran\n"
    assert (
        "OTEL_BSP_SCHEDULE_DELAY='soon' is not a number of milliseconds; using the default "
        "5000 ms instead. Fix: set OTEL_BSP_SCHEDULE_DELAY to a number of milliseconds >= 0, "
        "or unset it"
    ) in proc.stderr
    proc = aiorunner("run", "--bsp_schedule_delay", "soon", script)
    assert proc.returncode == 2
    assert "--bsp_schedule_delay='soon' is not a number of milliseconds" in proc.stderr
    assert proc.stdout == ""


def test_missing_script_exit_1(tmp_path):
    """A script that is not there: exit 1 and the reason."""
    proc = aiorunner("run", str(tmp_path / "gone.py"))
    assert proc.returncode == 1
    assert "script not found" in proc.stderr


def test_help_is_complete():
    """--help documents every option and the exit codes."""
    proc = aiorunner("run", "--help")
    assert proc.returncode == 0
    for word in (
        "--timeout",
        "--cwd",
        "--env",
        "--json",
        "124",
        "128+N",
        "--jobs",
        "--jobs-file",
        "--fail-fast",
        "--retries",
        "--trace",
    ):
        assert word in proc.stdout


def test_ctrl_c_stops_the_script_and_flushes(make_script, tmp_path, spans_in, alive):
    """SIGINT to `aiorunner run`: the script's process group is stopped, the run's spans
    are still written (root ERROR, 'cancelled'), and the exit code is 130."""
    import signal
    import time

    marker = tmp_path / "pid"
    script = make_script(
        f"""
        import os, time
        open({str(marker)!r}, "w").write(str(os.getpid()))
        time.sleep(60)
        """
    )
    traces = tmp_path / "sigint.jsonl"
    # CI shells may start us with SIGINT ignored, which exec keeps: restore the default
    # in a trampoline that then execs the CLI. Not preexec_fn: that forks this threaded
    # test process, and a fork handler (the OTel SDK's) can deadlock in the child.
    trampoline = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execv(sys.executable, [sys.executable, '-m', 'aiorunner', 'run', sys.argv[1]])"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", trampoline, str(script)],
        env={**os.environ, "AIORUNNER_TRACES_FILE": str(traces)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for _ in range(300):
        if marker.exists() and marker.read_text():
            break
        time.sleep(0.05)
    pid = int(marker.read_text())
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not alive(pid)
    roots = [s for s in spans_in(traces) if s["name"] == "ScriptRunner"]
    assert len(roots) == 1
    assert roots[0]["status"]["code"] == 2
    assert "cancelled" in roots[0]["status"]["message"]
