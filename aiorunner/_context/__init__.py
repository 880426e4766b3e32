"""
Trace context around a run: W3C propagation, the in-script channel and its bootstrap,
instrumentation, and the tracer API (``trace_span``, ``runner.tracer``).

May import: the foundations and ``_export`` (the tracer API needs a session).
"""
