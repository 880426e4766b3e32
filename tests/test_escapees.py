"""
Processes that leave the script's process group, and a runner that dies (issue 16 item 16,
issue 17 item 4): a daemon's double fork into its own session is counted by the monitor
and ended with the run; `aiorunner run` SIGKILLed leaves nothing running; exit statuses
of the app's own children are never taken by the runner, a child subreaper.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from aiorunner import ScriptRunner

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="subreaper: Linux only")

#: Double-forks `sleep 60` into its own session (fork, setsid, fork, the middle one exits),
#: prints its pid, then sleeps argv[1] seconds. argv[2] == "quiet": the escapee's output
#: goes to /dev/null (it does not hold the run's pipes).
DOUBLE_FORK = """
import os, sys, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.close(r)
        if sys.argv[2:] == ["quiet"]:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)
        os.write(w, str(os.getpid()).encode())
        os.close(w)
        os.execvp("sleep", ["sleep", "60"])
    os._exit(0)
os.close(w)
pid = int(os.read(r, 100))
os.waitpid(-1, 0)  # the middle process
print(pid, flush=True)
time.sleep(float(sys.argv[1]))
"""


def _gone(pid: int) -> bool:
    """True when no process ``pid`` exists: not even a zombie (reaped)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_DEAD
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while True:
        left = [p for p in pids if not _gone(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@pytest.mark.parametrize("holds_pipes", [True, False], ids=["holds-pipes", "quiet"])
async def test_double_forked_daemon_is_counted_and_ended_with_the_run(
    make_script, spans_of, holds_pipes: bool
) -> None:
    """A `sleep 60` that double-forked into its own session (out of the script's process
    group, its parent gone) is reparented to the runner, counted by the monitor while
    the script runs (two processes), and ended and reaped when the script exits normally,
    whether or not it holds the run's output pipes."""
    script = make_script(DOUBLE_FORK, name="daemonize.py")
    counts: list[int] = []
    runner = ScriptRunner(
        script,
        args=["1.5"] if holds_pipes else ["1.5", "quiet"],
        monitor_interval=0.1,
        kill_grace=1.0,
        on_sample=lambda sample: counts.append(sample.processes),
    )
    result = await runner.run()
    escapee = int(result.stdout.split()[0])
    try:
        assert result.success, result.error
        assert _gone(result.pid)
        assert _gone(escapee), psutil.Process(escapee).status()
        assert max(counts) == 2, counts
        assert result.metrics["processes_max"] == 2
        (execute,) = [s for s in spans_of(result.trace_id) if s["name"] == "execute_script"]
        ended = [a for a in execute["attributes"] if a["key"] == "aiorunner.escaped_processes"]
        assert ended == [{"key": "aiorunner.escaped_processes", "value": {"intValue": "1"}}]
    finally:
        _kill(escapee)


async def test_double_forked_daemon_is_ended_at_a_timeout(make_script) -> None:
    """At a timeout the script's group gets SIGTERM then SIGKILL, and so does the daemon
    that left the group: nothing of the run is alive (or a zombie) afterwards."""
    script = make_script(DOUBLE_FORK, name="daemonize.py")
    result = await ScriptRunner(script, args=["60"], timeout=1.0, kill_grace=1.0).run()
    escapee = int(result.stdout.split()[0])
    try:
        assert result.timed_out
        assert _gone(escapee)
        assert _gone(result.pid)
    finally:
        _kill(escapee)


async def test_double_forked_daemon_is_ended_when_the_run_is_cancelled(
    make_script, tmp_path: Path
) -> None:
    """Cancelling run() ends the daemon that left the group as well as the group."""
    marker = tmp_path / "pid"
    script = make_script(
        DOUBLE_FORK.replace(
            "print(pid, flush=True)", f"open({str(marker)!r}, 'w').write(str(pid))"
        ),
        name="daemonize.py",
    )
    task = asyncio.create_task(ScriptRunner(script, args=["60"], kill_grace=1.0).run())
    for _ in range(500):
        if marker.exists() and marker.read_text():
            break
        await asyncio.sleep(0.02)
    escapee = int(marker.read_text())
    try:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _gone(escapee)
    finally:
        _kill(escapee)


async def test_the_apps_own_children_keep_their_exit_statuses(make_script) -> None:
    """The runner is a child subreaper, yet it never reaps a process it cannot tell is a
    run's: `subprocess.run` in threads and `asyncio.create_subprocess_exec`, running
    while runs end (and sweep for escaped processes), get their real exit codes; an
    orphan of the app's own child, reparented to this process, is left for the app to
    reap (still a zombie of ours after the runs)."""
    script = make_script(DOUBLE_FORK, name="daemonize.py")
    codes: list[int] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            done = subprocess.run([sys.executable, "-c", "raise SystemExit(7)"], check=False)
            codes.append(done.returncode)

    # The first run makes this process a subreaper (once per process).
    assert (await ScriptRunner(script, args=["0", "quiet"], kill_grace=1.0).run()).success
    # The app's own child leaves an orphan (`sleep 0.3` in the background of `sh`).
    orphan_out = subprocess.run(
        ["sh", "-c", "sleep 0.3 >/dev/null 2>&1 & echo $!"],
        capture_output=True,
        text=True,
        check=True,
    )
    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        results = await asyncio.gather(
            *(ScriptRunner(script, args=["0.5", "quiet"], kill_grace=1.0).run() for _ in range(3))
        )
        procs = [
            await asyncio.create_subprocess_exec(sys.executable, "-c", f"raise SystemExit({n})")
            for n in (3, 5)
        ]
        assert [await p.wait() for p in procs] == [3, 5]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert all(r.success for r in results), [r.error for r in results]
    assert codes and set(codes) == {7}, codes
    orphan = int(orphan_out.stdout)
    assert all(_gone(int(r.stdout.split()[0])) for r in results)
    proc = psutil.Process(orphan)  # not reaped by the runner: still there, as a zombie
    assert proc.ppid() == os.getpid()
    for _ in range(100):  # `sleep 0.3` has ended by now, unless the machine is very slow
        if proc.status() == psutil.STATUS_ZOMBIE:
            break
        await asyncio.sleep(0.05)
    assert proc.status() == psutil.STATUS_ZOMBIE
    assert proc.ppid() == os.getpid()
    os.waitpid(orphan, 0)  # the app reaps what is its own


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiorunner", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


#: Starts a child in its own group (`sleep 60`), double-forks a daemon out of the group,
#: ends a span, prints "<script pid> <child pid> <daemon pid>", sleeps.
KILLED = (
    """
import os, subprocess, sys, time
from opentelemetry import trace
child = subprocess.Popen(["sleep", "60"])
"""
    + DOUBLE_FORK.split("print(pid, flush=True)")[0]
    + """
with trace.get_tracer("job").start_as_current_span("load"):
    pass
print(os.getpid(), child.pid, pid, flush=True)
time.sleep(60)
"""
)


def test_sigkilled_runner_leaves_no_script_running(traces_file: Path, make_script) -> None:
    """`aiorunner run` SIGKILLed mid-run: the script, its child in its group and the
    daemon that left the group are all gone within a couple of seconds (the watchdog saw
    the runner's pipe close); the trace file holds the spans that had ended, and
    `aiorunner traces` shows the run as lost."""
    script = make_script(KILLED, name="killed.py")
    runner = subprocess.Popen(
        [sys.executable, "-m", "aiorunner", "run", "--monitor-interval", "0.1", str(script)],
        stdout=subprocess.PIPE,
        text=True,
    )
    pids: list[int] = []
    try:
        assert runner.stdout is not None
        pids = [int(word) for word in runner.stdout.readline().split()]
        assert len(pids) == 3, pids
        time.sleep(1.0)  # the span is on disk within half a second
        assert not any(_gone(p) for p in pids)
        runner.kill()
        runner.wait(timeout=30)
        left = _wait_gone(pids, 3.0)
        assert not [p for p in left if psutil.Process(p).status() != psutil.STATUS_ZOMBIE], left
    finally:
        runner.kill()
        runner.wait(timeout=30)
        if runner.stdout is not None:
            runner.stdout.close()
        for pid in pids:
            _kill(pid)
    spans = [
        span
        for text in traces_file.read_text().splitlines()
        for resource in json.loads(text)["resourceSpans"]
        for scope in resource["scopeSpans"]
        for span in scope["spans"]
    ]
    names = {s["name"] for s in spans}
    assert {"load", "extract_metadata", "validate_dependencies", "setup_environment"} <= names
    trace_id = next(s["traceId"] for s in spans if s["name"] == "load")
    listed = _cli("traces", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = [json.loads(text) for text in listed.stdout.splitlines()]
    assert (row["trace_id"], row["status"]) == (trace_id, "lost")


_PROBE = """
import asyncio, ctypes, sys
from aiorunner import ScriptRunner
script = sys.argv[1]
result = asyncio.run(ScriptRunner(script, monitor=False).run())
flag = ctypes.c_int(0)
ctypes.CDLL(None).prctl(37, ctypes.byref(flag), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER
print(result.success, flag.value)
"""


@pytest.mark.parametrize(
    ("value", "flag", "warned"),
    [(None, 1, False), ("0", 0, False), ("off", 0, False), ("maybe", 1, True)],
)
def test_subreaper_flag_and_its_opt_out(make_script, value, flag, warned) -> None:
    """A process that ran a script is a child subreaper unless AIORUNNER_SUBREAPER says
    off; a value that is not a boolean is one WARNING naming the variable and the fix,
    and the default (on) is used."""
    script = make_script("pass\n", name="trivial.py")
    env = {k: v for k, v in os.environ.items() if k != "AIORUNNER_SUBREAPER"}
    if value is not None:
        env["AIORUNNER_SUBREAPER"] = value
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", str(flag)]
    warnings = [line for line in done.stderr.splitlines() if "AIORUNNER_SUBREAPER" in line]
    if warned:
        (line,) = warnings
        assert "'maybe'" in line and "set AIORUNNER_SUBREAPER to 1 or 0" in line
    else:
        assert not warnings


def test_watchdog_opt_out_starts_no_watchdog(make_script) -> None:
    """AIORUNNER_WATCHDOG=0: no watchdog process is started (the runner has no child
    after a run); by default one is, and it exits once the runner has exited."""
    script = make_script("pass\n", name="trivial.py")
    probe = """
import asyncio, sys, psutil
from aiorunner import ScriptRunner
asyncio.run(ScriptRunner(sys.argv[1], monitor=False).run())
kids = psutil.Process().children()
print(len(kids), kids[0].pid if kids else 0, flush=True)
"""
    for value, count in (("0", 0), ("1", 1)):
        env = {**os.environ, "AIORUNNER_WATCHDOG": value}
        done = subprocess.run(
            [sys.executable, "-c", probe, str(script)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        n, pid = map(int, done.stdout.split())
        assert n == count
        if pid:  # it exits with the runner (EOF), while we look or before
            deadline = time.monotonic() + 5.0
            while not _gone(pid) and time.monotonic() < deadline:
                try:
                    proc = psutil.Process(pid)
                    zombie = proc.status() == psutil.STATUS_ZOMBIE
                    ours = proc.ppid() == os.getpid()
                except psutil.NoSuchProcess:
                    break
                if zombie and ours:
                    # This test process ran scripts, so it is a subreaper: the orphaned
                    # watchdog came to us; it is ours to reap (a foreign orphan).
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.05)
            assert _gone(pid)
