"""
One child process in its own process group: spawn, pump its output, reap it, kill its group.

Why not ``asyncio.create_subprocess_exec``: we need ``os.wait4``'s rusage of the child
(exact CPU time and peak RSS of the child and every descendant it waited for, which
sampling alone misses for short-lived grandchildren), and on Python 3.10/3.11 asyncio's
default child watcher starts a thread per child, which costs throughput when hundreds of
short scripts run. So the child is started with ``subprocess.Popen`` in a new session,
its pipes are read by event-loop readers (no thread, no task per pipe), and its exit is
watched through a pidfd (Linux) and reaped with ``os.wait4``. Where pidfds are missing, a
worker thread does the blocking ``wait4``.

What leaves the group (a daemon's double fork into its own session) is found by the run
token every script carries in its environment, ended with the run and reaped
(:meth:`ChildProcess.end_escapees`); a watchdog process ends the run's processes if this
process dies (see ``containment.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from .._monitor import escapees
from . import containment
from .tail import TailBuffer

if TYPE_CHECKING:
    import resource

    from .logfeed import RunLogs

__all__ = ["ChildProcess", "OutputCallback"]

logger = logging.getLogger("aiorunner.process")

#: Called with ("stdout" | "stderr", chunk) as output arrives, for live pass-through.
OutputCallback = Callable[[str, bytes], None]

_READ_SIZE = 1 << 16
#: While the logs pipeline is full, how often a paused pipe reader asks again (seconds).
_RESUME_POLL = 0.01
_HAS_PIDFD = hasattr(os, "pidfd_open") and sys.platform == "linux"
#: Pids of the scripts started here and not closed yet: never escaped processes.
_scripts: set[int] = set()


def _spawn_here(
    argv: Sequence[str], cwd: str | None, env: Mapping[str, str], pass_fds: Sequence[int]
) -> subprocess.Popen[bytes]:
    """fork/exec on the calling (loop) thread (named apart: the tests allow its short
    blocking calls there, and nowhere else)."""
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
        start_new_session=True,
        close_fds=True,
        pass_fds=tuple(pass_fds),
    )


class ChildProcess:
    """A running child; create with :meth:`spawn`, then ``await wait()``."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        *,
        tail_limit: int,
        on_output: OutputCallback | None,
        logs: RunLogs | None = None,
    ) -> None:
        self._popen = popen
        self._logs = logs
        #: Times a pipe reader paused because the logs pipeline was full (back-pressure),
        #: pipes paused now, and chunks read so far (see :meth:`output_moving`).
        self.log_pauses = 0
        self._paused = 0
        self._reads = 0
        self._reads_seen = 0
        self.pid: int = popen.pid
        self.pgid: int = popen.pid  # start_new_session makes the child its group leader
        self.stdout = TailBuffer(tail_limit)
        self.stderr = TailBuffer(tail_limit)
        self.returncode: int | None = None
        #: ``time.perf_counter()`` just before the fork: the child's CPU time counts from
        #: the fork, so a wall time it is divided by must start here, not once the loop
        #: got the GIL back after the spawn (another thread may hold it for milliseconds
        #: while the script runs).
        self.spawned_at = time.perf_counter()
        self.rusage: resource.struct_rusage | None = None
        #: The random run token in the script's environment (``AIORUNNER_RUN_TOKEN``).
        self.token = ""
        #: Escaped processes of the run ended and reaped by :meth:`end_escapees`.
        self.escapees_ended = 0
        self._on_output = on_output
        self._loop = asyncio.get_running_loop()
        self._exit_ready = asyncio.Event()
        self._exited = asyncio.Event()
        self._pipes_open = 0
        self._pipes_closed = asyncio.Event()
        self._pidfd: int | None = None
        #: Called once, on the loop, the moment the child is seen to have exited (before
        #: it is reaped): run_many gives the script's process slot back there.
        self.on_exit: Callable[[], object] | None = None
        for name, pipe in (("stdout", popen.stdout), ("stderr", popen.stderr)):
            assert pipe is not None
            fd = pipe.fileno()
            os.set_blocking(fd, False)
            self._pipes_open += 1
            self._loop.add_reader(fd, self._on_readable, name, pipe)
        if _HAS_PIDFD:
            try:
                self._pidfd = os.pidfd_open(self.pid)
            except OSError:  # e.g. seccomp forbids it: fall back to a thread
                self._pidfd = None
        if self._pidfd is not None:
            self._loop.add_reader(self._pidfd, self._on_pidfd)

    @classmethod
    async def spawn(
        cls,
        argv: Sequence[str],
        *,
        cwd: str | None,
        env: Mapping[str, str],
        tail_limit: int,
        on_output: OutputCallback | None = None,
        pass_fds: Sequence[int] = (),
        logs: RunLogs | None = None,
    ) -> ChildProcess:
        """
        Start ``argv`` in a new session (so it leads its own process group).

        The fork/exec runs right here on the loop's thread, as asyncio's own
        ``create_subprocess_exec`` does: ``vfork`` returns as soon as the child has
        exec'd (about 0.3 ms median here). In a worker thread it had to win the GIL back
        from this busy loop several times inside ``Popen`` (pipes, the exec handshake):
        ~4 ms median at concurrency 2, while a core stood idle between two scripts.

        Raises:
            OSError: the executable is missing or not executable, or ``cwd`` is bad.
        """
        if not containment.is_ready():  # once per process: loads libc, starts the watchdog
            await anyio.to_thread.run_sync(containment.setup)
        token = os.urandom(8).hex()  # (not secrets: its import costs ~0.5 ms a run)
        env = {**env, escapees.RUN_TOKEN_ENV: token}
        spawned_at = time.perf_counter()
        popen = _spawn_here(argv, cwd, env, pass_fds)
        child = cls(popen, tail_limit=tail_limit, on_output=on_output, logs=logs)
        child.spawned_at = spawned_at
        child.token = token
        _scripts.add(child.pid)
        containment.register(child.pid, token)
        return child

    # -- output -----------------------------------------------------------------------

    def _on_readable(self, name: str, pipe: object) -> None:
        fd = pipe.fileno()  # type: ignore[attr-defined]
        buffer = self.stdout if name == "stdout" else self.stderr
        # Bounded per wake-up so one flooding pipe cannot starve the loop.
        for _ in range(16):
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                data = b""
            if not data:
                self._loop.remove_reader(fd)
                pipe.close()  # type: ignore[attr-defined]
                if self._logs is not None:
                    self._logs.eof(name)
                self._pipes_open -= 1
                if self._pipes_open == 0:
                    self._pipes_closed.set()
                return
            self._reads += 1
            buffer.write(data)
            if self._on_output is not None:
                try:
                    self._on_output(name, data)
                except Exception:  # a broken pass-through must not lose the capture
                    logger.exception("output callback failed; live output disabled")
                    self._on_output = None
            logs = self._logs
            if logs is not None:
                logs.feed(name, data)
                if not logs.ready():
                    # Back-pressure: the logs pipeline is full. Stop reading this pipe
                    # (the script blocks on its write) until its records are handed over.
                    self._loop.remove_reader(fd)
                    self.log_pauses += 1
                    self._paused += 1
                    self._loop.call_later(_RESUME_POLL, self._resume, name, pipe)
                    return

    def _resume(self, name: str, pipe: object) -> None:
        """A reader paused by back-pressure: read on once the records went out."""
        if pipe.closed:  # type: ignore[attr-defined]
            self._paused -= 1
            return  # the run is over (close() closed it)
        logs = self._logs
        if logs is not None and not logs.ready():
            self._loop.call_later(_RESUME_POLL, self._resume, name, pipe)
            return
        self._paused -= 1
        self._loop.add_reader(pipe.fileno(), self._on_readable, name, pipe)  # type: ignore[attr-defined]
        self._on_readable(name, pipe)

    # -- exit ---------------------------------------------------------------------------

    def _on_pidfd(self) -> None:
        """The child exited: it is a zombie now. Not reaped yet, so the monitor can
        take a last reading of its final counters (see :meth:`wait_exit_ready`)."""
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
        self._set_exit_ready()

    def _set_exit_ready(self) -> None:
        if self._exit_ready.is_set():
            return
        self._exit_ready.set()
        on_exit, self.on_exit = self.on_exit, None
        if on_exit is not None:
            on_exit()

    def reap(self) -> int | None:
        """Reap the child if it has exited (never blocks); returns its code, or None
        while it still runs."""
        if self._exited.is_set():
            return self.returncode
        try:
            pid, status, rusage = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:
            # Someone else reaped it (should not happen); we lose only the rusage.
            pid, status, rusage = self.pid, 0, None  # type: ignore[assignment]
        if pid == 0:
            return None
        self._set_exited(status, rusage)
        return self.returncode

    def _set_exited(self, status: int, rusage: resource.struct_rusage | None) -> None:
        self.returncode = os.waitstatus_to_exitcode(status)
        self.rusage = rusage
        # Tell Popen the child is gone so it never waitpid()s a recycled pid.
        self._popen.returncode = self.returncode
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self._set_exit_ready()
        self._exited.set()

    async def wait_exit_ready(self) -> None:
        """Wait until the child has exited, without reaping it (its zombie keeps its
        final /proc counters until :meth:`reap`)."""
        if self._exit_ready.is_set():
            return
        if self._pidfd is None:
            # No pidfd: a worker thread waits without reaping (WNOWAIT).
            await anyio.to_thread.run_sync(os.waitid, os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
            self._set_exit_ready()
        await self._exit_ready.wait()

    async def wait_exit(self) -> int:
        """Wait until the child itself has exited and reap it; returns its code
        (negative N when killed by signal N)."""
        await self.wait_exit_ready()
        code = self.reap()
        assert code is not None
        return code

    async def wait_output(self, grace: float | None) -> bool:
        """Wait for both pipes to reach EOF; False when ``grace`` seconds passed first (a
        descendant still holds them open)."""
        if self._pipes_closed.is_set():
            return True  # the common case: no timeout scope to set up
        with anyio.move_on_after(grace):
            await self._pipes_closed.wait()
            return True
        return False

    def output_moving(self) -> bool:
        """True when output was read since the last call, or a reader is paused by
        back-pressure: the pipes are still being worked through, not just held open."""
        moved = self._reads != self._reads_seen
        self._reads_seen = self._reads
        return moved or self._paused > 0

    @property
    def exited(self) -> bool:
        """True once the child was reaped."""
        return self._exited.is_set()

    @property
    def exit_ready(self) -> bool:
        """True once the child has exited (reaped or not)."""
        return self._exit_ready.is_set()

    # -- the process group ------------------------------------------------------------

    def signal_group(self, sig: int) -> bool:
        """Send ``sig`` to every process of the group; False when the group is empty."""
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            return False
        except PermissionError:  # a member changed credentials; signal what we can
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, sig)
        return True

    def group_has_live_members(self) -> bool:
        """True while a process of the group is alive (zombies left for an init that does
        not reap, as in some containers, do not count: they hold nothing)."""
        try:
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        if sys.platform != "linux":
            return True
        return any(state != "Z" for state in _group_states(self.pgid))

    async def terminate_group(self, grace: float) -> None:
        """SIGTERM the whole group, wait up to ``grace`` seconds, then SIGKILL what is
        left, and reap the child. Bounded: returns within ``grace`` plus about a second."""
        if self.signal_group(signal.SIGTERM):
            with anyio.move_on_after(grace):
                while True:
                    live = await anyio.to_thread.run_sync(self.group_has_live_members)
                    if not live and self.reap() is not None:
                        break
                    await anyio.sleep(0.02 if self.exited else 0.01)
        if await anyio.to_thread.run_sync(self.group_has_live_members):
            self.signal_group(signal.SIGKILL)
        with anyio.move_on_after(1.0):
            await self.wait_exit()
            # No event tells when a grandchild dies: poll, bounded by the scope.
            while await anyio.to_thread.run_sync(self.group_has_live_members):  # noqa: ASYNC110
                await anyio.sleep(0.01)

    async def end_escapees(self, grace: float, tracked: Sequence[tuple[int, int]] = ()) -> int:
        """
        End the run's processes that left the script's group: SIGTERM, up to ``grace``
        seconds, SIGKILL; reap those that were reparented to us. Call it after the group
        was dealt with. Returns how many were ended.

        Found two ways: children of ours (orphans we inherit as a subreaper) carrying this
        run's token, and ``tracked``, ``(pid, start)`` of processes the monitor saw in the
        run's tree (a descendant given a fresh environment, or when we are no subreaper).
        Bounded: returns within ``grace`` plus about a second.
        """
        if sys.platform != "linux" or (not tracked and not containment.subreaper_active()):
            return 0
        token = self.token.encode()
        exclude = frozenset(_scripts)
        tracked = [(pid, start) for pid, start in tracked if pid != self.pid]
        if not tracked and not _may_find_here(token, exclude):
            return 0  # the common case: no worker thread (about 0.2 ms of CPU a run)
        ended = await anyio.to_thread.run_sync(_sweep, token, tracked, exclude, signal.SIGTERM)
        if not ended:
            return 0
        # No event tells when a process that is not our child dies: poll, bounded.
        with anyio.move_on_after(grace):
            while await anyio.to_thread.run_sync(_sweep, token, tracked, exclude, None):  # noqa: ASYNC110
                await anyio.sleep(0.02)
        if await anyio.to_thread.run_sync(_sweep, token, tracked, exclude, signal.SIGKILL):
            with anyio.move_on_after(1.0):
                while await anyio.to_thread.run_sync(_sweep, token, tracked, exclude, None):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
        self.escapees_ended = ended
        return ended

    def close(self) -> None:
        """Drop the event-loop readers and close our ends of the pipes; the watchdog
        forgets the run."""
        if self.pid in _scripts:
            _scripts.discard(self.pid)
            containment.unregister(self.pid)
        for pipe in (self._popen.stdout, self._popen.stderr):
            if pipe is not None and not pipe.closed:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(pipe.fileno())
                pipe.close()
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


def _may_find_here(token: bytes, exclude: frozenset[int]) -> bool:
    """:func:`escapees.may_find` on the event loop (named apart: the tests allow its few
    reads of ``/proc``, kernel memory, there and nowhere else)."""
    return escapees.may_find(token, exclude)


def _sweep(
    token: bytes,
    tracked: Sequence[tuple[int, int]],
    exclude: frozenset[int],
    sig: int | None,
) -> int:
    """
    One pass over the run's escaped processes (worker thread): send ``sig`` to the live
    ones (and to the group of one that leads its own), reap the zombies that are our
    children, and return how many are still alive.

    Only processes known to be the run's are reaped: a child of ours carrying its token
    (nobody else in this process forked it, so nobody else waits for it) or one the
    monitor saw in its tree, the same process by its start time. Exit statuses of the
    app's own children are never taken.
    """
    escapees.find_escaped({token}, exclude)
    me = os.getpid()
    live = 0
    candidates = dict(escapees.claimed(token))
    for pid, start in tracked:
        candidates.setdefault(pid, start)
    for pid, start in candidates.items():
        state = escapees.proc_state(pid)
        if state is None or state.start != start:
            escapees.forget(pid)  # gone (reaped by its parent), or the pid was reused
            continue
        if state.state in ("Z", "X"):
            if state.ppid == me:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                escapees.forget(pid)
            continue  # another parent's zombie: that parent reaps it
        live += 1
        if sig is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if state.pgid == pid:  # it leads its own group: what it started goes too
                    os.killpg(pid, sig)
                os.kill(pid, sig)
    return live


def _group_states(pgid: int) -> list[str]:
    """The states of the processes in group ``pgid``, read from /proc (Linux)."""
    states = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # comm may contain spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid:
            states.append(fields[0].decode())
    return states
