"""
``aiorunner run SCRIPT [ARGS...]``: run a script with live output and a trace.

Exit code: the script's own, 124 on timeout, 128+N when killed by signal N, 1 when it
could not start, 2 for usage errors (click's convention).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

from ._config import TracingConfig
from ._exceptions import AiorunnerError
from ._runner import ScriptRunner

if TYPE_CHECKING:
    from ._result import RunResult

__all__ = ["parse_env_pairs", "run_command"]


def parse_env_pairs(pairs: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(
                f"{pair!r} is not of the form KEY=VALUE (e.g. --env DAY=2024-10-23)",
                param_hint="--env",
            )
        env[key] = value
    return env


def summary_line(result: RunResult) -> str:
    """The one line the CLI prints at the end of a run."""
    if result.success:
        status = click.style("✓ succeeded", fg="green", bold=True)
    elif result.timed_out:
        status = click.style("✗ timed out", fg="red", bold=True)
    elif result.signal is not None:
        status = click.style(f"✗ killed by {result.signal_name}", fg="red", bold=True)
    elif result.exit_code is not None:
        status = click.style(f"✗ failed (exit {result.exit_code})", fg="red", bold=True)
    else:
        status = click.style("✗ could not run", fg="red", bold=True)
    line = f"{status} {result.script} in {result.duration:.2f}s · trace {result.trace_id}"
    if result.export is not None and not result.export.ok:
        line += click.style(f" · export: {result.export.describe()}", fg="yellow")
    return line


@click.command(
    "run",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.argument("script", type=click.Path(dir_okay=True, path_type=str))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds before the script's process group is terminated (exit 124).",
)
@click.option(
    "--cwd",
    type=click.Path(file_okay=False, path_type=str),
    help="Working directory of the script.",
)
@click.option(
    "--env",
    "env_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set a variable for the script (repeatable).",
)
@click.option(
    "--interpreter", type=str, help="Python interpreter for .py scripts (default: this one)."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the RunResult as JSON on stdout; the script's output goes to stderr.",
)
@click.option(
    "--exporter",
    type=str,
    help="Backend name(s), comma separated (overrides OTEL_TRACES_EXPORTER).",
)
@click.option(
    "--service-name", type=str, help="service.name of the trace (overrides OTEL_SERVICE_NAME)."
)
@click.option(
    "--monitor-interval",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds between samples of the process tree (default 0.5).",
)
@click.option("--no-monitor", is_flag=True, help="Do not sample CPU/memory/I/O.")
@click.option(
    "--no-validate-dependencies", is_flag=True, help="Do not check imports before running."
)
@click.option("--quiet", "-q", is_flag=True, help="Do not pass the script's output through.")
def run_command(
    script: str,
    args: tuple[str, ...],
    timeout: float | None,
    cwd: str | None,
    env_pairs: tuple[str, ...],
    interpreter: str | None,
    as_json: bool,
    exporter: str | None,
    service_name: str | None,
    monitor_interval: float | None,
    no_monitor: bool,
    no_validate_dependencies: bool,
    quiet: bool,
) -> None:
    """Run SCRIPT with ARGS as a traced subprocess.

    Output is live. At the end one line says success or failure, the duration and the
    trace id. Exit code: the script's, 124 on timeout, 128+N on signal N, 2 for usage
    errors. Options go before SCRIPT; everything after SCRIPT is passed to it.

    \b
    Examples:
      aiorunner run etl.py --day 2024-10-23
      aiorunner run --timeout 60 --env DAY=2024-10-23 etl.py
      aiorunner run --json job.py > result.json
    """
    env = parse_env_pairs(env_pairs)
    overrides: dict[str, Any] = {}
    if exporter:
        overrides["exporter_type"] = exporter
    if service_name:
        overrides["service_name"] = service_name
    try:
        config = TracingConfig.from_env(**overrides)
    except AiorunnerError as exc:
        raise click.UsageError(str(exc)) from None

    def to_stderr(stream: str, data: bytes) -> None:
        sys.stderr.buffer.write(data)
        sys.stderr.buffer.flush()

    try:
        runner = ScriptRunner(
            script,
            args,
            interpreter=interpreter,
            cwd=cwd,
            env=env,
            timeout=timeout,
            config=config,
            validate_dependencies=not no_validate_dependencies,
            monitor=not no_monitor,
            monitor_interval=monitor_interval,
            passthrough=not quiet and not as_json,
            on_output=to_stderr if (as_json and not quiet) else None,
        )
        result = runner.run_script()
    except AiorunnerError as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(result.to_json(indent=2))
    if not result.success and result.error:
        click.echo(click.style(result.error, fg="red"), err=True)
    click.echo(summary_line(result), err=True)
    sys.stdout.flush()
    raise SystemExit(result.shell_exit_code)
