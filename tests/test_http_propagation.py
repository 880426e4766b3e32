"""
HTTP requests made inside ``runner.tracer.trace(...)`` carry the trace context by
themselves (issue 16 item 1; the seed's "Context Propagation" section and Example 2): the
HTTP client libraries with an OpenTelemetry instrumentation installed are instrumented on
the first use of the tracer API, and in Python scripts through the bootstrap, unless
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS`` names them.

Checked against real HTTP servers on 127.0.0.1 that record the headers they received;
the seed's Example 2 runs verbatim (``https://api.example.com/data``) through a local
HTTPS proxy that answers for that host with a throwaway certificate. Each first use of
the tracer API runs in a fresh interpreter (a subprocess): instrumenting is once per
process.
"""

from __future__ import annotations

import ast
import http.client
import json
import os
import ssl
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from aiorunner import ScriptRunner
from aiorunner._context.bootstrap import BOOTSTRAP_DIR, _aiorunner_http

pytest.importorskip("opentelemetry.instrumentation.requests")
pytest.importorskip("opentelemetry.instrumentation.httpx")
pytest.importorskip("opentelemetry.instrumentation.urllib")

#: The seed's Example 2, verbatim but for the import (``from runner`` is the old name).
EXAMPLE_2 = """\
import requests
from aiorunner import ScriptRunner

def fetch_data():
    runner = ScriptRunner('data_fetcher.py')
    runner.enable_tracing = True
    
    with runner.tracer.trace("fetch_batch") as span:
        span.set_attribute("batch.id", "2024-10-23-001")
        
        # Trace context is automatically added to request headers
        response = requests.get("https://api.example.com/data")
        
        span.add_event("data_fetched", {
            "status_code": response.status_code,
            "size_kb": len(response.content) / 1024
        })
    
    return response.json()
"""

BODY = json.dumps({"rows": [1, 2, 3]}).encode()


class _Recorder(BaseHTTPRequestHandler):
    """Records each request's headers (names lowercased) and answers a JSON body. A
    CONNECT is answered as a proxy that terminates TLS itself (server.tls), so an
    https:// URL of any host reaches this same recorder."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.record(self.path, {k.lower(): v for k, v in self.headers.items()})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def do_CONNECT(self) -> None:
        self.send_response(200, "Connection established")
        self.end_headers()
        assert self.server.tls is not None
        tls = self.server.tls.wrap_socket(self.connection, server_side=True)
        try:
            reader = tls.makefile("rb")
            line = reader.readline().decode("latin-1").split()
            headers = http.client.parse_headers(reader)
            self.server.record(
                f"https://{self.path}{line[1]}", {k.lower(): v for k, v in headers.items()}
            )
            tls.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(BODY)}\r\nConnection: close\r\n\r\n".encode()
                + BODY
            )
        finally:
            tls.close()
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _Recorder)
        self.tls = tls
        self.received: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()

    def record(self, path: str, headers: dict[str, str]) -> None:
        with self._lock:
            self.received.append((path, headers))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def server() -> Iterator[_Server]:
    """A real HTTP server on 127.0.0.1 recording the headers of each request."""
    srv = _Server(None)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


@pytest.fixture
def https_proxy(tmp_path: Path) -> Iterator[tuple[_Server, Path]]:
    """The recorder as an HTTPS proxy on 127.0.0.1 answering for api.example.com with a
    throwaway self-signed certificate (returned: the client's CA bundle)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=api.example.com",
            "-addext",
            "subjectAltName=DNS:api.example.com",
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    srv = _Server(context)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield srv, cert
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def _spans(traces: Path) -> list[dict[str, Any]]:
    """Every span of the trace file, with its instrumentation scope's name."""
    spans = []
    if traces.exists():
        for line in traces.read_text().splitlines():
            for rs in json.loads(line)["resourceSpans"]:
                for ss in rs.get("scopeSpans", []):
                    spans.extend({**s, "scope": ss["scope"]["name"]} for s in ss["spans"])
    return spans


def _python(
    code: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (the first use of the tracer API there)."""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def _check(header: str, spans: list[dict[str, Any]], parent: dict[str, Any], scope: str) -> None:
    """The traceparent names the parent's trace and the request's client span, a child
    of ``parent`` recorded by the ``scope`` instrumentation."""
    version, trace_id, span_id, _flags = header.split("-")
    assert version == "00"
    assert trace_id == parent["traceId"]
    [client] = [s for s in spans if s["spanId"] == span_id]
    assert client["kind"] == 3  # SPAN_KIND_CLIENT
    assert client["parentSpanId"] == parent["spanId"]
    assert client["scope"] == f"opentelemetry.instrumentation.{scope}"


def test_seed_example_2_verbatim(tmp_path: Path, https_proxy, traces_file: Path) -> None:
    """The seed's Example 2, run as written (requests to https://api.example.com/data,
    routed through a local proxy): the request carries a traceparent naming the
    fetch_batch trace and the requests client span, a child of fetch_batch."""
    proxy, ca = https_proxy
    (tmp_path / "example2.py").write_text(EXAMPLE_2)
    (tmp_path / "data_fetcher.py").write_text("pass\n")
    proc = _python(
        "import example2, json; print(json.dumps(example2.fetch_data()))",
        tmp_path,
        {
            "HTTPS_PROXY": proxy.url,
            "https_proxy": proxy.url,
            "NO_PROXY": "",
            "no_proxy": "",
            "REQUESTS_CA_BUNDLE": str(ca),
        },
    )
    assert json.loads(proc.stdout) == {"rows": [1, 2, 3]}
    [(url, headers)] = proxy.received
    assert url == "https://api.example.com:443/data"
    spans = _spans(traces_file)
    [batch] = [s for s in spans if s["name"] == "fetch_batch"]
    _check(headers["traceparent"], spans, batch, "requests")
    assert [e["name"] for e in batch.get("events", [])] == ["data_fetched"]


CLIENTS = {
    "httpx": ("httpx", "import httpx\nhttpx.get(URL)"),
    "httpx-async": (
        "httpx",
        (
            "import asyncio, httpx\n"
            "async def go():\n"
            "    async with httpx.AsyncClient() as client:\n"
            "        await client.get(URL)\n"
            "asyncio.run(go())"
        ),
    ),
    "urllib": ("urllib", "import urllib.request\nurllib.request.urlopen(URL).read()"),
    "aiohttp": (
        "aiohttp_client",
        (
            "import asyncio, aiohttp\n"
            "async def go():\n"
            "    async with aiohttp.ClientSession() as session:\n"
            "        async with session.get(URL) as response:\n"
            "            await response.read()\n"
            "asyncio.run(go())"
        ),
    ),
}

TRACED = """\
import sys
from aiorunner import ScriptRunner
URL = sys.argv[1] if len(sys.argv) > 1 else {url!r}
runner = ScriptRunner("data_fetcher.py")
with runner.tracer.trace("fetch_batch"):
{body}
"""


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_other_clients_inside_tracer_span(
    client: str, tmp_path: Path, server: _Server, traces_file: Path
) -> None:
    """httpx (sync and async), urllib and aiohttp, imported before the first span or
    inside it: each request carries the traceparent of its own client span, a child of
    the tracer's span."""
    if client == "aiohttp":
        pytest.importorskip("opentelemetry.instrumentation.aiohttp_client")
    scope, body = CLIENTS[client]
    (tmp_path / "data_fetcher.py").write_text("pass\n")
    code = TRACED.format(url=server.url + "/data", body=textwrap.indent(body, "    "))
    _python(code, tmp_path)
    [(_, headers)] = server.received
    spans = _spans(traces_file)
    [batch] = [s for s in spans if s["name"] == "fetch_batch"]
    _check(headers["traceparent"], spans, batch, scope)


def test_trace_span_function_request(tmp_path: Path, server: _Server, traces_file: Path) -> None:
    """A request inside a @trace_span function carries that span's context too."""
    code = textwrap.dedent(f"""\
        import requests
        from aiorunner import trace_span

        @trace_span("load")
        def load():
            requests.get({server.url + "/x"!r})

        load()
        """)
    _python(code, tmp_path)
    [(_, headers)] = server.received
    spans = _spans(traces_file)
    [load] = [s for s in spans if s["name"] == "load"]
    _check(headers["traceparent"], spans, load, "requests")


def test_outside_any_span_no_header_and_unused_clients_not_imported(
    tmp_path: Path, server: _Server
) -> None:
    """After the first span, a request outside any span sends no traceparent (no span
    of ours, no trace); client libraries the program never imported stay unimported,
    and one imported but never used has no instrumentation loaded."""
    code = textwrap.dedent(f"""\
        import sys, urllib.request
        from aiorunner import ScriptRunner
        with ScriptRunner("data_fetcher.py").tracer.trace("first"):
            pass
        urllib.request.urlopen({server.url + "/outside"!r}).read()
        import requests  # imported, never used
        print(sorted(m for m in ("httpx", "aiohttp") if m in sys.modules))
        print(sorted(m for m in sys.modules if m.startswith("opentelemetry.instrumentation.")))
        """)
    (tmp_path / "data_fetcher.py").write_text("pass\n")
    proc = _python(code, tmp_path)
    [(_, headers)] = server.received
    assert "traceparent" not in headers
    unused, instrumentations = proc.stdout.splitlines()
    assert unused == "[]"
    assert "opentelemetry.instrumentation.requests" not in instrumentations
    assert "opentelemetry.instrumentation.urllib" in instrumentations  # it was used


def test_disabled_instrumentations(tmp_path: Path, server: _Server, traces_file: Path) -> None:
    """OTEL_PYTHON_DISABLED_INSTRUMENTATIONS names entry points (comma-separated,
    spaces allowed): 'requests' leaves requests out but urllib3, which requests sends
    through, still carries the context; 'requests, urllib3' sends no header at all."""
    (tmp_path / "data_fetcher.py").write_text("pass\n")
    code = TRACED.format(url=server.url, body="    import requests\n    requests.get(URL)")
    _python(code, tmp_path, {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "requests"})
    [(_, headers)] = server.received
    spans = _spans(traces_file)
    [batch] = [s for s in spans if s["name"] == "fetch_batch"]
    _check(headers["traceparent"], spans, batch, "urllib3")

    server.received.clear()
    _python(code, tmp_path, {"OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "requests, urllib3"})
    [(_, headers)] = server.received
    assert "traceparent" not in headers


def test_missing_instrumentation_is_named_once(tmp_path: Path, server: _Server) -> None:
    """httpx used without its instrumentation (hidden from the import system): one
    WARNING naming the package to install and how to silence it, whatever the number
    of requests; no header."""
    code = TRACED.format(
        url=server.url,
        body=(
            "    import httpx\n"
            "    for _ in range(3):\n"
            "        with runner.tracer.trace('again'):\n"
            "            httpx.get(URL)"
        ),
    )
    code = "import sys\nsys.modules['opentelemetry.instrumentation.httpx'] = None\n" + code
    (tmp_path / "data_fetcher.py").write_text("pass\n")
    proc = _python(code, tmp_path)
    assert proc.stderr.count("pip install opentelemetry-instrumentation-httpx") == 1, proc.stderr
    assert "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=httpx" in proc.stderr
    assert len(server.received) == 3
    assert all("traceparent" not in headers for _, headers in server.received)


FETCH = """\
import sys, requests
requests.get(sys.argv[1], timeout=10)
print(sorted(m for m in sys.modules if m.startswith("opentelemetry.instrumentation.")))
"""


async def test_script_request_carries_the_runs_context(
    make_script, server: _Server, traces_file: Path
) -> None:
    """A Python script run by ScriptRunner, nothing asked: its requests call carries a
    traceparent of the run's trace, naming the script's client span (a child of
    execute_script); urllib3, used by requests under its span, adds no span."""
    result = await ScriptRunner(make_script(FETCH), [server.url + "/s"]).run()
    assert result.success, result.error
    [(_, headers)] = server.received
    spans = _spans(traces_file)
    [execute] = [s for s in spans if s["name"] == "execute_script"]
    assert execute["traceId"] == result.trace_id
    _check(headers["traceparent"], spans, execute, "requests")
    assert not [s for s in spans if s["scope"].endswith("urllib3")]


async def test_script_disabled_and_missing(
    make_script, server: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a script: OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=* sends no header and loads no
    instrumentation; an instrumentation missing for the script's interpreter is named
    once on its stderr (with the interpreter), whatever the number of requests."""
    monkeypatch.setenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "*")
    result = await ScriptRunner(make_script(FETCH), [server.url]).run()
    assert result.success, result.error
    assert result.stdout.strip() == "[]"
    [(_, headers)] = server.received
    assert "traceparent" not in headers

    monkeypatch.delenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS")
    server.received.clear()
    hidden = (
        "import sys\n"
        "sys.modules['opentelemetry.instrumentation.httpx'] = None\n"
        "import httpx\n"
        "for _ in range(2):\n"
        "    httpx.get(sys.argv[1])\n"
    )
    result = await ScriptRunner(make_script(hidden, "hidden.py"), [server.url]).run()
    assert result.success, result.error
    message = "pip install opentelemetry-instrumentation-httpx"
    assert result.stderr.count(message) == 1, result.stderr
    assert f"not installed for {sys.executable}" in result.stderr
    assert all("traceparent" not in headers for _, headers in server.received)


def test_bootstrap_watches_the_same_libraries() -> None:
    """sitecustomize's watched modules (kept import-free for start-up) mirror the
    table of _aiorunner_http: same modules, same entry point names."""
    tree = ast.parse(Path(BOOTSTRAP_DIR, "sitecustomize.py").read_text())
    [watched] = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(getattr(t, "id", "") == "_HTTP_MODULES" for t in node.targets)
    ]
    assert ast.literal_eval(watched) == {
        lib.module: lib.name for lib in _aiorunner_http.LIBRARIES.values()
    }
