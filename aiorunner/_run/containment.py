"""
Keeping a run's processes inside the run: the child subreaper and the watchdog.

Two holes the process group alone leaves (issue 16 item 16, issue 17 item 4):

- **Escaped descendants.** A daemon's double fork (``fork``, ``setsid``, ``fork``, the
  middle one exits) leaves the script's process group and loses its parent: killing the
  group misses it, and it used to be reparented to init, where no monitor saw it. On
  Linux the runner makes itself a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``):
  such orphans are reparented to the runner instead. Each script gets a random run token in
  its environment (``AIORUNNER_RUN_TOKEN``), which its descendants inherit, so an orphan
  we inherit is told to belong to a run (``_monitor/escapees.py``): the monitor counts it,
  and the run ends it (SIGTERM, grace, SIGKILL, like the group) and reaps it.

  The flag is process-wide: in an app that embeds aiorunner, orphans of the app's *other*
  children come to the app's process too. We never reap a process that carries no run
  token of ours (so ``subprocess.run``, ``asyncio.create_subprocess_exec`` and the app's
  own ``waitpid`` keep their exit statuses); such orphans stay zombies of the app until it
  exits, unless the app reaps them. ``AIORUNNER_SUBREAPER=0`` opts out (then escaped
  processes seen by the monitor are still ended, but not reaped, and unseen ones survive).

- **A runner that dies.** SIGKILL of the runner left the script running under init. The
  watchdog (``guardian.py``) is a small process that reads a pipe from the runner; when the
  runner dies the pipe reads EOF and it SIGKILLs every registered run's group and every
  process carrying their tokens. See ``guardian.py`` for why not ``PR_SET_PDEATHSIG``.
  ``AIORUNNER_WATCHDOG=0`` opts out.

Both are set up on the first spawn of a process, in a worker thread.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import subprocess
import sys
import threading

from .._config import EnvProblem, report_env_problem

__all__ = [
    "AIORUNNER_SUBREAPER",
    "AIORUNNER_WATCHDOG",
    "is_ready",
    "register",
    "setup",
    "subreaper_active",
    "unregister",
]

logger = logging.getLogger("aiorunner.process")

AIORUNNER_SUBREAPER = "AIORUNNER_SUBREAPER"
AIORUNNER_WATCHDOG = "AIORUNNER_WATCHDOG"

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
_ON = ("1", "true", "on", "yes")
_OFF = ("0", "false", "off", "no")

_lock = threading.Lock()
_ready = False
_subreaper = False
_watchdog: subprocess.Popen[bytes] | None = None
_watchdog_fd: int | None = None
_watchdog_failed = False
_inherited: list[subprocess.Popen[bytes]] = []


def _flag(name: str) -> bool:
    """True unless ``name`` says off; a value that is neither warns once (default on)."""
    raw = os.environ.get(name, "")
    value = raw.strip().lower()
    if value in _OFF:
        return False
    if value and value not in _ON:
        report_env_problem(
            EnvProblem(
                variable=name,
                value=raw,
                reason="is not a boolean",
                instead="the default 1 (on)",
                fix=f"set {name} to 1 or 0, or unset it",
            )
        )
    return True


def is_ready() -> bool:
    """True once :func:`setup` ran in this process (the spawn's fast path)."""
    return _ready


def subreaper_active() -> bool:
    """True when orphans of our descendants come to this process (we set the flag, or
    someone did before us)."""
    return _subreaper


def setup() -> None:
    """Make this process a child subreaper and start the watchdog, each unless opted out
    (worker thread: it loads libc and may start a process). Once per process."""
    global _ready, _subreaper
    with _lock:
        if _ready:
            return
        if sys.platform == "linux":
            _subreaper = _set_subreaper(_flag(AIORUNNER_SUBREAPER))
        if os.name == "posix" and _flag(AIORUNNER_WATCHDOG):
            _start_watchdog()
        _ready = True


def _set_subreaper(wanted: bool) -> bool:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        current = ctypes.c_int(0)
        if libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(current), 0, 0, 0) == 0 and (
            current.value
        ):
            return True  # the app (or a library) made us one already: orphans come here
        if not wanted:
            return False
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            logger.warning(
                "cannot make this process a child subreaper (%s): a script's descendants "
                "that leave its process group may outlive the run",
                os.strerror(err),
            )
            return False
    except (OSError, AttributeError) as exc:
        logger.warning("cannot make this process a child subreaper (%s)", exc)
        return False
    return True


def _start_watchdog() -> None:
    global _watchdog, _watchdog_fd
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "guardian.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    try:
        _watchdog = subprocess.Popen(
            [sys.executable, "-I", "-S", path],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    except OSError as exc:
        logger.warning(
            "cannot start the watchdog (%s): if this process is killed, its scripts "
            "keep running; set AIORUNNER_WATCHDOG=0 to silence this",
            exc,
        )
        return
    assert _watchdog.stdin is not None
    _watchdog_fd = _watchdog.stdin.fileno()
    os.set_blocking(_watchdog_fd, False)
    atexit.register(_stop_watchdog, _watchdog)


def _stop_watchdog(watchdog: subprocess.Popen[bytes]) -> None:
    """At exit: close our end; the watchdog ends what is still registered (runs this
    process leaves behind) and exits on its own. Not waited for: it may still be starting
    (about 30 ms of a short CLI run measured), and init reaps it."""
    global _watchdog_fd
    if watchdog is not _watchdog:
        return  # a forked copy of us: not ours
    _watchdog_fd = None
    if watchdog.stdin is not None:
        with contextlib.suppress(OSError):
            watchdog.stdin.close()
    if watchdog.poll() is None:
        # Popen warns at teardown about a child it never reaped; this one outlives us
        # by design (ResourceWarning "subprocess N is still running" otherwise).
        watchdog.returncode = 0


def _send(line: bytes) -> None:
    """One line to the watchdog: a non-blocking write of a few bytes (never waits)."""
    global _watchdog_failed
    fd = _watchdog_fd
    if fd is None or _watchdog_failed:
        return
    try:
        written = os.write(fd, line)
    except OSError as exc:
        written = -1
        reason = "it exited" if exc.errno == errno.EPIPE else os.strerror(exc.errno or 0)
    else:
        reason = "its pipe is full"
    if written == len(line):
        return
    _watchdog_failed = True
    logger.warning(
        "the watchdog stopped taking runs (%s): if this process is killed from now on, its "
        "scripts keep running",
        reason,
    )


def register(pid: int, token: str) -> None:
    """Tell the watchdog a script started (its group and token die with this process)."""
    _send(b"+ %d %s\n" % (pid, token.encode()))


def unregister(pid: int) -> None:
    """Tell the watchdog that run ended."""
    _send(b"- %d\n" % pid)


def _after_fork_in_child() -> None:
    """A forked copy of this process (``os.fork``, multiprocessing's fork) is no
    subreaper (the flag is not inherited) and must not hold the watchdog's pipe open
    (the watchdog would never see our EOF): it sets itself up again if it runs scripts."""
    global _ready, _subreaper, _watchdog, _watchdog_fd, _watchdog_failed
    if _watchdog is not None:
        if _watchdog.stdin is not None:
            with contextlib.suppress(OSError):
                _watchdog.stdin.close()
        _inherited.append(_watchdog)  # not ours to wait for: never collected, never warned
    _ready = _subreaper = _watchdog_failed = False
    _watchdog = None
    _watchdog_fd = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
