"""
OTEL_* configuration as the OpenTelemetry specification has it (issue 15, items 2, 3, 4
and 8), each case in a fresh interpreter (``python -m aiorunner run``: the environment is
read at start-up) against a real receiver (OTLP/gRPC, OTLP/HTTP, Zipkin) or the jsonl
file, asserting on what arrived:

- a bad OTEL_* value is one WARNING (variable, value, what is used instead, the fix), the
  default is used and the script runs; an exporter name that is not installed is left out
  and the others export; the same values given explicitly stay errors;
- Booleans are true only for ``true``; a Timeout of 0 is no limit;
  OTEL_ATTRIBUTE_COUNT_LIMIT bounds span attributes; OTEL_TRACES_SAMPLER_ARG is read only
  by samplers that take it; ``http/json`` sends OTLP/JSON;
- an OTLP endpoint alone selects the otlp exporter;
- ``aiorunner run`` takes the OTEL_* settings as opentelemetry-instrument-style flags.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from aiorunner import ConfigError, TracingConfig
from aiorunner._config import collect_env_problems

if TYPE_CHECKING:
    from pathlib import Path

    from receivers import OtlpGrpcReceiver, OtlpHttpReceiver, ZipkinReceiver

#: What one run of a script records (at least): the root and its phases.
RUN_SPANS = 6


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``aiorunner run ARGS`` in a fresh interpreter, with ``env`` over this one's."""
    return subprocess.run(
        [sys.executable, "-m", "aiorunner", "run", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=60,
        check=False,
    )


def warnings_in(stderr: str, variable: str) -> list[str]:
    """The warning lines of ``stderr`` about ``variable``."""
    return [line for line in stderr.splitlines() if line.startswith(f"{variable}=")]


@pytest.fixture
def script(make_script) -> str:
    return str(make_script("import os; print('ran', os.environ.get('OTEL_SERVICE_NAME'))"))


# ------------------------------------------------------------------ item 2: warn, ignore


def test_bad_values_warn_once_and_the_run_exports_with_the_defaults(
    otlp_grpc_receiver: OtlpGrpcReceiver, make_script
) -> None:
    """An unknown sampler, a bad sampler argument, a bad queue size, a bad OTLP timeout and
    an unknown exporter beside a good one: the scripts run (two of them, one process),
    each problem is ONE warning naming the variable, the value, what is used instead and
    the fix (not one per run), and every span reaches the collector."""
    scripts = [str(make_script("print('ran')", name=f"s{i}.py")) for i in range(2)]
    proc = run(
        "-j",
        "2",
        *scripts,
        env={
            "OTEL_TRACES_EXPORTER": "otlp,xray",
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_grpc_receiver.endpoint,
            "OTEL_TRACES_SAMPLER": "xray",
            "OTEL_BSP_MAX_QUEUE_SIZE": "lots",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "soon",
        },
    )
    assert proc.returncode == 0, proc.stderr
    sampler = (
        "OTEL_TRACES_SAMPLER='xray' is not a known sampler; using the default "
        "parentbased_always_on instead. Fix: set OTEL_TRACES_SAMPLER to one of always_on, "
        "always_off, traceidratio, parentbased_always_on, parentbased_always_off, "
        "parentbased_traceidratio, tailbased, or unset it"
    )
    assert warnings_in(proc.stderr, "OTEL_TRACES_SAMPLER") == [sampler]
    queue = (
        "OTEL_BSP_MAX_QUEUE_SIZE='lots' is not an integer; using the default 2048 instead. "
        "Fix: set OTEL_BSP_MAX_QUEUE_SIZE to an integer >= 1, or unset it"
    )
    assert warnings_in(proc.stderr, "OTEL_BSP_MAX_QUEUE_SIZE") == [queue]
    [timeout] = warnings_in(proc.stderr, "OTEL_EXPORTER_OTLP_TIMEOUT")
    assert "using the default 10000 ms instead" in timeout
    [exporter] = warnings_in(proc.stderr, "OTEL_TRACES_EXPORTER")
    assert exporter.startswith("OTEL_TRACES_EXPORTER='otlp,xray' names 'xray', which is no ")
    assert "using otlp instead. Fix: remove 'xray' from OTEL_TRACES_EXPORTER" in exporter
    spans = otlp_grpc_receiver.wait_for_spans_sync(2 * RUN_SPANS)
    assert [s.name for s in spans].count("ScriptRunner") == 2


def test_sampler_argument_out_of_range_is_ignored(otlp_http_receiver: OtlpHttpReceiver, script):
    """OTEL_TRACES_SAMPLER_ARG=abc for traceidratio: the run behaves as if it were not set
    (ratio 1.0: the trace is recorded and arrives), with one warning."""
    proc = run(
        script,
        env={
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_http_receiver.endpoint,
            "OTEL_TRACES_SAMPLER": "traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "abc",
        },
    )
    assert proc.returncode == 0, proc.stderr
    [warning] = warnings_in(proc.stderr, "OTEL_TRACES_SAMPLER_ARG")
    assert "is not a number; using the default 1.0 instead" in warning
    assert "ScriptRunner" in [s.name for s in otlp_http_receiver.wait_for_spans_sync(RUN_SPANS)]


def test_exporter_not_installed_is_left_out_and_the_rest_export(
    zipkin_receiver: ZipkinReceiver, script
) -> None:
    """OTEL_TRACES_EXPORTER=zipkin,zipkin_proto where zipkin_proto's package is not
    installed: one warning naming the package to install; Zipkin still gets the run."""
    proc = run(
        script,
        env={
            "OTEL_TRACES_EXPORTER": "zipkin,zipkin_proto",
            "OTEL_EXPORTER_ZIPKIN_ENDPOINT": zipkin_receiver.url,
        },
    )
    assert proc.returncode == 0, proc.stderr
    [warning] = warnings_in(proc.stderr, "OTEL_TRACES_EXPORTER")
    assert "'zipkin_proto', which is not installed: it is provided by " in warning
    assert "Fix: install opentelemetry-exporter-zipkin-proto-http, or remove" in warning
    names = [s["name"] for s in zipkin_receiver.wait_for_spans_sync(RUN_SPANS)]
    assert "ScriptRunner" in names


def test_no_exporter_left_means_the_default(script, traces_file: Path, spans_in) -> None:
    """Every name of OTEL_TRACES_EXPORTER unknown: the setting is ignored as a whole, the
    default (the jsonl file here) takes the run."""
    proc = run(script, env={"OTEL_TRACES_EXPORTER": "xray"})
    assert proc.returncode == 0, proc.stderr
    [warning] = warnings_in(proc.stderr, "OTEL_TRACES_EXPORTER")
    assert "using the default jsonl instead" in warning
    assert "ScriptRunner" in [s["name"] for s in spans_in(traces_file)]


def test_explicit_values_stay_errors(script) -> None:
    """What the caller wrote is not ignored: --exporter xray is a usage error (exit 2)
    naming the installed backends, and TracingConfig(sampler=...) raises."""
    proc = run("--exporter", "xray", script)
    assert proc.returncode == 2
    assert "unknown backend 'xray'; installed:" in proc.stderr
    assert "ran" not in proc.stdout
    with pytest.raises(ConfigError, match="sampler='xray' is not a known sampler"):
        TracingConfig(sampler="xray").resolve({})


def test_declarative_config_file_is_warned_about(script, traces_file: Path, spans_in) -> None:
    """OTEL_EXPERIMENTAL_CONFIG_FILE (aiorunner reads no such file) is one warning saying
    the OTEL_* variables are used instead; the run goes on with them."""
    proc = run(
        script,
        env={"OTEL_EXPERIMENTAL_CONFIG_FILE": "/etc/otel/sdk.yaml", "OTEL_SERVICE_NAME": "etl"},
    )
    assert proc.returncode == 0, proc.stderr
    [warning] = warnings_in(proc.stderr, "OTEL_EXPERIMENTAL_CONFIG_FILE")
    assert "names a declarative configuration file, which aiorunner does not read" in warning
    assert "using the other OTEL_* variables instead" in warning
    [root] = [s for s in spans_in(traces_file) if s["name"] == "ScriptRunner"]
    assert root["resource"]["service.name"] == "etl"


def test_bad_limit_does_not_turn_in_script_tracing_off(make_script, traces_file, spans_in):
    """A malformed OTEL_SPAN_LINK_COUNT_LIMIT, which the SDK raises on when it reads it
    itself, is warned about once by the runner and the script's own spans still arrive
    (the in-script bootstrap passes every limit explicitly)."""
    script = make_script(
        "from opentelemetry import trace\n"
        "with trace.get_tracer('s').start_as_current_span('inner'):\n"
        "    print('in')\n"
    )
    proc = run(str(script), env={"OTEL_SPAN_LINK_COUNT_LIMIT": "x"})
    assert proc.returncode == 0, proc.stderr
    assert len(warnings_in(proc.stderr, "OTEL_SPAN_LINK_COUNT_LIMIT")) == 1
    assert "in-script tracing is off" not in proc.stderr
    assert "inner" in [s["name"] for s in spans_in(traces_file)]


# ------------------------------------------------------- item 3: spec defaults and types


@pytest.mark.parametrize(("value", "disabled"), [("TRUE", True), ("1", False), ("yes", False)])
def test_sdk_disabled_is_true_only_for_true(script, traces_file, spans_in, value, disabled):
    """OTEL_SDK_DISABLED disables only for a case-insensitive "true"; 1 and yes are
    warned about and read as false: the run is traced."""
    proc = run(script, env={"OTEL_SDK_DISABLED": value})
    assert proc.returncode == 0, proc.stderr
    traced = "ScriptRunner" in [s["name"] for s in spans_in(traces_file)]
    assert traced is not disabled
    warned = warnings_in(proc.stderr, "OTEL_SDK_DISABLED")
    assert len(warned) == (0 if disabled else 1)
    if warned:
        assert "using false (tracing stays on) instead" in warned[0]


@pytest.mark.parametrize("variable", ["OTEL_BSP_EXPORT_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"])
def test_export_timeouts_of_zero_mean_no_limit(
    otlp_http_receiver: OtlpHttpReceiver, script, variable
) -> None:
    """OTEL_BSP_EXPORT_TIMEOUT=0 or OTEL_EXPORTER_OTLP_TIMEOUT=0 is a Timeout of 0: no
    limit. The export succeeds (before, the first failed every export at once and the
    second stopped the run) and nothing is warned about."""
    proc = run(
        "--json",
        script,
        env={
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_http_receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            variable: "0",
        },
    )
    assert proc.returncode == 0, proc.stderr
    assert "OTEL_" not in proc.stderr
    export = json.loads(proc.stdout)["export"]
    assert export["ok"] is True
    [backend] = export["backends"]
    assert (backend["name"], backend["failed"]) == ("otlp", 0)
    assert "ScriptRunner" in [s.name for s in otlp_http_receiver.wait_for_spans_sync(RUN_SPANS)]


def test_attribute_count_limit_applies_to_span_attributes(make_script, traces_file, spans_in):
    """OTEL_ATTRIBUTE_COUNT_LIMIT bounds the attributes of every span (the runner's and the
    script's own) when OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT is not set; the rest is counted."""
    script = make_script(
        "from opentelemetry import trace\n"
        "with trace.get_tracer('s').start_as_current_span('wide') as s:\n"
        "    for i in range(10): s.set_attribute(f'a{i}', i)\n"
    )
    proc = run(str(script), env={"OTEL_ATTRIBUTE_COUNT_LIMIT": "3"})
    assert proc.returncode == 0, proc.stderr
    spans = {s["name"]: s for s in spans_in(traces_file)}
    assert len(spans["wide"]["attrs"]) == 3
    assert spans["wide"]["droppedAttributesCount"] == 7
    assert len(spans["ScriptRunner"]["attrs"]) == 3
    assert int(spans["ScriptRunner"]["droppedAttributesCount"]) > 0


def test_sampler_argument_is_read_only_by_samplers_that_take_one(script, traces_file, spans_in):
    """always_on takes no argument: OTEL_TRACES_SAMPLER_ARG is not read (neither used nor
    warned about; before, 'abc' stopped the run with exit 2)."""
    proc = run(script, env={"OTEL_TRACES_SAMPLER": "always_on", "OTEL_TRACES_SAMPLER_ARG": "abc"})
    assert proc.returncode == 0, proc.stderr
    assert "OTEL_TRACES_SAMPLER_ARG" not in proc.stderr
    assert "ScriptRunner" in [s["name"] for s in spans_in(traces_file)]
    config = TracingConfig.from_env(
        {"OTEL_TRACES_SAMPLER": "always_on", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
    )
    assert config.sample_rate == 1.0
    assert config.sources["sample_rate"] == (
        "default (OTEL_TRACES_SAMPLER_ARG is not read by always_on)"
    )


def test_http_json_protocol_sends_otlp_json(otlp_http_receiver: OtlpHttpReceiver, script):
    """OTEL_EXPORTER_OTLP_PROTOCOL=http/json: the run's spans arrive as OTLP/JSON
    (application/json; the receiver refuses base64 ids and enum names)."""
    proc = run(
        script,
        env={
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_http_receiver.endpoint,
        },
    )
    assert proc.returncode == 0, proc.stderr
    spans = otlp_http_receiver.wait_for_spans_sync(RUN_SPANS)
    assert {r.content_type for r in otlp_http_receiver.requests} == {"application/json"}
    root = next(s for s in spans if s.name == "ScriptRunner")
    children = [s for s in spans if s.parent_span_id == root.span_id]
    assert children and all(s.trace_id == root.trace_id for s in children)


# ------------------------------------------------------- item 4: an endpoint means otlp


@pytest.mark.parametrize(
    "variable", ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
)
def test_an_otlp_endpoint_alone_selects_otlp(
    otlp_grpc_receiver: OtlpGrpcReceiver, script, traces_file: Path, variable
) -> None:
    """No exporter named, only an OTLP endpoint variable (what platforms inject): the
    spec's default, otlp, takes the run; the jsonl file is not written."""
    proc = run(script, env={variable: otlp_grpc_receiver.endpoint})
    assert proc.returncode == 0, proc.stderr
    assert "ScriptRunner" in [s.name for s in otlp_grpc_receiver.wait_for_spans_sync(RUN_SPANS)]
    assert not traces_file.exists()


def test_an_invalid_endpoint_selects_nothing(script, traces_file: Path, spans_in) -> None:
    """An OTLP endpoint variable that is not a URL is ignored (one warning): with nothing
    else named, the jsonl default stays."""
    proc = run(script, env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://:4317"})
    assert proc.returncode == 0, proc.stderr
    [warning] = warnings_in(proc.stderr, "OTEL_EXPORTER_OTLP_ENDPOINT")
    assert "is not a valid endpoint; using the embedded jsonl file instead" in warning
    assert "ScriptRunner" in [s["name"] for s in spans_in(traces_file)]


def test_default_exporter_rule_in_the_config() -> None:
    """TracingConfig says which rule chose: jsonl with nothing set, otlp for an endpoint,
    and an explicit exporter_type or OTEL_TRACES_EXPORTER wins over the endpoint."""
    assert TracingConfig.from_env({}).exporters == ("jsonl",)
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}
    config = TracingConfig.from_env(endpoint)
    assert config.exporters == ("otlp",)
    assert config.sources["exporter_type"] == "default: OTEL_EXPORTER_OTLP_ENDPOINT is set"
    assert TracingConfig.from_env(endpoint, exporter_type="jsonl").exporters == ("jsonl",)
    assert TracingConfig.from_env({**endpoint, "OTEL_TRACES_EXPORTER": "console"}).exporters == (
        "console",
    )


# ------------------------------------------------------------- item 8: the CLI flags


def test_otel_flags_configure_the_export(otlp_http_receiver: OtlpHttpReceiver, script):
    """--traces_exporter, --exporter_otlp_protocol, --exporter_otlp_traces_endpoint,
    --exporter_otlp_headers and --service_name work as their variables (the script sees
    OTEL_SERVICE_NAME too), and win over the shell's values."""
    proc = run(
        "--traces_exporter",
        "otlp",
        "--exporter_otlp_protocol",
        "http/protobuf",
        "--exporter_otlp_traces_endpoint",
        otlp_http_receiver.url,
        "--exporter_otlp_headers",
        "x-api-key=s3cret",
        "--service_name",
        "flagged",
        script,
        env={"OTEL_SERVICE_NAME": "from-shell", "OTEL_TRACES_EXPORTER": "jsonl"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ran flagged\n"
    spans = otlp_http_receiver.wait_for_spans_sync(RUN_SPANS)
    assert {s.service_name for s in spans} == {"flagged"}
    assert otlp_http_receiver.requests[0].headers["x-api-key"] == "s3cret"


def test_otel_flag_values_are_usage_errors(script) -> None:
    """A flag's bad value is the caller's: exit 2 naming the flag, the value and the fix,
    and the script does not start (the same values in the environment would warn)."""
    proc = run("--traces_sampler", "xray", "--exporter_otlp_timeout", "soon", script)
    assert proc.returncode == 2
    assert "--traces_sampler='xray' is not a known sampler; give --traces_sampler one of" in (
        proc.stderr
    )
    proc = run("--traces_exporter", "otlp", "--exporter_otlp_timeout", "soon", script)
    assert proc.returncode == 2
    assert "--exporter_otlp_timeout='soon' is not a number of milliseconds" in proc.stderr
    proc = run("--propagators", "tracecontext,xray", script)
    assert proc.returncode == 2
    assert "--propagators='tracecontext,xray' names unknown propagator 'xray'" in proc.stderr
    assert proc.stdout == ""


def test_otel_flags_are_listed_in_help() -> None:
    """run --help lists the OTEL flags in a section of their own, named by the rule."""
    proc = run("--help")
    assert proc.returncode == 0
    help_text = proc.stdout
    assert "OpenTelemetry options" in help_text
    for flag in ("--traces_exporter", "--exporter_otlp_endpoint", "--service_name",
                 "--exporter_otlp_protocol", "--exporter_otlp_headers", "--bsp_export_timeout"):  # fmt: skip
        assert flag in help_text
    assert help_text.index("--exporter ") < help_text.index("OpenTelemetry options")


def test_every_variable_we_read_has_a_flag() -> None:
    """The flag table and the variables TracingConfig reads agree (a variable added to
    one without the other fails here)."""
    from aiorunner import _config
    from aiorunner.cli.otel_options import OTEL_OPTIONS

    read = {
        value
        for name, value in vars(_config).items()
        if name.startswith("OTEL_") and isinstance(value, str)
    }
    read -= {"OTEL_EXPERIMENTAL_CONFIG_FILE", "OTEL_CONFIG_FILE"}  # not read: warned about
    flagged = {variable for variable, _, _ in OTEL_OPTIONS}
    assert read <= flagged


def test_ignored_values_are_kept_on_the_config() -> None:
    """resolve() keeps what it ignored in config.ignored (and reports each through
    report_env_problem, which collect_env_problems sees)."""
    env = {"OTEL_BSP_SCHEDULE_DELAY": "-5", "OTEL_RESOURCE_ATTRIBUTES": "team"}
    with collect_env_problems(log=False) as problems:
        config = TracingConfig.from_env(env)
    assert config.schedule_delay == 5.0 and config.resource_attributes == {}
    assert [p.variable for p in config.ignored] == [
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_BSP_SCHEDULE_DELAY",
    ]
    assert problems == list(config.ignored)


def test_zero_export_timeout_in_code_means_no_limit_too() -> None:
    """export_timeout=0 (or export_timeout_ms=0) given in code is the same Timeout of 0:
    no limit, kept as the largest 32-bit number of milliseconds, and sources say so."""
    for kwargs in ({"export_timeout": 0}, {"export_timeout_ms": 0}):
        config = TracingConfig(**kwargs).resolve({})
        assert config.export_timeout == 2147483.647
        assert config.export_timeout_ms == 2**31 - 1
        assert config.sources["export_timeout"] == "argument (0: no limit)"
