"""
The OTEL_* settings as flags of ``aiorunner run``, the way ``opentelemetry-instrument``
takes them: the flag is the variable's name without ``OTEL_``, lowercased
(``OTEL_EXPORTER_OTLP_ENDPOINT`` -> ``--exporter_otlp_endpoint``), and giving it sets that
variable for the command (aiorunner's own export and the script's environment see it, as
if it had been exported in the shell; it wins over the shell's value).

Everything comes from :data:`OTEL_OPTIONS`, one table (variable, metavar, help); the flags,
their help section and the README list are made from it. A flag's value is the caller's
own: where the same value in the environment would be warned about and ignored (the
specification's rule for environment variables), on the command line it is a usage error
(exit 2) naming the flag, the value and the fix.

Only click is imported here: ``aiorunner run --help`` stays light.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from .._config import EnvProblem

__all__ = ["OTEL_OPTIONS", "PREFIX", "flag_of", "otel_environment", "otel_options"]

#: The click parameter names of these flags start with this (``otel_service_name``).
PREFIX = "otel_"

#: (variable, metavar, help): every OTEL_* variable aiorunner or its backends read.
OTEL_OPTIONS: tuple[tuple[str, str, str], ...] = (
    ("OTEL_SDK_DISABLED", "true|false", "true turns tracing off"),
    ("OTEL_SERVICE_NAME", "NAME", "service.name of the traces"),
    ("OTEL_RESOURCE_ATTRIBUTES", "K=V,...", "resource attributes (percent-encoded values)"),
    ("OTEL_TRACES_EXPORTER", "NAMES", "backends (jsonl; otlp if an OTLP endpoint is set)"),
    ("OTEL_LOGS_EXPORTER", "NAMES", "where the scripts' output goes as logs (default: as traces)"),
    ("OTEL_METRICS_EXPORTER", "NAMES", "where the runs' metrics go (default: as traces)"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "MS", "metrics of a running script leave this often (10000)"),
    ("OTEL_METRIC_EXPORT_TIMEOUT", "MS", "deadline of one metrics export (default 30000)"),
    ("OTEL_PROPAGATORS", "NAMES", "context formats (default tracecontext,baggage)"),
    ("OTEL_TRACES_SAMPLER", "NAME", "sampler (default parentbased_always_on)"),
    ("OTEL_TRACES_SAMPLER_ARG", "RATIO", "argument of the *traceidratio and tailbased samplers"),
    ("OTEL_BSP_SCHEDULE_DELAY", "MS", "longest wait before a batch leaves (default 5000)"),
    ("OTEL_BSP_EXPORT_TIMEOUT", "MS", "deadline of one export, 0 = no limit (default 30000)"),
    ("OTEL_BSP_MAX_QUEUE_SIZE", "N", "spans waiting for export (default 2048)"),
    ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "N", "spans per export (default 512)"),
    ("OTEL_BLRP_SCHEDULE_DELAY", "MS", "longest wait before log records leave (default 1000)"),
    ("OTEL_BLRP_EXPORT_TIMEOUT", "MS", "deadline of one logs export (default 30000)"),
    ("OTEL_BLRP_MAX_QUEUE_SIZE", "N", "log records waiting (default 2048; then reading waits)"),
    ("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "N", "log records per export (default 512)"),
    ("OTEL_ATTRIBUTE_COUNT_LIMIT", "N", "attributes per span, event and link (default 128)"),
    ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "N", "longest attribute value (default no limit)"),
    ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "N", "attributes per span"),
    ("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "N", "longest span attribute value"),
    ("OTEL_SPAN_EVENT_COUNT_LIMIT", "N", "events per span (default 128)"),
    ("OTEL_SPAN_LINK_COUNT_LIMIT", "N", "links per span (default 128)"),
    ("OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT", "N", "attributes per span event"),
    ("OTEL_LINK_ATTRIBUTE_COUNT_LIMIT", "N", "attributes per span link"),
    ("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", "NAMES", "resource detectors to run"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "URL", "OTLP collector (base URL for HTTP)"),
    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "URL", "OTLP traces URL, used as is"),
    ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "URL", "OTLP logs URL, used as is"),
    ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "PROTOCOL", "the protocol, for logs"),
    ("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "K=V,...", "the headers, for logs"),
    ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "URL", "OTLP metrics URL, used as is"),
    ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "PROTOCOL", "the protocol, for metrics"),
    ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "K=V,...", "the headers, for metrics"),
    (
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
        "cumulative|delta|lowmemory",
        "metrics temporality (default cumulative)",
    ),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "PROTOCOL", "grpc, http/protobuf or http/json"),
    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "PROTOCOL", "the same, for traces"),
    ("OTEL_EXPORTER_OTLP_HEADERS", "K=V,...", "OTLP headers (values are secrets)"),
    ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "K=V,...", "the same, for traces"),
    ("OTEL_EXPORTER_OTLP_TIMEOUT", "MS", "one OTLP request, 0 = no limit (default 10000)"),
    ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "MS", "the same, for traces"),
    ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip|none", "OTLP compression"),
    ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip|none", "the same, for traces"),
    ("OTEL_EXPORTER_OTLP_INSECURE", "true|false", "plaintext gRPC to a host:port"),
    ("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "true|false", "the same, for traces"),
    ("OTEL_EXPORTER_OTLP_CERTIFICATE", "FILE", "CA certificate (PEM) of the collector"),
    ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "FILE", "the same, for traces"),
    ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "FILE", "client key (PEM) for mutual TLS"),
    ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "FILE", "the same, for traces"),
    ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "FILE", "client certificate (PEM)"),
    ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "FILE", "the same, for traces"),
    ("OTEL_EXPORTER_ZIPKIN_ENDPOINT", "URL", "Zipkin v2 spans URL"),
    ("OTEL_EXPORTER_ZIPKIN_TIMEOUT", "MS", "one Zipkin request, 0 = no limit"),
)  # fmt: skip


def flag_of(variable: str) -> str:
    """``OTEL_EXPORTER_OTLP_ENDPOINT`` -> ``--exporter_otlp_endpoint`` (the rule of
    opentelemetry-instrument)."""
    return "--" + variable.removeprefix("OTEL_").lower()


def _name_of(variable: str) -> str:
    return PREFIX + variable.removeprefix("OTEL_").lower()


def otel_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add one ``--name`` option per row of :data:`OTEL_OPTIONS` to a click command; the
    command receives them as keyword arguments named ``otel_<name>``."""
    for variable, metavar, help_text in reversed(OTEL_OPTIONS):
        command = click.option(
            flag_of(variable),
            _name_of(variable),
            metavar=metavar,
            default=None,
            help=f"{help_text}.",
        )(command)
    return command


def given(values: Mapping[str, Any]) -> dict[str, str]:
    """The variables set by the flags that were given: ``{OTEL_X: value}``."""
    by_name = {_name_of(variable): variable for variable, _, _ in OTEL_OPTIONS}
    return {
        by_name[name]: str(value)
        for name, value in values.items()
        if name in by_name and value is not None
    }


@contextlib.contextmanager
def otel_environment(flags: Mapping[str, str]) -> Iterator[None]:
    """Set the flags' variables in ``os.environ`` for the command, and put back what was
    there after it (the command line of one process; tests run many in one)."""
    saved = {variable: os.environ.get(variable) for variable in flags}
    os.environ.update(flags)
    try:
        yield
    finally:
        for variable, value in saved.items():
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value


def usage_message(problem: EnvProblem) -> str:
    """An ignored value that came from a flag, as the usage error it is."""
    flag = flag_of(problem.variable)
    fix = problem.fix.replace(f"set {problem.variable} to", f"give {flag}")
    fix = fix.replace(problem.variable, flag).replace("or unset it", "or leave it out")
    return f"{flag}={problem.value!r} {problem.reason.replace(problem.variable, flag)}; {fix}"


def format_help(command: click.Command, ctx: click.Context, formatter: click.HelpFormatter) -> None:
    """``--help``: the command's own options, then these in a section of their own."""
    own: list[tuple[str, str]] = []
    otel: list[tuple[str, str]] = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record is not None:
            (otel if (param.name or "").startswith(PREFIX) else own).append(record)
    if own:
        with formatter.section("Options"):
            formatter.write_dl(own)
    if otel:
        with formatter.section(
            "OpenTelemetry options (as opentelemetry-instrument's: --traces_exporter X sets "
            "OTEL_TRACES_EXPORTER=X for aiorunner and the script)"
        ):
            formatter.write_dl(otel)
