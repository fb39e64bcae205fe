"""Store operations of the callback waiter: N tasks wait on their callbacks on a local store.

For N = 1, 10, 100 waiting tasks (by default), the waiters' store counts every call of its fsspec
filesystem while nothing arrives for a few seconds (the steady state of a batch in flight), then
while one callback per task is delivered (through the box, as the receiver writes them):

    .venv/bin/python benchmarks/callback_waiter.py [--seconds 3] [--check 0.25] [N ...]

No request reaches Kie: the fallback poll is an hour away (the client points at a closed port).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from typing import Any

from kie_pipeline.client import AsyncKieClient
from kie_pipeline.pipeline.callbacks import CallbackBox, CallbackWaiter
from kie_pipeline.pipeline.store import TaskStore


class CountingFS:
    """A filesystem that counts the calls reaching it (``cat`` of several paths counts each)."""

    def __init__(self, fs: Any) -> None:
        self._fs = fs
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._fs, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += len(args[0]) if args and isinstance(args[0], list) else 1
            return attr(*args, **kwargs)

        return counted


def _body(task_id: str) -> dict[str, Any]:
    result = json.dumps({"resultUrls": [f"https://example.com/{task_id}.png"]})
    return {
        "code": 200,
        "msg": "success",
        "data": {"taskId": task_id, "state": "success", "resultJson": result},
    }


async def measure(n: int, seconds: float, check_s: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as work:
        store = TaskStore(f"{work}/store")
        fs = CountingFS(store.fs)
        store.fs = fs  # type: ignore[assignment]
        receiver = CallbackBox(TaskStore(f"{work}/store"))  # the receiver's own, not counted
        async with AsyncKieClient("unused", "http://127.0.0.1:9") as client:
            waiter = CallbackWaiter(client, CallbackBox(store), check_s=check_s, fallback_poll_s=3600)
            keys = [f"{i:032x}" for i in range(n)]
            tasks = [
                asyncio.create_task(waiter.wait(f"task-{i}", key=k, timeout=3600)) for i, k in enumerate(keys)
            ]
            await asyncio.sleep(seconds)
            idle = Counter(fs.calls)
            ticks = waiter.watcher.ticks
            fs.calls.clear()
            t0 = time.perf_counter()
            for i, k in enumerate(keys):
                await asyncio.to_thread(receiver.deliver, k, f"task-{i}", _body(f"task-{i}"))
            await asyncio.gather(*tasks)
            settle = time.perf_counter() - t0
            delivered = Counter(fs.calls)
    listings = sum(v for k, v in idle.items() if k in ("find", "ls", "glob", "walk"))
    return {
        "idle_ops_per_s": sum(idle.values()) / seconds,
        "idle_listings_per_s": listings / seconds,
        "idle_reads_per_s": (sum(idle.values()) - listings) / seconds,
        "ticks_per_s": ticks / seconds,
        "reads_per_callback": delivered["cat"] / max(n, 1),
        "settle_s": settle,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("n", nargs="*", type=int, default=[1, 10, 100])
    p.add_argument(
        "--seconds", type=float, default=3.0, help="how long the waiters wait with nothing arriving"
    )
    p.add_argument("--check", type=float, default=0.25, help="the watcher's tick (CallbackWaiter check_s)")
    a = p.parse_args()
    print(
        f"callback waiter, local store, tick {a.check} s, {a.seconds:g} s with no callback, then one per task"
    )
    print(
        f"{'waiters':>8} {'store ops/s':>12} {'listings/s':>11} {'reads/s':>8} {'ticks/s':>8} {'reads/callback':>15}"
    )
    for n in a.n:
        r = asyncio.run(measure(n, a.seconds, a.check))
        print(
            f"{n:>8} {r['idle_ops_per_s']:>12.1f} {r['idle_listings_per_s']:>11.1f} {r['idle_reads_per_s']:>8.1f}"
            f" {r['ticks_per_s']:>8.1f} {r['reads_per_callback']:>15.2f}"
        )


if __name__ == "__main__":
    main()
