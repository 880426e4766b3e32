"""
The ``parent`` backend: a runner that is itself a script run by aiorunner sends its spans
up the in-script channel of the runner that started it.

Why: a script that runs scripts with aiorunner would otherwise export its runs' spans on
its own, with its own configuration, maybe twice (once by itself, once as the parent's
in-script spans). Through the parent's channel there is one pipeline for the whole tree of
runs, one configuration and one place of export. The session picks this backend when
:func:`parent_channel` finds the channel the bootstrap opened.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from ..backend import ExportResult

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import ReadableSpan

__all__ = ["ChannelBackend", "parent_channel"]


def parent_channel() -> Any:
    """The span channel of the runner that runs *this* process, when we are a script
    run by aiorunner with in-script tracing (else None)."""
    module = sys.modules.get("_aiorunner_inscript")
    get = getattr(module, "channel", None)
    return get() if get is not None else None


class ChannelBackend:
    """
    A backend that sends spans to the runner that runs this process, through its
    in-script channel: a script that runs scripts with aiorunner exports its runs'
    spans through its parent's pipeline (one configuration, one place of export).
    """

    name = "parent"
    #: Never spooled: the parent runner spools for its own backends.
    spool = False

    def __init__(self, channel: Any) -> None:
        self._channel = channel

    async def export(
        self,
        spans: Sequence[ReadableSpan],
        *,
        timeout: float,
    ) -> ExportResult:
        # A blocking write on a socket the parent drains: small, but not on the loop.
        sent = await anyio.to_thread.run_sync(self._channel.send_spans, list(spans))
        if sent == len(spans):
            return ExportResult.success()
        return ExportResult.permanent(
            f"{len(spans) - sent} span(s) could not be sent to the parent runner"
        )

    async def force_flush(self, *, timeout: float) -> bool:
        return True

    async def shutdown(self, *, timeout: float) -> None:
        return None
