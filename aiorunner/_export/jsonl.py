"""
The embedded default backend ``jsonl``: OTLP/JSON lines in a local file.

Each export appends one line, one ``ExportTraceServiceRequest`` in the OTLP JSON encoding
(see ``_otlp_json``): the format the OpenTelemetry Collector's ``otlpjsonfile`` receiver
reads, and what ``aiorunner traces`` shows. The file is ``.aiorunner/traces.jsonl`` under
the current directory unless ``AIORUNNER_TRACES_FILE`` or ``TracingConfig(traces_file=...)``
says otherwise; its directory is created on first write.

Several processes may write the same file: each line goes out in a single ``write()`` on
a descriptor opened with ``O_APPEND``, so lines never interleave. When the file would pass
``AIORUNNER_TRACES_FILE_MAX_BYTES`` (default 64 MiB; 0 turns rotation off) it is renamed
``traces.jsonl.1`` (older ones shift to ``.2``, ``.3``; ``AIORUNNER_TRACES_FILE_BACKUPS``
keeps 3 by default) under an ``flock``, and writers that still hold the old file notice
the rename and reopen.

The file work runs in a worker thread (``_offload``, a lighter ``anyio.to_thread``: a run
writes two lines), or on the export thread when this is the pipeline's only backend (see
``JsonlBackend.write_on_export_thread``), rather than through aiofiles: aiofiles uses the
loop's default executor, which refuses new work once the interpreter has begun to exit,
and the last spans of a process are written exactly then.

A root span that starts is also written (``on_span_start``) with ``endTimeUnixNano`` "0"
and ``aiorunner.pending`` = true, so a run shows as running; readers let a later line with
the same ``spanId`` supersede it. The export worker lets that marker share the line of the
run's first spans (``starts_travel_with_batches``): it is written with them, or half a
second after the start (``_worker.START_HOLD``), or at the next flush, whichever comes
first; one write per run saved.
"""

from __future__ import annotations

import errno
import os
import threading
from typing import TYPE_CHECKING, Any

from .. import _offload
from .._config import DEFAULT_TRACES_FILE
from .._exceptions import ConfigError
from ..backend import ExportResult
from .otlp_json import encode_line

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import ReadableSpan

    from .._config import TracingConfig

__all__ = [
    "AIORUNNER_TRACES_FILE_BACKUPS",
    "AIORUNNER_TRACES_FILE_MAX_BYTES",
    "JsonlBackend",
    "create_backend",
]

#: Size in bytes past which the traces file is rotated (0: never rotate).
AIORUNNER_TRACES_FILE_MAX_BYTES = "AIORUNNER_TRACES_FILE_MAX_BYTES"
#: How many rotated files to keep (traces.jsonl.1 ... .N; 0: drop the old file).
AIORUNNER_TRACES_FILE_BACKUPS = "AIORUNNER_TRACES_FILE_BACKUPS"

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_BACKUPS = 3

# Errors that writing again will not fix: the path is wrong or not ours to write.
_PERMANENT_ERRNOS = {
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.ENAMETOOLONG,
    errno.ELOOP,
}


class JsonlBackend:
    """
    Appends each batch as one OTLP/JSON line to a file.

    Args:
        path: the file (relative paths are taken from the current directory at the first
            write, which is when the directory is created).
        max_bytes: rotate before the file would exceed this size (0: never).
        backups: rotated files kept (``path.1`` newest ... ``path.N`` oldest).
    """

    name = "jsonl"
    #: Announcing a start is writing its pending copy, which may as well share the line
    #: of the next batch: the export worker then holds it briefly (one write per run saved).
    starts_travel_with_batches = True
    #: Set by the export pipeline when this is its only backend: each line is then
    #: written on the export thread itself (its own private event loop; appending a line
    #: takes microseconds), which saves two thread hand-offs per export, four per run. With
    #: other backends beside it, lines are written by a worker thread, so that a slow disk
    #: cannot hold the other backends up. Either way a run waits at most its export timeout.
    write_on_export_thread = False

    def __init__(
        self,
        path: str | os.PathLike[str] = DEFAULT_TRACES_FILE,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backups: int = DEFAULT_BACKUPS,
    ) -> None:
        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._resolved: str | None = None
        # One write at a time from this process (rotation is check-then-rename); held in
        # the worker thread, so an abandoned write still finishes before the next one.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"JsonlBackend({self.path!r})"

    # -------------------------------------------------------------- the Backend verbs

    async def export(self, spans: Sequence[ReadableSpan], *, timeout: float) -> ExportResult:
        if not spans:
            return ExportResult.success()
        try:
            if self.write_on_export_thread:
                self._write_here(spans)
            else:
                await _offload.run_sync(self._write, spans, abandon_on_cancel=True)
        except OSError as exc:
            return self._classify(exc)
        return ExportResult.success()

    async def on_span_start(self, span: ReadableSpan) -> None:
        """Write the "still running" line of a root span that just started."""
        result = await self.export([span], timeout=0)
        if not result.ok:
            raise OSError(result.error)

    async def force_flush(self, *, timeout: float) -> bool:
        return True  # every export is written (and the file closed) before it returns

    async def shutdown(self, *, timeout: float) -> None:
        return None

    # ------------------------------------------------------------ in a worker thread

    def _path(self) -> str:
        if self._resolved is None:
            self._resolved = os.path.abspath(self.path)
        return self._resolved

    def _write_here(self, spans: Sequence[ReadableSpan]) -> None:
        """``_write`` on the export thread (named apart: the tests allow blocking calls on
        an event loop thread here and nowhere else)."""
        self._write(spans)

    def _write(self, spans: Sequence[ReadableSpan]) -> None:
        data = encode_line(spans)
        with self._lock:
            self._append(data)

    def _open(self, path: str) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        try:
            return os.open(path, flags, 0o644)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            return os.open(path, flags, 0o644)

    def _append(self, data: bytes) -> None:
        path = self._path()
        for _ in range(10):
            fd = self._open(path)
            try:
                if self.max_bytes > 0 and not self._room_for(fd, path, len(data)):
                    continue  # rotated (by us or another process): write to the new file
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                return
            finally:
                os.close(fd)
        raise OSError(errno.EAGAIN, f"the traces file {path} kept being rotated under us")

    def _room_for(self, fd: int, path: str, size: int) -> bool:
        """Under an exclusive lock of the open file: False when it was rotated away or
        had to be rotated now (then the caller reopens), True when the line fits."""
        try:
            import fcntl
        except ImportError:  # not POSIX: rotate without the cross-process lock
            fcntl = None  # type: ignore[assignment]
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released by close()
        stat = os.fstat(fd)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            return False
        if (current.st_ino, current.st_dev) != (stat.st_ino, stat.st_dev):
            return False
        if stat.st_size == 0 or stat.st_size + size <= self.max_bytes:
            return True
        self._rotate(path)
        return False

    def _rotate(self, path: str) -> None:
        if self.backups <= 0:
            os.remove(path)
            return
        for index in range(self.backups - 1, 0, -1):
            older = f"{path}.{index}"
            if os.path.exists(older):
                os.replace(older, f"{path}.{index + 1}")
        os.replace(path, f"{path}.1")

    def _classify(self, exc: OSError) -> ExportResult:
        path = self._resolved or self.path
        reason = exc.strerror or str(exc)
        if exc.errno in _PERMANENT_ERRNOS:
            return ExportResult.permanent(
                f"cannot write the traces file {path}: {reason}; set AIORUNNER_TRACES_FILE "
                "(or TracingConfig(traces_file=...)) to a writable path"
            )
        return ExportResult.retryable(f"cannot write the traces file {path}: {reason}")


def _int_setting(config: TracingConfig, option: str, var: str, default: int) -> int:
    value: Any = config.option(option)
    source = f"backend_options[{option!r}]"
    if value is None:
        raw = os.environ.get(var, "").strip()
        if not raw:
            return default
        value, source = raw, var
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}={value!r} is not an integer; use e.g. {default}") from None
    if number < 0 or isinstance(value, bool):
        raise ConfigError(f"{source}={value!r} must be an integer >= 0")
    return number


def settings(config: TracingConfig) -> dict[str, Any]:
    """The jsonl backend's path and rotation settings from a resolved config."""
    return {
        "path": config.traces_file or DEFAULT_TRACES_FILE,
        "max_bytes": _int_setting(
            config, "traces_file_max_bytes", AIORUNNER_TRACES_FILE_MAX_BYTES, DEFAULT_MAX_BYTES
        ),
        "backups": _int_setting(
            config, "traces_file_backups", AIORUNNER_TRACES_FILE_BACKUPS, DEFAULT_BACKUPS
        ),
    }


def create_backend(config: TracingConfig) -> JsonlBackend:
    """Entry point ``jsonl``.

    Raises:
        ConfigError: a rotation setting is not a non-negative integer.
    """
    options = settings(config)
    return JsonlBackend(options["path"], max_bytes=options["max_bytes"], backups=options["backups"])
