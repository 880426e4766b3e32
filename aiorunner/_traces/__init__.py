"""
Recorded traces read back: the JSONL reader, listing, waterfall, HTML, push.

May import: the foundations and ``_export``.
"""
