"""
aiorunner's in-script bootstrap: the script's Python ``logging`` records, sent to the
runner as log records (see ``aiorunner/_bootstrap``).

Loaded only when the script configures logging, that is when its root logger gets its
first handler (``logging.basicConfig()``, ``dictConfig``, ``root.addHandler``, or a
module-level ``logging.warning()`` that configures the root itself); ``sitecustomize``
watches for it without importing ``logging``. A script that never configures logging
never loads this module, and its logging output is read from stderr as any line is.

From then on every record a logger of the script lets through (its logger levels) is
written to the channel as it is handled, *before* the script's own handlers write it:
time, level number and name, logger name, message, exception, ``code.*``, the trace and
span id of the script's own current span (when it traces with OpenTelemetry; otherwise
the runner uses its ``execute_script`` span), and the text each of the script's handlers
that write to stdout or stderr is about to write. The runner recognises those lines on
the pipe by that text and makes no second record of them; since the message is in the
socket's queue before the line is in the pipe, the runner always knows the text first.

Why ``Logger.callHandlers`` and not one more handler on the root: a handler on the root
runs after the handlers of the record's own logger (and after the root's earlier ones),
so their lines would reach the runner before the record did; ``callHandlers`` is called
once per record, before any of them.

Bounds: the message is cut to :data:`MAX_BODY` characters, the exception text too, each
written line to :data:`MAX_LINE` and all of them to :data:`MAX_WRITTEN` (lines past it
are not announced: the runner then reads them as output). Never raises into the script.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: ``typing`` costs a script ~1 ms to import
if TYPE_CHECKING:
    from typing import Any

__all__ = ["install"]

#: Characters of a record's message (and of its exception text) sent.
MAX_BODY = 64 * 1024
#: Characters of one announced output line (the runner cuts lines at 16 KiB of bytes).
MAX_LINE = 16 * 1024
#: Characters of announced output per record, all lines together.
MAX_WRITTEN = 256 * 1024

_state: dict[str, Any] = {}


def install(settings: dict[str, str], inscript: Any) -> None:
    """Start sending records: called once, when the root logger got its first handler."""
    import logging

    if _state:
        return
    channel = inscript.open_channel(settings)
    original = logging.Logger.callHandlers
    formatter = logging.Formatter()
    _state.update(channel=channel, original=original)

    def callHandlers(self: logging.Logger, record: logging.LogRecord) -> None:
        if not channel.broken:
            try:
                data = _record(logging, formatter, self, record)
            except Exception:  # noqa: BLE001 - unreadable here: its lines stay output
                channel.dropped += 1
            else:
                channel.send_log(data)
        original(self, record)

    callHandlers.__doc__ = original.__doc__
    logging.Logger.callHandlers = callHandlers  # type: ignore[method-assign]


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit]


def _stream(handler: Any) -> str | None:
    """``"e"`` / ``"o"`` when ``handler`` writes lines to the run's stderr / stdout."""
    stream = getattr(handler, "stream", None)
    if stream is None or getattr(handler, "terminator", None) != "\n":
        return None
    # The interpreter's own streams; anything else (sys.stderr replaced by a StringIO
    # included) by the fd it writes to.
    if stream is sys.__stderr__:
        return "e"
    if stream is sys.__stdout__:
        return "o"
    try:
        fd = stream.fileno()
    except Exception:  # noqa: BLE001 - no fd (a StringIO): written nowhere we read
        return None
    return "e" if fd == 2 else "o" if fd == 1 else None


def _written(logging: Any, logger: Any, record: Any) -> list[list[str]]:
    """What the script's handlers will write to stdout/stderr for ``record``, walking
    the handlers as ``Logger.callHandlers`` does (``lastResort`` included)."""
    writes: list[list[str]] = []
    size = 0
    found = 0
    current = logger
    handlers: list[Any] = []
    while current:
        for handler in current.handlers:
            found += 1
            if record.levelno >= handler.level:
                handlers.append(handler)
        if not current.propagate:
            break
        current = current.parent
    if not found:
        last = logging.lastResort
        if last is not None and record.levelno >= last.level:
            handlers.append(last)
    for handler in handlers:
        stream = _stream(handler)
        if stream is None or size >= MAX_WRITTEN:
            continue
        try:
            if handler.filters and not handler.filter(record):
                continue
            text = handler.format(record)
        except Exception:  # noqa: BLE001, S112 - the handler will report its own error
            continue
        if not isinstance(text, str):
            continue
        lines = [_cut(line, MAX_LINE) for line in text.split("\n")]
        text = "\n".join(lines)
        size += len(text)
        if size > MAX_WRITTEN:
            text = text[: len(text) - (size - MAX_WRITTEN)]
            text = text[: text.rfind("\n")] if "\n" in text else ""
            if not text:
                continue
        writes.append([stream, text])
    return writes


def _record(logging: Any, formatter: Any, logger: Any, record: Any) -> dict[str, Any]:
    """The wire form of one record (keys: ``aiorunner._context.channel.decode_log``)."""
    data: dict[str, Any] = {
        "tm": int(record.created * 1e9),
        "lv": record.levelno,
        "ln": str(record.levelname),
        "n": str(record.name),
        "b": _cut(record.getMessage(), MAX_BODY),
    }
    pathname = record.pathname
    if pathname:
        data["fp"] = str(pathname)
        data["fl"] = record.lineno
        data["fn"] = str(record.funcName)
    writes = _written(logging, logger, record)
    if writes:
        data["w"] = writes
    exc_info = record.exc_info
    if exc_info and exc_info[0] is not None:
        text = record.exc_text or formatter.formatException(exc_info)
        data["xt"] = exc_info[0].__qualname__
        module = exc_info[0].__module__
        if module and module != "builtins":
            data["xt"] = module + "." + data["xt"]
        data["xm"] = _cut(str(exc_info[1]), MAX_BODY)
        data["xs"] = _cut(text, MAX_BODY)
    trace = sys.modules.get("opentelemetry.trace")
    if trace is not None:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            data["t"] = format(context.trace_id, "032x")
            data["i"] = format(context.span_id, "016x")
            data["f"] = int(context.trace_flags)
    return data
