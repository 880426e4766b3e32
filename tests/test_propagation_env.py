"""Trace context through the environment for any propagator (issue 15, item 5), and
unknown OTEL_PROPAGATORS names (item 2): the env-carrier rules (a field upper-cased,
other characters than letters, digits and _ turned into _) both ways, into a real child
process and from our own environment, read back from what the child printed and from
the real OTLP/JSON lines file; settings read at start-up in fresh interpreters."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from aiorunner import ConfigError, ScriptRunner, TracingConfig

pytest.importorskip("opentelemetry.propagators.b3")

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"

# A child that prints every variable a propagator may have written.
PRINT_CARRIERS = """\
#!/bin/sh
env | grep -E '^(TRACEPARENT|TRACESTATE|BAGGAGE|B3|X_B3_[A-Z]+|X_MY_CTX|UBER_TRACE_ID)=' | sort
"""


def _printed(stdout: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)


def _by_name(spans):
    return {s["name"]: s for s in spans}


async def test_b3multi_carries_the_run_into_the_child(make_script, spans_of, monkeypatch):
    """OTEL_PROPAGATORS=b3multi: the child gets X_B3_TRACEID/X_B3_SPANID/X_B3_SAMPLED of
    its execute_script span (b3multi's fields by the env-carrier rules), and no
    TRACEPARENT; before, b3multi carried nothing."""
    monkeypatch.setenv("OTEL_PROPAGATORS", "b3multi")
    script = make_script(PRINT_CARRIERS, name="env.sh", mode=0o755)
    result = await ScriptRunner(script).run()
    assert result.success, result.error
    execute = _by_name(spans_of(result.trace_id))["execute_script"]
    assert _printed(result.stdout) == {
        "X_B3_TRACEID": result.trace_id,
        "X_B3_SPANID": execute["spanId"],
        "X_B3_SAMPLED": "1",
    }


async def test_b3multi_parent_from_own_environment(make_script, spans_of, monkeypatch):
    """X_B3_TRACEID/X_B3_SPANID/X_B3_SAMPLED in our own environment parent the run, and
    the child sees the run's values in their place, not the inherited ones."""
    monkeypatch.setenv("OTEL_PROPAGATORS", "b3multi")
    monkeypatch.setenv("X_B3_TRACEID", TRACE_ID)
    monkeypatch.setenv("X_B3_SPANID", SPAN_ID)
    monkeypatch.setenv("X_B3_SAMPLED", "1")
    script = make_script(PRINT_CARRIERS, name="env.sh", mode=0o755)
    result = await ScriptRunner(script).run()
    assert result.trace_id == TRACE_ID
    spans = _by_name(spans_of(TRACE_ID))
    assert spans["ScriptRunner"]["parentSpanId"] == SPAN_ID
    printed = _printed(result.stdout)
    assert printed["X_B3_TRACEID"] == TRACE_ID
    assert printed["X_B3_SPANID"] == spans["execute_script"]["spanId"] != SPAN_ID


async def test_traceparent_placeholder_whatever_the_propagators(make_script, spans_of, monkeypatch):
    """{{traceparent}} in an argument is the execute_script span's W3C traceparent under
    b3multi too (which writes no TRACEPARENT variable; before, it stayed as written)."""
    monkeypatch.setenv("OTEL_PROPAGATORS", "b3multi")
    script = make_script('#!/bin/sh\necho "ARG=$1"\n', name="arg.sh", mode=0o755)
    result = await ScriptRunner(script, ["{{traceparent}}"]).run()
    execute = _by_name(spans_of(result.trace_id))["execute_script"]
    version, trace_id, span_id, flags = _printed(result.stdout)["ARG"].split("-")
    assert (version, trace_id, span_id) == ("00", result.trace_id, execute["spanId"])
    assert int(flags, 16) & 1


async def test_other_formats_inherited_context_does_not_reach_the_child(make_script, monkeypatch):
    """With the default propagators, B3 variables we inherited are not passed on: a child
    whose own SDK reads b3 must not join the trace above ours, skipping the run."""
    monkeypatch.setenv("X_B3_TRACEID", TRACE_ID)
    monkeypatch.setenv("X_B3_SPANID", SPAN_ID)
    monkeypatch.setenv("B3", f"{TRACE_ID}-{SPAN_ID}-1")
    script = make_script(PRINT_CARRIERS, name="env.sh", mode=0o755)
    result = await ScriptRunner(script).run()
    printed = _printed(result.stdout)
    assert set(printed) == {"TRACEPARENT"}
    assert printed["TRACEPARENT"].split("-")[1] == result.trace_id != TRACE_ID


def test_nested_runner_one_trace_with_b3multi(make_script, traces_file):
    """A Python script run by aiorunner under OTEL_PROPAGATORS=b3multi runs another with
    aiorunner (a fresh interpreter reading its environment at start): one trace, the
    inner root a child of the outer execute_script."""
    inner = make_script("print('leaf')", name="leaf.py")
    outer = make_script(
        f"""
        from aiorunner import ScriptRunner
        r = ScriptRunner({str(inner)!r}).run_script()
        print(r.trace_id)
        """,
        name="outer.py",
    )
    env = {**os.environ, "OTEL_PROPAGATORS": "b3multi", "AIORUNNER_IN_SCRIPT_TRACING": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "aiorunner", "run", "--json", str(outer)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    from conftest import read_spans

    spans = read_spans(traces_file)
    assert len({s["traceId"] for s in spans}) == 1
    roots = sorted(
        (s for s in spans if s["name"] == "ScriptRunner"), key=lambda s: s["startTimeUnixNano"]
    )
    assert len(roots) == 2
    outer_execute = next(
        s
        for s in spans
        if s["name"] == "execute_script" and s["parentSpanId"] == roots[0]["spanId"]
    )
    assert roots[1]["parentSpanId"] == outer_execute["spanId"]


_PLUGIN = '''
from opentelemetry import trace
from opentelemetry.propagators.textmap import TextMapPropagator, default_getter, default_setter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags


class MyPropagator(TextMapPropagator):
    """A header named "x-my.ctx" holding trace id:span id."""

    FIELD = "x-my.ctx"

    def extract(self, carrier, context=None, getter=default_getter):
        values = getter.get(carrier, self.FIELD)
        if not values:
            return context if context is not None else {}
        trace_id, span_id = values[0].split(":")
        sc = SpanContext(int(trace_id, 16), int(span_id, 16), True, TraceFlags(1))
        return trace.set_span_in_context(NonRecordingSpan(sc), context)

    def inject(self, carrier, context=None, setter=default_setter):
        sc = trace.get_current_span(context).get_span_context()
        setter.set(carrier, self.FIELD, f"{sc.trace_id:032x}:{sc.span_id:016x}")

    @property
    def fields(self):
        return {self.FIELD}
'''


def test_any_installed_propagator_both_ways(make_script, tmp_path, traces_file):
    """A third-party propagator found by its entry point, whose field ``x-my.ctx`` is no
    environment variable name: it travels as X_MY_CTX, read from our environment (the
    run's parent) and written for the child, in a fresh interpreter."""
    site = tmp_path / "site"
    (site / "myprop-1.0.dist-info").mkdir(parents=True)
    (site / "myprop.py").write_text(_PLUGIN)
    (site / "myprop-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: myprop\nVersion: 1.0\n"
    )
    (site / "myprop-1.0.dist-info" / "entry_points.txt").write_text(
        "[opentelemetry_propagator]\nmyprop = myprop:MyPropagator\n"
    )
    script = make_script(PRINT_CARRIERS, name="env.sh", mode=0o755)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
        "OTEL_PROPAGATORS": "myprop",
        "X_MY_CTX": f"{TRACE_ID}:{SPAN_ID}",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "aiorunner", "run", "--json", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["trace_id"] == TRACE_ID
    from conftest import read_spans

    spans = _by_name(s for s in read_spans(traces_file) if s["traceId"] == TRACE_ID)
    assert spans["ScriptRunner"]["parentSpanId"] == SPAN_ID
    printed = _printed(result["stdout"])
    assert printed == {"X_MY_CTX": f"{TRACE_ID}:{spans['execute_script']['spanId']}"}


# ----------------------------------------------------------- unknown OTEL_PROPAGATORS


def _run_twice(env: dict[str, str], script) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(
        f"""
        import json
        from aiorunner import ScriptRunner
        results = [ScriptRunner({str(script)!r}).run_script() for _ in range(2)]
        print(json.dumps([[r.success, r.stdout] for r in results]))
        """
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_unknown_propagator_in_env_warns_once_and_runs(make_script):
    """OTEL_PROPAGATORS=tracecontext,xray without the X-Ray package: one WARNING for two
    runs, naming the variable, its value, the package to install and what is used
    instead; the scripts run and still get tracecontext's TRACEPARENT."""
    script = make_script(PRINT_CARRIERS, name="env.sh", mode=0o755)
    proc = _run_twice({"OTEL_PROPAGATORS": "tracecontext,xray"}, script)
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(proc.stdout.splitlines()[-1])
    assert [success for success, _ in runs] == [True, True]
    assert all(set(_printed(stdout)) == {"TRACEPARENT"} for _, stdout in runs)
    warnings = [line for line in proc.stderr.splitlines() if "OTEL_PROPAGATORS" in line]
    assert len(warnings) == 1, proc.stderr
    [warning] = warnings
    assert "OTEL_PROPAGATORS='tracecontext,xray'" in warning
    assert "'xray'" in warning
    assert "pip install opentelemetry-propagator-aws-xray" in warning
    assert "using tracecontext instead" in warning


def test_no_known_propagator_in_env_uses_the_default(make_script):
    """OTEL_PROPAGATORS naming only unknown propagators: the default tracecontext,baggage
    is used (the child gets TRACEPARENT), and the warning says so."""
    script = make_script(PRINT_CARRIERS, name="env.sh", mode=0o755)
    proc = _run_twice({"OTEL_PROPAGATORS": "jaeger,nosuchprop"}, script)
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(proc.stdout.splitlines()[-1])
    assert all(set(_printed(stdout)) == {"TRACEPARENT"} for _, stdout in runs)
    assert "pip install opentelemetry-propagator-jaeger" in proc.stderr
    assert "using tracecontext,baggage instead" in proc.stderr


async def test_unknown_propagator_warning_in_process(make_script, monkeypatch, caplog):
    """In one process, the warning is a record of the aiorunner.config logger at WARNING,
    and the run succeeds."""
    caplog.set_level(logging.WARNING, logger="aiorunner.config")
    monkeypatch.setenv("OTEL_PROPAGATORS", "baggage,nosuchprop_inproc")
    result = await ScriptRunner(make_script("pass")).run()
    assert result.success, result.error
    [record] = [r for r in caplog.records if "nosuchprop_inproc" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "using baggage instead" in record.getMessage()


async def test_unknown_propagator_given_in_code_is_a_config_error(make_script):
    """TracingConfig(propagators=[...]) naming one that is not installed: the caller wrote
    it, so ConfigError, naming it, the package and what is installed."""
    config = TracingConfig(propagators=["tracecontext", "xray"])
    with pytest.raises(
        ConfigError, match=r"'xray'.*opentelemetry-propagator-aws-xray.*installed: "
    ):
        await ScriptRunner(make_script("pass"), config=config).run()


def test_doctor_reports_unknown_propagators(traces_file):
    """aiorunner doctor lists an OTEL_PROPAGATORS name a run would leave out as an ignored
    setting (exit 1), with the package to install and what is used instead."""
    proc = subprocess.run(
        [sys.executable, "-m", "aiorunner", "doctor", "--json"],
        env={**os.environ, "OTEL_PROPAGATORS": "tracecontext,b3,xray"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    [problem] = [p for p in report["ignored"] if p["variable"] == "OTEL_PROPAGATORS"]
    assert problem["value"] == "tracecontext,b3,xray"
    assert "'xray'" in problem["reason"]
    assert "opentelemetry-propagator-aws-xray" in problem["reason"]
    assert problem["instead"] == "tracecontext,b3"
    assert all(check["ok"] for check in report["checks"])
