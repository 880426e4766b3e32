"""
``aiorunner traces``: browse the runs recorded in the embedded JSONL trace file, without a
collector.

``aiorunner traces`` (or ``traces list``) lists runs newest first, ``traces show ID`` draws
one as a waterfall (or writes it as HTML), and ``traces push`` replays recorded traces into
any backend through the export pipeline, for traces recorded offline.

What comes from a trace file (span names, script paths, ids, messages) or from a backend
is printed through ``printable``: control characters show as escapes, never reach the
terminal as commands.
"""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING, Any

import click

from .._exceptions import AiorunnerError, ConfigError
from .._traces.reader import MIN_WIDTH, parse_since, resolve_traces_file

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import Console

    from .._traces.listing import TraceListing
    from .._traces.reader import ReadStats

__all__ = ["traces_command"]

_STATUS_STYLES = {"ok": "green", "error": "bold red", "running": "yellow", "lost": "bold magenta"}
_SCRIPT_CELLS = 40

_FILE_HELP = (
    "Trace file to read (default: $AIORUNNER_TRACES_FILE, else .aiorunner/traces.jsonl); "
    "its rotated files (.1, .2 ...) are read too."
)


def _file_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--file",
        "-f",
        "file",
        type=click.Path(dir_okay=False),
        default=None,
        help=_FILE_HELP,
    )(func)


def _since(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_since(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None


def _list_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            _file_option,
            click.option("--failed", is_flag=True, help="Only runs that failed."),
            click.option(
                "--slowest",
                type=click.IntRange(min=1),
                default=None,
                metavar="N",
                help="The N slowest runs, slowest first.",
            ),
            click.option(
                "--since",
                default=None,
                metavar="WHEN",
                help="Only runs started since WHEN: 30s, 30m, 1h, 2d, 1w ago, or an ISO time.",
            ),
            click.option(
                "--limit",
                "-n",
                type=click.IntRange(min=0),
                metavar="N",
                default=20,
                show_default=True,
                help="At most this many runs (0: all).",
            ),
            click.option("--json", "as_json", is_flag=True, help="JSON lines, one run each."),
        ]
    ):
        func = option(func)
    return func


def _printable(text: str, *, newlines: bool = False) -> str:
    from .._traces.printable import printable

    return printable(text, newlines=newlines)


def _fail(exc: AiorunnerError) -> click.ClickException:
    # Messages quote what the file holds (ambiguous prefixes list its trace ids).
    return click.ClickException(_printable(str(exc), newlines=True))


def _note_skipped(stats: ReadStats, path: object, rest: str = "the other spans are shown") -> None:
    """One note on stderr per kind of thing reading skipped (the rest was read)."""
    if stats.skipped:
        click.echo(
            f"note: skipped {stats.skipped} unreadable line(s) of {path} "
            "(cut short by a crash mid-write?)",
            err=True,
        )
    if stats.bad_spans:
        click.echo(
            f"note: skipped {stats.bad_spans} malformed span(s) of {path} "
            f"(first: {_printable(stats.first_problem)}); {rest}",
            err=True,
        )


def _clip_left(text: str, cells: int) -> str:
    """Keep the end of a path (the file name matters most)."""
    from rich.cells import cell_len

    if cell_len(text) <= cells:
        return text
    return "…" + text[-(cells - 1) :]


def _print_listing(listing: TraceListing, console: Console) -> None:
    from rich.cells import cell_len, set_cell_size
    from rich.text import Text

    from .._traces.reader import format_duration, format_time

    rows = [
        (
            format_time(s.start_ns)[:19],
            _clip_left(_printable(s.script), _SCRIPT_CELLS),
            s.status,
            format_duration(s.duration),
            str(s.span_count),
            _printable(s.trace_id),
        )
        for s in listing.traces
    ]
    headers = ("TIME", "SCRIPT", "STATUS", "DURATION", "SPANS", "TRACE ID")
    widths = [max([cell_len(h)] + [cell_len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    right = {3, 4}

    def cell(index: int, text: str) -> str:
        if index in right:
            return " " * (widths[index] - cell_len(text)) + text
        return set_cell_size(text, widths[index])

    header = "  ".join(cell(i, h) for i, h in enumerate(headers)).rstrip()
    console.print(Text(header, style="bold"))
    for row in rows:
        line = Text()
        for index, text in enumerate(row):
            if index:
                line.append("  ")
            style = _STATUS_STYLES.get(text) if index == 2 else None
            line.append(cell(index, text), style=style)
        line.rstrip()
        console.print(line)


def _run_list(
    file: str | None,
    failed: bool,
    slowest: int | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    from rich.console import Console

    from .._traces.listing import list_traces

    since_ns = _since(since)
    path = resolve_traces_file(file)
    try:
        listing = list_traces(
            path, failed=failed, slowest=slowest, since_ns=since_ns, limit=limit or None
        )
    except AiorunnerError as exc:
        raise _fail(exc) from None
    _note_skipped(listing.stats, path)
    if as_json:
        for summary in listing.traces:
            click.echo(json.dumps(summary.to_dict()))
        return
    if not listing.traces:
        what = "failed runs" if failed else "runs"
        click.echo(f"No {what} recorded in {path}" + (" in that period." if since else "."))
        return
    console = Console(highlight=False, soft_wrap=True)
    _print_listing(listing, console)
    if limit and len(listing.traces) == limit and slowest is None:
        click.echo(f"(the {limit} newest; --limit 0 shows all)", err=True)


@click.group("traces", invoke_without_command=True)
@_list_options
@click.pass_context
def traces_command(
    ctx: click.Context,
    file: str | None,
    failed: bool,
    slowest: int | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Browse runs recorded in the embedded JSONL trace file, newest first.

    \b
    aiorunner traces [--failed] [--slowest N] [--since 1h] [--limit N]
    aiorunner traces show TRACE_ID [-v] [--html out.html]
    aiorunner traces push --exporter otlp [--since 1d]
    """
    if ctx.invoked_subcommand is None:
        _run_list(file, failed, slowest, since, limit, as_json)


@traces_command.command("list")
@_list_options
def list_command(
    file: str | None,
    failed: bool,
    slowest: int | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List recorded runs: time, script, status, duration, span count, trace id."""
    _run_list(file, failed, slowest, since, limit, as_json)


@traces_command.command("show")
@click.argument("trace_id")
@_file_option
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="Attributes, events and log records (the script's output) of every span.",
)
@click.option(
    "--logs",
    "logs_only",
    is_flag=True,
    help="Only the trace's log records: time, stream, severity, line.",
)
@click.option(
    "--html",
    "html_out",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write the waterfall as one self-contained HTML file instead.",
)
@click.option(
    "--width",
    type=click.IntRange(min=MIN_WIDTH),
    default=None,
    help="Width in columns (default: the terminal's).",
)
def show_command(
    trace_id: str,
    file: str | None,
    verbose: bool,
    logs_only: bool,
    html_out: str | None,
    width: int | None,
) -> None:
    """Draw one trace as a waterfall. TRACE_ID may be any unique prefix."""
    from .._traces.tree import load_trace
    from .._traces.waterfall import print_trace

    try:
        trace = load_trace(resolve_traces_file(file), trace_id)
    except AiorunnerError as exc:
        raise _fail(exc) from None
    _note_skipped(trace.stats, resolve_traces_file(file))
    if trace.logs_stats.skipped or trace.logs_stats.bad_spans:
        from .._traces.logs import logs_file_for

        stats = trace.logs_stats
        click.echo(
            f"note: skipped {stats.skipped} unreadable line(s) and {stats.bad_spans} malformed "
            f"log record(s) of {logs_file_for(resolve_traces_file(file))}"
            + (f" (first: {_printable(stats.first_problem)})" if stats.first_problem else "")
            + "; the other records are shown",
            err=True,
        )
    if html_out is not None:
        from .._traces.html import write_html

        try:
            out = write_html(trace, html_out)
        except OSError as exc:
            raise click.ClickException(f"cannot write {html_out}: {exc.strerror}") from None
        click.echo(
            f"Wrote the waterfall of trace {_printable(trace.trace_id)} ({len(trace.spans)} spans)"
        )
        click.echo(f"to {out.resolve()}")
        return
    if width is None:
        width = max(MIN_WIDTH, shutil.get_terminal_size((100, 24)).columns)
    print_trace(trace, width=width, verbose=verbose, logs_only=logs_only)


@traces_command.command("push")
@_file_option
@click.option(
    "--exporter",
    "-e",
    default=None,
    metavar="NAMES",
    help="Backend(s) to replay into, comma-separated (e.g. otlp, zipkin, jaeger, jsonl); "
    "default with --to: jsonl.",
)
@click.option(
    "--endpoint",
    default=None,
    metavar="URL",
    help="Collector endpoint (as TracingConfig.collector_endpoint); default: the backend's "
    "own variables, e.g. OTEL_EXPORTER_OTLP_ENDPOINT.",
)
@click.option(
    "--to",
    "to",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="PATH",
    help="The file a file backend (jsonl) writes to: created, or appended to. Required "
    "for jsonl (the file read is --file's).",
)
@click.option("--since", default=None, metavar="WHEN", help="Only runs started since WHEN.")
@click.option(
    "--trace",
    "trace_ids",
    multiple=True,
    metavar="ID",
    help="Only this trace (id or unique prefix); repeatable.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Export timeout in seconds (default: OTEL_BSP_EXPORT_TIMEOUT, else 30).",
)
@click.option(
    "--spool",
    is_flag=True,
    help="Send what backends could not take earlier, from their spools "
    "($AIORUNNER_SPOOL_DIR, else .aiorunner/spool), instead of a trace file; "
    "default backends: the configured ones.",
)
def push_command(
    file: str | None,
    exporter: str | None,
    endpoint: str | None,
    to: str | None,
    since: str | None,
    trace_ids: tuple[str, ...],
    timeout: float | None,
    spool: bool,
) -> None:
    """Replay recorded traces into a backend, through the export pipeline.

    For runs recorded offline: their spans keep their ids, times, parents, attributes
    and events. Exit code 0 when every span was exported, 1 otherwise.

    \b
    aiorunner traces push --exporter otlp --endpoint http://collector:4317 --since 1d
    aiorunner traces push --file ci/traces.jsonl --to all.jsonl
    aiorunner traces push --spool
    """
    import anyio

    from .._traces.push import push_traces
    from .._traces.reader import ReadStats

    if spool:
        if file is not None or to is not None or since or trace_ids:
            raise click.UsageError(
                "--spool sends the spools, not a trace file: drop --file, --to, --since "
                "and --trace (or drop --spool to replay a file)",
                ctx=click.get_current_context(),
            )
        _push_spool(exporter, endpoint, timeout)
        return

    if exporter is None:
        if to is None:
            raise click.UsageError(
                "name the backend(s) to replay into: --exporter otlp (with --endpoint URL "
                "for another collector), or --to PATH to copy the traces into a file",
                ctx=click.get_current_context(),
            )
        exporter = "jsonl"
    since_ns = _since(since)
    path = resolve_traces_file(file)

    async def push() -> Any:
        return await push_traces(
            path,
            exporter=exporter,
            endpoint=endpoint,
            to=to,
            since_ns=since_ns,
            trace_ids=trace_ids,
            export_timeout=timeout,
        )

    try:
        report = anyio.run(push)
    except AiorunnerError as exc:
        raise _fail(exc) from None
    skipped = ReadStats(
        skipped=report.unreadable, bad_spans=report.bad_spans, first_problem=report.first_problem
    )
    _note_skipped(skipped, path, rest="they were not sent")
    if report.running:
        click.echo(
            f"note: {report.running} run(s) still going: their root spans were not sent "
            "(push them again once they have finished)",
            err=True,
        )
    if not report.spans:
        if report.running:
            why = ": its runs are still going"
        elif since or trace_ids:
            why = ": no finished run matches --since/--trace (`aiorunner traces` lists them)"
        else:
            why = ": it holds no finished span"
        click.echo(f"Nothing to push from {path}{why}.")
        return
    verb = "Pushed" if report.ok else "Tried to push"
    click.echo(f"{verb} {report.spans} spans of {report.traces} traces from {path}")
    failing: list[str] = []
    for backend in report.statistics.backends:
        line = f"  {backend.name}: {backend.exported} exported"
        if backend.name == "jsonl" and report.to is not None:
            line += f" to {report.to}"
        if backend.failed or backend.dropped:
            line += f", {backend.failed} failed, {backend.dropped} dropped"
        if backend.last_error and backend.exported != report.spans:
            line += f" ({_printable(backend.last_error)})"
            failing.append(backend.name)
        click.echo(line)
    if report.statistics.dropped:
        click.echo(f"  {report.statistics.dropped} dropped before export")
    if report.logs and report.log_statistics is not None:
        click.echo(f"and {report.logs} log records")
        for backend in report.log_statistics.backends:
            line = f"  {backend.name}: {backend.exported} log records exported"
            if backend.failed or backend.dropped:
                line += f", {backend.failed} failed, {backend.dropped} dropped"
                if backend.last_error:
                    line += f" ({_printable(backend.last_error)})"
                failing.append(backend.name)
            click.echo(line)
    if report.logs_skipped:
        click.echo(f"note: log records not pushed: {_printable(report.logs_skipped)}", err=True)
    if report.stopped_early:
        click.echo("Stopped: a backend failed for good; the rest of the file was not sent.")
    if not report.ok:
        names = ",".join(failing) or exporter
        click.echo(
            f"To see why: aiorunner doctor --exporter {names}"
            + (f" --endpoint {endpoint}" if endpoint else "")
            + ". Pushing again sends every selected span again (--since, --trace select "
            "fewer)."
        )
        raise SystemExit(1)


def _push_spool(exporter: str | None, endpoint: str | None, timeout: float | None) -> None:
    """``traces push --spool``: send the spools now; exit 1 unless all were emptied."""
    import anyio

    from .._traces.push import push_spool

    async def push() -> Any:
        return await push_spool(exporter=exporter, endpoint=endpoint, export_timeout=timeout)

    try:
        report = anyio.run(push)
    except AiorunnerError as exc:
        raise _fail(exc) from None
    spooled = [b for b in report.statistics.backends if b.spool_dir is not None]
    if not spooled:
        click.echo("None of these backends keeps a spool (a file or the terminal never does).")
        return
    for backend in spooled:
        line = f"  {backend.name}: {backend.unspooled} spans sent from {backend.spool_dir}"
        if report.emptied.get(backend.name):
            line += " (the spool is empty now)"
        else:
            line += "; the rest stays spooled"
            if backend.last_error:
                line += f" ({_printable(backend.last_error)})"
        click.echo(line)
    if not report.ok:
        click.echo("Not every spool could be sent: try again once the backend is reachable.")
        raise SystemExit(1)
