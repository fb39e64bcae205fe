"""The pipeline through Dagster's materialize, against the emulator over real HTTP."""

from __future__ import annotations

import hashlib
import json
import signal
import time
from pathlib import Path

import pandas as pd

from kie_pipeline.emulator import FAIL_MARKER, EmulatorServer

from .pipeline_helpers import SAMPLE, Pipeline, metadata, spawn_partition, write_manifest


def created(emulator: EmulatorServer) -> int:
    return emulator.emulator.snapshot()["created"]


def test_end_to_end_catalog_schema_and_contents(env, emulator, instance) -> None:
    pipe = Pipeline(instance)
    catalog = pipe.all()
    assert sorted(instance.get_dynamic_partitions("batches")) == ["animals", "cities"]
    assert created(emulator) == 5
    required = [
        "id", "batch", "model", "prompt", "state", "task_id", "result_url", "image_uri", "sha256", "bytes",
        "width", "height", "format", "fail_code", "fail_msg", "cost_time_ms", "created_at", "completed_at",
    ]  # fmt: skip
    assert set(required) <= set(catalog.columns)
    assert "split" in catalog.columns  # extra manifest columns are carried through
    assert list(catalog["id"]) == ["cat", "fox", "owl", "paris", "tokyo"]
    assert (catalog["state"] == "success").all() and catalog["fail_code"].isna().all()
    assert str(catalog["created_at"].dtype).startswith("datetime64") and catalog["bytes"].dtype == "Int64"
    row = catalog.set_index("id").loc["cat"]
    assert row["format"] == "jpg" and row["split"] == "test" and row["prompt"] == 'A cat, "oil", painting'
    tokyo = catalog.set_index("id").loc["tokyo"]
    assert tokyo["height"] > tokyo["width"]  # 9:16
    for r in catalog.itertuples():
        data = Path(r.image_uri).read_bytes()
        assert hashlib.sha256(data).hexdigest() == r.sha256 and len(data) == r.bytes
        assert Path(r.image_uri).parent == Path(env / "store" / "images")
        assert r.completed_at >= r.created_at and r.cost_time_ms >= 0
    # durable task records, one per request, with the task id
    records = list((env / "store" / "tasks").glob("*.json"))
    assert len(records) == 5
    assert {json.loads(p.read_text())["task_id"] for p in records} == set(catalog["task_id"])


def test_materialization_metadata_and_checks(env, emulator, instance) -> None:
    pipe = Pipeline(instance)
    manifest_md = metadata(pipe.manifest(), "prompt_manifest")
    assert manifest_md["rows"] == 5 and manifest_md["batches"] == 2
    assert manifest_md["new_batches"] == ["animals", "cities"]
    result = pipe.batch("animals")
    md = metadata(result)
    assert md["images_created"] == 3 and md["images_reused"] == 0 and md["images_failed"] == 0
    assert md["credits_used"] == 54 and md["polls"] >= 3 and md["create_task_calls"] == 3
    assert md["dagster/row_count"] == 3
    assert md["contact_sheet"].count("data:image/jpeg;base64,") == 1 and md["by_state"] == {"success": 3}
    assert Path(md["contact_sheet_path"]).is_file()
    assert {c.name for c in md["dagster/column_schema"].columns} >= {"id", "sha256", "split"}
    checks = {e.check_name: (e.passed, e.partition) for e in result.get_asset_check_evaluations()}
    # Partitioned checks: each result belongs to the batch it checked.
    assert checks == {
        "durable_copies_match": (True, "animals"),
        "failure_rate_below_threshold": (True, "animals"),
    }
    pipe.batch("cities")
    cat = pipe.catalog()
    cat_md = metadata(cat, "image_catalog")
    assert cat_md["rows"] == 5 and cat_md["by_state"] == {"success": 5}
    assert cat_md["gallery"].count("data:image/jpeg;base64,") == 1 and "5 of 5 results" in cat_md["gallery"]
    assert "| animals" in cat_md["by_batch"] and "| nano-banana-pro" in cat_md["by_model"]
    assert "| image" in cat_md["by_media_type"] and "| total" in cat_md["by_media_type"]
    assert all(e.passed for e in cat.get_asset_check_evaluations())


def test_rerun_makes_zero_create_task_calls(env, emulator, instance) -> None:
    pipe = Pipeline(instance)
    first = pipe.all()
    before = emulator.emulator.snapshot()
    pipe.manifest()
    md = metadata(pipe.batch("animals"))
    second = pipe.all()
    after = emulator.emulator.snapshot()
    assert md["images_created"] == 0 and md["images_reused"] == 3 and md["polls"] == 0
    assert after["create_requests"] == before["create_requests"]
    assert after["downloads"] == before["downloads"]
    pd.testing.assert_frame_equal(first, second)


def test_changed_prompt_regenerates_that_row_alone(env, emulator, instance) -> None:
    pipe = Pipeline(instance)
    first = pipe.all().set_index("id")
    changed = [dict(r) for r in SAMPLE]
    changed[1]["prompt"] = "An owl at dawn"
    write_manifest(str(env / "prompts.csv"), changed)
    manifest_md = metadata(pipe.manifest(), "prompt_manifest")
    assert manifest_md["changed_batches"] == ["animals"] and manifest_md["new_batches"] == []
    md = metadata(pipe.batch("animals"))
    assert md["images_created"] == 1 and md["images_reused"] == 2
    pipe.catalog()
    second = pd.read_parquet(env / "store" / "image_catalog.parquet").set_index("id")
    assert second.loc["owl", "task_id"] != first.loc["owl", "task_id"]
    assert second.loc["owl", "prompt"] == "An owl at dawn"
    assert second.loc["fox", "task_id"] == first.loc["fox", "task_id"]
    assert created(emulator) == 6


def test_failed_rows_are_recorded_and_retried(env, emulator, instance) -> None:
    records = [dict(r) for r in SAMPLE]
    records[0]["prompt"] = f"A red fox {FAIL_MARKER}"
    write_manifest(str(env / "prompts.csv"), records)
    pipe = Pipeline(instance)
    pipe.manifest()
    result = pipe.batch("animals")  # a failed row does not fail the partition
    md = metadata(result)
    assert md["images_failed"] == 1 and md["fail_codes"] == {"501": 1}
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["failure_rate_below_threshold"] is False  # 1 of 3 > 20 %
    table = pd.read_parquet(env / "store" / "generated_images" / "animals.parquet").set_index("id")
    assert table.loc["fox", "state"] == "fail" and table.loc["fox", "fail_code"] == "501"
    assert table.loc["fox", "task_id"] and pd.isna(table.loc["fox", "image_uri"])
    again = metadata(pipe.batch("animals"))
    assert again["images_created"] == 1 and again["images_reused"] == 2  # only the failed row is retried
    record = json.loads(
        next(p for p in (env / "store" / "tasks").glob("*.json") if "fox" in p.read_text()).read_text()
    )
    assert len(record["previous_task_ids"]) == 1


def test_validation_errors_make_zero_requests(env, emulator, instance) -> None:
    records = [dict(r) for r in SAMPLE]
    records[1]["aspect_ratio"] = "7:5"
    records[3]["id"] = "fox"
    write_manifest(str(env / "prompts.csv"), records)
    result = Pipeline(instance).manifest(raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    text = failure.step_failure_data.error.message + str(failure.step_failure_data.user_failure_data)
    assert "row 2 (id 'owl'), field 'aspect_ratio'" in text
    assert "row 4 (id 'fox'), field 'id'" in text
    assert instance.get_dynamic_partitions("batches") == []
    assert emulator.emulator.snapshot()["create_requests"] == 0


def test_expired_result_urls_fall_back_to_download_url(env, emulator, instance) -> None:
    emulator.config.result_url_ttl = 0.0
    pipe = Pipeline(instance)
    pipe.manifest()
    md = metadata(pipe.batch("cities"))
    assert md["images_succeeded"] == 2 and md["expired_links_refreshed"] == 2
    assert emulator.emulator.snapshot()["download_url_calls"] == 2


def test_402_mid_partition_keeps_what_was_paid_and_resumes_after_top_up(env, emulator, instance) -> None:
    emulator.config.balance = 18 * 2  # two images' worth
    # Submit one at a time, in order.
    pipe = Pipeline(instance, limits={"create_limit": 1, "create_period_s": 0.2})
    pipe.manifest()
    # A price table that underestimates (1 credit a task) lets the pre-flight pass: Kie's 402 is
    # then what stops the batch midway, as when Kie's prices rise or another run spends meanwhile.
    cheap = {"nano-banana-pro": {"*": 1.0}}
    result = pipe.batch("animals", raise_on_error=False, prices=cheap)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "balance: 0 credits" in failure.step_failure_data.error.message
    assert created(emulator) == 2
    done = [json.loads(p.read_text()) for p in (env / "store" / "tasks").glob("*.json")]
    paid = sorted(r["status"] for r in done if r.get("task_id"))
    assert paid == ["success", "success"]  # waited for and downloaded
    assert [r["status"] for r in done if not r.get("task_id")] == ["refused"]  # Kie created nothing
    emulator.config.balance = 1000
    md = metadata(pipe.batch("animals"))
    assert md["images_created"] == 1 and md["images_reused"] == 2
    assert created(emulator) == 3


def test_missing_api_key_says_how_to_set_it(env, emulator, instance, monkeypatch) -> None:
    monkeypatch.delenv("KIE_API_KEY")
    pipe = Pipeline(instance)
    pipe.manifest()
    result = pipe.batch("animals", raise_on_error=False)
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = str(failure.step_failure_data.user_failure_data.description)
    assert "KIE_API_KEY is not set" in message and "emulator" in message


def test_resume_after_sigkill_mid_partition_creates_no_duplicates(env, emulator, instance, tmp_path) -> None:
    emulator.config.latency = (1.5, 2.5)
    emulator.config.create_limit, emulator.config.create_period = 2, 1.0
    rows = [{"id": f"r{i}", "batch": "big", "prompt": f"image number {i}"} for i in range(8)]
    write_manifest(str(env / "prompts.csv"), rows)
    pipe = Pipeline(instance, limits={"create_limit": 2, "create_period_s": 1.0})
    pipe.manifest()
    options = {
        "poll": {"initial_s": 0.2, "max_s": 0.5},
        "limits": {"create_limit": 2, "create_period_s": 1.0},
    }
    proc = spawn_partition(str(env / "home"), "big", options)
    tasks = env / "store" / "tasks"
    deadline = time.monotonic() + 60
    while (
        time.monotonic() < deadline and sum('task_id": "' in p.read_text() for p in tasks.glob("*.json")) < 3
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the kill must land while the run is still going"
    paid = created(emulator)
    records = [json.loads(p.read_text()) for p in tasks.glob("*.json")]
    recorded = [r for r in records if r.get("task_id")]
    intents = [r for r in records if r["status"] == "creating"]
    assert 3 <= len(recorded) < 8, "the kill should land mid-submission"
    # A task whose answer was still on the wire when the process died cannot be recorded (Kie has
    # no idempotency key), but its intent record was written before the call: every lost task is
    # known as a row that may have been paid for.
    lost_in_flight = paid - len(recorded)
    assert 0 <= lost_in_flight <= len(intents) and lost_in_flight <= 2
    assert any(r["status"] == "submitted" for r in recorded)
    md = metadata(pipe.batch("big"))
    assert created(emulator) == 8 + lost_in_flight  # every recorded task reused: nothing paid twice
    assert md["images_resumed"] == len(recorded) and md["images_created"] == 8 - len(recorded)
    assert md["resubmitted_uncertain"] == len(intents)
    assert md["images_succeeded"] == 8


def test_generated_images_is_async_and_returns_its_table_usage_and_checks_in_one_result(
    env, emulator, instance
) -> None:
    """One MaterializeResult: the table (through the IO manager), the run's counters, the client's
    usage as KieResource reports it, and both check results."""
    import inspect

    from kie_pipeline.assets import generated_images

    assert inspect.iscoroutinefunction(generated_images.op.compute_fn.decorated_fn)
    pipe = Pipeline(instance)
    pipe.manifest()
    result = pipe.batch("animals")
    md = metadata(result)
    table = pd.read_parquet(env / "store" / "generated_images" / "animals.parquet")
    assert len(table) == md["dagster/row_count"] == md["results"] == 3
    assert md["create_task_calls"] == 3 and md["downloads"] == 3 and md["polls"] >= 3
    assert md["bytes_downloaded"] == int(table["bytes"].sum()) and md["uncertain_creates"] == 0
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"durable_copies_match": True, "failure_rate_below_threshold": True}
