"""
Root conftest: the real trace receivers as fixtures, for tests/ and backends/*/tests alike.

pytest runs with ``--import-mode=importlib`` and ``tests`` is not a package, so the tests
directory is put on ``sys.path`` before importing ``receivers``: test modules anywhere can
then ``from receivers import OtlpHttpReceiver, start_late``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

_TESTS_DIR = str(Path(__file__).resolve().parent / "tests")
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

import receivers

#: Environment variables a test may not inherit from the developer's shell: every OTEL_*
#: variable and the vendor variables the aiorunner-vendors presets read.
_ENV_PREFIXES = (
    "OTEL_",
    "AIORUNNER_",
    "DD_",
    "NEW_RELIC_",
    "HONEYCOMB_",
    "GRAFANA_CLOUD_",
    "LS_",
    "DT_",
    "SIGNOZ_",
    "AXIOM_",
    "ELASTIC_APM_",
)


@pytest.fixture
def clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove OTEL_*, AIORUNNER_* and vendor variables for the test's duration."""
    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES):
            monkeypatch.delenv(name)


@pytest.fixture
def otlp_grpc_receiver() -> Iterator[receivers.OtlpGrpcReceiver]:
    """A running OTLP/gRPC receiver on 127.0.0.1 (``.endpoint``), stopped after the test."""
    with receivers.OtlpGrpcReceiver() as receiver:  # started here, stopped on exit
        yield receiver


@pytest.fixture
def otlp_http_receiver() -> Iterator[receivers.OtlpHttpReceiver]:
    """A running OTLP/HTTP receiver on 127.0.0.1 (``.endpoint`` base, ``.url`` traces URL)."""
    with receivers.OtlpHttpReceiver() as receiver:  # started here, stopped on exit
        yield receiver


@pytest.fixture
def zipkin_receiver() -> Iterator[receivers.ZipkinReceiver]:
    """A running Zipkin v2 receiver on 127.0.0.1 (``.url`` is the /api/v2/spans URL)."""
    with receivers.ZipkinReceiver() as receiver:  # started here, stopped on exit
        yield receiver
