"""Load: write the aggregates into a SQLite table (stands in for a warehouse)."""

import json
import sqlite3
import sys
from pathlib import Path

src, db = Path(sys.argv[1]), Path(sys.argv[2])
totals = json.loads(src.read_text())
with sqlite3.connect(db) as conn:
    conn.execute("CREATE TABLE IF NOT EXISTS revenue (day TEXT, region TEXT, cents INTEGER)")
    conn.execute("DELETE FROM revenue WHERE day = ?", (sys.argv[3],))
    conn.executemany(
        "INSERT INTO revenue VALUES (?, ?, ?)",
        [(sys.argv[3], region, cents) for region, cents in totals.items()],
    )
print(f"loaded {len(totals)} rows into {db}")
