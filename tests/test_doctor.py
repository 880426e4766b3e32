"""`aiorunner doctor` against real receivers on 127.0.0.1: a live collector (exit 0, the
test span arrives), a closed port, wrong protocol for the port, TLS mismatches, rejected
auth, legacy Jaeger ports, an unwritable trace file; secrets never printed."""

from __future__ import annotations

import json
import re
import socket
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from receivers import OtlpGrpcReceiver, OtlpHttpReceiver, TlsFiles, ZipkinReceiver

from aiorunner.cli import main


def doctor(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["doctor", "--timeout", "3", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout + result.stderr


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def otlp_env(monkeypatch: pytest.MonkeyPatch):
    def configure(endpoint: str, protocol: str = "grpc", **extra: str) -> None:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint)
        for key, value in extra.items():
            monkeypatch.setenv(key, value)

    return configure


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throwaway self-signed certificate for 127.0.0.1."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return TlsFiles(str(cert), str(key))


def test_live_grpc_collector_exit_0_and_span_arrives(
    otlp_grpc_receiver: OtlpGrpcReceiver, otlp_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a live OTLP/gRPC receiver: exit 0, and the test span really arrived, with
    the configured service name."""
    otlp_env(otlp_grpc_receiver.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "billing")
    code, out = doctor()
    assert code == 0, out
    assert "✓ otlp" in out
    assert "Traces would arrive." in out
    (span,) = otlp_grpc_receiver.wait_for_spans_sync(1)
    assert span.name == "aiorunner.doctor"
    assert span.service_name == "billing"
    assert "service_name            billing" in out
    assert "env OTEL_SERVICE_NAME" in out


def test_live_http_collector_exit_0(otlp_http_receiver: OtlpHttpReceiver, otlp_env) -> None:
    """OTLP/HTTP to a live receiver: exit 0, the span arrived at /v1/traces."""
    otlp_env(otlp_http_receiver.url, "http/protobuf")
    code, out = doctor()
    assert code == 0, out
    assert [s.name for s in otlp_http_receiver.wait_for_spans_sync(1)] == ["aiorunner.doctor"]


def test_closed_port_says_nothing_listens(otlp_env) -> None:
    """Nobody on the port: exit 1 and the fix names host:port and the variable to set."""
    port = closed_port()
    otlp_env(f"http://127.0.0.1:{port}")
    code, out = doctor()
    assert code == 1
    assert "✗ otlp" in out
    assert f"fix: nothing is listening on 127.0.0.1:{port}" in out
    assert "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in out
    assert "Traces would NOT arrive" in out


def test_rejected_auth_names_the_header_variable_not_its_value(
    otlp_grpc_receiver: OtlpGrpcReceiver, otlp_env
) -> None:
    """A receiver requiring another token: exit 1, the fix points at the header variable,
    and the token sent never appears in the output."""
    otlp_grpc_receiver.require_header("authorization", "Bearer right-token")
    otlp_env(
        otlp_grpc_receiver.endpoint,
        OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer%20wrong-token-123",
    )
    code, out = doctor()
    assert code == 1
    assert "UNAUTHENTICATED" in out
    assert "rejected the credentials" in out
    assert "OTEL_EXPORTER_OTLP_HEADERS" in out
    assert "header names sent: authorization (values not shown)" in out
    assert re.search(r"OTEL_EXPORTER_OTLP_HEADERS +authorization=\[secure\]\n", out)
    assert "wrong-token-123" not in out
    assert otlp_grpc_receiver.spans == []


def test_http_401_is_explained(otlp_http_receiver: OtlpHttpReceiver, otlp_env) -> None:
    """The same over OTLP/HTTP (401)."""
    otlp_http_receiver.require_header("x-api-key", "good")
    otlp_env(otlp_http_receiver.url, "http/protobuf", OTEL_EXPORTER_OTLP_HEADERS="x-api-key=bad")
    code, out = doctor()
    assert code == 1
    assert "401" in out
    assert "rejected the credentials" in out
    assert "=bad" not in out


def test_grpc_to_an_http_port(otlp_http_receiver: OtlpHttpReceiver, otlp_env) -> None:
    """gRPC aimed at an OTLP/HTTP port (4318-like): the fix says which protocol speaks
    there and what to change."""
    otlp_env(otlp_http_receiver.endpoint)
    code, out = doctor()
    assert code == 1
    assert "speaks HTTP/1.1 (an OTLP/HTTP port, like 4318), not gRPC" in out
    assert "port 4317 for gRPC" in out
    assert "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf" in out


def test_http_to_a_grpc_port(otlp_grpc_receiver: OtlpGrpcReceiver, otlp_env) -> None:
    """OTLP/HTTP aimed at a gRPC port (4317-like): the fix says so."""
    otlp_env(otlp_grpc_receiver.endpoint + "/v1/traces", "http/protobuf")
    code, out = doctor()
    assert code == 1
    assert "speaks gRPC (HTTP/2, like port 4317), not OTLP/HTTP" in out
    assert "OTEL_EXPORTER_OTLP_PROTOCOL=grpc" in out


def test_tls_client_to_plaintext_collector(otlp_http_receiver: OtlpHttpReceiver, otlp_env) -> None:
    """https:// to a plaintext receiver: use http://."""
    otlp_env(otlp_http_receiver.url.replace("http://", "https://"), "http/protobuf")
    code, out = doctor()
    assert code == 1
    assert "does not speak TLS: use http://" in out


def test_tls_grpc_client_to_plaintext_grpc(otlp_grpc_receiver: OtlpGrpcReceiver, otlp_env) -> None:
    """gRPC with TLS to a plaintext gRPC receiver: use http:// or INSECURE=true."""
    otlp_env(otlp_grpc_receiver.endpoint.replace("http://", "https://"))
    code, out = doctor()
    assert code == 1
    assert "speaks gRPC without TLS" in out
    assert "OTEL_EXPORTER_OTLP_INSECURE=true" in out


def test_plaintext_client_to_tls_collector(tls_files: TlsFiles, otlp_env) -> None:
    """http:// to a TLS receiver: use https://."""
    with OtlpHttpReceiver(tls=tls_files) as receiver:
        url = receiver.url.replace("https://", "http://")
        otlp_env(url, "http/protobuf")
        code, out = doctor()
    assert code == 1
    assert "expects TLS: use https://" in out


def test_tls_collector_with_its_certificate_works(tls_files: TlsFiles, otlp_env) -> None:
    """The positive TLS case: https:// plus the CA file, exit 0 and the span arrives."""
    with OtlpHttpReceiver(tls=tls_files) as receiver:
        otlp_env(
            receiver.url.replace("http://", "https://"),
            "http/protobuf",
            OTEL_EXPORTER_OTLP_CERTIFICATE=tls_files.cert_file,
        )
        code, out = doctor()
        assert code == 0, out
        assert [s.name for s in receiver.wait_for_spans_sync(1)] == ["aiorunner.doctor"]


def test_legacy_jaeger_ports(monkeypatch: pytest.MonkeyPatch, otlp_env) -> None:
    """The jaeger backend refuses 6831 outright; an otlp endpoint on 14250 gets the same
    advice: use OTLP on 4317/4318."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jaeger")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:6831")
    code, out = doctor()
    assert code == 1
    assert "6831" in out
    assert "4317" in out
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    otlp_env("http://127.0.0.1:14250")
    code, out = doctor()
    assert code == 1
    assert "port 14250 is Jaeger's collector port for its own gRPC model" in out
    assert "http://127.0.0.1:4317" in out


def test_default_jsonl_is_fine(traces_file: Path) -> None:
    """With nothing configured the embedded file is checked (not written): exit 0."""
    code, out = doctor()
    assert code == 0, out
    assert f"✓ jsonl  → {traces_file}" in out
    assert not traces_file.exists()


def test_unwritable_trace_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trace file path that cannot be created: exit 1, fix names the variable."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("AIORUNNER_TRACES_FILE", str(blocker / "traces.jsonl"))
    code, out = doctor()
    assert code == 1
    assert "is not a directory" in out
    assert "fix: set AIORUNNER_TRACES_FILE to a writable path" in out


def test_disabled_tracing_is_not_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_SDK_DISABLED=true: no trace would arrive, so exit 1, saying why."""
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    code, out = doctor()
    assert code == 1
    assert "tracing is turned off (env OTEL_SDK_DISABLED)" in out


def test_invalid_configuration() -> None:
    """A bad explicit value (--endpoint) makes the configuration invalid: exit 1, the
    option named as the command line spells it (issue 16 item 4) and what is accepted."""
    code, out = doctor("--endpoint", "not a url at all")
    assert code == 1
    assert "invalid: --endpoint='not a url at all' is not a valid endpoint" in out
    assert "collector_endpoint" not in out


def test_ignored_environment_values_are_problems(
    monkeypatch: pytest.MonkeyPatch, traces_file: Path
) -> None:
    """Bad OTEL_* values, which a run warns about and replaces by the default, are each a
    problem here (exit 1), with the value, what is used instead and the fix, and the
    backends are still checked (the jsonl file would take the spans)."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "sometimes")
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "lots")
    monkeypatch.setenv("OTEL_EXPERIMENTAL_CONFIG_FILE", "/etc/otel.yaml")
    code, out = doctor()
    assert code == 1
    assert "Ignored settings" in out
    assert "✗ OTEL_TRACES_SAMPLER='sometimes' is not a known sampler" in out
    assert "used instead: the default parentbased_always_on" in out
    assert "✗ OTEL_BSP_MAX_QUEUE_SIZE='lots' is not an integer" in out
    assert "fix: set OTEL_BSP_MAX_QUEUE_SIZE to an integer >= 1, or unset it" in out
    assert "✗ OTEL_EXPERIMENTAL_CONFIG_FILE='/etc/otel.yaml' names a declarative" in out
    assert f"✓ jsonl  → {traces_file}" in out
    assert "settings above are ignored" in out


def test_unknown_exporter_from_the_environment_is_a_problem(
    monkeypatch: pytest.MonkeyPatch, traces_file: Path
) -> None:
    """OTEL_TRACES_EXPORTER naming a backend that is not installed: reported with the
    package to install, and the check runs on what a run would use (the rest)."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "jsonl,zipkin_proto")
    code, out = doctor("--json")
    assert code == 1
    report = json.loads(out)
    [problem] = report["ignored"]
    assert problem["variable"] == "OTEL_TRACES_EXPORTER"
    assert "opentelemetry-exporter-zipkin-proto-http" in problem["message"]
    assert [c["name"] for c in report["checks"]] == ["jsonl"]
    assert "runs use jsonl" in report["exporter_rule"]


@pytest.mark.parametrize(
    ("env", "rule"),
    [
        ({}, "jsonl: no exporter is named and no OTLP endpoint is set"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "ENDPOINT"},
            "otlp: no exporter is named and OTEL_EXPORTER_OTLP_ENDPOINT is set",
        ),
        ({"OTEL_TRACES_EXPORTER": "jsonl"}, "jsonl: named by OTEL_TRACES_EXPORTER"),
    ],
)
def test_doctor_says_which_rule_chose_the_exporter(
    monkeypatch: pytest.MonkeyPatch, otlp_grpc_receiver: OtlpGrpcReceiver, env, rule
) -> None:
    """The report names the rule behind the exporters: the jsonl default, the otlp
    default an endpoint variable selects (and the test span then reaches that
    collector), or OTEL_TRACES_EXPORTER."""
    for key, value in env.items():
        monkeypatch.setenv(key, otlp_grpc_receiver.endpoint if value == "ENDPOINT" else value)
    code, out = doctor()
    assert code == 0, out
    assert f"Exporters  {rule}" in out
    if "OTEL_EXPORTER_OTLP_ENDPOINT" in env:
        assert [s.name for s in otlp_grpc_receiver.wait_for_spans_sync(1)] == ["aiorunner.doctor"]


def test_unknown_backend_and_missing_factory_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown name lists the installed ones; one bad backend among good ones makes the
    whole verdict non-zero while the good one is still checked."""
    code, out = doctor("--exporter", "jsonl,zipkn")
    assert code == 1
    assert "✓ jsonl" in out
    assert "✗ zipkn" in out
    assert "unknown backend 'zipkn'" in out


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch, traces_file: Path) -> None:
    """Vendor keys, header values, secret-looking resource attributes and URL passwords
    print as [secure]."""
    monkeypatch.setenv("NEW_RELIC_LICENSE_KEY", "nr-secret-1")
    monkeypatch.setenv("HONEYCOMB_API_KEY", "hc-secret-2")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-token=tok-secret-3,team=a")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deploy.env=prod,api_key=res-secret-4")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "https://user:url-secret-5@example.test")
    code, out = doctor("--exporter", "jsonl")
    assert code == 0, out
    for secret in ("nr-secret-1", "hc-secret-2", "tok-secret-3", "res-secret-4", "url-secret-5"):
        assert secret not in out
    assert "NEW_RELIC_LICENSE_KEY" in out
    assert "x-token=[secure],team=[secure]" in out
    assert "api_key=[secure]" in out
    assert "deploy.env=prod" in out
    assert "https://user:[secure]@example.test" in out


def test_json_report(otlp_grpc_receiver: OtlpGrpcReceiver) -> None:
    """--json: one object with the verdict, settings with sources, installed backends and
    per-backend checks; --endpoint counts as an argument."""
    code, out = doctor("--json", "--exporter", "otlp", "--endpoint", otlp_grpc_receiver.endpoint)
    assert code == 0, out
    report = json.loads(out)
    assert report["ok"] is True
    settings = {s["name"]: s for s in report["settings"]}
    assert settings["collector_endpoint"]["source"] == "argument"
    assert settings["exporter_type"]["value"] == "otlp"
    assert {b["name"] for b in report["installed"]} >= {"jsonl", "otlp", "none"}
    (check,) = report["checks"]
    assert check["name"] == "otlp"
    assert check["ok"] is True
    assert otlp_grpc_receiver.endpoint in check["target"]


def test_zipkin_live_and_down(
    zipkin_receiver: ZipkinReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The zipkin backend: a live receiver gets the test span (exit 0); with nothing
    listening the fix names OTEL_EXPORTER_ZIPKIN_ENDPOINT."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    monkeypatch.setenv("OTEL_EXPORTER_ZIPKIN_ENDPOINT", zipkin_receiver.url)
    code, out = doctor()
    assert code == 0, out
    assert [s["name"] for s in zipkin_receiver.wait_for_spans_sync(1)] == ["aiorunner.doctor"]
    port = closed_port()
    monkeypatch.setenv("OTEL_EXPORTER_ZIPKIN_ENDPOINT", f"http://127.0.0.1:{port}/api/v2/spans")
    code, out = doctor()
    assert code == 1
    assert f"nothing is listening on 127.0.0.1:{port}" in out
    assert "OTEL_EXPORTER_ZIPKIN_ENDPOINT" in out


def test_missing_vendor_key_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A vendor preset without its key variable: exit 1 and the variable is named."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "honeycomb")
    code, out = doctor()
    assert code == 1
    assert "✗ honeycomb" in out
    assert "HONEYCOMB_API_KEY" in out
    assert "fix: change the setting the message above names" in out


def test_logs_and_metrics_files_are_shown_beside_the_traces_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no AIORUNNER_LOGS_FILE / AIORUNNER_METRICS_FILE, doctor names the files the
    jsonl backend writes: logs.jsonl and metrics.jsonl beside the traces file."""
    monkeypatch.setenv("AIORUNNER_TRACES_FILE", str(tmp_path / "t" / "traces.jsonl"))
    _, out = doctor()
    assert f"{tmp_path / 't' / 'logs.jsonl'} (beside the traces file)" in out
    assert f"{tmp_path / 't' / 'metrics.jsonl'} (beside the traces file)" in out
