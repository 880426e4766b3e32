"""
The embedded default backend ``jsonl``: OTLP/JSON lines in a local file.

Each export appends one line, one ``ExportTraceServiceRequest`` in the OTLP JSON encoding
(see ``_otlp_json``): the format the OpenTelemetry Collector's ``otlpjsonfile`` receiver
reads, and what ``aiorunner traces`` shows. The file is ``.aiorunner/traces.jsonl`` under
the current directory unless ``AIORUNNER_TRACES_FILE`` or ``TracingConfig(traces_file=...)``
says otherwise; its directory is created on first write.

Several processes may write the same file: each line goes out under an exclusive
``flock`` of a descriptor opened with ``O_APPEND``, so lines never interleave. When the
file would pass ``AIORUNNER_TRACES_FILE_MAX_BYTES`` (default 64 MiB; 0 turns rotation
off) it is renamed ``traces.jsonl.1`` (older ones shift to ``.2``, ``.3``;
``AIORUNNER_TRACES_FILE_BACKUPS`` keeps 3 by default) under that lock, and writers that
still hold the old file notice the rename and reopen.

The file work runs in a worker thread (``_offload``, a lighter ``anyio.to_thread``: a run
writes two lines), or on the export thread when this is the pipeline's only backend (see
``JsonlBackend.write_on_export_thread``), rather than through aiofiles: aiofiles uses the
loop's default executor, which refuses new work once the interpreter has begun to exit,
and the last spans of a process are written exactly then.

Each span is written once, when it has ended: the file is exactly what the Collector's
``otlpjsonfile`` receiver forwards. A run going on for longer than half a second is shown
as running through a sidecar instead, ``traces.jsonl.live/`` (see ``live``): the export
worker holds a root span's start for ``span_start_delay`` and, when the run is still
going, calls ``on_span_start``, which writes the run's entry there; the export that writes
the finished root removes it. Ended spans wait at most ``max_schedule_delay`` (half a
second) for their batch, so a runner killed at any moment loses at most the last half
second of spans.

A line is written whole or not at all. Lines go out under an ``flock`` of the file (which
rotation takes too); when a write stops short (the disk filled up mid-line), the file is
truncated back to where the line began, so that no fragment is left for the next line to
be glued to (``jq`` and the Collector would stop reading there). A file that ends in a
fragment anyway (a crash mid-write, another writer) gets a newline before the next line.
A full disk (``ENOSPC``, a quota, ``EFBIG``) fails the export at once, without retrying
for the export timeout: the spans are counted as failed and one warning names the path.

Log records (a script's output) go to ``logs.jsonl`` beside the traces file (or
``AIORUNNER_LOGS_FILE``), one ``ExportLogsServiceRequest`` a line (the OTLP file format
holds one signal per file), under the same lock, whole-line and rotation rules; metric
points to ``metrics.jsonl`` (or ``AIORUNNER_METRICS_FILE``), one
``ExportMetricsServiceRequest`` a line, the same way.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from typing import TYPE_CHECKING, Any

from .. import _offload
from .._config import DEFAULT_TRACES_FILE
from .._exceptions import ConfigError
from ..backend import ExportResult
from . import live
from .live import START_HOLD
from .otlp_json import encode_line

try:
    import fcntl
except ImportError:  # not POSIX: lines are written without the cross-process lock
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from opentelemetry.sdk.trace import ReadableSpan

    from .._config import TracingConfig
    from ..backend import LogRecordData, MetricPointData

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
# The disk (or the quota, or RLIMIT_FSIZE) is full: retrying within the export timeout
# would only hold every run up for it (30 s by default), so the export fails at once.
_NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class JsonlBackend:
    """
    Appends each batch as one OTLP/JSON line to a file; keeps the live-runs view beside it.

    Args:
        path: the file (relative paths are taken from the current directory at the first
            write, which is when the directory is created).
        max_bytes: rotate before the file would exceed this size (0: never).
        backups: rotated files kept (``path.1`` newest ... ``path.N`` oldest).
        logs_path: the log records' file (default: ``logs.jsonl`` beside ``path``).
        metrics_path: the metric points' file (default: ``metrics.jsonl`` beside ``path``).
    """

    name = "jsonl"
    #: Never spooled: spooling to disk what the disk refused helps nobody.
    spool = False
    #: The export worker holds a root span's start this long and calls ``on_span_start``
    #: only if the run is still going then: most runs are shorter and never need an entry
    #: in the live-runs view (two file operations a run saved).
    span_start_delay = START_HOLD
    #: The most an ended span may wait in the pipeline's batcher (it caps
    #: OTEL_BSP_SCHEDULE_DELAY): a span is on disk within about half a second of its end.
    max_schedule_delay = 0.5
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
        logs_path: str | os.PathLike[str] | None = None,
        metrics_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.metrics_path = (
            os.fspath(metrics_path)
            if metrics_path
            else os.path.join(os.path.dirname(self.path), "metrics.jsonl")
        )
        self._metrics_resolved: str | None = None
        self.logs_path = (
            os.fspath(logs_path)
            if logs_path
            else os.path.join(os.path.dirname(self.path), "logs.jsonl")
        )
        self._logs_resolved: str | None = None
        self.max_bytes = max_bytes
        self.backups = backups
        self._resolved: str | None = None
        # One write at a time from this process (rotation is check-then-rename); held in
        # the worker thread, so an abandoned write still finishes before the next one.
        self._lock = threading.Lock()
        # Root span id -> name of the live-runs entry written for it (runs still going).
        self._live: dict[int, str] = {}

    def __repr__(self) -> str:
        return f"JsonlBackend({self.path!r})"

    # -------------------------------------------------------------- the Backend verbs

    async def export(self, spans: Sequence[ReadableSpan], *, timeout: float) -> ExportResult:
        if not spans:
            return ExportResult.success()
        try:
            await self._run(self._write, spans)
        except OSError as exc:
            return self._classify(exc)
        return ExportResult.success()

    async def export_logs(
        self, records: Sequence[LogRecordData], *, timeout: float
    ) -> ExportResult:
        """Append the records as one ``ExportLogsServiceRequest`` line of the logs file."""
        if not records:
            return ExportResult.success()
        try:
            await self._run(self._write_logs, records)
        except OSError as exc:
            return self._classify(exc, logs=True)
        return ExportResult.success()

    async def export_metrics(
        self, points: Sequence[MetricPointData], *, timeout: float
    ) -> ExportResult:
        """Append the points as one ``ExportMetricsServiceRequest`` line of the metrics
        file."""
        if not points:
            return ExportResult.success()
        try:
            await self._run(self._write_metrics, points)
        except OSError as exc:
            return self._classify(exc, signal="metrics")
        return ExportResult.success()

    async def on_span_start(self, span: ReadableSpan) -> None:
        """A run has been going for ``span_start_delay``: enter it in the live-runs view
        (an OSError is logged by the export worker, once)."""
        await self._run(self._enter_live, span)

    async def force_flush(self, *, timeout: float) -> bool:
        return True  # every export is written (and the file closed) before it returns

    async def shutdown(self, *, timeout: float) -> None:
        return None

    async def _run(self, func: Callable[..., None], *args: Any) -> None:
        if self.write_on_export_thread:
            self._write_here(func, *args)
        else:
            await _offload.run_sync(func, *args, abandon_on_cancel=True)

    # ------------------------------------------------------------ in a worker thread

    def _path(self) -> str:
        if self._resolved is None:
            self._resolved = os.path.abspath(self.path)
        return self._resolved

    def _write_here(self, func: Callable[..., None], *args: Any) -> None:
        """``func(*args)`` on the export thread (named apart: the tests allow blocking
        calls on an event loop thread here and nowhere else)."""
        func(*args)

    def _write(self, spans: Sequence[ReadableSpan]) -> None:
        data = encode_line(spans)
        try:
            with self._lock:
                self._append(data)
        finally:
            if self._live:
                # The run is over whether or not its line could be written.
                self._leave_live(spans)

    def _write_logs(self, records: Sequence[LogRecordData]) -> None:
        from .logs import encode_logs_line

        data = encode_logs_line(records)
        if self._logs_resolved is None:
            self._logs_resolved = os.path.abspath(self.logs_path)
        with self._lock:
            self._append(data, self._logs_resolved)

    def _write_metrics(self, points: Sequence[MetricPointData]) -> None:
        from .metrics import encode_metrics_line

        data = encode_metrics_line(points)
        if self._metrics_resolved is None:
            self._metrics_resolved = os.path.abspath(self.metrics_path)
        with self._lock:
            self._append(data, self._metrics_resolved)

    def _enter_live(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None:
            return
        name = live.entry_name(context.trace_id, context.span_id)
        directory = live.live_dir(self._path())
        try:
            live.write_entry(directory, name, encode_line([span]))
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot write the live-runs entry {os.path.join(directory, name)}: "
                f"{exc.strerror or exc} (the run is recorded all the same when it ends)",
            ) from None
        self._live[context.span_id] = name

    def _leave_live(self, spans: Sequence[ReadableSpan]) -> None:
        live_entries = self._live
        directory = live.live_dir(self._path())
        for span in spans:
            context = span.context
            name = live_entries.pop(context.span_id, None) if context is not None else None
            if name is not None:
                with contextlib.suppress(OSError):  # gone already, or not ours to remove
                    live.remove_entry(directory, name)

    def _open(self, path: str) -> tuple[int, bool]:
        """``path`` opened for appending, and whether it can be read too (to see if it
        ends in a fragment; a write-only file is appended to all the same)."""
        flags = os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        try:
            try:
                return os.open(path, flags | os.O_RDWR, 0o644), True
            except FileNotFoundError:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                return os.open(path, flags | os.O_RDWR, 0o644), True
        except PermissionError:
            return os.open(path, flags | os.O_WRONLY, 0o644), False

    def _append(self, data: bytes, path: str | None = None) -> None:
        path = path or self._path()
        for _ in range(10):
            fd, readable = self._open(path)
            try:
                if fcntl is not None:
                    # Exclusive among aiorunner's writers (released by close()): rotation is
                    # check-then-rename, and truncating back a short write must not cut
                    # another process's line.
                    fcntl.flock(fd, fcntl.LOCK_EX)
                size = self._current_size(fd, path)
                if size is None:
                    continue  # rotated by another process: write to the new file
                if self.max_bytes > 0 and not self._room_for(size, path, len(data)):
                    continue  # rotated now: write to the new file
                _write_whole(fd, data, size, readable=readable)
                return
            finally:
                os.close(fd)
        raise OSError(errno.EAGAIN, f"the file {path} kept being rotated under us")

    @staticmethod
    def _current_size(fd: int, path: str) -> int | None:
        """The size of the file ``fd`` holds, or None when ``path`` is no longer that
        file (rotated away)."""
        stat = os.fstat(fd)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            return None
        if (current.st_ino, current.st_dev) != (stat.st_ino, stat.st_dev):
            return None
        return stat.st_size

    def _room_for(self, current: int, path: str, size: int) -> bool:
        """Under the lock: True when the line fits, False when the file had to be rotated
        now (then the caller reopens)."""
        if current == 0 or current + size <= self.max_bytes:
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

    def _classify(self, exc: OSError, *, logs: bool = False, signal: str = "") -> ExportResult:
        if signal == "metrics":
            path = self._metrics_resolved or self.metrics_path
            what, var, field, items = "metrics", "AIORUNNER_METRICS_FILE", "metrics_file", "points"
        elif logs:
            path = self._logs_resolved or self.logs_path
            what, var, field, items = "logs", "AIORUNNER_LOGS_FILE", "logs_file", "records"
        else:
            path = self._resolved or self.path
            what, var, field, items = "traces", "AIORUNNER_TRACES_FILE", "traces_file", "spans"
        reason = exc.strerror or str(exc)
        if exc.errno in _PERMANENT_ERRNOS:
            return ExportResult.permanent(
                f"cannot write the {what} file {path}: {reason}; set {var} "
                f"(or TracingConfig({field}=...)) to a writable path"
            )
        if exc.errno in _NO_SPACE_ERRNOS:
            return ExportResult.permanent(
                f"cannot write the {what} file {path}: {reason}; these {items} are lost (not "
                "retried; the file holds no part of them). Free some space there or set "
                f"{var} to a file on another disk"
            )
        return ExportResult.retryable(f"cannot write the {what} file {path}: {reason}")


def _write_whole(fd: int, data: bytes, start: int, *, readable: bool) -> None:
    """
    Append ``data`` (one line) to ``fd`` (``O_APPEND``, under the lock, so ``start``, the
    file's size, is where the line begins): whole, or not at all. A write that stops
    short (the disk filled mid-line) is truncated back to where the line began before
    the error is raised.

    Raises:
        OSError: the line could not be written (the file is as it was).
    """
    if start and readable and os.pread(fd, 1, start - 1) != b"\n":
        # The file ends in a fragment (a crash mid-write, a writer that takes no lock):
        # end it, so that this line stays readable.
        data = b"\n" + data
    view = memoryview(data)
    try:
        while view:
            written = os.write(fd, view)
            if written <= 0:
                raise OSError(errno.EIO, "write() wrote nothing")
            view = view[written:]
    except OSError:
        if len(view) != len(data):
            with contextlib.suppress(OSError):  # the write's own error is the one to tell
                os.ftruncate(fd, start)
        raise


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
        "logs_path": config.logs_file or None,
        "metrics_path": config.metrics_file or None,
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
    return JsonlBackend(
        options["path"],
        max_bytes=options["max_bytes"],
        backups=options["backups"],
        logs_path=options["logs_path"],
        metrics_path=options["metrics_path"],
    )
