"""The runner's small parts: bounded tails, argument redaction, PEP 723 parsing and the
import scanner (parsers get Hypothesis, as STYLE.md asks)."""

from __future__ import annotations

import ast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiorunner._redact import REDACTED, redact_args
from aiorunner._run.deps import top_level_imports
from aiorunner._run.metadata import parse_pep723
from aiorunner._run.tail import TailBuffer


@given(st.lists(st.binary(max_size=300), max_size=40), st.integers(min_value=0, max_value=700))
def test_tail_keeps_exactly_the_last_bytes(chunks, limit):
    """Whatever the chunking, the tail is the last `limit` bytes and the count of what
    fell off is exact."""
    tail = TailBuffer(limit)
    for c in chunks:
        tail.write(c)
    data = b"".join(chunks)
    assert tail.getvalue() == data[-limit:] if limit else tail.getvalue() == b""
    assert tail.truncated == max(0, len(data) - limit)
    assert tail.total == len(data)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--password", "hunter2", "--day", "1"], ["--password", REDACTED, "--day", "1"]),
        (["--token=abc", "x"], [f"--token={REDACTED}", "x"]),
        (["api_key=abc"], [f"api_key={REDACTED}"]),
        (["DB_PASSWORD=abc"], [f"DB_PASSWORD={REDACTED}"]),
        (["--client-secret", "s"], ["--client-secret", REDACTED]),
        (
            ["postgres://etl:s3cret@db:5432/x"],
            [f"postgres://etl:{REDACTED}@db:5432/x"],
        ),
        (["Authorization: Bearer abc.def"], [f"Authorization: Bearer {REDACTED}"]),
        (["--day", "2024-10-23", "input.csv"], ["--day", "2024-10-23", "input.csv"]),
    ],
)
def test_redact_args(args, expected):
    """Secret-looking argument values are redacted, others kept."""
    assert redact_args(args) == expected


def test_pep723_parsed():
    """The script block's TOML is read; other blocks are ignored."""
    text = (
        "# /// script\n"
        '# requires-python = ">=3.10"\n'
        "# dependencies = [\n"
        '#   "requests<3",\n'
        "# ]\n"
        "# ///\n"
        "import os\n"
        "# /// other\n# x = 1\n# ///\n"
        "print(1)\n"
    )
    assert parse_pep723(text) == {"requires-python": ">=3.10", "dependencies": ["requests<3"]}
    assert parse_pep723("print(1)\n") is None


def test_pep723_invalid_toml():
    """Broken TOML in the block is a ValueError with the reason."""
    with pytest.raises(ValueError, match="not valid TOML"):
        parse_pep723("# /// script\n# dependencies = [\n# ///\n")


@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=200))
def test_pep723_never_crashes(text):
    """Arbitrary text parses to None, a dict, or a ValueError; nothing else."""
    try:
        result = parse_pep723(text)
    except ValueError:
        return
    assert result is None or isinstance(result, dict)


def test_top_level_imports_skips_guards():
    """Guarded, TYPE_CHECKING, relative and __future__ imports are not reported."""
    tree = ast.parse(
        "from __future__ import annotations\n"
        "import os, json.decoder\n"
        "from . import sibling\n"
        "from pkg.sub import x\n"
        "try:\n    import fast\nexcept ImportError:\n    fast = None\n"
        "try:\n    import needed\nfinally:\n    pass\n"
        "if TYPE_CHECKING:\n    import typed\n"
        "if __name__ == '__main__':\n    import main_only\n"
        "def f():\n    import lazy\n"
    )
    assert top_level_imports(tree) == ("os", "json", "pkg", "needed", "main_only")
