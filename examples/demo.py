"""
`make demo`: a small ETL pipeline (extract -> transform -> load) run through aiorunner on
the embedded default backend, as one trace, then shown as a waterfall.

No collector is needed: spans go to .aiorunner/traces.jsonl (OTLP JSON lines). The last
line printed is a command that works as printed in the shell that ran `make demo`, where
`aiorunner` is usually not on PATH (the venv is not activated): the venv's own script.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from aiorunner import ScriptRunner, Session, TracingConfig

HERE = Path(__file__).resolve().parent
console = Console(highlight=False)


def aiorunner_command() -> str:
    """How to call aiorunner from the shell that ran this, exactly as it works when
    pasted: plain ``aiorunner`` when PATH finds this interpreter's (an activated venv),
    else that script by its path (``.venv/bin/aiorunner`` from the repository), else
    ``python -m aiorunner``."""
    script = Path(sys.executable).parent / "aiorunner"
    found = shutil.which("aiorunner")
    if found and script.exists() and Path(found).resolve() == script.resolve():
        return "aiorunner"
    if not script.exists():
        return f"{shlex.quote(sys.executable)} -m aiorunner"
    try:
        return shlex.quote(str(script.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(script))


async def main() -> int:
    work = Path(".aiorunner") / "demo"
    work.mkdir(parents=True, exist_ok=True)
    csv_file, totals, db = work / "sales.csv", work / "totals.json", work / "warehouse.db"
    day = "2024-10-23"
    steps = [
        ("extract", HERE / "etl" / "extract.py", [str(csv_file), "60000"]),
        ("transform", HERE / "etl" / "transform.py", [str(csv_file), str(totals)]),
        ("load", HERE / "etl" / "load.py", [str(totals), str(db), day]),
    ]
    config = TracingConfig.from_env(service_name=os.environ.get("OTEL_SERVICE_NAME", "demo-etl"))
    console.print(f"[bold]aiorunner demo[/]: a daily ETL pipeline, traced to {config.exporters}")
    results = []
    async with Session(config) as session:
        pipeline = ScriptRunner(steps[0][1], session=session)
        with pipeline.tracer.trace("daily_etl", {"pipeline.day": day}) as span:
            for name, script, args in steps:
                runner = ScriptRunner(script, args, session=session, passthrough=True)
                runner.tracing_attributes = {"pipeline.name": "daily_etl", "pipeline.step": name}
                result = await runner.run()
                results.append((name, result))
                span.add_event("step_done", {"step": name, "success": result.success})
                if not result.success:
                    break
    table = Table(title="runs")
    for column in ("step", "status", "exit", "duration", "CPU s", "peak RSS", "trace id"):
        table.add_column(column)
    for name, r in results:
        cpu = r.metrics.get("cpu_user_seconds", 0) + r.metrics.get("cpu_system_seconds", 0)
        peak = r.metrics.get("memory_rss_peak_bytes")
        table.add_row(
            name,
            "[green]ok[/]" if r.success else f"[red]{(r.error or '').splitlines()[0]}[/]",
            str(r.exit_code),
            f"{r.duration:.2f}s",
            f"{cpu:.2f}",
            f"{peak / 2**20:.0f} MiB" if peak else "-",
            r.trace_id,
        )
    console.print(table)
    trace_id = results[0][1].trace_id
    where = config.traces_file if "jsonl" in config.exporters else ", ".join(config.exporters)
    console.print(f"\nThe trace went to [bold]{where}[/] (OTLP JSON lines: the OpenTelemetry")
    console.print(
        "Collector's otlpjsonfile receiver reads it; `aiorunner traces push` replays it)."
    )
    if "jsonl" in config.exporters:
        console.print(
            "The scripts' output went beside it as log records (logs.jsonl) and their "
            "resource use as metrics (metrics.jsonl): one OpenTelemetry signal per file.",
            soft_wrap=True,
        )
    if "jsonl" in config.exporters:
        html = work / "trace.html"
        command = aiorunner_command()
        cli = [sys.executable, "-m", "aiorunner", "traces", "show", trace_id[:12]]
        console.print(f"\n$ {command} traces show {trace_id[:12]}", markup=False)
        subprocess.run(cli, check=False)
        subprocess.run([*cli, "--html", str(html)], check=False, stdout=subprocess.DEVNULL)
        console.print(
            f"\nHTML waterfall: [bold]{html}[/] (self-contained; open it in a browser)",
            soft_wrap=True,
        )
        if command != "aiorunner" and command.endswith("/aiorunner"):
            console.print(
                f"aiorunner is on PATH once the venv is active (source "
                f"{Path(command).parent}/activate); until then it is {command}.",
                markup=False,
                soft_wrap=True,
            )
        console.print(
            "Every run, then this one with every attribute and event, its output lines "
            "and CPU/memory sparklines:",
            soft_wrap=True,
        )
        # Plain prints, one command a line: no console width wraps them, and the last
        # line is what a newcomer pastes.
        print(f"  {command} traces")
        print(f"  {command} traces show {trace_id[:12]} -v")
    return 0 if all(r.success for _, r in results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
