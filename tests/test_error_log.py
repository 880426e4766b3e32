"""The export error log: one warning per distinct error of a backend, whatever the counts
inside the message."""

from __future__ import annotations

import logging

from aiorunner._export.worker import ErrorLog


def test_same_error_with_other_counts_logs_once(caplog):
    """'gave up after 9 attempts' and '... 10 attempts' are one error; another is not."""
    caplog.set_level(logging.WARNING, logger="aiorunner.export")
    errors = ErrorLog()
    errors.warn("otlp", "UNAVAILABLE (gave up after 9 attempts)", spans=2)
    errors.warn("otlp", "UNAVAILABLE (gave up after 10 attempts)", spans=5)
    errors.warn("otlp", "UNAUTHENTICATED: check the api key header", spans=1)
    errors.warn("zipkin", "UNAVAILABLE (gave up after 9 attempts)", spans=1)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert sum("UNAVAILABLE" in m and "'otlp'" in m for m in messages) == 1
