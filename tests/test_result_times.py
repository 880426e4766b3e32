"""``RunResult.started_at`` means one thing everywhere: epoch seconds, in Python, in
``to_dict()``/``to_json()`` and in ``aiorunner run --json`` (issue 16 item 6); the ISO
form is beside it as ``started_at_iso``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime

import pytest

from aiorunner import ScriptRunner


async def test_started_at_is_epoch_seconds_in_python_and_in_to_dict(make_script):
    """The attribute and the dict hold the same float (it was an ISO string in the
    dict), taken when the run started; ``started_at_iso`` is its UTC ISO 8601 form."""
    before = time.time()
    result = await ScriptRunner(make_script("pass")).run()
    after = time.time()
    assert isinstance(result.started_at, float)
    assert before <= result.started_at <= after
    data = json.loads(result.to_json())
    assert data["started_at"] == result.started_at
    iso = datetime.fromisoformat(data["started_at_iso"]).timestamp()
    assert iso == pytest.approx(result.started_at, abs=1e-6)  # ISO keeps microseconds
    assert data["started_at_iso"].endswith("+00:00")


def test_cli_json_started_at_is_epoch_seconds(make_script):
    """``aiorunner run --json`` prints the same epoch seconds, for one script and for
    many (``-j``)."""
    script = make_script("pass")
    before = time.time()
    one = subprocess.run(
        [sys.executable, "-m", "aiorunner", "run", "--json", str(script)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
        check=True,
    )
    many = subprocess.run(
        [sys.executable, "-m", "aiorunner", "run", "--json", "-j", "2", str(script), str(script)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
        check=True,
    )
    after = time.time()
    for data in [json.loads(one.stdout), *json.loads(many.stdout)]:
        assert isinstance(data["started_at"], float)
        assert before <= data["started_at"] <= after
        iso = datetime.fromisoformat(data["started_at_iso"]).timestamp()
        assert iso == pytest.approx(data["started_at"], abs=1e-6)
