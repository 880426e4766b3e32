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

from ._redact import redact_args

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["BackendReport", "ExportReport", "InscriptReport", "RunResult"]


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
    #: Spans the backend could not take now (unreachable, or no answer within the
    #: export timeout), kept in its on-disk spool and sent by a later session.
    spooled: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "exported": self.exported,
            "failed": self.failed,
            "dropped": self.dropped,
            "pending": self.pending,
            "spooled": self.spooled,
            "last_error": self.last_error,
        }


@dataclass(frozen=True)
class InscriptReport:
    """
    What came of the spans a Python script sent over its in-script channel (see the
    README's "Spans from inside your script"), and what the runner threw away of it.

    A script writes to the channel what it likes: the runner keeps a bounded amount of it
    (``aiorunner._context.channel``'s ``MAX_*`` constants), applies the span limits to
    what arrives, and counts here what it did not keep.
    """

    #: Spans received from the script and handed to the export pipeline.
    received: int = 0
    #: Spans the script's side could not send (also in ``ExportReport.dropped``).
    dropped_spans: int = 0
    #: Messages the runner discarded: unreadable, over the per-message size limit, or
    #: beyond the channel's memory bound; each may have held several spans.
    dropped_messages: int = 0
    #: Bytes of the discarded messages (as far as they arrived).
    dropped_bytes: int = 0
    #: Attributes, events and links the span limits removed from received spans, and
    #: string values they cut (each span's own dropped counts say which).
    limited: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing the script sent was lost (limits applied are not a loss)."""
        return self.dropped_spans == 0 and self.dropped_messages == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "dropped_spans": self.dropped_spans,
            "dropped_messages": self.dropped_messages,
            "dropped_bytes": self.dropped_bytes,
            "limited": self.limited,
        }


@dataclass(frozen=True)
class ExportReport:
    """
    What happened to a run's spans by the time ``upload_traces`` ended.

    ``dropped`` counts spans lost before reaching any backend (queue full, pipeline
    closed); per-backend counts are in ``backends``: exported, spooled (kept on disk for
    a backend that could not take them now, sent later), failed (a permanent error) and
    dropped (a full queue or spool). ``sampled_out`` is True when the
    sampler decided not to record the run (nothing was meant to arrive). ``inscript``:
    what the script's in-script channel delivered and what the runner discarded of it
    (None when the run had no channel).
    """

    backends: tuple[BackendReport, ...] = ()
    dropped: int = 0
    pending: int = 0
    sampled_out: bool = False
    disabled: bool = False
    inscript: InscriptReport | None = None
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
    #: The run's metric points (its resource use, its duration and outcome), per
    #: backend that takes metrics; lost before any backend, and not settled in time.
    metrics: tuple[BackendReport, ...] = ()
    metrics_dropped: int = 0
    metrics_pending: int = 0

    @property
    def ok(self) -> bool:
        """True when every span reached every backend (or nothing was meant to)."""
        if self.disabled or self.sampled_out:
            return True
        return (
            self.dropped == 0
            and self.pending == 0
            and (self.inscript is None or self.inscript.dropped_messages == 0)
            and self.logs_dropped == 0
            and self.logs_pending == 0
            and self.metrics_dropped == 0
            and self.metrics_pending == 0
            and all(
                b.failed == 0 and b.dropped == 0 and b.spooled == 0
                for b in (*self.backends, *self.logs, *self.metrics)
            )
        )

    @property
    def spooled(self) -> int:
        """Spans kept in backends' spools (summed over backends)."""
        return sum(b.spooled for b in self.backends)

    @property
    def lost(self) -> bool:
        """True when some span or log record did not reach a backend and is not in its
        spool either (dropped, failed for good, or still pending), or the runner
        discarded messages of the script's in-script channel."""
        if self.disabled or self.sampled_out:
            return False
        return bool(
            self.dropped
            or self.pending
            or self.logs_dropped
            or self.logs_pending
            or self.metrics_dropped
            or self.metrics_pending
            or any(
                b.failed or b.dropped or b.pending
                for b in (*self.backends, *self.logs, *self.metrics)
            )
            or (self.inscript is not None and self.inscript.dropped_messages)
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
        parts: list[str] = []
        parts.extend(
            _describe_backend(b, f"{b.name}: {b.exported} exported") for b in self.backends
        )
        if self.dropped:
            parts.append(f"{self.dropped} dropped before export")
        if self.pending:
            parts.append(f"{self.pending} still pending")
        if self.inscript is not None and self.inscript.dropped_messages:
            parts.append(
                f"{self.inscript.dropped_messages} in-script messages "
                f"({self.inscript.dropped_bytes} bytes) discarded"
            )
        parts.extend(
            _describe_backend(b, f"{b.name} logs: {b.exported} records exported") for b in self.logs
        )
        if self.logs_dropped:
            parts.append(f"{self.logs_dropped} log records dropped before export")
        if self.logs_pending:
            parts.append(f"{self.logs_pending} log records still pending")
        if self.log_records_over_cap:
            parts.append(
                f"{self.log_records_over_cap} log records over AIORUNNER_LOG_MAX_RECORDS "
                "(counted, not sent)"
            )
        parts.extend(
            _describe_backend(b, f"{b.name} metrics: {b.exported} points exported")
            for b in self.metrics
            if b.spooled or b.failed or b.dropped  # said only when not all went out
        )
        if self.metrics_dropped:
            parts.append(f"{self.metrics_dropped} metric points dropped before export")
        if self.metrics_pending:
            parts.append(f"{self.metrics_pending} metric points still pending")
        return "; ".join(parts) or "nothing exported"

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "backends": [b.to_dict() for b in self.backends],
            "dropped": self.dropped,
            "pending": self.pending,
            "spooled": self.spooled,
            "sampled_out": self.sampled_out,
            "disabled": self.disabled,
            "inscript": self.inscript.to_dict() if self.inscript is not None else None,
            "logs": {
                "backends": [b.to_dict() for b in self.logs],
                "records": self.log_records,
                "over_cap": self.log_records_over_cap,
                "dropped": self.logs_dropped,
                "pending": self.logs_pending,
            },
            "metrics": {
                "backends": [b.to_dict() for b in self.metrics],
                "dropped": self.metrics_dropped,
                "pending": self.metrics_pending,
            },
        }


def _describe_backend(b: BackendReport, head: str) -> str:
    """``head`` and what did not simply go out: spooled, failed, dropped and why."""
    text = head
    if b.spooled:
        text += f", {b.spooled} spooled"
    if b.failed or b.dropped:
        text += f", {b.failed} failed, {b.dropped} dropped"
        if b.last_error:
            text += f" ({b.last_error})"
    return text


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
    #: The Dask worker that ran the script (``tcp://10.0.0.7:40123``), for runs of a
    #: ``DaskExecutor``; None for runs here.
    worker: str | None = None

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
        """``started_at`` as an ISO 8601 UTC timestamp, for people and logs."""
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
            # The same epoch seconds as the attribute (one meaning in Python and JSON);
            # the ISO form for people beside it.
            "started_at": self.started_at,
            "started_at_iso": self.started_at_iso,
            "duration": self.duration,
            "pid": self.pid,
            # Printed (--json) and stored: secret-looking values as [secure], as on the
            # span's process.command_args; the attribute keeps the argv that ran.
            "command": redact_args(self.command),
            "stdout": self.stdout,
            "stderr": self.stderr,
            "stdout_truncated": self.stdout_truncated,
            "stderr_truncated": self.stderr_truncated,
            "metrics": dict(self.metrics),
            "export": self.export.to_dict() if self.export else None,
            "attempts": self.attempts,
            "name": self.name,
            "worker": self.worker,
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)
