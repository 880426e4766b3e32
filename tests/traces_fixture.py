"""
Hand-written trace files for the ``aiorunner traces`` tests: OTLP/JSON lines exactly as the
``jsonl`` backend writes them (hex ids, int64 as strings, AnyValue attributes), so exact
renderings can be compared. Loaded by path (tests are not a package).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: 2023-11-14 22:13:20 UTC
T0 = 1_700_000_000_000_000_000
MS = 1_000_000

TRACE_A = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE_B = "4bf92f3577b34da6a3ce929d0e0e9999"
TRACE_C = "0af7651916cd43dd8448eb211c80319c"


def value(v: Any) -> dict[str, Any]:
    """A Python value as an OTLP/JSON AnyValue."""
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, (list, tuple)):
        return {"arrayValue": {"values": [value(x) for x in v]}}
    return {"stringValue": str(v)}


def attrs(mapping: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [{"key": k, "value": value(v)} for k, v in (mapping or {}).items()]


def span(
    trace_id: str,
    span_id: str,
    parent: str | None,
    name: str,
    start_ms: float,
    end_ms: float | None,
    *,
    attributes: dict[str, Any] | None = None,
    events: list[tuple[str, float, dict[str, Any]]] | None = None,
    error: str | None = None,
    pending: bool = False,
    t0: int = T0,
) -> dict[str, Any]:
    """One span; ``pending`` writes the run-started marker (end 0, aiorunner.pending)."""
    attributes = dict(attributes or {})
    if pending:
        attributes["aiorunner.pending"] = True
    result: dict[str, Any] = {
        "traceId": trace_id,
        "spanId": span_id,
        "name": name,
        "kind": 1,
        "startTimeUnixNano": str(t0 + int(start_ms * MS)),
        "endTimeUnixNano": "0" if pending or end_ms is None else str(t0 + int(end_ms * MS)),
        "attributes": attrs(attributes),
        "status": {"code": 2, "message": error} if error else {},
    }
    if parent:
        result["parentSpanId"] = parent
    else:
        result["parentSpanId"] = ""
    if events:
        result["events"] = [
            {"timeUnixNano": str(t0 + int(at * MS)), "name": n, "attributes": attrs(a)}
            for n, at, a in events
        ]
    return result


def line(*spans: dict[str, Any], service: str = "aiorunner", scope: str = "aiorunner") -> str:
    """One ExportTraceServiceRequest line holding ``spans``."""
    request = {
        "resourceSpans": [
            {
                "resource": {"attributes": attrs({"service.name": service})},
                "scopeSpans": [{"scope": {"name": scope}, "spans": list(spans)}],
            }
        ]
    }
    return json.dumps(request, separators=(",", ":"))


def write(path: Path, *lines: str, truncated: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{ln}\n" for ln in lines) + truncated, encoding="utf-8")
    return path


def known_trace_lines(trace_id: str = TRACE_A, t0: int = T0) -> list[str]:
    """A finished run, as a pending marker and two batches: the seed's span tree plus two
    spans made inside the script (another scope), one of which failed."""
    root = "a000000000000001"
    execute = "a000000000000005"

    def s(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return span(trace_id, *args, t0=t0, **kwargs)

    marker = s(
        root,
        None,
        "ScriptRunner",
        0,
        None,
        pending=True,
        attributes={"code.filepath": "examples/etl.py"},
    )
    batch1 = [
        s(
            "a000000000000002",
            root,
            "extract_metadata",
            5,
            20,
            attributes={"code.filepath": "examples/etl.py", "aiorunner.script.size_bytes": 2048},
        ),
        s("a000000000000003", root, "validate_dependencies", 20, 60),
        s("a000000000000004", root, "setup_environment", 60, 70),
    ]
    batch2 = [
        s("b000000000000001", execute, "load_data", 200, 700, attributes={"rows": 1000}),
        s("b000000000000002", execute, "transform", 700, 1500, error="ValueError: bad row 17"),
        s(
            execute,
            root,
            "execute_script",
            70,
            1900,
            attributes={"process.pid": 4242, "process.exit.code": 0},
            events=[
                ("cpu_monitoring", 500, {"cpu.percent": 97.5}),
                ("memory_monitoring", 1000, {"memory.rss_bytes": 52428800}),
            ],
        ),
        s("a000000000000006", root, "collect_metrics", 1900, 1950),
        s("a000000000000007", root, "upload_traces", 1950, 2000),
        s(
            root,
            None,
            "ScriptRunner",
            0,
            2000,
            attributes={"code.filepath": "examples/etl.py", "process.exit.code": 0},
        ),
    ]
    return [
        line(marker),
        line(*batch1),
        line(batch2[0], batch2[1], scope="etl"),
        line(*batch2[2:]),
    ]


def live_entry(
    traces_file: Path,
    root: dict[str, Any],
    *,
    pid: int,
    process_start: float,
    host: str | None = None,
    service: str = "aiorunner",
) -> Path:
    """A live-runs entry beside ``traces_file`` for the running root span ``root`` (end
    0), as the ``jsonl`` backend writes it: the runner's pid, its creation time, host."""
    import socket

    directory = Path(str(traces_file) + ".live")
    directory.mkdir(parents=True, exist_ok=True)
    entry = {
        "format": 1,
        "pid": pid,
        "process_start": process_start,
        "host": socket.gethostname() if host is None else host,
        "request": json.loads(line(root, service=service)),
    }
    path = directory / f"{root['traceId']}-{root['spanId']}.json"
    path.write_text(json.dumps(entry) + "\n")
    return path
