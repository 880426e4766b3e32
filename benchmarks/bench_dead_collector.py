"""
A run against a dead collector (issue 17 item 6): wall time of ``aiorunner run t.py``
with ``OTEL_TRACES_EXPORTER=otlp`` and nothing listening on the collector's port, beside
``python t.py`` and ``aiorunner run t.py`` with a live OTLP collector (the receiver of
``tests/receivers.py``), the commands taking turns round after round.

Before issue 17 the dead-collector run took 31.7 s (the export retried until the 30 s
export timeout, then a second wait at exit); now a refused connection is retried within
the connect budget (``AIORUNNER_CONNECT_BUDGET``, 1 s), the run's spans are spooled, and
the process exits. The spool is emptied between rounds, so each round pays the full
outage (the first spooled batch) and no drain.

A hung collector (``tests/receivers.py`` ``HungSocket``: it accepts the connection and
never answers; OTLP/HTTP, where the default ``OTEL_EXPORTER_OTLP_TIMEOUT`` of 10 s is the
deadline) used to cost a run that whole deadline (10.3 s); now the export is hedged after
``AIORUNNER_SPOOL_HEDGE`` (1 s) and gets up to 1 s more at exit.

Run alone with ``python benchmarks/bench_dead_collector.py`` (``BENCH_QUICK=1`` for a
few rounds), or through ``python -m benchmarks``, which calls :func:`main`.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _command() -> list[str]:
    script = BIN / "aiorunner"
    return [str(script)] if script.exists() else [sys.executable, "-m", "aiorunner"]


def _time(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return elapsed


def measure(rounds: int) -> dict[str, list[float]]:
    sys.path.insert(0, str(ROOT / "tests"))
    from receivers import HungSocket, OtlpGrpcReceiver

    aiorunner = _command()
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    dead_port = dead.getsockname()[1]
    try:
        with (
            OtlpGrpcReceiver() as live,
            HungSocket() as hung,
            tempfile.TemporaryDirectory(prefix="aiorunner-dead-") as tmp,
        ):
            workdir = Path(tmp)
            (workdir / "t.py").write_text("pass\n")
            base = {
                key: value
                for key, value in os.environ.items()
                if not key.startswith(("OTEL_", "AIORUNNER_", "TRACEPARENT"))
            }
            spool = workdir / "spool"
            base["AIORUNNER_SPOOL_DIR"] = str(spool)
            otlp = {**base, "OTEL_TRACES_EXPORTER": "otlp"}
            commands = {
                "python t.py": ([sys.executable, "t.py"], base),
                "aiorunner run t.py, live collector": (
                    [*aiorunner, "run", "-q", "t.py"],
                    {**otlp, "OTEL_EXPORTER_OTLP_ENDPOINT": live.endpoint},
                ),
                "aiorunner run t.py, dead collector": (
                    [*aiorunner, "run", "-q", "t.py"],
                    {**otlp, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{dead_port}"},
                ),
                "aiorunner run t.py, hung collector": (
                    [*aiorunner, "run", "-q", "t.py"],
                    {
                        **otlp,
                        "OTEL_EXPORTER_OTLP_ENDPOINT": hung.endpoint,
                        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                    },
                ),
            }
            for argv, env in commands.values():  # warm the page cache and .pyc files
                _time(argv, workdir, env)
            times: dict[str, list[float]] = {name: [] for name in commands}
            names = list(commands)
            for index in range(rounds):
                shift = index % len(names)
                for name in names[shift:] + names[:shift]:
                    shutil.rmtree(spool, ignore_errors=True)
                    argv, env = commands[name]
                    times[name].append(_time(argv, workdir, env))
    finally:
        dead.close()
    return times


def main() -> str:
    rounds = 3 if os.environ.get("BENCH_QUICK") == "1" else 10
    times = measure(rounds)
    median = {name: statistics.median(values) for name, values in times.items()}
    worst = {name: max(values) for name, values in times.items()}
    rows = [
        f"#### A run against a dead collector (issue 17): {rounds} rounds, taking turns",
        "",
        "| command | median ms | max ms | vs `python t.py` |",
        "|---|---:|---:|---:|",
    ]
    base = median["python t.py"]
    rows += [
        f"| `{name}` | {median[name] * 1000:.0f} | {worst[name] * 1000:.0f} | "
        f"{median[name] / base:.1f}x |"
        for name in times
    ]
    dead = "aiorunner run t.py, dead collector"
    live = "aiorunner run t.py, live collector"
    hung = "aiorunner run t.py, hung collector"
    rows += [
        "",
        (
            f"Dead minus live collector: {median[dead] - median[live]:.2f} s (the connect "
            "budget, AIORUNNER_CONNECT_BUDGET=1 s, spent once per outage); before issue 17: "
            "31.7 s. OTLP/gRPC, the trivial script `pass`, the spool emptied before every run."
        ),
        "",
        (
            f"Hung minus live collector: {median[hung] - median[live]:.2f} s (OTLP/HTTP; the "
            "hedge, AIORUNNER_SPOOL_HEDGE=1 s, and up to 1 s more for the hedged export at "
            "exit); before hedges: one OTEL_EXPORTER_OTLP_TIMEOUT, 10.3 s in all."
        ),
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    print(main())
