"""
Text from trace files made safe to print on a terminal.

Span names, event names, status messages, attribute keys, ids and script paths come from
the scripts that were run (and from whoever else wrote the file): they are not trusted.
Printed raw, ``\\x1b[2J`` clears the user's screen, ``\\x1b]0;...\\x07`` retitles the
terminal, ``\\r`` overwrites what was printed, and a bidirectional override (U+202E)
reorders what the eye reads. :func:`printable` replaces every such character by a
visible escape (``\\x1b``, ``\\u202e``), the way a JSON string or ``repr`` would show
it, so the text stays readable and nothing reaches the terminal as a command. What is
printed to a pipe gets the same treatment: a pager or a ``tee`` to the terminal shows it
just the same.
"""

from __future__ import annotations

__all__ = ["printable"]

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# C0 controls, DEL and C1 controls (0x9b is CSI in some terminals), then the Unicode
# line separators and the bidirectional formatting characters ("Trojan Source").
_CONTROL = [
    *range(0x20),
    *range(0x7F, 0xA0),
    0x2028,
    0x2029,
    0x061C,
    0x200E,
    0x200F,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
]
_TABLE = {
    code: _NAMED.get(chr(code), f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    for code in _CONTROL
}
_TABLE_KEEP_NEWLINES = {**_TABLE, ord("\n"): "\n"}


def printable(text: str, *, newlines: bool = False) -> str:
    """
    ``text`` with every control character replaced by a visible escape.

    Args:
        text: untrusted text (from a trace file or a backend's error).
        newlines: keep line breaks (a multi-line message printed as several lines);
            otherwise they are escaped too (a span name stays on its row).
    """
    return text.translate(_TABLE_KEEP_NEWLINES if newlines else _TABLE)
