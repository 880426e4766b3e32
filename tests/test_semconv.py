"""Semantic conventions for CLI runs (issue 15, item 6): the attribute keys aiorunner
emits are the registry's (installed ``opentelemetry-semantic-conventions``, deprecated
keys excluded) or its own under ``aiorunner.``; ``execute_script`` is the CLI client
span (kind, ``process.*``, ``error.type``); a run that succeeded leaves its status UNSET;
the resource says host, OS, runtime and instance as the SDK's detectors do, and
``OTEL_EXPERIMENTAL_RESOURCE_DETECTORS`` adds detectors. Read back from the real jsonl
file and the real OTLP/gRPC receiver, settings read at start-up in fresh interpreters."""

from __future__ import annotations

import ast
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from aiorunner import Job, ScriptRunner, run_many, trace_span
from aiorunner._export.session import aget_default_session

# ------------------------------------------------------------------ the registry


def _registry() -> tuple[frozenset[str], frozenset[str]]:
    """(keys, deprecated keys) of the installed semantic conventions: every
    ``NAME: Final = "key"`` of ``opentelemetry.semconv[._incubating].attributes``, a
    key deprecated when its docstring starts with "Deprecated:" (an incubating alias of
    a stable key says "Deprecated in favor of stable", and stays a key)."""
    import opentelemetry.semconv._incubating.attributes as incubating
    import opentelemetry.semconv.attributes as stable

    keys: set[str] = set()
    deprecated: set[str] = set()
    for package in (stable, incubating):
        for path in Path(package.__path__[0]).glob("*_attributes.py"):
            body = ast.parse(path.read_text()).body
            for node, after in zip(body, [*body[1:], None], strict=True):
                if not (
                    isinstance(node, ast.AnnAssign)
                    and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, str)
                ):
                    continue
                doc = ""
                if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                    doc = str(after.value.value).strip()
                (deprecated if doc.startswith("Deprecated:") else keys).add(node.value.value)
    return frozenset(keys), frozenset(deprecated - keys)


KEYS, DEPRECATED = _registry()


def test_registry_is_read():
    """The registry reader finds the keys this test relies on, and the deprecated ones
    (a reader that found nothing would let every key fail, or none)."""
    assert {"process.exit.code", "error.type", "code.file.path", "host.name"} <= KEYS
    assert {"code.filepath", "code.function", "code.namespace"} <= DEPRECATED


# ------------------------------------------------------------------ reading the file


def _records(path: Path) -> list[dict[str, Any]]:
    """Every span of an OTLP/JSON lines file with its scope name, its attributes as a
    dict, its events' attributes and its resource."""
    from conftest import attr_value

    out = []
    for line in path.read_text().splitlines():
        for rs in json.loads(line)["resourceSpans"]:
            resource = {
                a["key"]: attr_value(a["value"])
                for a in rs.get("resource", {}).get("attributes", [])
            }
            for ss in rs.get("scopeSpans", []):
                scope = ss.get("scope", {}).get("name", "")
                for span in ss.get("spans", []):
                    out.append(
                        {
                            **span,
                            "scope": scope,
                            "resource": resource,
                            "attrs": {
                                a["key"]: attr_value(a["value"]) for a in span.get("attributes", [])
                            },
                            "event_attrs": [
                                (
                                    e["name"],
                                    {
                                        a["key"]: attr_value(a["value"])
                                        for a in e.get("attributes", [])
                                    },
                                )
                                for e in span.get("events", [])
                            ],
                        }
                    )
    return out


def _by_name(spans):
    return {s["name"]: s for s in spans}


# -------------------------------------------------------------- every key we emit

MONITORED = """\
# /// script
# requires-python = ">=3.8"
# dependencies = []
# ///
import os, sys, time
with open(os.devnull, "wb") as f:
    f.write(b"x" * 100_000)
deadline = time.monotonic() + 0.3
while time.monotonic() < deadline:
    pass
print("done")
"""


@trace_span
def _traced_failure():
    raise ValueError("traced")


async def test_every_emitted_key_is_the_registrys_or_ours(make_script, tmp_path, traces_file):
    """Every attribute key on aiorunner's spans, their events and their resource, after
    a monitored run, failing runs of each kind, run_many and @trace_span, is a key of the
    installed semantic-conventions registry (not a deprecated one) or under
    ``aiorunner.``. Before issue 15: cpu.percent, code.filepath, stderr.tail, ..."""
    ok = make_script(MONITORED, name="ok.py")
    results = [
        await ScriptRunner(ok, monitor_interval=0.05).run(),
        await ScriptRunner(make_script("raise SystemExit(3)", name="exit3.py")).run(),
        await ScriptRunner(make_script("1/0", name="boom.py")).run(),
        await ScriptRunner(make_script("import nosuchmodule_xyz", name="deps.py")).run(),
        await ScriptRunner(
            make_script("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", name="k.py")
        ).run(),
        await ScriptRunner(
            make_script("import time; time.sleep(30)", name="slow.py"), timeout=0.2, kill_grace=0.5
        ).run(),
        await ScriptRunner(tmp_path / "missing.py").run(),
        await ScriptRunner(make_script("#!/bin/sh\necho hi\n", name="noexec.sh")).run(),
        await ScriptRunner(ok, cwd=tmp_path / "nodir").run(),
    ]
    assert [r.success for r in results] == [True] + [False] * 8
    await run_many(
        [
            Job(str(ok), name="a"),
            Job(str(make_script("x(", name="bad.py")), name="b"),
            Job(str(ok), name="c", after=["b"]),
        ],
        trace="batch",
    )
    with pytest.raises(ValueError, match="traced"):
        _traced_failure()
    await (await aget_default_session()).flush()  # everything on disk

    spans = [s for s in _records(traces_file) if s["scope"] == "aiorunner"]
    names = {s["name"] for s in spans}
    assert {"ScriptRunner", "execute_script", "run_many", "_traced_failure"} <= names
    emitted: dict[str, set[str]] = {}
    for span in spans:
        for key in span["attrs"]:
            emitted.setdefault(key, set()).add(f"span {span['name']}")
        for event, attrs in span["event_attrs"]:
            for key in attrs:
                emitted.setdefault(key, set()).add(f"event {event}")
        for key in span["resource"]:
            emitted.setdefault(key, set()).add("resource")
    # The monitoring events were there to be checked.
    events = {event for s in spans for event, _ in s["event_attrs"]}
    assert {"cpu_monitoring", "memory_monitoring", "exception", "script.stderr"} <= events
    wrong = {
        key: sorted(where)
        for key, where in emitted.items()
        if not key.startswith("aiorunner.") and (key not in KEYS or key in DEPRECATED)
    }
    assert wrong == {}, "keys neither the registry's nor aiorunner.*"
    # The ones the CLI conventions require are there.
    assert {"process.executable.name", "process.exit.code", "process.pid", "error.type"} <= set(
        emitted
    )


# ----------------------------------------------------------- the CLI client span


async def test_execute_script_is_the_cli_client_span(make_script, tmp_path, spans_of):
    """execute_script, the span that spawns the process, is CLIENT with the CLI
    conventions' attributes: process.executable.name (required) and .path, pid, exit
    code, command args, working directory; extract_metadata and the root carry one
    absolute code.file.path; the deprecated keys are gone."""
    script = make_script("print('x')", name="job.py")
    result = await ScriptRunner("job.py", cwd=tmp_path).run()
    assert result.success, result.error
    spans = _by_name(spans_of(result.trace_id))
    execute = spans["execute_script"]
    assert execute["kind"] == 3  # SPAN_KIND_CLIENT
    attrs = execute["attrs"]
    exe = os.path.realpath(sys.executable)
    assert attrs["process.executable.name"] == os.path.basename(exe)
    assert attrs["process.executable.path"] == exe
    assert attrs["process.pid"] == result.pid
    assert attrs["process.exit.code"] == 0
    assert attrs["process.working_directory"] == str(tmp_path)
    assert attrs["process.command_args"][1] == str(script)
    assert spans["setup_environment"]["attrs"]["process.working_directory"] == str(tmp_path)
    for name in ("ScriptRunner", "extract_metadata"):
        assert spans[name]["attrs"]["code.file.path"] == str(script)
    for span in spans.values():
        assert not {"code.filepath", "aiorunner.cwd"} & set(span["attrs"])
        assert span["kind"] == (3 if span["name"] == "execute_script" else 1)


async def test_an_executable_script_is_its_own_executable(make_script, spans_of):
    """For an executable (not Python) script, process.executable.* name the script."""
    script = make_script("#!/bin/sh\nexit 0\n", name="task.sh", mode=0o755)
    result = await ScriptRunner(script).run()
    attrs = _by_name(spans_of(result.trace_id))["execute_script"]["attrs"]
    assert attrs["process.executable.name"] == "task.sh"
    assert attrs["process.executable.path"] == str(script)


async def test_success_leaves_every_status_unset(make_script, spans_of):
    """A run that succeeded sets no status anywhere (instrumentation SHOULD NOT set OK):
    the root is UNSET, as every phase, and has no error.type."""
    result = await ScriptRunner(make_script("pass")).run()
    assert result.success
    for span in spans_of(result.trace_id):
        assert span.get("status", {}).get("code", 0) == 0, span["name"]
        assert "error.type" not in span["attrs"]


async def test_run_many_batch_success_is_unset(make_script, traces_file):
    """run_many's batch span of a batch that succeeded is UNSET too; one that did not
    says ERROR with error.type jobs_failed."""
    ok = make_script("pass", name="ok.py")
    bad = make_script("raise SystemExit(1)", name="bad.py")
    await run_many([str(ok)], trace="batch")
    await run_many([str(ok), str(bad)], trace="batch")
    await (await aget_default_session()).flush()
    batches = sorted(
        (s for s in _records(traces_file) if s["name"] == "run_many"),
        key=lambda s: int(s["startTimeUnixNano"]),
    )
    assert [b.get("status", {}).get("code", 0) for b in batches] == [0, 2]
    assert "error.type" not in batches[0]["attrs"]
    assert batches[1]["attrs"]["error.type"] == "jobs_failed"


KILL_SELF = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"


@pytest.mark.parametrize(
    ("body", "kwargs", "error_type", "exit_code"),
    [
        ("raise SystemExit(3)", {}, "3", 3),
        (KILL_SELF, {}, "SIGSEGV", 128 + signal.SIGSEGV),
        ("import time; time.sleep(30)", {"timeout": 0.2, "kill_grace": 0.5}, "timeout", None),
    ],
    ids=["exit-code", "signal", "timeout"],
)
async def test_failed_run_says_error_type(
    make_script, spans_of, body, kwargs, error_type, exit_code
):
    """A failed run has error.type on execute_script and on the root, with ERROR status:
    the exit code, the signal's name (and process.exit.code 128+N, the shell's, with
    aiorunner.signal N), or timeout."""
    result = await ScriptRunner(make_script(body), **kwargs).run()
    assert not result.success
    spans = _by_name(spans_of(result.trace_id))
    for name in ("execute_script", "ScriptRunner"):
        attrs = spans[name]["attrs"]
        assert attrs["error.type"] == error_type, name
        assert spans[name]["status"]["code"] == 2, name
        if exit_code is not None:
            assert attrs["process.exit.code"] == exit_code, name
    if error_type.startswith("SIG"):
        assert spans["execute_script"]["attrs"]["aiorunner.signal"] == signal.SIGSEGV
        assert spans["ScriptRunner"]["attrs"]["aiorunner.signal"] == signal.SIGSEGV
        assert result.exit_code is None and result.signal == signal.SIGSEGV


@pytest.mark.parametrize(
    ("setup", "phase", "error_type"),
    [
        ("missing", "extract_metadata", "script_unavailable"),
        ("syntax", "validate_dependencies", "syntax_error"),
        ("deps", "validate_dependencies", "dependency_missing"),
        ("noexec", "execute_script", "not_executable"),
        ("nocwd", "setup_environment", "cwd_missing"),
    ],
)
async def test_failure_before_the_script_ran_says_error_type(
    make_script, tmp_path, spans_of, setup, phase, error_type
):
    """A run that failed before its script ran says why in error.type (the documented
    list), on the phase that failed and on the root."""
    cwd = None
    if setup == "missing":
        script = tmp_path / "missing.py"
    elif setup == "syntax":
        script = make_script("x(")
    elif setup == "deps":
        script = make_script("import nosuchmodule_xyz")
    elif setup == "noexec":
        script = make_script("#!/bin/sh\n", name="x.sh")
    else:
        script = make_script("pass")
        cwd = tmp_path / "nodir"
    result = await ScriptRunner(script, cwd=cwd).run()
    assert not result.success
    spans = _by_name(spans_of(result.trace_id))
    assert spans[phase]["attrs"]["error.type"] == error_type
    assert spans["ScriptRunner"]["attrs"]["error.type"] == error_type


def test_trace_span_failure_says_error_type(spans_in, traces_file):
    """A @trace_span function that raises: error.type is the exception's class, beside
    the exception event and ERROR status."""
    with pytest.raises(ValueError, match="traced"):
        _traced_failure()
    from aiorunner._export.session import _close_default_sessions

    _close_default_sessions()
    [span] = [s for s in spans_in(traces_file) if s["name"] == "_traced_failure"]
    assert span["attrs"]["error.type"] == "ValueError"
    assert span["status"]["code"] == 2


# ------------------------------------------------------------------ the resource


async def test_resource_says_host_os_runtime_and_instance(make_script, spans_of):
    """The resource has what the SDK's detectors give: host.name/host.arch, os.type/
    os.version, process.runtime.*, and a service.instance.id (a UUID, one per process)."""
    result = await ScriptRunner(make_script("pass")).run()
    resources = [s["resource"] for s in spans_of(result.trace_id)]
    resource = resources[0]
    assert all(r == resource for r in resources)
    assert resource["host.name"] == socket.gethostname()
    assert resource["host.arch"] == platform.machine()
    assert resource["os.type"] == platform.system().lower()
    assert resource["process.runtime.name"] == sys.implementation.name
    assert resource["process.runtime.version"].startswith(platform.python_version()[:4])
    assert resource["process.runtime.description"] == sys.version
    assert uuid.UUID(resource["service.instance.id"]).version == 4
    assert resource["service.name"] == "aiorunner"
    # Not the runner's own process attributes unless asked for (process detector).
    assert "process.pid" not in resource


def test_resource_detectors_from_the_environment(make_script, otlp_grpc_receiver):
    """OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=process,nosuchdetector in a fresh
    interpreter: the SDK's process detector adds the runner's own process.* to the
    resource that reaches the collector; the unknown name is one WARNING naming the
    variable, the value and what is used instead; the script runs; OTEL_RESOURCE_ATTRIBUTES
    still wins over the detectors."""
    script = make_script("pass")
    env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_grpc_receiver.endpoint,
        "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "process,nosuchdetector",
        "OTEL_RESOURCE_ATTRIBUTES": "service.instance.id=mine",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "aiorunner", "run", "--json", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "RESOURCE_DETECTORS" in line]
    assert len(warnings) == 1, proc.stderr
    assert "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS='process,nosuchdetector'" in warnings[0]
    assert "'nosuchdetector'" in warnings[0]
    assert "using process instead" in warnings[0]
    spans = otlp_grpc_receiver.wait_for_spans_sync(7)
    execute = next(s for s in spans if s.name == "execute_script")
    resource = execute.resource
    assert resource["process.runtime.name"] == sys.implementation.name
    assert isinstance(resource["process.pid"], int)
    assert resource["process.pid"] != execute.attributes["process.pid"]  # the runner's
    assert resource["process.executable.path"] == sys.executable
    assert resource["host.name"] == socket.gethostname()
    assert resource["service.instance.id"] == "mine"


def test_doctor_reports_unknown_resource_detectors(traces_file):
    """aiorunner doctor lists an OTEL_EXPERIMENTAL_RESOURCE_DETECTORS name that is not
    installed as an ignored setting (exit 1), and what is used instead."""
    proc = subprocess.run(
        [sys.executable, "-m", "aiorunner", "doctor", "--json"],
        env={**os.environ, "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "host,aws_ec2"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    [problem] = [
        p for p in report["ignored"] if p["variable"] == "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS"
    ]
    assert "'aws_ec2'" in problem["reason"]
    assert problem["instead"] == "host"
