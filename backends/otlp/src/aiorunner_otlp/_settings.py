"""
Where an OTLP backend sends, and how: ``OtlpSettings`` from config, options and OTEL_* env.

The variables mean what the OpenTelemetry specification ("OTLP Exporter Configuration")
says, so the same environment works for every OpenTelemetry SDK:

- every ``OTEL_EXPORTER_OTLP_X`` has a ``OTEL_EXPORTER_OTLP_TRACES_X`` twin that wins;
- for OTLP/HTTP the generic ``OTEL_EXPORTER_OTLP_ENDPOINT`` is a base URL that gets
  ``/v1/traces`` appended, while ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is used as is;
- ``*_TIMEOUT`` is in milliseconds (the Python SDK reads seconds: we follow the spec);
- ``*_HEADERS`` is ``key=value,key2=value2`` with percent-encoded values;
- ``*_INSECURE`` only matters for a gRPC endpoint written without ``http://``/``https://``;
  like every Boolean of the specification it is true only for ``true``;
- ``*_PROTOCOL`` is ``grpc``, ``http/protobuf`` or ``http/json`` (OTLP/JSON bodies).

A variable that cannot be used (malformed, out of range, not supported) is ignored as the
specification asks: one WARNING (``aiorunner.backend.report_env_problem``) names it, what is
used instead (the next variable or the default) and the fix, and the backend is built. An
explicit value (``collector_endpoint``, an ``otlp_*`` option, a preset's own variable) that
cannot be used raises :class:`ConfigError`.

Precedence, highest first: ``TracingConfig.collector_endpoint`` and the ``otlp_*`` backend
options (explicit arguments), then a preset's own endpoint (a vendor variable), then the
signal-specific variable, the generic variable, and the default.

Header values are secrets: they never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from aiorunner.backend import ConfigError, EnvProblem, TracingConfig, report_env_problem

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_GRPC_ENDPOINT",
    "DEFAULT_HTTP_ENDPOINT",
    "PROTOCOLS",
    "OtlpSettings",
    "parse_headers",
    "resolve_settings",
]

# Environment variables, one constant each (names from the OpenTelemetry specification).
OTEL_EXPORTER_OTLP_PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"
OTEL_EXPORTER_OTLP_TRACES_PROTOCOL = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
OTEL_EXPORTER_OTLP_ENDPOINT = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
OTEL_EXPORTER_OTLP_HEADERS = "OTEL_EXPORTER_OTLP_HEADERS"
OTEL_EXPORTER_OTLP_TRACES_HEADERS = "OTEL_EXPORTER_OTLP_TRACES_HEADERS"
OTEL_EXPORTER_OTLP_TIMEOUT = "OTEL_EXPORTER_OTLP_TIMEOUT"
OTEL_EXPORTER_OTLP_TRACES_TIMEOUT = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"
OTEL_EXPORTER_OTLP_COMPRESSION = "OTEL_EXPORTER_OTLP_COMPRESSION"
OTEL_EXPORTER_OTLP_TRACES_COMPRESSION = "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION"
OTEL_EXPORTER_OTLP_INSECURE = "OTEL_EXPORTER_OTLP_INSECURE"
OTEL_EXPORTER_OTLP_TRACES_INSECURE = "OTEL_EXPORTER_OTLP_TRACES_INSECURE"
OTEL_EXPORTER_OTLP_CERTIFICATE = "OTEL_EXPORTER_OTLP_CERTIFICATE"
OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE = "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE"
OTEL_EXPORTER_OTLP_CLIENT_KEY = "OTEL_EXPORTER_OTLP_CLIENT_KEY"
OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY = "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY"
OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"
OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE = "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE"

GRPC = "grpc"
HTTP_PROTOBUF = "http/protobuf"
HTTP_JSON = "http/json"
PROTOCOLS = (GRPC, HTTP_PROTOBUF, HTTP_JSON)
HTTP_PROTOCOLS = (HTTP_PROTOBUF, HTTP_JSON)
COMPRESSIONS = ("gzip", "none")

DEFAULT_GRPC_ENDPOINT = "http://localhost:4317"
DEFAULT_HTTP_ENDPOINT = "http://localhost:4318/v1/traces"
DEFAULT_TIMEOUT = 10.0
#: A Timeout variable of 0 means no limit (specification, "Timeout"): a very long time,
#: the largest 32-bit number of milliseconds, as the core's TracingConfig keeps it.
NO_LIMIT = (2**31 - 1) / 1000.0
TRACES_PATH = "/v1/traces"
LOGS_PATH = "/v1/logs"
METRICS_PATH = "/v1/metrics"
#: The OTLP/HTTP path of each signal.
SIGNAL_PATHS = {"traces": TRACES_PATH, "logs": LOGS_PATH, "metrics": METRICS_PATH}
DEFAULT_HTTP_BASE = "http://localhost:4318"


def _signal_vars(signal: str) -> dict[str, str]:
    """The signal-specific variable of each setting (``OTEL_EXPORTER_OTLP_LOGS_TIMEOUT``...)."""
    if signal not in SIGNAL_PATHS:
        raise ValueError(f"signal={signal!r}; use 'traces', 'logs' or 'metrics'")
    prefix = f"OTEL_EXPORTER_OTLP_{signal.upper()}_"
    keys = (
        *("PROTOCOL", "ENDPOINT", "HEADERS", "TIMEOUT", "COMPRESSION", "INSECURE"),
        *("CERTIFICATE", "CLIENT_KEY", "CLIENT_CERTIFICATE"),
    )
    return {key: prefix + key for key in keys}


# A header name is an HTTP token; gRPC metadata keys are its lowercase subset.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_HEADER_VALUE = re.compile(r"^[\t\x20-\x7e]*$")
_USERINFO = re.compile(r"(?<=//)[^/@]*@")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _ignore(var: str, raw: str, problem: str, instead: str, fix: str) -> None:
    """Report one unusable variable (logged once per process; see aiorunner.backend)."""
    if "HEADERS" in var:
        # Names only; an entry without "=" may be a bare token: not even its text.
        shown = ",".join(
            f"{part.partition('=')[0].strip()}=[secure]" if "=" in part else "[secure]"
            for part in raw.split(",")
            if part.strip()
        )
    else:
        shown = redact_url(raw)
    report_env_problem(EnvProblem(var, shown or "[secure]", problem, instead, fix))


def _reason(exc: ConfigError, var: str, raw: str) -> str:
    """A ConfigError's text as the reason of an EnvProblem: without its leading
    ``VAR='value'`` (or ``VAR:``), which the problem's message starts with."""
    text = str(exc)
    for prefix in (f"{var}={redact_url(raw)!r} ", f"{var}={raw!r} ", f"{var}: "):
        if text.startswith(prefix):
            return text[len(prefix) :]
    return text


def _from_env(
    env: Mapping[str, str],
    signal_var: str,
    generic_var: str,
    parse: Any,
    *,
    default: str | None,
    accepted: str,
) -> tuple[str, Any] | None:
    """``(variable, parsed value)`` of the first of the signal-specific and the generic
    variable that is set and usable; an unusable one is reported and passed over (the
    specification: "gracefully ignore the setting"), so the next one or the default
    applies."""
    generic_set = bool(env.get(generic_var, "").strip())
    for var in (signal_var, generic_var):
        raw = env.get(var, "").strip()
        if not raw:
            continue
        try:
            return var, parse(var, raw)
        except ConfigError as exc:
            if var == signal_var and generic_set:
                instead = generic_var
            else:
                instead = f"the default {default}" if default else "none"
            _ignore(
                var, raw, _reason(exc, var, raw), instead, f"set {var} to {accepted}, or unset it"
            )
    return None


def _env_insecure(
    env: Mapping[str, str], signal_var: str = OTEL_EXPORTER_OTLP_TRACES_INSECURE
) -> bool:
    """OTEL_EXPORTER_OTLP_[TRACES_]INSECURE, a Boolean: true only for ``true``; another
    value than ``false`` is reported and read as false (the specification's rule)."""
    found = _signal_then_generic(env, signal_var, OTEL_EXPORTER_OTLP_INSECURE)
    if found is None:
        return False
    var, raw = found
    word = raw.strip().lower()
    if word not in ("true", "false"):
        _ignore(
            var,
            raw,
            "is not a boolean (only 'true' is true)",
            "false (TLS for a host:port without a scheme)",
            f"set {var} to true or false, or unset it",
        )
    return word == "true"


def _signal_then_generic(
    env: Mapping[str, str], signal_var: str, generic_var: str
) -> tuple[str, str] | None:
    """The (variable, value) of the first of the two that is set and non-empty."""
    for var in (signal_var, generic_var):
        value = env.get(var, "").strip()
        if value:
            return var, value
    return None


def parse_headers(source: str, raw: str) -> dict[str, str]:
    """
    Parse the specification's ``key=value,key2=value2`` header list (values percent-decoded).

    Names are lowercased (gRPC metadata demands it; HTTP does not care).

    Raises:
        ConfigError: an entry is not ``key=value`` or its name is not a valid header name.
            The message names ``source`` and the entry's position and key, never a value.
    """
    headers: dict[str, str] = {}
    for index, part in enumerate(raw.split(","), start=1):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"{source}: entry {index} is not of the form key=value (its text is not shown "
                "because header values are secrets); write key1=value1,key2=value2 with "
                "percent-encoded values"
            )
        name, decoded = check_header(source, unquote(key.strip()), unquote(value.strip()))
        headers[name] = decoded
    return headers


def check_header(source: str, name: str, value: str) -> tuple[str, str]:
    """Validate one header; return its lowercased name and its value."""
    lowered = name.strip().lower()
    if not _HEADER_NAME.match(lowered):
        raise ConfigError(
            f"{source}: {lowered!r} is not a valid header name; a name is letters, digits "
            "and !#$%&'*+.^_`|~- only"
        )
    if not _HEADER_VALUE.match(value):
        raise ConfigError(
            f"{source}: the value of header {lowered!r} has a character that is not printable "
            "ASCII (line breaks and non-ASCII letters cannot travel in HTTP/gRPC headers; "
            "percent-encoding in the variable is decoded first)"
        )
    return lowered, value


def _parse_bool(source: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{source}={raw!r} is not a boolean; accepted: true, false")


def _parse_timeout_ms(source: str, raw: str) -> float:
    """A Timeout variable: milliseconds >= 0, where 0 means no limit; in seconds."""
    try:
        millis = float(raw)
    except ValueError:
        raise ConfigError(
            f"{source}={raw!r} is not a number of milliseconds; e.g. {source}=10000 for 10 s"
        ) from None
    if not 0 <= millis < float("inf"):
        raise ConfigError(f"{source}={raw!r} must be a non-negative number of milliseconds")
    return millis / 1000.0 if millis else NO_LIMIT


def _parse_choice(source: str, raw: str, choices: Collection[str]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise ConfigError(f"{source}={raw!r} is not supported; accepted: {', '.join(choices)}")
    return value


def redact_url(url: str) -> str:
    """The URL with any ``user:password@`` replaced by ``[secure]@``, for messages."""
    return _USERINFO.sub("[secure]@", url)


@dataclass(frozen=True)
class OtlpSettings:
    """
    Everything an OTLP backend needs to send, resolved and validated.

    ``endpoint`` is the full traces URL for OTLP/HTTP and a URL whose host and port are
    the target for gRPC (``target``). ``sources`` says where each value came from ("env
    OTEL_EXPORTER_OTLP_ENDPOINT", "collector_endpoint", "default", ...), for error messages
    and ``aiorunner doctor``. The repr shows header names only.
    """

    protocol: str
    endpoint: str
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT
    compression: str = "none"
    insecure: bool = True
    certificate: str | None = None
    client_key: str | None = None
    client_certificate: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __repr__(self) -> str:
        headers = ", ".join(f"{k}: [secure]" for k in self.headers)
        return (
            f"OtlpSettings(protocol={self.protocol!r}, endpoint={redact_url(self.endpoint)!r}, "
            f"headers={{{headers}}}, timeout={self.timeout!r}, "
            f"compression={self.compression!r}, insecure={self.insecure!r})"
        )

    @property
    def target(self) -> str:
        """``host:port`` of a gRPC endpoint (443 with TLS, 4317 without, when absent)."""
        parts = urlsplit(self.endpoint if "://" in self.endpoint else f"//{self.endpoint}")
        host = parts.hostname or "localhost"
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        port = parts.port or (4317 if self.insecure else 443)
        return f"{host}:{port}"

    @property
    def port(self) -> int | None:
        """The endpoint's port, explicit or implied by its scheme."""
        if self.protocol == GRPC:
            return int(self.target.rsplit(":", 1)[1])
        parts = urlsplit(self.endpoint)
        return parts.port or (443 if parts.scheme == "https" else 80)

    def describe(self, key: str) -> str:
        """``"endpoint (from env OTEL_EXPORTER_OTLP_ENDPOINT)"``, for messages."""
        source = self.sources.get(key)
        return f"{key} (from {source})" if source else key

    def redact(self, text: str) -> str:
        """Replace every header value (they are secrets) found in ``text`` by [secure]."""
        for value in sorted(self.headers.values(), key=len, reverse=True):
            if len(value) >= 3:
                text = text.replace(value, "[secure]")
        return text


def _check_url(source: str, url: str, *, allow_bare: bool) -> str:
    candidate = url.strip()
    if "://" not in candidate and not allow_bare:
        candidate = "http://" + candidate
    parts = urlsplit(candidate if "://" in candidate else f"//{candidate}")
    try:
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        raise ConfigError(
            f"{source}={redact_url(url)!r} has an invalid port; use e.g. http://host:4317"
        ) from None
    if not parts.hostname or ("://" in candidate and parts.scheme not in ("http", "https", "grpc")):
        raise ConfigError(
            f"{source}={redact_url(url)!r} is not a valid endpoint; use a URL such as "
            "http://localhost:4317 (scheme http or https, a host and an optional port)"
        )
    return candidate


def _http_url(
    source: str,
    url: str,
    *,
    append_path: bool,
    always_append: bool = False,
    signal_path: str = TRACES_PATH,
) -> str:
    """Validate an OTLP/HTTP URL; for a base URL add /v1/traces (unless it is there; for
    logs /v1/logs, replacing a /v1/traces a preset or collector_endpoint gave)."""
    checked = _check_url(source, url, allow_bare=False)
    parts = urlsplit(checked)
    if parts.scheme == "grpc":
        raise ConfigError(
            f"{source}={redact_url(url)!r} uses the grpc scheme but the protocol is "
            "http/protobuf; "
            "use http:// or https://"
        )
    path = parts.path
    if (
        append_path
        and signal_path != TRACES_PATH
        and not always_append
        and path.rstrip("/").endswith(TRACES_PATH)
    ):
        path = path.rstrip("/")[: -len(TRACES_PATH)]
    if append_path and (always_append or not path.rstrip("/").endswith(signal_path)):
        path = path.rstrip("/") + signal_path
    return urlunsplit((parts.scheme, parts.netloc, path or "/", parts.query, ""))


def resolve_settings(
    config: TracingConfig,
    *,
    protocol: str | None = None,
    endpoint: tuple[str, str] | Mapping[str, tuple[str, str]] | None = None,
    default_endpoint: str | Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    default_protocol: str = GRPC,
    protocols: Collection[str] = PROTOCOLS,
    environ: Mapping[str, str] | None = None,
    signal: str = "traces",
) -> OtlpSettings:
    """
    Resolve the settings of one OTLP backend.

    Args:
        config: the session's config (``collector_endpoint`` and ``otlp_*`` options win).
        protocol: force a protocol (``otlp_grpc``/``otlp_http``), ignoring the variables.
        endpoint: ``(source, url)`` a preset read from its own variable: it wins over the
            OTEL_* endpoint variables. An HTTP URL without ``/v1/traces`` gets it appended.
            A mapping gives one per protocol (``{"grpc": ..., "http/protobuf": ...}``).
        default_endpoint: used when nothing else names one (an HTTP base URL gets
            ``/v1/traces``); defaults to localhost:4317 / localhost:4318/v1/traces. A
            mapping gives one per protocol.
        headers: added over the OTEL_* headers (a preset's auth header).
        default_protocol: when neither an option nor a variable names one.
        protocols: the protocols this backend accepts; a variable naming another one is
            ignored (presets for HTTP-only vendors), an explicit option is an error.
        environ: defaults to ``os.environ``.
        signal: ``"traces"`` or ``"logs"``: which ``OTEL_EXPORTER_OTLP_<SIGNAL>_*``
            variables win over the generic ones, and which path (``/v1/traces``,
            ``/v1/logs``) an OTLP/HTTP base URL gets.

    Raises:
        ConfigError: a value is malformed or not supported; the message names the variable
            or option, the value (never a header value) and what is accepted.
    """
    env = os.environ if environ is None else environ
    sources: dict[str, str] = {}
    sig = _signal_vars(signal)
    path = SIGNAL_PATHS[signal]

    # protocol
    chosen: str
    if protocol is not None:
        chosen, sources["protocol"] = protocol, "backend"
    elif config.option("otlp_protocol") is not None:
        raw = str(config.option("otlp_protocol"))
        chosen = _parse_protocol("backend option otlp_protocol", raw, PROTOCOLS)
        if chosen not in protocols:
            raise ConfigError(
                f"backend option otlp_protocol={raw!r} is not supported by this backend; "
                f"accepted: {', '.join(protocols)}"
            )
        sources["protocol"] = "backend option otlp_protocol"
    else:
        chosen, sources["protocol"] = default_protocol, "default"
        found = _from_env(
            env,
            sig["PROTOCOL"],
            OTEL_EXPORTER_OTLP_PROTOCOL,
            lambda var, raw: _parse_protocol(var, raw, PROTOCOLS),
            default=default_protocol,
            accepted=", ".join(PROTOCOLS),
        )
        # A protocol this backend does not take (an HTTP-only preset) is passed over.
        if found is not None and found[1] in protocols:
            chosen, sources["protocol"] = found[1], f"env {found[0]}"

    # endpoint
    if isinstance(endpoint, Mapping):
        endpoint = endpoint.get(chosen)
    if isinstance(default_endpoint, Mapping):
        default_endpoint = default_endpoint.get(chosen)
    is_http = chosen in HTTP_PROTOCOLS
    url: str | None = None
    if config.collector_endpoint:
        source = "collector_endpoint"
        url = _endpoint(source, config.collector_endpoint, is_http, append=True, path=path)
    elif endpoint is not None:
        source, raw_url = endpoint
        url = _endpoint(source, raw_url, is_http, append=True, path=path)
    else:
        default_text = "the default endpoint"
        generic_raw = env.get(OTEL_EXPORTER_OTLP_ENDPOINT, "").strip()
        for var, append in (
            (sig["ENDPOINT"], False),
            (OTEL_EXPORTER_OTLP_ENDPOINT, True),
        ):
            raw = env.get(var, "").strip()
            if not raw:
                continue
            try:
                url = _endpoint(
                    var, raw, is_http, append=append, always=append, bare=True, path=path
                )
            except ConfigError as exc:
                later = var == sig["ENDPOINT"] and generic_raw
                _ignore(
                    var,
                    raw,
                    _reason(exc, var, raw),
                    OTEL_EXPORTER_OTLP_ENDPOINT if later else default_text,
                    f"set {var} to a URL such as "
                    f"{DEFAULT_HTTP_ENDPOINT if is_http else DEFAULT_GRPC_ENDPOINT}, or unset it",
                )
                continue
            source = f"env {var}"
            break
        if url is None and default_endpoint is not None:
            source = "default"
            url = _endpoint("default endpoint", default_endpoint, is_http, append=True, path=path)
        elif url is None:
            source = "default"
            url = DEFAULT_HTTP_BASE + path if is_http else DEFAULT_GRPC_ENDPOINT
    sources["endpoint"] = source

    # headers: the signal variable replaces the generic one, options and presets add to it
    merged: dict[str, str] = {}
    found_headers = _from_env(
        env,
        sig["HEADERS"],
        OTEL_EXPORTER_OTLP_HEADERS,
        parse_headers,
        default=None,
        accepted="key1=value1,key2=value2 with percent-encoded values",
    )
    if found_headers is not None:
        merged.update(found_headers[1])
        sources["headers"] = f"env {found_headers[0]}"
    option_headers = config.option("otlp_headers")
    if option_headers is not None:
        source = "backend option otlp_headers"
        if isinstance(option_headers, str):
            merged.update(parse_headers(source, option_headers))
        elif isinstance(option_headers, Mapping):
            for name, value in option_headers.items():
                key, checked = check_header(source, str(name), str(value))
                merged[key] = checked
        else:
            raise ConfigError(f"{source} must be a mapping or a 'key=value,...' string")
        sources["headers"] = source
    for name, value in (headers or {}).items():
        key, checked = check_header("preset header", name, value)
        merged[key] = checked

    # timeout (seconds)
    timeout = DEFAULT_TIMEOUT
    sources["timeout"] = "default"
    option_timeout = config.option("otlp_timeout")
    if option_timeout is not None:
        if (
            isinstance(option_timeout, bool)
            or not isinstance(option_timeout, (int, float))
            or not option_timeout > 0
        ):
            raise ConfigError(
                f"backend option otlp_timeout={option_timeout!r} must be a positive number "
                "of seconds"
            )
        timeout, sources["timeout"] = float(option_timeout), "backend option otlp_timeout"
    else:
        found_timeout = _from_env(
            env,
            sig["TIMEOUT"],
            OTEL_EXPORTER_OTLP_TIMEOUT,
            _parse_timeout_ms,
            default=f"{DEFAULT_TIMEOUT * 1000:g} ms",
            accepted="a number of milliseconds >= 0 (0 means no limit)",
        )
        if found_timeout is not None:
            timeout, sources["timeout"] = found_timeout[1], f"env {found_timeout[0]}"

    # compression
    compression = "none"
    sources["compression"] = "default"
    option_compression = config.option("otlp_compression")
    if option_compression is not None:
        compression = _parse_choice(
            "backend option otlp_compression", str(option_compression), COMPRESSIONS
        )
        sources["compression"] = "backend option otlp_compression"
    else:
        found_compression = _from_env(
            env,
            sig["COMPRESSION"],
            OTEL_EXPORTER_OTLP_COMPRESSION,
            lambda var, raw: _parse_choice(var, raw, COMPRESSIONS),
            default="none",
            accepted=", ".join(COMPRESSIONS),
        )
        if found_compression is not None:
            compression = found_compression[1]
            sources["compression"] = f"env {found_compression[0]}"

    # transport security (gRPC): the scheme decides; INSECURE only for a bare host:port
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    option_insecure = config.option("otlp_insecure")
    if option_insecure is not None:
        insecure_flag = _parse_bool("backend option otlp_insecure", option_insecure)
    else:
        insecure_flag = _env_insecure(env, sig["INSECURE"])
    if scheme in ("http", "grpc"):
        insecure = True
    elif scheme == "https":
        insecure = False
    else:
        insecure = insecure_flag

    certificate = _file_setting(
        env, config, "certificate", sig["CERTIFICATE"],
        OTEL_EXPORTER_OTLP_CERTIFICATE, sources,
    )  # fmt: skip
    client_key = _file_setting(
        env, config, "client_key", sig["CLIENT_KEY"],
        OTEL_EXPORTER_OTLP_CLIENT_KEY, sources,
    )  # fmt: skip
    client_certificate = _file_setting(
        env, config, "client_certificate", sig["CLIENT_CERTIFICATE"],
        OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE, sources,
    )  # fmt: skip
    if (client_key is None) != (client_certificate is None):
        pair = (
            f"set both {OTEL_EXPORTER_OTLP_CLIENT_KEY} and "
            f"{OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE} (or their TRACES_ twins), or neither"
        )
        lone = "client_key" if client_certificate is None else "client_certificate"
        where = sources[lone]
        if not where.startswith("env "):
            raise ConfigError(f"a client key and a client certificate go together: {pair}")
        var = where[len("env ") :]
        _ignore(
            var,
            str(client_key or client_certificate),
            "has no partner: a client key and a client certificate go together",
            "no client certificate (no mutual TLS)",
            pair,
        )
        client_key = client_certificate = None
        sources.pop(lone)

    settings = OtlpSettings(
        protocol=chosen,
        endpoint=url,
        headers=merged,
        timeout=timeout,
        compression=compression,
        insecure=insecure,
        certificate=certificate,
        client_key=client_key,
        client_certificate=client_certificate,
        sources=sources,
    )
    _check_port_matches_protocol(settings, signal)
    return settings


def _parse_protocol(source: str, raw: str, protocols: Collection[str]) -> str:
    return _parse_choice(source, raw, protocols)


def _endpoint(
    source: str,
    raw: str,
    is_http: bool,
    *,
    append: bool,
    always: bool = False,
    bare: bool = False,
    path: str = TRACES_PATH,
) -> str:
    """Validate an endpoint; ``bare``: a gRPC host:port keeps no scheme (INSECURE decides)."""
    if is_http:
        return _http_url(source, raw, append_path=append, always_append=always, signal_path=path)
    return _check_url(source, raw, allow_bare=bare)


def _file_setting(
    env: Mapping[str, str],
    config: TracingConfig,
    key: str,
    signal_var: str,
    generic_var: str,
    sources: dict[str, str],
) -> str | None:
    option = config.option(f"otlp_{key}")
    if option is not None:
        sources[key] = f"backend option otlp_{key}"
        return str(os.fspath(option))
    found = _signal_then_generic(env, signal_var, generic_var)
    if found is None:
        return None
    sources[key] = f"env {found[0]}"
    return found[1]


def _check_port_matches_protocol(settings: OtlpSettings, signal: str = "traces") -> None:
    """Catch the most common OTLP mistake: gRPC sent to 4318 or HTTP sent to 4317. An
    explicit endpoint raises; one from an OTEL_* variable is reported and used as given
    (the export will fail, counted, and ``aiorunner doctor`` probes the port)."""
    port = settings.port
    if settings.protocol == GRPC and port == 4318:
        reason = "port 4318 is the standard OTLP/HTTP port but the protocol is grpc"
        fix = (
            "either point at port 4317 or set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf "
            "(or use the otlp_http backend)"
        )
    elif settings.protocol in HTTP_PROTOCOLS and port == 4317:
        reason = f"port 4317 is the standard OTLP/gRPC port but the protocol is {settings.protocol}"
        fix = (
            "either point at port 4318 or set OTEL_EXPORTER_OTLP_PROTOCOL=grpc (or use the "
            "otlp_grpc backend)"
        )
    else:
        return
    problem = (reason, fix)
    source = settings.sources.get("endpoint", "")
    if source.startswith("env "):
        var = source[len("env ") :]
        if signal == "traces" or f"_{signal.upper()}_" in var:
            # A generic variable is reported once, by the traces' settings.
            _ignore(var, settings.endpoint, problem[0], "it as given", problem[1])
        return
    raise ConfigError(
        f"{settings.describe('endpoint')} is {redact_url(settings.endpoint)!r}: "
        f"{problem[0]}; {problem[1]}"
    )
