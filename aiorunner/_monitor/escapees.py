"""
Escaped descendants: processes of a run that left the script's process group and lost
their parent (a daemon's double fork into its own session), found again by the runner.

Linux only. The runner is a child subreaper (see ``aiorunner/_run/containment.py``), so
an orphan of any descendant of ours is reparented to *this* process, not to init. Which
run it belongs to is told by the run token: every script is started with
``AIORUNNER_RUN_TOKEN=<random>`` in its environment, which its descendants inherit, and
``/proc/<pid>/environ`` keeps the environment a process was exec'd with (a forked child
without exec shows its parent's). A token is random per run, so a process is claimed by a
run only when it carries that run's token: the app's own children (``subprocess.run``,
``asyncio.create_subprocess_exec``), which are also children of this process, are never
claimed, and their exit statuses are never taken from whoever waits for them.

Why the main thread's children file only: the kernel reparents an orphan to the
subreaper's first live thread, the thread group leader, so
``/proc/<pid>/task/<pid>/children`` lists every orphan we inherit (and the children the
main thread itself forked). One small read per call, plus one read of ``stat`` per child
and of ``environ`` once per new child.

Every call here reads ``/proc``: worker threads only (or a ``_here`` function the tests
allow on the loop).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable

__all__ = [
    "RUN_TOKEN_ENV",
    "ProcState",
    "claim",
    "claimed",
    "find_escaped",
    "forget",
    "may_find",
    "proc_state",
]

#: The environment variable holding a run's token (not a secret: it only names the run).
RUN_TOKEN_ENV = "AIORUNNER_RUN_TOKEN"
_MARK = RUN_TOKEN_ENV.encode() + b"="
_ENVIRON_LIMIT = 1 << 20  # an environment is at most a few hundred KiB (ARG_MAX)
_SUPPORTED = sys.platform == "linux"


class ProcState(NamedTuple):
    """What ``/proc/<pid>/stat`` says of a process."""

    state: str  # "R", "S", "Z", ...
    ppid: int
    pgid: int
    start: int  # clock ticks since boot: with the pid, it names one process


def proc_state(pid: int) -> ProcState | None:
    """The state of ``pid``, or None when it does not exist (reaped)."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        stat = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # comm may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return ProcState(fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[19]))
    except (IndexError, ValueError):
        return None


def _token_of(pid: int) -> bytes | None:
    """The run token in ``pid``'s environment, or None (none, unreadable, a zombie)."""
    try:
        fd = os.open(f"/proc/{pid}/environ", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    chunks: list[bytes] = []
    size = 0
    try:
        while size < _ENVIRON_LIMIT:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if data.startswith(_MARK):
        at = len(_MARK)
    else:
        at = data.find(b"\0" + _MARK)
        if at < 0:
            return None
        at += 1 + len(_MARK)
    end = data.find(b"\0", at)
    return data[at : end if end >= 0 else len(data)]


_lock = threading.Lock()
#: (pid, start) of every child of ours looked at -> its token (None: not a run's).
#: Pruned to the current children at each call, so it stays as small as that list.
_checked: dict[tuple[int, int], bytes | None] = {}
#: pid -> (token, start) of every escaped process claimed by a run and not yet forgotten.
_claimed: dict[int, tuple[bytes, int]] = {}


def _own_children() -> list[int]:
    me = os.getpid()
    try:
        fd = os.open(f"/proc/{me}/task/{me}/children", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return []
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        return []
    finally:
        os.close(fd)
    return [int(c) for c in b"".join(chunks).split()]


def find_escaped(
    tokens: Collection[bytes], exclude: Collection[int] = ()
) -> dict[bytes, list[int]]:
    """
    The live children of this process carrying one of ``tokens`` (escaped descendants of
    those runs), by token. ``exclude``: pids not to look at (the scripts themselves).
    Each one found is claimed (see :func:`claimed`). Empty off Linux.
    """
    found: dict[bytes, list[int]] = {}
    if not _SUPPORTED or not tokens:
        return found
    seen: set[tuple[int, int]] = set()
    for pid in _own_children():
        if pid in exclude:
            continue
        state = proc_state(pid)
        if state is None:
            continue
        key = (pid, state.start)
        seen.add(key)
        with _lock:
            known = key in _checked
            token = _checked.get(key)
        if not known:
            # A zombie has no environment left to read: never a find (if it was a run's,
            # the run claimed it while it was alive, or the monitor tracked it).
            token = None if state.state in ("Z", "X") else _token_of(pid)
            with _lock:
                _checked[key] = token
        if token is not None and token in tokens:
            found.setdefault(token, []).append(pid)
            with _lock:
                _claimed[pid] = (token, state.start)
    with _lock:
        for key in [k for k in _checked if k not in seen]:
            del _checked[key]
    return found


def may_find(token: bytes, exclude: Collection[int] = ()) -> bool:
    """
    False when :func:`find_escaped` for ``token`` would surely find nothing and nothing
    was claimed for it: every child of ours besides ``exclude`` was looked at before and
    carries another token or none. A few reads of ``/proc`` (tens of µs): the common
    case, a run that left nothing behind, costs no worker thread.
    """
    if not _SUPPORTED:
        return False
    with _lock:
        if any(t == token for t, _start in _claimed.values()):
            return True
    for pid in _own_children():
        if pid in exclude:
            continue
        state = proc_state(pid)
        if state is None:
            continue
        key = (pid, state.start)
        with _lock:
            if key not in _checked or _checked[key] == token:
                return True
    return False


def claim(token: bytes, pids: Iterable[tuple[int, int]]) -> None:
    """Record ``(pid, start)`` pairs as escaped processes of ``token``'s run (the monitor
    saw them in the run's tree)."""
    with _lock:
        for pid, start in pids:
            _claimed.setdefault(pid, (token, start))


def claimed(token: bytes) -> list[tuple[int, int]]:
    """``(pid, start)`` of every process claimed for ``token``'s run so far."""
    with _lock:
        return [(pid, start) for pid, (t, start) in _claimed.items() if t == token]


def forget(pid: int) -> None:
    """``pid`` was reaped (or is no process of ours any more)."""
    with _lock:
        _claimed.pop(pid, None)
