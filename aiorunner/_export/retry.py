"""
One export, retried with exponential backoff and jitter, inside one deadline.

Every attempt gets the time left until the deadline as its own timeout, and the pipeline
cancels it when that runs out (the SDK's BatchSpanProcessor does not enforce its export
timeout; we do). A ``retryable`` result is retried after ``initial * 2**n`` seconds with
jitter, or after the server's ``retry_after`` when that is longer; retrying stops as soon
as the next wait would pass the deadline (the OTLP exporters' rule). ``permanent``
results are not retried. A backend that raises is treated as a permanent failure of that
batch: its bug must not cost the other backends their time.

Unreachable is told apart: a refused connection or a name that does not resolve is known
in milliseconds, and waiting out a 30 s deadline for it only holds the run up. Results
marked ``unreachable`` are retried a few times within ``connect_budget`` (about 1 s:
waits of 1/8, 1/4 and 1/2 of it), then given up on with ``Outcome.unreachable`` set: the
worker spools the batch.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio

from ..backend import ExportResult, ExportStatus

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

__all__ = ["DEFAULT_POLICY", "Outcome", "RetryPolicy", "export_with_retry"]


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait between attempts."""

    #: Seconds before the first retry (TracingConfig option ``retry_initial_backoff``).
    initial: float = 0.25
    #: The longest wait between two attempts (option ``retry_max_backoff``).
    maximum: float = 8.0
    multiplier: float = 2.0
    #: Each wait is scaled by a random factor in ``[1 - jitter, 1]``.
    jitter: float = 0.5

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """The wait before retry number ``retry`` (1 for the first retry)."""
        base = min(self.maximum, self.initial * self.multiplier ** (retry - 1))
        factor = 1.0 - self.jitter * (rng or random).random()
        return base * factor


DEFAULT_POLICY = RetryPolicy()


@dataclass(frozen=True)
class Outcome:
    """How an export ended after its retries."""

    result: ExportResult
    attempts: int
    timed_out: bool = False
    raised: bool = False
    #: The backend could not be reached within the connect budget.
    unreachable: bool = False

    @property
    def ok(self) -> bool:
        return self.result.ok


async def export_with_retry(
    attempt: Callable[[float], Awaitable[ExportResult]],
    *,
    timeout: float,
    policy: RetryPolicy = DEFAULT_POLICY,
    describe: str = "export",
    connect_budget: float | None = None,
    limit_name: str = "export timeout, OTEL_BSP_EXPORT_TIMEOUT",
) -> Outcome:
    """
    Call ``attempt(time_left)`` until it succeeds, fails permanently, or the deadline
    ``timeout`` seconds from now would pass; with ``connect_budget``, results marked
    ``unreachable`` are retried only while their retries fit in that many seconds.

    Never raises (except cancellation of the caller): failures come back in the outcome.
    """
    started = anyio.current_time()
    deadline = started + timeout
    attempts = 0
    unreachable = 0
    while True:
        remaining = deadline - anyio.current_time()
        if remaining <= 0:
            return Outcome(
                ExportResult.retryable(f"{describe} deadline of {timeout:g}s passed"),
                attempts,
                timed_out=True,
            )
        attempts += 1
        raised = False
        result: ExportResult | None = None
        with anyio.move_on_after(remaining) as scope:
            try:
                result = await attempt(remaining)
            except Exception as exc:  # noqa: BLE001 - a raising backend fails this batch only
                raised = True
                result = ExportResult.permanent(f"raised {type(exc).__name__}: {exc}")
        if result is None or scope.cancelled_caught:
            return Outcome(
                ExportResult.retryable(
                    f"{describe} timed out after {timeout:g}s ({limit_name}); the backend "
                    "did not answer in time"
                ),
                attempts,
                timed_out=True,
            )
        if result.status is not ExportStatus.RETRYABLE:
            return Outcome(result, attempts, raised=raised)
        if result.unreachable and connect_budget is not None:
            unreachable += 1
            wait = connect_budget * 2 ** (unreachable - 1) / 8
            spent = anyio.current_time() - started
            if unreachable > 3 or spent + wait > connect_budget or spent + wait >= timeout:
                return Outcome(
                    ExportResult.retryable(
                        f"{result.error or 'unreachable'} (gave up after {attempts} "
                        f"attempt{'s' if attempts > 1 else ''} within the "
                        f"{connect_budget:g}s connect budget, AIORUNNER_CONNECT_BUDGET)",
                        unreachable=True,
                    ),
                    attempts,
                    unreachable=True,
                )
            await anyio.sleep(wait)
            continue
        wait = policy.delay(attempts)
        if result.retry_after is not None:
            wait = max(wait, result.retry_after)
        if anyio.current_time() + wait >= deadline:
            return Outcome(
                ExportResult.retryable(
                    f"{result.error or 'retryable failure'} (gave up after {attempts} "
                    f"attempt{'s' if attempts > 1 else ''}: the next retry would pass the "
                    f"{timeout:g}s export timeout)",
                    retry_after=result.retry_after,
                ),
                attempts,
            )
        await anyio.sleep(wait)
