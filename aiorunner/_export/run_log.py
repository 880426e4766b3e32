"""
The warning a run logs when its spans did not all arrive: once per outage, not once per run.

A collector that is down fails every run's export the same way. Under ``run_many`` a
warning per run buried the one line that matters under hundreds of copies of the same
gRPC error (500 scripts, 500 warnings). So the first run of a session whose traces did not
all arrive logs a warning; the next ones log at DEBUG only (each ``RunResult.export`` still
says what became of its spans, and ``Session.statistics()`` counts them); and the first
run whose traces arrive again logs, at INFO, how many runs in between were not logged.
The pipeline's own warning (once per backend and distinct error) is unchanged. Spans
kept in a backend's spool are not lost: the worker's one warning per outage says where
they are, and runs whose spans were only spooled are not logged here.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._result import ExportReport

__all__ = ["RunExportLog"]

logger = logging.getLogger("aiorunner.export")


class RunExportLog:
    """Per session: how many runs in a row had traces that did not all arrive. Runs may
    end on several event loops at once (a session serves any loop), hence the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failing = 0

    def record(self, report: ExportReport, script: str, trace_id: int) -> None:
        """Log what ``report`` (a run's ``RunResult.export``) calls for, if anything."""
        if report.sampled_out:
            return
        if not report.lost:
            # Exported, or spooled for later: the worker warned once per outage already.
            if not self._failing:  # unlocked read: the common case takes no lock
                return
            with self._lock:
                failing, self._failing = self._failing, 0
            if failing > 1:
                logger.info(
                    "traces of run %s (trace %032x) arrived; the %d runs before it whose "
                    "traces did not all arrive were not logged one by one (their "
                    "RunResult.export says what became of their spans)",
                    script,
                    trace_id,
                    failing - 1,
                )
            return
        with self._lock:
            self._failing += 1
            first = self._failing == 1
        level = logging.WARNING if first else logging.DEBUG
        if logger.isEnabledFor(level):
            logger.log(
                level,
                "traces of run %s (trace %032x) did not all arrive: %s%s",
                script,
                trace_id,
                report.describe(),
                "; until a run's traces arrive again, further runs whose traces do not are "
                "logged at DEBUG only (each RunResult.export says it)"
                if first
                else "",
            )
