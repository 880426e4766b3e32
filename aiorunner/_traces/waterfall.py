"""
The terminal waterfall of ``aiorunner traces show``: a trace's spans as a tree, each with a
bar scaled to the trace's duration (like Jaeger's timeline), its duration and status,
events marked on the bar, and attributes with ``verbose`` (and each span's log records:
the script's output lines, from ``logs.jsonl``); ``logs_only`` lists the log records alone.

Rendering is a pure function of the trace and the width (the moment the file was read
stands in for the end of a running span), so the same trace renders to the same text on
every machine: tests compare it exactly. Colour is only added when printing to a terminal.
Every text taken from the file goes through :func:`printable` (a span name cannot clear
the screen or retitle the terminal).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import textwrap
from typing import TYPE_CHECKING, Any

from rich.cells import cell_len, set_cell_size
from rich.console import Console
from rich.text import Text

from .._exceptions import ConfigError
from .printable import printable
from .reader import MIN_WIDTH, ROOT_SPAN_NAME, format_duration, format_time, resolve_traces_file
from .tree import load_trace

if TYPE_CHECKING:
    from .logs import LogLine
    from .reader import SpanRecord
    from .tree import Trace, TreeRow

__all__ = [
    "MIN_WIDTH",
    "build_lines",
    "build_log_lines",
    "print_trace",
    "render_trace",
    "render_waterfall",
]

BAR = "█"
RUNNING_BAR = "▒"
EVENT = "◆"
_DURATION_WIDTH = 8
_STATUS_WIDTH = 7
_STYLES = {"ok": "green", "error": "bold red", "running": "yellow", "lost": "bold magenta"}
_BAR_STYLES = {"ok": "cyan", "error": "red", "running": "yellow", "lost": "magenta"}
_KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


def _label(span: SpanRecord) -> str:
    """A span's name; a run's root also names its script (runs in a pipeline all have
    the root name ScriptRunner)."""
    script = span.script_path
    if span.name == ROOT_SPAN_NAME and script:
        return f"{span.name} {printable(os.path.basename(str(script)))}"
    return printable(span.name)


def _guide(row: TreeRow) -> str:
    """The tree drawing in front of a span's name."""
    if row.depth == 0:
        return ""
    lead = "".join("│  " if more else "   " for more in row.guides)
    return lead + ("└─ " if row.last else "├─ ")


def _detail_guide(row: TreeRow, has_children: bool) -> str:
    """The tree drawing in front of a span's detail lines (``verbose``)."""
    lead = "".join("│  " if more else "   " for more in row.guides)
    if row.depth:
        lead += "   " if row.last else "│  "
    return lead + ("│  " if has_children else "   ")


def _column(position: float, cells: int) -> int:
    return min(cells - 1, max(0, math.floor(position * cells)))


def _ruler(trace: Trace, cells: int) -> str:
    """Tick labels at 0, ¼, ½, ¾ and the end of the trace, over the bar column; a label
    that would touch its neighbour is left out (the end label always stays)."""
    line = [" "] * cells
    total = trace.duration
    if total <= 0:
        return "0s".ljust(cells)
    end_label = format_duration(total)
    end_start = cells - len(end_label)
    line[end_start:] = end_label
    last_end = -1
    for fraction in (0.0, 0.25, 0.5, 0.75):
        label = "0s" if fraction == 0 else format_duration(total * fraction)
        start = _column(fraction, cells)
        if start <= last_end or start + len(label) >= end_start:
            continue
        line[start : start + len(label)] = label
        last_end = start + len(label)
    return "".join(line)


def _bar(trace: Trace, span: SpanRecord, cells: int) -> Text:
    origin = trace.start_ns
    total = max(1, trace.end_ns - origin)
    end_ns = trace.span_end(span)
    first = _column((span.start_ns - origin) / total, cells)
    last = max(first + 1, min(cells, math.ceil((end_ns - origin) / total * cells)))
    fill = [RUNNING_BAR if span.pending else BAR] * (last - first)
    for event in span.events:
        column = min(last - 1, max(first, _column((event.time_ns - origin) / total, cells)))
        fill[column - first] = EVENT
    text = Text(" " * first)
    style = _BAR_STYLES[span.status]
    for char, run in itertools.groupby(fill):
        text.append(char * len(list(run)), style="bold magenta" if char == EVENT else style)
    text.append(" " * (cells - last))
    return text


def _value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False, default=str)


def _clip(text: str, cells: int) -> str:
    if cell_len(text) <= cells:
        return text
    return set_cell_size(text, max(0, cells - 1)) + "…"


def _wrap(text: str, cells: int, indent: str = "") -> list[str]:
    """Wrap a detail line to ``cells``, continuation lines indented by two (more than
    ``indent``, the first line's)."""
    lines = textwrap.wrap(
        text,
        width=cells,
        initial_indent=indent,
        subsequent_indent=indent + "  ",
        break_long_words=True,
        break_on_hyphens=False,
        drop_whitespace=False,
    ) or [""]
    return [_clip(line.rstrip(), cells) for line in lines]


def _details(trace: Trace, span: SpanRecord, width: int, lead: str, service: str) -> list[Text]:
    room = max(10, width - cell_len(lead))
    first = (
        f"id {span.span_id}  {_KINDS.get(span.kind, span.kind)}"
        f"  at +{format_duration((span.start_ns - trace.start_ns) / 1e9)}"
    )
    if span.service and span.service != service:
        first += f"  service {span.service}"
    lines = [first]
    if span.status_message:
        lines.append(f"status {span.status}: {span.status_message}")
    lines.extend(
        f"{key} = {_value(value)}"
        for key, value in sorted(span.attributes.items())
        if not (key == "aiorunner.pending" and span.pending)
    )
    for event in span.events:
        offset = format_duration(max(0, event.time_ns - trace.start_ns) / 1e9)
        attributes = " ".join(f"{k}={_value(v)}" for k, v in sorted(event.attributes.items()))
        lines.append(f"{EVENT} +{offset} {event.name}" + (f"  {attributes}" if attributes else ""))
    return [
        Text(lead, style="dim") + Text(part, style="dim")
        for line in lines
        for part in _wrap_lines(printable(line, newlines=True), room)
    ]


def _sparklines(span: SpanRecord, width: int, lead: str) -> list[Text]:
    """A monitored run's CPU % and memory, one sparkline each (from its samples)."""
    from .charts import format_bytes, resource_series, sparkline

    cpu, memory = resource_series(span)
    room = max(8, min(40, width - cell_len(lead) - 30))
    lines = []
    if cpu:
        peak = max(v for _, v in cpu)
        lines.append(
            Text(lead, style="dim") + Text(f"cpu {sparkline(cpu, room)}  max {peak:.0f} %")
        )
    if memory:
        peak = max(v for _, v in memory)
        lines.append(
            Text(lead, style="dim")
            + Text(f"mem {sparkline(memory, room)}  max {format_bytes(peak)}")
        )
    return lines


def _wrap_lines(text: str, cells: int) -> list[str]:
    """A detail that has line breaks (a status message holding a traceback) printed as
    several lines, each wrapped; the lines after the first are indented by two, under
    the detail they belong to. ``text`` went through :func:`printable` first: a line
    break is the only control character left in it."""
    first, *rest = text.split("\n")
    out = _wrap(first, cells)
    for line in rest:
        out.extend(_wrap(line, cells, indent="  "))
    return out


def _log_text(line: LogLine) -> list[str]:
    """``12:00:01.250 stderr ERROR   body``; a body's further lines (a traceback) follow,
    indented."""
    try:
        stamp = format_time(line.time_ns)[11:]
    except (ValueError, OverflowError, OSError):  # a time no clock shows (hostile input)
        stamp = "?".ljust(12)
    level = (line.severity_text or "-")[:8]
    first, *rest = printable(line.body, newlines=True).split("\n")
    return [f"{stamp} {line.stream or '-':<6} {level:<7} {first}", *("    " + r for r in rest)]


def _log_lines(lines: list[LogLine], width: int, lead: str) -> list[Text]:
    room = max(10, width - cell_len(lead))
    out: list[Text] = []
    for line in lines:
        style = "red" if line.is_error else ("yellow" if line.severity_number >= 13 else "")
        out.extend(
            Text(lead) + Text(part, style=style)
            for text in _log_text(line)
            for part in _wrap(text, room)
        )
    return out


def build_log_lines(trace: Trace, *, width: int = 100) -> list[Text]:
    """The trace's log records alone (``traces show --logs``), in time order."""
    head = Text(f"Trace {printable(trace.trace_id)}", style="bold")
    head.append(f"  {len(trace.logs)} log record" + ("s" if len(trace.logs) != 1 else ""))
    lines = [head]
    lines.extend(_log_lines(list(trace.logs), width, ""))
    if trace.logs_omitted:
        lines.append(Text(f"({trace.logs_omitted} more not shown)", style="dim"))
    if not trace.logs:
        lines.append(Text("(no log records: logs.jsonl holds none of this trace)", style="dim"))
    return lines


def build_lines(trace: Trace, *, width: int = 100, verbose: bool = False) -> list[Text]:
    """
    The waterfall as styled lines, each exactly ``width`` cells or shorter.

    Raises:
        ConfigError: ``width`` is below :data:`MIN_WIDTH`.
    """
    if width < MIN_WIDTH:
        raise ConfigError(f"--width {width} is too narrow for a waterfall; use {MIN_WIDTH} or more")
    rows = trace.rows()
    has_children = {s.parent_span_id for s in trace.spans}
    labels = [_guide(row) + _label(row.span) for row in rows]
    name_cells = min(max([cell_len(label) for label in labels] + [12]), width * 35 // 100)
    bar_cells = width - name_cells - _DURATION_WIDTH - _STATUS_WIDTH - 4
    roots = trace.roots()
    first_root = roots[0] if roots else None
    subject = first_root.script if first_root else ""
    head = Text()
    head.append(f"Trace {printable(trace.trace_id)}", style="bold")
    head.append("  ")
    head.append(trace.status, style=_STYLES[trace.status])
    so_far = " so far" if trace.running else ""
    count = f"{len(trace.spans)} span" + ("s" if len(trace.spans) != 1 else "")
    head.append(f"  {format_duration(trace.duration)}{so_far}  {count}")
    service = first_root.service if first_root else ""
    info = [subject] if subject else []
    if service:
        info.append(f"service {service}")
    info.append(f"started {format_time(trace.start_ns)}")
    summary = printable(" · ".join(info))
    lines = [head, *(Text(part, style="dim") for part in _wrap(summary, width))]
    lines.append(Text())
    header = Text(set_cell_size("Span", name_cells) + " ", style="bold")
    header.append(_ruler(trace, bar_cells), style="dim")
    header.append("  " + "Duration".rjust(_DURATION_WIDTH) + " " + "Status", style="bold")
    lines.append(header)
    for row, label in zip(rows, labels, strict=True):
        span = row.span
        line = Text(set_cell_size(_clip(label, name_cells), name_cells) + " ")
        line.append_text(_bar(trace, span, bar_cells))
        seconds = (trace.span_end(span) - span.start_ns) / 1e9
        line.append("  " + format_duration(max(0.0, seconds)).rjust(_DURATION_WIDTH) + " ")
        line.append(span.status, style=_STYLES[span.status])
        lines.append(line)
        if verbose:
            lead = _detail_guide(row, span.span_id in has_children)
            lines.extend(_sparklines(span, width, lead))
            lines.extend(_details(trace, span, width, lead, service))
            lines.extend(_log_lines(trace.logs_of(span.span_id), width, lead + "│ "))
    orphans = [s for s in roots if s.parent_span_id]
    if orphans:
        lines.append(Text())
        note = (
            f"{len(orphans)} span(s) whose parent is not in the file (another service's, "
            "or not written yet) are shown as roots"
        )
        lines.extend(Text(part, style="dim") for part in _wrap(note, width))
    return lines


def render_waterfall(trace: Trace, *, width: int = 100, verbose: bool = False) -> str:
    """The waterfall as plain text (no colour), lines joined by newlines."""
    return "\n".join(
        line.plain.rstrip() for line in build_lines(trace, width=width, verbose=verbose)
    )


def render_trace(
    trace_id: str,
    file: str | os.PathLike[str] | None = None,
    *,
    width: int = 100,
    verbose: bool = False,
) -> str:
    """
    Read ``trace_id`` (or a unique prefix) from ``file`` (default: the ``jsonl``
    backend's file) and return its waterfall as plain text. Blocking file I/O: call it from
    a worker thread when on an event loop.

    Raises:
        TraceNotFoundError: no such file or trace, or an ambiguous prefix.
    """
    trace = load_trace(resolve_traces_file(file), trace_id)
    return render_waterfall(trace, width=width, verbose=verbose)


def print_trace(
    trace: Trace,
    *,
    width: int | None = None,
    verbose: bool = False,
    console: Console | None = None,
    logs_only: bool = False,
) -> None:
    """Print the waterfall (or, ``logs_only``, the log records) to ``console`` (default
    stdout), in colour on a terminal."""
    console = console or Console(highlight=False, soft_wrap=True)
    width = width or console.width
    built = (
        build_log_lines(trace, width=width)
        if logs_only
        else build_lines(trace, width=width, verbose=verbose)
    )
    for line in built:
        console.print(line, overflow="ignore", crop=False)
