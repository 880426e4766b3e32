"""
What a script is before it runs: size, sha256, line count, shebang, PEP 723 metadata.

Read in one worker-thread call (the file is read once and hashed, parsed for PEP 723 and,
later, for imports from the same bytes) so a run costs one thread hop, not five.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ScriptInfo", "ScriptProblem", "parse_pep723", "read_script"]

# The reference regular expression of PEP 723 / the inline script metadata specification.
_PEP723 = re.compile(r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$")


class ScriptProblem(Exception):
    """The script cannot be run as given; the message says why and how to fix it."""


@dataclass(frozen=True)
class ScriptInfo:
    path: str
    size: int
    sha256: str
    line_count: int
    shebang: str | None
    is_python: bool
    executable: bool
    source: bytes = field(repr=False)
    pep723: dict[str, Any] | None = None
    pep723_error: str | None = None

    @property
    def requires_python(self) -> str | None:
        value = (self.pep723 or {}).get("requires-python")
        return str(value) if value is not None else None

    @property
    def dependencies(self) -> list[str]:
        deps = (self.pep723 or {}).get("dependencies") or []
        return [str(d) for d in deps]

    def span_attributes(self) -> dict[str, Any]:
        """The ``extract_metadata`` span's ``aiorunner.script.*`` attributes (the run
        adds ``code.file.path``, the absolute path)."""
        attrs: dict[str, Any] = {
            "aiorunner.script.size_bytes": self.size,
            "aiorunner.script.sha256": self.sha256,
            "aiorunner.script.line_count": self.line_count,
        }
        if self.shebang:
            attrs["aiorunner.script.shebang"] = self.shebang
        if self.pep723 is not None:
            attrs["aiorunner.script.pep723"] = True
            if self.requires_python:
                attrs["aiorunner.script.requires_python"] = self.requires_python
            if self.dependencies:
                attrs["aiorunner.script.dependencies"] = self.dependencies
        return attrs


def parse_pep723(text: str) -> dict[str, Any] | None:
    """
    Return the ``script`` block of PEP 723 inline metadata, or None when absent.

    Raises:
        ValueError: several ``script`` blocks, or TOML that does not parse.
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]

    blocks = [m for m in _PEP723.finditer(text) if m.group("type") == "script"]
    if not blocks:
        return None
    if len(blocks) > 1:
        raise ValueError("several '# /// script' blocks; PEP 723 allows one")
    content = "".join(
        line[2:] if line.startswith("# ") else line[1:]
        for line in blocks[0].group("content").splitlines(keepends=True)
    )
    try:
        data: dict[str, Any] = tomllib.loads(content)
        return data
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"its '# /// script' block is not valid TOML: {exc}") from None


def read_script(path: str, *, python: bool | None = None) -> ScriptInfo:
    """
    Read and describe the script at ``path`` (blocking: call in a worker thread).

    Raises:
        ScriptProblem: missing, a directory, unreadable or not executable.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ScriptProblem(
            f"script not found: {path} (working directory {os.getcwd()}); check the path"
        ) from None
    except OSError as exc:
        raise ScriptProblem(f"cannot access script {path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ScriptProblem(
            f"script is a directory: {path}; pass a file (for a package, its __main__.py)"
        )
    try:
        with open(path, "rb") as f:
            source = f.read()
    except PermissionError:
        raise ScriptProblem(
            f"script is not readable: {path} (permission denied for uid {os.getuid()}); "
            "fix its permissions (chmod +r)"
        ) from None
    except OSError as exc:
        raise ScriptProblem(f"cannot read script {path}: {exc.strerror}") from None
    is_python = path.endswith((".py", ".pyw")) if python is None else python
    first_line = source.split(b"\n", 1)[0]
    shebang = first_line[2:].decode(errors="replace").strip() if first_line[:2] == b"#!" else None
    executable = os.access(path, os.X_OK)
    pep723: dict[str, Any] | None = None
    pep723_error = None
    if is_python and b"# /// script" in source:
        try:
            pep723 = parse_pep723(source.decode("utf-8", errors="replace"))
        except ValueError as exc:
            pep723_error = f"invalid PEP 723 metadata in {path}: {exc}"
    return ScriptInfo(
        path=path,
        size=st.st_size,
        sha256=hashlib.sha256(source).hexdigest(),
        line_count=source.count(b"\n") + (1 if source and not source.endswith(b"\n") else 0),
        shebang=shebang,
        is_python=is_python,
        executable=executable,
        source=source,
        pep723=pep723,
        pep723_error=pep723_error,
    )
