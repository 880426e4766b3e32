"""
``python -m benchmarks [NAME ...]``: run every ``benchmarks/bench_*.py`` (or the named
ones), print their markdown tables and write them to ``benchmarks/results.md``.

Each benchmark runs in its own interpreter, so one's threads, caches and imports cannot
bias the next; a benchmark that fails is reported in the results and the others still run.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUN_ONE = "import importlib, sys; print(importlib.import_module(sys.argv[1]).main())"


def discover(names: list[str]) -> list[str]:
    """Module names of the benchmarks to run (``benchmarks.bench_<name>``), sorted."""
    found = sorted(path.stem for path in HERE.glob("bench_*.py"))
    if not names:
        return [f"benchmarks.{stem}" for stem in found]
    chosen = []
    for name in names:
        stem = name if name.startswith("bench_") else f"bench_{name}"
        if stem not in found:
            available = ", ".join(s.removeprefix("bench_") for s in found)
            raise SystemExit(f"no benchmark {name!r}; available: {available}")
        chosen.append(f"benchmarks.{stem}")
    return chosen


def run(module: str) -> str:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", RUN_ONE, module],
        cwd=HERE.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        return f"### {module}: failed (exit {done.returncode})\n\n```\n{tail}\n```\n"
    return f"{done.stdout.strip()}\n\n_{module} took {elapsed:.1f} s_\n"


def main(argv: list[str]) -> int:
    modules = discover(argv)
    quick = os.environ.get("BENCH_QUICK") == "1"
    header = [
        "# Benchmark results",
        "",
        (
            f"Python {platform.python_version()} on {platform.machine()}, "
            f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}"
            f"{', quick mode (BENCH_QUICK=1)' if quick else ''}. "
            "Regenerate with `python -m benchmarks` (or `make bench`)."
        ),
        "",
    ]
    sections = []
    for module in modules:
        print(f"running {module} ...", file=sys.stderr, flush=True)
        section = run(module)
        print(section, flush=True)
        sections.append(section)
    (HERE / "results.md").write_text("\n".join(header) + "\n" + "\n".join(sections))
    print(f"wrote {HERE / 'results.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
