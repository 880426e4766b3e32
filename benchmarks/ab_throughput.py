"""
A/B of issue 7's throughput benchmark across source trees: is a change faster, or noise?

``python benchmarks/ab_throughput.py TREE [TREE ...] [--scripts N] [--rounds R]``, where
each TREE is a directory holding an ``aiorunner`` package (a ``git worktree add /tmp/base
HEAD~3``, say). Every round runs ``xargs -P 2`` and then each tree (order reversed every
other round), each tree in a fresh interpreter with ``PYTHONPATH=TREE``, timing only its
``run_many`` of N trivial scripts on a warm session. It prints scripts/s, the ratio to
xargs, and each script's core time split into the runner's CPU, the script's CPU and the
rest (idle cores), summed over the rounds.

Why a tool of its own: this machine's speed drifts by ~10 % within seconds, so two tables
made minutes apart cannot tell a 3 % change from noise; trees measured in the same rounds
can. It is not part of ``python -m benchmarks`` (it measures trees, not this checkout).
A copied tree once carried stale bootstrap ``.pyc`` files and made every child compile
``sitecustomize`` (~5 ms each): compare trees made by ``git worktree`` (or fixed since).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHILD = """
import asyncio, json, resource, shutil, sys, tempfile, time
from pathlib import Path
import aiorunner
from aiorunner import TracingConfig, run_many

count = int(sys.argv[1])
workdir = Path(tempfile.mkdtemp(prefix="aiorunner-ab-"))
script = workdir / "trivial.py"
script.write_text("pass\\n")
config = TracingConfig(exporter_type="jsonl", traces_file=str(workdir / "t.jsonl"))


def cpu(who):
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


async def main():
    await run_many([script] * 4, max_concurrency=2, config=config)  # warm-up
    own, kids, t0 = cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    results = await run_many([script] * count, max_concurrency=2, config=config)
    wall = time.perf_counter() - t0
    assert all(r.success for r in results), [r.error for r in results if not r.success][:3]
    print(json.dumps({
        "file": aiorunner.__file__,
        "wall": wall,
        "cpu": cpu(resource.RUSAGE_SELF) - own,
        "child": cpu(resource.RUSAGE_CHILDREN) - kids,
    }))


try:
    asyncio.run(main())
finally:
    shutil.rmtree(workdir, ignore_errors=True)
"""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _xargs(script: Path, count: int) -> dict[str, float]:
    k0, t0 = _children_cpu(), time.perf_counter()
    subprocess.run(
        ["xargs", "-P", "2", "-n", "1", sys.executable],
        input=(str(script) + "\n") * count,
        text=True,
        check=True,
    )
    return {"wall": time.perf_counter() - t0, "cpu": 0.0, "child": _children_cpu() - k0}


def _tree(tree: str, count: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": tree}
    # cwd=tree: ``python -c`` puts the current directory first on sys.path, so run from
    # another checkout, every tree would import that checkout's aiorunner (it did: two
    # trees once measured the same code; the file imported is checked below).
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(count)],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    imported = str(result.pop("file"))
    if not os.path.realpath(imported).startswith(os.path.realpath(tree) + os.sep):
        raise SystemExit(f"{tree}: the child imported {imported}, not this tree's aiorunner")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip())
    parser.add_argument("trees", nargs="+", help="directories holding an aiorunner package")
    parser.add_argument("--scripts", type=int, default=50, help="scripts per mode per round")
    parser.add_argument("--rounds", type=int, default=10)
    options = parser.parse_args()
    for tree in options.trees:
        if not (Path(tree) / "aiorunner" / "__init__.py").is_file():
            raise SystemExit(f"{tree}: no aiorunner package there (give the tree's root)")
    workdir = Path(tempfile.mkdtemp(prefix="aiorunner-ab-"))
    try:
        _compare(options.trees, workdir, options.scripts, options.rounds)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _compare(trees: list[str], workdir: Path, scripts: int, rounds: int) -> None:
    script = workdir / "trivial.py"
    script.write_text("pass\n")
    modes = ["xargs -P 2", *trees]
    totals = {mode: {"wall": 0.0, "cpu": 0.0, "child": 0.0} for mode in modes}
    for index in range(rounds):
        for mode in modes if index % 2 == 0 else modes[::-1]:
            if mode == modes[0]:
                figures = _xargs(script, scripts)
            else:
                figures = _tree(mode, scripts)
            for key, value in figures.items():
                totals[mode][key] += value
    count = scripts * rounds
    base = totals[modes[0]]["wall"]
    print("| mode | scripts/s | ratio to xargs | runner CPU ms | script CPU ms | rest ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for mode in modes:
        total = totals[mode]
        rest = 2 * total["wall"] - total["cpu"] - total["child"]
        print(
            f"| {mode} | {count / total['wall']:.1f} | {base / total['wall']:.3f} "
            f"| {total['cpu'] / count * 1000:.2f} | {total['child'] / count * 1000:.2f} "
            f"| {rest / count * 1000:.2f} |"
        )


if __name__ == "__main__":
    main()
