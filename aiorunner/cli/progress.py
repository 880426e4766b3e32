"""
What ``aiorunner run`` shows while many scripts run, and the summary table at the end.

On a terminal (stderr is a TTY) a rich live display keeps one line per running script
(elapsed time, CPU and memory from the monitor's live samples) under the log of
finished ones. Anywhere else (CI logs, pipes) it prints one plain line per event, so the
log reads the same in a file. Script output is passed through line by line, prefixed with
the job's name, stdout to stdout and stderr to stderr (like ``docker compose up``).

The live display redraws from rich's own refresh thread; the event loop only updates a
small dict under a lock, so drawing never costs the loop more than that.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

    from typing_extensions import Self

    from .._orchestrate.many import JobEvent
    from .._result import RunResult

__all__ = ["PARTIAL_LINE_LIMIT", "ProgressDisplay", "format_bytes", "status_of"]

#: Longest error text shown under the summary table for one job.
ERROR_LINES = 6
#: Longest unfinished line held per job and stream (bytes); a longer line is passed
#: through in pieces of this size, each on a line of its own with the job's prefix.
PARTIAL_LINE_LIMIT = 64 * 1024


def format_bytes(value: float | None) -> str:
    """A memory size for people: 812.0 MiB, 1.2 GiB (``-`` when unknown)."""
    if value is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{int(value)} B"


def status_of(result: RunResult) -> tuple[str, str]:
    """(short status, rich style) of a final result."""
    if result.success:
        return "✓ ok", "green"
    if result.skipped:
        return "- skipped", "yellow"
    if result.cancelled:
        return ("- cancelled", "yellow") if result.attempts else ("- not started", "yellow")
    if result.timed_out:
        return "✗ timed out", "red"
    if result.signal is not None:
        return f"✗ {result.signal_name}", "red"
    if result.exit_code is not None:
        return f"✗ exit {result.exit_code}", "red"
    return "✗ not run", "red"


def _cpu_seconds(result: RunResult) -> float | None:
    metrics = result.metrics
    if "cpu_user_seconds" not in metrics:
        return None
    return float(metrics["cpu_user_seconds"]) + float(metrics.get("cpu_system_seconds", 0.0))


@dataclass
class _Running:
    """What the live display knows about one running attempt."""

    attempt: int
    started: float
    cpu_percent: float | None = None
    rss_bytes: int | None = None
    cpu_seconds: float | None = None
    #: The Dask worker running it (DaskExecutor's on_worker), None for local runs.
    worker: str | None = None


class ProgressDisplay:
    """
    Progress of one batch: feed it ``on_event`` and ``on_output``; ``summary`` at the end.

    Args:
        total: number of jobs in the batch.
        console: where progress and the summary go (stderr).
        live: draw the live display (default: when ``console`` is a terminal).
        show_output: pass script output through, prefixed with the job's name.
        stdout / stderr: binary streams for that output (default: ours).
    """

    def __init__(
        self,
        total: int,
        *,
        console: Console | None = None,
        live: bool | None = None,
        show_output: bool = True,
        stdout: BinaryIO | None = None,
        stderr: BinaryIO | None = None,
    ) -> None:
        import sys

        self.total = total
        self.console = console or Console(stderr=True)
        if not self.console.is_terminal and console is None:
            # A log file has no width: never wrap or truncate trace ids in the table.
            self.console = Console(stderr=True, width=200)
        self.live_mode = self.console.is_terminal if live is None else live
        self.show_output = show_output
        self._stdout = stdout or sys.stdout.buffer
        self._stderr = stderr or sys.stderr.buffer
        self._tty = {"stdout": _is_tty(self._stdout), "stderr": _is_tty(self._stderr)}
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        #: The unfinished line of each (job, stream): its pieces and their total size,
        #: never more than PARTIAL_LINE_LIMIT bytes (see on_output).
        self._partial: dict[tuple[str, str], tuple[list[bytes], int]] = {}
        self._done = 0
        self._failed = 0
        self._started_at = time.perf_counter()
        self._live: Live | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Self:
        if self.live_mode:
            self._live = Live(
                self,
                console=self.console,
                refresh_per_second=4,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for name, stream in list(self._partial):
            self._flush_partial(name, stream)
        if self._live is not None:
            self._live.stop()
            self._live = None

    def note(self, message: str) -> None:
        """A line of our own (e.g. "SIGINT: stopping every script")."""
        self.console.print(f"[bold yellow]\\[aiorunner][/] {escape(message)}")

    # -- events -----------------------------------------------------------------------------

    def on_event(self, event: JobEvent) -> None:
        """The batch's ``on_event`` hook."""
        if event.kind == "sample":
            sample = event.sample
            with self._lock:
                state = self._running.get(event.name)
                if state is not None and sample is not None:
                    state.cpu_percent = sample.cpu_percent
                    state.rss_bytes = sample.rss_bytes
                    state.cpu_seconds = sample.cpu_user + sample.cpu_system
            return
        if event.kind == "started":
            with self._lock:
                self._running[event.name] = _Running(event.attempt, time.perf_counter())
            if not self.live_mode:
                again = f" (attempt {event.attempt})" if event.attempt > 1 else ""
                self.console.print(f"[dim]\\[aiorunner][/] ▶ {escape(event.name)} started{again}")
            return
        with self._lock:
            self._running.pop(event.name, None)
        result = event.result
        if result is None:
            return
        for stream in ("stdout", "stderr"):
            self._flush_partial(event.name, stream)
        status, style = status_of(result)
        line = f"[{style}]{escape(status)}[/] {escape(event.name)}"
        if event.kind == "retrying":
            line += (
                f" in {result.duration:.2f}s · retrying in {event.delay or 0:g}s"
                f" (attempt {event.attempt + 1})"
            )
        else:
            self._done += 1
            if not result.success:
                self._failed += 1
            if result.skipped or (result.cancelled and not result.attempts):
                line += f" · {escape(result.error or '')}"
            else:
                line += f" in {result.duration:.2f}s"
                if result.worker:
                    line += f" on {escape(result.worker)}"
                if result.trace_id.strip("0"):
                    line += f" · trace {result.trace_id}"
            line += f" [dim]({self._done}/{self.total})[/]"
        self.console.print(f"[dim]\\[aiorunner][/] {line}", highlight=False)

    def on_worker(self, name: str, worker: str) -> None:
        """The ``DaskExecutor``'s ``on_worker`` hook: job ``name`` runs on ``worker``."""
        with self._lock:
            state = self._running.get(name)
            if state is not None:
                state.worker = worker
        if not self.live_mode:
            self.console.print(
                f"[dim]\\[aiorunner][/] ▶ {escape(name)} on {escape(worker)}", highlight=False
            )

    def on_output(self, name: str, stream: str, data: bytes) -> None:
        """
        The executor's ``on_output`` hook: prefixed, whole lines only, except that a line
        longer than :data:`PARTIAL_LINE_LIMIT` goes out in pieces of that size (each on a
        line of its own, prefixed) rather than being held whole.

        Linear in the output: a chunk is scanned once, the unfinished line is kept as a
        list of pieces and joined once, when it ends or reaches the limit (re-joining it
        on every chunk made a 40 MB line without a newline take 15 s and 160 MB).
        """
        if not self.show_output:
            return
        key = (name, stream)
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            line = data[start:end]
            held = self._partial.pop(key, None)
            start = end + 1
            if held is not None:
                if not held[1] and not line:
                    continue  # the line went out in whole pieces: no empty line after it
                line = b"".join([*held[0], line])
            self._write(name, stream, line)
        if start < len(data):
            self._hold(name, stream, data[start:] if start else data)

    def _hold(self, name: str, stream: str, piece: bytes) -> None:
        """Keep ``piece`` of an unfinished line; write out whole pieces of the limit."""
        key = (name, stream)
        pieces, size = self._partial.get(key, ([], 0))
        pieces.append(piece)
        size += len(piece)
        if size < PARTIAL_LINE_LIMIT:
            self._partial[key] = (pieces, size)
            return
        held = b"".join(pieces)
        offset = 0
        while size - offset >= PARTIAL_LINE_LIMIT:
            self._write(name, stream, held[offset : offset + PARTIAL_LINE_LIMIT])
            offset += PARTIAL_LINE_LIMIT
        # An empty entry still marks the line as going on (its newline writes nothing).
        self._partial[key] = ([held[offset:]] if offset < size else [], size - offset)

    def _flush_partial(self, name: str, stream: str) -> None:
        held = self._partial.pop((name, stream), None)
        if held is not None and held[1]:
            self._write(name, stream, b"".join(held[0]))

    def _write(self, name: str, stream: str, line: bytes) -> None:
        target = self._stdout if stream == "stdout" else self._stderr
        if self._live is not None and self._tty[stream]:
            # The same terminal the live display draws on: print above it.
            text = Text(f"{name} | ", style="cyan")
            text.append(line.decode("utf-8", errors="replace"))
            self._live.console.print(text, highlight=False, markup=False)
            return
        target.write(name.encode() + b" | " + line + b"\n")
        target.flush()

    # -- the live display -------------------------------------------------------------------

    def __rich__(self) -> Group:
        """Drawn by rich's refresh thread: a snapshot taken under the lock."""
        now = time.perf_counter()
        with self._lock:
            running = sorted(self._running.items(), key=lambda item: item[1].started)
            rows = [
                (
                    name,
                    state.attempt,
                    now - state.started,
                    state.cpu_percent,
                    state.rss_bytes,
                    state.worker,
                )
                for name, state in running
            ]
            done, failed = self._done, self._failed
        grid = Table.grid(padding=(0, 2))
        remote = any(row[5] for row in rows)
        for _ in range(6 if remote else 5):
            grid.add_column()
        for name, attempt, elapsed, cpu, rss, worker in rows:
            cells = [
                Text(f"● {name}", style="cyan"),
                Text(f"attempt {attempt}" if attempt > 1 else "", style="dim"),
                Text(f"{elapsed:6.1f}s", justify="right"),
                Text(f"CPU {cpu:5.1f}%" if cpu is not None else "CPU     -", justify="right"),
                Text(f"RSS {format_bytes(rss)}", justify="right"),
            ]
            if remote:
                cells.append(Text(f"on {worker}" if worker else "", style="dim"))
            grid.add_row(*cells)
        waiting = self.total - done - len(rows)
        footer = Text(
            f"{done}/{self.total} done · {len(rows)} running · {waiting} waiting"
            f" · {failed} not ok · {now - self._started_at:.1f}s",
            style="bold",
        )
        return Group(grid, footer)

    # -- the end ----------------------------------------------------------------------------

    def summary(self, results: Sequence[RunResult], wall_seconds: float) -> None:
        """The summary table, the errors of jobs that did not succeed, and one total line."""
        table = Table(title=None, show_lines=False, header_style="bold")
        table.add_column("job", overflow="fold")
        table.add_column("status", no_wrap=True)
        table.add_column("exit", justify="right", no_wrap=True)
        table.add_column("duration", justify="right", no_wrap=True)
        table.add_column("CPU s", justify="right", no_wrap=True)
        table.add_column("peak mem", justify="right", no_wrap=True)
        retried = any(r.attempts > 1 for r in results)
        if retried:
            table.add_column("tries", justify="right", no_wrap=True)
        remote = any(r.worker for r in results)
        if remote:
            table.add_column("worker", no_wrap=True)
        table.add_column("trace id", no_wrap=True, min_width=32)
        for result in results:
            status, style = status_of(result)
            cpu = _cpu_seconds(result)
            peak = result.metrics.get("memory_rss_peak_bytes")
            ran = bool(result.attempts) and not result.skipped
            row: list[Text | str] = [
                Text(result.name or result.script),
                Text(status, style=style),
                str(result.exit_code) if result.exit_code is not None else "-",
                f"{result.duration:.2f}s" if ran else "-",
                f"{cpu:.2f}" if cpu is not None else "-",
                format_bytes(peak) if peak is not None else "-",
            ]
            if retried:
                row.append(str(result.attempts))
            if remote:
                row.append(result.worker or "-")
            row.append(result.trace_id if result.trace_id.strip("0") else "-")
            table.add_row(*row)
        self.console.print(table)
        for result in results:
            if result.success or result.skipped or not result.error:
                continue
            lines = result.error.splitlines()
            text = "\n    ".join(
                lines[:ERROR_LINES] + (["..."] if len(lines) > ERROR_LINES else [])
            )
            self.console.print(
                f"[red]✗ {escape(result.name or result.script)}:[/] {escape(text)}", highlight=False
            )
        counts = {
            "succeeded": sum(r.success for r in results),
            "failed": sum(not r.success and not r.skipped and not r.cancelled for r in results),
            "skipped": sum(r.skipped for r in results),
            "cancelled": sum(r.cancelled for r in results),
        }
        parts = [f"{n} {word}" for word, n in counts.items() if n or word == "succeeded"]
        style = "green" if counts["succeeded"] == len(results) else "red"
        self.console.print(
            f"[bold {style}]{', '.join(parts)}[/] of {len(results)} in {wall_seconds:.2f}s",
            highlight=False,
        )


def _is_tty(stream: BinaryIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
