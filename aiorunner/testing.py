"""
Test helpers for code that runs scripts with aiorunner: an in-memory backend.

Use it in your own tests to see the spans a run made, without files or collectors::

    from aiorunner import ScriptRunner, Session, TracingConfig
    from aiorunner.testing import InMemoryBackend

    async def test_my_pipeline_is_traced():
        backend = InMemoryBackend()
        async with Session(TracingConfig(), backends=[backend]) as session:
            result = await ScriptRunner("etl.py", session=session).run()
            await session.flush()
        names = [span.name for span in backend.get_finished_spans()]
        assert "execute_script" in names

It is also installed as the backend named ``memory`` (``OTEL_TRACES_EXPORTER=memory``);
reach the instance through ``session.backend("memory")``.

It can misbehave on purpose, to test what your code does when export fails:
``fail_next(n)`` (retryable failures, optionally with a Retry-After, or ``unreachable``
like a refused connection), ``fail_permanently``, ``hang`` and ``raise_next``. What it
cannot take is spooled like any backend's, under ``AIORUNNER_SPOOL_DIR``.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import anyio

from .backend import ExportResult

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import ReadableSpan

    from ._config import TracingConfig
    from .backend import LogRecordData, MetricPointData

__all__ = ["InMemoryBackend", "create_backend"]


class _Fault:
    __slots__ = ("error", "exception", "kind", "retry_after", "seconds", "unreachable")

    def __init__(
        self,
        kind: str,
        *,
        error: str = "",
        retry_after: float | None = None,
        seconds: float | None = None,
        exception: BaseException | None = None,
        unreachable: bool = False,
    ) -> None:
        self.kind = kind
        self.unreachable = unreachable
        self.error = error
        self.retry_after = retry_after
        self.seconds = seconds
        self.exception = exception


class InMemoryBackend:
    """
    An async backend that keeps every span, log record and metric point it is given.

    Faults (``fail_next``, ``hang``, ...) apply to span exports only; log records
    (``get_log_records``) and metric points (``get_metric_points``) are always taken.

    Safe to read from any thread while the session's export thread writes: it takes no
    lock (a lock contended on an event loop thread is a blocking call) and relies on
    single list and deque operations being atomic.
    """

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self._spans: list[ReadableSpan] = []
        self._logs: list[LogRecordData] = []
        self._points: list[MetricPointData] = []
        self._started: list[ReadableSpan] = []
        self._batches: list[int] = []
        self._faults: deque[_Fault] = deque()
        self._permanent: str | None = None
        #: Calls to export(), failed ones included.
        self.export_calls = 0
        self.shutdown_called = False

    def __repr__(self) -> str:
        return f"InMemoryBackend({self.name!r}, spans={len(self._spans)})"

    # ------------------------------------------------------------------ reading

    def get_finished_spans(self) -> tuple[ReadableSpan, ...]:
        """Every span exported so far, in export order."""
        return tuple(self._spans)

    def get_log_records(self) -> tuple[LogRecordData, ...]:
        """Every log record exported so far (the scripts' output lines), in order."""
        return tuple(self._logs)

    def get_metric_points(self) -> tuple[MetricPointData, ...]:
        """Every metric point exported so far, in order."""
        return tuple(self._points)

    def get_started_spans(self) -> tuple[ReadableSpan, ...]:
        """Root ``ScriptRunner`` spans announced at their start (``on_span_start``)."""
        return tuple(self._started)

    @property
    def batches(self) -> tuple[int, ...]:
        """The size of each successful export, in order."""
        return tuple(self._batches)

    def clear(self) -> None:
        """Forget the spans, log records, metric points, batches and pending faults."""
        self._spans.clear()
        self._logs.clear()
        self._points.clear()
        self._started.clear()
        self._batches.clear()
        self._faults.clear()
        self._permanent = None
        self.export_calls = 0

    # ------------------------------------------------------------------ faults

    def fail_next(
        self,
        count: int = 1,
        *,
        retry_after: float | None = None,
        error: str = "unavailable",
        unreachable: bool = False,
    ) -> None:
        """The next ``count`` exports return a *retryable* failure (``unreachable``: as
        a refused connection, retried only within the connect budget)."""
        self._faults.extend(
            _Fault("retryable", error=error, retry_after=retry_after, unreachable=unreachable)
            for _ in range(count)
        )

    def fail_permanently(self, error: str = "rejected", *, count: int | None = None) -> None:
        """The next ``count`` exports (all of them when ``None``) fail permanently."""
        if count is None:
            self._permanent = error
        else:
            self._faults.extend(_Fault("permanent", error=error) for _ in range(count))

    def hang(self, count: int = 1, *, seconds: float | None = None) -> None:
        """The next ``count`` exports hang (for ``seconds``, or until cancelled by the
        pipeline's export timeout)."""
        self._faults.extend(_Fault("hang", seconds=seconds) for _ in range(count))

    def raise_next(self, exception: BaseException | None = None, *, count: int = 1) -> None:
        """The next ``count`` exports raise ``exception`` (default ``RuntimeError``)."""
        self._faults.extend(
            _Fault("raise", exception=exception or RuntimeError("injected failure"))
            for _ in range(count)
        )

    # ------------------------------------------------------------------ Backend

    async def export(self, spans: Sequence[ReadableSpan], *, timeout: float) -> ExportResult:
        self.export_calls += 1
        fault = self._faults.popleft() if self._faults else None
        permanent = self._permanent
        if fault is not None:
            if fault.kind == "retryable":
                return ExportResult.retryable(
                    fault.error, retry_after=fault.retry_after, unreachable=fault.unreachable
                )
            if fault.kind == "permanent":
                return ExportResult.permanent(fault.error)
            if fault.kind == "raise":
                assert fault.exception is not None
                raise fault.exception
            if fault.seconds is None:
                await anyio.sleep_forever()
            await anyio.sleep(fault.seconds or 0)
        elif permanent is not None:
            return ExportResult.permanent(permanent)
        self._spans.extend(spans)
        self._batches.append(len(spans))
        return ExportResult.success()

    async def export_logs(
        self, records: Sequence[LogRecordData], *, timeout: float
    ) -> ExportResult:
        self._logs.extend(records)
        return ExportResult.success()

    async def export_metrics(
        self, points: Sequence[MetricPointData], *, timeout: float
    ) -> ExportResult:
        self._points.extend(points)
        return ExportResult.success()

    async def on_span_start(self, span: ReadableSpan) -> None:
        self._started.append(span)

    async def force_flush(self, *, timeout: float) -> bool:
        return True

    async def shutdown(self, *, timeout: float) -> None:
        self.shutdown_called = True


def create_backend(config: TracingConfig) -> InMemoryBackend:
    """Entry point ``memory``: a new, empty in-memory backend for each session."""
    return InMemoryBackend()
