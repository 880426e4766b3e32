"""
Hedged spooling (#17 item 2, a hung collector): an export unanswered for
AIORUNNER_SPOOL_HEDGE (1 s) is spooled as a locked hedge file and its batch settled as
spooled, so a run never waits out the export deadline; the attempt goes on, and its copy
is removed if it succeeds. Real receivers, fresh interpreters where exit matters; the
spool module directly for the locking rules. No timing asserts: what a run's report says
(spooled, not exported) shows it did not wait for the answer.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import anyio
import pytest
from receivers import HungSocket, OtlpHttpReceiver
from test_spool import drain_all, end_trace, line_of, traces_in
from test_spool_receivers import aiorunner, otlp_env, script, spooled_spans, warning_lines

from aiorunner import ScriptRunner, Session, TracingConfig
from aiorunner._config import AIORUNNER_SPOOL_HEDGE
from aiorunner._exceptions import ConfigError
from aiorunner._export.spool import Spool
from aiorunner.testing import InMemoryBackend

#: Loose: the 10 s OTLP timeout a hung collector used to cost is what must not happen.
BOUND = 8.0


@pytest.fixture
def spool_dir() -> Path:
    return Path(os.environ["AIORUNNER_SPOOL_DIR"])


def hedge_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*-hedge.*"))


# ------------------------------------------------------------------ the spool's rules


def test_a_hedge_in_flight_is_neither_claimed_nor_evicted(tmp_path: Path) -> None:
    """While its exporter holds it, a hedge file is skipped by drainers (this process's
    and any other's) and by eviction; released, it is a sealed segment drained in its
    turn (oldest first, by the time in its name)."""
    spool = Spool(tmp_path, "otlp", "x", max_bytes=1 << 20)
    spool.append(line_of(1), 3)
    spool._seal()
    outcome, hedge = spool.hedge(line_of(2), 3)
    assert hedge is not None and outcome.written == 3
    spool.append(line_of(3), 3)
    assert traces_in(drain_all(spool)) == [1, 3]  # the hedge is left alone
    assert hedge.path.exists()
    # Eviction makes room from the oldest files it may remove, never the hedge.
    small = Spool(tmp_path, "otlp", "x", max_bytes=len(line_of(2)) + len(line_of(4)) + 10)
    small.append(line_of(4), 3)
    assert small.append(line_of(5), 3).evicted == 3  # trace 4 went, not the older hedge
    assert hedge.path.exists()
    full = Spool(tmp_path, "otlp", "x", max_bytes=len(line_of(2)) + 10)
    refused = full.append(line_of(6), 3)  # trace 5 goes; then only the hedge could
    assert (refused.evicted, refused.error is not None) == (3, True)
    assert hedge.path.exists()
    hedge.release()
    assert traces_in(drain_all(spool)) == [2]


def test_a_withdrawn_hedge_is_gone_and_a_released_one_is_claimable_elsewhere(
    tmp_path: Path,
) -> None:
    """withdraw() removes the file (the attempt succeeded: nothing is sent twice);
    another process's drainer cannot take a held hedge, and takes it once released."""
    spool = Spool(tmp_path, "otlp", "x", max_bytes=1 << 20)
    _, first = spool.hedge(line_of(1), 3)
    _, second = spool.hedge(line_of(2), 3)
    assert first is not None and second is not None
    assert first.withdraw() and not first.path.exists()
    probe = (
        "import sys; from aiorunner._export.spool import Spool\n"
        f"s = Spool({str(tmp_path)!r}, 'otlp', 'x', max_bytes=1 << 20)\n"
        "print(s.claim() is not None)\n"
    )
    held = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert held.stdout.strip() == "False", held.stderr
    second.release()
    free = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert free.stdout.strip() == "True", free.stderr


def test_a_bad_spool_hedge_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """AIORUNNER_SPOOL_HEDGE is ours: a bad value raises, naming it and what is
    accepted; 0 turns hedging off; the default is 1 s."""
    assert TracingConfig().resolve().spool_hedge == 1.0
    monkeypatch.setenv(AIORUNNER_SPOOL_HEDGE, "soon")
    with pytest.raises(ConfigError, match=r"AIORUNNER_SPOOL_HEDGE='soon'.*0 turns it off"):
        TracingConfig().resolve()
    monkeypatch.setenv(AIORUNNER_SPOOL_HEDGE, "-1")
    with pytest.raises(ConfigError, match=r"AIORUNNER_SPOOL_HEDGE='-1'"):
        TracingConfig().resolve()
    monkeypatch.setenv(AIORUNNER_SPOOL_HEDGE, "0")
    assert TracingConfig().resolve().spool_hedge == 0.0
    with pytest.raises(ConfigError, match="spool_hedge"):
        TracingConfig(spool_hedge=-0.5).resolve()


# ------------------------------------------------------------------ a session


def _config(**kwargs: object) -> TracingConfig:
    options: dict[str, object] = {
        "enabled": True,
        "schedule_delay": 0.05,
        "export_timeout": 1.5,
        "connect_budget": 0.2,
        "spool_hedge": 0.3,
    }
    return TracingConfig(**{**options, **kwargs})  # type: ignore[arg-type]


async def _wait(predicate: object, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():  # type: ignore[operator]
            await anyio.sleep(0.02)


def _balanced(stats: object) -> int:
    """What the backend's counters say it settled (see BackendStatistics)."""
    s = stats
    return s.exported + s.failed + s.dropped + s.spooled - s.hedges_withdrawn  # type: ignore[attr-defined]


async def test_a_hedged_export_that_fails_counts_once_as_spooled_and_is_drained_later(
    spool_dir: Path,
) -> None:
    """The export hangs past its deadline: the flush returns at the hedge with the batch
    spooled; the attempt then times out and the batch stays counted once, as spooled
    (not failed too); the drainer sends the hedge file once the backend answers, and
    the backend has each span once."""
    backend = InMemoryBackend("collector")
    backend.hang()  # until cancelled by the 1.5 s deadline
    async with Session(_config(), backends=[backend]) as session:
        report = await session.flush_trace(end_trace(session))
        assert (report.backends[0].spooled, report.backends[0].exported) == (3, 0)
        assert "AIORUNNER_SPOOL_HEDGE" in (report.backends[0].last_error or "")
        assert len(await anyio.to_thread.run_sync(hedge_files, spool_dir)) == 1
        await _wait(lambda: session.statistics().backends[0].unspooled == 3)
    stats = session.statistics().backends[0]
    assert (stats.spooled, stats.hedged, stats.hedges_withdrawn, stats.failed) == (3, 3, 0, 0)
    assert (stats.timeouts, stats.exported, stats.unspooled) == (1, 0, 3)
    assert _balanced(stats) == 3
    assert sorted(s.name for s in backend.get_finished_spans()) == ["child-0", "child-1", "root"]
    assert not await anyio.to_thread.run_sync(hedge_files, spool_dir)


@pytest.mark.parametrize("case", ["hedge off", "no spool"])
async def test_without_hedging_a_slow_export_is_waited_for(case: str, spool_dir: Path) -> None:
    """AIORUNNER_SPOOL_HEDGE=0, or a backend that is not spooled (jsonl, console and the
    parent runner say spool=False): a slow export is waited for as before, and the
    batch is exported, with no hedge file."""
    backend = InMemoryBackend("collector")
    backend.hang(seconds=0.6)
    if case == "no spool":
        backend.spool = False  # type: ignore[attr-defined]
    config = _config(spool_hedge=0.0 if case == "hedge off" else 0.2)
    async with Session(config, backends=[backend]) as session:
        report = await session.flush_trace(end_trace(session))
    assert (report.backends[0].exported, report.backends[0].spooled) == (3, 0)
    assert session.statistics().backends[0].hedged == 0
    assert not await anyio.to_thread.run_sync(hedge_files, spool_dir)


async def test_at_close_a_hedged_attempt_in_flight_is_not_waited_for(spool_dir: Path) -> None:
    """A session closing while a hedged attempt is in flight (30 s deadline) does not
    wait for it: the attempt is cancelled, its hedge stays in the spool, unlocked, for
    the next drainer, and is counted once (spooled)."""
    backend = InMemoryBackend("collector")
    backend.hang()
    session = Session(_config(export_timeout=30.0), backends=[backend])
    report = await session.flush_trace(end_trace(session))
    assert report.backends[0].spooled == 3
    with anyio.fail_after(10):  # a backstop only; the close does not wait for 30 s
        await session.aclose()
    stats = session.statistics().backends[0]
    assert (stats.spooled, stats.failed, stats.dropped, stats.exported) == (3, 0, 0, 0)
    (hedge,) = await anyio.to_thread.run_sync(hedge_files, spool_dir)
    spool = Spool(spool_dir, "x", "y", max_bytes=1 << 20)
    spool.directory = hedge.parent
    lines = await anyio.to_thread.run_sync(drain_all, spool)
    assert len(traces_in(lines)) == 1  # one line (the batch of 3), claimable


async def test_a_slow_collector_gets_each_span_once_and_the_hedge_is_withdrawn(
    tmp_path: Path, spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A collector that answers after 2 s (default hedge, 1 s): the run returns with
    its spans spooled (it did not wait for the answer); the attempt then succeeds, the
    hedge is withdrawn (its file removed), the batch spooled meanwhile is sent by the
    drainer, and the receiver has each of the run's 7 spans once."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    with OtlpHttpReceiver() as receiver:
        receiver.hang(2.0, count=1)
        config = TracingConfig(exporter_type="otlp", collector_endpoint=receiver.endpoint)
        session = await anyio.to_thread.run_sync(Session, config)
        try:
            result = await ScriptRunner(str(script(tmp_path)), session=session).run()
            (otlp,) = result.export.backends
            assert (otlp.exported, otlp.spooled) == (0, 7), result.export.describe()
            assert result.exit_code == 0
            await receiver.wait_for_spans(7, timeout=15)
            await _wait(lambda: not list(spool_dir.rglob("traces.*")))
            await session.flush()
        finally:
            await session.aclose()
        ids = Counter(span.span_id for span in receiver.spans)
    stats = session.statistics().backend("otlp")
    assert (stats.hedged, stats.hedges_withdrawn, stats.exported) == (5, 5, 5)
    assert (stats.spooled, stats.unspooled, stats.failed) == (7, 2, 0)
    assert _balanced(stats) == 7
    assert len(ids) == 7 and set(ids.values()) == {1}


# ------------------------------------------------------------------ the CLI


def test_cli_against_a_hung_collector_with_defaults_exits_after_the_hedge(
    tmp_path: Path, spool_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`aiorunner run` against a collector that accepts and never answers, default
    settings (a 10 s OTLP timeout): the process exits with the script's code well before
    that timeout, with one warning naming the spool; the spans arrive exactly once at a
    collector started later on the same port when the spool is pushed."""
    caplog.set_level(logging.WARNING)
    with HungSocket() as hung:
        env = otlp_env(hung.endpoint, "http/protobuf")
        port = hung.port
        done, elapsed = aiorunner("run", str(script(tmp_path, code=5)), env=env, cwd=tmp_path)
        assert hung.connections >= 1
    assert done.returncode == 5, done.stderr
    assert elapsed < BOUND, done.stderr
    (warning,) = warning_lines(done.stderr)
    assert str(spool_dir) in warning and "AIORUNNER_SPOOL_HEDGE" in warning
    assert "7 spooled" in done.stderr
    assert spooled_spans(spool_dir) == 7
    assert hedge_files(spool_dir)
    with OtlpHttpReceiver(port=port) as receiver:
        pushed, _ = aiorunner("traces", "push", "--spool", env=env, cwd=tmp_path)
        assert pushed.returncode == 0, pushed.stderr
        receiver.wait_for_spans_sync(7, timeout=10)
        ids = Counter(span.span_id for span in receiver.spans)
    assert len(ids) == 7 and set(ids.values()) == {1}
    assert spooled_spans(spool_dir) == 0 and not hedge_files(spool_dir)


def test_cli_against_a_collector_slower_than_the_hedge_sends_nothing_twice(
    tmp_path: Path, spool_dir: Path
) -> None:
    """A collector that answers every request after 1.5 s: the run stops waiting at the
    hedge (1 s), and at exit the hedged export gets its short grace, so its answer comes
    and its hedge is withdrawn rather than left to be sent again; the next process then
    sends what was spooled, and the collector has both runs' 14 spans once each."""
    with OtlpHttpReceiver() as receiver:
        receiver.hang(1.5)
        env = otlp_env(receiver.endpoint, "http/protobuf")
        first, _ = aiorunner("run", str(script(tmp_path, "one.py")), env=env, cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        assert "7 spooled" in first.stderr
        assert not hedge_files(spool_dir)
        assert spooled_spans(spool_dir) == 7 - len(receiver.spans) < 7
        receiver.hang(0)
        second, _ = aiorunner("run", str(script(tmp_path, "two.py")), env=env, cwd=tmp_path)
        assert second.returncode == 0, second.stderr
        receiver.wait_for_spans_sync(14, timeout=10)
        ids = Counter(span.span_id for span in receiver.spans)
    assert len(ids) == 14 and set(ids.values()) == {1}
    assert spooled_spans(spool_dir) == 0
