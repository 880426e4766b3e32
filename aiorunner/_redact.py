"""
Sanitising command arguments before they become span attributes.

The semantic conventions ask for ``process.command_args`` to be sanitised. We redact the
value of anything that looks like a secret (``--password x``, ``--token=x``,
``api_key=x``; ``-p x`` is left alone: too ambiguous), credentials inside URLs
(``https://user:pass@host``, ``?api_key=x``) and ``Bearer``/``Basic`` tokens. Environment
values are never exported at all (the runner records variable names only); the values of
variables whose *names* say they are secrets, and of secret arguments, are scrubbed
from text that leaves (a script's traceback, its stderr tail, the run's error).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "REDACTED",
    "Scrubber",
    "is_secret_env_name",
    "redact_args",
    "redact_text",
    "secret_values",
]

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
    """``arg`` with credentials inside URLs and ``Bearer``/``Basic`` tokens redacted.

    Each pattern runs only when the characters it needs are there (``@`` for URL
    credentials, ``=`` for a query secret, the words for a token): every output line of
    a run goes through here (its log records), and most have none of them (0.6 µs a
    line instead of 7.6)."""
    if "@" in arg:
        arg = _URL_CREDENTIALS.sub(rf"\g<scheme>\g<user>:{REDACTED}@", arg)
    if "=" in arg:
        arg = _QUERY_SECRET.sub(rf"\g<key>{REDACTED}", arg)
    lower = arg.lower()
    if "bearer" in lower or "basic" in lower:
        arg = _BEARER.sub(rf"\1 {REDACTED}", arg)
    return arg


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


#: Words of an environment variable's name (split at ``_``, ``-``, ``.``) that make its
#: value a secret. By word, not by substring: ``TOKENIZERS_PARALLELISM``, ``KEYBOARD``
#: and ``SSH_ASKPASS`` (a program's path) are not secrets; ``GITHUB_TOKEN``,
#: ``AWS_SECRET_ACCESS_KEY``, ``DB_PWD`` and ``OTEL_EXPORTER_OTLP_HEADERS`` are.
_ENV_SECRET_WORDS = frozenset(
    {
        "PASSWORD",
        "PASSWD",
        "PASSPHRASE",
        "PASS",
        "PWD",
        "TOKEN",
        "SECRET",
        "KEY",
        "APIKEY",
        "ACCESSKEY",
        "PRIVATEKEY",
        "CREDENTIAL",
        "CREDENTIALS",
        "CREDS",
        "COOKIE",
        "DSN",
        "HEADERS",
    }
)
#: Endings that name a secret inside one word (``DBPASSWORD``, ``GHTOKEN``, ``MYAPIKEY``).
_ENV_SECRET_SUFFIXES = ("PASSWORD", "PASSWD", "PASSPHRASE", "TOKEN", "SECRET", "APIKEY")
#: Variables whose name contains a secret word but whose value is not a secret: the
#: shell's working directories (``PWD`` is also short for password elsewhere).
_ENV_NOT_SECRET = frozenset({"PWD", "OLDPWD"})
#: Whole names that hold credentials (a URL with a password inside).
_ENV_SECRET_NAMES = ("DATABASE_URL",)
_MIN_ENV_SECRET = 4  # shorter environment values are flags (``X_KEY=1``), not secrets


def is_secret_env_name(name: str) -> bool:
    """
    True when the value of the environment variable ``name`` is a secret: a word of its
    name is ``PASSWORD``, ``TOKEN``, ``SECRET``, ``KEY``, ``PWD``, ``CREDENTIALS``,
    ``HEADERS``, ... (or ends a word: ``DBPASSWORD``), an ``AUTH`` that ends the name
    (``BASIC_AUTH``, not ``SSH_AUTH_SOCK``), or it is ``DATABASE_URL`` (``*_DATABASE_URL``).
    The shell's ``PWD`` and ``OLDPWD`` are directories, not secrets.
    """
    upper = name.upper()
    if upper in _ENV_NOT_SECRET:
        return False
    if upper.endswith(_ENV_SECRET_NAMES):
        return True
    words = [w for w in re.split(r"[_.\-]+", upper) if w]
    if not words:
        return False
    if words[-1] in ("AUTH", "AUTHORIZATION"):
        return True
    return any(w in _ENV_SECRET_WORDS or w.endswith(_ENV_SECRET_SUFFIXES) for w in words)


def secret_values(args: Sequence[str], env: Mapping[str, str]) -> set[str]:
    """
    The literal secret values a run knows of: values of secret-looking arguments
    (whatever their length: ``token=abc`` makes ``abc`` a secret), passwords inside URLs,
    bearer tokens, and values of environment variables whose names say they are secrets
    (see :func:`is_secret_env_name`; values under 4 characters excepted: ``X_KEY=1`` is
    a flag). Scripts echo them (argparse errors, tracebacks, debug prints); these are
    scrubbed from everything that leaves on a span and from what the CLI prints.
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
        if len(value) < _MIN_ENV_SECRET or not is_secret_env_name(name):
            continue
        found.add(value)
        if name.upper().endswith("HEADERS"):  # k1=v1,k2=v2: each value is a secret
            for pair in value.split(","):
                header = pair.partition("=")[2].strip()
                if len(header) >= _MIN_ENV_SECRET:
                    found.add(header)
    found.discard("")
    return found


#: Secret values shorter than this are replaced only as whole words (see Scrubber).
_MIN_WHOLE = 4


class Scrubber:
    """
    Replaces known secret values (and URL credentials, bearer tokens) in text.

    A value of 4 characters or more is replaced wherever it appears. A shorter one
    (``token=abc``) is replaced wherever it stands as a whole word, not inside a longer
    one (``abc`` in ``abcdef``, ``1`` in ``10`` and ``x1`` stay): an echoed argument
    stands alone, while a substring rule would shred every word of a traceback. The
    value was declared a secret, so ``token=1`` does turn ``line 1`` into
    ``line [secure]``.
    """

    def __init__(self, secrets: set[str]) -> None:
        ordered = sorted(secrets, key=len, reverse=True)  # longest first: no partial hits
        parts = [
            re.escape(v) if len(v) >= _MIN_WHOLE else rf"(?<![\w]){re.escape(v)}(?![\w])"
            for v in ordered
            if v
        ]
        self._pattern = re.compile("|".join(parts)) if parts else None

    def __call__(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(REDACTED, text)
        return redact_text(text)
