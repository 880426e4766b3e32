"""
Pictures of a run's resource use, from the monitoring events of its ``execute_script``
span (``cpu_monitoring``: ``aiorunner.cpu.percent``; ``memory_monitoring``:
``aiorunner.memory.rss_bytes``): an inline SVG line chart for the HTML view (no network,
no script: it passes the page's Content-Security-Policy), a one-line sparkline for the
terminal (``traces show -v``). People would rather look at these than read 40 events.

The events come from a file that may have been edited or written by anything (the reader
treats it as untrusted input): values that are not finite numbers are skipped, the
charts are bounded in size whatever the number of events.
"""

from __future__ import annotations

import math
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .reader import SpanRecord

__all__ = ["Series", "resource_series", "sparkline", "svg_chart"]

CPU_EVENT, CPU_KEY = "cpu_monitoring", "aiorunner.cpu.percent"
MEMORY_EVENT, MEMORY_KEY = "memory_monitoring", "aiorunner.memory.rss_bytes"
#: The eight heights of a sparkline cell.
BLOCKS = "▁▂▃▄▅▆▇█"
#: Points drawn at most (evenly thinned beyond): a chart stays small.
MAX_POINTS = 400

#: (time in ns since the epoch, value), in time order.
Series = list[tuple[int, float]]


def _series(span: SpanRecord, event: str, key: str) -> Series:
    out: Series = []
    for item in span.events:
        if item.name != event:
            continue
        value = item.attributes.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            continue
        out.append((int(item.time_ns), float(value)))
    out.sort(key=lambda point: point[0])
    return out


def resource_series(span: SpanRecord) -> tuple[Series, Series]:
    """(CPU percent, memory bytes) over time, from ``span``'s monitoring events."""
    return _series(span, CPU_EVENT, CPU_KEY), _series(span, MEMORY_EVENT, MEMORY_KEY)


def _thin(values: Series, limit: int) -> Series:
    if len(values) <= limit:
        return values
    step = (len(values) - 1) / (limit - 1)
    return [values[round(i * step)] for i in range(limit)]


def sparkline(values: Series, width: int = 32) -> str:
    """The values as ``width`` cells at most of ``▁``..``█`` (0 at the bottom, the
    largest value at the top)."""
    if not values:
        return ""
    points = [v for _, v in _thin(values, max(1, width))]
    top = max(points)
    if top <= 0:
        return BLOCKS[0] * len(points)
    return "".join(BLOCKS[min(7, max(0, int(v / top * 7 + 0.5)))] for v in points)


def format_bytes(value: float) -> str:
    """``64.0 MiB``: binary units."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover - the loop returns at GiB


def svg_chart(
    values: Series,
    *,
    title: str,
    label: str,
    start_ns: int,
    end_ns: int,
    css_class: str,
    width: int = 480,
    height: int = 120,
) -> str:
    """An inline ``<svg>`` line chart of ``values`` over ``start_ns``..``end_ns``, its
    largest value written at the top left (``label``), ``title`` as its accessible name."""
    if not values:
        return ""
    points = _thin(values, MAX_POINTS)
    top = max(v for _, v in points) or 1.0
    span = max(1, end_ns - start_ns)
    pad = 4
    inner_w, inner_h = width - 2 * pad, height - 2 * pad - 14

    def xy(t: int, v: float) -> str:
        x = pad + min(1.0, max(0.0, (t - start_ns) / span)) * inner_w
        y = pad + 14 + (1 - v / top) * inner_h
        return f"{x:.1f},{y:.1f}"

    line = " ".join(xy(t, v) for t, v in points)
    if len(points) == 1:
        t, v = points[0]
        line = f"{xy(start_ns, v)} {xy(t, v)}"
    return (
        f'<svg class="chart {escape(css_class)}" role="img" aria-label="{escape(title)}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
        f"<title>{escape(title)}</title>"
        f'<rect x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" class="frame"/>'
        f'<text x="{pad + 2}" y="{pad + 10}">{escape(label)}</text>'
        f'<polyline points="{line}" class="line"/>'
        "</svg>"
    )
