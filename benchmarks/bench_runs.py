"""
What running a script through aiorunner costs, measured beside the bare baselines in the
same run (issue 7's benchmarks 1-3). Speed is measured, never asserted.

1. Per-run overhead: one trivial script, one run at a time, through ``ScriptRunner``
   (tracing to the jsonl backend and monitoring on: the defaults) vs ``subprocess.run``.
   Also with monitoring off and with tracing off, to show where the time goes. Goal:
   under 10 ms added per run (median). "runner CPU" is the CPU time of this process per
   run (the script's own CPU is not in it): on a 2-core machine every 1 ms of it costs
   about 7 % of throughput when scripts run back to back.
2. Throughput: 500 trivial scripts, 2 at a time, through ``run_many`` vs ``xargs -P 2``
   running the same interpreter, and vs a plain ``anyio.run_process`` loop and a loop of
   aiorunner's own spawn (no tracing, no monitoring: the ceiling of any runner that spawns
   this way) for scale. Goal: at least 0.9x of xargs' scripts/s. Two more rows say what
   the defaults beyond tracing and monitoring cost in scripts/s (the dependency check and
   the in-script channel off), and what tracing alone costs (monitoring off too).
3. Scale: 2,000 queued jobs of sleeping scripts at concurrency 16, in a fresh process:
   its peak RSS and CPU, and every result and every trace accounted for (the jsonl file
   is read back: one ``ScriptRunner`` root per run, seven spans each).

Run alone with ``python benchmarks/bench_runs.py`` (``BENCH_QUICK=1`` for a smoke run of a
few seconds), or through ``python -m benchmarks``, which calls :func:`main`.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

TRIVIAL = "pass\n"
SLEEPING = "import time\ntime.sleep(0.2)\n"
SPANS_PER_RUN = 7  # ScriptRunner + the seed's six children


def _config(traces_file: Path, *, enabled: bool = True):  # type: ignore[no-untyped-def]
    from aiorunner import TracingConfig

    return TracingConfig(enabled=enabled, exporter_type="jsonl", traces_file=str(traces_file))


def _cpu() -> float:
    """CPU seconds of this process (not of its children)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


# -- 1. per-run overhead ---------------------------------------------------------------------


def bench_overhead(workdir: Path, runs: int) -> str:
    """Median wall time and runner CPU per run, modes interleaved so noise hits all alike."""
    from aiorunner import ScriptRunner

    script = workdir / "trivial.py"
    script.write_text(TRIVIAL)
    traced = _config(workdir / "overhead.jsonl")
    untraced = _config(workdir / "overhead-off.jsonl", enabled=False)

    def bare() -> None:
        subprocess.run([sys.executable, str(script)], check=True)

    modes = {
        "subprocess.run (baseline)": None,
        "aiorunner: tracing + monitoring (defaults)": {"config": traced},
        "aiorunner: tracing, no monitoring": {"config": traced, "monitor": False},
        "aiorunner: no tracing, no monitoring": {"config": untraced, "monitor": False},
    }
    wall: dict[str, list[float]] = {name: [] for name in modes}
    cpu: dict[str, list[float]] = {name: [] for name in modes}

    async def run_all() -> None:
        for i in range(runs + 2):  # the first two rounds warm caches and are dropped
            for name, options in modes.items():
                c0, t0 = _cpu(), time.perf_counter()
                if options is None:
                    bare()  # blocks the loop: nothing else runs meanwhile, by design
                else:
                    result = await ScriptRunner(script, **options).run()
                    assert result.success, result.error
                if i >= 2:
                    wall[name].append(time.perf_counter() - t0)
                    cpu[name].append(_cpu() - c0)

    asyncio.run(run_all())
    base = statistics.median(wall["subprocess.run (baseline)"])
    lines = [
        f"### Per-run overhead: one trivial script, {runs} runs per mode, one at a time (median).",
        "",
        "| mode | wall ms/run | added ms/run | ratio to baseline | runner CPU ms/run |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in modes:
        median = statistics.median(wall[name])
        lines.append(
            f"| {name} | {_ms(median)} | {_ms(median - base)} | {median / base:.2f}x "
            f"| {_ms(statistics.median(cpu[name]))} |"
        )
    return "\n".join(lines)


# -- 2. throughput ---------------------------------------------------------------------------


def _children_cpu() -> float:
    """CPU seconds of the children this process waited for (xargs counts its own)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_throughput(workdir: Path, count: int, concurrency: int, rounds: int) -> str:
    """Scripts per second: xargs -P vs run_many vs a bare anyio.run_process loop.

    The modes take turns, ``rounds`` times ``count / rounds`` scripts each, in an order
    reversed every other round (A B C, C B A, ...): this machine's speed drifts by 10 %
    within seconds (other tenants), and alternating cancels a drift that would otherwise
    always favour the mode that runs first. Besides scripts/s, the table splits each
    script's core time: the runner's own CPU, the script's CPU (what ``getrusage`` of the
    children says), and the rest (cores idle, or busy with something else).
    """
    import anyio

    from aiorunner import ScriptRunner, run_many

    script = workdir / "trivial.py"
    script.write_text(TRIVIAL)
    per_round = max(1, count // rounds)
    count = per_round * rounds
    config = _config(workdir / "throughput.jsonl")

    async def xargs() -> None:
        await anyio.run_process(
            ["xargs", "-P", str(concurrency), "-n", "1", sys.executable],
            input=((str(script) + "\n") * per_round).encode(),
            check=True,
        )

    async def bare_loop() -> None:
        limiter = anyio.CapacityLimiter(concurrency)

        async def one() -> None:
            async with limiter:
                await anyio.run_process([sys.executable, str(script)], check=True)

        async with anyio.create_task_group() as tg:
            for _ in range(per_round):
                tg.start_soon(one)

    async def own_spawn_loop() -> None:
        # aiorunner's own spawn (vfork on the loop, a pidfd, stdout/stderr pipes) and
        # nothing else: the most any run_many with tracing and monitoring could reach.
        from aiorunner._run.process import ChildProcess

        limiter = anyio.CapacityLimiter(concurrency)
        env = dict(os.environ)

        async def one() -> None:
            async with limiter:
                child = await ChildProcess.spawn(
                    [sys.executable, str(script)], cwd=None, env=env, tail_limit=1 << 16
                )
                try:
                    code = await child.wait_exit()
                    await child.wait_output(1.0)
                finally:
                    child.close()
                assert code == 0, child.stderr.getvalue()

        async with anyio.create_task_group() as tg:
            for _ in range(per_round):
                tg.start_soon(one)

    async def through_aiorunner() -> None:
        results = await run_many([script] * per_round, max_concurrency=concurrency, config=config)
        assert all(r.success for r in results), [r.error for r in results if not r.success][:3]

    def without(**off: bool) -> Callable[[], Awaitable[None]]:
        """run_many with some of the defaults turned off: what each one costs in scripts/s."""

        async def mode() -> None:
            jobs = [ScriptRunner(script, config=config, **off) for _ in range(per_round)]
            results = await run_many(jobs, max_concurrency=concurrency, config=config)
            assert all(r.success for r in results), [r.error for r in results if not r.success]

        return mode

    # One event loop for every mode, as in an application: a loop's start-up (worker
    # threads, the monitor's sampler) is not counted once per round.
    modes = {
        f"xargs -P {concurrency} (baseline)": xargs,
        "anyio.run_process, no tracing/monitoring": bare_loop,
        "aiorunner's spawn alone (vfork, pidfd, pipes), no tracing/monitoring": own_spawn_loop,
        "aiorunner run_many: tracing + monitoring": through_aiorunner,
        "aiorunner run_many: tracing + monitoring, no dependency check, no in-script channel": (
            without(validate_dependencies=False, in_script_tracing=False)
        ),
        "aiorunner run_many: tracing only (no monitoring, dependency check, channel)": without(
            monitor=False, validate_dependencies=False, in_script_tracing=False
        ),
    }
    wall = dict.fromkeys(modes, 0.0)
    cpu = dict.fromkeys(modes, 0.0)
    child = dict.fromkeys(modes, 0.0)
    order = list(modes)

    async def measure() -> None:
        await through_aiorunner()  # warm-up: session, imports, caches
        for index in range(rounds):
            for name in order if index % 2 == 0 else order[::-1]:
                c0, k0, t0 = _cpu(), _children_cpu(), time.perf_counter()
                await modes[name]()
                wall[name] += time.perf_counter() - t0
                cpu[name] += _cpu() - c0
                child[name] += _children_cpu() - k0

    asyncio.run(measure())

    base_name = order[0]
    base = count / wall[base_name]
    lines = [
        (
            f"### Throughput: {count} trivial scripts, {concurrency} at a time "
            f"({os.cpu_count()} CPUs), the modes taking turns in {rounds} rounds "
            "(order reversed every other round)."
        ),
        "",
        (
            "| mode | scripts/s | ratio to xargs | runner CPU ms/script | script CPU ms/script "
            "| rest ms/script |"
        ),
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in modes:
        rate = count / wall[name]
        runner_cpu = cpu[name] if name != base_name else 0.0
        rest = concurrency * wall[name] - runner_cpu - child[name]
        lines.append(
            f"| {name} | {rate:.1f} | {rate / base:.2f}x "
            f"| {_ms(runner_cpu / count) if name != base_name else '-'} "
            f"| {_ms(child[name] / count)} | {_ms(rest / count)} |"
        )
    lines += [
        "",
        (
            f"Each script costs {concurrency} cores x its wall share: the runner's CPU, the "
            "script's own CPU, and the rest (a core idle between one script's exit and the "
            "next start, or busy with other work of the machine)."
        ),
    ]
    return "\n".join(lines)


# -- 3. scale --------------------------------------------------------------------------------


def scale_child(count: int, concurrency: int, workdir: Path) -> dict[str, float | int]:
    """In a fresh process: run ``count`` sleeping jobs, account for every result and trace."""
    from aiorunner import run_many

    script = workdir / "sleeping.py"
    script.write_text(SLEEPING)
    traces = workdir / "scale.jsonl"
    config = _config(traces)
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    async def go() -> list:  # type: ignore[type-arg]
        return await run_many([script] * count, max_concurrency=concurrency, config=config)

    c0, t0 = _cpu(), time.perf_counter()
    results = asyncio.run(go())
    wall, cpu = time.perf_counter() - t0, _cpu() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    roots: set[str] = set()
    spans = 0
    seen: set[str] = set()
    with open(traces) as f:
        for line in f:
            for rs in json.loads(line)["resourceSpans"]:
                for ss in rs.get("scopeSpans", []):
                    for span in ss.get("spans", []):
                        pending = any(
                            a["key"] == "aiorunner.pending" for a in span.get("attributes", [])
                        )
                        if pending or span["spanId"] in seen:
                            continue
                        seen.add(span["spanId"])
                        spans += 1
                        if span["name"] == "ScriptRunner":
                            roots.add(span["traceId"])
    result_traces = {r.trace_id for r in results}
    return {
        "jobs": count,
        "concurrency": concurrency,
        "wall": wall,
        "cpu": cpu,
        "rss_start": rss_start,
        "rss_peak": peak,
        "succeeded": sum(r.success for r in results),
        "export_ok": sum(bool(r.export and r.export.ok) for r in results),
        "traces_in_file": len(roots & result_traces),
        "spans_in_file": spans,
    }


def bench_scale(workdir: Path, count: int, concurrency: int) -> str:
    out = subprocess.run(
        [sys.executable, __file__, "--scale-child", str(count), str(concurrency), str(workdir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        return f"### Scale: the child failed:\n\n```\n{out.stderr[-3000:]}\n```"
    data = json.loads(out.stdout.strip().splitlines()[-1])
    mib = 1 << 20
    ideal = count / concurrency * 0.2
    return "\n".join(
        [
            (
                f"### Scale: {count} queued jobs of a script sleeping 0.2 s, {concurrency} at a time, "
                "tracing + monitoring on, in a fresh process."
            ),
            "",
            "| measure | value |",
            "| --- | ---: |",
            f"| wall time | {data['wall']:.1f} s (sleep alone: {ideal:.1f} s) |",
            f"| jobs/s | {count / data['wall']:.1f} |",
            f"| runner CPU | {data['cpu']:.1f} s ({data['cpu'] / count * 1000:.1f} ms/job) |",
            (
                f"| runner RSS before / peak | {data['rss_start'] / mib:.0f} MiB / "
                f"{data['rss_peak'] / mib:.0f} MiB |"
            ),
            f"| results succeeded | {data['succeeded']} / {count} |",
            f"| results whose export was ok | {data['export_ok']} / {count} |",
            f"| traces in the jsonl file | {data['traces_in_file']} / {count} |",
            f"| spans in the jsonl file | {data['spans_in_file']} / {count * SPANS_PER_RUN} |",
        ]
    )


def main() -> str:
    """Run the three benchmarks; return their tables as markdown."""
    quick = os.environ.get("BENCH_QUICK") == "1"
    workdir = Path(tempfile.mkdtemp(prefix="aiorunner-bench-"))
    try:
        sections = [
            bench_overhead(workdir, runs=5 if quick else 40),
            bench_throughput(
                workdir, count=40 if quick else 500, concurrency=2, rounds=2 if quick else 10
            ),
            bench_scale(workdir, count=100 if quick else 2000, concurrency=16),
        ]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return "\n\n".join(sections) + "\n"


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--scale-child":
        print(json.dumps(scale_child(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]))))
    else:
        print(main())
