"""The typed task record (read and written only by the store) and outcomes settled in one place."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pandas as pd

from kie_pipeline.emulator import EmulatorServer
from kie_pipeline.emulator.config import FAIL_MARKER, STUCK_MARKER
from kie_pipeline.pipeline.generation import generate_batch
from kie_pipeline.pipeline.manifest import validate_manifest
from kie_pipeline.pipeline.record import RecordStatus, RequestRecord, ResultCopy
from kie_pipeline.pipeline.store import TaskStore

from .conftest import make_client

COPY = {"uri": "/s/images/k.png", "sha256": "ab" * 32, "bytes": 10, "width": 2, "height": 3, "format": "png"}


def test_every_outcome_is_counted_once_and_the_counters_match_the_catalog(
    emulator: EmulatorServer, tmp_path
) -> None:
    """Zero, one and many of each outcome in one batch: succeeded, Kie fail, timeout, a lost
    createTask answer. Each row adds to exactly one counter and its fail code to ``fail_codes``."""
    emulator.config.faults.lost_answer_count = 1  # the first createTask only
    prompts = ["ok one", "ok two", f"broken {FAIL_MARKER}", f"slow {STUCK_MARKER}", "ok three"]
    rows = validate_manifest(pd.DataFrame([{"id": f"r{i}", "prompt": p} for i, p in enumerate(prompts)]))

    async def go():
        async with make_client(emulator) as client:
            return await generate_batch(
                client, TaskStore(str(tmp_path / "store")), rows, submitters=1, wait_timeout=1.5
            )

    out, summary = asyncio.run(go())
    outcomes = ("succeeded", "reused", "failed", "timed_out", "download_failed", "expired")
    outcomes += ("uncertain", "not_submitted", "store_errors")
    assert sum(getattr(summary, name) for name in outcomes) == len(rows) == len(out)
    assert (summary.succeeded, summary.failed, summary.timed_out, summary.uncertain) == (2, 1, 1, 1)
    not_ok = out[out["state"] != "success"]
    assert dict(summary.fail_codes) == dict(Counter(not_ok["fail_code"]))
    assert dict(summary.fail_codes) == {"UNCERTAIN": 1, "501": 1, "TIMEOUT": 1}

    # The records say the same, in the enums' values.
    store = TaskStore(str(tmp_path / "store"))
    records = store.load_many(list(out["request_key"]))
    statuses = Counter(records[k].status for k in out["request_key"])
    assert statuses == {
        RecordStatus.SUCCESS: 2,
        RecordStatus.FAIL: 1,
        RecordStatus.TIMEOUT: 1,
        RecordStatus.UNCERTAIN: 1,
    }


def test_an_empty_batch_counts_nothing(emulator: EmulatorServer, tmp_path) -> None:
    rows = validate_manifest(pd.DataFrame([{"id": "r0", "prompt": "p"}])).iloc[0:0]

    async def go():
        async with make_client(emulator) as client:
            return await generate_batch(client, TaskStore(str(tmp_path / "store")), rows)

    out, summary = asyncio.run(go())
    assert out.empty and summary.rows == 0 and not summary.fail_codes and summary.created == 0


def test_a_record_round_trips_and_keeps_fields_it_does_not_know(tmp_path) -> None:
    store = TaskStore(str(tmp_path))
    rec = RequestRecord(key="k1", id="a", status=RecordStatus.SUBMITTED, task_id="t1", images=[None])
    rec.model_extra["future_field"] = {"x": 1}  # written by a newer version
    store.save(rec)
    text = (tmp_path / "tasks" / "k1.json").read_text()
    assert '"task_id": "t1"' in text and '"status": "submitted"' in text  # the greppable layout
    back = store.load("k1")
    assert back == rec and back.model_extra == {"future_field": {"x": 1}}
    assert back.images == [None] and back.history() == ["t1"]


def test_a_record_of_an_earlier_version_loads(tmp_path) -> None:
    """Before 0.2 a record held one ``image``; statuses were plain strings."""
    (tmp_path / "tasks").mkdir()
    legacy = {"key": "k2", "id": "a", "status": "success", "task_id": "t2", "image": COPY}
    (tmp_path / "tasks" / "k2.json").write_text(json.dumps(legacy))
    rec = TaskStore(str(tmp_path)).load("k2")
    assert rec is not None and rec.status is RecordStatus.SUCCESS
    assert rec.images == [ResultCopy(**COPY)]


def test_json_that_is_not_a_record_is_set_aside_like_a_damaged_file(tmp_path) -> None:
    """Valid JSON with an unknown status (edited by hand, say) never blocks the batch: it is set
    aside and reported, with the task id its text still holds (so nothing paid for is lost)."""
    (tmp_path / "tasks").mkdir()
    path = tmp_path / "tasks" / "k3.json"
    path.write_text(json.dumps({"key": "k3", "status": "weird", "task_id": "task-77"}))
    rec = TaskStore(str(tmp_path)).load("k3")
    assert rec is not None and rec.status is RecordStatus.CORRUPT and rec.task_id == "task-77"
    assert "status" in (rec.error or "") and not path.exists()
    assert len(list((tmp_path / "tasks" / "corrupt").glob("k3.*.json"))) == 1
