"""
``aiorunner backends``: every exporter backend installed, where it comes from, and
whether it imports.
"""

from __future__ import annotations

import json

import click

__all__ = ["backends_command"]

_GROUP_LABEL = {"aiorunner.backends": "aiorunner", "opentelemetry_traces_exporter": "opentelemetry"}


@click.command("backends")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.option(
    "--no-import",
    "no_import",
    is_flag=True,
    help="Do not import the plugins (faster; the 'loads' column is then not checked).",
)
def backends_command(as_json: bool, no_import: bool) -> None:
    """List the exporter backends installed and whether each loads.

    Names come from the entry point group `aiorunner.backends` and from OpenTelemetry's
    `opentelemetry_traces_exporter` group (any OTel exporter works by its name). Use a
    name in OTEL_TRACES_EXPORTER (several: comma-separated).
    """
    from .._export.registry import WELL_KNOWN, installed_names, list_backends

    infos = list_backends(check=not no_import)
    installed = set(installed_names())
    missing = {name: package for name, package in WELL_KNOWN.items() if name not in installed}
    if as_json:
        click.echo(
            json.dumps(
                {"backends": [info.to_dict() for info in infos], "not_installed": missing},
                indent=2,
            )
        )
        return

    from rich.console import Console
    from rich.table import Table

    table = Table(title="Exporter backends (OTEL_TRACES_EXPORTER=<name>)")
    for column in ("name", "source", "distribution", "version", "loads"):
        table.add_column(column)
    for info in infos:
        if no_import:
            loads = "not checked"
        elif info.loads:
            loads = "[green]yes[/green]"
        else:
            loads = f"[red]no[/red]: {info.error}"
        name = info.name
        if info.shadowed:
            name += " [dim](shadowed: the aiorunner one is used)[/dim]"
        table.add_row(
            name,
            _GROUP_LABEL.get(info.group, info.group),
            info.distribution or "?",
            info.version or "?",
            loads,
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped: do not wrap the table at 80 columns
    console.print(table)
    if missing:
        console.print("Not installed (name: pip package):")
        for name, package in sorted(missing.items()):
            console.print(f"  {name}: {package}", highlight=False)
