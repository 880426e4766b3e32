"""Instrumentations by name: ``auto_instrument('requests')`` in the runner process and in
the scripts it runs, ``instrument=`` / ``AIORUNNER_INSTRUMENT`` / ``--instrument`` for the
scripts. Checked against a real HTTP server on 127.0.0.1: the W3C traceparent that
arrived there belongs to the run's trace and to the client span in the trace file."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anyio.to_thread
import pytest

from aiorunner import ConfigError, ScriptRunner, auto_instrument
from aiorunner._context import instrument

pytest.importorskip("opentelemetry.instrumentation.requests")
requests = pytest.importorskip("requests")


class _Recorder(BaseHTTPRequestHandler):
    received: list[dict[str, str]]

    def do_GET(self) -> None:
        self.received.append({k.lower(): v for k, v in self.headers.items()})
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class HttpServer:
    def __init__(self) -> None:
        handler = type("Handler", (_Recorder,), {"received": []})
        self.received: list[dict[str, str]] = handler.received
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/data"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    """A real HTTP server on 127.0.0.1 recording each request's headers."""
    server = HttpServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def uninstrument_requests() -> Iterator[None]:
    """Undo auto_instrument() in this process after the test."""
    yield
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    if RequestsInstrumentor().is_instrumented_by_opentelemetry:
        RequestsInstrumentor().uninstrument()
    from aiorunner._context import instrument as _instrument

    _instrument._requested.clear()


FETCH = """\
import sys, requests
print(requests.get(sys.argv[1], timeout=10).text)
"""


def _is_request(span):
    """An HTTP client span: SPAN_KIND_CLIENT, but not execute_script (the CLI client span
    that spawned the script)."""
    return span.get("kind") == 3 and span["name"] != "execute_script"


def _client_span(spans):
    [client] = [s for s in spans if _is_request(s)]
    return client


def _check_request(server, spans, trace_id):
    """The header that arrived names the trace and the client span of the trace file."""
    [headers] = server.received
    _version, tid, sid, _flags = headers["traceparent"].split("-")
    assert tid == trace_id
    client = _client_span(spans)
    assert client["spanId"] == sid
    assert client["attrs"].get("http.request.method", client["attrs"].get("http.method")) == "GET"
    return client


@pytest.mark.parametrize("how", ["argument", "env"])
async def test_instrument_requests_inside_script(
    make_script, spans_of, http_server, monkeypatch, how
):
    """instrument=['requests'] (or AIORUNNER_INSTRUMENT=requests): the script's HTTP call
    becomes a client span under execute_script, and carries the traceparent."""
    kwargs = {}
    if how == "argument":
        kwargs["instrument"] = ["requests"]
    else:
        monkeypatch.setenv("AIORUNNER_INSTRUMENT", "requests")
    result = await ScriptRunner(make_script(FETCH), [http_server.url], **kwargs).run()
    assert result.success, result.error
    assert result.stdout.strip() == "ok"
    spans = spans_of(result.trace_id)
    client = _check_request(http_server, spans, result.trace_id)
    execute = next(s for s in spans if s["name"] == "execute_script")
    assert client["parentSpanId"] == execute["spanId"]


async def test_without_instrument_no_client_span(make_script, spans_of, http_server, monkeypatch):
    """Without asking, requests is instrumented inside the script (issue 16 item 1, see
    test_http_propagation.py); OTEL_PYTHON_DISABLED_INSTRUMENTATIONS naming requests and
    urllib3 (which requests sends through) leaves it alone: no header, no span."""
    monkeypatch.setenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "requests,urllib3")
    result = await ScriptRunner(make_script(FETCH), [http_server.url]).run()
    assert result.success, result.error
    [headers] = http_server.received
    assert "traceparent" not in headers
    assert not [s for s in spans_of(result.trace_id) if _is_request(s)]


async def test_auto_instrument_runner_process_and_children(
    make_script, spans_of, http_server, uninstrument_requests
):
    """auto_instrument('requests'): a call in the runner process inside
    runner.tracer.trace() is its child span; scripts run afterwards are instrumented
    too, without being told."""
    # Blocking (entry points, imports): from async code, in a worker thread.
    await anyio.to_thread.run_sync(auto_instrument, "requests")
    assert "requests" in instrument.requested()
    runner = ScriptRunner(make_script(FETCH), [http_server.url])
    async with runner.tracer.trace("fetch_batch") as batch:
        await anyio.to_thread.run_sync(lambda: requests.get(http_server.url, timeout=10))
    await runner.session.flush()
    trace_id = format(batch.get_span_context().trace_id, "032x")
    client = _check_request(http_server, spans_of(trace_id), trace_id)
    assert client["parentSpanId"] == format(batch.get_span_context().span_id, "016x")

    http_server.received.clear()
    result = await runner.run()
    assert result.success, result.error
    _check_request(http_server, spans_of(result.trace_id), result.trace_id)


def test_auto_instrument_unknown_name_names_the_package():
    """An instrumentation that is not installed: ConfigError naming the pip package."""
    with pytest.raises(ConfigError, match="pip install opentelemetry-instrumentation-nosuchlib"):
        auto_instrument("nosuchlib")


@pytest.mark.parametrize("bad", ["", "a,b", 3, "x y"])
def test_auto_instrument_rejects_bad_names(bad):
    """Names must be plain strings: ConfigError says what a name looks like."""
    with pytest.raises(ConfigError, match="instrumentation name"):
        auto_instrument(bad)


def test_auto_instrument_checks_all_before_instrumenting(uninstrument_requests):
    """A typo among valid names instruments nothing."""
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    if RequestsInstrumentor().is_instrumented_by_opentelemetry:
        # An earlier test's request after a tracer span (issue 16 item 1) did it.
        RequestsInstrumentor().uninstrument()
    with pytest.raises(ConfigError, match="nosuchlib"):
        auto_instrument("requests", "nosuchlib")
    assert not RequestsInstrumentor().is_instrumented_by_opentelemetry


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "aiorunner", "run", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_cli_instrument_unknown_is_a_usage_error(make_script):
    """aiorunner run --instrument nosuchlib: exit 2, naming the pip package."""
    proc = _cli("--instrument", "nosuchlib", str(make_script("pass")))
    assert proc.returncode == 2
    assert "pip install opentelemetry-instrumentation-nosuchlib" in proc.stderr


def test_cli_instrument_and_no_in_script_tracing(make_script, spans_of, http_server):
    """--instrument requests instruments the script; --no-in-script-tracing turns the
    script's spans off (and so its instrumentation)."""
    script = make_script(FETCH)
    proc = _cli("--instrument", "requests", str(script), http_server.url)
    assert proc.returncode == 0, proc.stderr
    trace_id = proc.stderr.strip().rsplit("trace ", 1)[1].split()[0]
    _check_request(http_server, spans_of(trace_id), trace_id)

    http_server.received.clear()
    proc = _cli("--instrument", "requests", "--no-in-script-tracing", str(script), http_server.url)
    assert proc.returncode == 0, proc.stderr
    trace_id = proc.stderr.strip().rsplit("trace ", 1)[1].split()[0]
    assert not [s for s in spans_of(trace_id) if _is_request(s)]
    [headers] = http_server.received
    assert "traceparent" not in headers


def test_auto_instrument_names_every_missing_package():
    """All the missing instrumentations are named at once, each with its pip package,
    and nothing is instrumented."""
    from aiorunner import auto_instrument

    with pytest.raises(ConfigError) as caught:
        auto_instrument("requests", "nosuchlib_a", "nosuchlib_b")
    message = str(caught.value)
    assert "nosuchlib_a, nosuchlib_b" in message
    assert (
        "pip install opentelemetry-instrumentation-nosuchlib-a "
        "opentelemetry-instrumentation-nosuchlib-b"
    ) in message
