"""The distribution's version, and the User-Agent it sends (collectors log it)."""

from __future__ import annotations

__version__ = "0.1.0"
USER_AGENT = f"aiorunner-otlp/{__version__}"
