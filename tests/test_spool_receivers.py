"""
Nothing lost, nothing stuck (#17 items 1, 2, 5): the spool and fail-fast export against
the real OTLP receivers, in fresh interpreters (``python -m aiorunner run``) where exit
behaviour matters.

Wall-time bounds here are loose ("exits before the 30 s export timeout would allow"),
never tight timing asserts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from receivers import HungSocket, OtlpGrpcReceiver, OtlpHttpReceiver

from aiorunner._export.spool import spool_usage

#: What the 30 s default export timeout would allow: a run must be well under it.
BOUND = 10.0


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return Path(os.environ["AIORUNNER_SPOOL_DIR"])


def script(tmp_path: Path, name: str = "t.py", code: int = 0) -> Path:
    path = tmp_path / name
    path.write_text(f"print('hello from {name}')\nraise SystemExit({code})\n")
    return path


# Sets a file size limit, then execs the CLI. Not preexec_fn: that forks this threaded
# test process, and a lock another thread held at the fork can deadlock the child.
_WITH_FSIZE = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); "
    "os.execv(sys.executable, [sys.executable, '-m', 'aiorunner', *sys.argv[2:]])"
)


def aiorunner(
    *args: str, env: dict[str, str], cwd: Path, fsize_limit: int | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    command = [sys.executable, "-m", "aiorunner", *args]
    if fsize_limit is not None:
        command = [sys.executable, "-c", _WITH_FSIZE, str(fsize_limit), *args]
    done = subprocess.run(
        command,
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, time.monotonic() - started


def otlp_env(endpoint: str, protocol: str = "grpc", **extra: str) -> dict[str, str]:
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        **extra,
    }


def warning_lines(stderr: str) -> list[str]:
    """The log lines a run printed about export (not the script's own output)."""
    return [
        line
        for line in stderr.splitlines()
        if "backend '" in line or "did not all arrive" in line or "Traceback" in line
    ]


def spooled_spans(spool_dir: Path) -> int:
    return sum(usage.spans for usage in spool_usage(spool_dir))


def refused_port() -> tuple[OtlpGrpcReceiver, int]:
    receiver = OtlpGrpcReceiver()
    return receiver, receiver.reserve_port()  # bound, not listening: refused


def test_cli_against_a_dead_port_exits_at_once_with_one_warning(
    tmp_path: Path, spool_dir: Path
) -> None:
    """Nothing listens on the collector's port: `aiorunner run` of a trivial script
    exits well before the export timeout, with the script's exit code and one warning
    that says the spans were spooled and where; the spool holds the run's 7 spans."""
    receiver, port = refused_port()
    try:
        done, elapsed = aiorunner(
            "run",
            str(script(tmp_path, code=3)),
            env=otlp_env(f"http://127.0.0.1:{port}"),
            cwd=tmp_path,
        )
    finally:
        receiver.stop()
    assert done.returncode == 3, done.stderr
    assert elapsed < BOUND
    (warning,) = warning_lines(done.stderr)
    assert "spooled to" in warning and str(spool_dir) in warning
    assert "7 spooled" in done.stderr  # the summary line's count, not another warning
    assert spooled_spans(spool_dir) == 7


def test_seed_quick_start_with_nothing_on_4317_returns_and_exits_promptly(
    tmp_path: Path, spool_dir: Path
) -> None:
    """The seed's quick start (OTEL_TRACES_EXPORTER=otlp, nothing on 4317): run_script()
    returns promptly, and the interpreter exits without a second wait at exit."""
    code = (
        "import time\n"
        "from aiorunner import ScriptRunner\n"
        f"result = ScriptRunner({str(script(tmp_path))!r}).run_script()\n"
        "print('EXPORT', result.export.describe(), flush=True)\n"
    )
    # Hold 127.0.0.1:4317 bound but not listening (connections are refused, and nothing
    # else can take the port meanwhile); only a port already in use skips, decided before
    # the run, so a run that fails to spool fails the test.
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        holder.bind(("127.0.0.1", 4317))
    except OSError as exc:
        holder.close()
        pytest.skip(f"127.0.0.1:4317 is in use on this machine: {exc}")
    try:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", code],
            env={
                **os.environ,
                "OTEL_TRACES_EXPORTER": "otlp",
                # The seed's endpoint, on the address held above.
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
            },
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        elapsed = time.monotonic() - started
    finally:
        holder.close()
    assert "7 spooled" in done.stdout, done.stdout + done.stderr
    assert done.returncode == 0, done.stderr
    assert elapsed < BOUND
    assert spooled_spans(spool_dir) == 7


def test_cli_against_a_hung_collector_exits_within_the_otlp_timeout(
    tmp_path: Path, spool_dir: Path
) -> None:
    """A collector that accepts and never answers, with OTEL_EXPORTER_OTLP_TIMEOUT=2000
    and hedging off (AIORUNNER_SPOOL_HEDGE=0, the behaviour before hedges): the batch is
    given up after 2 s (that timeout bounds the whole batch, retries included), the
    backend is then left alone (the run's last spans go straight to the spool), and the
    process exits with the script's code and one warning; no hedge file is made."""
    with HungSocket() as hung:
        done, elapsed = aiorunner(
            "run",
            str(script(tmp_path, code=5)),
            env=otlp_env(
                hung.endpoint,
                "http/protobuf",
                OTEL_EXPORTER_OTLP_TIMEOUT="2000",
                AIORUNNER_SPOOL_HEDGE="0",
            ),
            cwd=tmp_path,
        )
        assert hung.connections >= 1
    assert done.returncode == 5, done.stderr
    assert elapsed < BOUND
    (warning,) = warning_lines(done.stderr)
    assert "spooled to" in warning
    # The pipeline's deadline or the transport's own 2 s timeout, whichever fires first.
    assert "timed out after 2s" in warning or "no answer within 2 s" in warning, warning
    assert "OTEL_EXPORTER_OTLP_TIMEOUT" in warning
    assert spooled_spans(spool_dir) == 7
    assert not list(spool_dir.rglob("*-hedge.*"))


def span_ids(receiver: OtlpGrpcReceiver | OtlpHttpReceiver) -> Counter[str]:
    return Counter(span.span_id for span in receiver.spans)


def test_503_then_recovery_the_next_process_sends_the_spool_once(
    tmp_path: Path, spool_dir: Path
) -> None:
    """The collector answers 503 for the whole first run (spooled after its 1 s OTLP
    timeout), then recovers: the next process sends run 1's spans with its own, each
    span once, and empties the spool."""
    with OtlpHttpReceiver() as receiver:
        receiver.fail_next(1000, status=503)
        env = otlp_env(receiver.endpoint, "http/protobuf", OTEL_EXPORTER_OTLP_TIMEOUT="1000")
        first, _ = aiorunner("run", str(script(tmp_path, "one.py")), env=env, cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        assert spooled_spans(spool_dir) == 7
        assert not receiver.spans
        receiver.reset()
        second, _ = aiorunner("run", str(script(tmp_path, "two.py")), env=env, cwd=tmp_path)
        assert second.returncode == 0, second.stderr
        receiver.wait_for_spans_sync(14, timeout=10)
        ids = span_ids(receiver)
    assert len(ids) == 14 and set(ids.values()) == {1}
    assert spooled_spans(spool_dir) == 0


def test_collector_back_on_the_same_port_gets_run_ones_spans_once(
    tmp_path: Path, spool_dir: Path
) -> None:
    """Run 1 finds the port refusing connections; the collector then starts on that very
    port; run 2 (another process) delivers run 1's spooled spans and its own, nothing
    twice, and a third run sends nothing old again."""
    receiver, port = refused_port()
    try:
        env = otlp_env(f"http://127.0.0.1:{port}")
        first, _ = aiorunner("run", str(script(tmp_path, "one.py")), env=env, cwd=tmp_path)
        assert first.returncode == 0 and spooled_spans(spool_dir) == 7
        receiver.start()
        aiorunner("run", str(script(tmp_path, "two.py")), env=env, cwd=tmp_path)
        receiver.wait_for_spans_sync(14, timeout=10)
        aiorunner("run", str(script(tmp_path, "three.py")), env=env, cwd=tmp_path)
        receiver.wait_for_spans_sync(21, timeout=10)
        ids = span_ids(receiver)
    finally:
        receiver.stop()
    assert len(ids) == 21 and set(ids.values()) == {1}
    scripts = Counter(
        span.attributes.get("code.file.path", "").rsplit("/", 1)[-1]
        for span in receiver.spans
        if span.name == "ScriptRunner"
    )
    assert scripts == {"one.py": 1, "two.py": 1, "three.py": 1}
    assert spooled_spans(spool_dir) == 0


def test_two_processes_drain_one_spool_without_sending_a_line_twice(
    tmp_path: Path, spool_dir: Path
) -> None:
    """Twelve runs spooled into several segments (a small AIORUNNER_SPOOL_MAX_BYTES),
    then two `aiorunner traces push --spool` at once: every span arrives exactly once,
    and the spool is empty."""
    receiver, port = refused_port()
    env = otlp_env(f"http://127.0.0.1:{port}", AIORUNNER_SPOOL_MAX_BYTES="2MiB")
    scripts = [str(script(tmp_path, f"s{i}.py")) for i in range(12)]
    try:
        done, _ = aiorunner("run", "-j", "4", *scripts, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        spooled = spooled_spans(spool_dir)
        assert spooled >= 12 * 7  # the runs' spans, and the batch's own span(s)
        # Smaller segments so that both pushers find files to claim.
        for usage in spool_usage(spool_dir):
            _split(Path(usage.directory))
        receiver.start()
        pushers = [
            subprocess.Popen(
                [sys.executable, "-m", "aiorunner", "traces", "push", "--spool"],
                env={**os.environ, **env},
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=60) for p in pushers]
        assert [p.returncode for p in pushers] == [0, 0], outputs
        receiver.wait_for_spans_sync(spooled, timeout=10)
        ids = span_ids(receiver)
    finally:
        receiver.stop()
    assert sum(ids.values()) == len(ids) == spooled
    assert spooled_spans(spool_dir) == 0
    assert all("spans sent from" in out for out, _ in outputs)


def _split(directory: Path) -> None:
    """Cut the spool's active file into one sealed segment per line (as a spool with a
    smaller bound would have), oldest first."""
    active = directory / "traces.active.jsonl"
    lines = active.read_bytes().splitlines(keepends=True)
    for index, line in enumerate(lines):
        (directory / f"traces.{index:020d}-1-{index}.jsonl").write_bytes(line)
    active.unlink()


def test_a_full_spool_disk_is_counted_and_the_run_goes_on(tmp_path: Path, spool_dir: Path) -> None:
    """The spool cannot be written (a file size limit, RLIMIT_FSIZE: EFBIG, as a full
    disk's ENOSPC is handled): the run keeps its exit code, its spans are counted as
    dropped in RunResult.export, and the warning says why they were not spooled."""
    receiver, port = refused_port()
    try:
        done, elapsed = aiorunner(
            "run",
            "--json",
            str(script(tmp_path, code=4)),
            env=otlp_env(f"http://127.0.0.1:{port}"),
            cwd=tmp_path,
            fsize_limit=2048,
        )
    finally:
        receiver.stop()
    assert done.returncode == 4, done.stderr
    assert elapsed < BOUND
    result = json.loads(done.stdout[done.stdout.index("{") :])
    (otlp,) = result["export"]["backends"]
    assert (otlp["exported"], otlp["spooled"], otlp["dropped"]) == (0, 0, 7)
    assert "not spooled" in done.stderr and "cannot write the spool" in done.stderr
    assert spooled_spans(spool_dir) == 0


async def test_spool_at_its_bound_keeps_the_newest_and_counts_the_evicted(
    tmp_path: Path,
) -> None:
    """A small AIORUNNER_SPOOL_MAX_BYTES and a collector down for 20 traces: the oldest
    are evicted (counted), the spool stays within its bound, and once the collector is
    back on the same port, `push --spool` delivers exactly the newest ones."""
    import anyio

    from aiorunner import Session, TracingConfig
    from aiorunner._traces.push import push_spool

    receiver, port = refused_port()
    endpoint = f"http://127.0.0.1:{port}"
    config = TracingConfig(
        exporter_type="otlp",
        collector_endpoint=endpoint,
        spool_max_bytes=16 * 1024,
        schedule_delay=0.01,
        connect_budget=0.1,
    )
    try:
        session = await anyio.to_thread.run_sync(Session, config)
        tracer = session.tracer()
        traces = []
        for index in range(20):
            with tracer.start_as_current_span(f"trace-{index}", attributes={"pad": "x" * 2000}):
                pass
            traces.append(index)
            await session.flush()
        await session.aclose()
        stats = session.statistics().backends[0]
        directory = Path(stats.spool_dir or "")
        size = sum(p.stat().st_size for p in directory.iterdir() if p.name.startswith("traces"))
        assert size <= 16 * 1024
        assert stats.spool_evicted > 0
        assert stats.spooled == 20
        receiver.start()
        report = await push_spool(endpoint=endpoint, exporter="otlp")
        kept = 20 - stats.spool_evicted
        await receiver.wait_for_spans(kept, timeout=10)
    finally:
        receiver.stop()
    assert report.ok
    names = sorted(int(s.name.split("-")[1]) for s in receiver.spans)
    assert names == list(range(20 - kept, 20))
