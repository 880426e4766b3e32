"""Trace context in and out of a run: where the root's parent comes from (context=,
carrier=, the current span, TRACEPARENT in our env), what the child sees (TRACEPARENT,
TRACESTATE, BAGGAGE, {{traceparent}}), OTEL_PROPAGATORS, all read back from the real
OTLP/JSON lines file or from what the real child process printed."""

from __future__ import annotations

import itertools

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from aiorunner import ConfigError, ScriptRunner, TracingConfig

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"

# A bash child that prints what it was given: for any executable, not just Python.
PRINT_ENV = """\
#!/bin/sh
echo "TRACEPARENT=$TRACEPARENT"
echo "TRACESTATE=$TRACESTATE"
echo "BAGGAGE=$BAGGAGE"
echo "B3=$B3"
for a in "$@"; do echo "ARG=$a"; done
"""


def _printed(stdout: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        key, _, value = line.partition("=")
        out.setdefault(key, []).append(value)
    return out


def _sampled_traceparent(value: str, trace_id: str, span_id: str) -> bool:
    """``value`` is the W3C traceparent of that span, with the sampled flag set (the
    SDK also sets the level-2 random-trace-id flag, 0x02)."""
    version, tid, sid, flags = value.split("-")
    return (version, tid, sid) == ("00", trace_id, span_id) and bool(int(flags, 16) & 1)


def _by_name(spans):
    return {s["name"]: s for s in spans}


async def test_parent_from_traceparent_in_own_env(make_script, spans_of, monkeypatch):
    """With nothing else given, TRACEPARENT/TRACESTATE in our own environment parent the
    run: same trace id, root's parentSpanId is the env's span id."""
    monkeypatch.setenv("TRACEPARENT", TRACEPARENT)
    monkeypatch.setenv("TRACESTATE", "vendor=abc")
    result = await ScriptRunner(make_script("pass")).run()
    assert result.trace_id == TRACE_ID
    root = _by_name(spans_of(TRACE_ID))["ScriptRunner"]
    assert root["parentSpanId"] == SPAN_ID
    assert root["traceState"] == "vendor=abc"


async def test_current_span_beats_env(make_script, spans_of, monkeypatch):
    """A span current in the calling task wins over TRACEPARENT in the environment."""
    monkeypatch.setenv("TRACEPARENT", TRACEPARENT)
    other = SpanContext(int("5" * 32, 16), int("6" * 16, 16), False, TraceFlags(1))
    with trace.use_span(NonRecordingSpan(other)):
        result = await ScriptRunner(make_script("pass")).run()
    assert result.trace_id == "5" * 32
    assert _by_name(spans_of(result.trace_id))["ScriptRunner"]["parentSpanId"] == "6" * 16


async def test_tracer_span_joins_env_trace_and_parents_run(make_script, spans_of, monkeypatch):
    """runner.tracer.trace() with no current span takes TRACEPARENT from the environment
    (as a run does), and a run inside it is its child."""
    monkeypatch.setenv("TRACEPARENT", TRACEPARENT)
    runner = ScriptRunner(make_script("pass"))
    async with runner.tracer.trace("outer") as outer:
        result = await runner.run()
    await runner.session.flush()
    outer_id = format(outer.get_span_context().span_id, "016x")
    assert result.trace_id == TRACE_ID
    spans = _by_name(spans_of(TRACE_ID))
    assert spans["outer"]["parentSpanId"] == SPAN_ID
    assert spans["ScriptRunner"]["parentSpanId"] == outer_id


async def test_carrier_beats_current_span_and_env(make_script, spans_of, monkeypatch):
    """carrier= (W3C headers, any case) wins over the current span and the environment,
    and its baggage reaches the child."""
    monkeypatch.setenv("TRACEPARENT", "00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    script = make_script(PRINT_ENV, name="env.sh", mode=0o755)
    runner = ScriptRunner(script, carrier={"Traceparent": TRACEPARENT, "baggage": "tenant=acme"})
    async with runner.tracer.trace("outer"):
        result = await runner.run()
    assert result.trace_id == TRACE_ID
    assert _by_name(spans_of(TRACE_ID))["ScriptRunner"]["parentSpanId"] == SPAN_ID
    assert _printed(result.stdout)["BAGGAGE"] == ["tenant=acme"]


async def test_context_argument_beats_everything(make_script, spans_of, monkeypatch):
    """context= (an OpenTelemetry Context) is used as is, over carrier= and the env."""
    monkeypatch.setenv("TRACEPARENT", "00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    parent = SpanContext(
        int(TRACE_ID, 16), int(SPAN_ID, 16), is_remote=True, trace_flags=TraceFlags(1)
    )
    context = trace.set_span_in_context(NonRecordingSpan(parent))
    runner = ScriptRunner(
        make_script("pass"),
        context=context,
        carrier={"traceparent": "00-" + "3" * 32 + "-" + "4" * 16 + "-01"},
    )
    result = await runner.run()
    assert result.trace_id == TRACE_ID
    assert _by_name(spans_of(TRACE_ID))["ScriptRunner"]["parentSpanId"] == SPAN_ID


async def test_child_env_carries_execute_script_context(make_script, spans_of):
    """A non-Python child gets TRACEPARENT (this trace, the execute_script span, sampled),
    TRACESTATE and BAGGAGE of the run."""
    script = make_script(PRINT_ENV, name="env.sh", mode=0o755)
    carrier = {
        "traceparent": TRACEPARENT,
        "tracestate": "congo=t61rcWkgMzE",
        "baggage": "user=alice,region=eu",
    }
    result = await ScriptRunner(script, carrier=carrier).run()
    assert result.success, result.error
    printed = _printed(result.stdout)
    execute = _by_name(spans_of(TRACE_ID))["execute_script"]
    [traceparent] = printed["TRACEPARENT"]
    assert _sampled_traceparent(traceparent, TRACE_ID, execute["spanId"])
    assert printed["TRACESTATE"] == ["congo=t61rcWkgMzE"]
    assert sorted(printed["BAGGAGE"][0].split(",")) == ["region=eu", "user=alice"]


async def test_inherited_context_is_replaced_not_appended(make_script, monkeypatch):
    """The child sees the run's own TRACEPARENT, never the one we inherited."""
    monkeypatch.setenv("TRACEPARENT", TRACEPARENT)
    script = make_script(PRINT_ENV, name="env.sh", mode=0o755)
    result = await ScriptRunner(script).run()
    [value] = _printed(result.stdout)["TRACEPARENT"]
    assert value.startswith(f"00-{TRACE_ID}-")
    assert value != TRACEPARENT


async def test_traceparent_placeholder_in_args(make_script, spans_of):
    """{{traceparent}} in an argument becomes the execute_script span's traceparent."""
    script = make_script(PRINT_ENV, name="env.sh", mode=0o755)
    result = await ScriptRunner(script, ["--parent={{traceparent}}", "{{traceparent}}"]).run()
    printed = _printed(result.stdout)
    execute = _by_name(spans_of(result.trace_id))["execute_script"]
    [expected] = printed["TRACEPARENT"]
    assert _sampled_traceparent(expected, result.trace_id, execute["spanId"])
    assert printed["ARG"] == [f"--parent={expected}", expected]


async def test_otel_propagators_b3(make_script, spans_of, monkeypatch):
    """OTEL_PROPAGATORS=b3: the parent comes from B3 in our env, the child gets B3 (and
    no TRACEPARENT), as the b3 single-header propagator writes it."""
    pytest.importorskip("opentelemetry.propagators.b3")
    monkeypatch.setenv("OTEL_PROPAGATORS", "b3")
    monkeypatch.setenv("B3", f"{TRACE_ID}-{SPAN_ID}-1")
    script = make_script(PRINT_ENV, name="env.sh", mode=0o755)
    result = await ScriptRunner(script).run()
    assert result.trace_id == TRACE_ID
    spans = _by_name(spans_of(TRACE_ID))
    assert spans["ScriptRunner"]["parentSpanId"] == SPAN_ID
    printed = _printed(result.stdout)
    assert printed["TRACEPARENT"] == [""]
    assert printed["B3"] == [f"{TRACE_ID}-{spans['execute_script']['spanId']}-1"]


async def test_unknown_propagator_in_code_is_a_config_error(make_script):
    """A propagator name given in code that is not installed raises ConfigError naming it
    and listing the installed ones (in OTEL_PROPAGATORS it is a warning: see
    test_propagation_env)."""
    config = TracingConfig(propagators=["tracecontext", "nosuchprop"])
    with pytest.raises(ConfigError, match=r"nosuchprop.*installed: .*tracecontext"):
        await ScriptRunner(make_script("pass"), config=config).run()


# ----------------------------------------------------------------- nested runners

LEVEL = """\
import os, sys
from aiorunner import ScriptRunner
nxt = sys.argv[1:]
if nxt:
    result = ScriptRunner(nxt[0], nxt[1:]).run_script()
    print(result.trace_id)
    sys.exit(0 if result.success else 1)
"""


def _tree_check(spans, levels):
    """Every level's root is the child of the previous level's execute_script."""
    roots = sorted(
        (s for s in spans if s["name"] == "ScriptRunner"), key=lambda s: int(s["startTimeUnixNano"])
    )
    assert len(roots) == levels
    by_id = {s["spanId"]: s for s in spans}
    for outer, inner in itertools.pairwise(roots):
        execute = [
            s
            for s in spans
            if s["name"] == "execute_script" and s.get("parentSpanId") == outer["spanId"]
        ]
        assert len(execute) == 1
        assert inner["parentSpanId"] == execute[0]["spanId"]
        assert by_id[inner["parentSpanId"]]["traceId"] == inner["traceId"]
    for root in roots:
        children = {s["name"] for s in spans if s.get("parentSpanId") == root["spanId"]}
        assert {"execute_script", "collect_metrics", "upload_traces"} <= children


@pytest.mark.parametrize("in_script", [True, False], ids=["channel", "shared-file"])
async def test_nested_runners_three_levels_one_trace(
    make_script, tmp_path, traces_file, spans_in, monkeypatch, in_script
):
    """A script run by aiorunner that runs a script with aiorunner that runs a third:
    one trace, each level's root a child of the level above's execute_script. With
    in-script tracing the nested runs ship their spans back through the channel (one
    export, by the top runner); without it each level writes the shared trace file."""
    if not in_script:
        monkeypatch.setenv("AIORUNNER_IN_SCRIPT_TRACING", "false")
    level = make_script(LEVEL, name="level.py")
    leaf = make_script("print('leaf')", name="leaf.py")
    runner = ScriptRunner(level, [str(level), str(leaf)])
    result = await runner.run()
    assert result.success, result.error + result.stderr
    assert result.stdout.strip() == result.trace_id
    spans = spans_in(traces_file)
    assert {s["traceId"] for s in spans} == {result.trace_id}
    _tree_check(spans, levels=3)
    # Each span exactly once: nothing exported twice.
    ids = [s["spanId"] for s in spans]
    assert len(ids) == len(set(ids))
    if in_script:
        # Only the top runner exported: every span arrived in its one export path.
        assert result.export is not None and result.export.exported == len(spans)


async def test_nested_runner_env_keeps_user_pythonpath(make_script, tmp_path):
    """The child sees the PYTHONPATH the user gave, not the bootstrap's."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "helper_mod.py").write_text("VALUE = 42\n")
    script = make_script(
        "import os, helper_mod; print(os.environ.get('PYTHONPATH')); print(helper_mod.VALUE)"
    )
    result = await ScriptRunner(script, env={"PYTHONPATH": str(lib)}).run()
    assert result.success, result.error
    assert result.stdout.splitlines() == [str(lib), "42"]


async def test_child_without_pythonpath_sees_none(make_script, monkeypatch):
    """No PYTHONPATH given: the script sees none (the bootstrap removed its own)."""
    monkeypatch.delenv("PYTHONPATH", raising=False)
    script = make_script(
        "import os; print(repr(os.environ.get('PYTHONPATH'))); "
        "print(sorted(k for k in os.environ if k.startswith('AIORUNNER_INSCRIPT')))"
    )
    result = await ScriptRunner(script).run()
    assert result.stdout.splitlines() == ["None", "[]"]


async def test_run_takes_context_and_carrier_per_call(make_script, spans_of):
    """run(carrier=...) / run(context=...) set the parent of that one run, over the
    runner's own."""
    runner = ScriptRunner(
        make_script("pass"), carrier={"traceparent": "00-" + "3" * 32 + "-" + "4" * 16 + "-01"}
    )
    first = await runner.run(carrier={"traceparent": TRACEPARENT})
    assert first.trace_id == TRACE_ID
    assert _by_name(spans_of(TRACE_ID))["ScriptRunner"]["parentSpanId"] == SPAN_ID
    parent = SpanContext(
        int("5" * 32, 16), int("6" * 16, 16), is_remote=True, trace_flags=TraceFlags(1)
    )
    second = await runner.run(context=trace.set_span_in_context(NonRecordingSpan(parent)))
    assert second.trace_id == "5" * 32
    third = await runner.run()
    assert third.trace_id == "3" * 32
