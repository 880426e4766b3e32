"""
How one process of a watched tree is read, and how its children are found.

Two readers produce the same :class:`Reading`:

- :class:`ProcfsReader` (Linux) reads ``/proc/<pid>/stat``, ``/proc/<pid>/io``, the
  ``/proc/<pid>/fd`` directory and ``/proc/<pid>/task/<tid>/children`` with plain
  ``os.open``/``os.read``. Measured on a shared 2-core VM: about 20 µs per process per
  tick, against about 145 µs for psutil's ``oneshot()`` with the same figures (psutil
  builds named tuples, parses ``status`` and checks pids on every call). At 50 scripts and
  2 ticks a second that difference is the whole cost budget of issue 5.
- :class:`PsutilReader` (every other platform, or on request) goes through psutil. Its
  child discovery is a scan of the process table (``psutil.process_iter``), done less often.

Both run only in worker threads: every call here may block on ``/proc`` or a syscall.

Children are found cheaply on Linux: ``task/<tid>/children`` lists the children created
by that thread (kernel ``CONFIG_PROC_CHILDREN``), so a tick costs one small read per known
process instead of ``children(recursive=True)``, which reads every process on the system.
A full scan (:meth:`ProcfsReader.scan`) still runs now and then, shared by every watched
tree, to find processes of the script's session that were orphaned before we saw them,
and it replaces the children files on kernels without them.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

__all__ = [
    "GONE",
    "UNREADABLE",
    "ProcfsReader",
    "PsutilReader",
    "Reader",
    "Reading",
    "ScanEntry",
    "default_reader",
    "own_peak_rss",
]


class Reading(NamedTuple):
    """
    One read of one process. CPU and I/O counters are cumulative since the process
    started and, like the kernel keeps them, include every child the process has already
    waited for (``cutime``/``cstime`` in ``stat``; ``/proc/<pid>/io`` adds a reaped child's
    I/O to its parent). That is what lets the tree count short-lived descendants exactly.
    (A named tuple: made 100 times a second, it costs a third of a frozen dataclass.)
    """

    ppid: int
    identity: float  # start time in reader units; a different value means a reused pid
    zombie: bool
    user: float  # seconds, this process (all its threads)
    system: float
    children_user: float  # seconds, children it has waited for (and theirs)
    children_system: float
    rss: int  # bytes
    threads: int
    fds: int | None  # None: not readable (other user) or not on this platform
    io: tuple[int, ...] | None  # in the order of the reader's ``io_keys``
    ctx: tuple[int, int] | None  # voluntary, involuntary (psutil reader only)
    #: What was read, unparsed: when the next read is the same, the reader hands back the
    #: same ``Reading`` and the tree skips its bookkeeping (an idle process costs less).
    raw: tuple[bytes, bytes | None, int | None] | None = None
    #: Virtual memory size in bytes (``vsize``), None where not read.
    vms: int | None = None
    #: Page faults (minor, major), cumulative like the CPU times: its own plus those of
    #: the children it waited for (``minflt + cminflt``, ``majflt + cmajflt`` of
    #: ``/proc/<pid>/stat``; psutil has no such figure on Linux). None where not read.
    faults: tuple[int, int] | None = None


class _Marker:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: The process no longer exists (reaped) or its pid now belongs to another process.
GONE: Final = _Marker("GONE")
#: The process exists but cannot be read (another user's, or a zombie psutil refuses).
UNREADABLE: Final = _Marker("UNREADABLE")

ReadResult = Reading | _Marker


@dataclass(frozen=True, slots=True)
class ScanEntry:
    """What a full scan knows of one process: enough to place it in a tree."""

    ppid: int
    pgid: int | None
    sid: int | None


class Reader:
    """What the tree needs from a platform; see the two implementations."""

    #: Names of the summary keys the ``Reading.io`` tuple holds, in order.
    io_keys: tuple[str, ...] = ()
    #: True when :meth:`children` works, so discovery needs no full scan each tick.
    #: Known after :meth:`prepare`.
    has_children_files: bool = False
    #: True once :meth:`prepare` ran.
    prepared: bool = False
    #: A reading of one process is a few reads of the kernel's in-memory state (tens of
    #: microseconds, no disk): the monitor may take the first and last readings of a
    #: one-process tree on the event loop instead of in a worker thread. False for a
    #: reader of unknown cost.
    loop_safe: bool = False

    def prepare(self) -> None:
        """Probe the platform once (worker thread: it may touch the file system)."""

    def read(self, pid: int, previous: Reading | None) -> ReadResult:
        """Read ``pid``. ``previous`` (its last reading, if any) guards against a reused
        pid, and is returned as is when nothing changed since."""
        raise NotImplementedError

    def children(self, pid: int, threads: int) -> list[int]:
        """Direct children of ``pid`` (empty when it is gone)."""
        raise NotImplementedError

    def scan(self) -> dict[int, ScanEntry]:
        """Every process of the system with its parent (and group/session if known)."""
        raise NotImplementedError


def _read_small(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 8192)
    finally:
        os.close(fd)


class ProcfsReader(Reader):
    """Linux: the kernel's own files, parsed by hand (see the module docstring for why)."""

    loop_safe = True

    io_keys = (
        "io_read_bytes",
        "io_write_bytes",
        "io_read_count",
        "io_write_count",
        "io_read_disk_bytes",
        "io_write_disk_bytes",
    )

    def __init__(self, proc: str = "/proc", *, children_files: bool | None = None) -> None:
        """``children_files=False`` forces discovery by scans (kernels without
        ``CONFIG_PROC_CHILDREN`` work that way); ``None`` probes in :meth:`prepare`."""
        self._proc = proc
        self._tick = float(os.sysconf("SC_CLK_TCK"))
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._forced = children_files
        self.prepared = False

    def prepare(self) -> None:
        if self.prepared:
            return
        if self._forced is None:
            probe = f"{self._proc}/self/task/{os.getpid()}/children"
            self.has_children_files = os.path.exists(probe)
        else:
            self.has_children_files = self._forced
        self.prepared = True

    def read(self, pid: int, previous: Reading | None) -> ReadResult:
        base = f"{self._proc}/{pid}"
        try:
            stat = _read_small(f"{base}/stat")
        except (FileNotFoundError, ProcessLookupError):
            return GONE
        except OSError:
            return UNREADABLE
        raw = (stat, self._io_raw(base), self._fds(base))
        if previous is not None and raw == previous.raw:
            return previous  # a sleeping process: same bytes, same figures
        # comm (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(b")") + 2 :].split()
        try:
            start = float(fields[19])
            if previous is not None and start != previous.identity:
                return GONE  # the pid was reused by another process
            tick = self._tick
            state = fields[0]
            ppid = int(fields[1])
            user, system = int(fields[11]) / tick, int(fields[12]) / tick
            cuser, csystem = int(fields[13]) / tick, int(fields[14]) / tick
            threads = int(fields[17])
            rss = int(fields[21]) * self._page
            vms = int(fields[20])
            faults = (int(fields[7]) + int(fields[8]), int(fields[9]) + int(fields[10]))
        except (IndexError, ValueError):
            return UNREADABLE
        zombie = state in (b"Z", b"X")
        return Reading(
            ppid=ppid,
            identity=start,
            zombie=zombie,
            user=user,
            system=system,
            children_user=cuser,
            children_system=csystem,
            rss=0 if zombie else rss,
            threads=0 if zombie else threads,
            fds=None if zombie else raw[2],
            io=self._io(raw[1]),
            ctx=None,
            raw=raw,
            vms=0 if zombie else vms,
            faults=faults,
        )

    @staticmethod
    def _fds(base: str) -> int | None:
        try:
            return len(os.listdir(f"{base}/fd"))
        except OSError:
            return None

    @staticmethod
    def _io_raw(base: str) -> bytes | None:
        try:
            return _read_small(f"{base}/io")
        except OSError:  # another user's process, or gone
            return None

    @staticmethod
    def _io(text: bytes | None) -> tuple[int, ...] | None:
        if text is None:
            return None
        # "rchar: N\nwchar: N\nsyscr: N\nsyscw: N\nread_bytes: N\nwrite_bytes: N\n..."
        values = text.split()[1:12:2]
        if len(values) != 6:
            return None
        return tuple(map(int, values))

    def children(self, pid: int, threads: int) -> list[int]:
        task = f"{self._proc}/{pid}/task"
        try:
            # A child is listed under the thread that created it; most scripts have one.
            if threads <= 1:
                return [int(c) for c in _read_small(f"{task}/{pid}/children").split()]
            found: list[int] = []
            for tid in os.listdir(task):
                found.extend(self._thread_children(f"{task}/{tid}/children"))
            return found
        except OSError:
            return []

    @staticmethod
    def _thread_children(path: str) -> list[int]:
        try:
            return [int(c) for c in _read_small(path).split()]
        except FileNotFoundError:
            return []  # that thread just exited

    def scan(self) -> dict[int, ScanEntry]:
        entries: dict[int, ScanEntry] = {}
        for name in os.listdir(self._proc):
            if not name.isdigit():
                continue
            try:
                stat = _read_small(f"{self._proc}/{name}/stat")
            except OSError:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            try:
                entries[int(name)] = ScanEntry(int(fields[1]), int(fields[2]), int(fields[3]))
            except (IndexError, ValueError):
                continue
        return entries


class PsutilReader(Reader):
    """Any platform psutil supports. Figures a platform lacks stay ``None``."""

    def __init__(self) -> None:
        # psutil is imported in prepare(): on Linux its import reads /proc/stat, which must
        # not happen on the event loop.
        self._psutil: Any = None
        self._procs: dict[int, Any] = {}
        if sys.platform == "darwin":  # psutil has no per-process I/O counters there
            self.io_keys = ()
        elif sys.platform == "linux":  # syscall-level chars and storage-level bytes
            self.io_keys = ProcfsReader.io_keys
        else:  # Windows, BSDs: bytes and counts only
            self.io_keys = ProcfsReader.io_keys[:4]

    def prepare(self) -> None:
        if self._psutil is None:
            import psutil

            self._psutil = psutil
        self.prepared = True

    def read(self, pid: int, previous: Reading | None) -> ReadResult:
        identity = previous.identity if previous is not None else None
        psutil = self._psutil
        proc = self._procs.get(pid)
        try:
            if proc is None:
                proc = self._procs[pid] = psutil.Process(pid)
            with proc.oneshot():
                start = proc.create_time()
                if identity is not None and start != identity:
                    self._procs.pop(pid, None)
                    return GONE
                zombie = proc.status() == psutil.STATUS_ZOMBIE
                times = proc.cpu_times()
                ppid = proc.ppid()
                memory = None if zombie else proc.memory_info()
                rss = memory.rss if memory is not None else 0
                vms = getattr(memory, "vms", None) if memory is not None else 0
                threads = 0 if zombie else proc.num_threads()
                fds = None if zombie else self._optional(proc, "num_fds")
                io = self._io(proc)
                ctx_raw = self._optional(proc, "num_ctx_switches")
        except psutil.ZombieProcess:  # exited, not reaped yet, and the platform refuses
            return UNREADABLE
        except psutil.NoSuchProcess:
            self._procs.pop(pid, None)
            return GONE
        except psutil.AccessDenied:
            return UNREADABLE
        ctx = (int(ctx_raw.voluntary), int(ctx_raw.involuntary)) if ctx_raw else None
        return Reading(
            ppid=ppid,
            identity=start,
            zombie=zombie,
            user=times.user,
            system=times.system,
            children_user=getattr(times, "children_user", 0.0),
            children_system=getattr(times, "children_system", 0.0),
            rss=rss,
            threads=threads,
            fds=fds,
            io=io,
            ctx=ctx,
            vms=vms,
        )

    def _optional(self, proc: object, name: str) -> Any:
        method = getattr(proc, name, None)
        if method is None:
            return None
        try:
            return method()
        except self._psutil.AccessDenied:
            return None

    def _io(self, proc: object) -> tuple[int, ...] | None:
        if not self.io_keys:
            return None
        counters = self._optional(proc, "io_counters")
        if counters is None:
            return None
        c: object = counters
        base = (
            getattr(c, "read_bytes", 0),
            getattr(c, "write_bytes", 0),
            getattr(c, "read_count", 0),
            getattr(c, "write_count", 0),
        )
        if len(self.io_keys) == 6:
            # Linux: syscall-level chars first, storage-level bytes as the "disk" pair.
            return (
                int(getattr(c, "read_chars", 0)),
                int(getattr(c, "write_chars", 0)),
                int(base[2]),
                int(base[3]),
                int(base[0]),
                int(base[1]),
            )
        return tuple(int(v) for v in base)

    def children(self, pid: int, threads: int) -> list[int]:
        try:
            return [c.pid for c in self._psutil.Process(pid).children()]
        except self._psutil.Error:
            return []

    def scan(self) -> dict[int, ScanEntry]:
        entries: dict[int, ScanEntry] = {}
        for proc in self._psutil.process_iter(["ppid"]):
            ppid = proc.info.get("ppid")
            if isinstance(ppid, int):
                entries[proc.pid] = ScanEntry(ppid, None, None)
        return entries


_default: Reader | None = None


def default_reader() -> Reader:
    """The reader for this platform, made once per interpreter."""
    global _default
    if _default is None:
        _default = ProcfsReader() if sys.platform == "linux" else PsutilReader()
    return _default


_MAXRSS_MARGIN = 8 << 10  # KiB: what the spawning thread may allocate before the fork


def own_peak_rss() -> int:
    """
    This process's own peak RSS since its exec, in ``ru_maxrss`` units (a read of
    ``/proc/self/status``: kernel memory, no disk).

    Why not ``getrusage(RUSAGE_SELF).ru_maxrss``: at exec, Linux folds the old address
    space's high-water mark into the new process's ``ru_maxrss``, so ours may be our
    parent's (a big test runner, say). ``VmHWM`` is our own address space's. A child we
    spawn inherits at most this (plus what the spawning thread allocates meanwhile).
    """
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) + _MAXRSS_MARGIN  # kB, as ru_maxrss
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
