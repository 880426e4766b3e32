"""
The version of aiorunner, in a module of its own.

Why not in ``__init__.py``: the session names its tracer with the version, and a module
deep inside the package that imports the package root to read it closes an import circle
through everything the root re-exports. Here it costs nothing and imports nothing.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
