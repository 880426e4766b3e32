"""Spans from inside the script: a real Python child using the standard OpenTelemetry
API (no change to its code) ships its spans back over the channel, and they arrive in the
real OTLP/JSON lines file as children of ``execute_script``; what happens when the script
is killed, forks, configures its own provider, or runs with another interpreter."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from aiorunner import ScriptRunner, TracingConfig

SPANS_SCRIPT = """\
import threading
from opentelemetry import trace

tracer = trace.get_tracer("etl.script", "2.0")
with tracer.start_as_current_span("load", attributes={"rows": 3, "tags": ["a", "b"]}) as span:
    span.add_event("checkpoint", {"progress_percent": 50})
    with tracer.start_as_current_span("parse"):
        pass

def work():
    with tracer.start_as_current_span("in-thread"):
        pass

t = threading.Thread(target=work)
t.start()
t.join()
print("done")
"""


def _by_name(spans):
    return {s["name"]: s for s in spans}


async def test_script_spans_are_children_of_execute_script(make_script, spans_of):
    """Spans the script makes with the OTel API join the run's trace under
    execute_script (a thread's too), with attributes, events, scope and the runner's
    resource; they leave through the runner's export (counted in RunResult.export)."""
    result = await ScriptRunner(make_script(SPANS_SCRIPT)).run()
    assert result.success, result.error
    spans = _by_name(spans_of(result.trace_id))
    execute_id = spans["execute_script"]["spanId"]
    assert spans["load"]["parentSpanId"] == execute_id
    assert spans["parse"]["parentSpanId"] == spans["load"]["spanId"]
    assert spans["in-thread"]["parentSpanId"] == execute_id
    load = spans["load"]
    assert load["attrs"] == {"rows": 3, "tags": ["a", "b"]}
    [event] = load["events"]
    assert event["name"] == "checkpoint"
    assert int(event["timeUnixNano"]) >= int(load["startTimeUnixNano"])
    assert load["resource"]["service.name"] == spans["ScriptRunner"]["resource"]["service.name"]
    assert int(spans["execute_script"]["startTimeUnixNano"]) <= int(load["startTimeUnixNano"])
    assert int(load["endTimeUnixNano"]) <= int(spans["execute_script"]["endTimeUnixNano"])
    assert result.export is not None and result.export.ok
    assert result.export.exported == len(spans) == 10


async def test_script_scope_is_kept(make_script, traces_file):
    """The script's instrumentation scope (name, version) is the scope of its spans."""
    result = await ScriptRunner(make_script(SPANS_SCRIPT)).run()
    import json

    scopes = set()
    for line in traces_file.read_text().splitlines():
        for rs in json.loads(line)["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                if any(s["traceId"] == result.trace_id for s in ss["spans"]):
                    scopes.add((ss["scope"].get("name"), ss["scope"].get("version")))
    assert ("etl.script", "2.0") in scopes


async def test_spans_ended_before_sigkill_arrive(make_script, spans_of):
    """A span ended before the script is SIGKILLed arrives; the run reports the signal."""
    script = make_script(
        """
        import os, signal
        from opentelemetry import trace
        tracer = trace.get_tracer("victim")
        with tracer.start_as_current_span("before-kill"):
            pass
        with tracer.start_as_current_span("never-ended"):
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = await ScriptRunner(script).run()
    assert result.signal == 9
    names = {s["name"] for s in spans_of(result.trace_id)}
    assert "before-kill" in names
    assert "never-ended" not in names


@pytest.mark.parametrize("how", ["argument", "config", "env"])
async def test_in_script_tracing_can_be_turned_off(make_script, spans_of, monkeypatch, how):
    """in_script_tracing=False (runner or config) or AIORUNNER_IN_SCRIPT_TRACING=false:
    no bootstrap in the child (its environment is untouched) and no script spans."""
    script = make_script(
        SPANS_SCRIPT
        + "import os, sys\n"
        + "print(sorted(k for k in os.environ if k.startswith('AIORUNNER_INSCRIPT')))\n"
        + "print(any(p.endswith(os.path.join('_context', 'bootstrap')) for p in sys.path))\n"
    )
    kwargs = {}
    if how == "argument":
        kwargs["in_script_tracing"] = False
    elif how == "config":
        kwargs["config"] = TracingConfig(in_script_tracing=False)
    else:
        monkeypatch.setenv("AIORUNNER_IN_SCRIPT_TRACING", "false")
    result = await ScriptRunner(script, **kwargs).run()
    assert result.success, result.error
    assert result.stdout.splitlines()[-2:] == ["[]", "False"]
    names = {s["name"] for s in spans_of(result.trace_id)}
    assert names == {
        "ScriptRunner",
        "extract_metadata",
        "validate_dependencies",
        "setup_environment",
        "execute_script",
        "collect_metrics",
        "upload_traces",
    }


async def test_script_not_touching_otel_imports_nothing(make_script):
    """A script that never imports OpenTelemetry gets none imported by the bootstrap."""
    script = make_script(
        "import sys; print(sorted(m for m in sys.modules if 'opentelemetry' in m))"
    )
    result = await ScriptRunner(script).run()
    assert result.success, result.error
    assert result.stdout.strip() == "[]"


OWN_PROVIDER = """\
import sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

{before}
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
assert trace.get_tracer_provider() is provider, "the script's own provider was refused"
with trace.get_tracer("mine").start_as_current_span("own-span"):
    pass
for span in exporter.get_finished_spans():
    print(span.name, format(span.context.trace_id, "032x"))
"""


@pytest.mark.parametrize(
    "before",
    ["", "trace.get_tracer('early').start_span('early-span').end()"],
    ids=["set-first", "after-ours-was-installed"],
)
async def test_script_with_own_tracer_provider_keeps_working(make_script, spans_of, before):
    """A script that installs its own TracerProvider gets it (even after ours was
    installed lazily by an earlier get_tracer), its spans go to its own exporter, and
    they still belong to the run's trace. No 'Overriding ... not allowed' warning."""
    result = await ScriptRunner(make_script(OWN_PROVIDER.format(before=before))).run()
    assert result.success, result.error + result.stderr
    assert result.stdout.splitlines() == [f"own-span {result.trace_id}"]
    assert "Overriding" not in result.stderr
    names = {s["name"] for s in spans_of(result.trace_id)}
    assert "own-span" not in names  # went to the script's exporter, not to ours
    assert ("early-span" in names) == bool(before)


async def test_existing_sitecustomize_still_runs(make_script, tmp_path, spans_of):
    """A sitecustomize the bootstrap shadows (on the user's PYTHONPATH) still runs, and
    in-script tracing still works."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import os\nos.environ['SITECUSTOMIZE_RAN'] = 'yes'\n")
    script = make_script(SPANS_SCRIPT + "import os; print(os.environ.get('SITECUSTOMIZE_RAN'))\n")
    result = await ScriptRunner(script, env={"PYTHONPATH": str(site)}).run()
    assert result.success, result.error
    assert result.stdout.splitlines()[-1] == "yes"
    assert "load" in {s["name"] for s in spans_of(result.trace_id)}


async def test_large_span_arrives_whole(make_script, spans_of):
    """A span larger than one channel message (a 300 kB attribute) arrives intact."""
    script = make_script(
        """
        from opentelemetry import trace
        with trace.get_tracer("big").start_as_current_span("big") as span:
            span.set_attribute("blob", "x" * 300_000 + "END")
        """
    )
    result = await ScriptRunner(script).run()
    assert result.success, result.error
    [big] = [s for s in spans_of(result.trace_id) if s["name"] == "big"]
    assert len(big["attrs"]["blob"]) == 300_003 and big["attrs"]["blob"].endswith("END")


async def test_forked_children_spans_arrive(make_script, spans_of):
    """Spans from forked children, written concurrently with the parent's (big and
    small), all arrive intact and in the run's trace."""
    script = make_script(
        """
        import os
        from opentelemetry import trace
        tracer = trace.get_tracer("forker")
        pids = []
        for n in range(3):
            pid = os.fork()
            if pid == 0:
                for i in range(20):
                    with tracer.start_as_current_span(f"child-{n}-{i}") as span:
                        span.set_attribute("pad", "y" * (70_000 if i % 5 == 0 else 10))
                os._exit(0)
            pids.append(pid)
        for i in range(20):
            with tracer.start_as_current_span(f"parent-{i}") as span:
                span.set_attribute("pad", "z" * (70_000 if i % 4 == 0 else 10))
        for pid in pids:
            os.waitpid(pid, 0)
        """
    )
    result = await ScriptRunner(script).run()
    assert result.success, result.error + result.stderr
    spans = spans_of(result.trace_id)
    names = {s["name"] for s in spans}
    expected = {f"child-{n}-{i}" for n in range(3) for i in range(20)}
    expected |= {f"parent-{i}" for i in range(20)}
    assert expected <= names
    for span in spans:
        if span["name"] in expected:
            assert set(span["attrs"]["pad"]) <= {"y", "z"}


async def test_other_interpreter_without_opentelemetry(make_script, tmp_path):
    """A target interpreter without OpenTelemetry (a bare venv) runs the script as
    usual: the bootstrap stays silent."""
    venv = tmp_path / "bare"
    proc = subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot create a venv here: {proc.stderr[-200:]!r}")
    python = venv / "bin" / "python"
    script = make_script("import sys; print(sys.prefix)")
    result = await ScriptRunner(script, interpreter=python).run()
    assert result.success, result.error
    assert result.stdout.strip() == str(venv)
    assert result.stderr == ""


async def test_python_started_by_a_shell_script_is_left_alone(make_script):
    """Only Python scripts get the bootstrap: a shell script's environment is untouched."""
    script = make_script('#!/bin/sh\necho "[$AIORUNNER_INSCRIPT]"\n', name="run.sh", mode=0o755)
    result = await ScriptRunner(script).run()
    assert result.stdout.strip() == "[]"


async def test_bootstrap_second_half_loads_only_when_needed(make_script):
    """Until the script touches OpenTelemetry, no module of ours besides the tiny
    sitecustomize is loaded in it."""
    script = make_script(
        "import sys; print(sorted(m for m in sys.modules if m.startswith(('_aiorunner', "
        "'aiorunner')))); print(sys.modules['sitecustomize'].__file__)"
    )
    result = await ScriptRunner(script).run()
    assert result.success, result.error
    modules, site = result.stdout.splitlines()
    assert modules == "[]"
    assert site.endswith(os.path.join("aiorunner", "_context", "bootstrap", "sitecustomize.py"))


async def test_bootstrap_loads_no_module_a_plain_start_does_not(make_script):
    """The bootstrap runs in every Python script's start-up: it may not import a module
    the interpreter would not have loaded anyway (``__future__``, ``importlib`` and
    ``warnings`` from source cost each script ~1 ms, ~7 % of run_many's throughput).
    Modules compiled into the interpreter (``atexit``) read no file and are allowed."""
    script = make_script("import sys\nprint(' '.join(sorted(sys.modules)))\n")
    plain = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True
    ).stdout.split()
    result = await ScriptRunner(script).run()
    assert result.success, result.error
    with_bootstrap = result.stdout.split()
    # Ours is the one module a plain start may lack (when no other sitecustomize exists).
    assert "sitecustomize" in with_bootstrap
    extra = set(with_bootstrap) - set(plain) - {"sitecustomize"}
    assert extra - set(sys.builtin_module_names) == set()


async def test_fd_reused_by_the_script_is_never_written(make_script, spans_of):
    """A script that closes the channel's fd and opens a file that gets the same number
    (what daemons do) never finds span data in that file; the script runs on."""
    script = make_script(
        """
        import os, sys
        from opentelemetry import trace
        tracer = trace.get_tracer("d")
        with tracer.start_as_current_span("before"):
            pass
        fd = sys.modules["_aiorunner_inscript"].channel().fd
        data = os.open("data.txt", os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        os.dup2(data, fd)  # the channel's number now means the file
        with tracer.start_as_current_span("after"):
            pass
        os.close(fd)
        print(repr(open("data.txt").read()))
        """
    )
    result = await ScriptRunner(script, cwd=script.parent).run()
    assert result.success, result.error + result.stderr
    assert result.stdout.strip() == "''"
    names = {s["name"] for s in spans_of(result.trace_id)}
    assert "before" in names and "after" not in names


async def test_inherited_sdk_disabled_does_not_silence_a_traced_run(
    make_script, spans_of, monkeypatch
):
    """OTEL_SDK_DISABLED=true in the environment but enabled=True in code: the run is
    traced, and so are the script's spans (the SDK in the child would read the variable)."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    runner = ScriptRunner(make_script(SPANS_SCRIPT), config=TracingConfig(enabled=True))
    result = await runner.run()
    assert {"ScriptRunner", "load"} <= {s["name"] for s in spans_of(result.trace_id)}
