"""
The durable spool: what a backend could not take, kept on disk until it can.

A batch a backend could not take within its export deadline, or could not take because
it is unreachable, is appended here as one OTLP/JSON line (``otlp_json.encode_line``, the
format of the ``jsonl`` trace file). The next session that exports to that backend, in
any process, or ``aiorunner traces push --spool``, sends the lines back, oldest first, and
removes what was accepted. Permanent failures (HTTP 400, bad credentials) never come here.

Layout: one directory per backend name *and* destination (a hash of it), so two
endpoints never mix; in it one set of files per signal (``traces`` now; logs and metrics
slot in under their own prefix)::

    <spool dir>/<name>-<sha256(destination)[:12]>/
        .lock                                flock: appends, claims, removals, eviction
        destination                          the backend's name and destination, for people
        traces.active.jsonl                  the file appended to
        traces.<ns>-<pid>-<n>.jsonl          sealed segments (oldest first by name)
        traces.<ns>-<pid>-<n>.draining       a segment a drainer claimed
        traces.<ns>-<pid>-<n>.draining.done  bytes of it already accepted
        traces.<ns>-<pid>-<n>-hedge.jsonl    a hedge: a batch whose export is still in
                                             flight (flock held by the exporter)

Concurrency and crashes. Every change to the directory (append, seal, claim, eviction,
removal) happens under an exclusive ``flock`` of ``.lock``, so processes share a spool
safely and an appender never writes into a file someone claimed. A drainer claims the
oldest segment by renaming it to ``.draining`` and holds an exclusive ``flock`` on that
file while it sends; after each accepted line it records the offset in ``.done``
(fsynced), and once the file is done it removes it. A drainer that dies (even SIGKILL)
releases its flock: the next drainer takes the file over from the recorded offset, so a
line the backend accepted is not sent again (the one exception: a line whose acceptance
came back in the instant between the answer and the offset's write). Lines are written
whole or not at all (a short write is truncated back).

Hedges. A batch whose export attempt has gone unanswered for the hedge delay
(``AIORUNNER_SPOOL_HEDGE``) is written as a sealed file of its own (:meth:`Spool.hedge`),
created and ``flock``-ed under the directory lock, and the lock is held while the attempt
goes on. Drainers and eviction skip a locked hedge, so nobody sends it while its attempt
may still succeed. If the attempt succeeds, the exporter removes the file
(:meth:`Hedge.withdraw`); if it fails, or the process exits or dies meanwhile, the lock is
released and the file is a sealed segment like any other, drained later. Delivery is
at-least-once: a collector that took the batch but answered too late (or not before the
process exited) gets it again from the spool.

Bounds. The spool of one backend holds at most ``max_bytes``
(``AIORUNNER_SPOOL_MAX_BYTES``, default 256 MiB). The active file is sealed at an eighth
of that, and room is made by removing the oldest sealed segments first; their spans are
counted (``evicted``) and reported. A full disk (``ENOSPC``, ``EDQUOT``, ``EFBIG``) is
reported as an error of the append; the caller counts those spans as dropped.

Everything here blocks (file system calls): the pipeline calls it in worker threads.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "AppendOutcome",
    "Claim",
    "Hedge",
    "Spool",
    "SpoolUsage",
    "count_spans",
    "spool_name",
    "spool_usage",
]

TRACES = "traces"
_LOCK = ".lock"
_DESTINATION = "destination"
_NO_SPACE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
#: How a hedge file's name ends (before ``.jsonl`` / ``.draining``).
HEDGE_MARK = "-hedge"
# Every ended span of an OTLP/JSON line has this key once (events have timeUnixNano,
# links no time): counting it counts spans without decoding the line.
_SPAN_KEY = b'"endTimeUnixNano":'
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_sequence = itertools.count()


def count_spans(data: bytes) -> int:
    """The spans in OTLP/JSON lines written by ``encode_line`` (ended spans only)."""
    return data.count(_SPAN_KEY)


def spool_name(backend: str, destination: str) -> str:
    """The directory name of a backend's spool: its name (made safe for a file name)
    and a hash of its destination, so that two endpoints do not mix."""
    digest = hashlib.sha256(f"{backend}\0{destination}".encode()).hexdigest()[:12]
    return f"{_UNSAFE.sub('_', backend)[:64] or 'backend'}-{digest}"


@dataclass(frozen=True)
class AppendOutcome:
    """What an append did: spans written, older spans evicted to make room, and the
    reason when the line was not written (its spans are then dropped)."""

    written: int = 0
    evicted: int = 0
    error: str | None = None
    #: True when the error is a full disk or a file size limit.
    disk_full: bool = False


def _hedge_in_flight(path: Path) -> bool:
    """True when ``path`` is a hedge whose exporter still holds its lock (its export
    attempt may yet succeed: nobody else may send it or evict it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # releases the probe's lock, if it got it
    return False


def _is_hedge(name: str) -> bool:
    return name.endswith(HEDGE_MARK + ".jsonl")


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _key(name: str) -> str:
    """Sort key of a spool file: its ``<ns>-<pid>-<n>`` part (the active file last)."""
    middle = name.split(".", 2)[1] if name.count(".") >= 2 else ""
    return "~" if middle == "active" else middle


class Spool:
    """
    One backend's spool for one signal.

    Args:
        root: the spool directory (``AIORUNNER_SPOOL_DIR``, default ``.aiorunner/spool``).
        backend: the backend's name.
        destination: where it sends (no credentials); with the name, selects the directory.
        max_bytes: the bound of this directory (all signals' files together).
        signal: ``traces`` (the file prefix; logs and metrics get their own).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        backend: str,
        destination: str,
        *,
        max_bytes: int,
        signal: str = TRACES,
    ) -> None:
        self.backend = backend
        self.destination = destination
        self.directory = Path(root) / spool_name(backend, destination)
        self.max_bytes = max_bytes
        self.signal = signal
        self.segment_bytes = max(1, max_bytes // 8)
        self._active = f"{signal}.active.jsonl"

    def __repr__(self) -> str:
        return f"Spool({os.fspath(self.directory)!r}, {self.signal})"

    # ------------------------------------------------------------------ helpers

    def _absolute(self) -> None:
        """Made absolute at the first use (in a worker thread: it reads the current
        directory): messages name it, and a later chdir must not move it."""
        if not self.directory.is_absolute():
            self.directory = Path(os.path.abspath(self.directory))

    def _ensure(self) -> None:
        self._absolute()
        if not self.directory.is_dir():
            self.directory.mkdir(parents=True, exist_ok=True)
            note = self.directory / _DESTINATION
            note.write_text(f"{self.backend} {self.destination}\n", encoding="utf-8")

    def _entries(self) -> list[tuple[str, str, int]]:
        """(key, file name, size) of this signal's files, oldest first."""
        prefix = f"{self.signal}."
        found = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                name = entry.name
                if not name.startswith(prefix) or name.endswith(".done"):
                    continue
                try:
                    size = entry.stat(follow_symlinks=False).st_size
                except FileNotFoundError:
                    continue
                found.append((_key(name), name, size))
        found.sort()
        return found

    def _new_name(self, suffix: str) -> str:
        return f"{self.signal}.{time.time_ns():020d}-{os.getpid()}-{next(_sequence)}{suffix}"

    def _total(self) -> int:
        """Bytes of every file of the directory (all signals, claimed files included)."""
        total = 0
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name in (_LOCK, _DESTINATION):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    total += entry.stat(follow_symlinks=False).st_size
        return total

    # ------------------------------------------------------------------ writing

    def append(self, line: bytes, spans: int) -> AppendOutcome:
        """Append one OTLP/JSON line holding ``spans`` spans, making room by evicting the
        oldest sealed segments (counted). Never raises for I/O errors: they come back as
        the outcome's ``error``."""
        if len(line) > self.max_bytes:
            return AppendOutcome(
                error=f"a batch of {len(line)} bytes is larger than the spool's bound of "
                f"{self.max_bytes} bytes (AIORUNNER_SPOOL_MAX_BYTES)"
            )
        try:
            self._ensure()
            with _locked(self.directory):
                return self._append_locked(line, spans)
        except OSError as exc:
            full = exc.errno in _NO_SPACE_ERRNOS
            return AppendOutcome(
                error=f"cannot write the spool {os.fspath(self.directory)}: {exc.strerror or exc}",
                disk_full=full,
            )

    def _make_room(self, size: int) -> AppendOutcome:
        """Evict the oldest sealed segments until ``size`` more bytes fit (hedges whose
        export is in flight are not touched). Returns the evicted count, and an error
        when room cannot be made."""
        evicted = 0
        total = self._total()
        while total + size > self.max_bytes:
            victims = [e for e in self._entries() if e[1].endswith(".jsonl")]
            victim = next(
                (
                    e
                    for e in victims
                    if e[1] != self._active
                    and not (_is_hedge(e[1]) and _hedge_in_flight(self.directory / e[1]))
                ),
                None,
            )
            if victim is None:
                if any(e[1] == self._active and e[2] for e in victims):
                    self._seal()
                    continue
                return AppendOutcome(
                    evicted=evicted,
                    error=f"the spool {os.fspath(self.directory)} is full "
                    f"({total} bytes, AIORUNNER_SPOOL_MAX_BYTES={self.max_bytes}) and what "
                    "fills it is being sent right now",
                )
            path = self.directory / victim[1]
            with contextlib.suppress(FileNotFoundError):
                evicted += count_spans(path.read_bytes())
                path.unlink()
            total -= victim[2]
        return AppendOutcome(evicted=evicted)

    def _append_locked(self, line: bytes, spans: int) -> AppendOutcome:
        room = self._make_room(len(line))
        if room.error is not None:
            return room
        evicted = room.evicted
        path = self.directory / self._active
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            start = os.fstat(fd).st_size
            try:
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(errno.ENOSPC, "short write: the disk is full")
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)  # a line is written whole or not at all
                raise
            size = start + written
        finally:
            os.close(fd)
        if size >= self.segment_bytes:
            self._seal()
        return AppendOutcome(written=spans, evicted=evicted)

    def hedge(self, line: bytes, spans: int) -> tuple[AppendOutcome, Hedge | None]:
        """Write one OTLP/JSON line as a hedge: a sealed file of its own, locked for as
        long as the returned :class:`Hedge` holds it (see the module docstring). Room is
        made as for :meth:`append`. Never raises for I/O errors: they come back as the
        outcome's ``error`` (and no hedge)."""
        if len(line) > self.max_bytes:
            return self.append(line, spans), None  # the same refusal, worded once
        try:
            self._ensure()
            with _locked(self.directory):
                room = self._make_room(len(line))
                if room.error is not None:
                    return room, None
                path = self.directory / self._new_name(HEDGE_MARK + ".jsonl")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    # Locked before the directory lock is let go: no drainer ever sees
                    # it unlocked while its attempt is in flight.
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    written = os.write(fd, line)
                    if written != len(line):
                        raise OSError(errno.ENOSPC, "short write: the disk is full")
                except OSError:
                    os.close(fd)
                    with contextlib.suppress(OSError):
                        path.unlink()
                    raise
                return AppendOutcome(written=spans, evicted=room.evicted), Hedge(self, path, fd)
        except OSError as exc:
            full = exc.errno in _NO_SPACE_ERRNOS
            return AppendOutcome(
                error=f"cannot write the spool {os.fspath(self.directory)}: {exc.strerror or exc}",
                disk_full=full,
            ), None

    def _seal(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.directory / self._active, self.directory / self._new_name(".jsonl"))

    # ------------------------------------------------------------------ draining

    def pending(self) -> bool:
        """True when this signal has lines waiting (cheap: one directory listing)."""
        try:
            return any(size for _, _, size in self._entries())
        except FileNotFoundError:
            return False

    def claim(self) -> Claim | None:
        """Take the oldest file no live drainer holds (a drainer that died left its
        ``.draining`` file unlocked: it is taken over from its recorded offset), or
        ``None`` when nothing waits."""
        self._absolute()
        if not self.directory.is_dir():
            return None
        with _locked(self.directory):
            for _, name, size in self._entries():
                path = self.directory / name
                if name.endswith(".draining"):
                    claim = Claim.take_over(self, path)
                    if claim is not None:
                        return claim
                    continue
                if not size or (_is_hedge(name) and _hedge_in_flight(path)):
                    continue
                target = self.directory / (
                    self._new_name(".draining")
                    if name == self._active
                    else name.removesuffix(".jsonl") + ".draining"
                )
                os.rename(path, target)
                claim = Claim.take_over(self, target)
                if claim is not None:
                    return claim
        return None


class Hedge:
    """A hedge file whose export attempt is in flight: its ``flock`` is held (drainers
    and eviction leave it alone) until :meth:`withdraw` or :meth:`release`."""

    def __init__(self, spool: Spool, path: Path, fd: int) -> None:
        self.spool = spool
        self.path = path
        self._fd: int | None = fd

    def __repr__(self) -> str:
        return f"Hedge({os.fspath(self.path)!r})"

    def withdraw(self) -> bool:
        """The attempt succeeded: remove the file (under the directory lock). False
        when it was already gone (someone removed the spool)."""
        removed = False
        try:
            with _locked(self.spool.directory), contextlib.suppress(FileNotFoundError):
                self.path.unlink()
                removed = True
        except OSError:
            pass
        finally:
            self.release()
        return removed

    def release(self) -> None:
        """The attempt failed, or stops: let go of the lock; the file stays, a sealed
        segment for the drainers. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class Claim:
    """A spool file one drainer holds (exclusive ``flock`` on it) while it sends it."""

    def __init__(self, spool: Spool, path: Path, fd: int, offset: int) -> None:
        self.spool = spool
        self.path = path
        self._file = os.fdopen(fd, "rb")
        self._file.seek(offset)
        self.offset = offset
        self._done = Path(f"{path}.done")

    @classmethod
    def take_over(cls, spool: Spool, path: Path) -> Claim | None:
        """Open and lock ``path`` (under the directory lock); None if a live drainer
        holds it."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        offset = 0
        with contextlib.suppress(FileNotFoundError, ValueError):
            offset = int(Path(f"{path}.done").read_text().strip() or 0)
        return cls(spool, path, fd, offset)

    def next_line(self) -> tuple[bytes, int] | None:
        """The next whole line and the offset after it, or None at the end (a fragment
        without its newline, left by a crash mid-write, is skipped)."""
        while True:
            line = self._file.readline()
            if not line or not line.endswith(b"\n"):
                return None
            end = self._file.tell()
            if line.strip():
                return line, end
            self.offset = end

    def commit(self, offset: int) -> None:
        """Record that everything before ``offset`` was accepted (fsynced: a drainer
        taking this file over after a crash starts there)."""
        fd = os.open(self._done, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.pwrite(fd, f"{offset:020d}\n".encode(), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.offset = offset

    def finish(self) -> None:
        """Every line was accepted: remove the file (under the directory lock, so that
        no other drainer can be opening it meanwhile)."""
        with _locked(self.spool.directory):
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            with contextlib.suppress(FileNotFoundError):
                self._done.unlink()
            self._file.close()

    def release(self) -> None:
        """Stop here; the file stays, for the next drainer (from the recorded offset)."""
        self._file.close()


@dataclass(frozen=True)
class SpoolUsage:
    """One backend's spool, as ``aiorunner doctor`` shows it."""

    directory: str
    #: The backend's name and destination, as written when the spool was made.
    destination: str
    bytes: int
    files: int
    spans: int


def spool_usage(root: str | os.PathLike[str]) -> list[SpoolUsage]:
    """Every backend spool under ``root`` with its size (blocking: reads the files to
    count their spans). An absent root has none."""
    base = Path(root)
    if not base.is_dir():
        return []
    found = []
    for directory in sorted(p for p in base.iterdir() if p.is_dir()):
        size = files = spans = 0
        for path in directory.iterdir():
            if path.name in (_LOCK, _DESTINATION) or path.name.endswith(".done"):
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            size += len(data)
            files += 1
            spans += count_spans(data)
        note = ""
        with contextlib.suppress(OSError):
            note = (directory / _DESTINATION).read_text(encoding="utf-8").strip()
        found.append(SpoolUsage(os.fspath(directory), note, size, files, spans))
    return found
