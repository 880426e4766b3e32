"""
A light front door: ``import aiorunner``, ``aiorunner --help`` and ``aiorunner <cmd> --help``
load none of the heavy libraries, and ``aiorunner run`` loads only what its backends need.

Each case runs in a fresh interpreter and asserts on its ``sys.modules`` (never on time:
the start-up budget is measured in ``benchmarks/bench_startup.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import aiorunner

#: Top-level packages none of the light paths may load.
HEAVY = ("grpc", "google", "psutil", "rich", "anyio", "packaging")
#: Module prefixes none of the light paths may load.
HEAVY_PREFIXES = ("opentelemetry.sdk", "opentelemetry.proto", "opentelemetry.exporter")

_PROBE = """
import atexit, json, sys
out = sys.argv.pop(1)
def dump():
    with open(out, "w") as f:
        json.dump(sorted(sys.modules), f)
atexit.register(dump)  # registered first: runs last, after the command's own exit work
{body}
"""


def modules_after(tmp_path: Path, body: str, *args: str, cwd: Path | None = None) -> set[str]:
    """The modules loaded by a fresh interpreter running ``body`` (with ``args``)."""
    out = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(body=body), str(out), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd or tmp_path,
        env={**os.environ, "AIORUNNER_TRACES_FILE": str(tmp_path / "traces.jsonl")},
        check=False,
    )
    assert out.exists(), done.stderr
    return set(json.loads(out.read_text()))


def heavy(modules: set[str], extra: tuple[str, ...] = ()) -> list[str]:
    return sorted(
        m for m in modules if m.split(".")[0] in (*HEAVY, *extra) or m.startswith(HEAVY_PREFIXES)
    )


def test_import_aiorunner_loads_nothing_heavy(tmp_path: Path):
    """``import aiorunner`` loads no OpenTelemetry at all, no psutil, rich, anyio, grpc or
    protobuf, and none of its own wings."""
    modules = modules_after(tmp_path, "import aiorunner")
    assert heavy(modules, ("opentelemetry",)) == []
    ours = sorted(m for m in modules if m.startswith("aiorunner."))
    assert ours == ["aiorunner._version"]


def test_public_names_resolve_on_first_use(tmp_path: Path):
    """Touching one public name imports its wing and no more: TracingConfig needs no SDK."""
    modules = modules_after(tmp_path, "import aiorunner; aiorunner.TracingConfig()")
    assert heavy(modules, ("opentelemetry",)) == []
    assert "aiorunner._config" in modules


def test_dir_lists_every_public_name():
    """dir(aiorunner) shows every name of __all__ before any was touched, and an unknown
    name is an AttributeError naming it."""
    code = "import aiorunner; print(' '.join(dir(aiorunner)))"
    listed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert set(aiorunner.__all__) <= set(listed)
    with pytest.raises(AttributeError, match="no_such_name"):
        aiorunner.no_such_name  # noqa: B018 - the attribute access is the test


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["run", "--help"],
        ["traces", "--help"],
        ["traces", "show", "--help"],
        ["traces", "push", "--help"],
        ["doctor", "--help"],
        ["backends", "--help"],
    ],
    ids=" ".join,
)
def test_help_loads_no_sdk(tmp_path: Path, argv: list[str]):
    """``aiorunner [cmd] --help`` imports only the command's declaration: no SDK, psutil,
    grpc, protobuf, anyio or rich, and no entry point scan (importlib.metadata)."""
    body = (
        "from aiorunner.cli import main\n"
        "try:\n    main(sys.argv[1:], prog_name='aiorunner')\n"
        "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
    )
    modules = modules_after(tmp_path, body, *argv)
    assert heavy(modules, ("importlib_metadata",)) == []
    assert "importlib.metadata" not in modules


def test_run_with_jsonl_loads_no_network_exporter(tmp_path: Path):
    """``aiorunner run t.py`` with the jsonl default imports no grpc, protobuf, exporter or
    plugin distribution, no rich (one script, no live display), no packaging (the script
    has no PEP 723 dependencies), no spool (jsonl does not spool), no ``secrets`` and no
    entry point scan; the run itself happened."""
    (tmp_path / "t.py").write_text("print('ran')\n")
    body = (
        "from aiorunner.cli import main\n"
        "try:\n    main(['run', '-q', 't.py'], prog_name='aiorunner')\n"
        "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
    )
    modules = modules_after(tmp_path, body)
    assert "opentelemetry.sdk.trace" in modules  # it did trace
    assert "aiorunner._export.jsonl" in modules
    wrong = sorted(
        m
        for m in modules
        if m.split(".")[0]
        in ("grpc", "google", "rich", "packaging", "aiorunner_otlp", "aiorunner_zipkin")
        or m.startswith(("opentelemetry.proto", "opentelemetry.exporter"))
        or m in ("importlib.metadata", "aiorunner._export.spool", "secrets")
    )
    assert wrong == []
    lines = (tmp_path / "traces.jsonl").read_text().splitlines()
    assert any('"ScriptRunner"' in line for line in lines)
