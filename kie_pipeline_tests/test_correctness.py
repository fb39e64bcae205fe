"""What a new user meets first, and what costs money: one batch, no batch column, removed batches,
lost createTask answers, credits per task, several results per task, expired results, retries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from kie_pipeline.pipeline.generation import result_row
from kie_pipeline.pipeline.manifest import ManifestError, validate_manifest
from kie_pipeline.pipeline.schema import CATALOG_DTYPES, COLUMN_DESCRIPTIONS, RESERVED_NAMES

from .pipeline_helpers import SAMPLE, Pipeline, metadata, spawn_partition, write_manifest


def created(emulator) -> int:
    return emulator.emulator.snapshot()["created"]


def catalog_of(env: Path) -> pd.DataFrame:
    return pd.read_parquet(env / "store" / "image_catalog.parquet")


def step_events(result: dg.ExecuteInProcessResult, kind: str) -> list:
    return [e for e in result.all_events if e.event_type_value == kind]


# -- 1. the catalog for zero, one and many batches ---------------------------------------------
def test_catalog_of_zero_one_and_many_batches_through_materialize(env, emulator, instance) -> None:
    pipe = Pipeline(instance)
    pipe.manifest()
    md = metadata(pipe.catalog(), "image_catalog")  # nothing generated yet
    empty = catalog_of(env)
    assert len(empty) == 0 and list(empty.columns[: len(CATALOG_DTYPES)]) == list(CATALOG_DTYPES)
    assert md["batches_not_generated"] == ["animals", "cities"]
    pipe.batch("cities")
    pipe.catalog()
    assert sorted(catalog_of(env)["id"]) == ["paris", "tokyo"]
    pipe.batch("animals")
    pipe.catalog()
    assert sorted(catalog_of(env)["id"]) == ["cat", "fox", "owl", "paris", "tokyo"]


def test_catalog_of_a_single_batch_manifest(env, emulator, instance) -> None:
    """The usual start: one CSV, one batch (one partition loaded is a bare value, not a dict)."""
    write_manifest(str(env / "prompts.csv"), [{"id": "one", "batch": "only", "prompt": "a single image"}])
    catalog = Pipeline(instance).all()
    assert list(catalog["id"]) == ["one"] and list(catalog["state"]) == ["success"]


def test_catalog_zero_one_many_from_the_cli(env, emulator, tmp_path) -> None:
    home = tmp_path / "cli_home"
    home.mkdir()
    cli_env = {**os.environ, "DAGSTER_HOME": str(home)}
    dagster = str(Path(sys.executable).parent / "dagster")
    base = [dagster, "asset", "materialize", "-m", "kie_pipeline.definitions", "--select"]

    # The CLI's default executor starts a process per step (~4 s each here); the runs before the final
    # catalog take the in-process executor, so the catalog runs exactly as a user types it (and
    # test_pool_slots runs generated_images through the CLI's default executor).
    in_process = ["--config-json", json.dumps({"execution": {"config": {"in_process": {}}}})]

    def run(*args: str) -> None:
        out = subprocess.run([*base, *args], env=cli_env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-3000:]

    run("prompt_manifest,image_catalog", *in_process)  # one CLI start-up: the catalog runs after the manifest
    assert len(catalog_of(env)) == 0
    run("generated_images", "--partition", "cities", *in_process)
    table = pd.read_parquet(env / "store" / "generated_images" / "cities.parquet")
    assert list(table["state"]) == ["success", "success"]
    run("image_catalog", *in_process)
    assert sorted(catalog_of(env)["id"]) == ["paris", "tokyo"]
    run("generated_images", "--partition", "animals", *in_process)
    run("image_catalog")
    assert len(catalog_of(env)) == 5


# -- 2. a manifest without a batch column ------------------------------------------------------
def test_manifest_without_batch_column_is_one_default_batch(env, emulator, instance) -> None:
    (env / "prompts.csv").write_text("id,prompt\nfox,A red fox\nowl,An owl\n")
    catalog = Pipeline(instance).all()
    assert instance.get_dynamic_partitions("batches") == ["default"]
    assert list(catalog["batch"]) == ["default", "default"] and (catalog["state"] == "success").all()


# -- 3. removed batches and the nightly schedule ----------------------------------------------
def test_removed_batch_loses_its_partition_keeps_its_data_and_the_schedule_skips_it(
    env, emulator, instance
) -> None:
    from kie_pipeline.automation import nightly_generation

    pipe = Pipeline(instance)
    pipe.all()
    write_manifest(str(env / "prompts.csv"), [r for r in SAMPLE if r["batch"] == "animals"])
    md = metadata(pipe.manifest(), "prompt_manifest")
    assert md["removed_batches"] == ["cities"]
    assert instance.get_dynamic_partitions("batches") == ["animals"]
    assert (env / "store" / "generated_images" / "cities.parquet").exists()  # the data stays
    # Contexts are closed (with): an open one leaves its instance in Dagster's context variables.
    with dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=datetime(2026, 1, 1, 2, tzinfo=UTC),
        resources={"dataset": pipe.resources["dataset"]},
    ) as ctx:
        requests = list(nightly_generation(ctx))
    assert [r.partition_key for r in requests] == ["animals"]
    pipe.catalog()
    assert set(catalog_of(env)["batch"]) == {"animals"}
    # Adding the batch back reuses everything already generated.
    write_manifest(str(env / "prompts.csv"), SAMPLE)
    pipe.manifest()
    assert metadata(pipe.batch("cities"))["images_reused"] == 2


def test_schedule_skips_a_registered_batch_missing_from_the_snapshot(env, emulator, instance) -> None:
    from kie_pipeline.automation import nightly_generation

    pipe = Pipeline(instance)
    pipe.manifest()
    instance.add_dynamic_partitions("batches", ["registered-elsewhere"])
    with dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=datetime(2026, 1, 1, 2, tzinfo=UTC),
        resources={"dataset": pipe.resources["dataset"]},
    ) as ctx:
        assert sorted(r.partition_key for r in nightly_generation(ctx)) == ["animals", "cities"]


# -- 4. nothing that spends credits starts by itself: test_component.py


# -- 5. a lost createTask answer is never retried blindly ---------------------------------------
@pytest.mark.parametrize("mode", ["hold", "drop"])
def test_lost_create_answer_is_uncertain_not_paid_twice_in_the_run(env, emulator, instance, mode) -> None:
    rows = [{"id": f"r{i}", "batch": "b", "prompt": f"image {i}"} for i in range(6)]
    write_manifest(str(env / "prompts.csv"), rows)
    emulator.config.faults.lost_answer_mode = mode
    emulator.config.faults.slow_seconds = 6.0
    emulator.config.faults.lost_answer_count = 1
    pipe = Pipeline(instance, timeout_s=2.5)  # generous: only the held answer may time out
    pipe.manifest()
    result = pipe.batch("b")
    md = metadata(result)
    assert created(emulator) == 6  # one task per row: the lost answer was not retried
    assert md["uncertain"] == 1 and md["images_succeeded"] == 5
    table = pd.read_parquet(env / "store" / "generated_images" / "b.parquet")
    lost = table[table["state"] == "uncertain"]
    assert len(lost) == 1 and lost["fail_code"].iloc[0] == "UNCERTAIN"
    logs = "\n".join(e.message for e in instance.all_logs(result.run_id))
    assert "may have created the task" in logs
    # The next run submits it again and says it may have paid twice.
    again = metadata(pipe.batch("b"))
    assert again["resubmitted_uncertain"] == 1 and again["images_created"] == 1
    assert again["images_reused"] == 5 and created(emulator) == 7


# -- 6. credits per task, not the balance difference -----------------------------------------
def test_credits_are_attributed_per_task_even_with_runs_in_parallel(env, emulator, instance) -> None:
    emulator.config.latency = (0.5, 1.0)
    rows = [{"id": f"a{i}", "batch": "a", "prompt": f"a {i}"} for i in range(4)]
    rows += [{"id": f"b{i}", "batch": "b", "prompt": f"b {i}", "resolution": "4K"} for i in range(3)]
    write_manifest(str(env / "prompts.csv"), rows)
    Pipeline(instance).manifest()
    options = {"poll": {"initial_s": 0.1, "max_s": 0.2}}
    procs = [spawn_partition(str(env / "home"), key, options) for key in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    spent = {}
    for key in ("a", "b"):
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("generated_images"), asset_partitions=[key]), limit=1
        ).records
        md = records[0].asset_materialization.metadata
        spent[key] = md["credits_used"].value
        assert md["account_balance"].value > 0  # the whole account's balance, reported apart
    assert spent == {"a": 4 * 18, "b": 3 * 24}
    assert sum(spent.values()) == emulator.emulator.snapshot()["credits_spent"]
    catalog = Pipeline(instance).all()
    assert catalog["credits"].sum() == 4 * 18 + 3 * 24 and set(catalog["credits_source"]) == {"estimate"}


def test_kie_figure_is_used_where_the_response_carries_one(env, emulator, instance) -> None:
    emulator.config.credits_in_record = True
    emulator.config.cost_per_image = 7  # Kie's own figure differs from the price table's estimate
    pipe = Pipeline(instance)
    pipe.manifest()
    md = metadata(pipe.batch("cities"))
    assert md["credits_used"] == 14 and md["credits_from_kie"] == 2
    table = pd.read_parquet(env / "store" / "generated_images" / "cities.parquet")
    assert list(table["credits_source"]) == ["kie", "kie"]


# -- 7. every result of a task is kept ----------------------------------------------------------
@pytest.mark.parametrize("n", [1, 3])
def test_every_result_url_is_copied_with_its_index(env, emulator, instance, n) -> None:
    emulator.config.results_per_task = n
    pipe = Pipeline(instance)
    catalog = pipe.all()
    assert len(catalog) == 5 * n and created(emulator) == 5
    fox = catalog[catalog["id"] == "fox"]
    assert list(fox["result_index"]) == list(range(n))
    assert fox["sha256"].nunique() == n and fox["image_uri"].nunique() == n
    assert all(Path(u).exists() for u in fox["image_uri"])
    assert fox["credits"].notna().sum() == 1  # the task's credits on its first result only
    downloads = emulator.emulator.snapshot()["downloads"]
    rerun = metadata(pipe.batch("animals"))
    assert rerun["images_reused"] == 3 and rerun["results"] == 3 * n
    assert emulator.emulator.snapshot()["downloads"] == downloads and created(emulator) == 5
    checks = {e.check_name: e.passed for e in pipe.catalog().get_asset_check_evaluations()}
    # (The emulator draws a task's results alike, colours apart: no_near_duplicates may warn here.)
    assert checks["catalog_copies_match"] and checks["catalog_ids_unique"] and "no_near_duplicates" in checks


# -- 8. results past Kie's retention ------------------------------------------------------------
def test_expired_result_is_reported_and_regenerated_only_on_request(env, emulator, instance) -> None:
    emulator.config.result_url_ttl = 0.0
    emulator.config.retention = 0.0
    pipe = Pipeline(instance)
    pipe.manifest()
    md = metadata(pipe.batch("cities"))
    assert md["expired"] == 2 and md["images_succeeded"] == 0
    table = pd.read_parquet(env / "store" / "generated_images" / "cities.parquet")
    assert set(table["fail_code"]) == {"EXPIRED"} and "regenerate_expired" in table["fail_msg"].iloc[0]
    again = metadata(pipe.batch("cities"))  # by default nothing is paid for again
    assert again["expired"] == 2 and again["images_created"] == 0 and created(emulator) == 2
    emulator.config.result_url_ttl = emulator.config.retention = 3600.0
    regen = metadata(pipe.batch("cities", regenerate_expired=True))
    assert regen["regenerated_expired"] == 2 and regen["images_created"] == 2
    assert regen["images_succeeded"] == 2 and created(emulator) == 4


# -- 11. one schema ------------------------------------------------------------------------------
#: Catalog columns that are not request inputs: a manifest column with one of these names is refused.
_INPUTS = {"id", "prompt", "batch", "model", "aspect_ratio", "resolution", "output_format", "image_input"}


@pytest.mark.parametrize("column", sorted(set(CATALOG_DTYPES) - _INPUTS))
def test_every_catalog_column_is_reserved_in_the_manifest(column) -> None:
    df = pd.DataFrame([{"id": "a", "prompt": "p", column: "x"}])
    with pytest.raises(ManifestError) as info:
        validate_manifest(df)
    assert [p.field for p in info.value.problems] == [column]


def test_result_rows_descriptions_and_reserved_names_come_from_one_schema() -> None:
    row = {"id": "a", "batch": "b", "model": "m", "prompt": "p", "request_key": "k"}
    assert list(result_row(row, None, 0, state="fail")) == list(CATALOG_DTYPES)
    assert set(COLUMN_DESCRIPTIONS) == set(CATALOG_DTYPES)
    assert {"submitted_at", "result_urls", "input_json"} <= RESERVED_NAMES


# -- 12. progress while a batch runs -------------------------------------------------------------
def test_a_running_batch_logs_progress(env, emulator, instance) -> None:
    emulator.config.latency = (0.6, 0.8)
    pipe = Pipeline(instance)
    pipe.manifest()
    result = pipe.batch("animals", progress_interval_s=0.1)
    lines = [e.message for e in instance.all_logs(result.run_id) if "Progress:" in (e.message or "")]
    assert lines, "no progress line while the batch ran"
    assert "in flight" in lines[0] and "ETA" in lines[0] and "/3 rows settled" in lines[0]


# -- 13. the catalog's copy check lists, it does not read ----------------------------------------
def test_catalog_copy_check_finds_deleted_and_truncated_copies(env, emulator, instance) -> None:
    pipe = Pipeline(instance)
    catalog = pipe.all().set_index("id")
    Path(catalog.loc["fox", "image_uri"]).unlink()
    Path(catalog.loc["owl", "image_uri"]).write_bytes(b"short")
    result = pipe.catalog()
    check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "catalog_copies_match")
    assert not check.passed
    assert sorted(check.metadata["missing_or_wrong_size"].value) == ["fox", "owl"]


def test_partition_check_finds_a_corrupted_copy(env, emulator, instance) -> None:
    pipe = Pipeline(instance)
    catalog = pipe.all().set_index("id")
    path = Path(catalog.loc["cat", "image_uri"])
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    path.write_bytes(bytes(data))
    result = pipe.batch("animals")
    check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "durable_copies_match")
    assert not check.passed and check.metadata["mismatched"].value == ["cat"]


# -- 14. which failures Dagster retries -----------------------------------------------------------
def test_a_refused_key_mid_batch_stops_and_is_not_retried(env, emulator, instance) -> None:
    pipe = Pipeline(instance, limits={"create_limit": 1, "create_period_s": 0.3})
    pipe.manifest()
    emulator.config.faults.force_code = None
    original = emulator.config.api_key

    def revoke_after_first_create() -> None:
        import time

        deadline = time.monotonic() + 30
        while created(emulator) < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        emulator.config.api_key = "revoked"

    import threading

    threading.Thread(target=revoke_after_first_create, daemon=True).start()
    result = pipe.batch("animals", raise_on_error=False)
    emulator.config.api_key = original
    assert not result.success
    assert len(step_events(result, "STEP_START")) == 1 and not step_events(result, "STEP_UP_FOR_RETRY")
    assert created(emulator) == 1  # the 401 stopped submissions
    failure = step_events(result, "STEP_FAILURE")[0]
    assert "KIE_API_KEY" in failure.step_failure_data.error.message


def test_a_transient_outage_is_retried_by_dagster(env, emulator, instance) -> None:
    from kie_pipeline.assets import build_pipeline_assets

    # The shipped policy, waiting 0.1 s instead of 15 s between attempts.
    quick = build_pipeline_assets(retry_policy=dg.RetryPolicy(max_retries=3, delay=0.1))
    pipe = Pipeline(instance, quick.assets, retry={"max_attempts": 1})
    pipe.manifest()
    # The balance lookup and the first createTask meet a 500; then Kie is back.
    emulator.config.faults.force_code, emulator.config.faults.force_count = 500, 2
    result = pipe.batch("cities", max_consecutive_failures=1, submitters=1)
    assert result.success
    assert len(step_events(result, "STEP_UP_FOR_RETRY")) == 1
    assert metadata(result)["images_succeeded"] == 2 and created(emulator) == 2
