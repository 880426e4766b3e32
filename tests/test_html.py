"""The HTML waterfall, checked by parsing the file: every span present once, nesting by
parent links, bar geometry, events, details, escaping, and no network access."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
from traces_fixture import MS, T0, TRACE_A, known_trace_lines, line, span, write

from aiorunner._traces.html import render_html, write_html
from aiorunner._traces.tree import load_trace


@dataclass
class Row:
    attrs: dict[str, str]
    name: str = ""
    bar_style: str = ""
    events: list[dict[str, str]] = field(default_factory=list)
    duration: str = ""
    status: str = ""


class Page(HTMLParser):
    """Collects what a browser would show: rows, details blocks, tags that could reach
    the network, and the inline style and script."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[Row] = []
        self.details: dict[str, dict[str, str | bool]] = {}
        self.detail_text: dict[str, list[str]] = {}
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self._stack: list[tuple[str, str]] = []
        self._text_target: str | None = None
        self._detail: str | None = None
        self._raw: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        classes = a.get("class", "").split()
        if tag in ("script", "style"):
            self._raw = tag
        if "row" in classes:
            self.rows.append(Row(a))
        elif "bar" in classes and self.rows:
            self.rows[-1].bar_style = a.get("style", "")
        elif "event" in classes and self.rows and tag == "span":
            self.rows[-1].events.append(a)
        elif "details" in classes:
            span_id = a["id"].removeprefix("details-")
            self.details[span_id] = {"hidden": "hidden" in a}
            self.detail_text[span_id] = []
            self._detail = span_id
        if tag == "span" and "span-name" in classes:
            self._text_target = "name"
        elif tag == "div" and "duration" in classes and self.rows and self._detail is None:
            self._text_target = "duration"
        elif tag == "div" and "status" in classes and self.rows and self._detail is None:
            self._text_target = "status"
        if tag == "div":
            self._stack.append((tag, " ".join(classes)))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._raw = None
        if tag == "div" and self._stack:
            _, classes = self._stack.pop()
            if "details" in classes.split():
                self._detail = None
        self._text_target = None

    def handle_data(self, data: str) -> None:
        if self._raw == "script":
            self.scripts.append(data)
        elif self._raw == "style":
            self.styles.append(data)
        if self._detail is not None:
            self.detail_text[self._detail].append(data)
        if self._text_target and self.rows and self._detail is None:
            row = self.rows[-1]
            setattr(row, self._text_target, getattr(row, self._text_target) + data)


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


def _percent(style: str, prop: str) -> float:
    match = re.search(rf"{prop}:([0-9.]+)%", style)
    assert match, (prop, style)
    return float(match.group(1))


@pytest.fixture
def known(tmp_path: Path) -> Page:
    path = write(tmp_path / "t.jsonl", *known_trace_lines())
    out = write_html(load_trace(path, TRACE_A), tmp_path / "out.html")
    return parse(out.read_text(encoding="utf-8"))


def test_every_span_once_with_nesting(known: Page) -> None:
    """Nine spans, nine rows in waterfall order; each row's depth is its parent row's
    depth plus one, and parents come before their children."""
    names = [r.name for r in known.rows]
    assert names == [
        "ScriptRunner",
        "extract_metadata",
        "validate_dependencies",
        "setup_environment",
        "execute_script",
        "load_data",
        "transform",
        "collect_metrics",
        "upload_traces",
    ]
    position = {r.attrs["data-span-id"]: i for i, r in enumerate(known.rows)}
    assert len(position) == 9
    for index, row in enumerate(known.rows):
        parent = row.attrs["data-parent-id"]
        depth = int(row.attrs["data-depth"])
        if parent:
            parent_row = known.rows[position[parent]]
            assert position[parent] < index
            assert depth == int(parent_row.attrs["data-depth"]) + 1
        else:
            assert depth == 0
    execute = known.rows[names.index("execute_script")]
    load = known.rows[names.index("load_data")]
    assert load.attrs["data-parent-id"] == execute.attrs["data-span-id"]


def test_bar_geometry_is_scaled_to_the_trace(known: Page) -> None:
    """Each bar starts at its offset and is as wide as its duration, in percent of the
    trace's 2 s."""
    by_name = {r.name: r for r in known.rows}
    expected = {
        "ScriptRunner": (0, 2000),
        "extract_metadata": (5, 20),
        "execute_script": (70, 1900),
        "load_data": (200, 700),
        "transform": (700, 1500),
        "upload_traces": (1950, 2000),
    }
    for name, (start, end) in expected.items():
        style = by_name[name].bar_style
        assert _percent(style, "left") == pytest.approx(start / 2000 * 100, abs=0.001)
        assert _percent(style, "width") == pytest.approx((end - start) / 2000 * 100, abs=0.001)
    assert by_name["execute_script"].duration == "1.83s"
    assert by_name["transform"].status == "error"
    assert by_name["transform"].attrs["class"] == "row status-error"


def test_events_are_marked_on_their_span(known: Page) -> None:
    """The two monitoring events sit at 25% and 50% of the trace on execute_script."""
    by_name = {r.name: r for r in known.rows}
    events = by_name["execute_script"].events
    assert [e["title"] for e in events] == ["cpu_monitoring +500ms", "memory_monitoring +1.00s"]
    assert [_percent(e["style"], "left") for e in events] == [25.0, 50.0]
    assert all(not by_name[n].events for n in by_name if n != "execute_script")


def test_details_hold_attributes_and_events(known: Page) -> None:
    """Each span has a hidden details block (opened by a click) with its attributes,
    status message and events."""
    assert set(known.details) == {r.attrs["data-span-id"] for r in known.rows}
    assert all(d["hidden"] for d in known.details.values())
    execute = "".join(known.detail_text["a000000000000005"])
    assert "process.pid" in execute
    assert "4242" in execute
    assert "cpu_monitoring" in execute
    assert "cpu.percent=97.5" in execute
    transform = "".join(known.detail_text["b000000000000002"])
    assert "error: ValueError: bad row 17" in transform


def test_self_contained_and_offline(known: Page) -> None:
    """Inline style and script only; nothing refers to another resource, and the CSP
    forbids network access anyway."""
    assert known.styles
    assert known.scripts
    assert "addEventListener('click'" in "".join(known.scripts)
    for tag, attrs in known.tags:
        assert "src" not in attrs, tag
        assert tag != "link", attrs
        assert "http" not in attrs.get("href", ""), attrs
    csp = [a for t, a in known.tags if t == "meta" and a.get("http-equiv")]
    assert csp[0]["content"].startswith("default-src 'none'")
    assert "url(" not in "".join(known.styles)
    assert "@import" not in "".join(known.styles)


def test_untrusted_names_and_values_are_escaped(tmp_path: Path) -> None:
    """A span name or attribute carrying markup shows as text, never as markup."""
    evil = '<script>alert("x")</script>'
    path = write(
        tmp_path / "t.jsonl",
        line(
            span(TRACE_A, "a000000000000001", None, evil, 0, 10, attributes={'"><img src=x>': evil})
        ),
    )
    text = render_html(load_trace(path, TRACE_A))
    page = parse(text)
    assert [r.name for r in page.rows] == [evil]
    assert not [t for t, _ in page.tags if t == "img"]
    assert len([t for t, _ in page.tags if t == "script"]) == 1
    assert evil in "".join(page.detail_text["a000000000000001"])


def test_running_trace_in_html(tmp_path: Path) -> None:
    """A running root gets the running class and a bar up to 'now'."""
    path = write(tmp_path / "t.jsonl", *known_trace_lines()[:2])
    trace = load_trace(path, TRACE_A, now_ns=T0 + 1000 * MS)
    page = parse(render_html(trace))
    root = page.rows[0]
    assert root.attrs["class"] == "row status-running"
    assert root.status == "running"
    assert _percent(root.bar_style, "width") == 100.0
    assert int(root.attrs["data-end-ns"]) == T0 + 1000 * MS


def test_write_html_by_id_from_the_default_file(traces_file: Path, tmp_path: Path) -> None:
    """The helper `make demo` calls takes an id prefix and reads AIORUNNER_TRACES_FILE."""
    write(traces_file, *known_trace_lines())
    out = write_html("4bf9", tmp_path / "demo.html")
    assert len(parse(out.read_text(encoding="utf-8")).rows) == 9


CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@pytest.fixture(scope="module")
def chromium() -> str:
    """A headless Chromium: `make test` installs Debian's `chromium` when it is missing,
    so this is a real browser test that fails, never skips, without one."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        "no headless Chromium for the HTML waterfall's browser tests: run `make test` "
        "(it installs Debian's chromium package as root), or `apt-get install chromium`"
    )


def dump_dom(chromium: str, url: str, profile: Path, *, width: int = 1400) -> tuple[str, str]:
    """The DOM after the page's scripts ran, at a window ``width`` pixels wide, and
    Chromium's log (stderr)."""
    done = subprocess.run(
        [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},900",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return done.stdout, done.stderr


def test_in_headless_chromium(chromium: str, tmp_path: Path) -> None:
    """In a real browser, offline: the script runs without errors, a click on each row
    (what out.html#expand does) opens its details, and without it they stay closed."""
    path = write(tmp_path / "t.jsonl", *known_trace_lines())
    out = write_html(load_trace(path, TRACE_A), tmp_path / "out.html")

    dom, log = dump_dom(chromium, out.as_uri() + "#expand", tmp_path / "profile")
    expanded = parse(dom)
    assert "Uncaught" not in log
    assert [r.name for r in expanded.rows][:2] == ["ScriptRunner", "extract_metadata"]
    assert len(expanded.details) == 9
    assert not any(d["hidden"] for d in expanded.details.values())
    ready = [a for t, a in expanded.tags if t == "body"]
    assert ready[0].get("data-ready") == "yes"
    dom, _ = dump_dom(chromium, out.as_uri(), tmp_path / "profile")
    assert all(d["hidden"] for d in parse(dom).details.values())


# Appended to a copy of the page: measures, after layout, where each tick label and each
# bar is, and writes it into the DOM for --dump-dom to carry out.
_PROBE = """<script>
var box = function (e) { var r = e.getBoundingClientRect(); return [r.left, r.right]; };
var out = {
  ticks: Array.from(document.querySelectorAll('.axis .tick'), box),
  bars: Array.from(document.querySelectorAll('.row .bar'), box),
  width: document.documentElement.clientWidth
};
var pre = document.createElement('pre');
pre.id = 'measured';
pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script></body>"""


@pytest.mark.parametrize("width", [1400, 1000])
def test_time_axis_lines_up_with_the_bars(chromium: str, tmp_path: Path, width: int) -> None:
    """Laid out by Chromium at 1400 (and 1000) px: the "0s" label starts where the bars
    start, the ¼, ½ and ¾ labels are centred on bars starting at those times, and the
    end label ends where the trace ends, each within 2 px (the axis row had a smaller
    font, so its em-sized columns were narrower: "0s" sat 37 px left of every bar)."""
    quarters = [
        span(TRACE_A, f"b00000000000000{i}", "a000000000000001", f"q{i}", i * 1000, (i + 1) * 1000)
        for i in range(4)
    ]
    path = write(
        tmp_path / "t.jsonl",
        line(span(TRACE_A, "a000000000000001", None, "ScriptRunner", 0, 4000), *quarters),
    )
    page = tmp_path / "probe.html"
    page.write_text(
        render_html(load_trace(path, TRACE_A)).replace("</body>", _PROBE), encoding="utf-8"
    )
    dom, _ = dump_dom(chromium, page.as_uri(), tmp_path / "profile", width=width)
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom)
    assert found, dom[-2000:]
    measured = json.loads(found.group(1))
    assert measured["width"] == width
    ticks, bars = measured["ticks"], measured["bars"]
    assert len(ticks) == 5
    root, *quarter_bars = bars
    anchors = [
        ticks[0][0],  # "0s": its left edge
        *((left + right) / 2 for left, right in ticks[1:4]),  # centred
        ticks[4][1],  # the end: its right edge
    ]
    starts = [left for left, _ in quarter_bars] + [quarter_bars[-1][1]]
    assert anchors == pytest.approx(starts, abs=2)
    assert (root[0], root[1]) == pytest.approx((starts[0], starts[-1]), abs=2)
    assert starts[-1] - starts[0] > width / 3  # the bars have room: a real layout


# Appended to a copy of the page (after its own script opened every span's details):
# the status cells as the browser renders them (innerText follows the layout).
_STATUS_PROBE = """<script>
var cells = Array.from(document.querySelectorAll('.details td:first-child'))
  .filter(function (td) { return td.textContent === 'status'; })
  .map(function (td) { return td.nextElementSibling.innerText; });
var pre = document.createElement('pre');
pre.id = 'measured';
pre.textContent = JSON.stringify(cells);
document.body.appendChild(pre);
</script></body>"""


def test_status_message_line_breaks_in_the_browser(chromium: str, tmp_path: Path) -> None:
    """A status message holding a traceback keeps its line breaks in the HTML view, as
    Chromium lays it out (it ran together as one paragraph), and stays escaped text."""
    message = (
        "script exited with code 1: KeyError: 'x'\n"
        "Traceback (most recent call last):\n"
        '  File "/srv/job.py", line 3, in <module>\n'
        "<b>KeyError</b>: 'x'"
    )
    path = write(
        tmp_path / "t.jsonl",
        line(span(TRACE_A, "a000000000000001", None, "ScriptRunner", 0, 10, error=message)),
    )
    page = tmp_path / "probe.html"
    page.write_text(
        render_html(load_trace(path, TRACE_A)).replace("</body>", _STATUS_PROBE), encoding="utf-8"
    )
    dom, _ = dump_dom(chromium, page.as_uri() + "#expand", tmp_path / "profile")
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom)
    assert found, dom[-2000:]
    (cell,) = json.loads(html.unescape(found.group(1)))
    assert cell.splitlines() == ["error: " + message.splitlines()[0], *message.splitlines()[1:]]
