"""Helpers shared by the signal tests (logs, metrics, in-script logging): a config that
retries fast, and one run in a session of its own."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from aiorunner import RunResult, ScriptRunner, Session, TracingConfig

if TYPE_CHECKING:
    from pathlib import Path


def fast_retry_config(**overrides: object) -> TracingConfig:
    """A TracingConfig whose retries back off in milliseconds, with ``overrides``."""
    values: dict[str, object] = {
        "export_timeout": 20.0,
        "backend_options": {"retry_initial_backoff": 0.01, "retry_max_backoff": 0.05},
    }
    values.update(overrides)
    return TracingConfig(**values)  # type: ignore[arg-type]


async def run_in_session(script: Path, config: TracingConfig, **options: object) -> RunResult:
    """Run ``script`` once in a session of ``config``, closed (drained) after."""
    # Built off the loop: loading backends by name scans entry points (files).
    async with await anyio.to_thread.run_sync(Session, config) as session:
        runner = ScriptRunner(str(script), session=session, **options)  # type: ignore[arg-type]
        return await runner.run()
