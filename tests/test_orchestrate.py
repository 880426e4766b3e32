"""run_many and as_completed with real scripts: order, concurrency, fail-fast, retries,
dependencies, cancellation, and the batch trace read back from the jsonl file.

Ordering is forced with marker files the scripts wait for, never with sleeps: the tests
say what must happen before what, and the scripts enforce it."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import aiorunner
from aiorunner import (
    Attempt,
    ConfigError,
    Job,
    JobEvent,
    LocalExecutor,
    RunResult,
    ScriptRunner,
    as_completed,
    run_many,
)
from conftest import pid_alive

#: Waits for the files named by its arguments (at most 30 s), then prints its own name.
WAIT_FOR = """
import os, sys, time
deadline = time.monotonic() + 30
while not all(os.path.exists(path) for path in sys.argv[1:]):
    if time.monotonic() > deadline:
        sys.exit("marker never appeared")
    time.sleep(0.01)
print(os.path.basename(__file__))
"""

#: Creates the file named by argv[1].
TOUCH = """
import sys
open(sys.argv[1], "w").close()
"""

#: Appends "start NAME" and "end NAME" to the log argv[1]; with argv[2], first checks
#: that the listed markers exist (comma separated) and fails if one does not.
LOGGED = """
import os, sys
name = os.path.splitext(os.path.basename(__file__))[0]
def log(line):
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, (line + "\\n").encode())
    os.close(fd)
log("start " + name)
for needed in (sys.argv[2].split(",") if len(sys.argv) > 2 and sys.argv[2] else []):
    if not os.path.exists(needed):
        sys.exit("prerequisite output missing: " + needed)
open(os.path.join(os.path.dirname(sys.argv[1]), name + ".done"), "w").close()
log("end " + name)
"""

#: Writes its pid and its grandchild's pid to argv[1] (atomically), then sleeps.
SLEEPER = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
os.rename(tmp, sys.argv[1])
time.sleep(120)
"""


@pytest.fixture
def script(tmp_path: Path):
    """``script(name, body)``: write a script into tmp_path and return its path."""

    def make(name: str, body: str) -> str:
        path = tmp_path / name
        path.write_text(body.lstrip("\n"))
        return str(path)

    return make


async def wait_for_files(*paths: Path) -> None:
    """Wait (bounded) until every path exists."""
    with anyio.fail_after(30):
        while not all(p.exists() for p in paths):
            await anyio.sleep(0.02)


def pids_in(path: Path) -> list[int]:
    return [int(p) for p in path.read_text().split()]


async def test_results_in_input_order_as_completed_in_finish_order(script, tmp_path):
    """run_many returns results in input order; as_completed yields them as they finish.
    The first job waits for a file created once the second job's result was delivered,
    so it always finishes last."""
    marker = tmp_path / "second.done"
    first = Job(script("first.py", WAIT_FOR), [str(marker)], name="first")
    second = Job(script("second.py", "print('second')"), name="second")
    finished: list[str] = []

    def on_event(event: JobEvent) -> None:
        if event.kind == "finished":
            finished.append(event.name)
            if event.name == "second":
                marker.touch()

    results = await run_many([first, second], max_concurrency=2, on_event=on_event)
    assert finished == ["second", "first"]
    assert [r.name for r in results] == ["first", "second"]
    assert all(r.success for r in results), [r.error for r in results]
    assert results[0].stdout == "first.py\n"

    marker.unlink()
    seen = []
    async for result in as_completed([first, second], max_concurrency=2):
        seen.append(result.name)
        if result.name == "second":
            marker.touch()
    assert seen == ["second", "first"]


async def test_paths_and_runners_are_accepted_and_runners_left_unchanged(script):
    """Jobs may be paths or ScriptRunner objects; a runner given is copied, not changed,
    and duplicate scripts get unique names."""
    path = script("hello.py", "print('hello')")
    runner = ScriptRunner(path, ["x"])
    runner.tracing_attributes = {"team": "data"}
    results = await run_many([path, runner, Path(path)], max_concurrency=2)
    assert [r.success for r in results] == [True, True, True]
    assert [r.name for r in results] == [path, f"{path} #2", f"{path} #3"]
    assert results[1].command[-1] == "x"
    assert runner.tracing_attributes == {"team": "data"}
    assert runner.context is None


async def test_max_concurrency_is_respected(script, tmp_path):
    """No more than max_concurrency scripts run at once (replayed from the scripts' own
    start/end log), and every job runs."""
    log = tmp_path / "log.txt"
    body = LOGGED
    jobs = [Job(script(f"job{i}.py", body), [str(log)]) for i in range(6)]
    results = await run_many(jobs, max_concurrency=2)
    assert all(r.success for r in results), [r.error for r in results]
    running = peak = 0
    for line in log.read_text().splitlines():
        running += 1 if line.startswith("start") else -1
        peak = max(peak, running)
    assert peak <= 2
    assert log.read_text().count("end") == 6


async def test_next_job_is_prepared_while_a_script_runs_and_starts_after_it_exits(
    script, tmp_path, spans_of
):
    """max_concurrency bounds live scripts, not runs: with 1, the second job's script is
    read and checked (its extract_metadata span ends) while the first script still runs,
    and its process starts only after the first one exited (the scripts' own clocks),
    in input order."""
    body = (
        "import sys, time\n"
        "def log(word):\n"
        "    with open(sys.argv[1], 'a') as f:\n"
        "        f.write(f'{word} {sys.argv[2]} {time.time_ns()}\\n')\n"
        "log('start')\n"
        "time.sleep(float(sys.argv[3]))\n"
        "log('end')\n"
    )
    log = tmp_path / "clock.txt"
    path = script("timed.py", body)
    jobs = [Job(path, [str(log), "a", "0.5"], name="a"), Job(path, [str(log), "b", "0"], name="b")]
    results = await run_many(jobs, max_concurrency=1)
    assert all(r.success for r in results), [r.error for r in results]
    clock = {
        f"{word} {job}": int(ns) for word, job, ns in map(str.split, log.read_text().splitlines())
    }
    assert clock["start b"] > clock["end a"]  # never two scripts at once, a first
    spans = {s["name"]: s for s in spans_of(results[1].trace_id)}
    assert int(spans["extract_metadata"]["endTimeUnixNano"]) < clock["end a"]
    # The gap before its execute_script is explained on that span.
    assert spans["execute_script"]["attrs"]["aiorunner.slot_wait_seconds"] > 0


async def test_dependencies_run_after_their_prerequisites(script, tmp_path):
    """extract -> (transform_a, transform_b) -> load: each job starts only after its
    prerequisites ended (log order), and each finds their outputs (marker files)."""
    log = tmp_path / "log.txt"
    done = lambda name: str(tmp_path / f"{name}.done")
    jobs = [
        # listed in reverse on purpose: order comes from `after`, not from the list
        Job(
            script("load.py", LOGGED),
            [str(log), f"{done('transform_a')},{done('transform_b')}"],
            name="load",
            after=["transform_a", "transform_b"],
        ),
        Job(
            script("transform_a.py", LOGGED),
            [str(log), done("extract")],
            name="transform_a",
            after=["extract"],
        ),
        Job(
            script("transform_b.py", LOGGED),
            [str(log), done("extract")],
            name="transform_b",
            after="extract",
        ),
        Job(script("extract.py", LOGGED), [str(log)], name="extract"),
    ]
    results = await run_many(jobs, max_concurrency=4)
    assert all(r.success for r in results), [r.error for r in results]
    lines = log.read_text().splitlines()
    at = {line: i for i, line in enumerate(lines)}
    assert at["end extract"] < at["start transform_a"]
    assert at["end extract"] < at["start transform_b"]
    assert at["end transform_a"] < at["start load"]
    assert at["end transform_b"] < at["start load"]


async def test_failed_prerequisite_skips_dependants(script, tmp_path):
    """A failed job skips its dependants (and theirs) with a clear reason; they never
    run; an unrelated job still runs."""
    log = tmp_path / "log.txt"
    jobs = [
        Job(script("extract.py", "import sys; sys.exit(4)"), name="extract"),
        Job(script("transform.py", LOGGED), [str(log)], name="transform", after=["extract"]),
        Job(script("load.py", LOGGED), [str(log)], name="load", after=["transform"]),
        Job(script("other.py", LOGGED), [str(log)], name="other"),
    ]
    extract, transform, load, other = await run_many(jobs)
    assert extract.exit_code == 4 and not extract.skipped
    assert transform.skipped and not transform.success
    assert transform.error == "skipped: prerequisite 'extract' failed"
    assert transform.attempts == 0
    assert load.skipped
    assert load.error == (
        "skipped: prerequisite 'transform' was skipped (prerequisite 'extract' failed)"
    )
    assert other.success
    assert log.read_text().splitlines() == ["start other", "end other"]


async def test_dependency_cycle_is_a_config_error_before_anything_runs(script, tmp_path):
    """A cycle raises ConfigError naming it, and no job ran."""
    log = tmp_path / "log.txt"
    body = LOGGED
    jobs = [
        Job(script("a.py", body), [str(log)], name="a", after=["c"]),
        Job(script("b.py", body), [str(log)], name="b", after=["a"]),
        Job(script("c.py", body), [str(log)], name="c", after=["b"]),
        Job(script("d.py", body), [str(log)], name="d"),
    ]
    with pytest.raises(ConfigError, match=r"cycle: a -> b -> c -> a"):
        await run_many(jobs)
    with pytest.raises(ConfigError, match="cycle"):
        as_completed(jobs)
    assert not log.exists()


async def test_retries_counted_until_success(script, tmp_path, spans_of):
    """A script that fails twice then succeeds: three attempts, success, and each attempt
    is its own trace whose root span carries aiorunner.attempt."""
    counter = tmp_path / "count"
    flaky = script(
        "flaky.py",
        """
import sys
path = sys.argv[1]
try:
    n = int(open(path).read())
except FileNotFoundError:
    n = 0
open(path, "w").write(str(n + 1))
sys.exit(0 if n + 1 >= 3 else 1)
""",
    )
    events: list[JobEvent] = []
    [result] = await run_many(
        [Job(flaky, [str(counter)], name="flaky")],
        retries=5,
        retry_backoff=0.01,
        on_event=lambda e: events.append(e) if e.kind != "sample" else None,
    )
    assert result.success, result.error
    assert result.attempts == 3
    assert counter.read_text() == "3"
    assert [(e.kind, e.attempt) for e in events] == [
        ("started", 1),
        ("retrying", 1),
        ("started", 2),
        ("retrying", 2),
        ("started", 3),
        ("finished", 3),
    ]
    assert events[1].result is not None and events[1].result.exit_code == 1
    assert events[1].delay == pytest.approx(0.01) and events[3].delay == pytest.approx(0.02)
    # the last attempt's trace says it was the third
    root = next(s for s in spans_of(result.trace_id) if s["name"] == "ScriptRunner")
    assert root["attrs"]["aiorunner.attempt"] == 3
    assert root["attrs"]["aiorunner.job"] == "flaky"


async def test_retries_exhausted_and_never_started_not_retried(script, tmp_path):
    """Retries stop after `retries` extra attempts (a Job's own setting wins); a script
    that cannot start is not retried."""
    failing = script("fail.py", "import sys; sys.exit(2)")
    results = await run_many(
        [failing, Job(failing, retries=0), str(tmp_path / "missing.py")],
        retries=2,
        retry_backoff=0,
    )
    assert [r.attempts for r in results] == [3, 1, 1]
    assert not any(r.success for r in results)
    assert "script not found" in (results[2].error or "")


async def test_fail_fast_cancels_the_rest_and_kills_their_process_groups(script, tmp_path):
    """fail_fast: the first failure cancels the running jobs (their processes and
    grandchildren are gone) and the jobs not started yet; their results say cancelled."""
    pidfiles = [tmp_path / "s1.pid", tmp_path / "s2.pid"]
    sleeper = script("sleeper.py", SLEEPER)
    failer = script(
        "failer.py",
        WAIT_FOR.replace("print(os.path.basename(__file__))", "sys.exit(5)"),
    )
    # failer waits until both sleepers wrote their pids, so both are running
    jobs = [
        Job(sleeper, [str(pidfiles[0])], name="s1"),
        Job(sleeper, [str(pidfiles[1])], name="s2"),
        Job(failer, [str(p) for p in pidfiles], name="failer"),
        Job(sleeper, [str(tmp_path / "never.pid")], name="queued"),
    ]
    results = await run_many(jobs, max_concurrency=3, fail_fast=True)
    s1, s2, failer_result, queued = results
    assert failer_result.exit_code == 5 and not failer_result.cancelled
    for result in (s1, s2):
        assert result.cancelled and not result.success
        assert result.attempts == 1
        assert "'failer' failed and fail_fast is on" in (result.error or "")
    assert queued.cancelled and queued.attempts == 0
    assert "before it started" in (queued.error or "")
    assert not (tmp_path / "never.pid").exists()
    for pidfile in pidfiles:
        for pid in pids_in(pidfile):
            assert not pid_alive(pid), f"pid {pid} survived fail_fast"


async def test_cancelling_the_caller_kills_every_child(script, tmp_path):
    """Cancelling the task that awaits run_many terminates every running script and its
    grandchildren before the cancellation completes."""
    sleeper = script("sleeper.py", SLEEPER)
    pidfiles = [tmp_path / f"{i}.pid" for i in range(2)]
    jobs = [Job(sleeper, [str(p)]) for p in pidfiles]
    finished = []
    async with anyio.create_task_group() as tg:

        async def batch() -> None:
            finished.append(await run_many(jobs, max_concurrency=2))

        tg.start_soon(batch)
        await wait_for_files(*pidfiles)
        tg.cancel_scope.cancel()
    assert finished == []
    for pidfile in pidfiles:
        for pid in pids_in(pidfile):
            assert not pid_alive(pid)


async def test_closing_as_completed_early_stops_the_rest(script, tmp_path):
    """Leaving an `async with as_completed(...)` block early stops the jobs still
    running (their processes are gone)."""
    sleeper = script("sleeper.py", SLEEPER)
    quick = script("quick.py", WAIT_FOR)
    pidfile = tmp_path / "s.pid"
    async with as_completed(
        [Job(sleeper, [str(pidfile)]), Job(quick, [str(pidfile)], name="quick")],
        max_concurrency=2,
    ) as results:
        async for result in results:
            assert result.name == "quick"
            break
    for pid in pids_in(pidfile):
        assert not pid_alive(pid)


async def test_unclosed_as_completed_still_stops_the_rest(script, tmp_path):
    """An as_completed() left with `break` and never closed: once garbage collected, the
    jobs still running are stopped (their processes gone) and a ResourceWarning says to
    use `async with`."""
    import gc

    sleeper = script("sleeper.py", SLEEPER)
    quick = script("quick.py", WAIT_FOR)
    pidfile = tmp_path / "s.pid"
    with pytest.warns(ResourceWarning, match="left without being closed"):  # noqa: PT031
        async for result in as_completed(
            [Job(sleeper, [str(pidfile)]), Job(quick, [str(pidfile)], name="quick")],
            max_concurrency=2,
        ):
            assert result.name == "quick"
            break
        gc.collect()
        pids = pids_in(pidfile)
        with anyio.fail_after(30):
            while any(pid_alive(pid) for pid in pids):
                await anyio.sleep(0.05)


async def test_batch_trace_is_one_tree(script, traces_file, spans_in):
    """trace="batch": one trace whose root span run_many is the parent of every run's
    ScriptRunner span; skipped jobs are recorded on the root."""
    ok = script("ok.py", "print('ok')")
    bad = script("bad.py", "import sys; sys.exit(1)")
    jobs = [
        Job(ok, name="a"),
        Job(ok, name="b"),
        Job(bad, name="c"),
        Job(ok, name="d", after=["c"]),
    ]
    results = await run_many(jobs, trace="batch", max_concurrency=2)
    trace_ids = {r.trace_id for r in results}
    assert len(trace_ids) == 1
    [trace_id] = trace_ids
    spans = [s for s in spans_in(traces_file) if s["traceId"] == trace_id]
    [root] = [s for s in spans if s["name"] == "run_many"]
    assert not root.get("parentSpanId")
    assert root["attrs"]["aiorunner.jobs"] == 4
    assert root["attrs"]["aiorunner.succeeded"] == 2
    assert root["attrs"]["aiorunner.failed"] == 1
    assert root["attrs"]["aiorunner.skipped"] == 1
    assert root["status"]["code"] == 2  # ERROR: a job failed
    skipped = [e for e in root.get("events", []) if e["name"] == "job.skipped"]
    assert len(skipped) == 1
    runs = [s for s in spans if s["name"] == "ScriptRunner"]
    assert sorted(s["attrs"]["aiorunner.job"] for s in runs) == ["a", "b", "c"]
    assert all(s["parentSpanId"] == root["spanId"] for s in runs)
    assert {s["spanId"] for s in runs} == {r.span_id for r in results[:3]}
    # each run's report is about its own spans, not the other runs' still in flight
    assert all(r.export is not None and r.export.ok for r in results[:3])


async def test_per_run_traces_are_separate(script):
    """trace="per-run" (default): every run has its own trace."""
    ok = script("ok.py", "print('ok')")
    results = await run_many([ok, ok, ok])
    assert len({r.trace_id for r in results}) == 3


class RecordingExecutor:
    """An executor of our own at the seam: records each attempt, runs it locally."""

    def __init__(self) -> None:
        self.attempts: list[Attempt] = []
        self.local = LocalExecutor(runner_options={"validate_dependencies": False})

    async def run(self, attempt: Attempt) -> RunResult:
        self.attempts.append(attempt)
        return await self.local.run(attempt)


class OwnRunExecutor(LocalExecutor):
    """A LocalExecutor subclass whose run() builds its ScriptRunner itself (no
    runner_for(), so it never takes attempt.slot)."""

    async def run(self, attempt: Attempt) -> RunResult:
        job = attempt.job
        assert isinstance(job, Job)
        return await ScriptRunner(job.script, job.args, validate_dependencies=False).run()


async def test_local_executor_subclass_with_its_own_run_keeps_max_concurrency(script, tmp_path):
    """Such a subclass gets no process slots (nothing would take them), so the
    orchestrator bounds its attempts at max_concurrency: with 1, no two scripts ever
    overlap (the scripts' own start/end log). Before, it inherited the slots' doubled
    bound and two ran at once. A subclass that declares the slots, or keeps run(), has
    them."""
    log = tmp_path / "log.txt"
    body = (
        "import os, sys, time\n"
        "def log(line):\n"
        "    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
        "    os.write(fd, (line + '\\n').encode())\n"
        "    os.close(fd)\n"
        "log('start')\n"
        "time.sleep(0.3)\n"
        "log('end')\n"
    )
    jobs = [Job(script(f"slow{i}.py", body), [str(log)]) for i in range(4)]
    results = await run_many(jobs, max_concurrency=1, executor=OwnRunExecutor())
    assert all(r.success for r in results), [r.error for r in results]
    running = peak = 0
    for line in log.read_text().splitlines():
        running += 1 if line == "start" else -1
        peak = max(peak, running)
    assert peak == 1, log.read_text()
    assert OwnRunExecutor.uses_process_slots is False

    class Declared(OwnRunExecutor):
        uses_process_slots = True

    class KeepsRun(LocalExecutor):
        pass

    assert Declared.uses_process_slots is True
    assert KeepsRun.uses_process_slots is True


async def test_executor_seam_gets_plain_jobs_and_the_batch_context(script):
    """A custom executor receives each attempt as plain data (a picklable Job) with the
    batch's trace context as W3C headers, and its results are the batch's results."""
    import pickle

    ok = script("ok.py", "print('ok')")
    executor = RecordingExecutor()
    assert isinstance(executor, aiorunner.Executor)
    results = await run_many(
        [Job(ok, name="one"), Job(ok, name="two", after=["one"])], trace="batch", executor=executor
    )
    assert [r.success for r in results] == [True, True]
    assert [a.name for a in executor.attempts] == ["one", "two"]
    attempt = executor.attempts[0]
    assert pickle.loads(pickle.dumps(attempt.job)) == attempt.job
    carrier = attempt.carrier()
    assert carrier["traceparent"].split("-")[1] == results[0].trace_id


async def test_live_samples_reach_on_event(script, tmp_path):
    """on_event receives live samples of a running job (for progress displays)."""
    marker = tmp_path / "go"
    slow = script("slow.py", WAIT_FOR)
    samples: list[JobEvent] = []

    def on_event(event: JobEvent) -> None:
        if event.kind == "sample":
            samples.append(event)
            if event.sample is not None and event.sample.rss_bytes > 0:
                marker.touch()  # the job ends once a reading of it was seen

    executor = LocalExecutor(runner_options={"monitor_interval": 0.05})
    [result] = await run_many(
        [Job(slow, [str(marker)], name="slow")], executor=executor, on_event=on_event
    )
    assert result.success
    assert samples and samples[0].name == "slow"
    assert any(e.sample is not None and e.sample.rss_bytes > 0 for e in samples)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_concurrency": 0}, "max_concurrency must be an integer >= 1"),
        ({"retries": -1}, "retries must be an integer >= 0"),
        ({"retry_backoff": -1}, "retry_backoff"),
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"trace": "tree"}, "trace must be one of per-run, batch"),
        ({"executor": object()}, "executor must have an async run"),
    ],
)
async def test_bad_options_are_config_errors(script, kwargs, message):
    """Bad options raise ConfigError naming the option and the value."""
    with pytest.raises(ConfigError, match=message):
        await run_many([script("ok.py", "pass")], **kwargs)


async def test_bad_jobs_are_config_errors(script):
    """A job that is not a path, Job or ScriptRunner, or a bare path instead of a list,
    raises ConfigError saying what is accepted."""
    with pytest.raises(ConfigError, match="job #2 is 42"):
        await run_many([script("ok.py", "pass"), 42])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="wrap it"):
        await run_many("ok.py")


async def test_timeout_applies_per_attempt(script):
    """run_many's timeout is each attempt's (a Job's own wins)."""
    slow = script("slow.py", "import time; time.sleep(30)")
    (quick_timeout,) = await run_many([Job(slow, timeout=0.3)], timeout=60)
    assert quick_timeout.timed_out
    (batch_timeout,) = await run_many([slow], timeout=0.3)
    assert batch_timeout.timed_out and batch_timeout.attempts == 1


def test_public_names_exported():
    """The orchestration API is importable from aiorunner."""
    for name in (
        "run_many",
        "as_completed",
        "Job",
        "JobEvent",
        "Executor",
        "LocalExecutor",
        "Attempt",
        "load_jobs_file",
    ):
        assert name in aiorunner.__all__
        assert getattr(aiorunner, name) is not None
