"""
The checks behind ``aiorunner doctor``: configuration, backends, endpoints.

May import: the foundations and ``_export``.
"""
