"""
One sampler per event loop and interval, shared by every monitor: one worker-thread call
per tick reads all watched trees.

Why shared: a thread hop costs tens of microseconds, and 50 monitors each sleeping and
waking on their own cost 100 task wake-ups a second at 0.5 s. Here the loop wakes once per
tick, one worker thread reads every tree, and the monitors' ``run()`` tasks sleep on an
event until they are done.

There is no background task: the tick loop runs inside one of the monitors' own ``run()``
calls (the *leader*), in that caller's task group, and passes to another member when the
leader leaves (its script ended, or it was cancelled). So cancellation and errors stay
where structured concurrency puts them.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Protocol

import anyio
import anyio.lowlevel
import anyio.to_thread

from . import escapees
from .tree import Scan, read_tree

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .readers import Reader
    from .tree import KnownProcess, Result

__all__ = ["Member", "run_scan", "serve"]

logger = logging.getLogger("aiorunner.monitor")

#: With children files, scan the system for orphans at most every this many seconds...
_ORPHAN_SCAN_PERIOD = 5.0
#: ...and never spend more than 1/200 of the elapsed time scanning (0.5 % of a core).
_ORPHAN_SCAN_BUDGET = 200.0
#: Without children files, discovery *is* the scan: allow up to 1 % of a core.
_DISCOVERY_SCAN_BUDGET = 100.0


class Member(Protocol):
    """What the sampler needs from a monitor."""

    reader: Reader
    done: bool
    #: The script's pid, and its run token (bytes) or None: see ``escapees``.
    pid: int
    run_token: bytes | None

    def job(self) -> tuple[list[KnownProcess], tuple[str, int] | None]:
        """The live processes to read and the session/group key to scan for."""
        ...

    def accept(self, results: list[Result] | BaseException, read_at: float) -> None:
        """Apply one tick's readings (or the error reading them raised)."""
        ...

    def wake(self) -> None:
        """Make a pending :meth:`wait` return."""
        ...

    async def wait(self) -> None:
        """Sleep until :meth:`wake` (or until done)."""
        ...


class _Sampler:
    def __init__(self, interval: float, reader: Reader) -> None:
        self.interval = interval
        self.reader = reader
        self.members: dict[Member, None] = {}  # insertion-ordered set
        self.leader: Member | None = None
        self.limiter = anyio.CapacityLimiter(1)
        self.next_scan = 0.0
        self.ticks = 0

    def wants_scan(self, now: float, keys: Sequence[tuple[str, int] | None]) -> bool:
        if now < self.next_scan:
            return False
        if not self.reader.has_children_files:
            return True
        return any(key is not None for key in keys)

    def scanned(self, now: float, cost: float) -> None:
        if self.reader.has_children_files:
            self.next_scan = now + max(_ORPHAN_SCAN_PERIOD, cost * _ORPHAN_SCAN_BUDGET)
        else:
            self.next_scan = now + max(self.interval, cost * _DISCOVERY_SCAN_BUDGET) * 0.999

    async def lead(self, me: Member) -> None:
        """The tick loop; returns when ``me`` is done."""
        deadline = anyio.current_time()
        while not me.done:
            deadline += self.interval
            now = anyio.current_time()
            deadline = max(deadline, now)  # the loop was busy: skip missed ticks, no burst
            with anyio.move_on_after(deadline - now):
                await me.wait()
            if me.done:
                return
            await self.tick()

    async def tick(self) -> None:
        members = [m for m in self.members if not m.done]
        if not members:
            return
        jobs = [m.job() for m in members]
        tokens = [m.run_token for m in members]
        scripts = frozenset(m.pid for m in members)
        now = time.monotonic()
        scan = self.wants_scan(now, [key for _known, key in jobs])
        # Shielded: the leader being cancelled must not throw away everyone's readings;
        # the work is bounded (one pass over the known processes, no waiting).
        with anyio.CancelScope(shield=True):
            cost, results = await anyio.to_thread.run_sync(
                _work, self.reader, jobs, scan, tokens, scripts, limiter=self.limiter
            )
        if scan:
            self.scanned(now, cost)
        self.ticks += 1
        for member, result in zip(members, results, strict=True):
            member.accept(result, now)


def _work(
    reader: Reader,
    jobs: Sequence[tuple[list[KnownProcess], tuple[str, int] | None]],
    want_scan: bool,
    tokens: Sequence[bytes | None] = (),
    scripts: frozenset[int] = frozenset(),
) -> tuple[float, list[list[Result] | BaseException]]:
    """Worker thread: read every tree of the tick (one tree's failure stays its own).
    Escaped processes of the runs (see ``escapees``) are looked for once for all."""
    scan, cost = run_scan(reader) if want_scan else (None, 0.0)
    wanted = {token for token in tokens if token is not None}
    escaped = escapees.find_escaped(wanted, scripts) if wanted else {}
    return cost, [
        _read_one(reader, known, scan, key, escaped.get(token, ()) if token else ())
        for (known, key), token in zip(jobs, tokens or [None] * len(jobs), strict=True)
    ]


def _read_one(
    reader: Reader,
    known: list[KnownProcess],
    scan: Scan | None,
    key: tuple[str, int] | None,
    escaped: Sequence[int] = (),
) -> list[Result] | BaseException:
    try:
        return read_tree(reader, known, scan=scan, scan_key=key, escaped=escaped)
    except Exception as exc:  # noqa: BLE001 - a bug or an odd platform: that monitor reports it
        return exc


def run_scan(reader: Reader) -> tuple[Scan | None, float]:
    """A full process scan and what it cost in seconds (worker thread)."""
    started = time.perf_counter()
    try:
        reader.prepare()
        scan = Scan.of(reader.scan())
    except Exception:  # logged; the tick goes on without the scan
        logger.exception("process scan failed; orphaned processes may be missed")
        return None, time.perf_counter() - started
    return scan, time.perf_counter() - started


_samplers: anyio.lowlevel.RunVar[dict[tuple[float, int], _Sampler]] = anyio.lowlevel.RunVar(
    "aiorunner_monitor_samplers"
)


def _sampler_for(interval: float, reader: Reader) -> _Sampler:
    try:
        samplers = _samplers.get()
    except LookupError:
        samplers = {}
        _samplers.set(samplers)
    key = (interval, id(reader))
    sampler = samplers.get(key)
    if sampler is None:
        sampler = samplers[key] = _Sampler(interval, reader)
    return sampler


async def serve(member: Member, interval: float) -> None:
    """
    Sample ``member`` every ``interval`` (with every other member of that interval) until
    it is done. Returns then; raises the caller's cancellation as usual.
    """
    sampler = _sampler_for(interval, member.reader)
    sampler.members[member] = None
    try:
        while not member.done:
            if sampler.leader is None:
                sampler.leader = member
                try:
                    await sampler.lead(member)
                finally:
                    sampler.leader = None
                    for other in sampler.members:
                        other.wake()  # one of them takes the lead
                return
            await member.wait()
    finally:
        del sampler.members[member]
        if not sampler.members:
            try:
                samplers = _samplers.get()
            except LookupError:  # pragma: no cover - the run is ending
                pass
            else:
                if samplers.get((interval, id(member.reader))) is sampler:
                    del samplers[(interval, id(member.reader))]
