"""Transform: aggregate revenue per region (CPU-bound, uses a worker process)."""

import csv
import json
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def revenue(rows: list[list[str]]) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for _, region, amount, quantity in rows:
        totals[region] += int(amount) * int(quantity)
    return dict(totals)


src, dst = Path(sys.argv[1]), Path(sys.argv[2])
with src.open(newline="") as f:
    reader = csv.reader(f)
    next(reader)
    rows = list(reader)
chunks = [rows[i : i + 10_000] for i in range(0, len(rows), 10_000)]
totals: dict[str, int] = defaultdict(int)
with ProcessPoolExecutor(max_workers=2) as pool:
    for part in pool.map(revenue, chunks):
        for region, value in part.items():
            totals[region] += value
dst.write_text(json.dumps(totals, indent=2, sort_keys=True))
print(f"transformed {len(rows)} rows into {len(totals)} regions -> {dst}")
