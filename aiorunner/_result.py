"""
What a run returns: ``RunResult``, and ``ExportReport``, what became of its spans.

Both are plain frozen dataclasses that serialise to JSON (``to_dict``/``to_json``) so the
CLI's ``--json`` and apps that store results need no custom encoder.
"""

from __future__ import annotations

import json
import signal as _signal
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["BackendReport", "ExportReport", "RunResult"]


@dataclass(frozen=True)
class BackendReport:
    """What one backend did with a run's spans."""

    name: str
    exported: int = 0
    failed: int = 0
    dropped: int = 0
    last_error: str | None = None
    #: Spans handed to this backend and not yet exported or failed (timed out waiting).
    pending: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "exported": self.exported,
            "failed": self.failed,
            "dropped": self.dropped,
            "pending": self.pending,
            "last_error": self.last_error,
        }


@dataclass(frozen=True)
class ExportReport:
    """
    What happened to a run's spans by the time ``upload_traces`` ended.

    ``dropped`` counts spans lost before reaching any backend (queue full, pipeline
    closed); per-backend counts are in ``backends``. ``sampled_out`` is True when the
    sampler decided not to record the run (nothing was meant to arrive).
    """

    backends: tuple[BackendReport, ...] = ()
    dropped: int = 0
    pending: int = 0
    sampled_out: bool = False
    disabled: bool = False
    #: The run's log records (its output lines), per backend that takes logs.
    logs: tuple[BackendReport, ...] = ()
    #: Log records lost before reaching any backend (the session closed), and not yet
    #: settled when the wait ended.
    logs_dropped: int = 0
    logs_pending: int = 0
    #: Records the run made from its output and handed to the logs pipeline, and those
    #: past ``AIORUNNER_LOG_MAX_RECORDS`` (counted, not sent; not a failure).
    log_records: int = 0
    log_records_over_cap: int = 0

    @property
    def ok(self) -> bool:
        """True when every span reached every backend (or nothing was meant to)."""
        if self.disabled or self.sampled_out:
            return True
        return (
            self.dropped == 0
            and self.pending == 0
            and self.logs_dropped == 0
            and self.logs_pending == 0
            and all(b.failed == 0 and b.dropped == 0 for b in (*self.backends, *self.logs))
        )

    @property
    def exported(self) -> int:
        """Spans exported by every backend (the minimum over backends)."""
        return min((b.exported for b in self.backends), default=0)

    def describe(self) -> str:
        """One line for logs and the CLI."""
        if self.disabled:
            return "tracing disabled"
        if self.sampled_out:
            return "not sampled"
        parts = []
        for b in self.backends:
            text = f"{b.name}: {b.exported} exported"
            if b.failed or b.dropped:
                text += f", {b.failed} failed, {b.dropped} dropped"
            if b.last_error and not (b.failed == 0 and b.dropped == 0):
                text += f" ({b.last_error})"
            parts.append(text)
        if self.dropped:
            parts.append(f"{self.dropped} dropped before export")
        if self.pending:
            parts.append(f"{self.pending} still pending")
        for b in self.logs:
            text = f"{b.name} logs: {b.exported} records exported"
            if b.failed or b.dropped:
                text += f", {b.failed} failed, {b.dropped} dropped"
                if b.last_error:
                    text += f" ({b.last_error})"
            parts.append(text)
        if self.logs_dropped:
            parts.append(f"{self.logs_dropped} log records dropped before export")
        if self.logs_pending:
            parts.append(f"{self.logs_pending} log records still pending")
        if self.log_records_over_cap:
            parts.append(
                f"{self.log_records_over_cap} log records over AIORUNNER_LOG_MAX_RECORDS "
                "(counted, not sent)"
            )
        return "; ".join(parts) or "nothing exported"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "backends": [b.to_dict() for b in self.backends],
            "dropped": self.dropped,
            "pending": self.pending,
            "sampled_out": self.sampled_out,
            "disabled": self.disabled,
            "logs": {
                "backends": [b.to_dict() for b in self.logs],
                "records": self.log_records,
                "over_cap": self.log_records_over_cap,
                "dropped": self.logs_dropped,
                "pending": self.logs_pending,
            },
        }


@dataclass(frozen=True)
class RunResult:
    """
    The outcome of one run. ``run()`` returns one for every script-level failure instead
    of raising: check ``success`` and read ``error``.

    ``stdout``/``stderr`` are the bounded tails of the output (default 1 MiB each),
    decoded as UTF-8 with invalid bytes replaced; the raw bytes are in ``stdout_bytes``
    and ``stderr_bytes``, and ``stdout_truncated`` says how many bytes fell off the front.
    """

    script: str
    success: bool
    exit_code: int | None = None
    signal: int | None = None
    timed_out: bool = False
    cancelled: bool = False
    error: str | None = None
    trace_id: str = "0" * 32
    span_id: str = "0" * 16
    started_at: float = 0.0
    duration: float = 0.0
    pid: int | None = None
    command: tuple[str, ...] = ()
    stdout_bytes: bytes = b""
    stderr_bytes: bytes = b""
    stdout_truncated: int = 0
    stderr_truncated: int = 0
    metrics: Mapping[str, float | int] = field(default_factory=dict)
    export: ExportReport | None = None
    attempts: int = 1
    skipped: bool = False
    #: The job's name when the run was part of ``run_many`` / ``as_completed``.
    name: str | None = None

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", errors="replace")

    @property
    def signal_name(self) -> str | None:
        if self.signal is None:
            return None
        try:
            return _signal.Signals(self.signal).name
        except ValueError:
            return f"signal {self.signal}"

    @property
    def started_at_iso(self) -> str:
        return datetime.fromtimestamp(self.started_at, tz=timezone.utc).isoformat()

    @property
    def shell_exit_code(self) -> int:
        """The exit code a shell would report: the script's, 124 on timeout, 128+N on
        signal N, 1 when it never started."""
        if self.timed_out:
            return 124
        if self.signal is not None:
            return 128 + self.signal
        if self.exit_code is None:
            return 1 if not self.success else 0
        return self.exit_code

    def to_dict(self) -> dict[str, Any]:
        return {
            "script": self.script,
            "success": self.success,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "signal_name": self.signal_name,
            "timed_out": self.timed_out,
            "cancelled": self.cancelled,
            "skipped": self.skipped,
            "error": self.error,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "started_at": self.started_at_iso,
            "duration": self.duration,
            "pid": self.pid,
            "command": list(self.command),
            "stdout": self.stdout,
            "stderr": self.stderr,
            "stdout_truncated": self.stdout_truncated,
            "stderr_truncated": self.stderr_truncated,
            "metrics": dict(self.metrics),
            "export": self.export.to_dict() if self.export else None,
            "attempts": self.attempts,
            "name": self.name,
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)
