"""Load: a 2 000-row manifest in 20 partitions through the emulator with fast latency.

    .venv/bin/python benchmarks/load.py [ROWS] [PARTITIONS]

Prints whether every row reached the catalog exactly once, and peak RSS after each partition
(flat memory means the process does not grow with the number of partitions run).
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time

import dagster as dg
import httpx
import pandas as pd
from _harness import emulator_process, materialize, point_at

FAST_LATENCY = (
    "--latency",
    "0.05,0.3",
    "--create-limit",
    "100000",
    "--poll-limit",
    "100000",
    "--render-scale",
    "0.05",
)
FAST_CLIENT = {
    "limits": {"create_limit": 100000, "poll_limit": 100000},
    "poll": {"initial_s": 0.05, "max_s": 0.2},
}


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    parts = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    with (
        emulator_process(*FAST_LATENCY) as url,
        tempfile.TemporaryDirectory() as work,
        dg.instance_for_test() as inst,
    ):
        point_at(url, work, rows, batches=parts)
        t0 = time.monotonic()
        materialize(inst, "prompt_manifest")
        rss = []
        for key in sorted(inst.get_dynamic_partitions("batches")):
            materialize(inst, "generated_images", key, **FAST_CLIENT)
            rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        materialize(inst, "image_catalog")
        wall = time.monotonic() - t0
        catalog = pd.read_parquet(f"{work}/store/image_catalog.parquet")  # a folder: one file per batch
        created = httpx.get(f"{url}/emulator/stats").json()["created"]
    print(f"load: {rows} rows in {parts} partitions, emulator latency 0.05-0.3 s, wall {wall:.1f} s")
    print(
        f"  catalog rows {len(catalog)}, unique ids {catalog['id'].nunique()}, success {int((catalog['state'] == 'success').sum())}"
    )
    print(f"  createTask calls {created} (rows {rows})")
    # After partitions 1, 5, 10 and the last, those that exist (a run may have fewer than 10).
    marks = sorted({i for i in (0, 4, 9, len(rss) - 1) if i < len(rss)})
    after = ", ".join(str(i + 1) for i in marks)
    print(f"  peak RSS after partition {after}: {', '.join(f'{rss[i]:.0f}' for i in marks)} MB")
    ok = len(catalog) == rows == catalog["id"].nunique() == created
    print(f"  verdict: {'OK' if ok else 'FAILED'}")


if __name__ == "__main__":
    main()
