"""
One compact JSON line from an OTLP/JSON request dict: orjson when installed, the stdlib
otherwise (or for the rare value orjson refuses).

Why: a run's metric points are ~14 KB of JSON per run (26 points, each with its
attributes); the stdlib encoder took ~150 µs of the export thread per run for them, orjson
~50 µs (``benchmarks/bench_overhead.py``, issue 21). Spans do not come through here: their
direct text encoder (``otlp_json.encode_line``) builds no dicts and is as fast as building
the dicts alone. orjson is imported on first use (on the export thread), so
``import aiorunner`` does not pay for it.

Output differs from the stdlib's only where JSON has no spelling: a NaN or an infinity
becomes ``null`` (the stdlib writes ``NaN``, which JSON parsers, the Collector's included,
reject). A string orjson cannot encode as UTF-8 (a lone surrogate from a script's
undecodable output) or an integer beyond 64 bits falls back to the stdlib encoder, whose
surrogates are replaced as before.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["dumps_line"]

_stdlib = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
# None: not looked for yet; False: not installed.
_orjson: Any = None


def _load() -> Any:
    global _orjson
    try:
        import orjson
    except ImportError:
        _orjson = False
    else:
        _orjson = orjson
    return _orjson


def dumps_line(obj: Any) -> bytes:
    """``obj`` as compact JSON, UTF-8, newline-terminated."""
    fast = _orjson if _orjson is not None else _load()
    if fast:
        try:
            return bytes(fast.dumps(obj, option=fast.OPT_APPEND_NEWLINE))
        except TypeError:  # orjson.JSONEncodeError: a lone surrogate, a huge int, ...
            pass
    return (_stdlib(obj) + "\n").encode("utf-8", errors="replace")
