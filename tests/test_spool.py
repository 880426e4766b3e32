"""
The durable spool (#17 item 1): what a backend could not take is kept on disk, bounded,
and sent back by the next session, oldest first, never twice once accepted.

These tests use the spool module directly and the in-memory backend through a real
Session; ``tests/test_spool_receivers.py`` does the same with the real OTLP receivers and
fresh interpreters.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, TraceFlags

from aiorunner import Session, TracingConfig
from aiorunner._config import AIORUNNER_SPOOL_MAX_BYTES
from aiorunner._exceptions import ConfigError
from aiorunner._export.otlp_json import decode_line, encode_line
from aiorunner._export.spool import Spool, count_spans, spool_name, spool_usage
from aiorunner.testing import InMemoryBackend


def make_spans(trace: int, count: int = 3) -> list[ReadableSpan]:
    resource = Resource.create({"service.name": "spool-test"})
    return [
        ReadableSpan(
            name=f"span-{trace}-{index}",
            context=SpanContext(trace, index + 1, is_remote=False, trace_flags=TraceFlags(1)),
            resource=resource,
            start_time=1_000 + index,
            end_time=2_000 + index,
        )
        for index in range(count)
    ]


def line_of(trace: int, count: int = 3) -> bytes:
    return encode_line(make_spans(trace, count))


def traces_in(lines: list[bytes]) -> list[int]:
    return [decode_line(line)[0].context.trace_id for line in lines]  # type: ignore[union-attr]


def drain_all(spool: Spool) -> list[bytes]:
    """Everything a drainer would send, accepting each line."""
    sent = []
    while (claim := spool.claim()) is not None:
        while (item := claim.next_line()) is not None:
            line, end = item
            sent.append(line)
            claim.commit(end)
        claim.finish()
    return sent


def test_lines_come_back_oldest_first_and_the_spool_empties(tmp_path: Path) -> None:
    """Appended lines are claimed oldest first (sealed segments before the active file),
    and a drained spool holds no span file any more."""
    spool = Spool(tmp_path, "otlp", "http://a:4318", max_bytes=64 * 1024)
    spool.segment_bytes = 1  # every line its own segment: ordering across files
    for trace in range(1, 6):
        assert spool.append(line_of(trace), 3).written == 3
    assert spool.pending()
    assert traces_in(drain_all(spool)) == [1, 2, 3, 4, 5]
    assert not spool.pending()
    assert sorted(p.name for p in spool.directory.iterdir()) == [".lock", "destination"]


def test_two_destinations_do_not_mix(tmp_path: Path) -> None:
    """The directory is the backend's name plus a hash of its destination."""
    a = Spool(tmp_path, "otlp", "http://a:4318", max_bytes=1 << 20)
    b = Spool(tmp_path, "otlp", "http://b:4318", max_bytes=1 << 20)
    assert a.directory != b.directory
    assert a.directory.name == spool_name("otlp", "http://a:4318")
    a.append(line_of(1), 3)
    assert b.claim() is None
    assert traces_in(drain_all(a)) == [1]


def test_a_drainer_that_dies_is_taken_over_from_its_last_accepted_line(tmp_path: Path) -> None:
    """A claimed file whose drainer stopped (released without finishing, as a killed
    process's flock is released) is taken over by the next drainer from the recorded
    offset: lines already accepted are not sent again."""
    spool = Spool(tmp_path, "otlp", "x", max_bytes=1 << 20)
    for trace in (1, 2, 3):
        spool.append(line_of(trace), 3)
    claim = spool.claim()
    assert claim is not None
    _line, end = claim.next_line()  # type: ignore[misc]
    claim.commit(end)  # trace 1 accepted
    claim.next_line()  # trace 2 sent, no answer: not committed
    claim.release()  # the drainer dies here
    assert traces_in(drain_all(spool)) == [2, 3]


def test_a_file_held_by_a_live_drainer_is_not_claimed_twice(tmp_path: Path) -> None:
    """While one drainer holds a file (flock), another drainer finds nothing to claim in
    it; lines appended meanwhile go to a new file the second drainer may take."""
    spool = Spool(tmp_path, "otlp", "x", max_bytes=1 << 20)
    spool.append(line_of(1), 3)
    first = spool.claim()
    assert first is not None
    assert spool.claim() is None
    spool.append(line_of(2), 3)
    second = spool.claim()
    assert second is not None
    assert traces_in([second.next_line()[0]]) == [2]  # type: ignore[index]
    first.release()
    second.release()


def test_at_its_bound_the_oldest_spans_are_evicted_and_counted(tmp_path: Path) -> None:
    """A spool at AIORUNNER_SPOOL_MAX_BYTES makes room by removing its oldest segments;
    the spans removed are counted, the newest are kept, the bound holds."""
    size = len(line_of(1))
    spool = Spool(tmp_path, "otlp", "x", max_bytes=4 * size + size // 2)
    evicted = 0
    for trace in range(1, 11):
        outcome = spool.append(line_of(trace), 3)
        assert outcome.written == 3
        evicted += outcome.evicted
    total = sum(p.stat().st_size for p in spool.directory.iterdir() if p.name.startswith("traces"))
    assert total <= spool.max_bytes
    kept = traces_in(drain_all(spool))
    assert kept == list(range(11 - len(kept), 11))  # the newest, in order
    assert evicted == 3 * (10 - len(kept)) > 0


def test_a_line_larger_than_the_bound_is_refused_not_written(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "otlp", "x", max_bytes=100)
    outcome = spool.append(line_of(1), 3)
    assert (outcome.written, outcome.error is not None) == (0, True)
    assert "AIORUNNER_SPOOL_MAX_BYTES" in (outcome.error or "")
    assert not spool.pending()


def test_usage_counts_bytes_files_and_spans(tmp_path: Path) -> None:
    """spool_usage (what doctor shows) finds each backend's spool with its size."""
    spool = Spool(tmp_path, "otlp", "http://a:4318", max_bytes=1 << 20)
    spool.append(line_of(1, 2), 2)
    spool.append(line_of(2, 5), 5)
    (usage,) = spool_usage(tmp_path)
    assert usage.spans == 7 == count_spans(line_of(1, 2) + line_of(2, 5))
    assert usage.files == 1
    assert usage.destination == "otlp http://a:4318"
    assert usage.bytes == len(line_of(1, 2)) + len(line_of(2, 5))
    assert spool_usage(tmp_path / "absent") == []


def test_a_bad_spool_max_bytes_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """AIORUNNER_SPOOL_MAX_BYTES is ours: a bad value raises, naming it and the fix."""
    monkeypatch.setenv(AIORUNNER_SPOOL_MAX_BYTES, "lots")
    with pytest.raises(ConfigError, match=r"AIORUNNER_SPOOL_MAX_BYTES='lots'.*256MiB"):
        TracingConfig().resolve()
    monkeypatch.setenv(AIORUNNER_SPOOL_MAX_BYTES, "64MiB")
    assert TracingConfig().resolve().spool_max_bytes == 64 * 1024 * 1024


def _config(**kwargs: object) -> TracingConfig:
    options: dict[str, object] = {
        "enabled": True,
        "schedule_delay": 0.05,
        "export_timeout": 2.0,
        "connect_budget": 0.2,
    }
    return TracingConfig(**{**options, **kwargs})  # type: ignore[arg-type]


def end_trace(session: Session, children: int = 2) -> int:
    tracer = session.tracer()
    with tracer.start_as_current_span("root") as root:
        for index in range(children):
            with tracer.start_as_current_span(f"child-{index}"):
                pass
    return root.get_span_context().trace_id


async def test_an_unreachable_backend_is_spooled_then_sent_by_the_next_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A backend unreachable within the connect budget: the run's spans are spooled (the
    report says so, one warning names the spool); later batches go straight to the spool;
    the next session with that backend (its export thread starts with its first span)
    sends them, once, and empties the spool."""
    caplog.set_level(logging.WARNING, logger="aiorunner.export")
    down = InMemoryBackend("collector")
    down.fail_next(1000, error="connection refused", unreachable=True)
    async with Session(_config(), backends=[down]) as session:
        first = end_trace(session)
        report = await session.flush_trace(first)
        calls = down.export_calls
        second = end_trace(session)
        again = await session.flush_trace(second)
    assert (report.backends[0].spooled, report.backends[0].failed) == (3, 0)
    assert not report.lost and not report.ok
    assert again.backends[0].spooled == 3
    assert down.export_calls == calls  # down: the second batch went straight to the spool
    spooled = [r for r in caplog.records if "spooled to" in r.getMessage()]
    assert len(spooled) == 1
    spool_dir = session.statistics().backends[0].spool_dir
    assert spool_dir is not None and spool_dir in spooled[0].getMessage()

    up = InMemoryBackend("collector")
    async with Session(_config(), backends=[up]) as later:
        third = end_trace(later)
        await _wait(lambda: len(up.get_finished_spans()) == 9)
        await later.flush()
    stats = later.statistics().backends[0]
    assert (stats.unspooled, stats.exported) == (6, 3)
    names = sorted(s.name for s in up.get_finished_spans())
    assert names == sorted(["root", "child-0", "child-1"] * 3)
    traces = [s.context.trace_id for s in up.get_finished_spans()]  # type: ignore[union-attr]
    assert sorted(traces) == sorted([first] * 3 + [second] * 3 + [third] * 3)
    assert not any(p.name.startswith("traces") for p in Path(spool_dir).iterdir())


async def test_a_permanent_failure_is_reported_not_spooled() -> None:
    """A permanent failure (HTTP 400, bad credentials) is counted as failed and never
    spooled: trying later cannot help."""
    backend = InMemoryBackend("collector")
    backend.fail_permanently("HTTP 401: check the API key")
    async with Session(_config(), backends=[backend]) as session:
        report = await session.flush_trace(end_trace(session))
    assert (report.backends[0].failed, report.backends[0].spooled) == (3, 0)
    assert report.lost
    spool_dir = session.statistics().backends[0].spool_dir
    assert spool_dir is not None and not os.path.exists(spool_dir)


async def test_spool_max_bytes_zero_turns_the_spool_off() -> None:
    """AIORUNNER_SPOOL_MAX_BYTES=0: no spool; what could not be exported fails as before."""
    backend = InMemoryBackend("collector")
    backend.fail_next(100)
    async with Session(_config(spool_max_bytes=0, export_timeout=0.3), backends=[backend]) as s:
        report = await s.flush_trace(end_trace(s))
    assert (report.backends[0].failed, report.backends[0].spooled) == (3, 0)
    assert s.statistics().backends[0].spool_dir is None


async def _wait(predicate: object, timeout: float = 10.0) -> None:
    import anyio

    with anyio.fail_after(timeout):
        while not predicate():  # type: ignore[operator]
            await anyio.sleep(0.02)


async def test_doctor_lists_each_spool_with_its_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """`aiorunner doctor` shows the spools under AIORUNNER_SPOOL_DIR: spans, bytes,
    files and the backend and destination they wait for; an empty spool dir shows none."""
    import anyio

    from aiorunner._doctor.checks import diagnose

    root = Path(os.environ["AIORUNNER_SPOOL_DIR"])
    empty = await diagnose(timeout=1.0)
    assert empty.spools == [] and empty.spool_dir == str(root)
    spool = Spool(root, "otlp", "grpc http://collector:4317", max_bytes=1 << 20)
    await anyio.to_thread.run_sync(spool.append, line_of(1, 4), 4)
    report = await diagnose(timeout=1.0)
    (usage,) = report.spools
    assert (usage.spans, usage.files) == (4, 1)
    assert usage.destination == "otlp grpc http://collector:4317"
    assert report.to_dict()["spools"][0]["spans"] == 4
