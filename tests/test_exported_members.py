"""``aiorunner.__all__`` is honest: every name is importable, public classes and functions
say ``aiorunner`` as their module (tracebacks read ``aiorunner.ConfigError``), and no
public name is missing from it."""

from __future__ import annotations

import inspect
import subprocess
import sys

import aiorunner


def test_all_names_exist_and_are_public():
    """Each name in __all__ exists and reports module 'aiorunner'."""
    for name in aiorunner.__all__:
        obj = getattr(aiorunner, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__ == "aiorunner", name


def test_no_public_name_missing_from_all():
    """Every public class or function reachable as aiorunner.X is listed in __all__."""
    public = {
        name
        for name, obj in vars(aiorunner).items()
        if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
    }
    assert public <= set(aiorunner.__all__), public - set(aiorunner.__all__)


def test_exceptions_share_one_root():
    """Every exception class exported derives from AiorunnerError."""
    for name in aiorunner.__all__:
        obj = getattr(aiorunner, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            assert issubclass(obj, aiorunner.AiorunnerError), name


def test_import_is_lazy_about_backends():
    """`import aiorunner` imports no grpc, no exporter and no plugin distribution."""
    code = (
        "import sys, aiorunner; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('grpc', 'aiorunner_otlp', "
        "'aiorunner_zipkin', 'aiorunner_vendors') or m.startswith('opentelemetry.exporter')]; "
        "print(','.join(bad))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == ""
