"""The callback watcher: one listing of the store's ``callbacks/`` per tick for every waiting task,
each callback file read once; its life (starts with the first waiter, stops with the last), and the
order and layouts of the files the receiver writes.

The store is a real local store whose fsspec filesystem counts the calls that reach it; callbacks
arrive over real HTTP at the receiver (a second store object on the same folder, not counted), and
the waiters' client talks to the emulator on a loopback port.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from kie_pipeline.client import PollPolicy
from kie_pipeline.emulator import EmulatorServer
from kie_pipeline.pipeline.callbacks import CallbackBox, CallbackSettings, CallbackWaiter, token_for
from kie_pipeline.pipeline.generation import generate_batch
from kie_pipeline.pipeline.manifest import validate_manifest
from kie_pipeline.pipeline.store import TaskStore
from kie_pipeline.receiver import ReceiverServer, build_receiver

from .conftest import make_client

SECRET = "test-callback-secret"
LISTINGS = {"find", "ls", "glob", "walk", "listdir"}
READS = {"cat", "cat_file", "open", "info", "exists", "isfile", "isdir", "size", "head"}


class CountingFS:
    """A store's fsspec filesystem that counts the listings and file reads that reach it (``cat``
    of several paths counts each); ``fail_listing`` makes every listing raise it."""

    def __init__(self, fs: Any) -> None:
        self._fs = fs
        self.calls: Counter[str] = Counter()
        #: (method, path) of each call, one per path.
        self.log: list[tuple[str, str]] = []
        self.fail_listing: Exception | None = None

    @property
    def listings(self) -> int:
        return sum(n for name, n in self.calls.items() if name in LISTINGS)

    @property
    def reads(self) -> int:
        return sum(n for name, n in self.calls.items() if name in READS)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._fs, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            first = args[0] if args else kwargs.get("path")
            paths = first if isinstance(first, list) else [first]
            self.calls[name] += len(paths)
            self.log.extend((name, str(p)) for p in paths)
            if name in LISTINGS and self.fail_listing is not None:
                raise self.fail_listing
            return attr(*args, **kwargs)

        return counted


@pytest.fixture
def root(tmp_path: Path) -> str:
    return str(tmp_path / "store")


@pytest.fixture
def store(root: str) -> TaskStore:
    """The waiters' store: its filesystem counts every call."""
    counted = TaskStore(root)
    counted.fs = CountingFS(counted.fs)  # type: ignore[assignment]
    return counted


@pytest.fixture
def receiver(root: str):
    with ReceiverServer(build_receiver(TaskStore(root), secret=SECRET)) as server:
        yield server


def _key(i: int) -> str:
    return f"{i:032x}"


def _body(task_id: str, state: str = "success") -> dict[str, Any]:
    result = json.dumps({"resultUrls": [f"https://example.com/{task_id}.png"]})
    return {"code": 200, "msg": "success", "data": {"taskId": task_id, "state": state, "resultJson": result}}


async def _post(receiver: ReceiverServer, key: str, body: dict[str, Any]) -> None:
    """One callback as Kie sends it: over HTTP to the receiver, which writes it into the store."""
    # Not httpx's default 5 s: the S3 test sends 20 at once to a receiver writing to moto, which took
    # longer than that on a loaded machine (two pytest-xdist workers and more); this counts store
    # calls, not latency.
    async with httpx.AsyncClient(timeout=60) as http:
        response = await http.post(f"{receiver.url}/kie/callback/{key}/{token_for(SECRET, key)}", json=body)
    assert response.status_code == 200 and response.json()["msg"] == "received"


async def _ticks(waiter: CallbackWaiter, at_least: int) -> None:
    """Let the watcher tick ``at_least`` more times (bounded, so a stopped watcher fails the test)."""
    target = waiter.watcher.ticks + at_least
    deadline = time.monotonic() + 30
    while waiter.watcher.ticks < target:
        assert time.monotonic() < deadline, "the watcher stopped ticking"
        await asyncio.sleep(0.005)


def _watchers() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "callback watcher" and not t.done()]


def _waiter(client: Any, store: TaskStore) -> CallbackWaiter:
    # No fallback poll within the test: every row must end by its callback.
    return CallbackWaiter(client, CallbackBox(store), check_s=0.01, fallback_poll_s=3600)


@pytest.mark.parametrize("n", [0, 1, 100])
def test_store_operations_per_tick_do_not_grow_with_the_waiting_tasks(
    emulator: EmulatorServer, store: TaskStore, receiver, n: int
) -> None:
    """n tasks wait on their callbacks: each tick is one listing of the store, whatever n is; no file
    is read before one arrives, and each callback file is read exactly once (not once per tick)."""
    fs: CountingFS = store.fs  # type: ignore[assignment]

    async def go() -> None:
        async with make_client(emulator) as client:
            waiter = _waiter(client, store)
            tasks = [
                asyncio.create_task(waiter.wait(f"task-{i}", key=_key(i), timeout=120)) for i in range(n)
            ]
            if n == 0:
                await asyncio.sleep(0.2)  # twenty check periods with no one waiting
                assert fs.calls == Counter() and waiter.watcher.ticks == 0 and not _watchers()
                return
            await _ticks(waiter, 5)
            ticks = waiter.watcher.ticks
            # One listing per tick (one more may be under way in its thread), not one per task.
            assert ticks <= fs.listings <= ticks + 1 and fs.reads == 0
            assert len(_watchers()) == 1
            await asyncio.gather(*(_post(receiver, _key(i), _body(f"task-{i}")) for i in range(n)))
            records = await asyncio.gather(*tasks)
            assert [r.task_id for r in records] == [f"task-{i}" for i in range(n)]
            assert all(r.is_terminal and r.result_urls for r in records)
            assert fs.reads == n  # each file that appeared, once
            assert waiter.watcher.ticks <= fs.listings <= waiter.watcher.ticks + 1
            assert set(fs.calls) <= {"find", "cat"}
            await asyncio.sleep(0)  # the cancelled watcher's last step
            assert not _watchers() and not waiter.watcher.running
            assert client.usage.polls == 0

    asyncio.run(go())


def test_a_task_is_told_each_body_once_in_order_even_those_before_it_waited(
    emulator: EmulatorServer, store: TaskStore, receiver
) -> None:
    """A body that arrived before the wait started is found; a later stage arrives in its own file:
    the waiter ends on the terminal one, and each file was read once."""
    fs: CountingFS = store.fs  # type: ignore[assignment]

    async def go() -> None:
        async with make_client(emulator) as client:
            waiter = _waiter(client, store)
            await _post(receiver, _key(1), _body("task-1", state="generating"))
            task = asyncio.create_task(waiter.wait("task-1", key=_key(1), timeout=120))
            await _ticks(waiter, 3)
            assert not task.done() and fs.reads == 1
            await _post(receiver, _key(1), _body("task-1"))
            record = await task
            assert record.state.value == "success" and fs.reads == 2
            assert CallbackBox(TaskStore(store.root)).payloads(_key(1), "task-1") == [
                _body("task-1", state="generating"),
                _body("task-1"),
            ]

    asyncio.run(go())


def test_a_resumed_task_whose_callback_came_is_ended_by_it_without_a_poll(
    emulator: EmulatorServer, store: TaskStore, receiver
) -> None:
    """A resumed task is polled at once (first_delay=0), but only after the box was looked at: its
    callback, already there, ends it (the emulator does not know the task: a poll would fail)."""
    fs: CountingFS = store.fs  # type: ignore[assignment]

    async def go() -> None:
        async with make_client(emulator) as client:
            waiter = _waiter(client, store)
            await _post(receiver, _key(5), _body("task-5"))
            record = await waiter.wait("task-5", key=_key(5), timeout=120, first_delay=0)
            assert record.task_id == "task-5" and record.is_terminal and fs.reads == 1
            assert client.usage.polls == 0

    asyncio.run(go())


def test_a_cancelled_waiter_leaves_the_watcher_to_the_others_and_the_last_one_stops_it(
    emulator: EmulatorServer, store: TaskStore, receiver
) -> None:
    async def go() -> None:
        async with make_client(emulator) as client:
            waiter = _waiter(client, store)
            tasks = [
                asyncio.create_task(waiter.wait(f"task-{i}", key=_key(i), timeout=120)) for i in range(3)
            ]
            await _ticks(waiter, 2)
            tasks[0].cancel()
            with pytest.raises(asyncio.CancelledError):
                await tasks[0]
            ticks = waiter.watcher.ticks
            await _ticks(waiter, 2)  # still ticking for the other two
            assert waiter.watcher.ticks > ticks and len(_watchers()) == 1
            for i in (1, 2):
                await _post(receiver, _key(i), _body(f"task-{i}"))
            assert [r.task_id for r in await asyncio.gather(*tasks[1:])] == ["task-1", "task-2"]
            await asyncio.sleep(0)
            assert not _watchers() and not waiter.watcher.running
            # A waiter coming later starts a new watcher.
            await _post(receiver, _key(3), _body("task-3"))
            assert (await waiter.wait("task-3", key=_key(3), timeout=120)).task_id == "task-3"
            await asyncio.sleep(0)
            assert not _watchers()

    asyncio.run(go())


def test_an_error_listing_the_store_reaches_every_waiter(
    emulator: EmulatorServer, store: TaskStore, receiver
) -> None:
    """The store cannot be listed: each waiting task fails with the store's error (none waits on
    forever as if no callback came), and the watcher stops."""
    fs: CountingFS = store.fs  # type: ignore[assignment]

    async def go() -> None:
        async with make_client(emulator) as client:
            waiter = _waiter(client, store)
            fs.fail_listing = PermissionError(13, "Permission denied", f"{store.root}/callbacks")
            tasks = [
                asyncio.create_task(waiter.wait(f"task-{i}", key=_key(i), timeout=120)) for i in range(3)
            ]
            lost = asyncio.create_task(waiter.task_id_for(_key(9), known=[], timeout=120))
            results = await asyncio.gather(*tasks, lost, return_exceptions=True)
            assert all(isinstance(r, OSError) and "Permission denied" in str(r) for r in results), results
            await asyncio.sleep(0)
            assert not _watchers()
            fs.fail_listing = None  # the store is back: the next waiter is served
            await _post(receiver, _key(4), _body("task-4"))
            assert (await waiter.wait("task-4", key=_key(4), timeout=120)).task_id == "task-4"

    asyncio.run(go())


def _rows(n: int):
    import pandas as pd

    return validate_manifest(pd.DataFrame([{"id": f"r{i}", "prompt": f"image {i}"} for i in range(n)]))


@pytest.mark.parametrize("n", [1, 12])
def test_a_batch_reads_each_callback_once_and_lists_once_per_tick(
    emulator: EmulatorServer, store: TaskStore, receiver, n: int
) -> None:
    """generate_batch with callbacks through the receiver: the callback files are read once each
    and listed once per tick of the batch's one watcher, which is gone when the batch returns."""
    fs: CountingFS = store.fs  # type: ignore[assignment]
    emulator.config.callback_delay = 0.3  # the waiters tick a while before the callbacks come

    async def go() -> None:
        poll = PollPolicy(initial_s=0.02, max_s=0.1, callback_fallback_s=3600)
        async with make_client(emulator, poll=poll) as client:
            waiter = CallbackWaiter(client, CallbackBox(store), check_s=0.01)
            out, summary = await generate_batch(
                client,
                store,
                _rows(n),
                callbacks=CallbackSettings(receiver.url, SECRET),
                waiter=waiter,
                progress_interval=60,
            )
            assert summary.succeeded == n and client.usage.polls == 0 and (out["state"] == "success").all()
            callback_reads = [c for c in fs.log if "/callbacks/" in c[1] and c[0] in READS]
            assert len(callback_reads) == n
            listings = [c for c in fs.log if c[0] in LISTINGS and "/callbacks" in c[1]]
            assert waiter.watcher.ticks >= 1 and len(listings) <= waiter.watcher.ticks + 1
            await asyncio.sleep(0)
            assert not _watchers()

    asyncio.run(go())


@pytest.fixture
def s3_root(s3_endpoint: str) -> tuple[str, dict[str, str]]:
    """A store on a real S3 protocol server (moto) on loopback: (root URL, storage options)."""
    return "s3://datasets/callbacks-test", {"endpoint_url": s3_endpoint}


def test_on_s3_one_listing_per_tick_and_one_get_per_callback(emulator: EmulatorServer, s3_root) -> None:
    """The same on an object store: 20 tasks waiting cost one listing per tick, and each callback
    one GET when it appears (before: one GET per task per tick)."""
    root, options = s3_root
    store = TaskStore(root, storage_options=options)
    fs = CountingFS(store.fs)
    store.fs = fs  # type: ignore[assignment]
    receiving = TaskStore(root, storage_options=options)
    n = 20

    async def go() -> None:
        async with make_client(emulator) as client:
            waiter = _waiter(client, store)
            tasks = [
                asyncio.create_task(waiter.wait(f"task-{i}", key=_key(i), timeout=120)) for i in range(n)
            ]
            await _ticks(waiter, 3)
            assert waiter.watcher.ticks <= fs.listings <= waiter.watcher.ticks + 1 and fs.reads == 0
            with ReceiverServer(build_receiver(receiving, secret=SECRET)) as receiver:
                await asyncio.gather(*(_post(receiver, _key(i), _body(f"task-{i}")) for i in range(n)))
                records = await asyncio.gather(*tasks)
            assert [r.task_id for r in records] == [f"task-{i}" for i in range(n)]
            assert fs.reads == n and waiter.watcher.ticks <= fs.listings <= waiter.watcher.ticks + 1
            await asyncio.sleep(0)
            assert not _watchers()

    asyncio.run(go())
