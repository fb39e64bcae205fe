"""Callbacks: the receiver over real HTTP, the hybrid waiter, and lost createTask answers found again."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from kie_pipeline.client import PollPolicy
from kie_pipeline.emulator import EmulatorServer
from kie_pipeline.pipeline.callbacks import CallbackBox, CallbackSettings, sign, token_for
from kie_pipeline.pipeline.generation import generate_batch
from kie_pipeline.pipeline.manifest import validate_manifest
from kie_pipeline.pipeline.store import TaskStore
from kie_pipeline.receiver import ReceiverServer, build_receiver

from .conftest import make_client
from .pipeline_helpers import Pipeline, metadata

SECRET = "test-callback-secret"
WEBHOOK_KEY = "test-webhook-key"
KEY = "0123456789abcdef0123456789abcdef"


def _body(task_id: str, field: str = "taskId") -> dict:
    return {"code": 200, "msg": "success", "data": {field: task_id, "state": "success", "resultJson": ""}}


def _signed(task_id: str, *, key: str = WEBHOOK_KEY, at: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if at is None else at
    return {"X-Webhook-Timestamp": str(stamp), "X-Webhook-Signature": sign(key, task_id, stamp)}


@pytest.fixture
def store(tmp_path) -> TaskStore:
    return TaskStore(str(tmp_path / "store"))


def _files(store: TaskStore) -> dict[Path, bytes]:
    """Every callback file of the store, with its bytes."""
    return {p: p.read_bytes() for p in sorted((Path(store.root) / "callbacks").rglob("*.json"))}


@pytest.fixture
def receiver(store):
    with ReceiverServer(build_receiver(store, secret=SECRET, webhook_key=WEBHOOK_KEY)) as server:
        yield server


def test_receiver_keeps_signed_callbacks_once_and_refuses_the_rest(receiver, store) -> None:
    url = f"{receiver.url}/kie/callback/{KEY}/{token_for(SECRET, KEY)}"
    box = CallbackBox(store)
    with httpx.Client() as http:
        ok = http.post(url, json=_body("task-1"), headers=_signed("task-1"))
        assert ok.status_code == 200 and ok.json()["msg"] == "received"
        assert box.get(KEY, "task-1") == _body("task-1") and box.task_ids(KEY) == ["task-1"]
        # Kie delivers the same task again: answered 200, nothing changes.
        kept = _files(store)
        assert [p.name.split(".", 1)[1] for p in kept] == ["task-1.json"]
        again = http.post(url, json=_body("task-1"), headers=_signed("task-1"))
        assert again.status_code == 200 and again.json()["msg"] == "duplicate"
        assert _files(store) == kept
        # Kie's own sample reads data.task_id: accepted too.
        assert http.post(url, json=_body("task-2", "task_id"), headers=_signed("task-2")).status_code == 200
        refused = {
            "wrong key": http.post(url, json=_body("t3"), headers=_signed("t3", key="not-the-key")),
            "signature of another task": http.post(url, json=_body("t3"), headers=_signed("task-1")),
            "replay of an old delivery": http.post(
                url, json=_body("t3"), headers=_signed("t3", at=int(time.time()) - 3600)
            ),
            "unsigned": http.post(url, json=_body("t3")),
        }
        assert {why: r.status_code for why, r in refused.items()} == dict.fromkeys(refused, 401)
        assert http.post(f"{receiver.url}/kie/callback/{KEY}/{'0' * 32}", json=_body("t3")).status_code == 404
        other = "f" * 32  # a valid token of another row does not open this one
        assert http.post(f"{receiver.url}/kie/callback/{other}/{token_for(SECRET, KEY)}").status_code == 404
        assert http.post(url, content=b"not json", headers=_signed("t3")).status_code == 400
        assert http.post(url, json={"code": 200, "data": {}}, headers=_signed("t3")).status_code == 400
        assert http.get(f"{receiver.url}/receiver/stats").json() == {
            "accepted": 2,
            "duplicates": 1,
            "refused": 8,
        }
    assert box.task_ids(KEY) == ["task-1", "task-2"] and box.task_ids(other) == []


def _staged(task_id: str, state: str = "success") -> dict:
    return {"code": 200, "msg": "success", "data": {"taskId": task_id, "state": state, "resultJson": ""}}


def test_task_ids_follow_the_time_of_arrival_in_the_names_and_the_old_layout_is_still_read(
    tmp_path: Path,
) -> None:
    """Deliveries are ordered by the arrival time in their names, not by their files' mtimes (which
    are scrambled here); a file of the earlier layout (``{task_id}.json`` with ``later`` bodies) is
    still read, ordered by its mtime, and a repeated body of it is a duplicate."""
    store = TaskStore(str(tmp_path / "store"))
    box, key = CallbackBox(store), KEY
    folder = tmp_path / "store" / "callbacks" / key
    folder.mkdir(parents=True)
    old = folder / "old-task.json"
    old.write_text(
        json.dumps(
            {"received_at": "x", "payload": _staged("old-task", "generating"), "later": [_staged("old-task")]}
        )
    )
    os.utime(old, (1_000, 1_000))  # long ago
    for task in ("first", "second", "third"):
        assert box.deliver(key, task, _staged(task))
    names = sorted(p.name for p in folder.iterdir())
    assert names[-1] == "old-task.json" and [n.split(".")[1] for n in names[:3]] == [
        "first",
        "second",
        "third",
    ]
    # mtimes the other way round: the newest name gets the oldest mtime.
    for age, name in enumerate(names[:3]):
        os.utime(folder / name, (2_000_000_000 - age * 1000, 2_000_000_000 - age * 1000))
    assert box.task_ids(key) == ["old-task", "first", "second", "third"]
    assert box.payloads(key, "old-task") == [_staged("old-task", "generating"), _staged("old-task")]
    assert not box.deliver(key, "old-task", _staged("old-task"))  # kept in the old file already
    assert box.deliver(key, "old-task", _staged("old-task", "fail"))
    assert box.payloads(key, "old-task")[-1] == _staged("old-task", "fail")
    assert box.task_ids(key) == ["old-task", "first", "second", "third"]
    assert box.task_ids("f" * 32) == [] and box.payloads("f" * 32, "first") == []


def _rows(n: int) -> pd.DataFrame:
    return validate_manifest(pd.DataFrame([{"id": f"r{i}", "prompt": f"image {i}"} for i in range(n)]))


def _generate(
    emulator,
    store,
    rows,
    *,
    fallback_s: float,
    receiver=None,
    wait_timeout: float | None = None,
    timeout=30.0,
):
    """generate_batch against the emulator, with callbacks to ``receiver`` (None: polling only)."""
    settings = CallbackSettings(receiver.url, SECRET) if receiver else None

    async def go():
        poll = PollPolicy(initial_s=0.02, max_s=0.1, callback_fallback_s=fallback_s)
        async with make_client(emulator, poll=poll, timeout=timeout) as client:
            out, summary = await generate_batch(
                client, store, rows, callbacks=settings, wait_timeout=wait_timeout, progress_interval=60
            )
            return out, summary, client.usage

    return asyncio.run(go())


@pytest.fixture
def signed(emulator: EmulatorServer):
    """The emulator signs its callbacks with the account's webhook key; the receiver checks them."""
    emulator.config.webhook_key = WEBHOOK_KEY
    return emulator


@pytest.mark.parametrize("n", [1, 5])
def test_with_callbacks_rows_finish_without_polling(signed, receiver, store, n) -> None:
    out, summary, usage = _generate(signed, store, _rows(n), fallback_s=30, receiver=receiver)
    assert summary.succeeded == n and (out["state"] == "success").all()
    assert usage.polls == 0  # every row ended by its callback (target: < 0.3 recordInfo per image)
    # Callbacks carry Kie's own credit figure (consumeCredits): the catalog takes it over the estimate.
    assert (out["credits_source"] == "kie").all() and (out["credits"] == 18).all()
    assert httpx.get(f"{receiver.url}/receiver/stats").json()["accepted"] == n


def test_repeated_callbacks_change_nothing(signed, receiver, store) -> None:
    """Kie may deliver a task's callback more than once: each row still has one task and one copy."""
    signed.config.faults.callback_duplicates = 2
    out, summary, usage = _generate(signed, store, _rows(2), fallback_s=30, receiver=receiver)
    assert summary.succeeded == 2 and usage.polls == 0 and signed.emulator.snapshot()["created"] == 2
    stats = httpx.get(f"{receiver.url}/receiver/stats").json()
    assert (stats["accepted"], stats["duplicates"]) == (2, 4)
    records = store.load_many(out["request_key"].tolist())
    assert {k: r.history() for k, r in records.items()} == {
        k: [t] for k, t in zip(out["request_key"], out["task_id"], strict=True)
    }


@pytest.mark.parametrize("n", [1, 3])  # (a manifest of zero rows is refused before any run)
def test_spent_callbacks_are_cleared_and_unsettled_ones_kept(signed, receiver, store, n) -> None:
    """The watcher lists the whole box on every tick: after a run the box holds only what a later
    run may still need. A settled row's callbacks are removed (a late duplicate is cleared by the
    next run); another batch's callbacks and a row not settled keep theirs."""
    box = CallbackBox(store)
    other = "e" * 32  # a row of another batch, still in play
    box.deliver(other, "task-of-another-batch", _staged("task-of-another-batch"))
    rows = _rows(n)
    out, summary, usage = _generate(signed, store, rows, fallback_s=30, receiver=receiver)
    assert summary.succeeded == n and usage.polls == 0
    assert box.task_ids(other) == ["task-of-another-batch"]
    assert set(box.scan()) <= {other} | set(rows["request_key"])  # late duplicates at most
    for key, task in zip(out["request_key"], out["task_id"], strict=True):
        box.deliver(key, task, _staged(task))  # Kie repeats a callback after the run ended
    _generate(signed, store, rows, fallback_s=30, receiver=receiver)
    assert set(box.scan()) == {other}
    # The rerun reused every row from its record: the cleared callbacks were not needed.
    assert signed.emulator.snapshot()["created"] == n


def test_a_lost_callback_is_covered_by_the_fallback_poll(signed, receiver, store) -> None:
    signed.config.faults.callback_lost = 1.0
    _out, summary, usage = _generate(signed, store, _rows(3), fallback_s=0.3, receiver=receiver)
    assert summary.succeeded == 3 and usage.polls >= 3


def test_a_badly_signed_callback_is_refused_and_the_fallback_poll_ends_the_row(
    signed, receiver, store
) -> None:
    signed.config.faults.callback_bad_signature = True
    _out, summary, usage = _generate(signed, store, _rows(2), fallback_s=0.3, receiver=receiver)
    assert summary.succeeded == 2 and usage.polls >= 2
    stats = httpx.get(f"{receiver.url}/receiver/stats").json()
    assert stats["accepted"] == 0 and stats["refused"] >= 2
    assert CallbackBox(store).task_ids(_rows(2)["request_key"].iloc[0]) == []


@pytest.mark.parametrize("mode", ["drop", "hold"])
def test_a_lost_create_answer_costs_one_task_when_callbacks_are_on(signed, receiver, store, mode) -> None:
    """createTask's answer is lost on the wire: the task's callback names the row, so the run adopts
    it and downloads its image. Exactly one task is paid for; a rerun creates nothing."""
    signed.config.faults.lost_answer_count, signed.config.faults.lost_answer_mode = 1, mode
    signed.config.faults.slow_seconds = 3.0  # "hold": the answer comes after the client's 1 s timeout
    rows = _rows(3)
    out, summary, _ = _generate(signed, store, rows, fallback_s=30, receiver=receiver, timeout=1.0)
    assert summary.found_by_callback == 1 and summary.uncertain == 0 and summary.succeeded == 3
    assert signed.emulator.snapshot()["created"] == 3
    # The task found by its callback is recorded and counted as the created ones are.
    assert summary.created == 3 and summary.credits_used == 3 * 18 and summary.credits_from_kie == 3
    records = store.load_many(rows["request_key"].tolist())
    (adopted,) = [r for r in records.values() if r.adopted_from == "callback"]
    assert adopted.task_id in set(out["task_id"]) and adopted.submitted_at and adopted.credits_source == "kie"
    _out, summary, _ = _generate(signed, store, rows, fallback_s=30, receiver=receiver)
    assert summary.reused == 3 and summary.created == 0 and signed.emulator.snapshot()["created"] == 3


def test_a_callback_after_the_run_gave_up_is_adopted_by_the_rerun(signed, receiver, store) -> None:
    """The callback arrives only after the run settled the row uncertain (a short wait timeout):
    the next run takes the task id from it instead of paying again."""
    signed.config.faults.lost_answer_count = 1
    signed.config.callback_delay = 1.0
    rows = _rows(1)
    out, summary, _ = _generate(signed, store, rows, fallback_s=30, receiver=receiver, wait_timeout=0.2)
    assert summary.uncertain == 1 and out["state"].tolist() == ["uncertain"]
    key = rows["request_key"].iloc[0]
    deadline = time.monotonic() + 20
    while not CallbackBox(store).task_ids(key) and time.monotonic() < deadline:
        time.sleep(0.05)
    out, summary, _ = _generate(signed, store, rows, fallback_s=30)  # even without callbacks on
    assert summary.adopted == 1 and summary.created == 0 and summary.succeeded == 1
    assert signed.emulator.snapshot()["created"] == 1  # one task across both runs


def test_generated_images_with_callbacks_through_dagster(env, signed, receiver, instance) -> None:
    pipe = Pipeline(
        instance, callback_url=receiver.url, callback_secret=SECRET, poll={"callback_fallback_s": 30}
    )
    pipe.manifest()
    md = metadata(pipe.batch("animals"))
    assert md["images_succeeded"] == 3 and md["polls"] == 0


def test_callback_url_without_a_secret_fails_before_anything_is_paid(env, emulator, instance) -> None:
    pipe = Pipeline(instance, callback_url="http://127.0.0.1:9")
    pipe.manifest()
    result = pipe.batch("animals", raise_on_error=False)
    assert not result.success and emulator.emulator.snapshot()["created"] == 0


def test_the_receiver_command_serves_and_needs_its_secret(tmp_path) -> None:
    env = {**os.environ, "KIE_CALLBACK_SECRET": SECRET, "KIE_STORE": str(tmp_path / "store")}
    env.pop("KIE_WEBHOOK_KEY", None)
    cmd = [sys.executable, "-m", "kie_pipeline.cli", "receiver", "--port", "0"]
    missing = subprocess.run(cmd, env={**env, "KIE_CALLBACK_SECRET": ""}, capture_output=True, text=True)
    assert missing.returncode == 2 and "KIE_CALLBACK_SECRET" in missing.stdout
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([*cmd[:-1], str(port)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/kie/callback/{KEY}/{token_for(SECRET, KEY)}"
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.post(url, json=_body("task-9"))
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the receiver did not start"
                time.sleep(0.1)
        assert response.status_code == 200
        (file,) = (tmp_path / "store" / "callbacks" / KEY).glob("*.task-9.json")
        saved = json.loads(file.read_text())
        assert saved["payload"] == _body("task-9")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
