"""Extract: write a day of synthetic sales rows to a CSV file (stands in for an API pull)."""

import csv
import random
import sys
import time
from pathlib import Path

out = Path(sys.argv[1])
rows = int(sys.argv[2]) if len(sys.argv) > 2 else 50_000
out.parent.mkdir(parents=True, exist_ok=True)
rng = random.Random(20241023)
regions = ["north", "south", "east", "west"]
with out.open("w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["order_id", "region", "amount_cents", "quantity"])
    for i in range(rows):
        writer.writerow([i, rng.choice(regions), rng.randint(100, 50_000), rng.randint(1, 9)])
        if i % 10_000 == 0:
            time.sleep(0.01)  # a paged API
print(f"extracted {rows} rows to {out}")
