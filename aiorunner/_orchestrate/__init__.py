"""
Many runs: ``run_many``/``as_completed``, jobs and jobs files, executors.

May import: everything below it (the foundations, ``_monitor``, ``_export``, ``_context``, ``_run``).
"""
