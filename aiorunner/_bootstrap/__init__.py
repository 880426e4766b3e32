"""
The child side of in-script tracing.

This *directory* (not the package) is put first on the ``PYTHONPATH`` of a Python script
that aiorunner runs, so the interpreter imports our ``sitecustomize`` at start-up. The
modules in it are written to be imported as top-level modules of a foreign interpreter
(any Python >= 3.8, with or without aiorunner installed): they import nothing from
``aiorunner`` and nothing heavy until the script itself touches OpenTelemetry.

- ``sitecustomize.py``: start-up, a few hundred microseconds. Reads the bootstrap's
  environment variables (and removes them, restoring the user's ``PYTHONPATH`` so
  grandchildren inherit the environment the user gave), chains to the ``sitecustomize``
  our directory shadows, and installs a one-shot import hook on ``opentelemetry.trace``.
- ``_aiorunner_inscript.py``: imported when the hook fires (or at start-up when
  instrumentations were asked for). Configures the global TracerProvider lazily, with
  the ``execute_script`` span as the parent, and a span processor that writes every ended
  span to the channel the runner reads (``aiorunner._inscript``).
"""

from __future__ import annotations

import os

__all__ = ["BOOTSTRAP_DIR"]

#: The directory to put first on the child's PYTHONPATH.
BOOTSTRAP_DIR = os.path.dirname(os.path.abspath(__file__))
