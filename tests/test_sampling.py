"""Sampling: the OpenTelemetry head samplers by name (what arrives, what the child is
told), and ``tailbased``: the tail sampler driven with hundreds of synthetic runs, then a
few real runs end to end through a session's pipeline."""

from __future__ import annotations

import random
import re

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

from aiorunner import ScriptRunner, Session, TracingConfig
from aiorunner._export.tail_sampling import TailSampler
from aiorunner.testing import InMemoryBackend

PRINT_TRACEPARENT = "import os; print(os.environ.get('TRACEPARENT'))"
SCRIPT_SPAN = """\
from opentelemetry import trace
with trace.get_tracer("s").start_as_current_span("in-script"):
    pass
"""


async def _run(make_script, body=PRINT_TRACEPARENT, **config):
    backend = InMemoryBackend()
    async with Session(TracingConfig(**config), backends=[backend]) as session:
        result = await ScriptRunner(make_script(body), session=session).run()
        await session.flush()
    return result, backend


def _valid_trace_id(trace_id: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-f]{32}", trace_id)) and trace_id != "0" * 32


async def test_always_off_still_runs_and_fills_result(make_script):
    """always_off: the script runs, RunResult is complete with a valid trace id, the
    export says 'not sampled', nothing arrives, and the child is told 'not sampled'."""
    result, backend = await _run(make_script, sampler="always_off")
    assert result.success, result.error
    assert _valid_trace_id(result.trace_id)
    assert result.export is not None and result.export.sampled_out and result.export.ok
    assert backend.get_finished_spans() == ()
    traceparent = result.stdout.strip()
    assert traceparent.split("-")[1] == result.trace_id
    assert int(traceparent.split("-")[3], 16) & 1 == 0


async def test_always_on_records_everything(make_script):
    """always_on: the run's spans and the script's own arrive."""
    result, backend = await _run(make_script, SCRIPT_SPAN, sampler="always_on")
    names = {s.name for s in backend.get_finished_spans()}
    assert {"ScriptRunner", "execute_script", "in-script"} <= names
    assert not result.export.sampled_out


@pytest.mark.parametrize(("rate", "recorded"), [(0.0, False), (1.0, True)])
async def test_traceidratio(make_script, rate, recorded):
    """traceidratio with sample_rate 0 records nothing, with 1 everything."""
    result, backend = await _run(make_script, sampler="traceidratio", sample_rate=rate)
    assert result.success
    assert bool(backend.get_finished_spans()) is recorded
    assert result.export.sampled_out is not recorded


def test_traceidratio_is_a_ratio():
    """Over 2000 trace ids, traceidratio(0.3) samples close to 30 % (the SDK's sampler,
    configured by name)."""
    from aiorunner._export.sampling import make_sampler

    sampler = make_sampler(TracingConfig(sampler="traceidratio", sample_rate=0.3).resolve())
    rng = random.Random(6)
    kept = sum(
        sampler.should_sample(None, rng.getrandbits(128), "x").decision.is_sampled()
        for _ in range(2000)
    )
    assert 500 <= kept <= 700


def test_seed_sample_rate_alone_means_ratio():
    """TracingConfig(sample_rate=0.1) with no sampler samples 10 % (parent based)."""
    config = TracingConfig(sample_rate=0.1).resolve()
    assert config.sampler == "parentbased_traceidratio"
    assert TracingConfig().resolve().sampler == "parentbased_always_on"


@pytest.mark.parametrize(
    ("sampler", "parent_flags", "recorded"),
    [
        ("parentbased_always_off", "01", True),
        ("parentbased_always_off", None, False),
        ("parentbased_always_on", "00", False),
        ("parentbased_always_on", None, True),
        ("parentbased_traceidratio", "01", True),
        ("always_on", "00", True),
    ],
)
async def test_parent_based_samplers_follow_the_parent(
    make_script, monkeypatch, sampler, parent_flags, recorded
):
    """parentbased_*: a parent's sampled flag (TRACEPARENT) decides; without a parent
    the root sampler does. always_on ignores the parent."""
    if parent_flags is not None:
        monkeypatch.setenv("TRACEPARENT", f"00-{'a' * 32}-{'b' * 16}-{parent_flags}")
    result, backend = await _run(make_script, sampler=sampler, sample_rate=0.0)
    assert result.success
    assert bool(backend.get_finished_spans()) is recorded
    if parent_flags is not None:
        assert result.trace_id == "a" * 32


# ----------------------------------------------------------------- tail sampling

_NS = 1_000_000_000


def _span(trace_id, span_id, parent_id=None, *, start=0.0, end=0.1, error=False, name="s"):
    parent = None
    if parent_id is not None:
        parent = SpanContext(trace_id, parent_id, is_remote=False, trace_flags=TraceFlags(1))
    return ReadableSpan(
        name=name,
        context=SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(1)),
        parent=parent,
        status=Status(StatusCode.ERROR if error else StatusCode.UNSET),
        start_time=int(start * _NS),
        end_time=int(end * _NS),
    )


def _run_spans(trace_id, *, duration, failed):
    """A synthetic run: root (ends last) with three children, one failing if asked."""
    return [
        _span(trace_id, 2, 1, start=0.0, end=0.01),
        _span(trace_id, 3, 1, start=0.01, end=duration - 0.01, error=failed),
        _span(trace_id, 4, 1, start=duration - 0.01, end=duration),
        _span(trace_id, 1, None, start=0.0, end=duration, error=failed, name="ScriptRunner"),
    ]


def test_tail_sampler_over_hundreds_of_runs():
    """400 runs through the tail sampler, in batches as the pipeline takes them: every
    failed and every slow run is kept whole, fast successful runs are kept near the
    ratio, and every dropped span is counted as sampled out."""
    rng = random.Random(42)
    sampler = TailSampler(rate=0.25, threshold=2.0)
    kinds = {}
    stream = []
    for n in range(400):
        trace_id = rng.getrandbits(128)
        kind = "failed" if n % 10 == 0 else "slow" if n % 10 == 1 else "fast"
        kinds[trace_id] = kind
        stream += _run_spans(
            trace_id, duration=3.0 if kind == "slow" else 0.2, failed=kind == "failed"
        )
    # interleave runs a little, as concurrent runs are
    released = []
    for start in range(0, len(stream), 37):
        released += sampler.offer(stream[start : start + 37])
    kept: dict[int, int] = {}
    for span in released:
        kept[span.context.trace_id] = kept.get(span.context.trace_id, 0) + 1
    assert all(count == 4 for count in kept.values())  # never a partial run
    for trace_id, kind in kinds.items():
        if kind != "fast":
            assert trace_id in kept, kind
    fast = [t for t, k in kinds.items() if k == "fast"]
    ratio = sum(t in kept for t in fast) / len(fast)
    assert 0.15 <= ratio <= 0.35, ratio
    stats = sampler.statistics()
    assert stats.held == 0
    assert stats.kept == len(released)
    assert stats.sampled_out == 4 * (len(kinds) - len(kept))
    assert stats.kept_failed == 40 and stats.kept_slow == 40


def test_tail_sampler_waits_for_the_root_or_a_flush():
    """Spans wait until the root ends; a flush of the trace decides what is held, and
    the rest of a kept trace follows it."""
    sampler = TailSampler(rate=0.0, threshold=10.0)
    trace_id = 7
    assert sampler.offer([_span(trace_id, 2, 1, error=True)]) == []
    assert sampler.statistics().held == 1
    released = sampler.decide(trace_id)
    assert [s.context.span_id for s in released] == [2]
    # later spans of a kept trace are kept too, even fast and fine
    released = sampler.offer([_span(trace_id, 1, None, name="ScriptRunner")])
    assert [s.context.span_id for s in released] == [1]
    assert not sampler.sampled_out(trace_id)


def test_tail_sampler_counts_sampled_out_and_reports_it():
    """A dropped run is reported as sampled out (nothing kept), not lost."""
    sampler = TailSampler(rate=0.0, threshold=10.0)
    assert sampler.offer(_run_spans(99, duration=0.1, failed=False)) == []
    assert sampler.sampled_out(99)
    assert sampler.sampled_out_spans(99) == 4
    assert not sampler.sampled_out(100)


def test_tail_sampler_memory_is_bounded():
    """Past max_held_spans the oldest trace is decided early."""
    sampler = TailSampler(rate=1.0, threshold=10.0, max_held_spans=10)
    released = []
    for trace_id in range(1, 6):
        released += sampler.offer([_span(trace_id, n, 1) for n in range(2, 5)])
    assert sampler.statistics().held <= 10
    assert {s.context.trace_id for s in released} == {1, 2}


def test_tail_sampler_rejects_bad_rate():
    """rate outside 0..1 is a programming error."""
    with pytest.raises(ValueError, match="between 0 and 1"):
        TailSampler(rate=1.5, threshold=1.0)


FAIL_AFTER_SPAN = """\
import sys
from opentelemetry import trace
with trace.get_tracer("s").start_as_current_span("in-script"):
    pass
sys.exit(int(sys.argv[1]))
"""


async def test_tailbased_end_to_end(make_script, traces_file, spans_in):
    """sampler=tailbased through a real session: a failed run is kept whole (its
    script's spans too), a fast successful one is dropped and says so in its
    RunResult (trace id still valid), a slow one is kept; the jsonl file gets no
    'running' record for a run it will never see."""
    backend = InMemoryBackend()
    config = TracingConfig(sampler="tailbased", sample_rate=0.0, tail_latency_threshold=0.5)
    script = make_script(FAIL_AFTER_SPAN)
    slow = make_script("import time; time.sleep(0.8)", name="slow.py")
    async with Session(config, backends=[backend]) as session:
        failed = await ScriptRunner(script, ["3"], session=session).run()
        fine = await ScriptRunner(script, ["0"], session=session).run()
        slow_result = await ScriptRunner(slow, session=session).run()
        await session.flush()
        stats = session.statistics()
    assert not failed.success and fine.success and slow_result.success
    by_trace: dict[str, set[str]] = {}
    for span in backend.get_finished_spans():
        by_trace.setdefault(format(span.context.trace_id, "032x"), set()).add(span.name)
    assert {"ScriptRunner", "execute_script", "upload_traces", "in-script"} <= by_trace[
        failed.trace_id
    ]
    assert fine.trace_id not in by_trace
    assert _valid_trace_id(fine.trace_id)
    assert fine.export.sampled_out and fine.export.ok
    assert not failed.export.sampled_out
    assert "ScriptRunner" in by_trace[slow_result.trace_id]
    assert stats.tail is not None and stats.tail.sampled_out >= 8 and stats.tail.held == 0
    assert backend.get_started_spans() == ()


async def test_tailbased_from_env(make_script, spans_of, monkeypatch):
    """OTEL_TRACES_SAMPLER=tailbased with OTEL_TRACES_SAMPLER_ARG=0: a failing run reaches
    the default jsonl file, a fine one does not."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "tailbased")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    script = make_script(FAIL_AFTER_SPAN)
    failed = await ScriptRunner(script, ["2"]).run()
    fine = await ScriptRunner(script, ["0"]).run()
    assert {s["name"] for s in spans_of(failed.trace_id)} >= {"ScriptRunner", "in-script"}
    assert spans_of(fine.trace_id) == []
    assert fine.export.sampled_out
