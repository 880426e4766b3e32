"""
What in-script tracing costs a Python child at start-up (issue 6). Speed is measured,
never asserted.

A child is started the way the runner starts it (the bootstrap directory first on
``PYTHONPATH``, the span channel inherited through ``pass_fds``, the settings variable)
and timed from ``fork`` to exit, interleaved A/B with the same child started bare, so the
load of a shared machine falls on both alike. Goal: under 15 ms added for a script that
does not touch OpenTelemetry. Cases:

1. ``python -c pass`` with and without the bootstrap, the bootstrap compiled from
   source at each start (what a checkout with ``PYTHONDONTWRITEBYTECODE`` pays) and from
   ``.pyc`` files (what an installed package pays);
2. a script that makes one span, with the bootstrap (configures the SDK and sends the
   span back) vs without (the API alone, a no-op): the price of actually tracing;
3. for scale: ``import opentelemetry.sdk.trace`` alone.

Run alone with ``python benchmarks/bench_inscript.py`` (``BENCH_QUICK=1`` for fewer
rounds), or through ``python -m benchmarks``, which calls :func:`main`.
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

ONE_SPAN = (
    "from opentelemetry import trace\n"
    "with trace.get_tracer('bench').start_as_current_span('work'):\n"
    "    pass\n"
)


def _time_one(argv: list[str], env: dict[str, str], fds: tuple[int, ...]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, pass_fds=fds, check=True)
    return time.perf_counter() - started


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


class _Child:
    """One way of starting the child: argv, environment, inherited fds."""

    def __init__(self, argv: list[str], env: dict[str, str], fds: tuple[int, ...] = ()) -> None:
        self.argv = argv
        self.env = env
        self.fds = fds
        self.times: list[float] = []


def _interleaved(children: list[_Child], rounds: int) -> None:
    for child in children:  # warm the page cache and any .pyc
        _time_one(child.argv, child.env, child.fds)
    for _ in range(rounds):
        for child in children:
            child.times.append(_time_one(child.argv, child.env, child.fds))


def _p10(times: list[float]) -> float:
    return sorted(times)[len(times) // 10]


def _row(name: str, child: _Child, base: _Child | None) -> str:
    median = statistics.median(child.times)
    p10 = _p10(child.times)
    added = added_p10 = ""
    if base is not None:
        added = _ms(median - statistics.median(base.times))
        added_p10 = _ms(p10 - _p10(base.times))
    return f"| {name} | {_ms(median)} | {_ms(p10)} | {added} | {added_p10} |"


def main() -> str:
    from opentelemetry.sdk.resources import Resource

    from aiorunner._context.bootstrap import BOOTSTRAP_DIR
    from aiorunner._context.channel import SpanChannel

    quick = bool(os.environ.get("BENCH_QUICK"))
    rounds = 10 if quick else 40
    received: list[int] = []

    def submit(spans: object, dropped: object) -> None:
        received.append(len(spans))  # type: ignore[arg-type]

    channel = SpanChannel(submit, Resource({}))
    bare_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "AIORUNNER_"))}
    bare_env.pop("PYTHONPATH", None)
    boot_env = dict(bare_env)
    channel.child_env(boot_env, f"00-{'ab' * 16}-{'cd' * 8}-01", max_attributes=128, max_events=128)
    fds = (channel.child_fd,)
    with tempfile.TemporaryDirectory() as tmp:
        compiled = Path(tmp) / "bootstrap"
        shutil.copytree(BOOTSTRAP_DIR, compiled, ignore=shutil.ignore_patterns("__pycache__"))
        compileall.compile_dir(str(compiled), quiet=1)
        pyc_env = dict(boot_env, PYTHONPATH=str(compiled))
        # The runner now writes the package's own .pyc files (aiorunner._context.bootstrap.precompile):
        # a copy without them shows what compiling at each start costs.
        source_only = Path(tmp) / "bootstrap-source"
        shutil.copytree(BOOTSTRAP_DIR, source_only, ignore=shutil.ignore_patterns("__pycache__"))
        boot_env = dict(boot_env, PYTHONPATH=str(source_only))
        script = Path(tmp) / "one_span.py"
        script.write_text(ONE_SPAN)
        python = sys.executable
        startup = [
            _Child([python, "-c", "pass"], bare_env),
            _Child([python, "-c", "pass"], boot_env, fds),
            _Child([python, "-c", "pass"], pyc_env, fds),
        ]
        _interleaved(startup, rounds)
        traced = [
            _Child([python, str(script)], bare_env),
            _Child([python, str(script)], pyc_env, fds),
        ]
        _interleaved(traced, max(5, rounds // 2))
        scale = [
            _Child([python, "-c", "pass"], bare_env),
            _Child([python, "-c", "import opentelemetry.sdk.trace"], bare_env),
        ]
        _interleaved(scale, max(5, rounds // 2))
        channel.drain()
    channel.close()
    dont_write = "set" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "unset"
    lines = [
        (
            f"### In-script tracing: child start-up ({rounds} interleaved rounds"
            f"{', quick' if quick else ''})"
        ),
        "",
        "| child | median ms | p10 ms | added ms (median) | added ms (p10) |",
        "|---|---:|---:|---:|---:|",
        _row("`python -c pass`, bare", startup[0], None),
        _row(
            f"`python -c pass` + bootstrap, compiled at start (PYTHONDONTWRITEBYTECODE {dont_write})",
            startup[1],
            startup[0],
        ),
        _row("`python -c pass` + bootstrap, from .pyc (installed)", startup[2], startup[0]),
        _row("one span, API only (no bootstrap: a no-op)", traced[0], None),
        _row("one span, bootstrap: SDK configured, span sent back", traced[1], traced[0]),
        _row("for scale: `import opentelemetry.sdk.trace`", scale[1], scale[0]),
        "",
        (
            "Goal: under 15 ms added for a script that does not touch OpenTelemetry. The p10 "
            "column is the steadier one on a shared machine (other work inflates medians). "
            f"Spans received back through the channel: {sum(received)} "
            f"(expected {len(traced[1].times) + 1})."
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main())
