"""
A byte buffer that keeps only the last N bytes written to it.

A script that prints gigabytes must cost no memory, so output is kept as a bounded tail:
chunks are appended to a deque and whole chunks fall off the front once the total exceeds
the limit (the oldest surviving chunk is trimmed when the tail is read).
"""

from __future__ import annotations

import re
from collections import deque

__all__ = ["TailBuffer", "last_error_line"]

# What Python's faulthandler prints after a fatal error: the threads' stacks, then the
# extension modules loaded. None of it says what went wrong.
_FAULT_DUMP = re.compile(
    r"^(?:(?:Current thread|Thread) 0x[0-9a-fA-F]+ .*\(most recent call first\):"
    r"|\s+File \".*\", line \d+ in .*|\s+<no Python frame>|\s+\.\.\.|"
    r"Extension modules: .*)$"
)
_FATAL = "Fatal Python error:"
# "ModuleNotFoundError: No module named 'encodings'" under a fatal error.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning): ")
_MAX_LINE = 500


def last_error_line(stderr: str) -> str:
    """
    The line of a program's stderr that says why it failed, whole (up to 500 characters):
    its last non-blank line, past Python's faulthandler dump. A ``Fatal Python error:``
    (a broken interpreter: no standard library, a bad ``PYTHONHOME``) is followed by a
    thread dump whose last line is ``<no Python frame>``, a fragment that says nothing;
    the fatal error's own line is given instead, with the exception under it
    (``... filesystem encoding (ModuleNotFoundError: No module named 'encodings')``).
    """
    lines = [line.rstrip() for line in stderr.splitlines() if line.strip()]
    fatal = max((i for i, line in enumerate(lines) if line.startswith(_FATAL)), default=-1)
    if fatal >= 0:
        message = lines[fatal].strip()
        for line in lines[fatal + 1 :]:
            if _FAULT_DUMP.match(line):
                break
            if _EXCEPTION_LINE.match(line):
                message += f" ({line.strip()})"
                break
        return message[:_MAX_LINE]
    while lines and _FAULT_DUMP.match(lines[-1]):
        lines.pop()
    return lines[-1].strip()[:_MAX_LINE] if lines else ""


class TailBuffer:
    """Keeps the last ``limit`` bytes; counts what fell off in ``truncated``."""

    __slots__ = ("_chunks", "_size", "limit", "total", "truncated")

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"tail limit must be >= 0, got {limit}")
        self.limit = limit
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self.total = 0
        self.truncated = 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        self.total += len(data)
        if len(data) >= self.limit:
            # The new chunk alone fills the tail: everything before it goes.
            self.truncated += self._size + len(data) - self.limit
            self._chunks.clear()
            if self.limit:
                self._chunks.append(data[len(data) - self.limit :])
            self._size = self.limit
            return
        self._chunks.append(data)
        self._size += len(data)
        while self._size - len(self._chunks[0]) >= self.limit:
            dropped = self._chunks.popleft()
            self._size -= len(dropped)
            self.truncated += len(dropped)

    def getvalue(self) -> bytes:
        data = b"".join(self._chunks)
        if len(data) > self.limit:
            extra = len(data) - self.limit
            data = data[extra:]
            # Keep the accounting exact once the value was read.
            self._chunks = deque([data])
            self._size = len(data)
            self.truncated += extra
        return data

    def last_lines(self, max_bytes: int, max_lines: int = 40) -> str:
        """The last lines of the tail, at most ``max_bytes`` and ``max_lines``, decoded."""
        data = self.getvalue()[-max_bytes:]
        lines = data.decode("utf-8", errors="replace").splitlines()
        return "\n".join(lines[-max_lines:])
