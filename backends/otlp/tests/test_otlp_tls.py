"""aiorunner-otlp over TLS and mutual TLS, against receivers with certificates made by the
openssl command line (a throwaway CA for 127.0.0.1)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from aiorunner_otlp import create_backend
from receivers import OtlpGrpcReceiver, OtlpHttpReceiver, TlsFiles

from aiorunner import TracingConfig
from aiorunner.backend import ExportStatus

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")

PROTOCOLS = {OtlpGrpcReceiver: "grpc", OtlpHttpReceiver: "http/protobuf"}


def _openssl(*args: str, cwd) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(directory, name: str, subject: str, extensions: str) -> None:
    """A P-256 key and a certificate for it signed by the test CA."""
    (directory / f"{name}.cnf").write_text(extensions + "\n")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.cnf",
        cwd=directory,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate."""
    directory = tmp_path_factory.mktemp("pki")
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=aiorunner test CA",
        cwd=directory,
    )  # fmt: skip
    _issue(directory, "server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost")
    _issue(directory, "client", "/CN=aiorunner-client", "extendedKeyUsage=clientAuth")
    return directory


def _config(receiver, **options) -> TracingConfig:
    options["otlp_protocol"] = PROTOCOLS[type(receiver)]
    return TracingConfig(collector_endpoint=receiver.endpoint, backend_options=options).resolve()


@pytest.mark.parametrize("receiver_class", [OtlpGrpcReceiver, OtlpHttpReceiver])
async def test_tls_with_the_certificate_variable(pki, spans, monkeypatch, receiver_class):
    """https:// plus OTEL_EXPORTER_OTLP_CERTIFICATE naming the CA: the spans arrive."""
    tls = TlsFiles(str(pki / "server.pem"), str(pki / "server.key"))
    with receiver_class(tls=tls) as receiver:
        assert receiver.endpoint.startswith("https://")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(pki / "ca.pem"))
        backend = create_backend(_config(receiver))
        assert not backend.settings.insecure
        result = await backend.export(spans, timeout=5)
        assert result.ok, result.error
        assert len(receiver.spans) == 2


@pytest.mark.parametrize("receiver_class", [OtlpGrpcReceiver, OtlpHttpReceiver])
async def test_untrusted_certificate_is_permanent(pki, spans, receiver_class):
    """Without the CA the collector's certificate is not trusted: a permanent error saying
    which variable to set (retrying cannot fix it), and nothing arrives."""
    tls = TlsFiles(str(pki / "server.pem"), str(pki / "server.key"))
    with receiver_class(tls=tls) as receiver:
        result = await create_backend(_config(receiver)).export(spans, timeout=5)
        assert result.status is ExportStatus.PERMANENT
        assert "OTEL_EXPORTER_OTLP_CERTIFICATE" in result.error
        assert receiver.requests == []


@pytest.mark.parametrize("receiver_class", [OtlpGrpcReceiver, OtlpHttpReceiver])
async def test_mutual_tls_with_client_key_and_certificate(pki, spans, monkeypatch, receiver_class):
    """A receiver that demands a client certificate accepts the one named by the
    TRACES_CLIENT_KEY/CLIENT_CERTIFICATE variables."""
    tls = TlsFiles(str(pki / "server.pem"), str(pki / "server.key"), str(pki / "ca.pem"))
    with receiver_class(tls=tls) as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", str(pki / "ca.pem"))
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", str(pki / "client.key"))
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", str(pki / "client.pem"))
        result = await create_backend(_config(receiver)).export(spans, timeout=5)
        assert result.ok, result.error
        assert len(receiver.spans) == 2
