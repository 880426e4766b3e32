"""
Sanitising command arguments before they become span attributes.

The semantic conventions ask for ``process.command_args`` to be sanitised. We redact the
value of anything that looks like a secret (``--password x``, ``--token=x``,
``api_key=x``; ``-p x`` is left alone: too ambiguous), credentials inside URLs
(``https://user:pass@host``, ``?api_key=x``) and ``Bearer``/``Basic`` tokens. Environment
values are never exported at all (the runner records variable names only).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["REDACTED", "redact_args", "redact_text"]

REDACTED = "[REDACTED]"

_SECRET_WORD = (
    r"(?:pass(?:word|wd|phrase)?|secret|token|api[-_]?key|apikey|access[-_]?key|"
    r"auth(?:orization)?|credentials?|private[-_]?key|client[-_]?secret|session[-_]?id|pwd)"
)
# --password=x, password=x, API_KEY=x, --db-password=x
_ASSIGN = re.compile(
    rf"^(?P<key>-{{0,2}}[\w.-]*{_SECRET_WORD}[\w.-]*)=(?P<value>.+)$", re.IGNORECASE
)
# --password x (the value is the next argument)
_FLAG = re.compile(rf"^-{{1,2}}[\w.-]*{_SECRET_WORD}[\w.-]*$", re.IGNORECASE)
# scheme://user:password@host
_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^/@:\s]*):[^/@\s]*@", re.IGNORECASE
)
# ?api_key=x&... inside a URL or a query string
_QUERY_SECRET = re.compile(rf"(?P<key>[?&;][\w.-]*{_SECRET_WORD}[\w.-]*=)[^&#\s]*", re.IGNORECASE)
# Authorization: Bearer x / header-like values
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")


def redact_text(arg: str) -> str:
    """``arg`` with credentials inside URLs and ``Bearer``/``Basic`` tokens redacted."""
    arg = _URL_CREDENTIALS.sub(rf"\g<scheme>\g<user>:{REDACTED}@", arg)
    arg = _QUERY_SECRET.sub(rf"\g<key>{REDACTED}", arg)
    return _BEARER.sub(rf"\1 {REDACTED}", arg)


def redact_args(args: Sequence[str]) -> list[str]:
    """Return ``args`` with secret-looking values replaced by ``[REDACTED]``."""
    out: list[str] = []
    redact_next = False
    for arg in args:
        if redact_next:
            out.append(REDACTED)
            redact_next = False
            continue
        match = _ASSIGN.match(arg)
        if match:
            out.append(f"{match.group('key')}={REDACTED}")
            continue
        if _FLAG.match(arg):
            out.append(arg)
            redact_next = True
            continue
        out.append(redact_text(arg))
    return out
