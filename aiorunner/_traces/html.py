"""
``aiorunner traces show ID --html out.html``: the waterfall as one self-contained HTML file.

Everything is inline (CSS, a few lines of JavaScript, the data as HTML), and a
Content-Security-Policy forbids any network access, so the file opens anywhere, offline,
and can be attached to a ticket. Rows are flat like Jaeger's timeline: each carries its
span id, parent id and depth as ``data-*`` attributes; bars are absolutely placed with
percentages of the trace's duration. Hover shows a span's summary, a click (or Enter)
opens its attributes and events, the triangle folds a subtree, and ``out.html#expand``
opens every span (for printing). Every text goes through
``html.escape``: span names and attributes come from scripts and are not trusted.
"""

from __future__ import annotations

import json
import os
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .reader import ROOT_SPAN_NAME, format_duration, format_time, resolve_traces_file
from .tree import Trace, load_trace

if TYPE_CHECKING:
    from .reader import SpanRecord

__all__ = ["render_html", "write_html"]

_CSS = """
:root { --ok: #2b8a9e; --error: #d64545; --running: #d49a1c; --lost: #a03d8f; --event: #9b3fb5; }
body { font: 13px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.2em; margin: 0 0 .2em; } h1 code { font-weight: normal; }
.summary { color: #555; margin: 0 0 1em; }
.charts h2 { font-size: 1em; font-weight: normal; color: #555; margin: .5em 0 .2em; }
.chart { margin: 0 1em .8em 0; } .chart .frame { fill: none; stroke: #ddd; }
.chart text { font-size: 11px; fill: #555; }
.chart .line { fill: none; stroke-width: 1.5; } .cpu .line { stroke: var(--ok); }
.memory .line { stroke: var(--event); }
.status-ok { color: var(--ok); } .status-error { color: var(--error); }
.status-running { color: var(--running); } .status-lost { color: var(--lost); }
.waterfall { border-top: 1px solid #ccc; }
.row, .axis { display: grid; grid-template-columns: 28em 1fr 6em 5em; align-items: center;
  border-bottom: 1px solid #eee; min-height: 1.7em; }
/* The axis shares the rows' em-sized grid: a smaller font on it would narrow its
   columns and put the ticks off the bars; only the labels are smaller. */
.axis { color: #777; }
.row { cursor: pointer; } .row:hover, .row:focus { background: #f3f6fa; outline: none; }
.name { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.fold { display: inline-block; width: 1.1em; color: #777; user-select: none; }
.track, .ticks { position: relative; height: 1em; margin: 0 .6em; }
.tick { position: absolute; transform: translateX(-50%); white-space: nowrap; font-size: .9em; }
.tick:first-child { transform: none; } .tick:last-child { transform: translateX(-100%); }
.bar { position: absolute; top: 0; height: 100%; min-width: 2px; border-radius: 2px;
  background: var(--ok); }
.row.status-error .bar { background: var(--error); }
.row.status-running .bar { background: repeating-linear-gradient(45deg, var(--running),
  var(--running) 4px, #f0c050 4px, #f0c050 8px); }
.row.status-lost .bar { background: repeating-linear-gradient(45deg, var(--lost),
  var(--lost) 4px, #d9a6cf 4px, #d9a6cf 8px); }
.event { position: absolute; top: -2px; width: 7px; height: 7px; margin-left: -4px;
  background: var(--event); transform: rotate(45deg) translateY(25%); }
.duration { text-align: right; font-variant-numeric: tabular-nums; }
.status { padding-left: .8em; }
.details { background: #fafafa; border-bottom: 1px solid #eee; padding: .4em 1em .6em; }
.details table { border-collapse: collapse; } .details td { padding: 1px .8em 1px 0;
  vertical-align: top; font-family: ui-monospace, monospace; }
.details td:first-child { color: #666; } .details ul { margin: .3em 0; padding-left: 1.2em; }
/* A status message may be a traceback: its line breaks are kept. */
.details td.lines { white-space: pre-wrap; }
.logs { list-style: none; font: 12px/1.35 ui-monospace, monospace; }
.logs pre { display: inline; margin: 0; white-space: pre-wrap; }
.logs time, .logs .stream { color: #888; } .log-error { color: var(--error); font-weight: 600; }
.note { color: #777; margin-top: 1em; } .script { color: #777; }
"""

_JS = """
document.querySelectorAll('.row').forEach(function (row) {
  function toggle() {
    var d = document.getElementById('details-' + row.dataset.spanId);
    d.hidden = !d.hidden;
  }
  row.addEventListener('click', function (e) {
    if (e.target.classList.contains('fold')) { return; }
    toggle();
  });
  row.addEventListener('keydown', function (e) { if (e.key === 'Enter') { toggle(); } });
});
document.querySelectorAll('.fold[data-children]').forEach(function (fold) {
  fold.addEventListener('click', function () {
    var row = fold.closest('.row'), depth = +row.dataset.depth;
    var folded = fold.textContent === '\\u25b8';
    fold.textContent = folded ? '\\u25be' : '\\u25b8';
    var next = row.nextElementSibling;
    while (next) {
      if (next.classList.contains('row')) {
        if (+next.dataset.depth <= depth) { break; }
        next.hidden = !folded;
      } else if (!folded) {
        next.hidden = true;
      }
      next = next.nextElementSibling;
    }
  });
});
// trace.html#expand opens every span's details (for printing), the way clicks do.
if (location.hash === '#expand') {
  document.querySelectorAll('.row').forEach(function (row) { row.click(); });
}
document.body.dataset.ready = 'yes';
"""

_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def _percent(value: float) -> str:
    return f"{max(0.0, min(100.0, value)):.3f}%"


def _value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    return json.dumps(value, ensure_ascii=False, default=str)


def _script(span: SpanRecord) -> str:
    """A run's root also names its script (pipeline runs all share the root name)."""
    script = span.script_path
    if span.name != ROOT_SPAN_NAME or not script:
        return ""
    return f' <span class="script">{escape(os.path.basename(str(script)))}</span>'


#: The class of a detail cell whose line breaks are kept (a status message).
_LINES = ' class="lines"'


def _details(trace: Trace, span: SpanRecord) -> str:
    rows = [
        ("span id", span.span_id),
        ("parent id", span.parent_span_id or "(none)"),
        ("service", span.service),
        ("scope", span.scope),
        ("start", f"+{format_duration((span.start_ns - trace.start_ns) / 1e9)}"),
        ("status", span.status + (f": {span.status_message}" if span.status_message else "")),
    ]
    rows.extend(
        (key, _value(value))
        for key, value in sorted(span.attributes.items())
        if not (key == "aiorunner.pending" and span.pending)
    )
    table = "".join(
        f"<tr><td>{escape(k)}</td><td{_LINES if k == 'status' else ''}>{escape(v)}</td></tr>"
        for k, v in rows
    )
    events = "".join(
        f'<li class="event-item">{escape(event.name)} '
        f"+{escape(format_duration(max(0, event.time_ns - trace.start_ns) / 1e9))} "
        + escape(" ".join(f"{k}={_value(v)}" for k, v in sorted(event.attributes.items())))
        + "</li>"
        for event in span.events
    )
    logs = "".join(
        f'<li class="log{" log-error" if line.is_error else ""}">'
        f"<time>{escape(_log_time(line.time_ns))}</time> "
        f'<span class="stream">{escape(line.stream or "-")}</span> '
        f'<span class="severity">{escape(line.severity_text or "-")}</span> '
        f"<pre>{escape(line.body)}</pre></li>"
        for line in trace.logs_of(span.span_id)
    )
    return (
        f'<div class="details" id="details-{escape(span.span_id)}" hidden>'
        f"<table>{table}</table>"
        + (f"<ul>{events}</ul>" if events else "")
        + (f'<ul class="logs">{logs}</ul>' if logs else "")
        + "</div>"
    )


def _log_time(ns: int) -> str:
    try:
        return format_time(ns)[11:]
    except (ValueError, OverflowError, OSError):  # a time no clock shows (hostile input)
        return "?"


def _charts(trace: Trace) -> str:
    """Each monitored run's CPU % and memory over time (inline SVG, from the samples of
    its ``execute_script`` span)."""
    from .charts import format_bytes, resource_series, svg_chart

    out = []
    for span in trace.spans:
        cpu, memory = resource_series(span)
        # One sample is a number, not a picture (the details list it): a run shorter than
        # the monitor interval gets no chart.
        if len(cpu) < 2 and len(memory) < 2:
            continue
        end = trace.span_end(span)
        when = format_duration(max(0, span.start_ns - trace.start_ns) / 1e9)
        charts = ""
        if len(cpu) >= 2:
            peak = max(v for _, v in cpu)
            charts += svg_chart(
                cpu,
                title=f"CPU % of {span.name} at +{when}",
                label=f"CPU % (of one core), max {peak:.0f} %",
                start_ns=span.start_ns,
                end_ns=end,
                css_class="cpu",
            )
        if len(memory) >= 2:
            peak = max(v for _, v in memory)
            charts += svg_chart(
                memory,
                title=f"memory of {span.name} at +{when}",
                label=f"memory (RSS), max {format_bytes(peak)}",
                start_ns=span.start_ns,
                end_ns=end,
                css_class="memory",
            )
        out.append(
            f'<section class="charts" data-span-id="{escape(span.span_id)}">'
            f"<h2>Resource use of {escape(span.name)} at +{escape(when)}</h2>{charts}</section>"
        )
    return "".join(out)


def render_html(trace: Trace) -> str:
    """The waterfall of ``trace`` as a complete HTML document (a string)."""
    origin = trace.start_ns
    total = max(1, trace.end_ns - origin)
    has_children = {s.parent_span_id for s in trace.spans}
    roots = trace.roots()
    subject = roots[0].script if roots else ""
    service = roots[0].service if roots else ""
    summary = [
        f'<span class="status-{trace.status}">{trace.status}</span>',
        escape(("running for " if trace.running else "") + format_duration(trace.duration)),
        f"{len(trace.spans)} spans",
    ]
    summary += [escape(x) for x in (subject, f"service {service}" if service else "") if x]
    summary.append(escape(f"started {format_time(origin)}"))
    ticks = "".join(
        f'<span class="tick" style="left:{_percent(f * 100)}">'
        f"{escape('0s' if f == 0 else format_duration(trace.duration * f))}</span>"
        for f in (0.0, 0.25, 0.5, 0.75, 1.0)
    )
    parts = [
        (
            '<div class="axis"><div class="name"><b>Span</b></div>'
            f'<div class="ticks">{ticks}</div><div class="duration"><b>Duration</b></div>'
            '<div class="status"><b>Status</b></div></div>'
        )
    ]
    for row in trace.rows():
        span = row.span
        end = trace.span_end(span)
        offset = (span.start_ns - origin) / total * 100
        width = (end - span.start_ns) / total * 100
        duration = format_duration(max(0, end - span.start_ns) / 1e9)
        fold = (
            '<span class="fold" data-children="1" title="fold">\u25be</span>'
            if span.span_id in has_children
            else '<span class="fold"></span>'
        )
        events = "".join(
            f'<span class="event" style="left:{_percent((e.time_ns - origin) / total * 100)}" '
            f'title="{escape(e.name)} +{escape(format_duration((e.time_ns - origin) / 1e9))}">'
            "</span>"
            for e in span.events
        )
        title = f"{span.name} · {duration} · {span.status}"
        parts.append(
            f'<div class="row status-{span.status}" tabindex="0" '
            f'data-span-id="{escape(span.span_id)}" '
            f'data-parent-id="{escape(span.parent_span_id)}" data-depth="{row.depth}" '
            f'data-start-ns="{span.start_ns}" data-end-ns="{end}" title="{escape(title)}">'
            f'<div class="name" style="padding-left:{row.depth * 1.2:.1f}em">{fold}'
            f'<span class="span-name">{escape(span.name)}</span>{_script(span)}</div>'
            f'<div class="track"><div class="bar" style="left:{_percent(offset)};'
            f'width:{_percent(width)}"></div>{events}</div>'
            f'<div class="duration">{escape(duration)}</div>'
            f'<div class="status status-{span.status}">{span.status}</div></div>'
        )
        parts.append(_details(trace, span))
    orphans = [s for s in roots if s.parent_span_id]
    note = (
        f'<p class="note">{len(orphans)} span(s) have a parent not in this file (another '
        "service or process): shown as roots.</p>"
        if orphans
        else ""
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Trace {escape(trace.trace_id)} · aiorunner</title>"
        f"<style>{_CSS}</style></head>\n<body>"
        f"<h1>Trace <code>{escape(trace.trace_id)}</code></h1>"
        f'<p class="summary">{" · ".join(summary)}</p>'
        + _charts(trace)
        + f'<div class="waterfall" data-trace-id="{escape(trace.trace_id)}" '
        f'data-start-ns="{origin}" data-end-ns="{trace.end_ns}">\n'
        + "\n".join(parts)
        + f"\n</div>{note}<script>{_JS}</script></body></html>\n"
    )


def write_html(
    trace: Trace | str,
    path: str | os.PathLike[str],
    *,
    file: str | os.PathLike[str] | None = None,
) -> Path:
    """
    Write the HTML waterfall of ``trace`` (a :class:`Trace`, or a trace id or unique
    prefix read from ``file``, default the ``jsonl`` backend's file) to ``path`` and
    return the path. Blocking file I/O: call it from a worker thread on an event loop.

    Raises:
        TraceNotFoundError: the id is not in the file (or is ambiguous).
        OSError: ``path`` cannot be written.
    """
    if isinstance(trace, str):
        trace = load_trace(resolve_traces_file(file), trace)
    out = Path(path)
    out.write_text(render_html(trace), encoding="utf-8")
    return out
