"""
``ProcessTreeMonitor``: watch a running script and every process it starts.

The runner creates one per run right after spawning the script (in its own session),
runs :meth:`ProcessTreeMonitor.run` in the task group of the run, cancels it (or calls
:meth:`ProcessTreeMonitor.stop`) once the script has exited, and then asks for
:meth:`~ProcessTreeMonitor.summary` (``RunResult.metrics``) and
:meth:`~ProcessTreeMonitor.events` (span events of ``execute_script``).

How the pieces fit:

- ``_monitor_readers``: reading one process (``/proc`` on Linux, psutil elsewhere);
- ``_monitor_tree``: which processes are the script's, and adding up their counters
  without counting anything twice (the accounting is explained there);
- ``_monitor_sampler``: one tick loop and one worker-thread call per tick for every
  monitor of an event loop, so 50 monitors cost about what one does;
- ``_monitor_metrics``: samples, running aggregates, final metrics, thinned events.
"""

from __future__ import annotations

import inspect
import logging
import math
import resource
import time
from typing import TYPE_CHECKING

import anyio

from .. import _offload
from .._exceptions import ConfigError, UsageError
from .readers import ProcfsReader, Reader, default_reader, own_peak_rss
from .sampler import serve
from .samples import IO_FIELDS, Event, Sample, SampleLog, build_summary
from .tree import ProcessTree, read_tree

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from anyio.streams.memory import MemoryObjectSendStream

    from .tree import KnownProcess, Result

__all__ = ["ProcessTreeMonitor", "Sample"]

logger = logging.getLogger("aiorunner.monitor")

_NO_IO: tuple[None, ...] = (None,) * len(IO_FIELDS)

#: Samples a slow ``live()`` consumer may fall behind by before the oldest are dropped.
_LIVE_BUFFER = 16
#: Quick re-reads when the first reading was not a sample (a process mid-exec).
_FIRST_RETRIES = 20
_FIRST_RETRY_DELAY = 0.005


class ProcessTreeMonitor:
    """
    Samples process ``pid`` and all its descendants every ``interval`` seconds.

    Args:
        pid: the script's process; the monitor does not own or reap it.
        interval: seconds between samples (> 0). Monitors with the same interval in one
            event loop share one sampler: one worker-thread call per tick reads them all.
        on_sample: called on the event loop with each :class:`Sample`; keep it quick (a
            progress bar, a log line). An exception it raises is logged, not raised.
        max_memory_bytes: when the tree's RSS exceeds this, :meth:`run` sets
            :attr:`limit_exceeded` and returns, so the caller can kill the run.
        max_cpu_seconds: the same for the tree's user plus system CPU seconds.
        reader: how processes are read (tests pass ``PsutilReader()``); default: ``/proc``
            on Linux, psutil elsewhere.
        keep_samples: how many samples to keep for :meth:`events` (evenly thinned).
        run_token: the script's ``AIORUNNER_RUN_TOKEN`` (the runner passes it): processes
            of the run that escaped its tree (a double fork into their own session) and
            were reparented to this process, a child subreaper, are found by it each
            tick and counted (Linux).

    Raises:
        ConfigError: a value above is out of range.
    """

    def __init__(
        self,
        pid: int,
        *,
        interval: float = 0.5,
        on_sample: Callable[[Sample], object] | None = None,
        max_memory_bytes: int | None = None,
        max_cpu_seconds: float | None = None,
        reader: Reader | None = None,
        keep_samples: int = 1024,
        run_token: str | None = None,
    ) -> None:
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise ConfigError(f"pid={pid!r} must be the positive int pid of a process")
        self.interval = _positive("interval", interval, "seconds between samples, e.g. 0.5")
        if max_memory_bytes is not None:
            _positive("max_memory_bytes", max_memory_bytes, "bytes, e.g. 512 * 1024**2")
            if not isinstance(max_memory_bytes, int):
                raise ConfigError(
                    f"max_memory_bytes={max_memory_bytes!r} must be an int number of bytes"
                )
        if max_cpu_seconds is not None:
            max_cpu_seconds = _positive("max_cpu_seconds", max_cpu_seconds, "seconds, e.g. 60")
        if on_sample is not None and not callable(on_sample):
            raise ConfigError(f"on_sample={on_sample!r} must be a function taking a Sample")
        if inspect.iscoroutinefunction(on_sample):
            raise ConfigError(
                "on_sample must be a plain function, not a coroutine function; "
                "to consume samples asynchronously iterate `monitor.live()`"
            )
        if isinstance(keep_samples, bool) or not isinstance(keep_samples, int) or keep_samples < 2:
            raise ConfigError(f"keep_samples={keep_samples!r} must be an int >= 2")
        self.pid = pid
        self.run_token = run_token.encode() if run_token else None
        self.on_sample = on_sample
        self.max_memory_bytes = max_memory_bytes
        self.max_cpu_seconds = max_cpu_seconds
        self.reader = reader if reader is not None else default_reader()
        #: A sentence saying which limit was crossed, or None.
        self.limit_exceeded: str | None = None
        #: Set when monitoring stopped because reading the tree failed (logged too).
        self.error: str | None = None
        #: Samples a slow ``live()`` consumer missed (never silently: they are counted).
        self.live_dropped = 0
        self.done = False
        self._tree = ProcessTree(pid, self.reader.io_keys)
        self._io_slots = tuple(IO_FIELDS.index(key) for key in self.reader.io_keys)
        self._log = SampleLog(self.interval, keep=keep_samples)
        self._t0 = time.monotonic()
        self._applied_at = -math.inf
        self._event: anyio.Event | None = None
        self._running = False
        self._subscribers: list[MemoryObjectSendStream[Sample]] = []
        self._callback_failed = False
        #: This process's own peak RSS (``ru_maxrss`` units, KiB) read with the last
        #: sample (:meth:`stop`); until then ``getrusage``'s, which is at least as high.
        #: A child's ``ru_maxrss`` not above it may be inherited (see the runner).
        self.runner_peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    # -- the contract ------------------------------------------------------------------

    async def run(self) -> None:
        """
        Sample the tree now, then every ``interval``, until cancelled, until
        :meth:`stop`, until a limit is crossed (then :attr:`limit_exceeded` says which),
        or until no process of the tree is left. Never raises for the script's processes
        coming and going; reading errors are logged and end monitoring (:attr:`error`).
        """
        if self._running:
            raise UsageError("ProcessTreeMonitor.run() is already running; call it once")
        self._running = True
        try:
            if not self.done:
                await self._sample_now()
            # A process read the instant its exec finishes may show no resident memory
            # yet (about 1 read in 15 right after Popen returns): that reading is not a
            # sample (see accept), so read again shortly rather than a whole interval on.
            for _ in range(_FIRST_RETRIES):
                if self.done or self.last_sample is not None:
                    break
                await anyio.sleep(_FIRST_RETRY_DELAY)
                await self._sample_now()
            if not self.done:
                await serve(self, self.interval)
        finally:
            self.done = True
            self._close_live()

    async def stop(self) -> None:
        """
        Take one last sample now and make :meth:`run` return. Call it after the script
        exited but before reaping it (e.g. when its pidfd turns readable): its zombie
        still shows its final CPU and I/O counters, so nothing done after the last tick
        is lost. Safe to call more than once, or after ``run()`` ended.
        """
        if self.done:
            return
        await self._sample_now(final=True)
        self.done = True
        self.wake()

    def summary(
        self, *, rusage: resource.struct_rusage | None, wall_seconds: float
    ) -> dict[str, float | int]:
        """
        The run's metrics (keys documented in the README's Monitoring section).

        Args:
            rusage: ``os.wait4``'s rusage of the script, which the caller reaped: exact
                CPU, peak RSS, block I/O and context switches of the script and of every
                descendant it waited for, even those that lived shorter than a tick.
                ``None`` when unknown (then the sampled figures alone are used).
            wall_seconds: the run's wall time, reported as ``execution_time_seconds``.
        """
        user, system, io = self._tree.final(rusage)
        io_metrics: dict[str, int] = {}
        if self._tree.io_seen:
            io_metrics = dict(zip(self.reader.io_keys, io, strict=True))
        out = build_summary(
            self._log,
            cpu_user=user,
            cpu_system=system,
            io=io_metrics,
            rusage=rusage,
            wall_seconds=wall_seconds,
        )
        faults = self._tree.final_faults
        if self._tree.faults_seen and faults is not None:
            # The whole tree's (detached processes included), at least the rusage's.
            out["page_faults_minor"] = max(faults[0], int(out.get("page_faults_minor", 0)))
            out["page_faults_major"] = max(faults[1], int(out.get("page_faults_major", 0)))
        return out

    def events(self, max_events: int) -> list[Event]:
        """
        Span events ``(name, attributes, timestamp_ns)``: ``cpu_monitoring``,
        ``memory_monitoring`` and ``io_monitoring`` per kept sample, at most
        ``max_events`` in total, thinned evenly keeping the first and last sample.
        """
        if isinstance(max_events, bool) or not isinstance(max_events, int) or max_events < 0:
            raise ConfigError(f"max_events={max_events!r} must be an int >= 0")
        return self._log.events(max_events)

    async def live(self) -> AsyncIterator[Sample]:
        """
        Yield samples as they are taken (the latest one first, if any), until monitoring
        ends. Costs nothing unless iterated. A consumer more than 16 samples behind
        loses the oldest ones; :attr:`live_dropped` counts them.
        """
        send, receive = anyio.create_memory_object_stream[Sample](_LIVE_BUFFER)
        if self._log.last is not None:
            send.send_nowait(self._log.last)
        if self.done:
            send.close()
        else:
            self._subscribers.append(send)
        async with receive:
            async for sample in receive:
                yield sample

    @property
    def samples(self) -> list[Sample]:
        """The samples kept so far (evenly thinned on long runs), oldest first."""
        return self._log.samples()

    @property
    def last_sample(self) -> Sample | None:
        """The latest sample, or None before the first."""
        return self._log.last

    @property
    def samples_taken(self) -> int:
        """How many samples were taken (``samples`` keeps only a thinned subset)."""
        return self._log.count

    # -- the sampler's side (see _monitor_sampler.Member) ---------------------------------

    def tracked(self) -> list[tuple[int, int]]:
        """``(pid, start time in clock ticks)`` of every process of the tree besides the
        script that was alive at the last reading (Linux ``/proc`` reader; else empty):
        the runner ends those that outlive the script."""
        if not isinstance(self.reader, ProcfsReader):
            return []
        return [
            (pid, int(last.identity))
            for pid, last in self._tree.known()
            if pid != self.pid and last is not None and not last.zombie
        ]

    def job(self) -> tuple[list[KnownProcess], tuple[str, int] | None]:
        return self._tree.known(), self._tree.scan_key

    def accept(self, results: list[Result] | BaseException, read_at: float) -> None:
        if self.done or read_at <= self._applied_at:
            return  # stopped meanwhile, or an older pass than one already applied
        if isinstance(results, BaseException):
            self.error = f"reading the process tree of pid {self.pid} failed: {results!r}"
            logger.error("%s; monitoring of this run stops", self.error, exc_info=results)
            self._finish()
            return
        self._applied_at = read_at
        figures = self._tree.apply(results)
        if figures.readings == 0 or figures.processes == 0 or figures.rss == 0:
            # Nothing read, or only zombies (the script's, read by stop() before the
            # reap): their final counters are in the tree's totals (summary()), but a
            # reading of a tree that has exited is not a sample: rss 0 and no process
            # would reach on_sample, live(), the events and the average (#16). Nor is a
            # reading taken while the script was between fork and exec (the first
            # reading at spawn, under load): a live process with no resident memory.
            if not self._tree.alive:
                self._finish()  # everything exited and was reaped: nothing left to watch
            return
        elapsed = read_at - self._t0
        cpu = figures.cpu_user + figures.cpu_system
        percent, window_ok = self._log.percent(elapsed, cpu, threads=figures.threads)
        io: tuple[int | None, ...] = _NO_IO
        if figures.io is not None:
            if len(figures.io) == len(IO_FIELDS):
                io = figures.io
            else:
                slots: list[int | None] = [None] * len(IO_FIELDS)
                for slot, value in zip(self._io_slots, figures.io, strict=True):
                    slots[slot] = value
                io = tuple(slots)
        # I/O, context switches, virtual memory, page faults (a tuple of unknown length
        # to the type checker: the fields are checked by Sample itself).
        tail: tuple[int | None, ...] = (
            *io,
            *(figures.ctx or (None, None)),
            figures.vms,
            *(figures.faults or (None, None)),
        )
        sample = Sample(  # positional: this runs for every process tree every tick
            time.time() - (time.monotonic() - read_at),
            elapsed,
            figures.cpu_user,
            figures.cpu_system,
            percent,
            figures.rss,
            figures.threads,
            figures.processes,
            figures.fds,
            *tail,
        )
        self._log.add(sample, window_ok=window_ok)
        self._publish(sample)
        self._check_limits(sample)
        if not self._tree.alive:
            self._finish()  # everything exited and was reaped: nothing left to watch

    def wake(self) -> None:
        if self._event is not None:
            self._event.set()

    async def wait(self) -> None:
        if self.done:
            return
        self._event = anyio.Event()
        await self._event.wait()

    # -- internals ------------------------------------------------------------------------

    async def _sample_now(self, *, final: bool = False) -> None:
        """One pass over this tree alone, right now. The final one also reads our own
        peak RSS (see :attr:`runner_peak_rss`).

        A tree of one process (the script at its start, the script's zombie at its end:
        most runs) is read here on the loop, as the spawn itself is: a few reads of the
        kernel's memory, ~20 µs, where a worker thread's round trip costs ten times that
        and, measured on 2 busy cores, about 3 % of run_many's throughput per reading.
        A larger tree, or a reader that is not ``loop_safe``, goes to a worker thread.
        (``/proc/<pid>/io`` may wait for a child to finish its exec, a few µs of kernel work,
        longer if the child is preempted right then: the same wait the vfork spawn has.)
        """
        read_at = time.monotonic()
        known, key = self.job()
        reader = self.reader
        try:
            if len(known) == 1 and reader.loop_safe and reader.prepared:
                results, peak = _read_here(reader, known, key, final)
            else:
                # Abandoned on cancel: a reading nobody waits for is harmless.
                results, peak = await _offload.run_sync(
                    _read_alone_and_peak, reader, known, key, final, abandon_on_cancel=True
                )
        except Exception as exc:  # noqa: BLE001 - reported through accept(), logged there
            self.accept(exc, read_at)
            return
        if peak:
            self.runner_peak_rss = peak
        self.accept(results, read_at)

    def _publish(self, sample: Sample) -> None:
        if self.on_sample is not None:
            try:
                result = self.on_sample(sample)
                if inspect.isawaitable(result):
                    if hasattr(result, "close"):
                        result.close()
                    raise TypeError("on_sample returned an awaitable; use live() for async")
            except Exception:
                if not self._callback_failed:  # once per run, not once per tick
                    self._callback_failed = True
                    logger.exception("on_sample callback of pid %d failed", self.pid)
        if not self._subscribers:
            return
        still: list[MemoryObjectSendStream[Sample]] = []
        for stream in self._subscribers:
            try:
                stream.send_nowait(sample)
            except anyio.WouldBlock:
                self.live_dropped += 1
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                stream.close()  # that consumer stopped iterating
                continue
            still.append(stream)
        self._subscribers = still

    def _check_limits(self, sample: Sample) -> None:
        if self.max_memory_bytes is not None and sample.rss_bytes > self.max_memory_bytes:
            self.limit_exceeded = (
                f"memory {_mb(sample.rss_bytes)} exceeded "
                f"max_memory_bytes={self.max_memory_bytes} ({_mb(self.max_memory_bytes)}); "
                "raise the limit or make the script use less memory"
            )
        elif self.max_cpu_seconds is not None and sample.cpu_seconds > self.max_cpu_seconds:
            self.limit_exceeded = (
                f"CPU time {sample.cpu_seconds:.2f} s exceeded "
                f"max_cpu_seconds={self.max_cpu_seconds:g}; "
                "raise the limit or make the script do less work"
            )
        else:
            return
        self._finish()

    def _finish(self) -> None:
        self.done = True
        self.wake()

    def _close_live(self) -> None:
        for stream in self._subscribers:
            stream.close()
        self._subscribers = []


def _read_alone_and_peak(
    reader: Reader, known: list[KnownProcess], key: tuple[str, int] | None, peak: bool
) -> tuple[list[Result], int]:
    """:func:`_read_alone`, and our own peak RSS when ``peak`` (else 0)."""
    return _read_alone(reader, known, key), own_peak_rss() if peak else 0


def _read_here(
    reader: Reader, known: list[KnownProcess], key: tuple[str, int] | None, peak: bool
) -> tuple[list[Result], int]:
    """:func:`_read_alone_and_peak` on the event loop (named apart: the tests allow its
    short reads of ``/proc`` there, and nowhere else)."""
    return _read_alone_and_peak(reader, known, key, peak)


def _read_alone(
    reader: Reader, known: list[KnownProcess], key: tuple[str, int] | None
) -> list[Result]:
    # No scan here: the first sample must be immediate and 50 runs starting together must
    # not scan the system 50 times. Without children files, the shared sampler's first
    # tick scans and finds the children.
    return read_tree(reader, known, scan=None, scan_key=key)


def _positive(name: str, value: object, hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}={value!r} must be a number ({hint})")
    if not value > 0 or math.isinf(value):
        raise ConfigError(f"{name}={value!r} must be a finite number > 0 ({hint})")
    return float(value)


def _mb(n: int) -> str:
    return f"{n / 1e6:.0f} MB"
