"""
One export thread per session (issue 21): the spans, log records and metric points
pipelines share one loop, a run's wait for its three signals is one round trip, and the
thread stops when the session is closed.
"""

from __future__ import annotations

import asyncio
import asyncio.base_events
import errno
import json
import os
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from aiorunner import ScriptRunner, Session, TracingConfig


def export_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "aiorunner-export" and t.is_alive()]


async def test_a_session_exports_its_three_signals_from_one_thread(tmp_path: Path) -> None:
    """A run with spans, output lines and metric points wakes one export thread, not one
    per signal; its RunResult still counts every signal's export, every line reaches its
    file, a run's metric points make one export, and the thread is gone once the session
    is closed."""
    script = tmp_path / "talk.py"
    script.write_text("print('hello')\nprint('again')\n")
    config = TracingConfig(
        exporter_type="jsonl", traces_file=str(tmp_path / "traces.jsonl"), export_timeout=10.0
    )
    before = set(export_threads())
    session = await anyio.to_thread.run_sync(Session, config)
    assert session.logs is not None and session.metrics is not None
    try:
        results = [await ScriptRunner(str(script), session=session).run() for _ in range(2)]
        assert set(export_threads()) - before != set()
        assert len(set(export_threads()) - before) == 1
    finally:
        await session.aclose()
    for result in results:
        assert result.success, result.error
        export = result.export
        assert export is not None
        (spans,) = export.backends
        assert (spans.exported, export.dropped, export.pending) == (7, 0, 0)
        (logs,) = export.logs
        assert (logs.exported, export.logs_dropped, export.logs_pending) == (2, 0, 0)
        (metrics,) = export.metrics
        assert metrics.exported > 0 and (export.metrics_dropped, export.metrics_pending) == (
            0,
            0,
        )
    lines = (tmp_path / "logs.jsonl").read_text().splitlines()
    bodies = [
        record["body"]["stringValue"]
        for line in lines
        for rl in json.loads(line)["resourceLogs"]
        for sl in rl["scopeLogs"]
        for record in sl["logRecords"]
    ]
    assert bodies.count("hello") == 2 and bodies.count("again") == 2
    # A run's points leave together at its flush: one export (one line), not one per
    # group of points handed over.
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == len(results)
    for thread in set(export_threads()) - before:
        thread.join(5)
    assert set(export_threads()) - before == set()


async def test_a_run_wakes_the_export_thread_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run hands its spans, its root span's start and its metric points over without
    waking the export thread, and waits for all three signals in one round trip: one
    cross-thread call from the run's loop per run (it was four to five: a wake-up per
    signal, the root's start, a flush call per signal); the jsonl live-runs entry still
    appears when a run passes half a second (tests/test_live_runs.py)."""
    script = tmp_path / "quiet.py"
    script.write_text("pass\n")
    config = TracingConfig(
        exporter_type="jsonl", traces_file=str(tmp_path / "traces.jsonl"), export_timeout=10.0
    )
    session = await anyio.to_thread.run_sync(Session, config)
    calls: list[str] = []
    original = asyncio.base_events.BaseEventLoop.call_soon_threadsafe
    here = threading.current_thread()

    def counting(self: Any, callback: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is here and self is not asyncio.get_running_loop():
            calls.append(getattr(callback, "__qualname__", repr(callback)))
        return original(self, callback, *args, **kwargs)

    try:
        assert (await ScriptRunner(str(script), session=session).run()).success  # warm-up
        monkeypatch.setattr(asyncio.base_events.BaseEventLoop, "call_soon_threadsafe", counting)
        runs = 3
        for _ in range(runs):
            result = await ScriptRunner(str(script), session=session).run()
            assert result.success and result.export is not None and result.export.ok
        monkeypatch.undo()
    finally:
        await session.aclose()
    # One run longer than the batcher's delay (a loaded machine) may wake it once more.
    assert len(calls) <= runs + 1, calls


@pytest.mark.parametrize(
    ("error", "exported", "failed", "calls"),
    [(errno.EIO, 3, 0, 2), (errno.EACCES, 0, 3, 1)],
    ids=["retryable-then-written", "permanent-not-retried"],
)
async def test_an_inline_jsonl_write_keeps_its_retries(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    error: int,
    exported: int,
    failed: int,
    calls: int,
) -> None:
    """The jsonl file written on the export thread skips the retry machinery only for a
    first attempt that needs none: a write failing with a retryable error is retried
    within the deadline (and lands), a permanent one fails the batch at once."""
    from aiorunner._export.jsonl import JsonlBackend

    original = JsonlBackend._append
    failures = [error]

    def flaky(self: Any, data: bytes, *args: Any) -> None:
        if failures:
            raise OSError(failures.pop(), os.strerror(error))
        original(self, data, *args)

    monkeypatch.setattr(JsonlBackend, "_append", flaky)
    path = tmp_path / "traces.jsonl"
    config = TracingConfig(
        exporter_type="jsonl",
        traces_file=str(path),
        export_timeout=10.0,
        logs=False,
        metrics=False,
    )
    session = await anyio.to_thread.run_sync(Session, config)
    try:
        tracer = session.tracer()
        for name in ("a", "b", "c"):
            with tracer.start_as_current_span(name):
                pass
        await session.flush()
    finally:
        await session.aclose()
    stats = session.statistics().backend("jsonl")
    assert (stats.exported, stats.failed, stats.export_calls) == (exported, failed, calls)
    written = path.read_text().splitlines() if path.exists() else []
    assert (
        sum(len(json.loads(line)["resourceSpans"][0]["scopeSpans"][0]["spans"]) for line in written)
        == exported
    )


def test_a_session_whose_export_stopped_on_a_bug_still_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug that stops the export loop is logged, and closing the session afterwards
    (as at interpreter exit) returns instead of raising 'Event loop is closed'."""
    from aiorunner._export.worker import BackendWorker

    async def broken(self: Any, batch: Any) -> None:
        raise RuntimeError("a bug in the export path")

    monkeypatch.setattr(BackendWorker, "_export", broken)
    config = TracingConfig(
        exporter_type="jsonl", traces_file=str(tmp_path / "traces.jsonl"), export_timeout=2.0
    )
    session = Session(config)
    with session.tracer().start_as_current_span("lost"):
        pass
    asyncio.run(session.flush(timeout=1.0))  # the export meets the bug
    for thread in export_threads():
        thread.join(5)
    session.close(timeout=1.0)
    assert "stopped on an unexpected error" in caplog.text
    stats = session.statistics()
    assert (stats.received, stats.exported, stats.queued) == (1, 0, 0)
    assert stats.dropped + stats.failed == 1  # counted, not lost silently
