"""
One run of one script: ``ScriptRunner``, its phases, the child process, the script's
metadata and dependency check, process slots.

May import: the foundations, ``_monitor``, ``_export`` and ``_context``.
"""
