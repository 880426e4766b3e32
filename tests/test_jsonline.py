"""
The logs and metrics files' lines (issue 21): encoded by orjson when installed, read back
exactly as the stdlib would have written them, valid JSON where the stdlib's was not
(NaN), and still written when orjson refuses a value (a lone surrogate).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

from opentelemetry.sdk.resources import Resource

from aiorunner._export.logs import decode_logs_request, encode_logs_line, encode_logs_request
from aiorunner._export.metrics import (
    GAUGE,
    SUM,
    MetricPointData,
    decode_metrics_request,
    encode_metrics_line,
    encode_metrics_request,
)
from aiorunner.backend import LogRecordData

RESOURCE = Resource({"service.name": "etl", "host.name": "h"})


def points() -> list[MetricPointData]:
    common = {"aiorunner.job.name": "job é", "aiorunner.run.id": "r1"}
    return [
        MetricPointData(
            name="process.cpu.time",
            unit="s",
            kind=SUM,
            time_unix_nano=1_700_000_000_000_000_000,
            start_time_unix_nano=1_699_999_999_000_000_000,
            value=0.25,
            attributes={**common, "cpu.mode": "user"},
            monotonic=True,
            temporality=2,
            resource=RESOURCE,
        ),
        MetricPointData(
            name="process.thread.count",
            unit="{thread}",
            kind=GAUGE,
            time_unix_nano=1_700_000_000_000_000_000,
            value=2**40,
            attributes=common,
            resource=RESOURCE,
        ),
    ]


def record(body: str) -> LogRecordData:
    return LogRecordData(
        time_unix_nano=1_700_000_000_000_000_000,
        observed_time_unix_nano=1_700_000_000_000_000_001,
        severity_number=9,
        severity_text="INFO",
        body=body,
        attributes={"log.iostream": "stdout"},
        trace_id=0xBF6E2E58BFB25ED22D417EDF100B62EA,
        span_id=0xB457EF328E12C3B1,
        trace_flags=1,
        resource=RESOURCE,
    )


def test_lines_read_back_as_the_stdlib_encoding() -> None:
    """A metrics line and a logs line parse to exactly the request the stdlib encoder
    wrote (same keys, values, order), one line each, and decode to the same items."""
    line = encode_metrics_line(points())
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == json.loads(json.dumps(encode_metrics_request(points())))
    assert decode_metrics_request(json.loads(line)) == decode_metrics_request(
        encode_metrics_request(points())
    )
    records = [record("hello"), record("naïve ✓")]
    line = encode_logs_line(records)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == encode_logs_request(records)
    assert [r.body for r in decode_logs_request(json.loads(line))] == ["hello", "naïve ✓"]


def test_a_nan_point_is_valid_json() -> None:
    """A NaN value is written as null (strict JSON: the Collector's parser rejects the
    stdlib's bare NaN), and the rest of the line is intact."""
    nan = points()[0]
    nan.value = math.nan
    line = encode_metrics_line([nan])
    request = json.loads(line, parse_constant=lambda name: pytest_fail(name))
    (metric,) = request["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
    assert metric["sum"]["dataPoints"][0]["asDouble"] is None
    assert metric["name"] == "process.cpu.time"


def pytest_fail(name: str) -> None:
    raise AssertionError(f"the line holds the non-JSON constant {name}")


def test_a_lone_surrogate_still_makes_a_line() -> None:
    """Output that was not valid UTF-8 (a lone surrogate) is not lost: the line is
    written with the character replaced, as before."""
    line = encode_logs_line([record("bad \udcff byte"), record("next")])
    request = json.loads(line)
    bodies = [
        r["body"]["stringValue"]
        for rl in request["resourceLogs"]
        for sl in rl["scopeLogs"]
        for r in sl["logRecords"]
    ]
    assert bodies == ["bad ? byte", "next"]


def test_orjson_is_used_when_installed_and_not_imported_by_aiorunner_itself() -> None:
    """Encoding a line loads orjson (the fast path is taken); ``import aiorunner`` does
    not."""
    code = (
        "import sys, aiorunner; assert 'orjson' not in sys.modules;"
        "from aiorunner._export.metrics import encode_metrics_line;"
        "assert 'orjson' not in sys.modules;"
        "encode_metrics_line([]); print('orjson' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
