"""
In-script tracing, runner side: the channel spans made inside a Python script come back
through, and the reader that feeds them into the session's export pipeline.

Why a channel and not an exporter in the child: the script's spans then leave through
the runner's own pipeline (one configuration, one batching queue, the tail sampler sees
the whole trace), the child needs no exporter (importing the OTLP gRPC exporter alone
costs ~200 ms), no network access and no credentials.

The channel is a Unix socket pair (``SOCK_SEQPACKET``, or ``SOCK_DGRAM`` where that is
missing): messages keep their boundaries, and a message is written whole or not at all,
so the child's writes never interleave. The child's end is inherited through
``pass_fds``; its fd number, the ``execute_script`` traceparent and the span limits
travel in ``AIORUNNER_INSCRIPT``, and the bootstrap directory goes first on
``PYTHONPATH`` (the user's value is restored inside the child, see
``aiorunner/_bootstrap``).

The reader runs in the run's task group while the script runs, and drains what is left
once the script has exited: everything the child wrote before dying is in the socket's
queue by then, so spans already ended arrive even after a SIGKILL.

A script that itself runs scripts with aiorunner exports through the same channel
(``aiorunner._export.parent``, chosen by the session when it finds one): one pipeline for
the whole tree of runs, and no double export.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from .bootstrap import BOOTSTRAP_DIR

try:
    import fcntl
    import termios
except ImportError:  # not POSIX
    fcntl = termios = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanLimits

    from .._config import TracingConfig

__all__ = [
    "INSCRIPT_VAR",
    "MAX_MESSAGE_BYTES",
    "MAX_PENDING_BYTES",
    "MAX_PENDING_WRITERS",
    "PYTHONPATH_VAR",
    "LogSink",
    "ScriptLogRecord",
    "SpanChannel",
    "SpanDecoder",
    "decode_log",
    "decode_span",
    "open_channel",
]

logger = logging.getLogger("aiorunner.inscript")

#: Settings of the bootstrap (``fd=..;ino=..;parent=..;attrs=..;events=..;instrument=..``).
INSCRIPT_VAR = "AIORUNNER_INSCRIPT"
#: The user's PYTHONPATH ("+value", or "-" when unset), restored inside the child.
PYTHONPATH_VAR = "AIORUNNER_INSCRIPT_PYTHONPATH"

# Must match aiorunner/_context/bootstrap/_aiorunner_inscript.py.
_HEADER_SIZE = 5
_MAX_CHUNK = 60_000
_RECV_SIZE = _MAX_CHUNK + _HEADER_SIZE + 64

# The channel's memory bound: a script chooses what it writes (the writer pid in each
# chunk's header included), so what the runner keeps of it is bounded in total, not per
# writer. At most MAX_PENDING_BYTES of unfinished messages are held, from at most
# MAX_PENDING_WRITERS processes at once, and a message over MAX_MESSAGE_BYTES is thrown
# away as it arrives; each discarded message is counted (SpanChannel.discarded).
#: One message (a batch of spans, or one span) larger than this is discarded; the
#: bootstrap does not send one (it counts such a span as dropped instead). OTLP
#: collectors refuse requests over 4 MiB by default.
MAX_MESSAGE_BYTES = 16 << 20
#: Unfinished messages held at once, all writers together.
MAX_PENDING_BYTES = 64 << 20
#: Span messages one run may send in all (their bytes as they arrived): past it, further
#: spans are dropped and counted for their trace (``RunResult.export.inscript
#: .dropped_spans``), with one warning. Every message is bounded, but the export queue
#: is bounded in spans, not bytes: without this a script sending thousands of 16 MiB
#: spans would grow the runner by gigabytes. 64 MiB is ~50,000 ordinary spans.
MAX_RUN_SPAN_BYTES = 64 << 20
#: Writers (pids) with an unfinished message held at once.
MAX_PENDING_WRITERS = 64
#: Writers whose rest of a discarded message is skipped; past it, each chunk of such a
#: message is counted as one discarded message.
_MAX_SKIPPING = 4096
#: Exit peaks kept (the run's own process reports one; others are ignored past this).
_MAX_EXIT_PEAKS = 64
#: Warnings logged per channel before they are only counted (one summary at close).
MAX_WARNINGS = 5
#: While the run's logs wait for room, how often a paused reader asks again (seconds).
_RESUME_POLL = 0.01
#: ioctl asking how many bytes wait in a socket (Linux's SIOCINQ); None elsewhere.
_FIONREAD: int | None = getattr(termios, "FIONREAD", None) if termios is not None else None

_KINDS = {kind.value: kind for kind in SpanKind}
_STATUS = {code.value: code for code in StatusCode}


def _socket_type() -> int:
    return getattr(socket, "SOCK_SEQPACKET", socket.SOCK_DGRAM)


# ------------------------------------------------------------------------ decoding

_UINT64 = 1 << 64
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
#: W3C trace-context list member (key=value); a tracestate has at most 32 of them.
_TRACESTATE_MEMBER = re.compile(
    r"[a-z0-9][a-z0-9_\-*/@]{0,255}"  # key (tenant@vendor included)
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"  # value
)


def _hex_id(value: Any, digits: int) -> int:
    """A trace (32) or span (16) id in hex; ValueError unless exactly that and not zero
    (an id the encoders cannot write would fail a whole export batch)."""
    if not isinstance(value, str) or len(value) != digits or not value.isalnum():
        raise ValueError(f"bad id {value!r:.40}")
    number = int(value, 16)
    if not number:
        raise ValueError("zero id")
    return number


def _uint(value: Any, bound: int = _UINT64) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < bound:
        raise ValueError(f"bad number {value!r:.40}")
    return value


def _trace_state(value: Any) -> TraceState | None:
    """A W3C tracestate, checked first: the SDK's parser logs a warning for each bad one
    (a script could flood the log with them)."""
    if not value:
        return None
    if not isinstance(value, str) or len(value) > 8192:
        raise ValueError("bad tracestate")
    members = [m.strip(" \t") for m in value.split(",")]
    members = [m for m in members if m]
    if len(members) > 32 or not all(_TRACESTATE_MEMBER.fullmatch(m) for m in members):
        raise ValueError(f"bad tracestate {value!r:.80}")
    keys = [m.partition("=")[0] for m in members]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate tracestate key in {value!r:.80}")
    return TraceState([tuple(m.split("=", 1)) for m in members])  # type: ignore[misc]


class SpanDecoder:
    """
    Turns spans of the wire format into ReadableSpans carrying ``resource``, applying
    ``limits`` (the session's ``SpanLimits``) as the SDK applies them when a span is
    recorded: at most ``max_span_attributes`` attributes (the newest kept),
    ``max_events`` events and ``max_links`` links (the newest kept), their own
    attribute counts, string values cut to ``max_span_attribute_length`` (span) or
    ``max_attribute_length`` (events, links); what was removed adds to the span's,
    event's or link's dropped count, as it would have in the SDK.

    Why here and not only in the script: the script's side is the script's, and a
    script may write to the channel by hand; the runner must not trust it to have
    applied them (one span of 300 one-MiB attributes made a 314 MB line).

    Unlike ``BoundedAttributes`` it logs nothing per value (the SDK logs a warning for
    each attribute it drops or cuts: a flood, from a hostile script).
    """

    def __init__(self, resource: Resource, limits: SpanLimits | None = None) -> None:
        self._resource = resource
        self._span_attrs = _limit(limits, "max_span_attributes")
        self._span_len = _limit(limits, "max_span_attribute_length")
        self._events = _limit(limits, "max_events")
        self._links = _limit(limits, "max_links")
        self._event_attrs = _limit(limits, "max_event_attributes")
        self._link_attrs = _limit(limits, "max_link_attributes")
        self._len = _limit(limits, "max_attribute_length")
        #: Attributes, events and links the limits removed, and string values they cut.
        self.limited = 0

    def decode(self, data: Mapping[str, Any]) -> ReadableSpan:
        """
        One span. Keys: ``n`` name, ``t``/``i`` trace and span id (hex), ``f`` flags,
        ``ts`` tracestate, ``p`` parent span id (``pt`` its trace id when it differs,
        ``pr`` 1 when the SDK marked it remote; ``execute_script``'s children are marked
        local: the same run), ``k`` kind, ``s``/``e`` start and end (ns), ``a``/``da``
        attributes and how many were dropped, ``ev``/``de`` events ``[name, ns,
        attributes, dropped attributes]``, ``l``/``dl`` links ``[trace, span, flags,
        attributes, is_remote, tracestate, dropped attributes]``, ``sc``/``sd`` status
        code and description, ``sn``/``sv``/``su``/``sa`` the instrumentation scope.

        Raises:
            KeyError, ValueError, TypeError: malformed data.
        """
        trace_id = _hex_id(data["t"], 32)
        flags = TraceFlags(_uint(data.get("f", 1), 256))
        context = SpanContext(
            trace_id,
            _hex_id(data["i"], 16),
            is_remote=False,
            trace_flags=flags,
            trace_state=_trace_state(data.get("ts")),
        )
        parent = None
        if data.get("p"):
            parent = SpanContext(
                _hex_id(data["pt"], 32) if data.get("pt") else trace_id,
                _hex_id(data["p"], 16),
                is_remote=bool(data.get("pr")),
                trace_flags=flags,
            )
        events = [self._event(item) for item in _list(data.get("ev"))]
        dropped_events = _uint(data.get("de", 0))
        if self._events is not None and len(events) > self._events:
            removed = len(events) - self._events
            events = events[removed:]  # the SDK keeps the newest
            dropped_events += removed
            self.limited += removed
        links = [self._link(item) for item in _list(data.get("l"))]
        dropped_links = _uint(data.get("dl", 0))
        if self._links is not None and len(links) > self._links:
            removed = len(links) - self._links
            links = links[removed:]
            dropped_links += removed
            self.limited += removed
        description = data.get("sd")
        if description is not None and not isinstance(description, str):
            raise TypeError("status description is not a string")
        status = Status(_STATUS[int(data.get("sc", 0))], description)
        scope = None
        if "sn" in data:
            scope = InstrumentationScope(
                str(data["sn"]),
                _optional_str(data.get("sv")),
                _optional_str(data.get("su")),
                self._attributes(data.get("sa"), None, None),
            )
        start, end = _uint(data["s"]), _uint(data["e"])
        return ReadableSpan(
            name=str(data["n"]),
            context=context,
            parent=parent,
            resource=self._resource,
            attributes=self._attributes(
                data.get("a"), self._span_attrs, self._span_len, data.get("da", 0)
            ),
            events=_bounded(events, dropped_events),
            links=_bounded(links, dropped_links),
            kind=_KINDS[int(data.get("k", 0))],
            status=status,
            start_time=start,
            end_time=end,
            instrumentation_scope=scope,
        )

    def _event(self, item: Any) -> Event:
        name, timestamp, attributes, *rest = item
        return Event(
            str(name),
            self._attributes(attributes, self._event_attrs, self._len, rest[0] if rest else 0),
            timestamp=_uint(timestamp),
        )

    def _link(self, item: Any) -> Link:
        trace_id, span_id, flags, attributes, *rest = item
        remote = bool(rest[0]) if rest else False
        state = _trace_state(rest[1]) if len(rest) > 1 else None
        context = SpanContext(
            _hex_id(trace_id, 32),
            _hex_id(span_id, 16),
            is_remote=remote,
            trace_flags=TraceFlags(_uint(flags, 256)),
            trace_state=state,
        )
        dropped = rest[2] if len(rest) > 2 else 0
        return Link(context, self._attributes(attributes, self._link_attrs, self._len, dropped))

    def _attributes(
        self, raw: Any, maxlen: int | None, max_value_len: int | None, dropped: Any = 0
    ) -> BoundedAttributes:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise TypeError("attributes are not an object")
        removed = 0
        items = [(key, value) for key, value in raw.items() if key]
        removed += len(raw) - len(items)  # an empty key: dropped, as the SDK does
        if maxlen is not None and len(items) > maxlen:
            cut = len(items) - maxlen
            items = items[cut:]  # the SDK drops the oldest to make room for the newest
            removed += cut
            self.limited += cut
        values = {key: self._value(value, max_value_len) for key, value in items}
        attributes = BoundedAttributes(None, values, immutable=True)
        attributes.dropped = _uint(dropped) + removed
        return attributes

    def _value(self, value: Any, max_len: int | None) -> Any:
        if value is None or isinstance(value, (bool, float)):
            return value
        if isinstance(value, str):
            if max_len is not None and len(value) > max_len:
                self.limited += 1
                return value[:max_len]
            return value
        if isinstance(value, int):
            # OTLP's int is 64 bits: a larger one would fail the whole batch it is in.
            return value if _INT64_MIN <= value <= _INT64_MAX else str(value)
        if isinstance(value, list):
            return tuple(self._value(item, max_len) for item in value)
        if isinstance(value, dict):
            return {key: self._value(item, max_len) for key, item in value.items() if key}
        raise TypeError(f"attribute value of type {type(value).__name__}")


def _limit(limits: SpanLimits | None, name: str) -> int | None:
    """One limit of ``limits`` (None: no limit; the SDK turns ``UNSET`` into None)."""
    value = getattr(limits, name, None)
    return value if isinstance(value, int) and value >= 0 else None


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TypeError("not a list")
    return value


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _bounded(items: list[Any], dropped: int) -> BoundedList[Any]:
    bounded: BoundedList[Any] = BoundedList.from_seq(None, items)
    bounded.dropped = dropped
    return bounded


def decode_span(
    data: Mapping[str, Any], resource: Resource, limits: SpanLimits | None = None
) -> ReadableSpan:
    """One span of the wire format (see :meth:`SpanDecoder.decode`), ``limits`` applied.

    Raises:
        KeyError, ValueError, TypeError: malformed data.
    """
    return SpanDecoder(resource, limits).decode(data)


#: Characters of a script's logging record kept (message, exception text); the child
#: cuts them there already (``_aiorunner_logging.MAX_BODY``).
MAX_LOG_TEXT = 64 * 1024
#: Characters of output a record may announce (``_aiorunner_logging.MAX_WRITTEN``).
MAX_LOG_WRITTEN = 256 * 1024
_LOG_STREAMS = {"e": "stderr", "o": "stdout"}


@dataclass(slots=True)
class ScriptLogRecord:
    """One record of the script's Python ``logging``, as the bootstrap sent it (checked,
    bounded), before it becomes a :class:`~aiorunner.backend.LogRecordData`. (Not
    frozen: a frozen dataclass's ``__init__`` costs ~0.8 µs more, on each record.)"""

    #: ``LogRecord.created`` in ns since the epoch.
    time_unix_nano: int
    #: ``logging``'s level number (``WARNING`` = 30) and name.
    level: int
    level_name: str
    #: The logger's name (the record's instrumentation scope, as OTel's handler has it).
    logger: str
    #: ``record.getMessage()``.
    body: str
    #: The script's own current span (0: it had none; the run's ``execute_script`` is used).
    trace_id: int
    span_id: int
    trace_flags: int
    #: ``code.*`` and ``exception.*`` attributes.
    attributes: dict[str, Any]
    #: What the script's handlers wrote for it: (``"stdout"``/``"stderr"``, text).
    written: tuple[tuple[str, str], ...]


def _text(value: Any, limit: int = MAX_LOG_TEXT) -> str:
    if not isinstance(value, str):
        raise TypeError("not a string")
    return value[:limit]


def decode_log(data: Any) -> ScriptLogRecord:
    """
    One ``logging`` record of the wire format. Keys: ``tm`` time (ns), ``lv``/``ln``
    level number and name, ``n`` logger name, ``b`` message, ``fp``/``fl``/``fn`` file,
    line and function, ``xt``/``xm``/``xs`` exception type, message and stack trace,
    ``t``/``i``/``f`` the script's current span, ``w`` ``[[stream, text], ...]`` what the
    script's handlers wrote for it (``e`` stderr, ``o`` stdout).

    Raises:
        KeyError, ValueError, TypeError: malformed data.
    """
    if not isinstance(data, dict):
        raise TypeError("a log record is not an object")
    attributes: dict[str, Any] = {}
    if "fp" in data:
        attributes["code.file.path"] = _text(data["fp"])
        attributes["code.line.number"] = _uint(data.get("fl", 0), 1 << 31)
        attributes["code.function.name"] = _text(data.get("fn", ""))
    if "xt" in data:
        attributes["exception.type"] = _text(data["xt"])
        attributes["exception.message"] = _text(data.get("xm", ""))
        attributes["exception.stacktrace"] = _text(data.get("xs", ""))
    trace_id = span_id = flags = 0
    if "t" in data:
        trace_id, span_id = _hex_id(data["t"], 32), _hex_id(data["i"], 16)
        flags = _uint(data.get("f", 1), 256)
    written = []
    room = MAX_LOG_WRITTEN
    for stream, text in _list(data.get("w")):
        text = _text(text, room)
        room -= len(text)
        written.append((_LOG_STREAMS[stream], text))
    return ScriptLogRecord(
        time_unix_nano=_uint(data["tm"]),
        level=_uint(data["lv"], 1 << 31),
        level_name=_text(data["ln"], 64),
        logger=_text(data["n"], 1024),
        body=_text(data["b"]),
        trace_id=trace_id,
        span_id=span_id,
        trace_flags=flags,
        attributes=attributes,
        written=tuple(written),
    )


#: on_log(record): hand one record of the script's ``logging`` to the run's logs.
LogSink = Callable[[ScriptLogRecord], None]


#: submit(spans, dropped): hand finished spans, and counts of spans the child had to
#: drop per trace id, to the export pipeline.
Submit = Callable[[Sequence[ReadableSpan], Mapping[int, int]], None]


class SpanChannel:
    """The runner's end of one run's channel. Create with :func:`open_channel`."""

    def __init__(
        self, submit: Submit, resource: Resource, limits: SpanLimits | None = None
    ) -> None:
        self._submit = submit
        self._decoder = SpanDecoder(resource, limits)
        kind = _socket_type()
        self._ours, self._theirs = socket.socketpair(socket.AF_UNIX, kind)
        self._ours.setblocking(False)
        #: Unfinished messages by writer pid (see MAX_PENDING_*).
        self._partial: dict[int, bytearray] = {}
        self._pending_bytes = 0
        #: Writers whose current message was discarded: skip its chunks up to its last.
        self._skipping: dict[int, None] = {}
        self._closed = False
        self._reader_loop: asyncio.AbstractEventLoop | None = None
        self._child_pid: int | None = None
        self._warnings = 0
        #: Bytes of span messages accepted so far (see MAX_RUN_SPAN_BYTES).
        self.span_bytes = 0
        #: Spans dropped because the run had sent MAX_RUN_SPAN_BYTES already.
        self.over_budget = 0
        #: Spans received and handed to the pipeline.
        self.received = 0
        #: Spans the child reported it could not send (counted as dropped for their trace).
        self.dropped = 0
        #: Messages thrown away: unreadable (a bug, or a script writing to our fd), over
        #: MAX_MESSAGE_BYTES, or beyond the memory bound (MAX_PENDING_*).
        self.discarded = 0
        #: Bytes of those messages (as far as they arrived).
        self.discarded_bytes = 0
        #: Peak RSS in bytes (``VmHWM``) a process reported as it exited, by pid (asked
        #: for with ``report_peak``; see the bootstrap's ``_report_peak_at_exit``).
        self.exit_peaks: dict[int, int] = {}
        #: Where the script's ``logging`` records go (the run's logs; set when the
        #: child was asked for them, see ``child_env(logs=True)``).
        self.on_log: LogSink | None = None
        #: ``logging`` records received.
        self.log_records = 0
        #: Back-pressure: while this says False, the reader stops reading (the script
        #: blocks on its next write once the socket's buffer is full) and asks again
        #: every _RESUME_POLL seconds. :meth:`drain` called directly reads everything.
        self.ready: Callable[[], bool] | None = None
        self._resume_handle: asyncio.TimerHandle | None = None
        #: Times the reader paused for :attr:`ready`.
        self.pauses = 0
        self._queued = bytearray(4)

    @property
    def malformed(self) -> int:
        """Messages thrown away (the former name of :attr:`discarded`)."""
        return self.discarded

    @property
    def limited(self) -> int:
        """Attributes, events and links the span limits removed from received spans, and
        string values they cut (see :class:`SpanDecoder`)."""
        return self._decoder.limited

    @property
    def child_fd(self) -> int:
        """The fd to pass to the child (``pass_fds``)."""
        return self._theirs.fileno()

    def child_env(
        self,
        env: dict[str, str],
        traceparent: str,
        *,
        max_attributes: int | None,
        max_events: int | None,
        limits: SpanLimits | None = None,
        instrument: Sequence[str] = (),
        report_peak: bool = False,
        logs: bool = False,
    ) -> None:
        """Add the bootstrap to a Python child's environment ``env`` (in place);
        ``limits``: the other span limits, so the script's SDK applies them before
        sending (the runner applies them again on arrival); ``report_peak``: the child
        sends its peak RSS as it exits (:attr:`exit_peaks`); ``logs``: once the script
        configures ``logging``, it sends each record (to :attr:`on_log`)."""
        settings = [
            f"fd={self.child_fd}",
            f"ino={os.fstat(self.child_fd).st_ino}",
            f"parent={traceparent}",
        ]
        if max_attributes is not None:
            settings.append(f"attrs={max_attributes}")
        if max_events is not None:
            settings.append(f"events={max_events}")
        if limits is not None:
            # "none" = no limit (the script's SDK must not fall back to an OTEL_* value).
            for key, name in _CHILD_LIMITS.items():
                value = getattr(limits, name, None)
                settings.append(f"{key}={'none' if value is None else value}")
        if instrument:
            settings.append("instrument=" + ",".join(instrument))
        if report_peak:
            settings.append("hwm=1")
        if logs:
            settings.append("logs=1")
        env[INSCRIPT_VAR] = ";".join(settings)
        original = env.get("PYTHONPATH")
        env[PYTHONPATH_VAR] = "-" if original is None else "+" + original
        env["PYTHONPATH"] = BOOTSTRAP_DIR + (os.pathsep + original if original else "")

    def child_started(self, pid: int | None = None) -> None:
        """Close our copy of the child's end once the child holds it; ``pid``: the
        child's, the only writer whose exit peak is kept then."""
        self._child_pid = pid
        self._theirs.close()

    def start_reading(self) -> None:
        """Read and submit spans from event-loop callbacks as they arrive, until every
        writer has closed its end or :meth:`close` (no task: a run of a script that never
        touches OpenTelemetry pays one reader registration)."""
        loop = asyncio.get_running_loop()
        fd = self._ours.fileno()

        def on_readable() -> None:
            if self.drain(held=True):
                loop.remove_reader(fd)
                self._reader_loop = None
            elif self.ready is not None and not self.ready():
                loop.remove_reader(fd)
                self._reader_loop = None
                self.pauses += 1
                self._resume_handle = loop.call_later(_RESUME_POLL, resume)

        def resume() -> None:
            self._resume_handle = None
            if self._closed:
                return
            if self.ready is not None and not self.ready():
                self._resume_handle = loop.call_later(_RESUME_POLL, resume)
                return
            loop.add_reader(fd, on_readable)
            self._reader_loop = loop
            on_readable()

        loop.add_reader(fd, on_readable)
        self._reader_loop = loop

    async def pump(self) -> None:
        """Read and submit spans until every writer has closed its end, or until
        cancelled (run it in the run's task group)."""
        while not self._closed:
            await anyio.wait_readable(self._ours)
            if self.drain():
                return

    def drain(self, *, held: bool = False) -> bool:
        """Read everything queued now, without waiting; True once no writer is left
        (end of file: the script and every process it shared the socket with exited).
        ``held``: stop early (False) once :attr:`ready` says False."""
        if self._closed:
            return True
        ready = self.ready if held else None
        while True:
            if ready is not None and not ready():
                return False
            try:
                chunk = self._ours.recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:
                self._warn("in-script span channel failed: %s", exc)
                return True
            if not chunk:
                return True  # SOCK_SEQPACKET end of file (a datagram is never empty here)
            self._on_chunk(chunk)

    def drain_queued(self) -> None:
        """:meth:`drain` when something is queued: the check (``FIONREAD``, 0.4 µs) is
        what a run pays before each chunk of output when nothing is (an empty
        :meth:`drain` costs ~3 µs, as much as the chunk's record)."""
        if self._closed:
            return
        if _FIONREAD is not None:
            try:
                fcntl.ioctl(self._ours.fileno(), _FIONREAD, self._queued)
            except OSError:
                pass
            else:
                if not any(self._queued):
                    return
        self.drain()

    def _warn(self, message: str, *args: object) -> None:
        """Log the first MAX_WARNINGS problems of this channel; count the rest (one
        summary at :meth:`close`): a script writing garbage must not flood the log."""
        self._warnings += 1
        if self._warnings <= MAX_WARNINGS:
            logger.warning(message, *args)

    def _discard(self, size: int, why: str, *args: object) -> None:
        self.discarded += 1
        self.discarded_bytes += size
        self._warn("in-script span message discarded: " + why, *args)

    def _on_chunk(self, chunk: bytes) -> None:
        if len(chunk) < _HEADER_SIZE:
            self._discard(len(chunk), "a chunk of %d bytes has no header", len(chunk))
            return
        pid = int.from_bytes(chunk[:4], "big")
        more = chunk[4]
        size = len(chunk) - _HEADER_SIZE
        if pid in self._skipping:  # the rest of a message already discarded
            self.discarded_bytes += size
            if not more:
                del self._skipping[pid]
            return
        partial = self._partial.get(pid)
        if not more and partial is None:
            self._on_payload(chunk[_HEADER_SIZE:], pid)
            return
        if partial is None:
            if len(self._partial) >= MAX_PENDING_WRITERS:
                self._skip(pid, size)
                self._discard(
                    size,
                    "more than %d processes sending unfinished messages at once",
                    MAX_PENDING_WRITERS,
                )
                return
            partial = self._partial[pid] = bytearray()
        if len(partial) + size > MAX_MESSAGE_BYTES:
            self._drop_partial(pid, size)
            self._skip(pid, 0, more)
            self._discard(
                len(partial) + size, "over %d bytes (MAX_MESSAGE_BYTES)", MAX_MESSAGE_BYTES
            )
            return
        if self._pending_bytes + size > MAX_PENDING_BYTES:
            self._drop_partial(pid, size)
            self._skip(pid, 0, more)
            self._discard(
                len(partial) + size,
                "unfinished messages over %d bytes in all (MAX_PENDING_BYTES)",
                MAX_PENDING_BYTES,
            )
            return
        partial += memoryview(chunk)[_HEADER_SIZE:]
        self._pending_bytes += size
        if not more:
            del self._partial[pid]
            self._pending_bytes -= len(partial)
            self._on_payload(partial, pid)

    def _drop_partial(self, pid: int, size: int) -> None:
        partial = self._partial.pop(pid, None)
        if partial is not None:
            self._pending_bytes -= len(partial)

    def _skip(self, pid: int, size: int, more: int = 1) -> None:
        """Skip the rest of ``pid``'s current message (when there is a rest and room to
        remember it: past _MAX_SKIPPING writers, each further chunk counts as one)."""
        if more and len(self._skipping) < _MAX_SKIPPING:
            self._skipping[pid] = None

    def _on_payload(self, payload: bytes | bytearray, pid: int) -> None:
        try:
            message = json.loads(payload)
            if not isinstance(message, dict):
                raise TypeError("not a JSON object")
            spans = [self._decoder.decode(item) for item in _list(message.get("s"))]
            dropped = {
                _hex_id(k, 32): _uint(v, 1 << 32) for k, v in (message.get("d") or {}).items()
            }
            peak = _uint(message["m"]["hwm"]) if "m" in message else None
            log = decode_log(message["lg"]) if "lg" in message else None
            if log is not None and self.on_log is None:
                raise ValueError("a log record, and none were asked for")
        except Exception as exc:  # noqa: BLE001 - anything a script writes: count it, go on
            self._discard(len(payload), "it could not be read: %s: %.200s", type(exc).__name__, exc)
            return
        if peak is not None and (
            pid == self._child_pid
            if self._child_pid is not None
            else len(self.exit_peaks) < _MAX_EXIT_PEAKS
        ):
            self.exit_peaks[pid] = peak
        if spans:
            size = len(payload)
            if self.span_bytes + size > MAX_RUN_SPAN_BYTES:
                if not self.over_budget:
                    self._warn(
                        "the script's spans passed %d MiB (MAX_RUN_SPAN_BYTES): further "
                        "spans of this run are dropped and counted",
                        MAX_RUN_SPAN_BYTES >> 20,
                    )
                self.over_budget += len(spans)
                for span in spans:
                    trace_id = span.context.trace_id if span.context is not None else 0
                    dropped[trace_id] = dropped.get(trace_id, 0) + 1
                spans = []
            else:
                self.span_bytes += size
        self.received += len(spans)
        self.dropped += sum(dropped.values())
        if spans or dropped:
            self._submit(spans, dropped)
        if log is not None:
            self.log_records += 1
            self.on_log(log)  # type: ignore[misc]  # checked above

    def close(self) -> None:
        """Read what is left, then close both ends (idempotent). Messages left
        unfinished are discarded, counted; warnings past MAX_WARNINGS are summed up in
        one."""
        if self._closed:
            return
        if self._reader_loop is not None:
            self._reader_loop.remove_reader(self._ours.fileno())
            self._reader_loop = None
        if self._resume_handle is not None:
            self._resume_handle.cancel()
            self._resume_handle = None
        self.drain()
        self._closed = True
        self._ours.close()
        self._theirs.close()
        for partial in self._partial.values():
            self._discard(len(partial), "unfinished when the script ended")
        self._partial.clear()
        self._skipping.clear()
        self._pending_bytes = 0
        if self._warnings > MAX_WARNINGS:
            logger.warning(
                "in-script span channel: %d more problems like the above were not logged; "
                "in all %d messages (%d bytes) from the script were discarded "
                "(RunResult.export.inscript)",
                self._warnings - MAX_WARNINGS,
                self.discarded,
                self.discarded_bytes,
            )


#: Bootstrap setting -> SpanLimits attribute (beyond ``attrs``/``events``).
_CHILD_LIMITS = {
    "links": "max_links",
    "eattrs": "max_event_attributes",
    "lattrs": "max_link_attributes",
    "alen": "max_attribute_length",
    "salen": "max_span_attribute_length",
}


def open_channel(
    session: Any,
    config: TracingConfig,
    span: trace.Span,
    env: dict[str, str],
    *,
    python: bool,
    enabled: bool | None = None,
    instrument: Iterable[str] = (),
    report_peak: bool = False,
    logs: bool = False,
) -> SpanChannel | None:
    """
    Set up in-script tracing for one child, or return None when it does not apply: not
    a Python script, turned off (``enabled``, else ``config.in_script_tracing``), tracing
    off, or the ``execute_script`` span not sampled (the script's spans would not be
    recorded either).

    Adds the bootstrap to ``env``; the caller passes ``channel.child_fd`` in
    ``pass_fds``, calls ``child_started()`` after spawning, runs ``pump()`` in its task
    group while the script runs, and ``close()`` once it exited (or failed to start).
    ``logs``: the script's ``logging`` records are wanted (set :attr:`SpanChannel.on_log`).
    """
    if not python or not (config.in_script_tracing if enabled is None else enabled):
        return None
    if session is None or not getattr(session, "enabled", False):
        return None
    context = span.get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    from .instrument import requested

    limits = getattr(session, "span_limits", None)
    channel = SpanChannel(session.submit_spans, session.tracer_provider.resource, limits)
    traceparent = (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
    )
    channel.child_env(
        env,
        traceparent,
        max_attributes=config.max_attributes,
        max_events=config.max_events,
        limits=limits,
        instrument=tuple(dict.fromkeys([*(config.instrument or ()), *instrument, *requested()])),
        report_peak=report_peak,
        logs=logs,
    )
    return channel
