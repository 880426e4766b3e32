"""
The watched process tree: which processes belong to a script, and how their counters add
up without counting anything twice.

Work is split in two so nothing blocks the event loop and nothing needs a lock:
:func:`read_tree` runs in a worker thread and only reads (one pass over the known
processes, finding new children as it goes); :class:`ProcessTree` lives on the event loop
and does the bookkeeping with the readings it is handed.

Counting CPU and I/O of a tree exactly
--------------------------------------
The kernel adds a child's CPU time (``cutime``/``cstime``) and I/O counters to its parent
when the parent waits for it. So each process's own reading already covers the children it
reaped, including those that lived shorter than one tick and were never seen. The estimate
of a subtree is therefore::

    E(p) = counters(p, last reading, reaped children included)
           + sum of E(c) for each seen child c NOT yet included in that reading

A child is included once it was seen gone (reaped) at a tick no later than the parent's
last reading. Readings go parent first, then children, so a child seen alive after its
parent was read cannot already be in the parent's counters; a child that dies between the
two reads is counted when its parent is read at the next tick. Errors therefore lean to
under-counting, never to counting one process twice.

A process whose parent exits is reparented (to init or a subreaper: on Linux the runner
itself, see ``escapees.py``): it is never reaped by the script, so it moves out of its
parent's subtree into ``detached`` and is added on top. Orphans of the run that the tree
never saw (a double fork between two ticks) are found by the run's token and join
``detached`` the same way. At the end, the runner's ``wait4`` rusage of the script (exact for the script and
every descendant it waited for, however short-lived) and ``E(root)`` are both lower bounds
of the same set, so the total is ``max(rusage, E(root)) + sum(E(detached))``.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from .readers import GONE, UNREADABLE, Reading

if TYPE_CHECKING:
    import resource
    from collections.abc import Iterator, Sequence

    from .readers import Reader, ReadResult, ScanEntry

__all__ = ["ProcessTree", "Scan", "TreeFigures", "read_tree"]

#: (pid, its last reading or None)
KnownProcess = tuple[int, "Reading | None"]
#: (pid, pid of the parent that listed it when it is new, what was read)
Result = tuple[int, "int | None", "ReadResult"]


@dataclass(frozen=True)
class Scan:
    """One full scan of the system's processes, shared by every tree of a tick."""

    entries: dict[int, ScanEntry]
    children: dict[int, list[int]]

    @classmethod
    def of(cls, entries: dict[int, ScanEntry]) -> Scan:
        children: dict[int, list[int]] = {}
        for pid, entry in entries.items():
            children.setdefault(entry.ppid, []).append(pid)
        return cls(entries, children)

    def members(self, key: tuple[str, int]) -> list[int]:
        """Pids whose session (``"sid"``) or process group (``"pgid"``) is ``key[1]``."""
        kind, value = key
        if kind == "sid":
            return [pid for pid, e in self.entries.items() if e.sid == value]
        return [pid for pid, e in self.entries.items() if e.pgid == value]


def read_tree(
    reader: Reader,
    known: Sequence[KnownProcess],
    *,
    scan: Scan | None,
    scan_key: tuple[str, int] | None,
    escaped: Sequence[int] = (),
) -> list[Result]:
    """
    Read every known live process of one tree and every new descendant found on the way.

    Runs in a worker thread. ``known`` comes parent-first, and new children are queued
    after the parent that listed them, so a parent is always read before its children
    (the counting rule above depends on it). Processes of the script's session or group
    that the scan found and the tree does not know yet (orphaned before we saw them) are
    read too, and so are ``escaped`` ones: orphans of the run reparented to the runner (a
    child subreaper), told by the run's token (``escapees.find_escaped``).
    """
    queue: deque[tuple[int, Reading | None, int | None]] = deque(
        (pid, last, None) for pid, last in known
    )
    if scan is not None and scan_key is not None:
        known_pids = {pid for pid, _last in known}
        for pid in scan.members(scan_key):
            if pid not in known_pids:
                ppid = scan.entries[pid].ppid
                queue.append((pid, None, ppid if ppid in known_pids else None))
    if escaped:
        known_pids = {pid for pid, _last in known}
        queue.extend((pid, None, None) for pid in escaped if pid not in known_pids)
    reader.prepare()
    use_files = reader.has_children_files
    visited: set[int] = set()
    results: list[Result] = []
    while queue:
        pid, last, parent = queue.popleft()
        if pid in visited:
            continue
        visited.add(pid)
        result = reader.read(pid, last)
        results.append((pid, parent, result))
        if not isinstance(result, Reading) or result.zombie:
            continue
        if use_files:
            kids = reader.children(pid, result.threads)
        elif scan is not None:
            kids = scan.children.get(pid, [])
        else:
            continue  # without children files, discovery waits for the next scan
        queue.extend((kid, None, pid) for kid in kids if kid not in visited)
    return results


class TreeFigures(NamedTuple):
    """The tree at one tick: instantaneous sums over live processes, cumulative estimates."""

    cpu_user: float
    cpu_system: float
    rss: int
    threads: int
    processes: int
    fds: int | None
    io: tuple[int, ...] | None
    ctx: tuple[int, int] | None
    readings: int  # processes actually read this tick (zombies included)
    vms: int | None = None
    faults: tuple[int, int] | None = None  # minor, major: cumulative like the CPU times


class _Node:
    __slots__ = ("children", "gone_tick", "last", "last_tick", "parent", "pid")

    def __init__(self, pid: int, parent: _Node | None) -> None:
        self.pid = pid
        self.parent = parent
        self.children: list[_Node] = []
        self.last: Reading | None = None
        self.last_tick: int | None = None
        self.gone_tick: int | None = None


class ProcessTree:
    """
    The processes of one script, as known from the readings applied so far. Event-loop
    side only: never touched by a worker thread.
    """

    def __init__(self, pid: int, io_keys: tuple[str, ...]) -> None:
        self.root = _Node(pid, None)
        self.io_keys = io_keys
        self.io_seen = False
        self.scan_key: tuple[str, int] | None = None
        self._live: dict[int, _Node] = {pid: self.root}
        self._detached: list[_Node] = []
        # The vector: user, system, the I/O counters, minor and major page faults.
        self._frozen = [0.0] * (4 + len(io_keys))
        self.faults_seen = False
        self._tick = 0
        self._figures: TreeFigures | None = None
        self.final_faults: tuple[int, int] | None = None

    # -- what the worker thread needs -------------------------------------------------

    def known(self) -> list[KnownProcess]:
        """Live processes, parent first (gone nodes are walked through, not listed)."""
        root = self.root
        if not root.children and not self._detached:  # the common case: one process
            if root.gone_tick is not None:
                return []
            return [(root.pid, root.last)]
        return [(node.pid, node.last) for node in self._walk() if node.gone_tick is None]

    @property
    def alive(self) -> bool:
        """False once no process of the tree is left to read."""
        return bool(self._live)

    def _walk(self) -> Iterator[_Node]:
        stack = [*reversed(self._detached), self.root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    # -- applying one tick's readings --------------------------------------------------

    def apply(self, results: Sequence[Result]) -> TreeFigures:
        """Take one pass of :func:`read_tree` and return the figures of the tree."""
        self._tick += 1
        tick = self._tick
        fresh: list[Reading] = []
        readings = 0
        # Nothing changed when every live process handed back its previous reading
        # object (the reader does that for identical bytes): the figures are the same.
        unchanged = len(results) == len(self._live)
        for pid, hint, result in results:
            node = self._live.get(pid)
            if node is not None and result is node.last:
                node.last_tick = tick
                readings += 1
                if not result.zombie:
                    fresh.append(result)
                continue
            unchanged = False
            if result is GONE:
                if node is not None:
                    node.gone_tick = tick
                    del self._live[pid]
                continue
            if node is None:
                node = self._adopt(pid, hint, result)
            if result is UNREADABLE or not isinstance(result, Reading):
                continue
            if node is self.root and self.scan_key is None:
                self.scan_key = _scan_key(pid)
            parent = node.parent
            if parent is not None and result.ppid != parent.pid:
                self._reparent(node, self._live.get(result.ppid))
            node.last = result
            node.last_tick = tick
            readings += 1
            if result.io is not None:
                self.io_seen = True
            if result.faults is not None:
                self.faults_seen = True
            if not result.zombie:
                fresh.append(result)
        if unchanged and self._figures is not None:
            return self._figures
        if self._detached:
            self._collapse_detached()
        vector = self.estimate()
        user, system, io = self._split(vector)
        faults = (int(vector[-2]), int(vector[-1])) if self.faults_seen else None
        if len(fresh) == 1:  # the common case: one process
            (r,) = fresh
            self._figures = TreeFigures(
                user, system, r.rss, r.threads, 1, r.fds, io if self.io_seen else None, r.ctx,
                readings, r.vms, faults,
            )  # fmt: skip
            return self._figures
        self._figures = TreeFigures(
            cpu_user=user,
            cpu_system=system,
            rss=sum(r.rss for r in fresh),
            threads=sum(r.threads for r in fresh),
            processes=len(fresh),
            fds=_sum_known([r.fds for r in fresh]),
            io=io if self.io_seen else None,
            ctx=_sum_ctx([r.ctx for r in fresh]),
            readings=readings,
            vms=_sum_known([r.vms for r in fresh]),
            faults=faults,
        )
        return self._figures

    def _adopt(self, pid: int, hint: int | None, result: ReadResult) -> _Node:
        parent = self._live.get(hint) if hint is not None else None
        if parent is None and isinstance(result, Reading):
            parent = self._live.get(result.ppid)
        node = _Node(pid, parent)
        if parent is not None:
            parent.children.append(node)
        else:
            self._detached.append(node)  # an orphan found by the session scan
        self._live[pid] = node
        return node

    def _reparent(self, node: _Node, new_parent: _Node | None) -> None:
        """``node``'s parent exited: it now belongs to init or a subreaper."""
        assert node.parent is not None
        node.parent.children.remove(node)
        node.parent = new_parent
        if new_parent is not None:  # a subreaper inside the tree
            new_parent.children.append(node)
        else:
            self._detached.append(node)

    def _collapse_detached(self) -> None:
        """Fold detached subtrees with nothing left alive into a constant."""
        snapshot = list(self._detached)
        keep: list[_Node] = []
        for top in snapshot:
            if top.gone_tick is None or any(n.gone_tick is None for n in _subtree(top)):
                keep.append(top)
                continue
            for i, value in enumerate(self._subtree_estimate(top)):
                self._frozen[i] += value
        # _subtree_estimate may have detached more (see _prune): keep those too.
        self._detached = keep + self._detached[len(snapshot) :]

    # -- estimates ----------------------------------------------------------------------

    def estimate(self) -> list[float]:
        """Cumulative CPU (user, system) and I/O of everything seen, as one vector."""
        root = self.root
        if not root.children and not self._detached and not any(self._frozen):
            return self._own(root)  # the common case: one process
        return [a + b for a, b in zip(self._subtree_estimate(self.root), self._rest(), strict=True)]

    def _rest(self) -> list[float]:
        """E of the detached subtrees, plus the folded ones."""
        total = list(self._frozen)
        i = 0
        while i < len(self._detached):  # _subtree_estimate may append (see _prune)
            for j, value in enumerate(self._subtree_estimate(self._detached[i])):
                total[j] += value
            i += 1
        return total

    def final(self, rusage: resource.struct_rusage | None) -> tuple[float, float, tuple[int, ...]]:
        """
        The end-of-run totals: ``max(rusage, E(root)) + E(detached)`` per component (see
        the module docstring), as (user seconds, system seconds, I/O counters).
        """
        root = self._subtree_estimate(self.root)
        rest = self._rest()
        if rusage is not None:
            root[0] = max(root[0], rusage.ru_utime)
            root[1] = max(root[1], rusage.ru_stime)
            if sys.platform == "linux" and "io_read_disk_bytes" in self.io_keys:
                # Linux counts ru_inblock/ru_oublock in 512-byte units of the same
                # storage-level accounting as /proc/<pid>/io read_bytes/write_bytes.
                read_at = 2 + self.io_keys.index("io_read_disk_bytes")
                write_at = 2 + self.io_keys.index("io_write_disk_bytes")
                root[read_at] = max(root[read_at], rusage.ru_inblock * 512)
                root[write_at] = max(root[write_at], rusage.ru_oublock * 512)
        if rusage is not None:
            root[-2] = max(root[-2], rusage.ru_minflt)
            root[-1] = max(root[-1], rusage.ru_majflt)
        total = [a + b for a, b in zip(root, rest, strict=True)]
        #: (minor, major) page faults of the whole run, like the CPU times.
        self.final_faults = (int(total[-2]), int(total[-1]))
        user, system, io = self._split(total)
        return user, system, io

    def _split(self, vector: list[float]) -> tuple[float, float, tuple[int, ...]]:
        return vector[0], vector[1], tuple(map(int, vector[2:-2]))

    def _own(self, node: _Node) -> list[float]:
        width = 4 + len(self.io_keys)
        r = node.last
        if r is None:
            return [0.0] * width
        own = [r.user + r.children_user, r.system + r.children_system]
        if r.io is not None and len(r.io) == len(self.io_keys):
            own.extend(float(v) for v in r.io)
        else:
            own.extend([0.0] * len(self.io_keys))
        faults = r.faults
        if faults is not None:
            own.append(float(faults[0]))
            own.append(float(faults[1]))
        else:
            own.extend((0.0, 0.0))
        return own

    def _subtree_estimate(self, top: _Node) -> list[float]:
        """E(top), iteratively (process trees can be deep); prunes children whose
        counters are now inside their parent's."""
        order = list(_subtree(top))
        values: dict[int, list[float]] = {}
        for node in reversed(order):  # children before parents
            vector = self._own(node)
            kept: list[_Node] = []
            for child in node.children:
                if (
                    child.gone_tick is not None
                    and node.last_tick is not None
                    and child.gone_tick <= node.last_tick
                ):
                    self._prune(child)
                    continue
                kept.append(child)
                for i, value in enumerate(values.pop(id(child))):
                    vector[i] += value
            node.children = kept
            values[id(node)] = vector
        return values[id(top)]

    def _prune(self, child: _Node) -> None:
        """Forget a child reaped by its parent; keep watching any descendant still alive
        (one whose reparenting we have not read yet)."""
        for node in _subtree(child):
            if node is not child and node.gone_tick is None:
                assert node.parent is not None
                node.parent.children.remove(node)
                node.parent = None
                self._detached.append(node)


def _subtree(top: _Node) -> Iterator[_Node]:
    stack = [top]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children))


def _sum_known(values: list[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def _sum_ctx(values: list[tuple[int, int] | None]) -> tuple[int, int] | None:
    known = [v for v in values if v is not None]
    if not known:
        return None
    return sum(v[0] for v in known), sum(v[1] for v in known)


def _scan_key(pid: int) -> tuple[str, int] | None:
    """The script leads its own session or group when the runner started it so
    (``start_new_session=True``): then every process it starts shares that id, and a scan
    can find the ones orphaned before we saw them."""
    try:
        if os.getsid(pid) == pid:
            return ("sid", pid)
        if os.getpgid(pid) == pid:
            return ("pgid", pid)
    except (OSError, AttributeError):
        pass
    return None
