"""
``DaskExecutor`` on a 2-worker ``LocalCluster`` (issue 20 item 9). Speed is measured, never
asserted.

1. Throughput: 300 trivial scripts through ``run_many(executor=DaskExecutor(...))`` with
   tracing (jsonl, the spans sent home from the workers) and monitoring on, vs plain Dask
   ``client.map(subprocess.run, ...)`` of the same scripts on the same cluster, in the
   same run, rounds alternating. Goal: at least 0.9x of plain Dask's scripts/s. A third
   runner is Dask's own per-task floor for a client like ``run_many``, which must submit
   each attempt when its turn comes and read each result as it ends: plain
   ``client.submit(subprocess.run)`` one script at a time, 8 in flight. Beside the
   rates, the CPU each runner costs per script, by process: this one (client and
   scheduler: a ``LocalCluster`` runs its scheduler here), the worker processes, and
   the scripts themselves (reaped by the workers). On a machine the runners share with
   other work the rates move with that work; the CPU per script does not, and on a
   CPU-bound machine it is what bounds the rate.
2. Scale: 2,000 queued jobs in a fresh client process at concurrency 16: its peak RSS
   against a 200-job run (bounded: it does not grow with the queue), and every result and
   every trace accounted for (the client's jsonl file read back: one ``ScriptRunner`` and
   one ``dask.task`` span per job).

Run alone with ``python benchmarks/bench_dask.py`` (``BENCH_QUICK=1`` for a smoke run),
or through ``python -m benchmarks dask``, which calls :func:`main`.
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
from typing import Any

TRIVIAL = "pass\n"


def _cluster() -> Any:
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        worker_dashboard_address=None,
    )


async def _plain(address: str, script: Path, count: int) -> float:
    from distributed import Client

    async with Client(address, asynchronous=True) as client:
        started = time.perf_counter()
        futures = client.map(
            subprocess.run, [[sys.executable, str(script)]] * count, pure=False, retries=0
        )
        done = await client.gather(futures)
        elapsed = time.perf_counter() - started
    assert all(p.returncode == 0 for p in done)
    return elapsed


async def _plain_each(address: str, script: Path, count: int, concurrency: int) -> float:
    """Dask's per-task floor for run_many's pattern: one submit and one result per script."""
    from distributed import Client

    async with Client(address, asynchronous=True) as client:
        slots = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with slots:
                future = client.submit(
                    subprocess.run, [sys.executable, str(script)], pure=False, retries=0
                )
                done = await future
                future.release()
                assert done.returncode == 0

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        return time.perf_counter() - started


async def _ours(address: str, script: Path, count: int, concurrency: int) -> float:
    from aiorunner import Job, run_many
    from aiorunner.dask import DaskExecutor

    async with DaskExecutor(address) as executor:
        started = time.perf_counter()
        results = await run_many(
            [Job(str(script), name=f"job{i}") for i in range(count)],
            executor=executor,
            max_concurrency=concurrency,
        )
        elapsed = time.perf_counter() - started
    failed = [r for r in results if not r.success]
    assert not failed, failed[0].error
    return elapsed


def _cpu() -> tuple[float, float, float]:
    """CPU seconds so far of this process (client and scheduler), of the worker
    processes (its children) and of the scripts those reaped."""
    import psutil

    me = psutil.Process()
    times = me.cpu_times()
    here = times.user + times.system
    workers = scripts = 0.0
    for child in me.children():
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        workers += times.user + times.system
        scripts += times.children_user + times.children_system
    return here, workers, scripts


RUNNERS = {
    "plain": "plain Dask `client.map(subprocess.run)` (no tracing)",
    "each": "plain Dask, one `client.submit(subprocess.run)` per script, 8 in flight",
    "ours": "`run_many` + `DaskExecutor` (tracing to jsonl, monitoring, -j 8)",
}


def bench_throughput(workdir: Path, *, count: int, rounds: int) -> str:
    script = workdir / "trivial.py"
    script.write_text(TRIVIAL)
    os.environ["AIORUNNER_TRACES_FILE"] = str(workdir / "throughput.jsonl")
    rates: dict[str, list[float]] = {name: [] for name in RUNNERS}
    cpu: dict[str, list[tuple[float, ...]]] = {name: [] for name in RUNNERS}
    with _cluster() as cluster:
        address = cluster.scheduler_address
        # Warm up: workers import aiorunner and build their session once.
        asyncio.run(_ours(address, script, 4, 4))
        asyncio.run(_plain(address, script, 4))
        for _ in range(rounds):
            for name in RUNNERS:
                before = _cpu()
                if name == "plain":
                    elapsed = asyncio.run(_plain(address, script, count))
                elif name == "each":
                    elapsed = asyncio.run(_plain_each(address, script, count, 8))
                else:
                    elapsed = asyncio.run(_ours(address, script, count, 8))
                after = _cpu()
                rates[name].append(count / elapsed)
                cpu[name].append(
                    tuple((b - a) * 1000 / count for a, b in zip(before, after, strict=True))
                )
    rate = {name: statistics.median(values) for name, values in rates.items()}
    per = {
        name: tuple(statistics.median(c[i] for c in values) for i in range(3))
        for name, values in cpu.items()
    }
    lines = [
        (
            f"### Dask: {count} trivial scripts on a 2-worker LocalCluster "
            f"(median of {rounds} rounds)"
        ),
        "",
        (
            "| runner | scripts/s | vs plain Dask | CPU ms/script: client + scheduler "
            "| workers | scripts | total | plain's total / this total |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    plain_total = sum(per["plain"])
    for name, label in RUNNERS.items():
        here, workers, scripts = per[name]
        total = here + workers + scripts
        lines.append(
            f"| {label} | {rate[name]:.1f} | {rate[name] / rate['plain']:.2f}x "
            f"| {here:.1f} | {workers:.1f} | {scripts:.1f} | {total:.1f} "
            f"| {plain_total / total:.2f} |"
        )
    return "\n".join(lines)


def scale_child(count: int, concurrency: int, workdir: Path, address: str) -> dict[str, Any]:
    """In a fresh interpreter: ``count`` queued jobs; peak RSS; results and traces."""
    from aiorunner import Job, run_many
    from aiorunner.dask import DaskExecutor

    script = workdir / "trivial.py"
    traces = workdir / f"scale-{count}.jsonl"
    os.environ["AIORUNNER_TRACES_FILE"] = str(traces)

    async def go() -> list[Any]:
        async with DaskExecutor(address) as executor:
            return await run_many(
                [Job(str(script), name=f"job{i}") for i in range(count)],
                executor=executor,
                max_concurrency=concurrency,
                trace="batch",
            )

    started = time.perf_counter()
    results = asyncio.run(go())
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    names: dict[str, int] = {}
    with open(traces, "rb") as f:
        for line in f:
            for rs in json.loads(line).get("resourceSpans", ()):
                for ss in rs.get("scopeSpans", ()):
                    for span in ss.get("spans", ()):
                        names[span["name"]] = names.get(span["name"], 0) + 1
    return {
        "count": count,
        "seconds": elapsed,
        "peak_rss": peak,
        "results": len(results),
        "succeeded": sum(r.success for r in results),
        "runner_spans": names.get("ScriptRunner", 0),
        "task_spans": names.get("dask.task", 0),
        "traces": len({r.trace_id for r in results}),
    }


def bench_scale(workdir: Path, *, counts: tuple[int, ...], concurrency: int) -> str:
    (workdir / "trivial.py").write_text(TRIVIAL)
    rows = []
    with _cluster() as cluster:
        for count in counts:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--scale-child",
                    str(count),
                    str(concurrency),
                    str(workdir),
                    cluster.scheduler_address,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    lines = [
        f'### Dask: queued jobs at concurrency {concurrency} (fresh client process, trace="batch")',
        "",
        (
            "| jobs | seconds | client peak RSS | results | succeeded | ScriptRunner spans "
            "| dask.task spans | traces |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['count']} | {r['seconds']:.1f} | {r['peak_rss'] / 2**20:.0f} MiB "
            f"| {r['results']} | {r['succeeded']} | {r['runner_spans']} | {r['task_spans']} "
            f"| {r['traces']} |"
        )
    return "\n".join(lines)


def main() -> str:
    """Run both benchmarks; return their tables as markdown."""
    quick = os.environ.get("BENCH_QUICK") == "1"
    workdir = Path(tempfile.mkdtemp(prefix="aiorunner-bench-dask-"))
    try:
        sections = [
            bench_throughput(workdir, count=40 if quick else 300, rounds=1 if quick else 5),
            bench_scale(workdir, counts=(20, 100) if quick else (200, 2000), concurrency=16),
        ]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return "\n\n".join(sections) + "\n"


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--scale-child":
        print(
            json.dumps(
                scale_child(int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), sys.argv[5])
            )
        )
    else:
        print(main())
