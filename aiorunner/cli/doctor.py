"""
``aiorunner doctor``: print the effective configuration, the installed backends and, for
each configured backend, whether a test span gets through, with the fix when it does not.

Exit code 0 when traces would arrive as configured, 1 when they would not or when an
environment value is ignored (so it works as a CI step), 2 for a usage error.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rich.console import Console

    from .._doctor.checks import DoctorReport

__all__ = ["doctor_command"]


def _table(console: Console, rows: Sequence[tuple[str, ...]], styles: tuple[str, ...] = ()) -> None:
    from rich.text import Text

    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))] if rows else []
    for row in rows:
        line = Text("  ")
        for index, cell in enumerate(row):
            if index:
                line.append("  ")
            last = index == len(row) - 1
            text = cell if last else cell.ljust(widths[index])
            line.append(text, style=styles[index] if index < len(styles) else None)
        console.print(line)


def _print(report: DoctorReport, console: Console) -> None:
    from rich.text import Text

    from .._doctor.checks import installed_rows

    console.print(Text("Configuration", style="bold") + Text("  (argument > env > default)"))
    if report.config_error:
        console.print(Text(f"  invalid: {report.config_error}", style="bold red"))
    else:
        _table(console, report.settings, ("", "", "dim"))
    console.print()
    console.print(Text("Environment", style="bold") + Text("  (secrets shown as [secure])"))
    if report.environment:
        _table(console, report.environment)
    else:
        console.print("  no OTEL_*, AIORUNNER_* or vendor variable is set")
    console.print()
    if report.ignored:
        console.print(
            Text("Ignored settings", style="bold red")
            + Text("  (a run warns about each, uses what is said instead, and goes on)")
        )
        for problem in report.ignored:
            console.print(
                Text("  ✗ ", style="bold red")
                + Text(f"{problem.variable}={problem.value!r} ", style="bold")
                + Text(problem.reason)
            )
            console.print(Text(f"      used instead: {problem.instead}"))
            console.print(Text("      fix: ", style="bold yellow") + Text(problem.fix))
        console.print()
    if report.exporter_rule:
        console.print(Text("Exporters", style="bold") + Text(f"  {report.exporter_rule}"))
        console.print()
    console.print(Text("Installed backends", style="bold"))
    rows = installed_rows(report.installed)
    if rows:
        _table(console, rows, ("", "dim", ""))
    console.print()
    console.print(Text("Configured backends", style="bold"))
    for check in report.checks:
        mark = Text("  ✓ " if check.ok else "  ✗ ", style="green" if check.ok else "bold red")
        console.print(mark + Text(check.name, style="bold") + Text(f"  → {check.target}"))
        console.print(Text(f"      {check.detail}", style="" if check.ok else "red"))
        if check.fix:
            console.print(Text("      fix: ", style="bold yellow") + Text(check.fix))
    console.print()
    if report.spool_dir:
        console.print(Text("Spools", style="bold") + Text(f"  {report.spool_dir}"))
        if not report.spools:
            console.print("  empty: no backend has spans waiting")
        for usage in report.spools:
            console.print(
                Text(f"  {os.path.basename(usage.directory)}", style="bold")
                + Text(
                    f"  {usage.spans} spans, {usage.bytes} bytes in {usage.files} file(s)"
                    f"  ({usage.destination or '?'}; sent by the next run that exports "
                    "there, or `aiorunner traces push --spool`)"
                )
            )
        console.print()
    if report.ok:
        console.print(Text("Traces would arrive.", style="bold green"))
    elif report.ignored and not report.config_error and all(c.ok for c in report.checks):
        console.print(
            Text(
                "Traces would arrive, but not as configured: settings above are ignored.",
                style="bold red",
            )
        )
    else:
        console.print(Text("Traces would NOT arrive: see the fix above.", style="bold red"))


def _with_propagators(report: DoctorReport) -> DoctorReport:
    """``report`` with the ``OTEL_PROPAGATORS`` names a run would leave out (checked here:
    propagation is the ``_context`` wing's, which ``_doctor`` does not import)."""
    import dataclasses

    from .._config import TracingConfig, collect_env_problems
    from .._context.propagation import check_propagators
    from .._exceptions import ConfigError

    with collect_env_problems(log=False) as found:
        try:
            check_propagators(TracingConfig().resolve())
        except ConfigError:
            return report  # the report says so already
    new = [p for p in found if p.variable == "OTEL_PROPAGATORS" and p not in report.ignored]
    return dataclasses.replace(report, ignored=[*report.ignored, *new]) if new else report


@click.command("doctor")
@click.option(
    "--exporter",
    "-e",
    "exporter",
    default=None,
    metavar="NAMES",
    help="Check these backends (comma-separated) instead of OTEL_TRACES_EXPORTER's.",
)
@click.option(
    "--endpoint",
    default=None,
    metavar="URL",
    help="Check this collector endpoint (as TracingConfig.collector_endpoint).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds to wait for each backend's answer.",
)
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
def doctor_command(
    exporter: str | None, endpoint: str | None, timeout: float, as_json: bool
) -> None:
    """Check that traces would arrive: the effective configuration (with where each value
    came from, secrets masked), the installed backends, and a test span through each
    configured backend, with the exact fix when one fails.

    Exit code 0 when traces would arrive, 1 when they would not (or the configuration
    is invalid), 2 for a usage error.
    """
    import anyio
    from rich.console import Console

    from .._config import TracingConfig
    from .._doctor.checks import diagnose

    config = TracingConfig(exporter_type=exporter, collector_endpoint=endpoint)
    report = _with_propagators(anyio.run(lambda: diagnose(config, timeout=timeout)))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print(report, Console(highlight=False, soft_wrap=True))
    if not report.ok:
        raise SystemExit(1)
