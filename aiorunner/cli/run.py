"""
``aiorunner run``: one script with live output and a trace, or many scripts at once.

One script (unchanged): ``aiorunner run SCRIPT [ARGS...]``; everything after SCRIPT is
its arguments. Exit code: the script's own, 124 on timeout, 128+N when killed by signal
N, 1 when it could not start, 2 for usage errors (click's convention).

Many scripts, when asked for explicitly, never guessed from the arguments:

- ``aiorunner run -j 4 a.py b.py c.py``: with ``-j/--jobs`` before the scripts, every
  positional is a script (no per-script arguments: use a jobs file for those);
- ``aiorunner run a.py b.py c.py -j 4``: a trailing ``-j N`` also means many scripts
  when at least two scripts come before it and each is an existing script file (``.py``
  or executable); otherwise ``-j N`` stays an argument of the one script, as before.
  ``aiorunner run -- a.py b.py -j 4`` forces the one-script reading;
- ``aiorunner run --jobs-file jobs.toml``: jobs with arguments, env, timeouts, retries
  and dependencies (see ``aiorunner._orchestrate.jobs``).

Many scripts: 0 when every job succeeded, 1 otherwise, 128+N when stopped by signal N
(Ctrl-C: 130), after every child was stopped and the traces flushed.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from .._config import TracingConfig, collect_env_problems, report_env_problem
from .._context.instrument import check_installed
from .._exceptions import AiorunnerError, naming_options
from .otel_options import format_help, given, otel_environment, otel_options, usage_message

if TYPE_CHECKING:
    from .._orchestrate.jobs import Job
    from .._result import RunResult

__all__ = ["parse_env_pairs", "run_command"]

#: How messages from the runner name this command's options (they name the Python
#: parameters otherwise; see aiorunner._exceptions.option_name).
OPTION_NAMES = {
    "interpreter=": "--interpreter",
    "validate_dependencies=False": "--no-validate-dependencies",
    "cwd=": "--cwd",
    "exporter_type": "--exporter",
    "TracingConfig(exporter_type=...)": "--exporter",
    "max_concurrency": "-j",
}
#: With --jobs-file a job's own keys may be the ones to fix.
JOBS_FILE_OPTION_NAMES = {
    **OPTION_NAMES,
    "interpreter=": "--interpreter (or the job's interpreter = in the jobs file)",
    "cwd=": "--cwd (or the job's cwd = in the jobs file)",
}


class NotTheCommandLine(click.ClickException):
    """A bad value that came from where the command line pointed, not from the command
    line itself (an ``AIORUNNER_*`` variable, the jobs file): click's ``Error:`` line
    without its ``Usage:`` header, which would say the command was mistyped. Exit 2,
    as for a usage error."""

    exit_code = 2


def config_problem(exc: AiorunnerError) -> click.ClickException:
    """The click error for ``exc``: a usage error when the command line gave the bad
    value, :class:`NotTheCommandLine` when the environment did."""
    if getattr(exc, "variable", None):
        return NotTheCommandLine(str(exc))
    return click.UsageError(str(exc))


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


class _RunCommand(click.Command):
    """Remembers the raw arguments, to tell ``run -- a.py b.py -j 2`` (one script, told
    so by ``--``) from ``run a.py b.py -j 2`` (many)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["aiorunner.raw_args"] = list(args)
        return super().parse_args(ctx, args)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        format_help(self, ctx, formatter)


_TRAILING_JOBS = ("-j", "--jobs")


def _trailing_jobs(args: tuple[str, ...]) -> tuple[int, int] | None:
    """``(N, how many trailing args)`` when ``args`` end with ``-j N`` / ``--jobs N`` /
    ``-jN`` / ``--jobs=N``; else None."""
    if len(args) >= 2 and args[-2] in _TRAILING_JOBS and args[-1].isdigit():
        return int(args[-1]), 2
    if args:
        last = args[-1]
        for prefix in ("--jobs=", "-j"):
            if last.startswith(prefix) and last[len(prefix) :].isdigit():
                return int(last[len(prefix) :]), 1
    return None


def _is_script_file(path: str) -> bool:
    return os.path.isfile(path) and (path.endswith(".py") or os.access(path, os.X_OK))


def _many_scripts(
    ctx: click.Context, script: str | None, args: tuple[str, ...], jobs: int | None
) -> tuple[list[str], int | None] | None:
    """The scripts and concurrency when the command line asks for many scripts."""
    if script is None:
        return None
    if jobs is not None:
        return [script, *args], jobs
    raw: list[str] = ctx.meta.get("aiorunner.raw_args", [])
    at = len(raw) - 1 - len(args)
    if at >= 1 and raw[at - 1] == "--":
        return None  # `run -- SCRIPT ARGS...`: one script, whatever its arguments
    trailing = _trailing_jobs(args)
    if trailing is None:
        return None
    scripts = [script, *args[: len(args) - trailing[1]]]
    if len(scripts) >= 2 and all(_is_script_file(s) for s in scripts):
        return scripts, trailing[0]
    missing = [s for s in scripts[1:] if s.endswith(".py") and not _is_script_file(s)]
    if len(scripts) >= 2 and _is_script_file(script) and missing:
        from .._redact import redact_args

        # Probably a typo in one of several scripts: say why this is one script.
        click.echo(
            click.style(
                f"note: running {script} alone with arguments {' '.join(redact_args(args))!r}: "
                f"{', '.join(missing)} is not a file. For several scripts give -j N before "
                "them (aiorunner run -j N a.py b.py) or use --jobs-file.",
                fg="yellow",
            ),
            err=True,
        )
    return None


@click.command(
    "run",
    cls=_RunCommand,
    context_settings={"allow_interspersed_args": False},
)
@click.argument("script", required=False, type=click.Path(dir_okay=True, path_type=str))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "-j",
    "--jobs",
    "jobs",
    type=click.IntRange(min=1),
    metavar="N",
    help="Run every SCRIPT given, N at a time (many-scripts mode).",
)
@click.option(
    "--jobs-file",
    type=click.Path(dir_okay=False, path_type=str),
    help="Run the jobs of a TOML jobs file (args, env, timeout, retries, after).",
)
@click.option(
    "--dask",
    "dask_address",
    metavar="ADDRESS",
    help=(
        "Many scripts: run them on the Dask cluster whose scheduler is at ADDRESS "
        "(tcp://host:8786; needs pip install 'aiorunner[dask]')."
    ),
)
@click.option(
    "--fail-fast",
    is_flag=True,
    default=None,
    help="Many scripts: the first failure stops the others.",
)
@click.option(
    "--retries",
    type=click.IntRange(min=0),
    help="Many scripts: extra attempts for a failed script (default 0).",
)
@click.option(
    "--retry-backoff",
    type=click.FloatRange(min=0),
    help="Many scripts: seconds before the first retry, doubled each time (default 0.5).",
)
@click.option(
    "--trace",
    "trace_mode",
    type=click.Choice(["per-run", "batch"]),
    help="Many scripts: one trace per run (default) or one trace for the batch.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds before a script's process group is terminated (exit 124).",
)
@click.option(
    "--cwd",
    type=click.Path(file_okay=False, path_type=str),
    help="Working directory of the script(s).",
)
@click.option(
    "--env",
    "env_pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set a variable for the script(s) (repeatable).",
)
@click.option(
    "--interpreter", type=str, help="Python interpreter for .py scripts (default: this one)."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the RunResult (many scripts: a list of them) as JSON on stdout; script output goes to stderr.",
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
@click.option(
    "--instrument",
    "instrument",
    multiple=True,
    metavar="NAME",
    help="Load opentelemetry-instrumentation-NAME inside Python scripts (repeatable).",
)
@click.option(
    "--no-in-script-tracing",
    is_flag=True,
    help="Do not trace inside Python scripts (their OpenTelemetry spans are not collected).",
)
@click.option(
    "--no-logs",
    is_flag=True,
    help="Do not send the script's output as log records (same as OTEL_LOGS_EXPORTER=none).",
)
@click.option(
    "--no-metrics",
    is_flag=True,
    help="Do not send the runs' resource use as metrics (same as OTEL_METRICS_EXPORTER=none).",
)
@otel_options
@click.pass_context
def run_command(
    ctx: click.Context,
    /,
    script: str | None,
    args: tuple[str, ...],
    jobs: int | None,
    jobs_file: str | None,
    dask_address: str | None,
    fail_fast: bool | None,
    retries: int | None,
    retry_backoff: float | None,
    trace_mode: str | None,
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
    instrument: tuple[str, ...],
    no_in_script_tracing: bool,
    no_logs: bool,
    no_metrics: bool,
    **otel_flags: str | None,
) -> None:
    """Run SCRIPT with ARGS as a traced subprocess, or many scripts at once.

    Output is live. At the end one line says success or failure, the duration and the
    trace id. Exit code: the script's, 124 on timeout, 128+N on signal N, 1 when it
    could not start, 2 for usage errors. Options go before SCRIPT; everything after
    SCRIPT is passed to it.

    Many scripts: give -j N before them (or a trailing -j N after two or more existing
    script files), or --jobs-file. A live display on a terminal (plain lines
    otherwise), then a summary table: job, status, exit code, duration, CPU seconds,
    peak memory, trace id. Exit code 0 when all succeeded, else 1; Ctrl-C stops every
    script, flushes the traces and exits 130.

    \b
    Examples:
      aiorunner run etl.py --day 2024-10-23
      aiorunner run --timeout 60 --env DAY=2024-10-23 etl.py
      aiorunner run --json job.py > result.json
      aiorunner run -j 4 extract.py transform.py load.py
      aiorunner run a.py b.py c.py -j 2
      aiorunner run --jobs-file jobs.toml --trace batch
    """
    env = parse_env_pairs(env_pairs)
    # Errors from the runner name our flags (--interpreter), not its parameters.
    ctx.with_resource(naming_options(OPTION_NAMES if jobs_file is None else JOBS_FILE_OPTION_NAMES))
    flags = given(otel_flags)
    # --exporter_otlp_endpoint URL and the like set their variable for this command.
    ctx.with_resource(otel_environment(flags))
    overrides: dict[str, Any] = {}
    if exporter:
        overrides["exporter_type"] = exporter
    if service_name:
        overrides["service_name"] = service_name
    if instrument:
        overrides["instrument"] = [n.strip() for v in instrument for n in v.split(",") if n.strip()]
    if no_in_script_tracing:
        overrides["in_script_tracing"] = False
    if no_logs:
        overrides["logs"] = False
    if no_metrics:
        overrides["metrics"] = False
    try:
        config = _config_from_env(overrides, flags)
        if instrument and interpreter is None:
            check_installed(config.instrument or ())
    except AiorunnerError as exc:
        raise config_problem(exc) from None

    many = _many_scripts(ctx, script, args, jobs)
    if jobs_file is not None or many is not None:
        if jobs_file is not None and script is not None:
            raise click.UsageError(
                f"--jobs-file runs the jobs of the file; do not also give scripts ({script!r})"
            )
        options = {
            "max_concurrency": many[1] if many else jobs,
            "fail_fast": fail_fast,
            "retries": retries,
            "retry_backoff": retry_backoff,
            "timeout": timeout,
            "trace": trace_mode,
            "dask": dask_address,
        }
        defaults = {"cwd": cwd, "env": env, "interpreter": interpreter}
        runner_options: dict[str, Any] = {
            "validate_dependencies": not no_validate_dependencies,
            "monitor": not no_monitor,
        }
        if monitor_interval is not None:
            runner_options["monitor_interval"] = monitor_interval
        code = _run_many_cli(
            scripts=many[0] if many else None,
            jobs_file=jobs_file,
            options=options,
            defaults=defaults,
            runner_options=runner_options,
            config=config,
            as_json=as_json,
            quiet=quiet,
        )
        raise SystemExit(code)
    if dask_address is not None:
        raise click.UsageError(
            "--dask runs many scripts on a cluster: add -j N before the scripts, or use "
            "--jobs-file (aiorunner run -j 8 --dask tcp://host:8786 a.py b.py)"
        )
    if jobs is None and any(v is not None for v in (fail_fast, retries, retry_backoff, trace_mode)):
        raise click.UsageError(
            "--fail-fast, --retries, --retry-backoff and --trace are for many scripts: "
            "add -j N before the scripts, or use --jobs-file"
        )
    if script is None:
        raise click.UsageError("Missing argument 'SCRIPT' (or give --jobs-file FILE).")

    def to_stderr(stream: str, data: bytes) -> None:
        sys.stderr.buffer.write(data)
        sys.stderr.buffer.flush()

    from .._run.runner import ScriptRunner

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
        raise config_problem(exc) from None
    except KeyboardInterrupt:
        # The run killed the script's process group and flushed what it could (bounded);
        # do not wait a whole export timeout again at exit.
        click.echo(click.style("interrupted: the script was stopped", fg="yellow"), err=True)
        if runner.enable_tracing and runner.config.enabled:
            runner.session.close(timeout=2.0)
        raise SystemExit(130) from None
    if result.export is not None and not result.export.ok and not result.export.disabled:
        # The collector already failed this run's export for a whole export timeout:
        # do not wait that long again at exit for the last spans (counted as lost).
        runner.session.close(timeout=1.0)
    if as_json:
        click.echo(result.to_json(indent=2))
    if not result.success and result.error:
        click.echo(click.style(result.error, fg="red"), err=True)
    click.echo(summary_line(result), err=True)
    sys.stdout.flush()
    raise SystemExit(result.shell_exit_code)


def _config_from_env(overrides: dict[str, Any], flags: dict[str, str]) -> TracingConfig:
    """The run's config. A bad OTEL_* value from the environment is warned about (once) and
    replaced by the default; the same value given as a flag is a usage error, so with
    flags the backends are built here too (the run's session: their own variables are
    checked), before the script starts."""
    with collect_env_problems(log=False) as problems:
        config = TracingConfig.from_env(**overrides)
        if flags and config.enabled:
            from .._context.propagation import check_propagators
            from .._export.session import get_default_session

            get_default_session(config)
            check_propagators(config)
    flagged = [problem for problem in problems if problem.variable in flags]
    if flagged:
        raise click.UsageError("; ".join(usage_message(problem) for problem in flagged))
    for problem in problems:
        report_env_problem(problem)
    return config


# -- many scripts --------------------------------------------------------------------------


def _build_jobs(
    scripts: list[str] | None,
    jobs_file: str | None,
    options: dict[str, Any],
    defaults: dict[str, Any],
) -> list[Job]:
    """The jobs to run, with the command line's options applied (``options`` is updated
    with the jobs file's batch options where the command line gave none)."""
    from .._orchestrate.jobs import Job, load_jobs_file

    if jobs_file is not None:
        try:
            spec = load_jobs_file(jobs_file)
        except AiorunnerError as exc:
            # The message names the file (and the job): the command line was fine.
            raise NotTheCommandLine(str(exc)) from None
        for key in ("max_concurrency", "fail_fast", "retries", "retry_backoff", "timeout", "trace"):
            if options.get(key) is None:
                options[key] = getattr(spec, key)
        # [executor] dask = "tcp://..." unless --dask said where.
        if options.get("dask") is None:
            options["dask"] = spec.executor.get("dask")
        options["ship_script"] = bool(spec.executor.get("ship_script", False))
        jobs = list(spec.jobs)
    else:
        assert scripts is not None
        for item in scripts:
            if item.startswith("-"):
                raise click.UsageError(
                    f"{item!r} looks like an option, but with -j every argument after the "
                    "options is a script; put options before the scripts, and give "
                    "scripts their own arguments in a --jobs-file"
                )
        jobs = [Job(item) for item in scripts]
    result = []
    for job in jobs:
        changes: dict[str, Any] = {}
        if defaults["env"]:
            changes["env"] = {**job.env, **defaults["env"]}  # the command line wins
        if defaults["cwd"] is not None and job.cwd is None:
            changes["cwd"] = defaults["cwd"]
        if defaults["interpreter"] is not None and job.interpreter is None:
            changes["interpreter"] = defaults["interpreter"]
        result.append(dataclasses.replace(job, **changes) if changes else job)
    return result


def _run_many_cli(
    *,
    scripts: list[str] | None,
    jobs_file: str | None,
    options: dict[str, Any],
    defaults: dict[str, Any],
    runner_options: dict[str, Any],
    config: TracingConfig,
    as_json: bool,
    quiet: bool,
) -> int:
    """Run the batch with progress and a summary; return the exit code."""
    import asyncio
    import json

    from .._orchestrate.executor import LocalExecutor
    from .._orchestrate.many import DEFAULT_RETRY_BACKOFF, _Batch
    from .progress import ProgressDisplay

    try:
        jobs = _build_jobs(scripts, jobs_file, options, defaults)
        display = ProgressDisplay(
            len(jobs), show_output=not quiet, stdout=sys.stderr.buffer if as_json else None
        )
        executor: Any
        if options.get("dask"):
            from .._orchestrate.dask import DaskExecutor

            executor = DaskExecutor(
                options["dask"],
                runner_options=runner_options,
                ship_script=bool(options.get("ship_script")),
                on_output=display.on_output,
                on_worker=display.on_worker,
            )
        else:
            executor = LocalExecutor(runner_options=runner_options, on_output=display.on_output)
        batch = _Batch(
            jobs,
            max_concurrency=options["max_concurrency"],
            fail_fast=bool(options["fail_fast"]),
            retries=options["retries"] or 0,
            retry_backoff=(
                options["retry_backoff"]
                if options["retry_backoff"] is not None
                else DEFAULT_RETRY_BACKOFF
            ),
            timeout=options["timeout"],
            config=config,
            trace=options["trace"] or "per-run",
            executor=executor,
            on_event=display.on_event,
        )
    except AiorunnerError as exc:
        raise config_problem(exc) from None

    stopped_by: list[int] = []

    async def main() -> list[RunResult]:
        import anyio

        async with anyio.create_task_group() as tg:

            async def stop_on_signals() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        name = signal.Signals(signum).name
                        if not stopped_by:
                            display.note(f"{name}: stopping every script, then flushing traces")
                        stopped_by.append(signum)
                        batch.stop(f"cancelled: interrupted by {name}")

            tg.start_soon(stop_on_signals)
            results = await batch.run()
            tg.cancel_scope.cancel()
        return results

    async def on_cluster() -> list[RunResult]:
        """Connect first (an unreachable scheduler: one error naming its address, exit
        1), run, close the client."""
        from .._orchestrate.dask import ClusterError

        try:
            await executor.__aenter__()
        except ClusterError as exc:
            raise click.ClickException(str(exc)) from None
        try:
            return await main()
        finally:
            await executor.aclose()

    started = time.perf_counter()
    with display:
        try:
            results = asyncio.run(main() if isinstance(executor, LocalExecutor) else on_cluster())
        except AiorunnerError as exc:
            raise config_problem(exc) from None
    display.summary(results, time.perf_counter() - started)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
    sys.stdout.flush()
    if stopped_by:
        return 128 + stopped_by[0]
    return 0 if all(r.success for r in results) else 1
