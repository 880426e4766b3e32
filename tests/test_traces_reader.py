"""Reading the embedded JSONL trace files back: listing, lookup, running and lost runs
(the live-runs directory, and the start markers of files written before issue 15),
damage, rotation, and the newest-first scan that stops early on big files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from traces_fixture import (
    MS,
    T0,
    TRACE_A,
    TRACE_B,
    TRACE_C,
    known_trace_lines,
    line,
    live_entry,
    span,
    write,
)

from aiorunner._exceptions import ConfigError, TraceNotFoundError
from aiorunner._traces import listing as traces_list
from aiorunner._traces.listing import list_traces
from aiorunner._traces.reader import (
    _lines_backward,
    parse_since,
    resolve_traces_file,
    trace_files,
)
from aiorunner._traces.tree import load_trace


def test_known_trace_is_read_whole_and_deduplicated(tmp_path: Path) -> None:
    """A run spread over a start marker and three batches reads as one trace of nine
    spans: the finished root line supersedes the pending marker."""
    path = write(tmp_path / "t.jsonl", *known_trace_lines())
    trace = load_trace(path, TRACE_A)
    assert trace.trace_id == TRACE_A
    assert len(trace.spans) == 9
    root = next(s for s in trace.spans if s.name == "ScriptRunner")
    assert not root.pending
    assert root.end_ns == T0 + 2000 * MS
    assert root.attributes["process.exit.code"] == 0
    assert trace.status == "ok"
    assert trace.error_spans == 1
    transform = next(s for s in trace.spans if s.name == "transform")
    assert transform.status == "error"
    assert transform.status_message == "ValueError: bad row 17"
    assert transform.scope == "etl"
    execute = next(s for s in trace.spans if s.name == "execute_script")
    assert [e.name for e in execute.events] == ["cpu_monitoring", "memory_monitoring"]
    assert execute.events[0].attributes == {"cpu.percent": 97.5}


def test_rows_follow_parent_links_depth_first(tmp_path: Path) -> None:
    """Display order is depth-first with children by start time; in-script spans sit
    under execute_script."""
    path = write(tmp_path / "t.jsonl", *known_trace_lines())
    rows = load_trace(path, TRACE_A).rows()
    assert [(r.span.name, r.depth) for r in rows] == [
        ("ScriptRunner", 0),
        ("extract_metadata", 1),
        ("validate_dependencies", 1),
        ("setup_environment", 1),
        ("execute_script", 1),
        ("load_data", 2),
        ("transform", 2),
        ("collect_metrics", 1),
        ("upload_traces", 1),
    ]


def test_unique_prefix_finds_the_trace(tmp_path: Path) -> None:
    """Any unique prefix, in any case, is enough."""
    path = write(tmp_path / "t.jsonl", *known_trace_lines(TRACE_A), *known_trace_lines(TRACE_C))
    assert load_trace(path, "0AF7").trace_id == TRACE_C
    assert load_trace(path, TRACE_A[:20]).trace_id == TRACE_A


def test_ambiguous_prefix_lists_the_candidates(tmp_path: Path) -> None:
    """A prefix matching two traces is an error naming both."""
    path = write(tmp_path / "t.jsonl", *known_trace_lines(TRACE_A), *known_trace_lines(TRACE_B))
    with pytest.raises(TraceNotFoundError, match="ambiguous") as info:
        load_trace(path, "4bf92f")
    assert info.value.candidates == (TRACE_A, TRACE_B)
    assert TRACE_A in str(info.value)
    assert TRACE_B in str(info.value)


def test_unknown_and_malformed_ids_are_clear_errors(tmp_path: Path) -> None:
    """An id that matches nothing names the file; a non-hex id says what an id is."""
    path = write(tmp_path / "t.jsonl", *known_trace_lines())
    with pytest.raises(TraceNotFoundError, match=r"no trace 'ffff' in .*t\.jsonl"):
        load_trace(path, "ffff")
    with pytest.raises(ConfigError, match="not a trace id"):
        load_trace(path, "run-42")


def test_missing_file_names_path_and_fix(tmp_path: Path) -> None:
    """No file at all is an error naming the path and the variable that moves it."""
    with pytest.raises(TraceNotFoundError, match="AIORUNNER_TRACES_FILE") as info:
        list_traces(tmp_path / "nothing.jsonl")
    assert "nothing.jsonl" in str(info.value)


def test_resolve_traces_file_order(tmp_path: Path) -> None:
    """--file wins over AIORUNNER_TRACES_FILE, which wins over the default."""
    env = {"AIORUNNER_TRACES_FILE": str(tmp_path / "env.jsonl")}
    assert resolve_traces_file("given.jsonl", environ=env) == Path("given.jsonl")
    assert resolve_traces_file(None, environ=env) == tmp_path / "env.jsonl"
    assert resolve_traces_file(None, environ={}) == Path(".aiorunner/traces.jsonl")


def test_truncated_last_line_is_skipped_and_counted(tmp_path: Path) -> None:
    """A crash mid-write leaves half a line at the end: the rest still reads, and the
    damage is counted."""
    lines = known_trace_lines()
    path = write(tmp_path / "t.jsonl", *lines, truncated=lines[1][: len(lines[1]) // 2])
    listing = list_traces(path)
    assert [t.trace_id for t in listing.traces] == [TRACE_A]
    assert listing.traces[0].span_count == 9
    assert listing.stats.skipped == 1
    assert len(load_trace(path, TRACE_A).spans) == 9


def test_line_cut_short_then_appended_to_keeps_the_later_request(tmp_path: Path) -> None:
    """When the next writer appends right after a cut-short line, the complete request at
    the end of that line is still read."""
    lines = known_trace_lines()
    damaged = lines[1][:40] + lines[2]
    path = write(tmp_path / "t.jsonl", lines[0], damaged, lines[3])
    trace = load_trace(path, TRACE_A)
    names = {s.name for s in trace.spans}
    assert {"load_data", "transform"} <= names
    assert "extract_metadata" not in names


def test_rotated_files_are_followed(tmp_path: Path) -> None:
    """traces.jsonl.2 (oldest), .1 and traces.jsonl are read together; a run whose lines
    straddle a rotation is whole."""
    base = tmp_path / "traces.jsonl"
    lines_c = known_trace_lines(TRACE_C, t0=T0 - 3600 * 10**9)
    lines_a = known_trace_lines(TRACE_A)
    write(tmp_path / "traces.jsonl.2", *lines_c)
    write(tmp_path / "traces.jsonl.1", *lines_a[:2])
    write(base, *lines_a[2:])
    (tmp_path / "traces.jsonl.bak").write_text("not ours\n")
    assert trace_files(base) == [base, tmp_path / "traces.jsonl.1", tmp_path / "traces.jsonl.2"]
    listing = list_traces(base)
    assert [(t.trace_id, t.span_count) for t in listing.traces] == [(TRACE_A, 9), (TRACE_C, 9)]
    assert len(load_trace(base, TRACE_A).spans) == 9
    assert len(load_trace(base, TRACE_C).spans) == 9


def test_pending_run_shows_running_then_finished(tmp_path: Path) -> None:
    """A run whose start marker is the last word shows as running, with its elapsed time;
    once its finished root line is appended it is an ordinary finished trace."""
    lines = known_trace_lines()
    path = write(tmp_path / "t.jsonl", lines[0], lines[1])
    now = T0 + 1234 * MS
    listing = list_traces(path, now_ns=now)
    (running,) = listing.traces
    assert running.status == "running"
    assert running.duration == pytest.approx(1.234)
    assert running.script == "examples/etl.py"
    trace = load_trace(path, "4bf9", now_ns=now)
    assert trace.running
    assert trace.status == "running"
    assert trace.duration == pytest.approx(1.234)
    write(tmp_path / "t.jsonl", *lines)
    (finished,) = list_traces(path, now_ns=now).traces
    assert finished.status == "ok"
    assert finished.duration == pytest.approx(2.0)
    assert not load_trace(path, "4bf9", now_ns=now).running


def test_failed_filter_and_status_from_the_root(tmp_path: Path) -> None:
    """--failed keeps runs whose root failed; a run that succeeded despite one failed
    in-script span is not failed, but counts that span."""
    t1 = T0 + 10 * 10**9
    failed = [
        line(
            span(
                TRACE_C,
                "c000000000000001",
                None,
                "ScriptRunner",
                0,
                500,
                t0=t1,
                attributes={"code.filepath": "bad.py"},
                error="exit code 3",
            )
        )
    ]
    path = write(tmp_path / "t.jsonl", *known_trace_lines(), *failed)
    everything = list_traces(path)
    assert [(t.trace_id, t.status) for t in everything.traces] == [
        (TRACE_C, "error"),
        (TRACE_A, "ok"),
    ]
    assert everything.traces[1].error_spans == 1
    only_failed = list_traces(path, failed=True)
    assert [t.trace_id for t in only_failed.traces] == [TRACE_C]
    assert only_failed.traces[0].error == "exit code 3"
    assert only_failed.traces[0].script == "bad.py"


def test_slowest_and_since(tmp_path: Path) -> None:
    """--slowest N sorts by duration; --since drops runs that started earlier."""
    runs = []
    for index, duration in enumerate([100, 3000, 50, 900]):
        trace_id = f"{index:032x}"
        t0 = T0 + index * 60 * 10**9
        runs.append(line(span(trace_id, "0" * 15 + "1", None, "ScriptRunner", 0, duration, t0=t0)))
    path = write(tmp_path / "t.jsonl", *runs)
    slowest = list_traces(path, slowest=2)
    assert [t.trace_id for t in slowest.traces] == [f"{1:032x}", f"{3:032x}"]
    recent = list_traces(path, since_ns=T0 + 60 * 10**9)
    assert [t.trace_id for t in recent.traces] == [f"{i:032x}" for i in (3, 2, 1)]


def test_parse_since() -> None:
    """Durations count back from now; ISO times are absolute; anything else is an error
    naming the accepted forms."""
    now = 1_700_000_000.0
    assert parse_since("90s", now=now) == int((now - 90) * 1e9)
    assert parse_since("30m", now=now) == int((now - 1800) * 1e9)
    assert parse_since("1.5h", now=now) == int((now - 5400) * 1e9)
    assert parse_since("2d", now=now) == int((now - 172800) * 1e9)
    assert parse_since("2023-11-14T22:13:20Z") == T0
    assert parse_since("2023-11-14T23:13:20+01:00") == T0
    with pytest.raises(ConfigError, match=r"'yesterday'.*30m, 1h"):
        parse_since("yesterday")


def test_parent_missing_from_file_shows_as_root(tmp_path: Path) -> None:
    """A span whose parent lives in another service's file is a root in place."""
    path = write(
        tmp_path / "t.jsonl",
        line(span(TRACE_A, "d000000000000001", "eeeeeeeeeeeeeeee", "ScriptRunner", 0, 10)),
        line(span(TRACE_A, "d000000000000002", "d000000000000001", "child", 1, 5)),
    )
    trace = load_trace(path, TRACE_A)
    assert [(r.span.name, r.depth) for r in trace.rows()] == [("ScriptRunner", 0), ("child", 1)]
    assert [s.span_id for s in trace.roots()] == ["d000000000000001"]


def test_parent_cycle_does_not_hide_spans(tmp_path: Path) -> None:
    """Malformed parent links forming a cycle still show every span once."""
    path = write(
        tmp_path / "t.jsonl",
        line(
            span(TRACE_A, "f000000000000001", "f000000000000002", "a", 0, 10),
            span(TRACE_A, "f000000000000002", "f000000000000001", "b", 1, 5),
        ),
    )
    rows = load_trace(path, TRACE_A).rows()
    assert sorted(r.span.name for r in rows) == ["a", "b"]


def test_lines_backward_across_block_boundaries(tmp_path: Path) -> None:
    """Reading from the end in small blocks yields exactly the lines, last first."""
    lines = [f"line {i} " + "x" * random.Random(i).randrange(0, 40) for i in range(200)]
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(lines) + "\n")
    for block in (1, 7, 64, 1 << 16):
        got = [b.decode() for b in _lines_backward(path, block) if b]
        assert got == lines[::-1]


# ------------------------------------------------------------- early stop on big files


def _run_lines(
    index: int, start_ms: int, duration_ms: int, children: int, marker: bool, delay: int = 0
):
    """The lines one run writes, as (write time, order, line): the marker at its start,
    each child at its end plus ``delay`` (a batch waiting), the root at its end."""
    trace_id = f"{index + 1:032x}"
    root = f"{index + 1:016x}"
    out = []
    if marker:
        out.append(
            (
                start_ms,
                0,
                line(span(trace_id, root, None, "ScriptRunner", start_ms, None, pending=True)),
            )
        )
    for child in range(children):
        end = start_ms + duration_ms * (child + 1) // (children + 1)
        out.append(
            (
                end + delay,
                1,
                line(
                    span(
                        trace_id,
                        f"{child + 1:04x}{index + 1:012x}",
                        root,
                        f"step{child}",
                        start_ms,
                        end,
                    )
                ),
            )
        )
    out.append(
        (
            start_ms + duration_ms + delay,
            2,
            line(span(trace_id, root, None, "ScriptRunner", start_ms, start_ms + duration_ms)),
        )
    )
    return out


def _expected(runs, k, failed_ids=frozenset()):
    ordered = sorted(runs, key=lambda r: -r[1])
    return [(f"{i + 1:032x}", children + 1) for i, _, _, children in ordered][:k]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    runs=st.lists(
        st.tuples(
            st.integers(0, 10_000),
            st.integers(1, 3_000),
            st.integers(0, 4),
            st.booleans(),
            st.integers(0, 5_000),
        ),
        min_size=1,
        max_size=30,
        unique_by=lambda r: r[0],
    ),
    k=st.integers(1, 8),
)
def test_early_stop_gives_the_same_answer_as_a_full_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runs, k
) -> None:
    """Whatever the interleaving of runs, with or without start markers (files written
    before issue 15), with batches written late (within the late-write margin, set here
    to the 5 s the strategy may delay a batch), the newest-first listing with --limit
    equals the answer computed from all the data, though it may stop early (checked
    after every line here, to exercise the stop rule as often as possible)."""
    monkeypatch.setattr(traces_list, "_CHECK_EVERY", 1)
    monkeypatch.setattr(traces_list, "LATE_WRITE_MARGIN", 5.0)
    table = [(i, r[0], r[1], r[2]) for i, r in enumerate(runs)]
    events = []
    for (i, start, duration, children), (*_, marker, delay) in zip(table, runs, strict=True):
        events.extend(_run_lines(i, start, duration, children, marker, delay))
    events.sort(key=lambda e: (e[0], e[1]))
    path = write(tmp_path / "big.jsonl", *(e[2] for e in events))
    listing = list_traces(path, limit=k, now_ns=T0 + 10**15)
    got = [(t.trace_id, t.span_count) for t in listing.traces]
    assert got == _expected(table, k)
    assert all(t.status == "ok" for t in listing.traces)


def test_early_stop_reads_only_the_newest_part(tmp_path: Path) -> None:
    """Listing the 5 newest of 2000 finished runs (one a minute, each span in the file
    once, no start marker) stops once it is past lines older than the late-write margin
    before the fifth newest run; a listing of all of them reads everything, with the
    same first five."""
    events = []
    for i in range(2000):
        events.extend(_run_lines(i, i * 60_000, 25, 2, False))
    events.sort(key=lambda e: (e[0], e[1]))
    path = write(tmp_path / "big.jsonl", *(e[2] for e in events))
    newest = list_traces(path, limit=5)
    assert not newest.scanned_all
    assert newest.stats.lines < 200
    assert [(t.trace_id, t.span_count) for t in newest.traces] == [
        (f"{i + 1:032x}", 3) for i in range(1999, 1994, -1)
    ]
    everything = list_traces(path, limit=None)
    assert everything.scanned_all
    assert len(everything.traces) == 2000
    assert everything.traces[:5] == newest.traces


def test_since_stops_early_too(tmp_path: Path) -> None:
    """--since stops once the lines are older than the margin before that moment."""
    events = []
    for i in range(500):
        events.extend(_run_lines(i, i * 60_000, 25, 1, False))
    events.sort(key=lambda e: (e[0], e[1]))
    path = write(tmp_path / "big.jsonl", *(e[2] for e in events))
    listing = list_traces(path, since_ns=T0 + 490 * 60_000 * MS, limit=None, slowest=None)
    assert [t.trace_id for t in listing.traces] == [f"{i + 1:032x}" for i in range(499, 489, -1)]
    assert not listing.scanned_all
    assert listing.stats.lines < 100


def test_a_batch_written_late_still_counts(tmp_path: Path) -> None:
    """A run's child spans written four minutes after they ended (a slow disk), behind
    newer runs' lines, are still counted for the run: the scan does not stop before the
    late-write margin has passed."""
    events = []
    for i in range(40):
        events.extend(_run_lines(i, i * 10_000, 25, 2, False, delay=240_000 if i == 30 else 0))
    events.sort(key=lambda e: (e[0], e[1]))
    path = write(tmp_path / "big.jsonl", *(e[2] for e in events))
    listing = list_traces(path, limit=10)
    assert [(t.trace_id, t.span_count) for t in listing.traces] == [
        (f"{i + 1:032x}", 3) for i in range(39, 29, -1)
    ]


def test_summary_json_shape(tmp_path: Path) -> None:
    """--json rows carry ISO start, seconds and counts."""
    path = write(tmp_path / "t.jsonl", *known_trace_lines())
    data = list_traces(path).traces[0].to_dict()
    assert data == {
        "trace_id": TRACE_A,
        "start": "2023-11-14T22:13:20+00:00",
        "start_unix_nano": T0,
        "duration_seconds": 2.0,
        "status": "ok",
        "script": "examples/etl.py",
        "name": "ScriptRunner",
        "service": "aiorunner",
        "span_count": 9,
        "error": None,
        "error_spans": 1,
    }
    json.dumps(data)


def test_running_run_named_by_a_child_when_its_marker_has_no_script(tmp_path: Path) -> None:
    """A start marker written before the script path was known still lists the script,
    taken from a finished child span (extract_metadata carries code.filepath)."""
    path = write(
        tmp_path / "t.jsonl",
        line(span(TRACE_A, "a000000000000001", None, "ScriptRunner", 0, None, pending=True)),
        line(
            span(
                TRACE_A,
                "a000000000000002",
                "a000000000000001",
                "extract_metadata",
                1,
                2,
                attributes={"code.filepath": "jobs/nightly.py"},
            )
        ),
    )
    (summary,) = list_traces(path, now_ns=T0 + 5 * MS).traces
    assert (summary.status, summary.script) == ("running", "jobs/nightly.py")


def test_nested_run_appears_in_place(tmp_path: Path) -> None:
    """A run inside a run (the inner ScriptRunner's parent is the outer execute_script,
    in another process) is one trace: the inner run nests under execute_script, and the
    listing names the outer script, even when it stops early."""
    outer, execute, inner = "1000000000000001", "1000000000000002", "2000000000000001"
    lines = [
        line(
            span(
                TRACE_A,
                outer,
                None,
                "ScriptRunner",
                0,
                None,
                pending=True,
                attributes={"code.filepath": "outer.py"},
            )
        ),
        line(
            span(
                TRACE_A,
                inner,
                execute,
                "ScriptRunner",
                100,
                None,
                pending=True,
                attributes={"code.filepath": "inner.py"},
            )
        ),
        line(
            span(TRACE_A, "2000000000000002", inner, "execute_script", 110, 400),
            span(
                TRACE_A,
                inner,
                execute,
                "ScriptRunner",
                100,
                450,
                attributes={"code.filepath": "inner.py"},
            ),
        ),
        line(
            span(TRACE_A, execute, outer, "execute_script", 50, 500),
            span(
                TRACE_A,
                outer,
                None,
                "ScriptRunner",
                0,
                600,
                attributes={"code.filepath": "outer.py"},
            ),
        ),
    ]
    later = known_trace_lines(TRACE_C, t0=T0 + 10**10)
    path = write(tmp_path / "t.jsonl", *lines, *later)
    rows = load_trace(path, TRACE_A).rows()
    assert [(r.span.name, r.span.span_id, r.depth) for r in rows] == [
        ("ScriptRunner", outer, 0),
        ("execute_script", execute, 1),
        ("ScriptRunner", inner, 2),
        ("execute_script", "2000000000000002", 3),
    ]
    for limit in (1, 2):
        listing = list_traces(path, limit=limit)
        assert [t.trace_id for t in listing.traces] == [TRACE_C, TRACE_A][:limit]
    (summary,) = list_traces(path, limit=2).traces[1:]
    assert (summary.script, summary.span_count, summary.status) == ("outer.py", 4, "ok")


# ------------------------------------------------------------- the live-runs view


def _dead_pid() -> tuple[int, float]:
    """The pid (and creation time) of a real process that has exited and been reaped."""
    import subprocess
    import sys

    import psutil

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    started = psutil.Process(proc.pid).create_time()
    proc.kill()
    proc.wait()
    return proc.pid, started


def _live_root(trace_id: str, span_id: str, start_ms: float, script: str) -> dict:
    return span(
        trace_id,
        span_id,
        None,
        "ScriptRunner",
        start_ms,
        None,
        attributes={"code.file.path": script},
    )


def test_live_runs_list_as_running_or_lost(tmp_path: Path) -> None:
    """Runs in the live-runs directory list with the finished ones: running while the
    process that wrote the entry lives, lost when it is gone, lost too when its pid now
    belongs to a process created at another time (pid reuse), running when the entry is
    another host's (it cannot be checked from here). A run's spans already in the file
    count; a lost run's duration ends at its last recorded span."""
    import os

    import psutil

    path = write(
        tmp_path / "traces.jsonl",
        *known_trace_lines(TRACE_C)[1:],
        line(span(TRACE_B, "b100000000000002", "b100000000000001", "extract_metadata", 5, 40)),
    )
    me = psutil.Process().create_time()
    dead, dead_start = _dead_pid()
    live_entry(
        path,
        _live_root(TRACE_A, "a100000000000001", 100, "/w/alive.py"),
        pid=os.getpid(),
        process_start=me,
    )
    live_entry(
        path,
        _live_root(TRACE_B, "b100000000000001", 0, "/w/killed.py"),
        pid=dead,
        process_start=dead_start,
    )
    reused = "5" * 32
    live_entry(
        path,
        _live_root(reused, "c100000000000001", 200, "/w/reused.py"),
        pid=os.getpid(),
        process_start=me - 3600,
    )
    remote = "6" * 32
    live_entry(
        path,
        _live_root(remote, "d100000000000001", 300, "/w/remote.py"),
        pid=dead,
        process_start=dead_start,
        host="elsewhere.invalid",
    )
    now = T0 + 5000 * MS
    listing = list_traces(path, now_ns=now)
    by_id = {t.trace_id: t for t in listing.traces}
    assert {t: by_id[t].status for t in by_id} == {
        TRACE_A: "running",
        TRACE_B: "lost",
        TRACE_C: "ok",
        reused: "lost",
        remote: "running",
    }
    assert by_id[TRACE_A].duration == pytest.approx(4.9)
    assert by_id[TRACE_A].script == "/w/alive.py"
    assert (by_id[TRACE_B].span_count, by_id[TRACE_B].duration) == (2, pytest.approx(0.04))
    trace = load_trace(path, TRACE_B, now_ns=now)
    assert (trace.status, trace.running, trace.lost) == ("lost", False, True)
    assert [s.status for s in trace.spans] == ["lost", "ok"]
    assert load_trace(path, TRACE_A, now_ns=now).status == "running"


def test_a_run_found_finished_in_the_file_is_not_running(tmp_path: Path) -> None:
    """An entry still beside the file when its finished root is in it (the run ended
    while it was read) shows the finished run, once."""
    import os

    import psutil

    lines = known_trace_lines(TRACE_A)
    path = write(tmp_path / "traces.jsonl", *lines[1:])
    live_entry(
        path,
        _live_root(TRACE_A, "a000000000000001", 0, "/w/etl.py"),
        pid=os.getpid(),
        process_start=psutil.Process().create_time(),
    )
    (summary,) = list_traces(path).traces
    assert (summary.status, summary.span_count) == ("ok", 9)
    trace = load_trace(path, TRACE_A)
    assert trace.status == "ok"
    assert len(trace.spans) == 9


def test_running_run_with_nothing_in_the_file_yet(tmp_path: Path) -> None:
    """Before any line was written (no trace file yet) a live run still lists and shows;
    a damaged entry is skipped and counted."""
    import os

    import psutil

    path = tmp_path / "traces.jsonl"
    live_entry(
        path,
        _live_root(TRACE_A, "a000000000000001", 0, "/w/etl.py"),
        pid=os.getpid(),
        process_start=psutil.Process().create_time(),
    )
    (Path(str(path) + ".live") / f"{TRACE_B}-b000000000000001.json").write_text('{"format": 1, "pi')
    listing = list_traces(path, now_ns=T0 + 2000 * MS)
    assert [(t.trace_id, t.status) for t in listing.traces] == [(TRACE_A, "running")]
    assert listing.stats.skipped == 1
    assert load_trace(path, "4bf9", now_ns=T0 + 2000 * MS).status == "running"
    Path(str(path) + ".live").joinpath(f"{TRACE_A}-a000000000000001.json").unlink()
    with pytest.raises(TraceNotFoundError):
        list_traces(path)
