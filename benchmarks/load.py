"""Load: a 2 000-row manifest in 20 partitions through the emulator with fast latency.

    .venv/bin/python benchmarks/load.py [ROWS] [PARTITIONS]

Prints whether every row reached the catalog exactly once, and peak RSS after each partition
(flat memory means the process does not grow with the number of partitions run).
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time

import dagster as dg
import httpx
import pandas as pd
from _emulator import emulator_process

QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    parts = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    args = (
        "--latency",
        "0.05,0.3",
        "--create-limit",
        "100000",
        "--poll-limit",
        "100000",
        "--render-scale",
        "0.05",
    )
    with (
        emulator_process(*args) as url,
        tempfile.TemporaryDirectory() as work,
        dg.instance_for_test() as inst,
    ):
        pd.DataFrame(
            {
                "id": [f"r{i:05d}" for i in range(rows)],
                "batch": [f"part{i % parts:02d}" for i in range(rows)],
                "prompt": [f"load test image {i}" for i in range(rows)],
            }
        ).to_csv(f"{work}/prompts.csv", index=False)
        os.environ.update(
            KIE_API_KEY="emulator-key",
            KIE_BASE_URL=url,
            KIE_MANIFEST=f"{work}/prompts.csv",
            KIE_STORE=f"{work}/store",
        )
        from kie_pipeline.definitions import ASSETS, build_resources

        resources = build_resources(
            create_limit=100000, poll_limit=100000, poll_initial_s=0.05, poll_max_s=0.2, rate_limit_dir=None
        )

        def run(selection: str, partition: str | None = None) -> None:
            dg.materialize(
                ASSETS, selection=[selection], partition_key=partition, resources=resources, instance=inst,
                run_config=QUIET,
            )  # fmt: skip

        t0 = time.monotonic()
        run("prompt_manifest")
        rss = []
        for key in sorted(inst.get_dynamic_partitions("batches")):
            run("generated_images", key)
            rss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        run("image_catalog")
        wall = time.monotonic() - t0
        catalog = pd.read_parquet(f"{work}/store/image_catalog.parquet")
        created = httpx.get(f"{url}/emulator/stats").json()["created"]
    print(f"load: {rows} rows in {parts} partitions, emulator latency 0.05-0.3 s, wall {wall:.1f} s")
    print(
        f"  catalog rows {len(catalog)}, unique ids {catalog['id'].nunique()}, success {int((catalog['state'] == 'success').sum())}"
    )
    print(f"  createTask calls {created} (rows {rows})")
    print(
        f"  peak RSS after partition 1, 5, 10, 20: {', '.join(f'{rss[i]:.0f}' for i in (0, 4, 9, len(rss) - 1))} MB"
    )
    ok = len(catalog) == rows == catalog["id"].nunique() == created
    print(f"  verdict: {'OK' if ok else 'FAILED'}")


if __name__ == "__main__":
    main()
