"""`make demo` as a newcomer runs it (issue 16.17): the venv is not activated, so
`aiorunner` is not on PATH, and the command the demo ends with must work as printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"


def test_the_demo_ends_with_a_command_that_works_as_printed(tmp_path: Path) -> None:
    """Run with a PATH that does not hold the venv, the demo's last line is a command
    that the shell runs as pasted (it printed `aiorunner traces show ...`: command not
    found), and it draws the demo's trace."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OTEL_", "AIORUNNER_", "VIRTUAL_ENV"))
    }
    env["PATH"] = path or "/usr/bin:/bin"
    demo = subprocess.run(
        [sys.executable, str(DEMO)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    lines = [line for line in demo.stdout.splitlines() if line.strip()]
    command = lines[-1].strip()
    assert command.endswith(" -v")
    assert " traces show " in command
    trace_prefix = command.split()[-2]
    # Plain `aiorunner` is not found on this PATH: the command names the venv's script.
    assert not command.startswith("aiorunner ")
    assert "source " in demo.stdout
    assert "/activate" in demo.stdout
    shown = subprocess.run(
        command,
        shell=True,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert shown.returncode == 0, shown.stderr
    assert f"Trace {trace_prefix}" in shown.stdout
    assert "ScriptRunner extract.py" in shown.stdout
    assert (tmp_path / ".aiorunner" / "demo" / "trace.html").is_file()
