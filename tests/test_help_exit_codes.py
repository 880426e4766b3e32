"""`--help` and the README state the same exit codes (issue 16.18), and the commands
exit with them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from aiorunner.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"

#: Each command's exit codes, as both texts must say them.
EXIT_CODES = {
    "run": [
        "124 on timeout",
        "128+N",
        "signal N",
        "1 when it could not start",
        "2 for usage errors",
    ],
    "doctor": [
        "0 when traces would arrive",
        "1 when they would not",
        "2 for a usage error",
    ],
}


def _flat(text: str) -> str:
    """Whitespace and Markdown emphasis folded: wrapping differs between the two."""
    return re.sub(r"\s+", " ", text.replace("**", "").replace("`", ""))


def _readme_section(heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(heading)
    end = text.find("\n#", start + len(heading))
    return text[start : end if end > 0 else None]


@pytest.mark.parametrize(
    ("command", "heading"),
    [("run", "### The command line"), ("doctor", "### `aiorunner doctor`")],
)
def test_help_and_readme_state_the_same_exit_codes(command: str, heading: str) -> None:
    """Every exit code of `run` (the script's, 124, 128+N, 1 when it could not start, 2)
    and of `doctor` (0, 1, 2) is in both its --help and its README section (`run --help`
    left out 1, `doctor --help` left out 2)."""
    result = CliRunner().invoke(main, [command, "--help"], terminal_width=80)
    assert result.exit_code == 0
    help_text, readme = _flat(result.output), _flat(_readme_section(heading))
    for phrase in EXIT_CODES[command]:
        assert phrase in help_text, (command, phrase)
        assert phrase in readme, (heading, phrase)


def test_the_exit_codes_are_the_ones_stated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A script that cannot start exits 1, the script's own code comes through, and an
    unknown option is a usage error (2) for both commands."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    runner = CliRunner()
    missing = runner.invoke(main, ["run", str(tmp_path / "missing.py")])
    assert missing.exit_code == 1, missing.output
    assert "script not found" in missing.output
    script = tmp_path / "three.py"
    script.write_text("raise SystemExit(3)\n")
    assert runner.invoke(main, ["run", "--no-monitor", str(script)]).exit_code == 3
    assert runner.invoke(main, ["run", "--bogus", str(script)]).exit_code == 2
    assert runner.invoke(main, ["doctor", "--bogus"]).exit_code == 2
