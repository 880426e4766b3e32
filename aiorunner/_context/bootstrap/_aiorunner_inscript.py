"""
aiorunner's in-script tracing bootstrap: the part that runs once the script touches
OpenTelemetry (see ``aiorunner/_bootstrap``).

What it does, in the script's interpreter:

- makes the ``execute_script`` span (passed in the settings as a W3C traceparent, with
  ``TRACESTATE``/``BAGGAGE`` from the environment) the current context of the thread that
  imported ``opentelemetry.trace``, and the default parent of spans started on any other
  thread with no current span, so every span the script makes joins the run's trace;
- installs the global TracerProvider *lazily*: only when something asks for it
  (``trace.get_tracer()``, ``trace.get_tracer_provider()``), so a script that calls
  ``trace.set_tracer_provider(its_own)`` first simply keeps its own; and one that sets its
  own after ours was installed replaces ours (the override the API normally refuses is
  allowed for ours);
- writes every ended span at once to the channel (a Unix socket the runner passed), so
  spans already ended arrive even if the script is killed. The child needs no exporter,
  no network access and no credentials: the runner's pipeline exports.

Wire format (read by ``aiorunner._context.channel``): each socket message is a chunk,
``!IB`` (writer pid, 1 if more chunks of the same payload follow) + bytes. A payload is
UTF-8 JSON: ``{"s": [span, ...]}`` and/or ``{"d": {"<trace id hex>": count}}`` for spans
this side had to drop, or ``{"m": {"hwm": bytes}}``, the process's peak RSS as it exits
(written by ``sitecustomize``'s exit hook when the run is monitored), or
``{"lg": record}``, one record of the script's ``logging`` (``_aiorunner_logging``). Chunks of one payload are written under a lock, so within one
process they are contiguous; the reader reassembles per pid, so forked children writing
to the same socket cannot corrupt each other's payloads.

Written for any Python >= 3.8 with ``opentelemetry-api``/``-sdk`` installed; it never
imports ``aiorunner`` (the script's interpreter may not have it), and never raises into
the script.
"""

from __future__ import annotations

import json
import os
import sys
import threading

# Not imported at run time: this module is loaded by scripts that only configure
# logging, and ``typing`` (with ``struct``) cost them ~1.5 ms of start-up (measured).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar

__all__ = ["channel", "encode_span", "instrument", "on_trace_imported", "open_channel"]

#: Chunk header (``!IB``, written without ``struct``): pid of the writer, and 1 when
#: more chunks of the payload follow.
HEADER_SIZE = 5
#: Largest chunk payload; the reader's buffer is MAX_CHUNK + HEADER_SIZE.
MAX_CHUNK = 60_000
#: Spans gathered into one payload until it is about this large.
PAYLOAD_TARGET = 48_000
#: The runner discards a payload larger than this (aiorunner._context.channel's
#: MAX_MESSAGE_BYTES): a span whose encoding is larger is counted as dropped, not sent.
MAX_MESSAGE = 16 << 20


def _warn(message: str) -> None:
    try:
        sys.stderr.write("aiorunner: " + message + "\n")
    except Exception:  # noqa: BLE001, S110 - no usable stderr: never fail the script for it
        pass


class Channel:
    """The writing end of the span channel, shared by every thread of the process (and
    by an aiorunner session running inside the script, see ``aiorunner._context.channel``)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        # The script may close our fd and open a file that gets its number (daemons close
        # every fd): each write first checks it is still the same socket.
        self._inode = os.fstat(fd).st_ino
        self.broken = False
        #: Spans this process could not send (encoding failed or the runner is gone).
        self.dropped = 0
        self._lock = threading.Lock()
        if hasattr(os, "register_at_fork"):
            # A lock held by another thread at fork time would stay held in the child.
            os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def send_spans(self, spans: Any) -> int:
        """Encode and write ``spans`` (ReadableSpans); return how many were written."""
        if self.broken:
            self.dropped += len(spans)
            return 0
        items: list[tuple[int, bytes]] = []
        failed: dict[str, int] = {}
        for span in spans:
            data = _encode(span)
            if data is None or len(data) > MAX_MESSAGE - 16:
                key = format(span.context.trace_id, "032x")
                failed[key] = failed.get(key, 0) + 1
            else:
                items.append((span.context.trace_id, data))
        sent = 0
        start = 0
        size = 0
        for index, (_, data) in enumerate(items):
            if index > start and size + len(data) > PAYLOAD_TARGET:
                sent += self._send_items(items[start:index], failed)
                start, size = index, 0
            size += len(data) + 1
        if start < len(items):
            sent += self._send_items(items[start:], failed)
        if failed:
            self.dropped += sum(failed.values())
            self._write(json.dumps({"d": failed}, **_JSON).encode())
        return sent

    def send_log(self, record: dict[str, Any]) -> bool:
        """Write one ``logging`` record (``{"lg": record}``, see ``_aiorunner_logging``)
        at once: before the script's own handlers write its lines."""
        data = _dump({"lg": record})
        if data is None or len(data) > MAX_MESSAGE - 16 or not self._write(data):
            self.dropped += 1
            return False
        return True

    def _send_items(self, items: list[tuple[int, bytes]], failed: dict[str, int]) -> int:
        payload = b'{"s":[' + b",".join(data for _, data in items) + b"]}"
        if self._write(payload):
            return len(items)
        for trace_id, _ in items:
            key = format(trace_id, "032x")
            failed[key] = failed.get(key, 0) + 1
        return 0

    def _write(self, payload: bytes) -> bool:
        if self.broken:
            return False
        pid = os.getpid()
        view = memoryview(payload)
        try:
            if os.fstat(self.fd).st_ino != self._inode:
                raise OSError("the span channel's fd now refers to something else")
            with self._lock:
                while True:
                    chunk = view[:MAX_CHUNK]
                    view = view[MAX_CHUNK:]
                    more = b"\x01" if len(view) else b"\x00"
                    os.write(self.fd, pid.to_bytes(4, "big") + more + chunk)
                    if not len(view):
                        return True
        except OSError:
            # The runner is gone (or the fd was closed by the script): stop quietly.
            self.broken = True
            return False


_JSON: dict[str, Any] = {"separators": (",", ":"), "default": str, "ensure_ascii": False}


def _encode(span: Any) -> bytes | None:
    try:
        data = encode_span(span)
    except Exception:  # noqa: BLE001 - an odd span is counted as dropped, never raised
        return None
    return _dump(data)


def _dump(data: Any) -> bytes | None:
    try:
        text = json.dumps(data, **_JSON)
    except Exception:  # noqa: BLE001 - odd data is counted as dropped, never raised
        return None
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate ("\ud800", from a bad decode or os.fsdecode): UTF-8 cannot
        # hold it. Replace it by U+FFFD rather than lose the span (a valid pair of
        # surrogates becomes the character it stands for).
        fixed = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return fixed.encode("utf-8", "replace")


def _hex_span(span_id: int) -> str:
    return format(span_id, "016x")


def _dropped(obj: Any) -> int:
    try:
        return int(obj.dropped_attributes)
    except (AttributeError, TypeError, ValueError):
        return 0


def _parent_span_id() -> int | None:
    """The ``execute_script`` span's id (the default parent), when known."""
    context = _State.default_context
    if context is None:
        return None
    from opentelemetry import trace

    return int(trace.get_current_span(context).get_span_context().span_id)


def encode_span(span: Any) -> dict[str, Any]:
    """A ReadableSpan as the compact dict of the wire format (keys are documented in
    ``aiorunner._inscript.decode_span``)."""
    ctx = span.context
    data: dict[str, Any] = {
        "n": span.name,
        "t": format(ctx.trace_id, "032x"),
        "i": _hex_span(ctx.span_id),
        "f": int(ctx.trace_flags),
        "k": span.kind.value,
        "s": span.start_time,
        "e": span.end_time,
    }
    if ctx.trace_state:
        data["ts"] = ctx.trace_state.to_header()
    parent = span.parent
    if parent is not None:
        data["p"] = _hex_span(parent.span_id)
        if parent.trace_id != ctx.trace_id:
            data["pt"] = format(parent.trace_id, "032x")
        # A remote parent other than execute_script (one the script extracted from a
        # request, say) stays remote; execute_script's children are of this same run.
        if parent.is_remote and parent.span_id != _parent_span_id():
            data["pr"] = 1
    if span.attributes:
        data["a"] = dict(span.attributes)
    if span.dropped_attributes:
        data["da"] = span.dropped_attributes
    if span.events:
        data["ev"] = [
            [event.name, event.timestamp, dict(event.attributes or {}), _dropped(event)]
            for event in span.events
        ]
    if span.dropped_events:
        data["de"] = span.dropped_events
    if span.links:
        data["l"] = [
            [
                format(link.context.trace_id, "032x"),
                _hex_span(link.context.span_id),
                int(link.context.trace_flags),
                dict(link.attributes or {}),
                1 if link.context.is_remote else 0,
                link.context.trace_state.to_header() if link.context.trace_state else "",
                _dropped(link),
            ]
            for link in span.links
        ]
    if span.dropped_links:
        data["dl"] = span.dropped_links
    status = span.status
    if status.status_code.value:
        data["sc"] = status.status_code.value
        if status.description:
            data["sd"] = status.description
    scope = span.instrumentation_scope
    if scope is not None:
        data["sn"] = scope.name
        if scope.version:
            data["sv"] = scope.version
        if scope.schema_url:
            data["su"] = scope.schema_url
        if getattr(scope, "attributes", None):
            data["sa"] = dict(scope.attributes)
    return data


# ------------------------------------------------------------------ the lazy provider


class _State:
    settings: ClassVar[dict[str, str]] = {}
    channel: Channel | None = None
    default_context: Any = None
    provider: Any = None
    installing = False


def channel() -> Channel | None:
    """The process's span channel, or None when the runner gave none (or it broke)."""
    if _State.channel is None or _State.channel.broken:
        return None
    return _State.channel


def open_channel(settings: dict[str, str]) -> Channel:
    """The process's channel, opened on first use (by the tracing set-up or by the
    logging one, whichever comes first: both share one lock)."""
    if _State.channel is None:
        _State.channel = Channel(int(settings["fd"]))
    return _State.channel


def _parent_context(trace: Any, settings: dict[str, str]) -> Any:
    parts = settings.get("parent", "").split("-")
    if len(parts) != 4:
        raise ValueError(f"bad parent {settings.get('parent')!r}")
    trace_state = None
    raw_state = os.environ.get("TRACESTATE")
    if raw_state:
        trace_state = trace.TraceState.from_header([raw_state])
    span_context = trace.SpanContext(
        int(parts[1], 16),
        int(parts[2], 16),
        is_remote=True,
        trace_flags=trace.TraceFlags(int(parts[3], 16)),
        trace_state=trace_state,
    )
    context = None
    raw_baggage = os.environ.get("BAGGAGE")
    if raw_baggage:
        from opentelemetry.baggage.propagation import W3CBaggagePropagator

        context = W3CBaggagePropagator().extract({"baggage": raw_baggage})
    return trace.set_span_in_context(trace.NonRecordingSpan(span_context), context)


def on_trace_imported(trace: Any, settings: dict[str, str]) -> None:
    """Called right after ``opentelemetry.trace`` executed in the script's interpreter."""
    from opentelemetry import context as context_api

    _State.settings = settings
    open_channel(settings)
    _State.default_context = _parent_context(trace, settings)
    context_api.attach(_State.default_context)

    original_get = trace.get_tracer_provider
    original_set = trace.set_tracer_provider

    def get_tracer_provider() -> Any:
        if (
            trace._TRACER_PROVIDER is None
            and not _State.installing
            and "OTEL_PYTHON_TRACER_PROVIDER" not in os.environ
        ):
            _State.installing = True
            try:
                _State.provider = _make_provider(settings)
                original_set(_State.provider)
            except Exception as exc:  # noqa: BLE001 - the script must run on regardless
                _warn(f"in-script tracing is off: {type(exc).__name__}: {exc}")
            finally:
                _State.installing = False
        return original_get()

    def set_tracer_provider(tracer_provider: Any) -> None:
        ours = _State.provider
        if ours is not None and trace._TRACER_PROVIDER is ours and tracer_provider is not ours:
            # The script configures its own: let it (tracers already handed out by ours
            # keep sending to the runner).
            trace._TRACER_PROVIDER_SET_ONCE = type(trace._TRACER_PROVIDER_SET_ONCE)()
            trace._TRACER_PROVIDER = None
        original_set(tracer_provider)

    get_tracer_provider.__doc__ = original_get.__doc__
    set_tracer_provider.__doc__ = original_set.__doc__
    trace.get_tracer_provider = get_tracer_provider
    trace.set_tracer_provider = set_tracer_provider


def _limit(settings: dict[str, str], key: str) -> int | None:
    value = settings.get(key)
    return int(value) if value and value.isdigit() else None


def _span_limits(settings: dict[str, str]) -> dict[str, int]:
    """Every ``SpanLimits`` argument, so the SDK reads none of the OTEL_*_LIMIT variables
    itself: it raises on a malformed one, which the runner has already warned about and
    replaced by its default (a malformed value here means the default too; -1 is
    ``SpanLimits.UNSET``, no limit)."""

    def env(name: str, default: int) -> int:
        raw = os.environ.get(name, "").strip()
        return int(raw) if raw.isdigit() else default

    general = env("OTEL_ATTRIBUTE_COUNT_LIMIT", 128)
    length = env("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", -1)
    attrs, events = _limit(settings, "attrs"), _limit(settings, "events")
    limits = {
        "max_attributes": general,
        "max_span_attributes": env("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", general)
        if attrs is None
        else attrs,
        "max_events": env("OTEL_SPAN_EVENT_COUNT_LIMIT", 128) if events is None else events,
        "max_links": env("OTEL_SPAN_LINK_COUNT_LIMIT", 128),
        "max_event_attributes": env("OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT", general),
        "max_link_attributes": env("OTEL_LINK_ATTRIBUTE_COUNT_LIMIT", general),
        "max_attribute_length": length,
        "max_span_attribute_length": env("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", length),
    }
    # The runner's session limits when it passed them ("none": no limit): the runner
    # applies them to what arrives anyway; applied here, less is sent.
    for key, name in _CHILD_LIMITS.items():
        value = settings.get(key)
        if value == "none":
            limits[name] = -1
        elif value and value.isdigit():
            limits[name] = int(value)
    return limits


#: Setting -> SpanLimits keyword (aiorunner._context.channel's _CHILD_LIMITS).
_CHILD_LIMITS = {
    "links": "max_links",
    "eattrs": "max_event_attributes",
    "lattrs": "max_link_attributes",
    "alen": "max_attribute_length",
    "salen": "max_span_attribute_length",
}


def _make_provider(settings: dict[str, str]) -> Any:
    from opentelemetry import trace as trace_api
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, Tracer, TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    class _DefaultParentTracer(Tracer):
        """Spans started with no explicit context and no current span (on a thread the
        script started, say) get the ``execute_script`` span as parent."""

        def start_span(self, name: str, context: Any = None, *args: Any, **kwargs: Any) -> Any:
            if context is None and not trace_api.get_current_span().get_span_context().is_valid:
                context = _State.default_context
            return super().start_span(name, context, *args, **kwargs)

    class _Provider(TracerProvider):
        def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
            tracer = super().get_tracer(*args, **kwargs)
            if type(tracer) is Tracer:
                tracer.__class__ = _DefaultParentTracer
            return tracer

    class _ChannelProcessor(SpanProcessor):
        """Writes each span to the channel as it ends (no batching: a killed script
        would lose a batch)."""

        def __init__(self, channel: Channel) -> None:
            self._channel = channel

        def on_end(self, span: Any) -> None:
            if span.context.trace_flags.sampled:
                self._channel.send_spans((span,))

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    assert _State.channel is not None
    provider = _Provider(
        sampler=ParentBased(ALWAYS_ON),
        # The runner gives received spans its session's resource.
        resource=Resource({}),
        span_limits=SpanLimits(**_span_limits(settings)),
    )
    if getattr(provider, "_disabled", False):
        # OTEL_SDK_DISABLED inherited: the runner traces this run (it would not have
        # started the bootstrap otherwise), so the script's spans are wanted.
        provider._disabled = False
    provider.add_span_processor(_ChannelProcessor(_State.channel))
    return provider


def instrument(settings: dict[str, str]) -> None:
    """Load the instrumentations named in ``settings["instrument"]`` (comma separated)
    through their ``opentelemetry_instrumentor`` entry points, at start-up."""
    from opentelemetry import trace
    from opentelemetry.util._importlib_metadata import entry_points

    trace.get_tracer_provider()  # installs ours now, unless the user named another
    for name in settings.get("instrument", "").split(","):
        name = name.strip()
        if not name:
            continue
        found = list(entry_points(group="opentelemetry_instrumentor", name=name))
        if not found:
            _warn(
                f"instrumentation {name!r} is not installed for {sys.executable}; "
                f"pip install opentelemetry-instrumentation-{name}"
            )
            continue
        try:
            instrumentor = found[0].load()()
            if not instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.instrument()
        except Exception as exc:  # noqa: BLE001 - one broken instrumentation, not the script
            _warn(f"instrumentation {name!r} failed: {type(exc).__name__}: {exc}")
