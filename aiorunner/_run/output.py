"""
A script's output as log records: lines, multi-line records, severity, limits.

Each stream of a run has an :class:`OutputAssembler`; the child's pipe readers feed it the
bytes as they arrive and it hands finished records to a sink. Why here and not in a
logging handler inside the script: output is the one thing every script has, in any
language, and reading it costs the script nothing.

Rules (the README's "The script's output as logs" table says them to users):

- One record per line: the body is the line decoded as UTF-8 (invalid bytes replaced),
  without its newline; what is left without a newline when the stream ends is a record too.
- A Python traceback, from ``Traceback (most recent call last):`` through the exception
  line, chained tracebacks and exception groups included, is ONE record (ERROR); so is a
  warning and its source line (``file.py:3: UserWarning: x`` + the indented line, WARN).
- Severity per the logs data model (SeverityNumber: DEBUG 5, INFO 9, WARN 13, ERROR 17,
  FATAL 21): stdout is INFO; stderr is INFO unless the line says otherwise with a leading
  level (``WARNING:``/``ERROR:``/``CRITICAL:`` as ``logging.basicConfig`` writes them,
  ``[warn]``, ``E: ``...), a logfmt ``level=error``, or, on either stream, a JSON object
  line with a ``level``/``severity``/``levelname`` field (its ``msg``/``message``/``event``
  becomes the body and its other fields attributes).
- A line longer than :data:`LINE_LIMIT` is cut there (``aiorunner.log.truncated_bytes``
  says how much was left out) and never held whole: a 10 MB line costs 16 KiB of memory.

Linear in the output: a chunk is scanned once for newlines and an unfinished line is kept
as pieces, joined once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "LINE_LIMIT",
    "RECORD_LIMIT",
    "OutputAssembler",
    "OutputLine",
    "classify",
    "line_key",
]

#: Longest line body kept (bytes); the rest is counted in ``aiorunner.log.truncated_bytes``.
LINE_LIMIT = 16 * 1024
#: Longest multi-line record (a traceback) kept (bytes).
RECORD_LIMIT = 64 * 1024

# SeverityNumber of the logs data model, by the level names scripts write.
DEBUG, INFO, WARN, ERROR, FATAL = 5, 9, 13, 17, 21
_LEVELS: dict[str, int] = {
    "trace": 1,
    "debug": DEBUG,
    "dbg": DEBUG,
    "d": DEBUG,
    "info": INFO,
    "information": INFO,
    "i": INFO,
    "notice": 10,
    "warn": WARN,
    "warning": WARN,
    "w": WARN,
    "error": ERROR,
    "err": ERROR,
    "e": ERROR,
    "critical": FATAL,
    "crit": FATAL,
    "fatal": FATAL,
    "panic": FATAL,
    "alert": FATAL,
    "emerg": FATAL,
    "emergency": FATAL,
}
# Names a line may start with in plain text (one-letter ones only with a colon, below).
_PREFIX = re.compile(
    r"(?:\d{4}-\d\d-\d\d[T ][\d:.,]+\S*\s+(?:-\s+)?(?:[\w.\-]+\s+-\s+)?)?"  # asctime - name -
    r"(?:\[(?P<bracketed>[A-Za-z]{1,11})\]"  # [warn], [ERROR]
    r"|(?P<upper>TRACE|DEBUG|INFO|NOTICE|WARNING|WARN|ERROR|CRITICAL|FATAL|PANIC)\b"
    r"|(?P<letter>[DIWEF]):\s)"  # E: message
)
_LOGFMT = re.compile(r"(?:^|\s)(?:level|lvl|severity)=\"?(?P<level>[A-Za-z]+)")
_WARNING = re.compile(r"^.+:\d+: (?:[A-Z]\w*)?Warning: ")
_TRACEBACK = re.compile(
    r"^(?P<indent>\s*)(?:\+ )?(?:Exception Group )?Traceback \(most recent call last\):$"
)
_CHAIN = frozenset(
    {
        "",
        "During handling of the above exception, another exception occurred:",
        "The above exception was the direct cause of the following exception:",
    }
)
_JSON_LEVEL_KEYS = ("level", "severity", "levelname", "log.level", "lvl", "loglevel")
_JSON_BODY_KEYS = ("msg", "message", "event")


@dataclass(slots=True)
class OutputLine:
    """A finished record of one stream, before ids and resource are added."""

    body: str
    severity_number: int
    severity_text: str
    #: Extra attributes (a JSON line's fields); None when there are none.
    attributes: dict[str, Any] | None
    #: Bytes left out of the body (over :data:`LINE_LIMIT` / :data:`RECORD_LIMIT`).
    truncated_bytes: int


def _level(name: str) -> int:
    return _LEVELS.get(name.lower(), 0)


def _json_fields(line: str) -> tuple[int, str, str, dict[str, Any]] | None:
    """A JSON object line's (severity, severity text, body, other fields), or None."""
    try:
        fields = json.loads(line)
    except ValueError:
        return None
    if not isinstance(fields, dict):
        return None
    severity, text = 0, ""
    for key in _JSON_LEVEL_KEYS:
        value = fields.get(key)
        if isinstance(value, str) and (severity := _level(value)):
            text = value
            del fields[key]
            break
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 24:
            severity, text = value, str(value)  # already a SeverityNumber
            del fields[key]
            break
    body = line
    for key in _JSON_BODY_KEYS:
        value = fields.get(key)
        if isinstance(value, str):
            body = value
            del fields[key]
            break
    attributes: dict[str, Any] = {}
    for key, value in fields.items():
        kind = type(value)
        if kind in (str, bool, float) or (kind is int and -(1 << 63) <= value < (1 << 63)):
            attributes[str(key)] = value
        elif value is not None:  # objects, lists, huge ints: as JSON text
            attributes[str(key)] = json.dumps(value, ensure_ascii=False, default=str)
    return severity, text, body, attributes


def classify(stream: str, line: str) -> tuple[int, str, str, dict[str, Any] | None]:
    """
    The severity of one line: (SeverityNumber, severity text, body, attributes).

    stdout is INFO unless it is a JSON object line naming its level; stderr is INFO unless
    the line names its level (see the module docstring).
    """
    if line.startswith("{") and line.endswith("}"):
        parsed = _json_fields(line)
        if parsed is not None:
            severity, text, body, attributes = parsed
            if severity:
                return severity, text, body, attributes or None
            return INFO, "INFO", body, attributes or None
    if stream == "stderr":
        match = _PREFIX.match(line)
        if match is not None:
            name = match.group("bracketed") or match.group("upper") or match.group("letter")
            if severity := _level(name):
                return severity, name.upper(), line, None
        if _WARNING.match(line):
            return WARN, "WARNING", line, None
        match = _LOGFMT.search(line)
        if match is not None and (severity := _level(match.group("level"))):
            return severity, match.group("level").upper(), line, None
    return INFO, "INFO", line, None


class OutputAssembler:
    """
    Turns one stream's bytes into records, handed to ``sink`` as they finish.

    A traceback or a warning is held until the line after it shows it is complete (or
    :meth:`flush` is called: at the end of the stream, or by the run's timer when nothing
    more came for a moment, see :attr:`holding`).
    """

    __slots__ = (
        "_mode",
        "_overflow",
        "_pending",
        "_pending_size",
        "_pending_truncated",
        "_piece_size",
        "_pieces",
        "_sink",
        "skip",
        "stream",
    )

    def __init__(self, stream: str, sink: Callable[[OutputLine], object]) -> None:
        self.stream = stream
        self._sink = sink
        # The unfinished physical line: at most LINE_LIMIT bytes of it, and what was cut.
        self._pieces: list[bytes] = []
        self._piece_size = 0
        self._overflow = 0
        # A multi-line record being assembled: its lines and the mode it is in.
        self._pending: list[str] = []
        self._pending_size = 0
        self._pending_truncated = 0
        self._mode = ""  # "frames", "after", "group", "warning" or "" (none)
        #: skip(line) -> True: the line is a record already (the script's ``logging``
        #: reported it, see RunLogs); it is left out. None: every line is read.
        self.skip: Callable[[str], bool] | None = None

    @property
    def holding(self) -> bool:
        """True while a multi-line record waits for the line that ends it."""
        return bool(self._mode)

    def feed(self, data: bytes) -> None:
        """Take the next chunk of the stream."""
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._take(data[start:end])
            item = self._finish_physical()
            if self.skip is None or not self.skip(item[0]):
                self._line(item)
            start = end + 1
        if start < len(data):
            self._take(data[start:] if start else data)

    def flush(self) -> None:
        """The stream ended (or went quiet): emit what is held, the unfinished line too."""
        if self._pieces or self._overflow:
            item = self._finish_physical()
            if self.skip is None or not self.skip(item[0]):
                self._line(item)
        self._emit_pending()

    def flush_held(self) -> None:
        """The stream went quiet while a multi-line record waits (a traceback a script
        logged and went on): emit it, unless a line is half written (it may belong)."""
        if not self._pieces and not self._overflow:
            self._emit_pending()

    # -- physical lines ------------------------------------------------------------

    def _take(self, piece: bytes) -> None:
        room = LINE_LIMIT - self._piece_size
        if len(piece) > room:
            self._overflow += len(piece) - max(room, 0)
            piece = piece[: max(room, 0)]
        if piece:
            self._pieces.append(piece)
            self._piece_size += len(piece)

    def _finish_physical(self) -> tuple[str, int]:
        raw = self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)
        overflow = self._overflow
        self._pieces = []
        self._piece_size = 0
        self._overflow = 0
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if overflow and (partial := _partial_tail(raw)):
            # The cut fell inside a character: leave its first bytes out too.
            raw = raw[:-partial]
            overflow += partial
        return raw.decode("utf-8", errors="replace"), overflow

    # -- records -------------------------------------------------------------------

    def _line(self, item: tuple[str, int]) -> None:
        line, overflow = item
        mode = self._mode
        if mode:
            if mode == "frames":
                if line[:1].isspace():
                    self._append(line, overflow)
                    return
                self._append(line, overflow)  # the exception line ends the traceback
                self._mode = "after"
                return
            if mode == "after":
                if line in _CHAIN:
                    self._append(line, overflow)
                    return
                if _TRACEBACK.match(line):
                    self._append(line, overflow)
                    self._mode = "frames"
                    return
                if self._pending and self._pending[-1] in _CHAIN and line[:1].isspace():
                    self._append(line, overflow)  # e.g. an exception note
                    return
            elif mode == "group":
                if line[:1].isspace() or line.startswith(("+", "|")):
                    self._append(line, overflow)
                    return
            elif mode == "warning" and line[:1].isspace() and len(self._pending) == 1:
                self._append(line, overflow)
                self._emit_pending()
                return
            self._emit_pending()
        if self.stream == "stderr" or line.startswith("Traceback"):
            match = _TRACEBACK.match(line)
            if match is not None:
                self._start(line, overflow, "group" if match.group("indent") else "frames")
                return
            if _WARNING.match(line):
                self._start(line, overflow, "warning")
                return
        severity, text, body, attributes = classify(self.stream, line)
        self._sink(OutputLine(body, severity, text, attributes, overflow))

    def _start(self, line: str, overflow: int, mode: str) -> None:
        self._pending = [line]
        self._pending_size = len(line)
        self._pending_truncated = overflow
        self._mode = mode

    def _append(self, line: str, overflow: int) -> None:
        self._pending_truncated += overflow
        if self._pending_size + len(line) + 1 > RECORD_LIMIT:
            self._pending_truncated += len(line.encode("utf-8", errors="replace")) + 1
            return
        self._pending.append(line)
        self._pending_size += len(line) + 1

    def _emit_pending(self) -> None:
        mode = self._mode
        if not mode:
            return
        lines = self._pending
        while len(lines) > 1 and lines[-1] == "":
            lines.pop()  # a blank line after a traceback belongs to nothing
        self._mode = ""
        self._pending = []
        truncated = self._pending_truncated
        self._pending_truncated = 0
        self._pending_size = 0
        if mode == "warning":
            self._sink(OutputLine("\n".join(lines), WARN, "WARNING", None, truncated))
        else:
            self._sink(OutputLine("\n".join(lines), ERROR, "ERROR", None, truncated))


def line_key(line: str) -> str:
    """``line`` (text a script wrote, without its newline) as :class:`OutputAssembler`
    will read it back from the pipe: cut at :data:`LINE_LIMIT` bytes, a trailing ``\r``
    left out. Lines the script's ``logging`` reported are recognised by it."""
    if len(line) > LINE_LIMIT // 4:  # may be over the limit in UTF-8
        raw = line.encode("utf-8", errors="replace")
        if len(raw) > LINE_LIMIT:
            raw = raw[:LINE_LIMIT]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if partial := _partial_tail(raw):
                raw = raw[:-partial]
            return raw.decode("utf-8", errors="replace")
    return line.removesuffix("\r")


def _partial_tail(raw: bytes) -> int:
    """How many bytes at the end of ``raw`` begin a UTF-8 sequence the cut left unfinished."""
    tail = raw[-3:]
    for index in range(len(tail) - 1, -1, -1):
        byte = tail[index]
        if byte < 0x80:
            return 0
        if byte >= 0xC0:  # a lead byte: how long its sequence should be
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            have = len(tail) - index
            return have if have < need else 0
    return 0
