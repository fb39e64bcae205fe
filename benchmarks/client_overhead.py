"""The client's own overhead: tasks created and completed per second by one process.

The emulator runs in another process with no latency and no rate limit, and renders tiny images, so
what is measured is the client: HTTP, JSON, polling, limiter and download bookkeeping.

    .venv/bin/python benchmarks/client_overhead.py [N]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time

from _harness import UNLIMITED, emulator_process

from kie_pipeline.client import AsyncKieClient, PollPolicy, RateLimits


async def run(url: str, n: int, dest: str) -> dict[str, float]:
    async with AsyncKieClient(
        "emulator-key",
        url,
        limits=RateLimits(create_limit=1_000_000, poll_limit=1_000_000),
        poll=PollPolicy(initial_s=0.0, max_s=0.01),
    ) as client:
        t0 = time.perf_counter()
        ids = await asyncio.gather(
            *(client.create_task("nano-banana-pro", {"prompt": f"p{i}"}) for i in range(n))
        )
        t1 = time.perf_counter()
        records = await asyncio.gather(*(client.wait(t, first_delay=0) for t in ids))
        t2 = time.perf_counter()
        await asyncio.gather(
            *(client.download(r.result_urls[0], f"{dest}/{i}.png") for i, r in enumerate(records))
        )
        t3 = time.perf_counter()
    return {"create": t1 - t0, "wait": t2 - t1, "download": t3 - t2, "total": t3 - t0}


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    with emulator_process(*UNLIMITED) as url, tempfile.TemporaryDirectory() as dest:
        asyncio.run(run(url, 20, dest))  # warm up connections and the renderer
        t = asyncio.run(run(url, n, dest))
    print(f"client overhead, {n} tasks, one process, emulator with no latency and no rate limit")
    print(f"  createTask:        {n / t['create']:8.0f} tasks/s")
    print(f"  wait (1 poll each): {n / t['wait']:7.0f} tasks/s")
    print(f"  download + write:  {n / t['download']:8.0f} files/s")
    print(f"  create→downloaded: {n / t['total']:8.0f} tasks/s ({1000 * t['total'] / n:.2f} ms per task)")


if __name__ == "__main__":
    main()
