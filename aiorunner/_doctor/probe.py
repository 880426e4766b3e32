"""
Finding out what answers at a collector endpoint, and the fix to print (``aiorunner
doctor``, after a test export failed).

One probe is enough in most cases: connect, send a plain HTTP/1.1 request, and read the
first bytes. An HTTP/1 server answers with a status line (an OTLP/HTTP or Zipkin port);
a gRPC server sends its HTTP/2 SETTINGS frame first whatever it receives (an OTLP/gRPC
port, plaintext); a TLS server answers with an alert record or closes. When unclear, a TLS
handshake (certificate not checked, ALPN h2/http1.1) settles it. The fix compares what was
found with what the backend was configured to speak.
"""

from __future__ import annotations

import errno
import re
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.streams.tls

__all__ = ["LEGACY_JAEGER_PORTS", "Endpoint", "Probe", "explain", "probe", "redact_url"]

#: Jaeger's pre-OTLP ports: agent UDP (thrift compact/binary, zipkin), collector gRPC/HTTP.
LEGACY_JAEGER_PORTS = {
    5775: "Jaeger's agent port for Zipkin Thrift over UDP",
    6831: "Jaeger's agent port for Thrift compact over UDP",
    6832: "Jaeger's agent port for Thrift binary over UDP",
    14250: "Jaeger's collector port for its own gRPC model (not OTLP)",
    14268: "Jaeger's collector port for Thrift over HTTP",
}
_PROBE_REQUEST = b"GET / HTTP/1.1\r\nHost: %s\r\nUser-Agent: aiorunner-doctor\r\n\r\n"


def redact_url(value: str) -> str:
    """Hide the password of ``scheme://user:password@host`` URLs."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return value
    if parts.password is None:
        return value
    netloc = f"{parts.username}:[secure]@{parts.hostname}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class Endpoint:
    """Where a backend sends, as far as the doctor can tell from the backend object."""

    url: str
    host: str
    port: int
    #: ``grpc``, ``http`` or ``None`` (unknown).
    protocol: str | None
    tls: bool
    #: Where the endpoint came from ("env OTEL_EXPORTER_OTLP_ENDPOINT", "default", ...).
    source: str | None = None
    header_names: tuple[str, ...] = ()
    #: The variable that sets this endpoint when nothing set it yet.
    variable: str = "OTEL_EXPORTER_OTLP_ENDPOINT"

    def describe(self) -> str:
        kind = {"grpc": "OTLP/gRPC", "http": "HTTP"}.get(self.protocol or "", "")
        where = f"{kind} {redact_url(self.url)}".strip()
        return where + (f" (from {self.source})" if self.source else "")


@dataclass(frozen=True)
class Probe:
    """What answers at host:port."""

    #: refused, unresolvable, timeout, http1, h2c (gRPC without TLS), tls, silent, error
    kind: str
    detail: str = ""
    #: For TLS: the protocol the server picked by ALPN ("h2" for gRPC, "http/1.1").
    alpn: str | None = None


async def probe(host: str, port: int, *, timeout: float = 3.0) -> Probe:
    """Connect to ``host:port`` and find out what speaks there: send a plain HTTP/1.1
    request and look at the first bytes (an HTTP/1 status line, an HTTP/2 SETTINGS frame
    as gRPC servers send first, a TLS alert), then try a TLS handshake if unclear."""
    try:
        with anyio.fail_after(timeout):
            stream = await anyio.connect_tcp(host, port)
    except TimeoutError:
        return Probe("timeout", f"no TCP answer within {timeout:g} s")
    except socket.gaierror as exc:
        return Probe("unresolvable", str(exc.strerror or exc))
    except OSError as exc:
        # anyio tries every address of the host and reports the last failure as the cause.
        causes = [exc, exc.__cause__, exc.__context__]
        refused = any(isinstance(c, OSError) and c.errno == errno.ECONNREFUSED for c in causes)
        return Probe("refused" if refused else "error", str(exc.__cause__ or exc))
    data = b""
    async with stream:
        try:
            await stream.send(_PROBE_REQUEST % host.encode("idna"))
            with anyio.move_on_after(min(timeout, 1.5)):
                # Enough to tell: a status line, or an HTTP/2 or TLS record header.
                while len(data) < 9 and not (data.startswith(b"HTTP/") and b"\n" in data):
                    data += await stream.receive(256)
                if data.startswith(b"HTTP/"):
                    with anyio.move_on_after(0.2):
                        while len(data) < 512:
                            data += await stream.receive(512)
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            pass
    if data.startswith(b"HTTP/"):
        if b"HTTPS" in data or b"https" in data:
            return Probe("tls", "answers plain HTTP with 'use HTTPS'")
        return Probe("http1", data.split(b"\r\n", 1)[0].decode("latin-1"))
    if len(data) >= 9 and data[3] in (0x04, 0x07):
        return Probe("h2c", "HTTP/2 without TLS")
    if data[:1] == b"\x15":
        return Probe("tls", "answered with a TLS alert")
    return await _probe_tls(host, port, timeout)


async def _probe_tls(host: str, port: int, timeout: float) -> Probe:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    try:
        with anyio.fail_after(timeout):
            stream = await anyio.connect_tcp(
                host, port, tls=True, ssl_context=context, tls_standard_compatible=False
            )
    except (TimeoutError, OSError, ssl.SSLError, anyio.BrokenResourceError) as exc:
        return Probe("silent", f"no answer to HTTP nor TLS ({type(exc).__name__})")
    async with stream:
        alpn = stream.extra(anyio.streams.tls.TLSAttribute.alpn_protocol, None)
    return Probe("tls", "completed a TLS handshake", alpn)


def _endpoint_setting(source: str | None, variable: str) -> str:
    """The setting to change, named the way the user set it."""
    if source and source.startswith("env "):
        return source.removeprefix("env ")
    if source and ("collector_endpoint" in source or "argument" in source):
        return "the collector endpoint (--endpoint, TracingConfig.collector_endpoint)"
    if source and "option" in source:
        return source.replace("backend option ", "the backend option ")
    return variable


_AUTH = re.compile(r"\b(401|403|UNAUTHENTICATED|PERMISSION_DENIED)\b")


async def explain(
    endpoint: Endpoint,
    error: str,
    *,
    timeout: float = 3.0,
) -> str | None:
    """The fix for a failed test export to ``endpoint``, from the error and a probe."""
    where = f"{endpoint.host}:{endpoint.port}"
    var = _endpoint_setting(endpoint.source, endpoint.variable)
    legacy = LEGACY_JAEGER_PORTS.get(endpoint.port)
    legacy_fix = (
        f"port {endpoint.port} is {legacy}; Jaeger accepts OTLP natively: point {var} at "
        f"http://{endpoint.host}:4317 (OTLP/gRPC) or http://{endpoint.host}:4318 (OTLP/HTTP, "
        "with OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf)"
        if legacy
        else None
    )
    if _AUTH.search(error):
        sent = ", ".join(endpoint.header_names) or "none"
        return (
            f"the collector at {where} rejected the credentials: check the auth header "
            f"variable (OTEL_EXPORTER_OTLP_HEADERS, or the vendor's key variable); header "
            f"names sent: {sent} (values not shown)"
        )
    found = await probe(endpoint.host, endpoint.port, timeout=timeout)
    if legacy_fix:
        return legacy_fix
    if found.kind == "refused":
        return (
            f"nothing is listening on {where}: start the collector there, or point {var} "
            "at the host and port where it listens (OTLP: 4317 gRPC, 4318 HTTP)"
        )
    if found.kind == "unresolvable":
        return f"the host name {endpoint.host!r} does not resolve: check {var}"
    if found.kind == "timeout":
        return (
            f"{where} does not answer within {timeout:g} s: a firewall dropping packets, or "
            f"the wrong host in {var}"
        )
    if endpoint.protocol == "grpc":
        if found.kind == "http1":
            return (
                f"{where} speaks HTTP/1.1 (an OTLP/HTTP port, like 4318), not gRPC: point "
                f"{var} at port 4317 for gRPC, or send OTLP/HTTP there with "
                f"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf"
            )
        if found.kind == "tls" and not endpoint.tls:
            return (
                f"{where} expects TLS: use an https:// endpoint (or "
                "OTEL_EXPORTER_OTLP_INSECURE=false)"
            )
        if found.kind == "h2c" and endpoint.tls:
            return (
                f"{where} speaks gRPC without TLS: use an http:// endpoint (or "
                "OTEL_EXPORTER_OTLP_INSECURE=true)"
            )
    if endpoint.protocol == "http":
        if found.kind == "h2c" or (found.kind == "tls" and found.alpn == "h2" and endpoint.tls):
            return (
                f"{where} speaks gRPC (HTTP/2, like port 4317), not OTLP/HTTP: set "
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc, or point "
                f"{var} at the OTLP/HTTP port (4318)"
            )
        if found.kind == "tls" and not endpoint.tls:
            return f"{where} expects TLS: use https:// in {var}"
        if found.kind == "http1" and endpoint.tls:
            return f"{where} does not speak TLS: use http:// in {var}"
    return None
