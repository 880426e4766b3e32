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
    from collections.abc import Mapping, Sequence

__all__ = ["REDACTED", "Scrubber", "redact_args", "redact_text", "secret_values"]

#: What a secret prints as (httpx's convention, also used by ``aiorunner doctor``).
REDACTED = "[secure]"

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
    """Return ``args`` with secret-looking values replaced by ``[secure]``."""
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


_ENV_SECRET_NAME = re.compile(rf"{_SECRET_WORD}|(?:^|_)KEY$|HEADERS$", re.IGNORECASE)
_MIN_SECRET = 4  # shorter values would scrub ordinary words


def secret_values(args: Sequence[str], env: Mapping[str, str]) -> set[str]:
    """
    The literal secret values a run knows of: values of secret-looking arguments,
    passwords inside URLs, bearer tokens, and values of environment variables whose
    names look secret (``*_PASSWORD``, ``*_TOKEN``, ``*_API_KEY``, ``*_HEADERS``, ...).
    Scripts echo them (argparse errors, tracebacks, debug prints); these are scrubbed
    from everything that leaves on a span.
    """
    found: set[str] = set()
    take_next = False
    for arg in args:
        if take_next:
            found.add(arg)
            take_next = False
            continue
        match = _ASSIGN.match(arg)
        if match:
            found.add(match.group("value"))
            continue
        if _FLAG.match(arg):
            take_next = True
            continue
        for m in _URL_CREDENTIALS.finditer(arg):
            found.add(m.group(0)[len(m.group("scheme")) + len(m.group("user")) + 1 : -1])
        for m in _QUERY_SECRET.finditer(arg):
            found.add(m.group(0)[len(m.group("key")) :])
        for m in _BEARER.finditer(arg):
            found.add(m.group(0).split(None, 1)[1])
    for name, value in env.items():
        if not value or not _ENV_SECRET_NAME.search(name):
            continue
        found.add(value)
        if name.upper().endswith("HEADERS"):  # k1=v1,k2=v2: each value is a secret
            for pair in value.split(","):
                found.add(pair.partition("=")[2].strip())
    return {v for v in found if len(v) >= _MIN_SECRET}


class Scrubber:
    """Replaces known secret values (and URL credentials, bearer tokens) in text."""

    def __init__(self, secrets: set[str]) -> None:
        ordered = sorted(secrets, key=len, reverse=True)  # longest first: no partial hits
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(REDACTED, text)
        return redact_text(text)
