"""
Start-up cost of the front door (issue 14's budget), measured beside its baselines in one
run, the commands taking turns round after round so that noise hits all alike:

- ``import aiorunner`` vs ``import asyncio`` (goal: within 2x);
- ``aiorunner --help`` vs ``python -c pass`` (goal: within 6x);
- ``aiorunner run t.py`` vs ``python t.py`` for a trivial script, jsonl default (goal:
  within 150 ms).

Every command is a fresh interpreter of this venv, started with ``subprocess.run``; the
figure is its wall time from spawn to exit (median and p10 of the rounds). The package's
bytecode is compiled first (``compileall``), as an installed wheel's is: in a checkout
where ``PYTHONDONTWRITEBYTECODE`` is set, every start would otherwise compile aiorunner's
modules from source.

To put an older install beside it (before/after in one run), point
``BENCH_STARTUP_BEFORE`` at that venv's ``bin`` directory: its ``import aiorunner``,
``aiorunner --help`` and ``aiorunner run t.py`` join the rotation as "before" rows.

Run alone with ``python benchmarks/bench_startup.py`` (``BENCH_QUICK=1`` for a few rounds),
or through ``python -m benchmarks``, which calls :func:`main`.
"""

from __future__ import annotations

import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
IMPORT_ASYNCIO = "python -c 'import asyncio'"
IMPORT_AIORUNNER = "python -c 'import aiorunner'"
#: What any traced ``aiorunner run`` must import (its CLI, its event loop, its task groups,
#: the OpenTelemetry SDK), and nothing of aiorunner: the floor under that row.
FLOOR_IMPORTS = (
    "import click, asyncio, anyio, anyio.to_thread, anyio._backends._asyncio, "
    "opentelemetry.sdk.trace, opentelemetry.sdk.resources"
)
FLOOR = "floor: import click, asyncio, anyio, opentelemetry.sdk"


def _command() -> list[str]:
    """The installed ``aiorunner`` console script, else ``python -m aiorunner``."""
    script = BIN / "aiorunner"
    if script.exists():
        return [str(script)]
    found = shutil.which("aiorunner")
    return [found] if found else [sys.executable, "-m", "aiorunner"]


def _time(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return elapsed


def measure(rounds: int) -> dict[str, list[float]]:
    """Wall seconds of each command, ``rounds`` times, the order rotating each round."""
    compileall.compile_dir(str(ROOT / "aiorunner"), quiet=1)
    aiorunner = _command()
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="aiorunner-startup-") as tmp:
        workdir = Path(tmp)
        (workdir / "t.py").write_text("pass\n")
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("OTEL_", "AIORUNNER_", "TRACEPARENT"))
        }
        env["AIORUNNER_TRACES_FILE"] = str(workdir / "traces.jsonl")
        commands = {
            "python -c pass": [python, "-c", "pass"],
            IMPORT_ASYNCIO: [python, "-c", "import asyncio"],
            IMPORT_AIORUNNER: [python, "-c", "import aiorunner"],
            "aiorunner --help": [*aiorunner, "--help"],
            "aiorunner run --help": [*aiorunner, "run", "--help"],
            "python t.py": [python, "t.py"],
            FLOOR: [python, "-c", FLOOR_IMPORTS],
            "aiorunner run t.py": [*aiorunner, "run", "-q", "t.py"],
        }
        before = os.environ.get("BENCH_STARTUP_BEFORE")
        if before:
            old = Path(before)
            commands["before: python -c 'import aiorunner'"] = [
                str(old / "python"),
                "-c",
                "import aiorunner",
            ]
            commands["before: aiorunner --help"] = [str(old / "aiorunner"), "--help"]
            commands["before: aiorunner run t.py"] = [str(old / "aiorunner"), "run", "-q", "t.py"]
        for argv in commands.values():  # warm the page cache and the .pyc files
            _time(argv, workdir, env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        names = list(commands)
        for index in range(rounds):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(_time(commands[name], workdir, env))
    return times


def _p10(values: list[float]) -> float:
    return sorted(values)[max(0, len(values) // 10)]


def main() -> str:
    rounds = 5 if os.environ.get("BENCH_QUICK") == "1" else 40
    times = measure(rounds)
    median = {name: statistics.median(values) for name, values in times.items()}
    p10 = {name: _p10(values) for name, values in times.items()}
    rows = [
        f"#### Start-up: fresh interpreters, {rounds} rounds, the commands taking turns",
        "",
        "| command | median ms | p10 ms |",
        "|---|---:|---:|",
    ]
    rows += [f"| `{name}` | {median[name] * 1000:.1f} | {p10[name] * 1000:.1f} |" for name in times]

    def ratio(a: str, b: str) -> str:
        return f"{median[a] / median[b]:.2f}x (p10 {p10[a] / p10[b]:.2f}x)"

    def added(a: str, b: str) -> str:
        return f"{(median[a] - median[b]) * 1000:.0f} ms (p10 {(p10[a] - p10[b]) * 1000:.0f} ms)"

    rows += [
        "",
        "| budget (issue 14) | measured | goal |",
        "|---|---:|---:|",
        f"| `import aiorunner` / `import asyncio` | {ratio(IMPORT_AIORUNNER, IMPORT_ASYNCIO)} | 2x |",
        f"| `aiorunner --help` / `python -c pass` | {ratio('aiorunner --help', 'python -c pass')} | 6x |",
        f"| `aiorunner run t.py` - `python t.py` | {added('aiorunner run t.py', 'python t.py')} | 150 ms |",
        f"| floor (the libraries alone) - `python -c pass` | {added(FLOOR, 'python -c pass')} | |",
        (
            f"| `aiorunner run t.py` - floor - `python t.py` | "
            f"{(median['aiorunner run t.py'] - median[FLOOR] - median['python t.py']) * 1000:.0f} ms | |"
        ),
        "",
        (
            "Bytecode compiled first, as in an installed wheel. The trivial script traced to the "
            "jsonl default, monitored, with the dependency check and the in-script channel on."
        ),
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    print(main())
