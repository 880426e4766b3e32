"""
``DaskExecutor`` (issue 20) on one real ``LocalCluster(processes=True)`` shared by every
test of this file: two plain workers and a third with the resource ``GPU=1``, each one
thread, in worker processes of their own (nannies), like a real cluster's.

What is checked is what arrived: spans in the client's jsonl file, pids read with psutil,
a side-effect counter file the scripts write, the errors' text.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle
import psutil
import pytest

pytest.importorskip("distributed")

from aiorunner import Job, run_many
from aiorunner.dask import ClusterError, DaskExecutor

from .conftest import attr_value, pid_alive, read_spans

pytestmark = pytest.mark.filterwarnings(
    # distributed's own resource warnings when its workers restart (a killed worker).
    "ignore::ResourceWarning",
    "ignore:Port .* is already in use:UserWarning",
)


@pytest.fixture(scope="session")
def cluster() -> Any:
    """The one cluster: started once (its own loop thread), closed at the end."""
    from distributed import Client, LocalCluster

    local = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        worker_dashboard_address=None,
    )
    try:
        # A third worker with a resource the others lack (SpecCluster: a spec, then scale).
        spec = dict(local.new_spec)
        spec["options"] = {**spec["options"], "resources": {"GPU": 1}}
        local.worker_spec["gpu"] = spec
        local.scale(3)
        with Client(local) as client:
            client.wait_for_workers(3, timeout=60)
        yield local
    finally:
        local.close()


@pytest.fixture
def address(cluster: Any) -> str:
    return str(cluster.scheduler_address)


def _workers(cluster: Any) -> dict[str, dict[str, Any]]:
    from distributed import Client

    with Client(cluster) as client:
        return dict(client.scheduler_info()["workers"])


def _gpu_worker(cluster: Any) -> str:
    return next(a for a, w in _workers(cluster).items() if w["resources"].get("GPU"))


async def test_etl_dag_is_one_trace_in_the_clients_jsonl(
    address: str, make_script: Any, traces_file: Path
):
    """extract -> transform -> load on the cluster with trace="batch": every span (the
    batch's, the client's dask.task spans, each worker's ScriptRunner and phases) lands
    in this process's jsonl file in one trace; the three scripts ran in three distinct
    processes on the workers, none of them this process."""
    script = make_script("import os\nprint('pid', os.getpid())\n", name="step.py")
    jobs = [
        Job(str(script), name="extract"),
        Job(str(script), name="transform", after=["extract"]),
        Job(str(script), name="load", after=["transform"]),
    ]
    async with DaskExecutor(address) as executor:
        results = await run_many(jobs, executor=executor, trace="batch")
    assert [r.success for r in results] == [True, True, True], [r.error for r in results]
    assert all(r.worker and r.worker.startswith("tcp://") for r in results)
    spans = read_spans(traces_file)
    trace_ids = {s["traceId"] for s in spans}
    assert trace_ids == {results[0].trace_id}
    by_id = {s["spanId"]: s for s in spans}
    names = sorted(s["name"] for s in spans)
    assert names.count("ScriptRunner") == 3
    assert names.count("dask.task") == 3
    assert names.count("run_many") == 1
    root = next(s for s in spans if s["name"] == "run_many")
    for span in spans:
        if span["name"] == "dask.task":
            assert span["parentSpanId"] == root["spanId"]
        if span["name"] == "ScriptRunner":
            assert by_id[span["parentSpanId"]]["name"] == "dask.task"
    pids = {
        attr_value(a["value"])
        for s in spans
        if s["name"] == "execute_script"
        for a in s["attributes"]
        if a["key"] == "process.pid"
    }
    assert pids == {r.pid for r in results}
    assert len(pids) == 3 and os.getpid() not in pids
    assert {r.stdout.strip() for r in results} == {f"pid {p}" for p in pids}


async def test_fail_fast_kills_the_remote_script(address: str, make_script: Any, tmp_path: Path):
    """fail_fast: the first failure stops a remote `sleep 60` on its worker: its result
    says cancelled and its process is gone (psutil) within 2 s of run_many returning."""
    pidfile = tmp_path / "sleep.pid"
    sleeper = make_script(
        f"""
        import os, time
        with open({str(pidfile)!r} + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename({str(pidfile)!r} + ".tmp", {str(pidfile)!r})
        time.sleep(60)
        """,
        name="sleeper.py",
    )
    failer = make_script(
        f"""
        import os, sys, time
        while not os.path.exists({str(pidfile)!r}):
            time.sleep(0.02)
        sys.exit(3)
        """,
        name="failer.py",
    )
    async with DaskExecutor(address) as executor:
        results = await run_many(
            [Job(str(sleeper), name="sleep"), Job(str(failer), name="fail")],
            executor=executor,
            fail_fast=True,
            max_concurrency=2,
        )
    sleep, fail = results
    assert fail.exit_code == 3 and not fail.success
    assert sleep.cancelled, sleep
    pid = int(pidfile.read_text())
    try:
        psutil.Process(pid).wait(timeout=2)  # raises TimeoutExpired if still running
    except psutil.NoSuchProcess:
        pass
    assert not pid_alive(pid)


async def test_cancelling_run_many_stops_the_remote_script(
    address: str, make_script: Any, tmp_path: Path
):
    """Cancelling the caller (as Ctrl-C does) reaches the script on its worker: the
    stop event makes the task terminate the script's process group."""
    pidfile = tmp_path / "sleep.pid"
    sleeper = make_script(
        f"""
        import os, time
        open({str(pidfile)!r}, "w").write(str(os.getpid()))
        time.sleep(60)
        """,
    )
    async with DaskExecutor(address) as executor:
        task = asyncio.ensure_future(run_many([Job(str(sleeper))], executor=executor))
        while not pidfile.exists() or not pidfile.read_text():
            await asyncio.sleep(0.02)
        pid = int(pidfile.read_text())
        assert pid_alive(pid)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not pid_alive(pid)


async def test_resources_choose_the_worker(cluster: Any, address: str, make_script: Any):
    """A job asking for {"GPU": 1} runs on the one worker that has it (a job's own
    resources and the executor's are both passed to Dask)."""
    gpu = _gpu_worker(cluster)
    script = make_script("print('ok')\n")
    jobs = [Job(str(script), name=f"gpu{i}", resources={"GPU": 1}) for i in range(3)]
    async with DaskExecutor(address) as executor:
        results = await run_many(jobs, executor=executor, max_concurrency=3)
    assert [r.worker for r in results] == [gpu] * 3, [r.error for r in results]
    async with DaskExecutor(address, resources={"GPU": 1}) as executor:
        (result,) = await run_many([Job(str(script))], executor=executor)
    assert result.success and result.worker == gpu


async def test_in_script_spans_come_home(address: str, make_script: Any, traces_file: Path):
    """A span the script makes with the OpenTelemetry API on the worker (the in-script
    bootstrap and channel work there too) lands in the client's file, child of the
    worker's execute_script span."""
    script = make_script(
        """
        from opentelemetry import trace
        with trace.get_tracer("etl").start_as_current_span("transform rows"):
            pass
        """
    )
    async with DaskExecutor(address) as executor:
        (result,) = await run_many([Job(str(script))], executor=executor)
    assert result.success, result.error
    spans = read_spans(traces_file)
    by_id = {s["spanId"]: s for s in spans}
    (inner,) = [s for s in spans if s["name"] == "transform rows"]
    assert by_id[inner["parentSpanId"]]["name"] == "execute_script"
    assert inner["traceId"] == result.trace_id


def _log_records(path: Path) -> list[dict[str, Any]]:
    """Every log record of a logs.jsonl file: its JSON object plus ``attrs``, ``body``."""
    records = []
    for line in path.read_text().splitlines() if path.exists() else ():
        for resource_logs in json.loads(line)["resourceLogs"]:
            for scope_logs in resource_logs["scopeLogs"]:
                for record in scope_logs["logRecords"]:
                    attrs = {a["key"]: attr_value(a["value"]) for a in record.get("attributes", [])}
                    body = record["body"]["stringValue"]
                    records.append({**record, "attrs": attrs, "body": body})
    return records


def _metric_points(path: Path) -> list[dict[str, Any]]:
    """Every data point of a metrics.jsonl file: its JSON object plus ``name``,
    ``attrs`` and ``resource`` (dicts of attributes)."""
    points = []
    for line in path.read_text().splitlines() if path.exists() else ():
        for resource_metrics in json.loads(line)["resourceMetrics"]:
            resource = {
                a["key"]: attr_value(a["value"])
                for a in resource_metrics.get("resource", {}).get("attributes", [])
            }
            for scope_metrics in resource_metrics["scopeMetrics"]:
                for metric in scope_metrics["metrics"]:
                    for kind in ("sum", "gauge", "histogram"):
                        for point in metric.get(kind, {}).get("dataPoints", []):
                            attrs = {
                                a["key"]: attr_value(a["value"])
                                for a in point.get("attributes", [])
                            }
                            points.append(
                                {
                                    **point,
                                    "name": metric["name"],
                                    "attrs": attrs,
                                    "resource": resource,
                                }
                            )
    return points


def _watch_aiorunner_warnings() -> None:
    """On a worker: keep every WARNING the aiorunner loggers say from now on."""
    import logging

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.set_name("test-dask-keep")
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    logging.getLogger("aiorunner").addHandler(Keep())


def _aiorunner_warnings() -> dict[str, Any]:
    """On a worker: the warnings kept since ``_watch_aiorunner_warnings`` (the handler
    removed), and the backends this process ever said take no logs / no metrics."""
    import logging

    from aiorunner._export import session

    logger = logging.getLogger("aiorunner")
    kept = [h for h in logger.handlers if h.get_name() == "test-dask-keep"]
    for handler in kept:
        logger.removeHandler(handler)
    return {
        "messages": [m for h in kept for m in getattr(h, "messages", [])],
        "said": sorted(session._NO_LOGS_SAID | session._NO_METRICS_SAID),
    }


async def test_logs_and_metrics_come_home(
    address: str, make_script: Any, traces_file: Path, caplog: pytest.LogCaptureFixture
):
    """export="client": a run's output lines (stdout, stderr, its traceback), made into
    log records on a worker, land in the client's logs.jsonl with their severities, tied
    to the worker's execute_script span of the run; its process metrics land in
    metrics.jsonl with its run id, and the duration histogram (recorded once, by the
    client: one point, count 1) has an exemplar naming the run's trace and root span;
    RunResult.export counts the records and points as a local run's does; neither the
    client nor any worker says a backend "takes no" logs or metrics."""
    from distributed import Client

    script = make_script(
        """
        import sys
        print("out line one", flush=True)
        print("err line two", file=sys.stderr, flush=True)
        raise RuntimeError("boom three")
        """,
        name="noisy.py",
    )
    async with Client(address, asynchronous=True) as client:
        await client.run(_watch_aiorunner_warnings)
        try:
            async with DaskExecutor(client) as executor:
                (result,) = await run_many([Job(str(script), name="noisy")], executor=executor)
        finally:
            on_workers = await client.run(_aiorunner_warnings)
    assert result.exit_code == 1 and result.worker, result.error
    run_trace = result.trace_id
    spans = read_spans(traces_file)
    (execute,) = [s for s in spans if s["name"] == "execute_script"]
    assert execute["traceId"] == run_trace

    records = _log_records(traces_file.parent / "logs.jsonl")
    assert [(r["attrs"]["log.iostream"], r["severityNumber"]) for r in records] == [
        ("stdout", 9),
        ("stderr", 9),
        ("stderr", 17),
    ], records
    assert records[0]["body"] == "out line one"
    assert records[1]["body"] == "err line two"
    assert records[2]["body"].startswith("Traceback (most recent call last):")
    assert records[2]["body"].endswith("RuntimeError: boom three")
    assert {(r["traceId"], r["spanId"]) for r in records} == {(run_trace, execute["spanId"])}
    assert {r["attrs"]["aiorunner.job"] for r in records} == {"noisy"}

    points = _metric_points(traces_file.parent / "metrics.jsonl")
    process = [p for p in points if p["name"].startswith("process.")]
    assert {"process.cpu.time", "process.uptime"} <= {p["name"] for p in process}
    assert {p["attrs"]["aiorunner.run.id"] for p in process} == {run_trace}
    assert {p["resource"].get("host.name") for p in process} == {execute["resource"]["host.name"]}
    (duration,) = [p for p in points if p["name"] == "aiorunner.run.duration"]
    assert duration["attrs"] == {"aiorunner.job.name": "noisy", "aiorunner.run.outcome": "failed"}
    assert duration["count"] == "1"
    ((exemplar),) = duration["exemplars"]
    assert (exemplar["traceId"], exemplar["spanId"]) == (run_trace, result.span_id)
    (runs,) = [p for p in points if p["name"] == "aiorunner.runs"]
    assert runs["asInt"] == "1"

    report = result.export
    assert report is not None and report.ok, report
    assert report.log_records == 3
    assert [(b.name, b.exported) for b in report.logs] == [("jsonl", 3)]
    assert [(b.name, b.exported) for b in report.metrics] == [("jsonl", len(points))]
    assert not [r.getMessage() for r in caplog.records if "takes no" in r.getMessage()]
    assert len(on_workers) == 3
    for worker, seen in on_workers.items():
        assert not [m for m in seen["messages"] if "takes no" in m], (worker, seen)
        assert "dask-client" not in seen["said"], (worker, seen)


async def test_many_log_records_wait_for_room_in_the_clients_pipeline(
    address: str, make_script: Any, traces_file: Path
):
    """A run's 1,000 output lines come home as one line of bytes (decoded off the event
    loop) into a client logs pipeline whose queue holds 64: the client hands them over as
    the queue makes room, so every record lands in logs.jsonl, in order, and the run's
    report counts them all, none dropped."""
    from aiorunner import TracingConfig

    script = make_script(
        "import sys\nsys.stdout.write(''.join(f'line {i:05d} ' + 'x' * 80 + '\\n' "
        "for i in range(1000)))\n"
    )
    config = TracingConfig(logs_max_queue_size=64, logs_batch_size=64)
    async with DaskExecutor(address) as executor:
        (result,) = await run_many([Job(str(script))], executor=executor, config=config)
    assert result.success, result.error
    records = _log_records(traces_file.parent / "logs.jsonl")
    assert [r["body"][:10] for r in records] == [f"line {i:05d}" for i in range(1000)]
    report = result.export
    assert report is not None and report.ok, report
    assert (report.log_records, report.logs_dropped) == (1000, 0)
    assert [(b.name, b.exported, b.dropped) for b in report.logs] == [("jsonl", 1000, 0)]


def test_job_round_trips_through_cloudpickle():
    """A Job (what a task carries to a worker) survives cloudpickle unchanged, its
    resources, env and dependencies included."""
    job = Job(
        "etl.py",
        ["--day", "2024-10-23"],
        name="etl",
        env={"DAY": "1"},
        after=["extract"],
        timeout=5,
        resources={"GPU": 1},
    )
    copy = cloudpickle.loads(cloudpickle.dumps(job))
    assert copy == job
    assert copy.resources == {"GPU": 1.0} and copy.env == {"DAY": "1"}


def test_job_resources_are_checked():
    """A resource amount that is not a positive number is a clear error."""
    from aiorunner import ConfigError

    with pytest.raises(ConfigError, match="resources must map resource names"):
        Job("a.py", resources={"GPU": 0})
    with pytest.raises(ConfigError, match="resources must map resource names"):
        Job("a.py", resources={"GPU": "one"})


async def test_ship_script_runs_the_scripts_bytes_from_a_temp_dir(
    address: str, make_script: Any, tmp_path: Path
):
    """ship_script=True sends the file's bytes: the worker runs its own copy from a
    temporary directory (removed afterwards); the result names the original path."""
    script = make_script("print(__file__)\n", name="shipped.py")
    async with DaskExecutor(address, ship_script=True) as executor:
        (result,) = await run_many([Job(str(script))], executor=executor)
    assert result.success, result.error
    ran = Path(result.stdout.strip())
    assert ran.name == "shipped.py" and ran.parent != tmp_path
    assert ran.parent.name.startswith("aiorunner-")
    assert not ran.parent.exists()
    assert result.script == str(script)


async def test_missing_script_on_the_worker_names_the_worker(address: str, tmp_path: Path):
    """A script path that does not exist on the worker is the usual "not found" result,
    not retried, and says which worker looked for it."""
    missing = tmp_path / "nowhere" / "gone.py"
    async with DaskExecutor(address) as executor:
        (result,) = await run_many([Job(str(missing))], executor=executor, retries=2)
    assert not result.success and result.pid is None and result.attempts == 1
    assert "not found" in (result.error or "")
    assert f"on Dask worker {result.worker}" in (result.error or "")


async def test_unreachable_scheduler_is_a_clear_error_within_seconds(tmp_path: Path):
    """An address where no scheduler listens: ClusterError naming the address, after the
    connect timeout (a few seconds), not a hang."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    started = time.monotonic()
    with pytest.raises(ClusterError, match=f"cannot reach the Dask scheduler at {address}"):
        await run_many(
            [Job("a.py"), Job("b.py")], executor=DaskExecutor(address, connect_timeout=1.0)
        )
    assert time.monotonic() - started < 5  # loose bound (issue 20: within 5 s)


def test_missing_distributed_is_a_config_error_naming_the_extra():
    """Without distributed installed, making a DaskExecutor is a ConfigError naming
    pip install 'aiorunner[dask]'; importing aiorunner.dask alone does not need it."""
    code = (
        "import sys; sys.modules['distributed'] = None\n"
        "import aiorunner.dask\n"
        "from aiorunner import ConfigError\n"
        "try:\n"
        "    aiorunner.dask.DaskExecutor('tcp://127.0.0.1:8786')\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'aiorunner[dask]'" in out.stdout


def test_import_costs_no_distributed():
    """`import aiorunner.dask` does not import distributed (only making an executor does)."""
    code = "import sys, aiorunner.dask; print('distributed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_a_killed_worker_leaves_no_orphan_and_the_script_ran_once(
    cluster: Any, address: str, make_script: Any, tmp_path: Path, traces_file: Path
):
    """SIGKILL of the worker process running a script: the script dies with it (no
    orphan), Dask's re-run of the task elsewhere does not run it again (the counter file
    says 1), the result says the worker was lost, naming it, and the client's dask.task
    span of the attempt is in the trace file with ERROR status (the worker's own spans
    died with it)."""
    counter = tmp_path / "runs"
    pidfile = tmp_path / "script.pid"
    script = make_script(
        f"""
        import os, time
        with open({str(counter)!r}, "a") as f:
            f.write("run\\n")
        open({str(pidfile)!r}, "w").write(str(os.getpid()))
        time.sleep(60)
        """,
    )
    async with DaskExecutor(address) as executor:
        task = asyncio.ensure_future(run_many([Job(str(script), name="victim")], executor=executor))
        while not pidfile.exists() or not pidfile.read_text():
            await asyncio.sleep(0.02)
        pid = int(pidfile.read_text())
        worker_pid = psutil.Process(pid).ppid()
        assert worker_pid != os.getpid()
        os.kill(worker_pid, signal.SIGKILL)
        (result,) = await asyncio.wait_for(task, 60)
    assert not result.success
    assert (result.error or "").startswith("worker lost: Dask worker tcp://"), result.error
    assert result.pid == pid
    assert counter.read_text() == "run\n"
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not pid_alive(pid)
    (task_span,) = [s for s in read_spans(traces_file) if s["name"] == "dask.task"]
    assert task_span["status"]["code"] == 2
    attributes = {a["key"]: attr_value(a["value"]) for a in task_span["attributes"]}
    assert attributes["error.type"] == "worker_lost"
    assert task_span["traceId"] == result.trace_id
    from distributed import Client

    async with Client(address, asynchronous=True) as client:
        await client.wait_for_workers(3, timeout=60)  # the nanny restarted it


async def test_a_stop_before_the_task_starts_keeps_its_script_from_running(
    address: str, make_script: Any, tmp_path: Path
):
    """An attempt cancelled while its task still waits (behind another on the one GPU
    worker) has no known worker: the stop goes to every worker, which remembers it, and
    the task returns at once when it begins there: its script never runs (its marker
    file stays absent), and the running one is stopped (psutil)."""
    from aiorunner._orchestrate.executor import Attempt

    pidfile = tmp_path / "busy.pid"
    marker = tmp_path / "late-ran"
    busy = make_script(
        f"""
        import os, time
        open({str(pidfile)!r}, "w").write(str(os.getpid()))
        time.sleep(60)
        """,
        name="busy.py",
    )
    late = make_script(f"open({str(marker)!r}, 'w').write('ran')\n", name="late.py")
    gpu = {"GPU": 1}
    async with DaskExecutor(address) as executor:
        first = asyncio.ensure_future(
            executor.run(Attempt(Job(str(busy), resources=gpu), name="busy"))
        )
        while not pidfile.exists() or not pidfile.read_text():
            await asyncio.sleep(0.02)
        pid = int(pidfile.read_text())
        second = asyncio.ensure_future(
            executor.run(Attempt(Job(str(late), resources=gpu), name="late"))
        )
        while len(executor._under_way) < 2:  # submitted, queued behind "busy"
            await asyncio.sleep(0.01)
        second.cancel()
        first.cancel()
        for task in (second, first):
            with pytest.raises(asyncio.CancelledError):
                await task
    assert not marker.exists()
    assert not pid_alive(pid)


async def test_the_happy_path_leaves_no_per_attempt_state_on_the_scheduler(
    cluster: Any, address: str, make_script: Any
):
    """A batch asks the scheduler for no coordination primitive per attempt (no
    distributed.Event, Variable or Semaphore request: the scheduler's own count of the
    requests it served says so), and the at-most-once plugin there, which remembers
    each attempt that began, forgets them all once the client releases their tasks."""
    from distributed import Client

    from aiorunner._orchestrate.dask_scheduler import PLUGIN_NAME

    coordination = ("event_", "variable_", "semaphore_")

    def scheduler_state(dask_scheduler: Any) -> dict[str, Any]:
        ops: dict[str, float] = {}
        for component in dask_scheduler.counters["op"].components:
            for op, n in component.items():
                ops[op] = ops.get(op, 0) + n
        return {
            "coordination": round(sum(n for op, n in ops.items() if op.startswith(coordination))),
            "started": len(dask_scheduler.plugins[PLUGIN_NAME].started),
            "tasks": sum(1 for k in dask_scheduler.tasks if str(k).startswith("aiorunner-")),
        }

    script = make_script("print('ok')\n")
    async with Client(address, asynchronous=True) as client:
        async with DaskExecutor(address) as executor:
            before = await client.run_on_scheduler(scheduler_state)
            results = await run_many(
                [Job(str(script), name=f"j{i}") for i in range(6)],
                executor=executor,
                max_concurrency=3,
            )
        assert all(r.success for r in results), [r.error for r in results]
        deadline = time.monotonic() + 10
        after = await client.run_on_scheduler(scheduler_state)
        while after["tasks"] and time.monotonic() < deadline:  # releases are batched
            await asyncio.sleep(0.05)
            after = await client.run_on_scheduler(scheduler_state)
    assert after["coordination"] == before["coordination"]
    assert after["started"] == 0 and after["tasks"] == 0


async def test_export_worker_has_each_worker_export_itself(
    address: str, make_script: Any, tmp_path: Path, traces_file: Path
):
    """export="worker": the workers' own pipelines (built by the executor's plugin from a
    picklable WorkerExport, flushed when the executor closes) write the run's spans, its
    log records and its metrics, run-level instruments included; the client's files hold
    only its own span of the task, parent of the remote run, and no record or run-level
    point of the run (nothing is counted twice)."""
    from aiorunner import TracingConfig
    from aiorunner.dask import WorkerExport

    worker_dir = tmp_path / "worker"
    worker_dir.mkdir()
    worker_file = worker_dir / "traces.jsonl"
    script = make_script("print('hi')\n")
    spec = WorkerExport(TracingConfig(exporter_type="jsonl", traces_file=str(worker_file)))
    async with DaskExecutor(address, export="worker", worker_export=spec) as executor:
        (result,) = await run_many([Job(str(script), name="hello")], executor=executor)
    assert result.success, result.error
    remote = read_spans(worker_file)
    local = read_spans(traces_file)
    assert "ScriptRunner" in {s["name"] for s in remote}
    assert [s["name"] for s in local] == ["dask.task"]
    (runner,) = [s for s in remote if s["name"] == "ScriptRunner"]
    assert runner["traceId"] == local[0]["traceId"] == result.trace_id
    assert runner["parentSpanId"] == local[0]["spanId"]
    (execute,) = [s for s in remote if s["name"] == "execute_script"]
    (record,) = _log_records(worker_dir / "logs.jsonl")
    assert (record["body"], record["traceId"], record["spanId"]) == (
        "hi",
        result.trace_id,
        execute["spanId"],
    )
    points = _metric_points(worker_dir / "metrics.jsonl")
    assert {p["attrs"]["aiorunner.run.id"] for p in points if p["name"] == "process.cpu.time"} == {
        result.trace_id
    }
    (duration,) = [p for p in points if p["name"] == "aiorunner.run.duration"]
    assert duration["exemplars"][0]["traceId"] == result.trace_id
    assert not _log_records(traces_file.parent / "logs.jsonl")
    assert not [
        p
        for p in _metric_points(traces_file.parent / "metrics.jsonl")
        if p["name"] in ("aiorunner.run.duration", "aiorunner.runs", "process.cpu.time")
    ]


async def test_scheduler_lost_mid_run_is_a_clear_result(make_script: Any, tmp_path: Path):
    """The scheduler goes away while a script runs (its own small cluster, not the shared
    one): the attempt's result says the scheduler was lost, naming its address, and the
    client's span of the task ends with ERROR."""
    import dask.config
    from distributed import LocalCluster

    pidfile = tmp_path / "script.pid"
    script = make_script(
        f"""
        import os, time
        open({str(pidfile)!r}, "w").write(str(os.getpid()))
        time.sleep(60)
        """,
    )
    # The worker left behind retries the scheduler for the connect timeout: keep it short.
    config = dask.config.set({"distributed.comm.timeouts.connect": "2s"})
    cluster = await LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        asynchronous=True,
        dashboard_address=":0",
    )
    try:
        address = cluster.scheduler_address
        async with DaskExecutor(address) as executor:
            task = asyncio.ensure_future(run_many([Job(str(script))], executor=executor))
            while not pidfile.exists() or not pidfile.read_text():
                await asyncio.sleep(0.02)
            await cluster.scheduler.close()
            (result,) = await asyncio.wait_for(task, 60)
    finally:
        await cluster.close()
        config.__exit__(None, None, None)
    assert not result.success
    assert (result.error or "").startswith(
        f"scheduler lost: the connection to the Dask scheduler at {address}"
    ), result.error
    # Nothing is left running once the cluster is closed.
    pid = int(pidfile.read_text())
    assert not pid_alive(pid)


def test_cli_runs_scripts_on_the_cluster(address: str, make_script: Any, traces_file: Path):
    """`aiorunner run -j 2 --dask ADDRESS a.py b.py`: both scripts run on workers, their
    output comes through prefixed, the progress lines and the summary say which worker
    ran each job, and the spans land in this machine's jsonl file."""
    a = make_script("print('from a')\n", name="a.py")
    b = make_script("print('from b')\n", name="b.py")
    proc = subprocess.run(
        [sys.executable, "-m", "aiorunner", "run", "-j", "2", "--dask", address, str(a), str(b)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"{a} | from a" in proc.stdout and f"{b} | from b" in proc.stdout
    assert f"▶ {a} on tcp://" in proc.stderr
    header = next(line for line in proc.stderr.splitlines() if "trace id" in line)
    assert "worker" in header
    assert "2 succeeded of 2" in proc.stderr
    runners = [s for s in read_spans(traces_file) if s["name"] == "ScriptRunner"]
    assert len(runners) == 2


def test_cli_jobs_file_executor_table(address: str, make_script: Any, tmp_path: Path):
    """A jobs file's `[executor] dask = ADDRESS` runs its jobs on the cluster (no --dask
    needed), with `ship_script = true` and a job's `resources` passed along; --json
    gives each result's worker."""
    import json

    step = make_script("print('step')\n", name="step.py")
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(
        f"""
[executor]
dask = "{address}"
ship_script = true

[[jobs]]
name = "one"
script = "{step.name}"

[[jobs]]
name = "two"
script = "{step.name}"
after = ["one"]
resources = {{ GPU = 1 }}
"""
    )
    proc = subprocess.run(
        [sys.executable, "-m", "aiorunner", "run", "--json", "--jobs-file", str(jobs)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert [r["name"] for r in results] == ["one", "two"]
    assert all(r["success"] and r["worker"].startswith("tcp://") for r in results)


def test_cli_dask_unreachable_is_an_error_naming_the_address(make_script: Any):
    """--dask with no scheduler there: exit 1 and one error line naming the address."""
    a = make_script("print('a')\n", name="a.py")
    b = make_script("print('b')\n", name="b.py")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "aiorunner",
            "run",
            "-j",
            "2",
            "--dask",
            "tcp://127.0.0.1:1",
            str(a),
            str(b),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:1" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_jobs_file_executor_table_is_checked(tmp_path: Path):
    """The jobs file's [executor] table: its address and ship_script are read, an
    unknown key or a wrong value is an error naming the file and the fix."""
    from aiorunner import ConfigError, load_jobs_file

    path = tmp_path / "jobs.toml"
    body = '[[jobs]]\nscript = "a.py"\nresources = { GPU = 2 }\n'
    path.write_text('[executor]\ndask = "tcp://h:8786"\nship_script = true\n' + body)
    spec = load_jobs_file(path)
    assert spec.executor == {"dask": "tcp://h:8786", "ship_script": True}
    assert spec.jobs[0].resources == {"GPU": 2.0}
    path.write_text('[executor]\ndask = "tcp://h:8786"\nworkers = 3\n' + body)
    with pytest.raises(ConfigError, match="unknown key 'workers'; accepted keys: dask"):
        load_jobs_file(path)
    path.write_text("[executor]\ndask = 8786\n" + body)
    with pytest.raises(ConfigError, match="dask must be the scheduler's address"):
        load_jobs_file(path)
