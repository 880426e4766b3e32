"""
Where the runner's own CPU goes: CPU time of this process (every thread of it, the export
thread and worker threads included, children excluded) per run of a trivial script, with
one feature turned off at a time.

Why CPU and not wall time: on a 2-core machine the runner's CPU competes with the scripts
for the same cores (issue 7: a trivial script costs ~12.7 ms of CPU, so every 1 ms of the
runner's own CPU per run costs ~7 % of throughput at concurrency 2), and CPU time is far
steadier than wall time on a shared, noisy machine. The figure is
``getrusage(RUSAGE_SELF)`` (user + system, all threads) over ``runs`` sequential runs,
divided by ``runs``. The configurations take turns in rounds, so a burst of other load
falls on all of them alike; the table shows the median of the rounds' means and the
lowest round.

Run alone with ``python benchmarks/bench_overhead.py`` (``BENCH_QUICK=1`` for a smoke
run), or through ``python -m benchmarks``, which calls :func:`main`.
``python benchmarks/bench_overhead.py --profile CONFIG`` prints a cProfile of the event
loop thread for one configuration (the export and worker threads are not in it).
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

TRIVIAL = "pass\n"

#: name -> (tracing, ScriptRunner options); "no logs" / "no metrics" turn a signal off in
#: the TracingConfig instead (a ``config:`` key).
CONFIGS: dict[str, tuple[bool, dict[str, Any]]] = {
    "all on (defaults)": (True, {}),
    "no logs": (True, {"config:logs": False}),
    "no metrics": (True, {"config:metrics": False}),
    "no monitor": (True, {"monitor": False}),
    "no in-script channel": (True, {"in_script_tracing": False}),
    "no dependency check": (True, {"validate_dependencies": False}),
    "no tracing": (False, {}),
    "everything off": (
        False,
        {"monitor": False, "in_script_tracing": False, "validate_dependencies": False},
    ),
}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _batches(workdir: Path) -> dict[str, Any]:
    """Per configuration, a function running ``n`` trivial scripts one at a time through
    ``run_many`` (the path of issue 7's throughput benchmark, orchestration included)."""
    from aiorunner import LocalExecutor, TracingConfig, run_many

    script = workdir / "trivial.py"
    script.write_text(TRIVIAL)
    made = {}
    for name, (tracing, all_options) in CONFIGS.items():
        options = {k: v for k, v in all_options.items() if not k.startswith("config:")}
        extra = {k[7:]: v for k, v in all_options.items() if k.startswith("config:")}
        config = TracingConfig(
            enabled=tracing,
            exporter_type="jsonl",
            traces_file=str(workdir / "overhead.jsonl"),
            **extra,
        )
        executor = LocalExecutor(runner_options=options)

        async def batch(n: int, config: Any = config, executor: Any = executor) -> None:
            results = await run_many(
                [script] * n, max_concurrency=1, config=config, executor=executor
            )
            failed = [r.error for r in results if not r.success]
            assert not failed, failed[:3]

        made[name] = batch
    return made


def measure(workdir: Path, rounds: int, runs: int) -> dict[str, list[float]]:
    """CPU seconds per run, one figure per round, per configuration."""
    batches = _batches(workdir)
    per_round: dict[str, list[float]] = {name: [] for name in batches}

    async def go() -> None:
        for batch in batches.values():  # warm-up: sessions, imports, caches
            await batch(3)
        for _ in range(rounds):
            for name, batch in batches.items():
                c0 = _cpu()
                await batch(runs)
                per_round[name].append((_cpu() - c0) / runs)

    asyncio.run(go())
    return per_round


def table(per_round: dict[str, list[float]], rounds: int, runs: int) -> str:
    lines = [
        (
            f"### Runner CPU per trivial run, by configuration ({rounds} rounds of {runs} "
            "sequential runs each, the configurations taking turns)"
        ),
        "",
        "| configuration | runner CPU ms/run (median of rounds) | lowest round | saved vs all on |",
        "| --- | ---: | ---: | ---: |",
    ]
    base = statistics.median(per_round["all on (defaults)"])
    for name, values in per_round.items():
        median = statistics.median(values)
        saved = "" if name.startswith("all on") else f"{(base - median) * 1000:.2f}"
        lines.append(f"| {name} | {median * 1000:.2f} | {min(values) * 1000:.2f} | {saved} |")
    lines += [
        "",
        (
            "CPU of the runner process (all its threads, children excluded). On 2 cores each "
            "1 ms of it per run costs about 7 % of throughput against `xargs -P 2` "
            "(issue 7's benchmark 2); the goal is about 1.5 ms with everything on."
        ),
    ]
    return "\n".join(lines)


def profile(config: str, runs: int) -> None:
    import cProfile
    import pstats

    workdir = Path(tempfile.mkdtemp(prefix="aiorunner-bench-"))
    try:
        batch = _batches(workdir)[config]

        async def go() -> None:
            await batch(5)
            profiler = cProfile.Profile()
            profiler.enable()
            await batch(runs)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(40)

        asyncio.run(go())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> str:
    """Measure every configuration; return the markdown table."""
    quick = os.environ.get("BENCH_QUICK") == "1"
    rounds, runs = (3, 10) if quick else (10, 20)
    workdir = Path(tempfile.mkdtemp(prefix="aiorunner-bench-"))
    try:
        return table(measure(workdir, rounds, runs), rounds, runs) + "\n"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--profile":
        profile(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 200)
    else:
        print(main())
