"""
A runner killed mid-run, end to end: what reached the trace file before the SIGKILL (every
span that had ended half a second earlier, issue 17 item 3), and how the live-runs view
beside the file shows the run afterwards (lost, issue 15 item 1), through the real CLI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = """\
import os, time
from opentelemetry import trace

with trace.get_tracer("job").start_as_current_span("load"):
    pass
print("ended", os.getpid(), flush=True)
time.sleep(60)
"""


def _file_spans(path: Path) -> list[dict]:
    return [
        span
        for text in path.read_text().splitlines()
        for resource in json.loads(text)["resourceSpans"]
        for scope in resource["scopeSpans"]
        for span in scope["spans"]
    ]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aiorunner", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_sigkilled_runner_keeps_its_ended_spans_and_its_run_reads_lost(
    traces_file: Path, make_script
) -> None:
    """`aiorunner run` SIGKILLed two seconds after an in-script span ended (well past the
    half second a span may wait with the jsonl backend, well short of the 5 s schedule
    delay it used to wait): that span and the finished phase spans are in traces.jsonl,
    the root is not (it never ended), and `aiorunner traces` and `traces show` read the
    run from the live-runs directory as lost, its runner being dead."""
    script = make_script(SCRIPT, name="killed.py")
    runner = subprocess.Popen(
        [sys.executable, "-m", "aiorunner", "run", str(script)],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = None
    try:
        assert runner.stdout is not None
        words = runner.stdout.readline().split()
        assert words[:1] == ["ended"], words
        child = int(words[1])
        time.sleep(2.0)  # the span ended this long before the kill
        runner.kill()
        runner.wait(timeout=30)
    finally:
        runner.kill()
        runner.wait(timeout=30)
        if runner.stdout is not None:
            runner.stdout.close()
        if child is not None:
            try:
                os.killpg(child, signal.SIGKILL)  # the script leads its own process group
            except (ProcessLookupError, PermissionError):
                pass
    spans = _file_spans(traces_file)
    names = sorted(s["name"] for s in spans)
    assert {"load", "extract_metadata", "validate_dependencies", "setup_environment"} <= set(
        names
    ), names
    assert "ScriptRunner" not in names
    trace_id = next(s["traceId"] for s in spans if s["name"] == "load")
    (entry,) = Path(str(traces_file) + ".live").glob("*.json")
    assert entry.name.startswith(trace_id)
    listed = _cli("traces", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = [json.loads(text) for text in listed.stdout.splitlines()]
    assert (row["trace_id"], row["status"], row["script"]) == (trace_id, "lost", str(script))
    shown = _cli("traces", "show", trace_id[:8], "--width", "100")
    assert shown.returncode == 0, shown.stderr
    assert "lost" in shown.stdout.splitlines()[0]
