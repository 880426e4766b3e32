"""
The ``aiorunner`` command line.

Each subcommand lives in its own private module (``_cli_run``, ``_cli_backends``,
``_cli_traces``, ``_cli_doctor``) and is imported only when invoked, so ``aiorunner --help``
stays fast and a broken optional piece cannot take the others down.
"""

from __future__ import annotations

import atexit
import gc
import importlib
from typing import Any

import click

from .._exceptions import naming_options
from .._version import __version__

__all__ = ["main"]

#: How errors from the library name the options every command spells alike (see
#: aiorunner._exceptions.option_name): ``--exporter`` of run, traces push and doctor,
#: ``--endpoint`` of traces push and doctor. ``run`` adds its own (cli/run.py).
OPTION_NAMES = {
    "exporter_type": "--exporter",
    "TracingConfig(exporter_type=...)": "--exporter",
    "collector_endpoint": "--endpoint",
}

# subcommand name -> (module, attribute, one-line help)
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("aiorunner.cli.run", "run_command", "Run scripts and trace every run."),
    "backends": (
        "aiorunner.cli.backends",
        "backends_command",
        "List the exporter backends installed and whether each loads.",
    ),
    "traces": (
        "aiorunner.cli.traces",
        "traces_command",
        "Browse runs recorded in the embedded JSONL trace file.",
    ),
    "doctor": (
        "aiorunner.cli.doctor",
        "doctor_command",
        "Check the tracing configuration and that each backend's endpoint answers.",
    ),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = _COMMANDS.get(cmd_name)
        if spec is None:
            return None
        try:
            module = importlib.import_module(spec[0])
        except ModuleNotFoundError as exc:
            if exc.name != spec[0]:
                raise
            return None
        command: click.Command = getattr(module, spec[1])
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, _COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aiorunner")
def main(**_: Any) -> None:
    """Run scripts as asyncio subprocesses, watch them, and trace every run with
    OpenTelemetry.

    Traces go to the embedded default (.aiorunner/traces.jsonl) unless
    OTEL_TRACES_EXPORTER names other backends (see `aiorunner backends`).
    """
    # The command line's user gets errors in the command line's words (--exporter).
    click.get_current_context().with_resource(naming_options(OPTION_NAMES))
    # Registered before any command's own exit work, so it runs after all of it (atexit
    # is last in, first out): the session has flushed and closed by then. Freezing the
    # heap spares the interpreter's final garbage collection over the few hundred modules
    # a traced run loads, ~30 ms of every `aiorunner run` here (benchmarks/bench_startup).
    # Nothing is skipped but that collection: atexit handlers, flushes and module teardown
    # all still run.
    atexit.register(gc.freeze)
