"""Throughput of generated_images at Kie's rate limit, against the emulator in another process.

    .venv/bin/python benchmarks/throughput.py             # all parts, N = 200
    .venv/bin/python benchmarks/throughput.py --part paced --n 200
    .venv/bin/python benchmarks/throughput.py --part paced --n 60 --latency 5    # fixed 5 s tasks

Parts:
  paced       N rows through the real asset code, emulator at Kie's limits (20 createTask / 10 s,
              10 polls / s) and latency uniform 5-15 s (``--latency MIN,MAX``, or ``--latency S``
              for fixed S-second tasks): wall time vs the lower bound, calls per image, 429s,
              peak RSS.
  sequential  the hand-written loop of Kie's usage flow (create, poll every 3 s, download), 10 rows.
  overhead    1000 rows, no latency, no rate limit: the pipeline's own cost per image.
  rerun       re-materializing the finished 1000-row partition: createTask calls and asset time.
  catalog     image_catalog from 100 000 synthetic result rows (100 partitions of 1000).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import resource
import sys
import tempfile
import time

import dagster as dg
import httpx
import pandas as pd
from _harness import KIE_LIMITS, UNLIMITED, emulator_process, materialize, point_at

#: Must match KIE_LIMITS (LATENCY is its default task latency, --latency another): the bound is
#: computed from them.
LIMIT, PERIOD, LATENCY = 20, 10.0, (5.0, 15.0)


def stats(url: str) -> dict:
    return httpx.get(f"{url}/emulator/stats").json()


def emulator_args(latency: tuple[float, float]) -> tuple[str, ...]:
    """KIE_LIMITS with the emulator's task latency replaced by ``latency`` (MIN, MAX seconds)."""
    args = list(KIE_LIMITS)
    args[args.index("--latency") + 1] = f"{latency[0]:g},{latency[1]:g}"
    return tuple(args)


def parse_latency(text: str) -> tuple[float, float]:
    """``5,15`` (uniform) or ``5`` (every task takes 5 s)."""
    parts = [float(x) for x in text.split(",")]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or not 0 <= parts[0] <= parts[1]:
        raise argparse.ArgumentTypeError(f"--latency must be S or MIN,MAX seconds, not {text!r}")
    return parts[0], parts[1]


def paced(n: int, *, callbacks: bool = False, latency: tuple[float, float] = LATENCY) -> None:
    with (
        emulator_process(*emulator_args(latency)) as url,
        tempfile.TemporaryDirectory() as work,
        dg.instance_for_test() as inst,
        contextlib.ExitStack() as stack,
    ):
        point_at(url, work, n)
        kie: dict = {}
        if callbacks:
            # The receiver in this process (a thread), writing into the run's store.
            from kie_pipeline.pipeline.store import TaskStore
            from kie_pipeline.receiver import ReceiverServer, build_receiver

            app = build_receiver(TaskStore(f"{work}/store"), secret="benchmark-secret")
            receiver = stack.enter_context(ReceiverServer(app))
            kie = {"callback_url": receiver.url, "callback_secret": "benchmark-secret"}
        materialize(inst, "prompt_manifest")
        t0 = time.monotonic()
        md = materialize(inst, "generated_images", "part00", **kie)
        wall = time.monotonic() - t0
        s = stats(url)
    bound = (math.ceil(n / LIMIT) - 1) * PERIOD + latency[1]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    how = "callbacks to a receiver, recordInfo as fallback" if callbacks else "polling"
    lo, hi = latency
    spread = f"fixed {lo:g} s" if lo == hi else f"uniform {lo:g}-{hi:g} s"
    print(f"paced, N={n}, emulator at {LIMIT} createTask/{PERIOD:g} s, latency {spread}, {how}")
    print(f"  wall time            {wall:8.1f} s   (asset elapsed {md['elapsed_s']} s)")
    print(
        f"  lower bound          {bound:8.1f} s   ((ceil(N/{LIMIT})-1)*{PERIOD:g} s + slowest task {hi:g} s)"
    )
    print(f"  ratio                {wall / bound:8.3f}")
    # The asset's own time (the batch, without the run's start and the checks after it) vs the bound.
    print(f"  ratio of asset time  {md['elapsed_s'] / bound:8.3f}")
    print(f"  createTask / image   {s['create_requests'] / n:8.2f}")
    print(f"  recordInfo / image   {s['polls'] / n:8.2f}")
    print(f"  429s received        {sum(s['rate_limited'].values()):8d}   {s['rate_limited']}")
    print(f"  images succeeded     {md['images_succeeded']:8d}")
    print(f"  peak RSS             {rss:8.0f} MB")


async def _sequential_loop(url: str, n: int, dest: str) -> float:
    """Kie's usage flow written by hand: create, poll every 3 s, download; one image at a time."""
    headers = {"Authorization": "Bearer emulator-key"}
    t0 = time.monotonic()
    async with httpx.AsyncClient(base_url=url, headers=headers) as c:
        for i in range(n):
            body = {"model": "nano-banana-pro", "input": {"prompt": f"image {i}"}}
            task_id = (await c.post("/api/v1/jobs/createTask", json=body)).json()["data"]["taskId"]
            while True:
                await asyncio.sleep(3)
                data = (await c.get("/api/v1/jobs/recordInfo", params={"taskId": task_id})).json()["data"]
                if data["state"] in ("success", "fail"):
                    break
            import json

            image_url = json.loads(data["resultJson"])["resultUrls"][0]
            with open(f"{dest}/{i}.png", "wb") as fh:
                fh.write((await c.get(image_url)).content)
    return time.monotonic() - t0


def sequential(n: int, full_n: int) -> None:
    with emulator_process(*KIE_LIMITS) as url, tempfile.TemporaryDirectory() as dest:
        wall = asyncio.run(_sequential_loop(url, n, dest))
    print(f"sequential hand-written loop (create, poll every 3 s, download), N={n}, same emulator settings")
    print(
        f"  wall time {wall:.1f} s = {wall / n:.1f} s per image; for N={full_n}: ~{wall / n * full_n / 60:.0f} min"
    )


def overhead_and_rerun(n: int) -> None:
    fast = {
        "limits": {"create_limit": 1_000_000, "poll_limit": 1_000_000},
        "poll": {"initial_s": 0.0, "max_s": 0.05},
    }
    with (
        emulator_process(*UNLIMITED) as url,
        tempfile.TemporaryDirectory() as work,
        dg.instance_for_test() as inst,
    ):
        point_at(url, work, n)
        materialize(inst, "prompt_manifest")
        t0, cpu0 = time.monotonic(), time.process_time()
        md = materialize(inst, "generated_images", "part00", **fast)
        wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
        before = stats(url)
        t1 = time.monotonic()
        md2 = materialize(inst, "generated_images", "part00", **fast)
        wall2 = time.monotonic() - t1
        after = stats(url)
    print(f"overhead, N={n}, no latency, no rate limit (emulator in another process, 2 cores shared)")
    print(f"  asset time {md['elapsed_s']:.2f} s = {1000 * md['elapsed_s'] / n:.2f} ms per image "
          f"(run wall {wall:.2f} s = {1000 * wall / n:.2f} ms per image)")  # fmt: skip
    print(f"  CPU of the pipeline's own process {cpu:.2f} s = {1000 * cpu / n:.2f} ms per image "
          "(all threads: HTTP, JSON, file writes, image headers)")  # fmt: skip
    print(f"rerun of the finished {n}-row partition")
    print(f"  createTask calls {after['create_requests'] - before['create_requests']}, "
          f"images reused {md2['images_reused']}, asset time {md2['elapsed_s']:.2f} s (run wall {wall2:.2f} s)")  # fmt: skip


def catalog(partitions: int, rows_per: int) -> None:
    from kie_pipeline.pipeline.catalog import typed

    with tempfile.TemporaryDirectory() as work, dg.instance_for_test() as inst:
        os.environ.update(KIE_STORE=f"{work}/store", KIE_MANIFEST=f"{work}/none.csv")
        os.makedirs(f"{work}/store/generated_images")
        keys = [f"p{i:03d}" for i in range(partitions)]
        for key in keys:
            df = pd.DataFrame(
                {
                    "id": [f"{key}-{i}" for i in range(rows_per)],
                    "batch": key,
                    "model": "nano-banana-pro",
                    "prompt": [f"synthetic prompt number {i} of {key}" for i in range(rows_per)],
                    "state": "success",
                    "task_id": [f"{i:032x}" for i in range(rows_per)],
                    "image_uri": [f"{work}/store/images/{key}-{i}.png" for i in range(rows_per)],
                    "sha256": "0" * 64,
                    "bytes": 123456,
                    "width": 1024,
                    "height": 1024,
                    "format": "png",
                    "created_at": "2026-11-24T00:00:00+00:00",
                    "completed_at": "2026-11-24T00:00:09+00:00",
                    "split": "train",
                }
            )
            typed(df).to_parquet(f"{work}/store/generated_images/{key}.parquet", index=False)
        # The catalog keeps the rows of the current manifest: a snapshot that holds all of them.
        snapshot = pd.DataFrame(
            {
                "batch": [k for k in keys for _ in range(rows_per)],
                "id": [f"{k}-{i}" for k in keys for i in range(rows_per)],
            }
        )
        snapshot.to_parquet(f"{work}/store/prompt_manifest.parquet", index=False)
        inst.add_dynamic_partitions("batches", keys)
        t0 = time.monotonic()
        md = materialize(inst, "image_catalog")
        wall = time.monotonic() - t0
    print(f"catalog from {partitions * rows_per} result rows ({partitions} partitions of {rows_per})")
    print(f"  image_catalog run wall {wall:.2f} s, rows {md['rows']}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--part", choices=("paced", "sequential", "overhead", "catalog", "all"), default="all")
    p.add_argument("--n", type=int, default=200)
    p.add_argument(
        "--callbacks", action="store_true", help="paced: wait on callbacks (a receiver) instead of polls"
    )
    p.add_argument(
        "--latency",
        type=parse_latency,
        default=LATENCY,
        help="paced: task latency, MIN,MAX seconds (uniform) or S (fixed); default 5,15",
    )
    a = p.parse_args()
    if a.part in ("paced", "all"):
        paced(a.n, callbacks=a.callbacks, latency=a.latency)
    if a.part in ("sequential", "all"):
        sequential(10, a.n)
    if a.part in ("overhead", "all"):
        overhead_and_rerun(1000)
    if a.part in ("catalog", "all"):
        catalog(100, 1000)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
