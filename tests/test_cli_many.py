"""``aiorunner run`` with many scripts: how many-scripts mode is chosen, the summary table
and exit code on a mix of passing and failing scripts, plain lines when not a TTY, the
live display on a real pseudo-terminal, jobs files, and Ctrl-C (a real SIGINT) stopping
every child while the traces still reach the file. Run as a real subprocess."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import pid_alive, read_spans

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
TRACE_ID = re.compile(r"\b[0-9a-f]{32}\b")

SLEEPER = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
os.rename(tmp, sys.argv[1])
time.sleep(120)
"""


def aiorunner(*args, cwd=None, env=None, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "aiorunner", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


@pytest.fixture
def scripts(tmp_path: Path):
    """``scripts(name=body, ...)``: write scripts into tmp_path; returns their paths."""

    def make(**bodies: str) -> list[str]:
        paths = []
        for name, body in bodies.items():
            path = tmp_path / f"{name}.py"
            path.write_text(body.lstrip("\n"))
            paths.append(str(path))
        return paths

    return make


def summary_rows(stderr: str) -> dict[str, str]:
    """Rows of the summary table, by job name (the first cell)."""
    rows = {}
    for line in stderr.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) > 3 and cells[1]:
            rows[cells[1]] = line
    return rows


def test_mix_of_passing_and_failing_scripts(scripts, traces_file):
    """-j N runs every script; output is prefixed with the job; plain lines (not a TTY);
    the summary table gives status, exit code and trace id; exit code 1; every trace id
    in the table is in the trace file."""
    ok, bad = scripts(
        ok="print('hello')", bad="import sys; print('oops', file=sys.stderr); sys.exit(3)"
    )
    proc = aiorunner("run", "-j", "2", ok, bad)
    assert proc.returncode == 1, proc.stderr
    assert f"{ok} | hello" in proc.stdout.splitlines()
    assert f"{bad} | oops" in proc.stderr.splitlines()
    assert f"[aiorunner] ▶ {ok} started" in proc.stderr
    rows = summary_rows(proc.stderr)
    assert "✓ ok" in rows[ok] and "✗ exit 3" in rows[bad]
    assert re.search(r"│\s+3\s+│", rows[bad])
    assert "1 succeeded, 1 failed of 2" in proc.stderr
    assert "script exited with code 3: oops" in proc.stderr
    trace_ids = {TRACE_ID.search(rows[name]).group() for name in (ok, bad)}
    assert len(trace_ids) == 2
    roots = {s["traceId"] for s in read_spans(traces_file) if s["name"] == "ScriptRunner"}
    assert trace_ids <= roots


def test_all_passing_exit_0_and_json(scripts):
    """All succeed: exit 0; --json prints the list of results on stdout (output on stderr)."""
    a, b = scripts(a="print('A')", b="print('B')")
    proc = aiorunner("run", "--json", "-j", "2", a, b)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [(r["name"], r["success"], r["stdout"]) for r in data] == [
        (a, True, "A\n"),
        (b, True, "B\n"),
    ]
    assert f"{a} | A" in proc.stderr


def test_trailing_jobs_option_with_script_files(scripts):
    """`run a.py b.py -j 2` runs both scripts (each is an existing script file)."""
    a, b = scripts(a="print('A')", b="print('B')")
    proc = aiorunner("run", a, b, "-j", "2")
    assert proc.returncode == 0, proc.stderr
    assert set(summary_rows(proc.stderr)) >= {a, b}


def test_one_script_keeps_its_arguments(scripts, tmp_path):
    """Without -j before the scripts, arguments stay the script's: a trailing -j after an
    argument that is not a script file, and anything after `--` before the script."""
    echo, other = scripts(echo="import sys; print(sys.argv[1:])", other="print('never')")
    proc = aiorunner("run", echo, "data.csv", "-j", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "['data.csv', '-j', '2']\n"
    proc = aiorunner("run", "--", echo, other, "-j", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"[{other!r}, '-j', '2']\n"
    proc = aiorunner("run", echo, "--x", "1")
    assert proc.stdout == "['--x', '1']\n"


def test_jobs_file_with_dependencies_env_and_retries(tmp_path):
    """--jobs-file: args and env reach the scripts, `after` orders them, a failed
    prerequisite skips its dependant, retries are counted, the summary shows it all."""
    (tmp_path / "extract.py").write_text(
        "import os, sys; print(os.environ['DAY'], sys.argv[1]); open('extracted', 'w').close()"
    )
    (tmp_path / "load.py").write_text(
        "import os; assert os.path.exists('extracted'); print('loaded')"
    )
    (tmp_path / "flaky.py").write_text(
        "import os, sys\n"
        "n = len(os.listdir('tries')) if os.path.isdir('tries') else 0\n"
        "os.makedirs('tries', exist_ok=True); open(f'tries/{n}', 'w').close()\n"
        "sys.exit(0 if n >= 1 else 1)\n"
    )
    (tmp_path / "broken.py").write_text("raise SystemExit(2)")
    (tmp_path / "report.py").write_text("print('never runs')")
    (tmp_path / "jobs.toml").write_text(
        """
retry_backoff = 0
[defaults]
env = { DAY = "2024-10-23" }

[[jobs]]
name = "extract"
script = "extract.py"
args = ["--full"]

[[jobs]]
name = "load"
script = "load.py"
after = ["extract"]

[[jobs]]
name = "flaky"
script = "flaky.py"
retries = 2

[[jobs]]
name = "broken"
script = "broken.py"

[[jobs]]
name = "report"
script = "report.py"
after = ["broken", "load"]
"""
    )
    proc = aiorunner("run", "--json", "--jobs-file", str(tmp_path / "jobs.toml"), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    results = {r["name"]: r for r in json.loads(proc.stdout)}
    assert results["extract"]["stdout"] == "2024-10-23 --full\n"
    assert results["load"]["success"] and results["load"]["stdout"] == "loaded\n"
    assert results["flaky"]["success"] and results["flaky"]["attempts"] == 2
    assert results["broken"]["exit_code"] == 2
    assert results["report"]["skipped"]
    assert results["report"]["error"] == "skipped: prerequisite 'broken' failed"
    rows = summary_rows(proc.stderr)
    assert "- skipped" in rows["report"]
    assert "tries" in proc.stderr  # a column appears when something was retried
    assert "3 succeeded, 1 failed, 1 skipped of 5" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fail-fast", "a.py"], "are for many scripts"),
        (["-j", "2", "a.py", "--day", "1"], "'--day' looks like an option"),
        (["--jobs-file", "jobs.toml", "a.py"], "do not also give scripts"),
        (["--jobs-file", "missing.toml"], "jobs file not found"),
        (["-j", "0", "a.py"], "Invalid value for '-j'"),
        (["-j", "2"], "Missing argument 'SCRIPT'"),
    ],
)
def test_many_scripts_usage_errors(tmp_path, args, message):
    """Usage mistakes of many-scripts mode exit 2 with a message saying what to do."""
    (tmp_path / "a.py").write_text("print(1)")
    (tmp_path / "jobs.toml").write_text('[[jobs]]\nscript = "a.py"\n')
    proc = aiorunner("run", *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_bad_jobs_file_is_a_usage_error(tmp_path):
    """A cycle in a jobs file: exit 2, the file and the cycle named."""
    (tmp_path / "jobs.toml").write_text(
        '[[jobs]]\nname = "a"\nscript = "a.py"\nafter = ["b"]\n'
        '[[jobs]]\nname = "b"\nscript = "b.py"\nafter = ["a"]\n'
    )
    proc = aiorunner("run", "--jobs-file", "jobs.toml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "jobs.toml" in proc.stderr and "cycle: a -> b -> a" in proc.stderr


def wait_for(paths: list[Path], proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        assert proc.poll() is None, "aiorunner exited early"
        assert time.monotonic() < deadline, "scripts did not start"
        time.sleep(0.02)


def interrupt_jobs_file(
    tmp_path: Path,
    ready: Callable[[subprocess.Popen], None],
    env: dict[str, str] | None = None,
) -> str:
    """Run `aiorunner run --jobs-file jobs.toml` in tmp_path, send it a real SIGINT once
    ``ready(proc)`` returns, check it exits 130, and return its stderr."""
    with open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aiorunner", "run", "--jobs-file", "jobs.toml"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
        try:
            ready(proc)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
    return (tmp_path / "err.txt").read_text()


def test_sigint_stops_every_child_and_flushes_traces(tmp_path, traces_file):
    """A real SIGINT to `aiorunner run -j`: every script and grandchild is gone, the
    summary says cancelled, exit 130, and every run's trace is in the file."""
    sleeper = tmp_path / "sleeper.py"
    sleeper.write_text(SLEEPER)
    pidfiles = [tmp_path / f"{i}.pid" for i in range(3)]
    lines = "".join(
        f'[[jobs]]\nname = "s{i}"\nscript = "sleeper.py"\nargs = ["{p}"]\n'
        for i, p in enumerate(pidfiles)
    )
    (tmp_path / "jobs.toml").write_text(f"max_concurrency = 3\n{lines}")
    stderr = interrupt_jobs_file(tmp_path, lambda proc: wait_for(pidfiles, proc))
    assert "SIGINT: stopping every script" in stderr
    assert "3 cancelled of 3" in stderr
    for pidfile in pidfiles:
        for pid in map(int, pidfile.read_text().split()):
            assert not pid_alive(pid), f"pid {pid} outlived Ctrl-C"
    roots = [s for s in read_spans(traces_file) if s["name"] == "ScriptRunner"]
    assert sorted(s["attrs"]["aiorunner.job"] for s in roots) == ["s0", "s1", "s2"]
    assert all(s["status"]["code"] == 2 for s in roots)  # ERROR: cancelled


def test_live_display_on_a_terminal(tmp_path):
    """On a TTY the live display shows each running script with elapsed time, CPU and
    memory; the script only ends once that line was seen on the terminal."""
    marker = tmp_path / "seen"
    (tmp_path / "waiter.py").write_text(
        "import os, sys, time\n"
        "deadline = time.monotonic() + 30\n"
        "while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n"
    )
    (tmp_path / "quick.py").write_text("print('quick')")
    (tmp_path / "jobs.toml").write_text(
        f'[[jobs]]\nname = "waiter"\nscript = "waiter.py"\nargs = ["{marker}"]\n'
        '[[jobs]]\nname = "quick"\nscript = "quick.py"\n'
    )
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aiorunner",
            "run",
            "--monitor-interval",
            "0.05",
            "--jobs-file",
            "jobs.toml",
        ],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the other side closed
                    break
                if not chunk:
                    break
                screen += chunk
            text = ANSI.sub("", screen.decode(errors="replace"))
            if not marker.exists() and re.search(r"● waiter.*CPU\s+[\d.]+%.*RSS \d", text):
                marker.touch()
            if proc.poll() is not None and not ready:
                break
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    text = ANSI.sub("", screen.decode(errors="replace"))
    assert code == 0, text[-3000:]
    assert marker.exists(), text[-2000:]
    assert "running" in text and "waiting" in text
    assert "quick | quick" in text
    assert "2 succeeded of 2" in text
    assert "\x1b[" in screen.decode(errors="replace")  # drawn with control sequences


def test_trailing_jobs_with_a_missing_script_says_why_it_is_one_script(tmp_path):
    """`aiorunner run a.py missing.py -j 2`: a.py runs alone with those arguments (the
    documented rule), and a note names the missing file and how to ask for many."""
    import os
    import subprocess
    import sys

    script = tmp_path / "a.py"
    script.write_text("import sys; print(sys.argv[1:])\n")
    proc = subprocess.run(
        [sys.executable, "-m", "aiorunner", "run", str(script), "missing.py", "-j", "2"],
        capture_output=True,
        text=True,
        env={**os.environ, "AIORUNNER_TRACES_FILE": str(tmp_path / "t.jsonl")},
        timeout=60,
    )
    assert proc.returncode == 0
    assert "['missing.py', '-j', '2']" in proc.stdout
    assert "missing.py is not a file" in proc.stderr
    assert "-j N before" in proc.stderr


def test_sigint_keeps_the_result_of_a_script_that_had_ended(tmp_path, otlp_grpc_receiver):
    """SIGINT while one script has already ended and its spans are still on their way (the
    collector holds each request): that job keeps its own result (failed, exit code 3),
    only the script still running says cancelled, and both traces reach the collector."""
    sleeper = tmp_path / "sleeper.py"
    sleeper.write_text(SLEEPER)
    ended = tmp_path / "ended.py"
    ended.write_text("import sys\nsys.exit(3)\n")
    pidfile = tmp_path / "s.pid"
    (tmp_path / "jobs.toml").write_text(
        "max_concurrency = 2\n"
        '[[jobs]]\nname = "ended"\nscript = "ended.py"\n'
        f'[[jobs]]\nname = "sleeper"\nscript = "sleeper.py"\nargs = ["{pidfile}"]\n'
    )
    otlp_grpc_receiver.hang(seconds=1.0)  # each request: the exports are slow, not lost
    env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_grpc_receiver.endpoint,
        "OTEL_BSP_EXPORT_TIMEOUT": "20000",
        # Slow on purpose, and both traces must reach the collector in this process:
        # a 1 s hedge would spool them for the next run instead (#17 item 2).
        "AIORUNNER_SPOOL_HEDGE": "0",
    }

    def ready(proc: subprocess.Popen) -> None:
        wait_for([pidfile], proc)
        deadline = time.monotonic() + 30
        while otlp_grpc_receiver.arrivals == 0:  # "ended" is in upload_traces now
            assert proc.poll() is None, "aiorunner exited early"
            assert time.monotonic() < deadline, "no export ever reached the collector"
            time.sleep(0.01)

    stderr = interrupt_jobs_file(tmp_path, ready, env=env)
    rows = summary_rows(stderr)
    assert "exit 3" in rows["ended"], stderr
    assert "cancelled" not in rows["ended"], stderr
    assert "cancelled" in rows["sleeper"], stderr
    assert "1 failed, 1 cancelled of 2" in stderr
    for pid in map(int, pidfile.read_text().split()):
        assert not pid_alive(pid), f"pid {pid} outlived Ctrl-C"
    roots = [s for s in otlp_grpc_receiver.spans if s.name == "ScriptRunner"]
    assert sorted(s.attributes["aiorunner.job"] for s in roots) == ["ended", "sleeper"]
    by_job = {s.attributes["aiorunner.job"]: s for s in roots}
    assert by_job["ended"].attributes["process.exit.code"] == 3
