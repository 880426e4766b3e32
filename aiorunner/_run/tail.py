"""
A byte buffer that keeps only the last N bytes written to it.

A script that prints gigabytes must cost no memory, so output is kept as a bounded tail:
chunks are appended to a deque and whole chunks fall off the front once the total exceeds
the limit (the oldest surviving chunk is trimmed when the tail is read).
"""

from __future__ import annotations

from collections import deque

__all__ = ["TailBuffer"]


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
