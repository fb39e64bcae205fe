"""What a slot of the account-wide window costs in PostgreSQL, beside the file window of one machine.

Starts a throwaway PostgreSQL server (kie_pipeline_tests/postgres.py), then takes and ends slots
one after another through each limiter, with a limit that is never reached (so only the limiter's
own work is timed); each answered slot stays in the window for ``--period`` seconds, so the window
holds about rate x period entries (Kie's hold up to 20 createTask and 10 polls):

    .venv/bin/python benchmarks/coordination.py [--slots 300] [--period 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kie_pipeline.client.pg_window import PostgresSlidingWindowLimiter
from kie_pipeline.client.ratelimit import SharedSlidingWindowLimiter
from kie_pipeline_tests.postgres import running_postgres


async def _time(limiter: object, slots: int) -> tuple[float, float, float]:
    """Seconds for ``slots`` slots in a row; median take and end of one slot (ms)."""
    takes, ends = [], []
    started = time.perf_counter()
    for _ in range(slots):
        a = time.perf_counter()
        async with limiter.slot():  # type: ignore[attr-defined]
            b = time.perf_counter()
        takes.append(b - a)
        ends.append(time.perf_counter() - b)
    return time.perf_counter() - started, statistics.median(takes) * 1e3, statistics.median(ends) * 1e3


async def main(slots: int, period: float) -> None:
    with running_postgres() as server, tempfile.TemporaryDirectory() as folder:
        limiters = {
            "postgres": PostgresSlidingWindowLimiter(
                server.url, uuid.uuid4().hex[:12], "create", 10**6, period
            ),
            "file": SharedSlidingWindowLimiter(os.path.join(folder, "w.window"), 10**6, period),
        }
        print(f"coordination: {slots} slots in a row, one process, each kept {period:g} s after its end")
        for name, limiter in limiters.items():
            await _time(limiter, 20)  # connect, create the table, warm up
            total, take, end = await _time(limiter, slots)
            print(
                f"  {name:9s} {slots / total:6.0f} slots/s   median take {take:5.2f} ms   "
                f"median end {end:5.2f} ms   (window of ~{slots / total * period:.0f} entries)"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slots", type=int, default=300)
    parser.add_argument("--period", type=float, default=0.1)
    args = parser.parse_args()
    asyncio.run(main(args.slots, args.period))
