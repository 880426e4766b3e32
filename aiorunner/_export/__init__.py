"""
Session and export pipeline: queue, samplers, batcher, per-backend workers, retry, the
built-in backends (jsonl, console, none, parent) and the OTLP JSON encoder.

May import: the foundations only.
"""
