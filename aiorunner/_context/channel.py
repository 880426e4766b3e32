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
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from .bootstrap import BOOTSTRAP_DIR

if TYPE_CHECKING:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource

    from .._config import TracingConfig

__all__ = [
    "INSCRIPT_VAR",
    "PYTHONPATH_VAR",
    "SpanChannel",
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
#: A payload larger than this (a runaway script) is thrown away, with a warning.
_MAX_PAYLOAD = 64 << 20

_KINDS = {kind.value: kind for kind in SpanKind}
_STATUS = {code.value: code for code in StatusCode}


def _socket_type() -> int:
    return getattr(socket, "SOCK_SEQPACKET", socket.SOCK_DGRAM)


# ------------------------------------------------------------------------ decoding


def _attrs(raw: Mapping[str, Any] | None, dropped: int = 0) -> BoundedAttributes:
    values = {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in (raw or {}).items()
    }
    attributes = BoundedAttributes(None, values, immutable=True)
    attributes.dropped = dropped
    return attributes


def _bounded(items: list[Any], dropped: int) -> BoundedList[Any]:
    bounded: BoundedList[Any] = BoundedList.from_seq(None, items)
    bounded.dropped = dropped
    return bounded


def decode_span(data: Mapping[str, Any], resource: Resource) -> ReadableSpan:
    """
    One span of the wire format as a ReadableSpan carrying ``resource``.

    Keys: ``n`` name, ``t``/``i`` trace and span id (hex), ``f`` flags, ``ts`` tracestate,
    ``p`` parent span id (``pt`` its trace id when it differs), ``k`` kind, ``s``/``e``
    start and end (ns), ``a``/``da`` attributes and how many were dropped, ``ev``/``de``
    events ``[name, ns, attributes]``, ``l``/``dl`` links ``[trace, span, flags, attrs]``,
    ``sc``/``sd`` status code and description, ``sn``/``sv``/``su``/``sa`` the
    instrumentation scope. Parents are marked local: they are spans of this same run.

    Raises:
        KeyError, ValueError, TypeError: malformed data.
    """
    trace_id = int(data["t"], 16)
    state = data.get("ts")
    context = SpanContext(
        trace_id,
        int(data["i"], 16),
        is_remote=False,
        trace_flags=TraceFlags(int(data.get("f", 1))),
        trace_state=TraceState.from_header([state]) if state else None,
    )
    parent = None
    if data.get("p"):
        parent = SpanContext(
            int(data["pt"], 16) if data.get("pt") else trace_id,
            int(data["p"], 16),
            is_remote=False,
            trace_flags=context.trace_flags,
        )
    events = [
        Event(name, _attrs(attrs), timestamp=int(ts)) for name, ts, attrs in data.get("ev", ())
    ]
    links = [
        Link(
            SpanContext(int(t, 16), int(s, 16), is_remote=False, trace_flags=TraceFlags(f)),
            _attrs(attrs),
        )
        for t, s, f, attrs in data.get("l", ())
    ]
    status = Status(_STATUS[int(data.get("sc", 0))], data.get("sd"))
    scope = None
    if "sn" in data:
        scope = InstrumentationScope(
            data["sn"], data.get("sv"), data.get("su"), _attrs(data.get("sa"))
        )
    return ReadableSpan(
        name=str(data["n"]),
        context=context,
        parent=parent,
        resource=resource,
        attributes=_attrs(data.get("a"), int(data.get("da", 0))),
        events=_bounded(events, int(data.get("de", 0))),
        links=_bounded(links, int(data.get("dl", 0))),
        kind=_KINDS[int(data.get("k", 0))],
        status=status,
        start_time=int(data["s"]),
        end_time=int(data["e"]),
        instrumentation_scope=scope,
    )


#: submit(spans, dropped): hand finished spans, and counts of spans the child had to
#: drop per trace id, to the export pipeline.
Submit = Callable[[Sequence[ReadableSpan], Mapping[int, int]], None]


class SpanChannel:
    """The runner's end of one run's channel. Create with :func:`open_channel`."""

    def __init__(self, submit: Submit, resource: Resource) -> None:
        self._submit = submit
        self._resource = resource
        kind = _socket_type()
        self._ours, self._theirs = socket.socketpair(socket.AF_UNIX, kind)
        self._ours.setblocking(False)
        self._partial: dict[int, bytearray] = {}
        self._closed = False
        self._reader_loop: asyncio.AbstractEventLoop | None = None
        #: Spans received and handed to the pipeline.
        self.received = 0
        #: Spans the child reported it could not send (counted as dropped for their trace).
        self.dropped = 0
        #: Payloads that were not valid (a bug, or a script writing to our fd).
        self.malformed = 0
        #: Peak RSS in bytes (``VmHWM``) a process reported as it exited, by pid (asked
        #: for with ``report_peak``; see the bootstrap's ``_report_peak_at_exit``).
        self.exit_peaks: dict[int, int] = {}

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
        instrument: Sequence[str] = (),
        report_peak: bool = False,
    ) -> None:
        """Add the bootstrap to a Python child's environment ``env`` (in place);
        ``report_peak``: the child sends its peak RSS as it exits (:attr:`exit_peaks`)."""
        settings = [
            f"fd={self.child_fd}",
            f"ino={os.fstat(self.child_fd).st_ino}",
            f"parent={traceparent}",
        ]
        if max_attributes is not None:
            settings.append(f"attrs={max_attributes}")
        if max_events is not None:
            settings.append(f"events={max_events}")
        if instrument:
            settings.append("instrument=" + ",".join(instrument))
        if report_peak:
            settings.append("hwm=1")
        env[INSCRIPT_VAR] = ";".join(settings)
        original = env.get("PYTHONPATH")
        env[PYTHONPATH_VAR] = "-" if original is None else "+" + original
        env["PYTHONPATH"] = BOOTSTRAP_DIR + (os.pathsep + original if original else "")

    def child_started(self) -> None:
        """Close our copy of the child's end once the child holds it."""
        self._theirs.close()

    def start_reading(self) -> None:
        """Read and submit spans from event-loop callbacks as they arrive, until every
        writer has closed its end or :meth:`close` (no task: a run of a script that never
        touches OpenTelemetry pays one reader registration)."""
        loop = asyncio.get_running_loop()
        fd = self._ours.fileno()

        def on_readable() -> None:
            if self.drain():
                loop.remove_reader(fd)
                self._reader_loop = None

        loop.add_reader(fd, on_readable)
        self._reader_loop = loop

    async def pump(self) -> None:
        """Read and submit spans until every writer has closed its end, or until
        cancelled (run it in the run's task group)."""
        while not self._closed:
            await anyio.wait_readable(self._ours)
            if self.drain():
                return

    def drain(self) -> bool:
        """Read everything queued now, without waiting; True once no writer is left
        (end of file: the script and every process it shared the socket with exited)."""
        if self._closed:
            return True
        while True:
            try:
                chunk = self._ours.recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:
                logger.warning("in-script span channel failed: %s", exc)
                return True
            if not chunk:
                return True  # SOCK_SEQPACKET end of file (a datagram is never empty here)
            self._on_chunk(chunk)

    def _on_chunk(self, chunk: bytes) -> None:
        if len(chunk) < _HEADER_SIZE:
            self.malformed += 1
            return
        pid = int.from_bytes(chunk[:4], "big")
        more = chunk[4]
        partial = self._partial.get(pid)
        if more:
            if partial is None:
                partial = self._partial[pid] = bytearray()
            partial += chunk[_HEADER_SIZE:]
            if len(partial) > _MAX_PAYLOAD:
                del self._partial[pid]
                self.malformed += 1
                logger.warning("in-script span payload over %d bytes discarded", _MAX_PAYLOAD)
            return
        if partial is not None:
            del self._partial[pid]
            partial += chunk[_HEADER_SIZE:]
            payload: bytes = bytes(partial)
        else:
            payload = chunk[_HEADER_SIZE:]
        self._on_payload(payload, pid)

    def _on_payload(self, payload: bytes, pid: int) -> None:
        try:
            message = json.loads(payload)
            spans = [decode_span(item, self._resource) for item in message.get("s", ())]
            dropped = {int(k, 16): int(v) for k, v in message.get("d", {}).items()}
            if "m" in message:
                self.exit_peaks[pid] = int(message["m"]["hwm"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.malformed += 1
            logger.warning("in-script span payload could not be read: %s", exc)
            return
        self.received += len(spans)
        self.dropped += sum(dropped.values())
        if spans or dropped:
            self._submit(spans, dropped)

    def close(self) -> None:
        """Read what is left, then close both ends (idempotent)."""
        if self._closed:
            return
        if self._reader_loop is not None:
            self._reader_loop.remove_reader(self._ours.fileno())
            self._reader_loop = None
        self.drain()
        self._closed = True
        self._ours.close()
        self._theirs.close()
        if self._partial:
            self.malformed += len(self._partial)
            self._partial.clear()


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
) -> SpanChannel | None:
    """
    Set up in-script tracing for one child, or return None when it does not apply: not
    a Python script, turned off (``enabled``, else ``config.in_script_tracing``), tracing
    off, or the ``execute_script`` span not sampled (the script's spans would not be
    recorded either).

    Adds the bootstrap to ``env``; the caller passes ``channel.child_fd`` in
    ``pass_fds``, calls ``child_started()`` after spawning, runs ``pump()`` in its task
    group while the script runs, and ``close()`` once it exited (or failed to start).
    """
    if not python or not (config.in_script_tracing if enabled is None else enabled):
        return None
    if session is None or not getattr(session, "enabled", False):
        return None
    context = span.get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    from .instrument import requested

    channel = SpanChannel(session.submit_spans, session.tracer_provider.resource)
    traceparent = (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
    )
    channel.child_env(
        env,
        traceparent,
        max_attributes=config.max_attributes,
        max_events=config.max_events,
        instrument=tuple(dict.fromkeys([*(config.instrument or ()), *instrument, *requested()])),
        report_peak=report_peak,
    )
    return channel
