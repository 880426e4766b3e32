"""
The backend registry: lookup by name through entry points (ours and OpenTelemetry's),
errors that say what to do, broken plugins isolated, lazy import, `aiorunner backends`.

Plugins are real distributions: a ``*.dist-info`` with ``entry_points.txt`` written to a
temporary directory put on ``sys.path``, as pip would install them.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from aiorunner._config import TracingConfig
from aiorunner._exceptions import BackendError, ConfigError, UnknownBackendError
from aiorunner._export import registry as _registry
from aiorunner._export.session import Session

PLUGIN_MODULE = '''
import os
from aiorunner.backend import ConfigError, ExportResult
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult


def create_raises(config):
    raise RuntimeError("cannot reach the license server")


def create_config_error(config):
    raise ConfigError("FAKEPLUG_KEY is not set; export FAKEPLUG_KEY=<your key>")


def create_garbage(config):
    return 42


class FileExporter(SpanExporter):
    """An OpenTelemetry-style exporter: built with no arguments, configured by env."""

    def __init__(self):
        self.path = os.environ["FAKEPLUG_OUT"]

    def export(self, spans):
        with open(self.path, "a") as out:
            for span in spans:
                out.write(span.name + "\\n")
        return SpanExportResult.SUCCESS

    def shutdown(self):
        pass
'''

ENTRY_POINTS = """
[aiorunner.backends]
fake_broken = fakeplug_broken:create
fake_raises = fakeplug_ok:create_raises
fake_config = fakeplug_ok:create_config_error
fake_garbage = fakeplug_ok:create_garbage

[opentelemetry_traces_exporter]
fake_otel = fakeplug_ok:FileExporter
"""


@pytest.fixture
def fake_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Install the distribution 'fakeplug' 1.2 on sys.path for one test."""
    site = tmp_path / "site"
    info = site / "fakeplug-1.2.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.2\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (site / "fakeplug_broken.py").write_text('raise ImportError("fakeplug needs libfoo.so")\n')
    (site / "fakeplug_ok.py").write_text(PLUGIN_MODULE)
    monkeypatch.syspath_prepend(str(site))
    _registry.clear_cache()
    try:
        yield site
    finally:
        _registry.clear_cache()
        for name in ("fakeplug_ok", "fakeplug_broken"):
            sys.modules.pop(name, None)


def make_trace(session: Session) -> int:
    tracer = session.tracer()
    with tracer.start_as_current_span("root") as root, tracer.start_as_current_span("child"):
        pass
    return root.get_span_context().trace_id


def test_unknown_name_lists_installed_backends_and_suggests() -> None:
    """A misspelt name fails early, listing what is installed and the likely intent."""
    with pytest.raises(UnknownBackendError) as caught:
        Session(TracingConfig(exporter_type="zipkn"))
    message = str(caught.value)
    assert "unknown backend 'zipkn'" in message
    for name in ("console", "jsonl", "memory", "none"):
        assert name in message
    assert "(did you mean 'zipkin' or 'zipkin_json'?)" in message
    assert message.count("'zipkin'") == 1
    assert "OTEL_TRACES_EXPORTER" in message
    assert caught.value.name == "zipkn"
    assert "jsonl" in caught.value.known


def test_well_known_name_not_installed_names_its_package() -> None:
    """A well-known name whose package is not installed says which pip package has it."""
    with pytest.raises(UnknownBackendError) as caught:
        Session(TracingConfig(exporter_type="gcp_trace"))
    assert "opentelemetry-exporter-gcp-trace" in str(caught.value)
    assert "is not installed" in str(caught.value)


def test_plugin_failing_to_import_is_named_with_its_distribution(fake_plugin: Path) -> None:
    """A plugin that raises ImportError is reported with its name, distribution and
    version, and the cause."""
    with pytest.raises(BackendError) as caught:
        _registry.load_backend("fake_broken", TracingConfig().resolve())
    message = str(caught.value)
    assert "'fake_broken'" in message
    assert "fakeplug 1.2" in message
    assert "failed to import" in message
    assert "libfoo.so" in message


def test_broken_plugins_do_not_stop_the_others(
    fake_plugin: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A session configured with a good backend and two broken plugins starts, logs each
    broken one, exports to the good one, and reports the broken ones as failed with why."""
    caplog.set_level(logging.WARNING, logger="aiorunner.export")
    session = Session(
        TracingConfig(exporter_type="memory,fake_raises,fake_garbage", schedule_delay=60.0)
    )
    import asyncio

    report = asyncio.run(session.flush_trace(make_trace(session)))
    session.close()
    by_name = {b.name: b for b in report.backends}
    assert by_name["memory"].exported == 2
    assert len(session.backend("memory").get_finished_spans()) == 2
    assert by_name["fake_raises"].failed == 2
    assert "failed to construct" in (by_name["fake_raises"].last_error or "")
    assert "license server" in (by_name["fake_raises"].last_error or "")
    assert by_name["fake_garbage"].failed == 2
    assert "no export() method" in (by_name["fake_garbage"].last_error or "")
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "fake_raises" in logged and "fakeplug 1.2" in logged


def test_config_error_from_a_factory_is_raised_at_session_creation(fake_plugin: Path) -> None:
    """A factory's ConfigError (say, a missing API key variable) is a configuration
    mistake: Session() raises it, naming the backend and keeping the factory's advice."""
    with pytest.raises(ConfigError) as caught:
        Session(TracingConfig(exporter_type="memory,fake_config"))
    assert "backend 'fake_config'" in str(caught.value)
    assert "FAKEPLUG_KEY is not set" in str(caught.value)


def test_opentelemetry_exporter_group_works_by_name(
    fake_plugin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exporter registered only in OpenTelemetry's opentelemetry_traces_exporter group
    is used by its name, built with no arguments, as a sync exporter."""
    out = tmp_path / "exported.txt"
    monkeypatch.setenv("FAKEPLUG_OUT", str(out))
    session = Session(TracingConfig(exporter_type="fake_otel", schedule_delay=60.0))
    import asyncio

    report = asyncio.run(session.flush_trace(make_trace(session)))
    session.close()
    assert report.ok
    assert sorted(out.read_text().split()) == ["child", "root"]
    assert session.statistics().backends[0].kind == "sync"


def test_aiorunner_group_wins_over_opentelemetry_group() -> None:
    """'console' exists in both groups; ours is the one used, the other is listed as
    shadowed."""
    assert _registry.find_entry_point("console").group == "aiorunner.backends"
    consoles = [info for info in _registry.list_backends() if info.name == "console"]
    assert [c.shadowed for c in consoles] == [False, True]
    assert consoles[1].distribution == "opentelemetry-sdk"


def test_list_backends_reports_what_loads(fake_plugin: Path) -> None:
    """list_backends names every entry point with its distribution and whether it
    imports, with the import error for the broken one."""
    infos = {(i.name, i.group): i for i in _registry.list_backends()}
    jsonl = infos[("jsonl", "aiorunner.backends")]
    assert (jsonl.distribution, jsonl.loads, jsonl.value) == (
        "aiorunner",
        True,
        "aiorunner._export.jsonl:create_backend",
    )
    broken = infos[("fake_broken", "aiorunner.backends")]
    assert (broken.distribution, broken.version, broken.loads) == ("fakeplug", "1.2", False)
    assert "libfoo.so" in (broken.error or "")
    assert infos[("fake_otel", "opentelemetry_traces_exporter")].loads


def test_backends_command_json(fake_plugin: Path) -> None:
    """`aiorunner backends --json` lists every backend and the well-known names missing."""
    from aiorunner.cli import main

    result = CliRunner().invoke(main, ["backends", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    names = {(b["name"], b["loads"]) for b in data["backends"]}
    assert ("jsonl", True) in names
    assert ("fake_broken", False) in names
    assert data["not_installed"]["gcp_trace"] == "opentelemetry-exporter-gcp-trace"


def test_backends_command_table(fake_plugin: Path) -> None:
    """`aiorunner backends` prints a table with source, distribution and the import error."""
    from aiorunner.cli import main

    result = CliRunner().invoke(main, ["backends"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "jsonl" in result.output
    assert "fakeplug" in result.output
    assert "libfoo.so" in result.output
    assert "opentelemetry-sdk" in result.output


def test_import_aiorunner_imports_no_backend_and_scans_no_group() -> None:
    """`python -X importtime -c "import aiorunner"` shows no grpc, no OpenTelemetry
    exporter, no plugin distribution and no embedded backend module; no entry point
    group of ours is scanned."""
    code = textwrap.dedent(
        """
        import importlib.metadata as metadata
        scanned = []
        original = metadata.entry_points
        def spy(**kwargs):
            scanned.append(kwargs.get("group"))
            return original(**kwargs)
        metadata.entry_points = spy
        import aiorunner
        print(sorted(g for g in scanned if g))
        """
    )
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line]
    assert "aiorunner" in imported
    offenders = [
        name
        for name in imported
        if name.split(".")[0] in ("grpc", "aiorunner_otlp", "aiorunner_zipkin", "aiorunner_vendors")
        or name.startswith(
            ("opentelemetry.exporter", "aiorunner._export.jsonl", "aiorunner._export.console")
        )
    ]
    assert offenders == []
    assert "aiorunner.backends" not in done.stdout
    assert "opentelemetry_traces_exporter" not in done.stdout
