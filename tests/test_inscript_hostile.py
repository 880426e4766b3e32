"""A script that writes to its in-script span channel by hand (issue 16 item 13) cannot
grow the runner without bound: unfinished messages are held up to a total budget from a
bounded number of writers, a message over the size limit is thrown away as it arrives,
the session's span limits are applied to whatever arrives, and garbage is counted with a
bounded number of warnings. What was thrown away is on ``execute_script`` and in
``RunResult.export.inscript``. The hostile scripts are real child processes writing
straight to the channel's fd; the runner's memory is read with psutil."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager

import psutil

from aiorunner import ScriptRunner, TracingConfig
from aiorunner._context import channel as channel_module
from aiorunner._context.channel import (
    MAX_MESSAGE_BYTES,
    MAX_PENDING_BYTES,
    MAX_PENDING_WRITERS,
    MAX_RUN_SPAN_BYTES,
    MAX_WARNINGS,
)

MiB = 1 << 20

#: Finds the channel as the bootstrap does (fd= in AIORUNNER_INSCRIPT; the bootstrap
#: removed the variable from os.environ, /proc/self/environ still has it) and writes
#: chunks in the wire format: pid (4 bytes), "more follows" (1 byte), data.
PRELUDE = """\
import json, os, sys

def channel_fd():
    with open("/proc/self/environ", "rb") as f:
        for item in f.read().split(b"\\0"):
            if item.startswith(b"AIORUNNER_INSCRIPT="):
                for part in item.split(b"=", 1)[1].decode().split(";"):
                    if part.startswith("fd="):
                        return int(part[3:])
    sys.exit("no channel")

FD = channel_fd()
TRACE, PARENT = os.environ["TRACEPARENT"].split("-")[1:3]

def chunk(pid, more, data):
    os.write(FD, pid.to_bytes(4, "big") + bytes([more]) + data)

def message(pid, payload, size=60_000):
    for start in range(0, len(payload), size):
        piece = payload[start:start + size]
        chunk(pid, 1 if start + size < len(payload) else 0, piece)

def span(name, n, **extra):
    data = {"n": name, "t": TRACE, "i": "%016x" % n, "p": PARENT, "s": 1, "e": 2}
    data.update(extra)
    return data
"""


@contextmanager
def peak_rss_growth():
    """The largest growth of this process's RSS over its value at entry, sampled every
    5 ms in a thread while the block runs (``growth[0]``, bytes)."""
    process = psutil.Process()
    baseline = process.memory_info().rss
    growth = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            growth[0] = max(growth[0], process.memory_info().rss - baseline)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield growth
    finally:
        done.set()
        thread.join()
        growth[0] = max(growth[0], process.memory_info().rss - baseline)


async def _warm_up(make_script) -> None:
    """One ordinary run first, so what the runner allocates once is not counted."""
    result = await ScriptRunner(make_script("pass", name="warm.py")).run()
    assert result.success


async def test_many_fake_writers_with_unfinished_messages_are_bounded(make_script, spans_of):
    """1,000 sender-chosen pids each leave a 360 kB message unfinished (360 MB in all):
    the runner holds at most MAX_PENDING_WRITERS of them, its RSS grows by far less than
    what was sent, every one of the 1,000 is counted as a dropped message (bytes too) on
    execute_script and in RunResult.export, and a real span sent after them arrives."""
    await _warm_up(make_script)
    script = make_script(
        PRELUDE
        + """
for pid in range(10_000_000, 10_001_000):
    for _ in range(6):
        chunk(pid, 1, b"x" * 60_000)
from opentelemetry import trace
with trace.get_tracer("t").start_as_current_span("after-the-flood"):
    pass
"""
    )
    with peak_rss_growth() as growth:
        result = await ScriptRunner(script, monitor=False).run()
    assert result.success, (result.error or "") + result.stderr
    inscript = result.export.inscript
    assert inscript.dropped_messages == 1000
    assert inscript.dropped_bytes == 1000 * 6 * 60_000
    assert inscript.received == 1
    assert not result.export.ok and result.export.lost
    assert "1000 in-script messages" in result.export.describe()
    assert result.to_dict()["export"]["inscript"]["dropped_messages"] == 1000
    spans = {s["name"]: s for s in spans_of(result.trace_id)}
    assert "after-the-flood" in spans
    execute = spans["execute_script"]["attrs"]
    assert execute["aiorunner.inscript.dropped_messages"] == 1000
    assert execute["aiorunner.inscript.dropped_bytes"] == 360_000_000
    # Held at most: 64 writers x 360 kB (23 MB); sent: 360 MB.
    assert MAX_PENDING_WRITERS * 6 * 60_000 < 32 * MiB
    assert growth[0] < 96 * MiB, f"runner RSS grew by {growth[0] / MiB:.0f} MiB"


async def test_total_budget_of_unfinished_messages(make_script, spans_of, monkeypatch):
    """60 writers interleave messages of 1.6 MB each (96 MB, over MAX_PENDING_BYTES, each
    under MAX_MESSAGE_BYTES): those that would take the held total past the budget are
    discarded and counted, the others arrive whole, and the runner's RSS stays bounded."""
    # Another bound than the run's span budget is under test here: lift that one.
    monkeypatch.setattr(channel_module, "MAX_RUN_SPAN_BYTES", 1 << 40)
    await _warm_up(make_script)
    script = make_script(
        PRELUDE
        + """
payloads = {}
for k in range(60):
    # A small span padded to 1.6 MB (unknown keys are ignored): what is measured is
    # what the channel holds, not what the export pipeline does with big spans.
    data = {"s": [span("w%d" % k, k + 1)], "pad": "y" * 1_600_000}
    payloads[20_000_000 + k] = json.dumps(data).encode()
size = 60_000
for start in range(0, max(len(p) for p in payloads.values()), size):
    for pid, payload in payloads.items():
        piece = payload[start:start + size]
        if piece:
            chunk(pid, 1 if start + size < len(payload) else 0, piece)
"""
    )
    assert 60 * 1_600_000 > MAX_PENDING_BYTES and 1_600_000 < MAX_MESSAGE_BYTES
    with peak_rss_growth() as growth:
        result = await ScriptRunner(script, monitor=False).run()
    assert result.success, (result.error or "") + result.stderr
    inscript = result.export.inscript
    arrived = [s for s in spans_of(result.trace_id) if s["name"].startswith("w")]
    assert inscript.dropped_messages >= 1
    assert inscript.received == len(arrived) >= 1
    assert inscript.received + inscript.dropped_messages == 60
    assert growth[0] < 2 * MAX_PENDING_BYTES + 64 * MiB, f"grew {growth[0] / MiB:.0f} MiB"


async def test_message_over_the_size_limit_is_dropped_as_it_arrives(make_script, spans_of):
    """One span of 300 one-MiB attributes in one message (300 MB) is over
    MAX_MESSAGE_BYTES: discarded as it arrives (not held whole), counted once with all
    its bytes; the runner's RSS does not grow by anything like its size."""
    await _warm_up(make_script)
    script = make_script(
        PRELUDE
        + """
blob = "z" * (1 << 20)
attrs = ",".join('"a%d":"%s"' % (i, blob) for i in range(300))
payload = ('{"s":[{"n":"huge","t":"%s","i":"%016x","s":1,"e":2,"a":{%s}}]}'
           % (TRACE, 7, attrs)).encode()
del attrs
message(os.getpid(), payload)
print(len(payload))
"""
    )
    with peak_rss_growth() as growth:
        result = await ScriptRunner(script, monitor=False).run()
    assert result.success, (result.error or "") + result.stderr
    sent = int(result.stdout.split()[-1])
    assert sent > 300 * MiB > MAX_MESSAGE_BYTES
    inscript = result.export.inscript
    assert (inscript.dropped_messages, inscript.dropped_bytes) == (1, sent)
    assert "huge" not in {s["name"] for s in spans_of(result.trace_id)}
    assert growth[0] < 64 * MiB, f"runner RSS grew by {growth[0] / MiB:.0f} MiB"


LIMITED = TracingConfig(
    max_attributes=8,
    max_events=4,
    span_limits={
        "max_links": 3,
        "max_event_attributes": 2,
        "max_link_attributes": 2,
        "max_attribute_length": 16,
        "max_span_attribute_length": 64,
    },
)


async def test_span_limits_are_applied_to_what_arrives(
    make_script, traces_file, spans_of, monkeypatch
):
    """300 one-MiB attributes written straight to the channel (30 spans of 10, each
    message under the size limit) arrive cut to the session's limits: 8 attributes of 64
    characters each (the newest, as the SDK keeps), the rest counted as dropped; events,
    links and their attributes are limited too. Every jsonl line stays small."""
    # Another bound than the run's span budget is under test here: lift that one.
    monkeypatch.setattr(channel_module, "MAX_RUN_SPAN_BYTES", 1 << 40)
    script = make_script(
        PRELUDE
        + """
blob = "v" * (1 << 20)
for k in range(30):
    data = span("big%d" % k, k + 1, a={"a%d" % i: blob for i in range(10)})
    if k == 0:
        small = "u" * 1000
        data["ev"] = [["e%d" % i, 5, {"x": small, "y": 1, "z": 2}] for i in range(10)]
        data["l"] = [[TRACE, "%016x" % (100 + i), 1, {"p": small, "q": 1, "r": 2}]
                     for i in range(5)]
    message(os.getpid(), json.dumps({"s": [data]}).encode())
"""
    )
    result = await ScriptRunner(script, config=LIMITED, monitor=False).run()
    assert result.success, (result.error or "") + result.stderr
    assert result.export.ok, result.export.describe()
    spans = {s["name"]: s for s in spans_of(result.trace_id)}
    big = [spans[f"big{k}"] for k in range(30)]
    for span in big:
        assert sorted(span["attrs"]) == sorted(f"a{i}" for i in range(2, 10))
        assert all(value == "v" * 64 for value in span["attrs"].values())
        assert span["droppedAttributesCount"] == 2
    first = big[0]
    assert [e["name"] for e in first["events"]] == ["e6", "e7", "e8", "e9"]
    assert first["droppedEventsCount"] == 6
    for event in first["events"]:
        assert event["droppedAttributesCount"] == 1
        assert {a["key"] for a in event["attributes"]} == {"y", "z"}
    assert [link["spanId"] for link in first["links"]] == [f"{100 + i:016x}" for i in (2, 3, 4)]
    assert first["droppedLinksCount"] == 2
    assert all(link["droppedAttributesCount"] == 1 for link in first["links"])
    longest = max(len(line) for line in traces_file.read_text().splitlines())
    assert longest < 256 * 1024, f"a jsonl line of {longest} bytes"
    # 30 spans x (2 attributes dropped + 8 cut) + 6 events + 10 event attributes cut or
    # dropped... at least the span attributes' 300.
    inscript = result.export.inscript
    assert inscript.limited >= 300 and inscript.received == 30
    assert spans["execute_script"]["attrs"]["aiorunner.inscript.limited"] == inscript.limited


async def test_span_limits_reach_a_real_scripts_sdk(make_script, traces_file, spans_of):
    """A real script setting 300 one-MiB attributes with the OTel API: the session's
    limits are handed to the script's SDK, so it sends 8 attributes of 64 characters
    (nothing over the size limit, nothing dropped by the runner)."""
    script = make_script(
        """
        from opentelemetry import trace
        blob = "w" * (1 << 20)
        with trace.get_tracer("t").start_as_current_span("wide") as span:
            for i in range(300):
                span.set_attribute(f"a{i}", blob)
        """
    )
    result = await ScriptRunner(script, config=LIMITED, monitor=False).run()
    assert result.success, (result.error or "") + result.stderr
    assert result.export.ok and result.export.inscript.dropped_messages == 0
    [wide] = [s for s in spans_of(result.trace_id) if s["name"] == "wide"]
    assert sorted(wide["attrs"]) == sorted(f"a{i}" for i in range(292, 300))
    assert all(value == "w" * 64 for value in wide["attrs"].values())
    assert wide["droppedAttributesCount"] == 292
    assert max(len(line) for line in traces_file.read_text().splitlines()) < 64 * 1024


async def test_garbage_messages_are_counted_with_few_warnings(make_script, spans_of, caplog):
    """100,000 unreadable messages of several kinds (not JSON, not an object, a span with
    a bad id, a time past 2^64, nesting too deep, no header): each is counted, at most
    MAX_WARNINGS warnings and one summary are logged (no other logger floods either),
    and a real span sent afterwards arrives."""
    caplog.set_level(logging.WARNING)
    script = make_script(
        PRELUDE
        + """
pid = os.getpid()
kinds = [
    b"not json at all",
    b"[1, 2, 3]",
    json.dumps({"s": [span("bad-id", 1, i="zz" * 8)]}).encode(),
    json.dumps({"s": [span("late", 2, e=2 ** 70)]}).encode(),
    json.dumps({"s": [span("dict", 3, a={"k": [[[[1]]]]}, ts="BAD STATE")]}).encode(),
    b"[" * 100_000,
]
for n in range(99_999):
    chunk(pid, 0, kinds[n % len(kinds)])
os.write(FD, b"abc")  # shorter than a header
from opentelemetry import trace
with trace.get_tracer("t").start_as_current_span("after-garbage"):
    pass
"""
    )
    started = time.monotonic()
    result = await ScriptRunner(script, monitor=False).run()
    assert result.success, (result.error or "") + result.stderr
    inscript = result.export.inscript
    assert inscript.dropped_messages == 100_000
    assert inscript.received == 1
    assert "after-garbage" in {s["name"] for s in spans_of(result.trace_id)}
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    ours = [r for r in warnings if r.name == "aiorunner.inscript"]
    assert len(ours) == MAX_WARNINGS + 1, [r.getMessage() for r in ours]
    assert "100000 messages" in ours[-1].getMessage()
    assert len(warnings) <= MAX_WARNINGS + 3, [r.getMessage()[:100] for r in warnings]
    assert time.monotonic() - started < 120  # a hang guard, not a timing assert


async def test_a_run_sends_at_most_its_span_budget(make_script, spans_of, caplog):
    """120 whole span messages of 1.6 MB each (192 MB, each under MAX_MESSAGE_BYTES, never
    more than one unfinished): once the run has sent MAX_RUN_SPAN_BYTES, further spans are
    dropped and counted for the trace (RunResult.export.inscript.dropped_spans) with one
    warning, those before it arrive, and the runner does not grow by what was sent."""
    await _warm_up(make_script)
    caplog.set_level(logging.WARNING, logger="aiorunner")
    script = make_script(
        PRELUDE
        + """
for k in range(120):
    data = {"s": [span("b%d" % k, k + 1, a={"pad": "q" * 1_600_000})]}
    message(os.getpid(), json.dumps(data).encode())
"""
    )
    assert 120 * 1_600_000 > 2 * MAX_RUN_SPAN_BYTES
    with peak_rss_growth() as growth:
        result = await ScriptRunner(script, monitor=False).run()
    assert result.success, (result.error or "") + result.stderr
    inscript = result.export.inscript
    arrived = [s for s in spans_of(result.trace_id) if s["name"].startswith("b")]
    assert inscript.received == len(arrived)
    assert 30 <= len(arrived) <= MAX_RUN_SPAN_BYTES // 1_600_000
    assert inscript.dropped_spans == 120 - len(arrived)
    assert inscript.dropped_messages == 0
    assert result.export.dropped >= 120 - len(arrived)
    assert caplog.text.count("MAX_RUN_SPAN_BYTES") == 1
    assert growth[0] < 8 * MAX_RUN_SPAN_BYTES, f"grew {growth[0] / MiB:.0f} MiB"
