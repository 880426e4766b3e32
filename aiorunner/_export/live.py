"""
The live-runs view beside a trace file: the runs going on now, kept out of the file.

The OTLP file (``traces.jsonl``) holds each span once, when it has ended: it is exactly
what the Collector's ``otlpjsonfile`` receiver forwards, and a backend fed from it never
sees a span twice. (Before issue 15 a run's root was also written at its start, with
``endTimeUnixNano`` "0": replayed into Phoenix the start won, and every root ended in
1970.) What is running is kept in a sidecar directory next to the file::

    .aiorunner/traces.jsonl
    .aiorunner/traces.jsonl.live/<trace id>-<span id>.json    one per running run

An entry is written when a run has lasted :data:`START_HOLD` seconds (a shorter run
never gets one: its finished root reaches the file first) and removed once the run's
finished root was handed to the file (whether or not the line could be written: the
run is over either way). It is one JSON object::

    {"format": 1, "pid": 4242, "process_start": 1700000000.25, "host": "build-7",
     "request": <the root span as an ExportTraceServiceRequest, endTimeUnixNano "0">}

``pid`` and ``process_start`` (the process's creation time, as psutil reads it) name the
process that writes the run's spans. An entry whose process is gone, or whose pid now
belongs to a process created at another time (pid reuse), is a run whose runner died
before it could finish (SIGKILL, power loss): readers show it as ``lost``. An entry of
another host (a shared file system) cannot be checked and reads as running. Entries of
lost runs stay, as the record that those runs were lost, until removed by hand.

Each entry is written to a temporary name and renamed into place, so readers see a whole
entry or none. Everything here is synchronous file I/O (worker or export thread only).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "FORMAT",
    "LIVE_SUFFIX",
    "START_HOLD",
    "LiveEntry",
    "entry_name",
    "live_dir",
    "read_entries",
    "remove_entry",
    "write_entry",
]

#: Seconds a run goes on before it is entered in the live view (shorter runs never are).
START_HOLD = 0.5
#: The sidecar directory is the trace file's path with this appended.
LIVE_SUFFIX = ".live"
#: Version of an entry's layout (readers skip entries of a version they do not know).
FORMAT = 1
#: A process created within this many seconds of the recorded time is the same process:
#: psutil derives creation times from the boot time, which moves with clock steps.
_START_TOLERANCE = 1.0

_identity_lock = threading.Lock()
_identity: tuple[int, bytes] | None = None


def live_dir(traces_file: str | os.PathLike[str]) -> str:
    """The live-runs directory of ``traces_file`` (``traces.jsonl.live``)."""
    return os.fspath(traces_file) + LIVE_SUFFIX


def entry_name(trace_id: int, span_id: int) -> str:
    """The entry's file name: the run's trace id and root span id, in hex."""
    return f"{trace_id:032x}-{span_id:016x}.json"


def _process_start(pid: int) -> float | None:
    """The creation time of process ``pid`` (None when there is no such process, or it
    is a zombie: a runner killed and not yet reaped is dead)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return float(process.create_time())
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:  # it exists; another user's: trust the pid alone
        return -1.0


def _header() -> bytes:
    """This process's part of every entry, computed once per process (a fork gets its
    own: the pid is checked)."""
    global _identity
    pid = os.getpid()
    identity = _identity
    if identity is not None and identity[0] == pid:
        return identity[1]
    with _identity_lock:
        start = _process_start(pid) or 0.0
        head = json.dumps(
            {"format": FORMAT, "pid": pid, "process_start": start, "host": socket.gethostname()},
            separators=(",", ":"),
        )
        header = head[:-1].encode() + b',"request":'
        _identity = (pid, header)
        return header


def write_entry(directory: str, name: str, request_line: bytes) -> None:
    """
    Enter a running run: ``request_line`` is its root span encoded as one OTLP/JSON line
    (``otlp_json.encode_line``). Written to a temporary name, then renamed into place.

    Raises:
        OSError: the directory cannot be created or written.
    """
    data = _header() + request_line.rstrip(b"\n") + b"}\n"
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(temporary, flags, 0o644)
    except FileNotFoundError:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(temporary, flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        os.close(fd)
        os.unlink(temporary)
        raise
    os.close(fd)
    os.replace(temporary, os.path.join(directory, name))


def remove_entry(directory: str, name: str) -> None:
    """The run ended: remove its entry (gone already is fine)."""
    try:
        os.unlink(os.path.join(directory, name))
    except FileNotFoundError:
        pass


# ------------------------------------------------------------------------- readers


@dataclass(frozen=True)
class LiveEntry:
    """One running (or lost) run read from the live-runs directory."""

    path: Path
    pid: int
    process_start: float
    host: str
    #: The root span as an OTLP/JSON ``ExportTraceServiceRequest`` dict.
    request: dict[str, Any]
    #: The process that wrote it is gone (or its pid was reused): the run will never end.
    lost: bool


def _alive(pid: int, process_start: float, host: str) -> bool:
    if host != socket.gethostname():
        return True  # another machine's process: cannot be checked from here
    start = _process_start(pid)
    if start is None:
        return False
    return start < 0 or not process_start or abs(start - process_start) <= _START_TOLERANCE


def _entry_files(directory: Path) -> Iterator[Path]:
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        if name.endswith(".json") and not name.startswith("."):
            yield directory / name


def read_entries(traces_file: str | os.PathLike[str]) -> tuple[list[LiveEntry], int]:
    """
    The entries of ``traces_file``'s live-runs directory, each checked against the
    process that wrote it; with the number of entries that could not be read (removed
    while reading is not counted: that run just ended).
    """
    entries: list[LiveEntry] = []
    unreadable = 0
    for path in _entry_files(Path(live_dir(traces_file))):
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            unreadable += 1
            continue
        try:
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            pid = int(data["pid"])
            process_start = float(data.get("process_start") or 0.0)
            host = str(data.get("host") or "")
            request = data["request"]
            if not isinstance(request, dict):
                raise TypeError("request is not an object")
        except (AttributeError, KeyError, TypeError, ValueError):
            unreadable += 1
            continue
        lost = not _alive(pid, process_start, host)
        entries.append(LiveEntry(path, pid, process_start, host, request, lost))
    return entries, unreadable
