"""The seed's tracer API: ``runner.tracer.trace()`` with ``with`` and ``async with``,
``span.set_attribute``/``add_event``, ``@trace_span`` on every kind of function, and spans
made inside a run joining its trace; read back from the real trace file."""

from __future__ import annotations

import asyncio
import os

import pytest

from aiorunner import ConfigError, ScriptRunner, trace_span

ERROR = 2  # OTLP/JSON status code of STATUS_CODE_ERROR


def _by_name(spans):
    return {s["name"]: s for s in spans}


def _trace_id(span) -> str:
    return format(span.get_span_context().trace_id, "032x")


def test_seed_example_sync(make_script, spans_of):
    """Seed 'Core Concepts' + example 2, synchronously: a custom span with attributes
    and an event, and a run inside it that becomes its child."""
    runner = ScriptRunner(make_script("print('fetched')"))
    runner.enable_tracing = True
    with runner.tracer.trace("fetch_batch", {"batch.source": "api"}) as span:
        span.set_attribute("batch.id", "2024-10-23-001")
        span.set_attribute("data.size_mb", 150)
        result = runner.run_script()
        span.add_event("data_fetched", {"status_code": 200, "size_kb": 1.5})
    asyncio.run(runner.session.flush())
    spans = _by_name(spans_of(_trace_id(span)))
    batch = spans["fetch_batch"]
    assert batch["attrs"] == {
        "batch.source": "api",
        "batch.id": "2024-10-23-001",
        "data.size_mb": 150,
    }
    [event] = batch["events"]
    assert event["name"] == "data_fetched"
    assert {a["key"] for a in event["attributes"]} == {"status_code", "size_kb"}
    assert result.trace_id == batch["traceId"]
    assert spans["ScriptRunner"]["parentSpanId"] == batch["spanId"]


async def test_async_with_records_exception_and_error(make_script, spans_of):
    """async with: an exception leaving the block is recorded and sets ERROR, then
    propagates."""
    runner = ScriptRunner(make_script("pass"))
    with pytest.raises(KeyError):
        async with runner.tracer.trace("lookup") as span:
            raise KeyError("missing-row")
    await runner.session.flush()
    lookup = _by_name(spans_of(_trace_id(span)))["lookup"]
    assert lookup["status"]["code"] == ERROR
    [event] = lookup["events"]
    assert event["name"] == "exception"
    attrs = {a["key"]: a["value"] for a in event["attributes"]}
    assert attrs["exception.type"]["stringValue"] == "KeyError"
    assert "missing-row" in attrs["exception.message"]["stringValue"]


async def test_nested_tracer_spans_form_a_tree(make_script, spans_of):
    """Spans opened inside each other are parent and child."""
    runner = ScriptRunner(make_script("pass"))
    async with runner.tracer.trace("outer") as outer:
        with runner.tracer.trace("inner"):
            pass
    await runner.session.flush()
    spans = _by_name(spans_of(_trace_id(outer)))
    assert spans["inner"]["parentSpanId"] == spans["outer"]["spanId"]


async def test_context_manager_is_single_use(make_script):
    """One trace() object serves one block; reusing it while open is an error."""
    runner = ScriptRunner(make_script("pass"))
    cm = runner.tracer.trace("once")
    async with cm:
        with pytest.raises(RuntimeError, match="already in use"):
            await cm.__aenter__()


async def test_tracer_follows_enable_tracing(make_script, traces_file):
    """With runner.enable_tracing = False, tracer spans are no-ops (nothing written)."""
    runner = ScriptRunner(make_script("pass"))
    runner.enable_tracing = False
    async with runner.tracer.trace("quiet") as span:
        span.set_attribute("x", 1)
    assert not span.is_recording()
    assert not traces_file.exists() or "quiet" not in traces_file.read_text()


async def test_spans_from_run_callbacks_join_the_run(make_script, spans_of):
    """A span made while the run runs (an on_output callback) is a child of the run."""
    made = []

    @trace_span("on-line")
    def on_output(stream: str, data: bytes) -> None:
        made.append(data)

    result = await ScriptRunner(make_script("print('x')"), on_output=on_output).run()
    from aiorunner._export.session import get_default_session

    await get_default_session().flush()
    spans = spans_of(result.trace_id)
    callbacks = [s for s in spans if s["name"] == "on-line"]
    assert callbacks and made
    root = next(s for s in spans if s["name"] == "ScriptRunner")
    assert {s["parentSpanId"] for s in callbacks} == {root["spanId"]}


# ----------------------------------------------------------------- @trace_span


@trace_span("expensive_operation")
def process_data(data):
    return data * 2


@trace_span
async def fetch(n):
    await asyncio.sleep(0)
    return n + 1


@trace_span(attributes={"stage": "extract"})
def rows(n):
    yield from range(n)


@trace_span("stream")
async def arows(n):
    for i in range(n):
        await asyncio.sleep(0)
        yield i


@trace_span("boom")
def boom():
    raise ValueError("bad input")


async def _flush():
    from aiorunner._export.session import aget_default_session

    await (await aget_default_session()).flush()


async def test_trace_span_on_every_kind_of_function(spans_in, traces_file):
    """Sync, async, generator and async generator functions: each call is one span
    covering the whole call or iteration, named by the decorator or the function, with
    code.function.name (fully qualified), code.file.path (this file, absolute) and
    code.line.number; return values pass through."""
    assert process_data(21) == 42
    assert await fetch(1) == 2
    assert list(rows(3)) == [0, 1, 2]
    assert [i async for i in arows(2)] == [0, 1]
    await _flush()
    spans = _by_name(spans_in(traces_file))
    attrs = spans["expensive_operation"]["attrs"]
    assert attrs["code.function.name"] == f"{__name__}.process_data"
    assert attrs["code.file.path"] == os.path.abspath(__file__)
    assert attrs["code.line.number"] == process_data.__wrapped__.__code__.co_firstlineno
    assert not {"code.function", "code.namespace", "code.filepath"} & set(attrs)
    assert spans["fetch"]["attrs"]["code.function.name"] == f"{__name__}.fetch"
    assert spans["rows"]["attrs"]["stage"] == "extract"
    assert spans["stream"]["attrs"]["code.function.name"] == f"{__name__}.arows"
    assert len({s["traceId"] for s in spans.values()}) == 4  # separate calls, separate traces


async def test_trace_span_records_exceptions(spans_in, traces_file):
    """An exception is recorded on the span with ERROR status and re-raised."""
    with pytest.raises(ValueError, match="bad input"):
        boom()
    await _flush()
    span = _by_name(spans_in(traces_file))["boom"]
    assert span["status"]["code"] == ERROR
    assert span["events"][0]["name"] == "exception"


async def test_trace_span_inside_tracer_span_is_its_child(make_script, spans_of):
    """A decorated call inside runner.tracer.trace() joins that trace as a child."""
    runner = ScriptRunner(make_script("pass"))
    async with runner.tracer.trace("batch") as batch:
        await fetch(1)
    await runner.session.flush()
    spans = _by_name(spans_of(_trace_id(batch)))
    assert spans["fetch"]["parentSpanId"] == spans["batch"]["spanId"]


def test_trace_span_rejects_a_non_string_name():
    """@trace_span(42) is a mistake: ConfigError."""
    with pytest.raises(ConfigError, match="takes a str or a function"):
        trace_span(42)


async def test_trace_span_generator_is_not_current_while_suspended(spans_of):
    """A decorated generator's span is current only while the generator runs: a span
    made by the consumer between items is not its child, and after an early break
    nothing is left current; the generator's span ends when it is closed."""
    from opentelemetry import trace as otel_trace

    from aiorunner import ScriptRunner, trace_span

    runner = ScriptRunner("unused.py")

    @trace_span("produce")
    def produce():
        for i in range(5):
            with runner.tracer.trace(f"inside-{i}"):
                pass
            yield i

    async with runner.tracer.trace("outer") as outer:
        for i in produce():
            with runner.tracer.trace(f"consumer-{i}"):
                pass
            if i == 1:
                break
        assert otel_trace.get_current_span() is outer
    assert not otel_trace.get_current_span().get_span_context().is_valid
    await runner.session.flush()
    trace_id = format(outer.get_span_context().trace_id, "032x")
    spans = {s["name"]: s for s in spans_of(trace_id)}
    produce_id = spans["produce"]["spanId"]
    outer_id = spans["outer"]["spanId"]
    assert spans["produce"]["parentSpanId"] == outer_id
    assert spans["inside-0"]["parentSpanId"] == produce_id
    assert spans["consumer-0"]["parentSpanId"] == outer_id
    assert spans["consumer-1"]["parentSpanId"] == outer_id
    assert "inside-2" not in spans


async def test_trace_span_inside_runner_span_goes_to_the_runners_session(tmp_path, spans_in):
    """@trace_span calls inside runner.tracer.trace() leave through the runner's own
    session (its configuration), so one trace is not split across backends."""
    from aiorunner import ScriptRunner, TracingConfig, trace_span

    target = tmp_path / "runner-only.jsonl"
    runner = ScriptRunner("unused.py")
    runner.set_tracing_config(TracingConfig(traces_file=target))

    @trace_span("decorated")
    async def work():
        return 1

    async with runner.tracer.trace("outer"):
        await work()
    await runner.session.flush()
    names = {s["name"] for s in spans_in(target)}
    assert names == {"outer", "decorated"}


@trace_span("tb_inner")
def tb_inner():
    raise KeyError("deep")


@trace_span("tb_outer")
def tb_outer():
    return tb_inner()


@trace_span("tb_async")
async def tb_async():
    await asyncio.sleep(0)
    raise LookupError("async failure")


@trace_span("tb_gen")
def tb_gen():
    yield 1
    raise LookupError("generator failure")


@trace_span("tb_agen")
async def tb_agen():
    yield 1
    raise LookupError("async generator failure")


async def test_exception_stack_trace_starts_at_the_users_frame(spans_in, traces_file):
    """The exception event of a @trace_span span (plain, async, generator, async
    generator, one decorated function calling another) starts at the user's frame and
    holds none of aiorunner's wrapper frames (it began inside tracer.py's wrapper).
    Like the SDK's own after issue 15, the event has no exception.escaped: it is only
    recorded for an exception that left the function."""
    with pytest.raises(KeyError):
        tb_outer()
    with pytest.raises(LookupError):
        await tb_async()
    with pytest.raises(LookupError):
        list(tb_gen())
    with pytest.raises(LookupError):
        [i async for i in tb_agen()]
    await _flush()
    spans = _by_name(spans_in(traces_file))
    expected = {
        "tb_inner": ["tb_inner"],
        "tb_outer": ["tb_outer", "tb_inner"],
        "tb_async": ["tb_async"],
        "tb_gen": ["tb_gen"],
        "tb_agen": ["tb_agen"],
    }
    for name, functions in expected.items():
        (event,) = spans[name]["events"]
        attrs = {a["key"]: a["value"]["stringValue"] for a in event["attributes"]}
        assert set(attrs) == {"exception.type", "exception.message", "exception.stacktrace"}
        stack = attrs["exception.stacktrace"]
        files = [line for line in stack.splitlines() if line.startswith("  File ")]
        assert files, stack
        assert all(f'File "{__file__}"' in line for line in files), (name, stack)
        assert [line.rsplit(" in ", 1)[1] for line in files] == functions
        assert "_context/tracer.py" not in stack
