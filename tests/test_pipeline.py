"""
The export pipeline through a real Session: batching, hand-off from many threads,
overflow, fan-out isolation, retries, coalesced flushes, several event loops, shutdown.

Backends are ``aiorunner.testing.InMemoryBackend`` (what arrived is what it kept); no timing
asserts: waits are bounded polls, and each test asserts counts and contents.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import threading
from collections.abc import Iterator

import anyio
import pytest

from aiorunner._config import TracingConfig
from aiorunner._export.session import Session
from aiorunner.testing import InMemoryBackend


def make_config(**overrides: object) -> TracingConfig:
    values: dict[str, object] = {
        "schedule_delay": 60.0,  # nothing leaves on the timer unless a test wants it to
        "export_timeout": 10.0,
        "backend_options": {"retry_initial_backoff": 0.01, "retry_max_backoff": 0.05},
    }
    values.update(overrides)
    return TracingConfig(**values)  # type: ignore[arg-type]


def end_trace(session: Session, children: int = 2, name: str = "ScriptRunner") -> int:
    """End a root span with ``children`` child spans; return the trace id."""
    tracer = session.tracer("tests")
    with tracer.start_as_current_span(name) as root:
        for index in range(children):
            with tracer.start_as_current_span(f"child-{index}"):
                pass
    return root.get_span_context().trace_id


async def wait_until(predicate, *, limit: float = 10.0) -> None:
    """Poll ``predicate`` until true; fail (not a timing assert: a bound) after ``limit``."""
    with anyio.fail_after(limit):
        while not predicate():
            await anyio.sleep(0.01)


@pytest.fixture
def paused_loop() -> Iterator[object]:
    """A way to stop a session's export loop thread for a while (it waits in select() on a
    pipe until released), to fill its hand-off queue deterministically."""
    read_fd, write_fd = os.pipe()
    started = threading.Event()

    def block() -> None:
        started.set()
        select.select([read_fd], [], [])

    class Pauser:
        def pause(self, session: Session) -> None:
            loop = session._pipeline._loop  # the export loop of this session
            assert loop is not None, "start the pipeline first"
            loop.call_soon_threadsafe(block)
            assert started.wait(10)

        def release(self) -> None:
            os.write(write_fd, b"x")

    pauser = Pauser()
    try:
        yield pauser
    finally:
        pauser.release()
        os.close(read_fd)
        os.close(write_fd)


async def test_batches_leave_when_full_without_flush() -> None:
    """With a long schedule delay, full batches still leave as soon as they are full."""
    backend = InMemoryBackend()
    async with Session(make_config(batch_size=4), backends=[backend]) as session:
        tracer = session.tracer()
        for index in range(8):
            with tracer.start_as_current_span(f"s{index}"):
                pass
        await wait_until(lambda: len(backend.get_finished_spans()) == 8)
        assert backend.batches == (4, 4)
        names = sorted(span.name for span in backend.get_finished_spans())
        assert names == sorted(f"s{index}" for index in range(8))


async def test_spans_leave_after_the_schedule_delay() -> None:
    """A partial batch leaves on the schedule-delay timer, without any flush."""
    backend = InMemoryBackend()
    async with Session(make_config(schedule_delay=0.05), backends=[backend]) as session:
        end_trace(session, children=2)
        await wait_until(lambda: len(backend.get_finished_spans()) == 3)
        assert sum(backend.batches) == 3


async def test_flush_sends_a_partial_batch_at_once() -> None:
    """flush() drains the queue: three spans leave as one batch despite a 60 s delay."""
    backend = InMemoryBackend()
    async with Session(make_config(), backends=[backend]) as session:
        end_trace(session, children=2)
        assert await session.flush()
        assert backend.batches == (3,)
        stats = session.statistics()
        assert (stats.received, stats.exported, stats.dropped, stats.queued) == (3, 3, 0, 0)


def test_on_end_from_many_threads_loses_nothing() -> None:
    """Four threads ending spans at full speed: every span arrives exactly once and the
    counters agree (received = exported, nothing dropped) with a queue that can hold them."""
    backend = InMemoryBackend()
    session = Session(make_config(max_queue_size=100_000, batch_size=512), backends=[backend])
    tracer = session.tracer()
    made: list[int] = []

    def produce(worker: int) -> None:
        ids = []
        for index in range(2000):
            with tracer.start_as_current_span(f"t{worker}-{index}") as span:
                pass
            ids.append(span.get_span_context().span_id)
        made.extend(ids)

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert asyncio.run(session.flush())
    arrived = [span.context.span_id for span in backend.get_finished_spans()]
    assert len(arrived) == 8000
    assert sorted(arrived) == sorted(made)
    stats = session.statistics()
    assert (stats.received, stats.exported, stats.dropped) == (8000, 8000, 0)
    session.close()


def test_overflow_is_counted_as_dropped(paused_loop) -> None:
    """When the export thread cannot run, spans beyond the queue bound are dropped and
    counted, globally and for their trace; received = exported + dropped, exactly."""
    backend = InMemoryBackend()
    session = Session(make_config(max_queue_size=4, batch_size=2), backends=[backend])
    tracer = session.tracer()
    with tracer.start_as_current_span("warm-up"):
        pass
    assert asyncio.run(session.flush())
    paused_loop.pause(session)
    with tracer.start_as_current_span("ScriptRunner") as root:  # a run: its trace is watched
        for index in range(19):
            with tracer.start_as_current_span(f"child-{index}"):
                pass
    paused_loop.release()
    trace_id = root.get_span_context().trace_id
    report = asyncio.run(session.flush_trace(trace_id))
    stats = session.statistics()
    arrived = len(backend.get_finished_spans())
    assert report.dropped > 0
    assert report.dropped + report.backends[0].exported == 20
    assert arrived == 1 + report.backends[0].exported
    assert (stats.received, stats.dropped, stats.exported) == (21, report.dropped, arrived)
    assert not report.ok
    session.close()


async def test_a_hanging_backend_does_not_delay_the_others() -> None:
    """One backend hangs in its first export; the other receives every span meanwhile."""
    stuck = InMemoryBackend("stuck")
    stuck.hang(count=100)
    good = InMemoryBackend("good")
    session = Session(make_config(export_timeout=60.0), backends=[stuck, good])
    trace_id = end_trace(session, children=4)
    await session.flush(timeout=0)  # drain the queue now, do not wait
    await wait_until(lambda: len(good.get_finished_spans()) == 5)
    assert stuck.export_calls == 1
    assert stuck.get_finished_spans() == ()
    report = await session.flush_trace(trace_id, timeout=0)
    assert report.backends[1].exported == 5
    assert report.backends[0].pending == 5
    await session.aclose(timeout=0.2)


async def test_a_stuck_backends_queue_overflows_for_it_alone() -> None:
    """While one backend is stuck in an export, its own queue is bounded: what does not
    fit is dropped and counted for it alone, and the other backend still gets every span."""
    stuck = InMemoryBackend("stuck")
    stuck.hang(count=100)
    good = InMemoryBackend("good")
    session = Session(
        make_config(max_queue_size=4, batch_size=2, export_timeout=60.0), backends=[stuck, good]
    )
    tracer = session.tracer()
    for index in range(30):
        with tracer.start_as_current_span(f"s{index}"):
            pass
        await session.flush(timeout=0)  # hand the span to the workers now
        if index == 0:
            await wait_until(lambda: stuck.export_calls == 1)
    await wait_until(lambda: len(good.get_finished_spans()) == 30)
    stats = session.statistics()
    assert stats.backend("good").dropped == 0
    assert stats.backend("stuck").dropped > 0
    assert stats.backend("stuck").exported == 0
    await session.aclose(timeout=0.2)
    stuck_stats = session.statistics().backend("stuck")
    # What was in flight or queued at close went to the stuck backend's spool (#17).
    assert stuck_stats.spooled > 0
    assert stuck_stats.failed + stuck_stats.dropped + stuck_stats.spooled == 30
    assert stats.dropped == 0  # nothing was lost before reaching the backends


async def test_a_hung_export_is_cut_at_the_export_timeout() -> None:
    """An export that never returns is cancelled at the export timeout and its spans are
    spooled (#17), with a message that says why; flush_trace returns well before its own
    limit."""
    stuck = InMemoryBackend("stuck")
    stuck.hang(count=100)
    async with Session(make_config(export_timeout=0.3), backends=[stuck]) as session:
        trace_id = end_trace(session, children=1)
        report = await session.flush_trace(trace_id, timeout=30)
        (backend,) = report.backends
        assert (backend.exported, backend.spooled, backend.failed, backend.pending) == (0, 2, 0, 0)
        assert "timed out" in (backend.last_error or "")
        assert session.statistics().backends[0].timeouts == 1


async def test_a_raising_backend_is_isolated_and_not_retried() -> None:
    """A backend that raises fails its batch (logged, counted, not retried); the other
    backend exports everything."""
    bad = InMemoryBackend("bad")
    bad.raise_next(ValueError("plugin bug"))
    good = InMemoryBackend("good")
    async with Session(make_config(), backends=[bad, good]) as session:
        trace_id = end_trace(session, children=2)
        report = await session.flush_trace(trace_id)
    by_name = {b.name: b for b in report.backends}
    assert by_name["good"].exported == 3
    assert by_name["bad"].failed == 3
    assert "ValueError: plugin bug" in (by_name["bad"].last_error or "")
    assert bad.export_calls == 1
    assert len(good.get_finished_spans()) == 3


async def test_retryable_failures_are_retried_until_success() -> None:
    """Two retryable failures, then success: the batch arrives, after three calls."""
    backend = InMemoryBackend()
    backend.fail_next(2)
    async with Session(make_config(), backends=[backend]) as session:
        trace_id = end_trace(session)
        report = await session.flush_trace(trace_id)
        stats = session.statistics().backends[0]
    assert report.ok
    assert report.backends[0].exported == 3
    assert backend.export_calls == 3
    assert (stats.retries, stats.failed) == (2, 0)
    assert len(backend.get_finished_spans()) == 3


async def test_retry_after_beyond_the_deadline_stops_retrying() -> None:
    """A server asking to retry after 5 s, with a 1 s export deadline: no retry is made
    (the backoff alone would have retried at once), and the batch is spooled saying why."""
    backend = InMemoryBackend()
    backend.fail_next(1, retry_after=5.0, error="503 service unavailable")
    async with Session(make_config(export_timeout=1.0), backends=[backend]) as session:
        trace_id = end_trace(session)
        report = await session.flush_trace(trace_id)
    assert backend.export_calls == 1
    assert (report.backends[0].spooled, report.backends[0].failed) == (3, 0)
    error = report.backends[0].last_error or ""
    assert "503 service unavailable" in error
    assert "would pass" in error


async def test_permanent_failure_is_not_retried_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A permanent failure is not retried; the same error on every batch is logged once,
    by the aiorunner.export logger, and every failed span is counted."""
    backend = InMemoryBackend()
    backend.fail_permanently("401 unauthorized: check the API key variable")
    caplog.set_level(logging.WARNING, logger="aiorunner.export")
    async with Session(make_config(), backends=[backend]) as session:
        first = end_trace(session)
        await session.flush_trace(first)
        second = end_trace(session)
        report = await session.flush_trace(second)
    assert backend.export_calls == 2
    assert report.backends[0].failed == 3
    assert session.statistics().backends[0].failed == 6
    warnings = [r for r in caplog.records if r.name == "aiorunner.export"]
    assert len(warnings) == 1
    assert "401 unauthorized" in warnings[0].getMessage()
    assert "'memory'" in warnings[0].getMessage()


async def test_concurrent_flushes_share_batches() -> None:
    """A hundred runs ending together, each awaiting its own flush_trace: every report is
    exact, and the backend saw a few exports, not a hundred."""
    backend = InMemoryBackend()
    async with Session(make_config(), backends=[backend]) as session:

        async def run(index: int):
            trace_id = end_trace(session, children=2, name=f"run-{index}")
            await anyio.sleep(0)
            return await session.flush_trace(trace_id)

        reports = await asyncio.gather(*(run(index) for index in range(100)))
    assert all(r.ok and r.backends[0].exported == 3 for r in reports)
    assert len(backend.get_finished_spans()) == 300
    assert backend.export_calls <= 5


async def test_flush_storm_while_an_export_is_in_flight_merges_batches() -> None:
    """While one slow export is in flight, many small flushes queue up; the worker merges
    them into few exports."""
    backend = InMemoryBackend()
    backend.hang(count=1, seconds=0.3)
    async with Session(make_config(), backends=[backend]) as session:
        first = end_trace(session, children=0)
        first_flush = asyncio.ensure_future(session.flush_trace(first))
        await wait_until(lambda: backend.export_calls == 1)
        trace_ids = [end_trace(session, children=1, name=f"r{i}") for i in range(50)]
        reports = await asyncio.gather(*(session.flush_trace(t) for t in trace_ids))
        await first_flush
    assert all(r.backends[0].exported == 2 for r in reports)
    assert backend.export_calls <= 4  # the slow one, then the queued flushes merged
    assert sum(backend.batches) == 101


def test_flush_trace_from_two_event_loops() -> None:
    """One session, used from two successive asyncio.run() calls (as run_script() does):
    each loop's flush_trace reports its own trace, and neither loop is blocked."""
    backend = InMemoryBackend()
    session = Session(make_config(), backends=[backend])

    async def one_run(children: int):
        trace_id = end_trace(session, children=children)
        return await session.flush_trace(trace_id)

    first = asyncio.run(one_run(1))
    second = asyncio.run(one_run(3))
    assert first.backends[0].exported == 2
    assert second.backends[0].exported == 4
    assert len(backend.get_finished_spans()) == 6
    session.close()


async def test_close_with_a_hung_backend_returns_within_its_deadline() -> None:
    """aclose() drains within its deadline: the hung backend's spans are spooled (the
    batch in flight at the deadline included, #17), the healthy one's are exported, both
    are shut down, and it is idempotent."""
    stuck = InMemoryBackend("stuck")
    stuck.hang(count=100)
    good = InMemoryBackend("good")
    session = Session(make_config(export_timeout=60.0), backends=[stuck, good])
    end_trace(session, children=2)
    with anyio.fail_after(20):  # a bound for a broken build, not a timing assert
        await session.aclose(timeout=0.3)
        await session.aclose(timeout=0.3)
    stats = session.statistics()
    assert stats.backend("good").exported == 3
    stuck_stats = stats.backend("stuck")
    assert stuck_stats.exported == 0
    assert (stuck_stats.spooled, stuck_stats.failed, stuck_stats.dropped) == (3, 0, 0)
    assert good.shutdown_called and stuck.shutdown_called
    assert session.closed


async def test_spans_after_close_are_counted_as_dropped() -> None:
    """A span ending after the session closed is not lost silently: it is counted."""
    backend = InMemoryBackend()
    session = Session(make_config(), backends=[backend])
    end_trace(session, children=0)
    await session.aclose()
    trace_id = end_trace(session, children=1)
    report = await session.flush_trace(trace_id)
    stats = session.statistics()
    assert stats.exported == 1
    assert stats.dropped == 2
    assert report.backends[0].exported == 0


async def test_root_span_start_is_announced_before_its_end() -> None:
    """A root ScriptRunner span reaches on_span_start as soon as it starts (a flush sees
    it while it is still open), as a copy with no end time and no marker attribute (a
    start is never exported as a span), and before its own end is exported."""
    backend = InMemoryBackend()
    async with Session(make_config(), backends=[backend]) as session:
        tracer = session.tracer()
        with tracer.start_as_current_span(
            "ScriptRunner", attributes={"code.filepath": "etl.py"}
        ) as root:
            await session.flush()
            (started,) = backend.get_started_spans()
            assert started.end_time is None
            assert "aiorunner.pending" not in started.attributes
            assert started.attributes["code.filepath"] == "etl.py"
            assert started.context.span_id == root.get_span_context().span_id
            with tracer.start_as_current_span("ScriptRunner"):  # nested: not a root
                pass
        await session.flush()
    assert len(backend.get_started_spans()) == 1
    assert [s.name for s in backend.get_finished_spans()] == ["ScriptRunner", "ScriptRunner"]


async def test_statistics_is_a_frozen_snapshot() -> None:
    """statistics() returns frozen dataclasses with per-backend counts."""
    backend = InMemoryBackend("mem")
    async with Session(make_config(), backends=[backend]) as session:
        end_trace(session, children=1)
        await session.flush()
        stats = session.statistics()
    with pytest.raises(AttributeError):
        stats.exported = 0  # type: ignore[misc]
    assert stats.backend("mem").exported == 2
    assert stats.backend("mem").kind == "async"
    assert stats.to_dict()["backends"][0]["name"] == "mem"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_exports_its_own_spans(tmp_path) -> None:
    """After os.fork() the export thread exists only in the parent: the child starts a
    fresh one for its own spans, and the parent goes on exporting as before."""
    import json
    import warnings

    traces = tmp_path / "forked.jsonl"
    session = Session(make_config(traces_file=traces))
    tracer = session.tracer()
    with tracer.start_as_current_span("parent-before"):
        pass
    assert asyncio.run(session.flush())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        signal.alarm(30)  # a hung child fails the test instead of hanging it
        code = 4
        try:
            with tracer.start_as_current_span("child"):
                pass
            code = 0 if asyncio.run(session.flush(timeout=10)) else 3
            session.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with tracer.start_as_current_span("parent-after"):
        pass
    assert asyncio.run(session.flush())
    session.close()
    names = [
        span["name"]
        for line in traces.read_text().splitlines()
        for resource in json.loads(line)["resourceSpans"]
        for scope in resource["scopeSpans"]
        for span in scope["spans"]
    ]
    assert sorted(names) == ["child", "parent-after", "parent-before"]


async def test_flush_trace_returns_at_its_deadline_even_if_the_export_thread_is_stuck(
    paused_loop,
) -> None:
    """The jsonl backend may write on the export thread itself: if that thread is stuck
    in a write (a hung disk), a run's flush still returns after its timeout (plus a
    grace), reporting its spans as not settled, instead of waiting for that thread."""
    backend = InMemoryBackend()
    async with Session(make_config(), backends=[backend]) as session:
        end_trace(session, children=0)
        await session.flush()  # the export thread runs
        paused_loop.pause(session)
        trace_id = end_trace(session, children=1)
        with anyio.fail_after(10):  # a bound, not a timing assert: 0.3 s + 1 s grace
            report = await session.flush_trace(trace_id, timeout=0.3)
        assert not report.ok and report.pending == 2, report
        assert len(backend.get_finished_spans()) == 1  # the first trace only
        paused_loop.release()
        assert (await session.flush_trace(trace_id, timeout=10)).ok


async def test_jsonl_writes_on_the_export_thread_only_when_it_is_alone(tmp_path) -> None:
    """Alone, the jsonl backend writes on the export thread (two thread hand-offs per
    export saved); beside another backend it writes from a worker thread, so a slow disk
    cannot hold the other one up. Both ways the lines arrive."""
    for kinds, inline in ((["jsonl"], True), (["jsonl", "memory"], False)):
        path = tmp_path / f"{len(kinds)}.jsonl"
        config = make_config(exporter_type=kinds, traces_file=str(path))
        # Built off the loop: loading backends by name scans entry points (files).
        async with await anyio.to_thread.run_sync(Session, config) as session:
            (jsonl,) = [a.target for a in session._pipeline.adapters if a.name == "jsonl"]
            assert jsonl.write_on_export_thread is inline
            trace_id = end_trace(session, children=1)
            assert (await session.flush_trace(trace_id, timeout=10)).ok
        assert f"{trace_id:032x}" in await anyio.Path(path).read_text()
