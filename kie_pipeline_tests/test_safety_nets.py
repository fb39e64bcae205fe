"""Each safety net the README promises, proven by a case that breaks without it."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kie_pipeline.emulator import FAIL_MARKER

from .pipeline_helpers import SAMPLE, Pipeline, metadata, write_manifest


def created(emulator) -> int:
    return emulator.emulator.snapshot()["created"]


def test_success_whose_copy_was_deleted_is_copied_again_not_reused(env, emulator, instance) -> None:
    pipe = Pipeline(instance)
    catalog = pipe.all().set_index("id")
    lost = Path(catalog.loc["owl", "image_uri"])
    lost.unlink()
    downloads = emulator.emulator.snapshot()["downloads"]
    md = metadata(pipe.batch("animals"))
    assert md["images_reused"] == 2 and md["images_resumed"] == 1 and md["images_created"] == 0
    assert lost.exists() and emulator.emulator.snapshot()["downloads"] == downloads + 1
    assert created(emulator) == 5  # the copy came back without paying again


def test_consecutive_failures_stop_submissions(env, emulator, instance) -> None:
    rows = [{"id": f"r{i}", "batch": "bad", "prompt": f"broken {i} {FAIL_MARKER}"} for i in range(8)]
    write_manifest(str(env / "prompts.csv"), rows)
    pipe = Pipeline(instance, limits={"create_limit": 1, "create_period_s": 0.2})  # one at a time, in order
    pipe.manifest()
    emulator.config.latency = (0.0, 0.0)
    result = pipe.batch("bad", raise_on_error=False, max_consecutive_failures=3, submitters=1)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "3 consecutive failures" in failure.step_failure_data.error.message
    assert created(emulator) < 8  # stopped before paying for every bad row
    # Generation failures are not an outage: Dagster does not retry them.
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]


def test_max_failure_rate_is_the_threshold_of_the_check(env, emulator, instance) -> None:
    records = [dict(r) for r in SAMPLE]
    records[0]["prompt"] = f"A red fox {FAIL_MARKER}"  # 1 of the 3 animals fails
    write_manifest(str(env / "prompts.csv"), records)
    pipe = Pipeline(instance)
    pipe.manifest()
    for threshold, passed in ((0.5, True), (0.3, False)):
        result = pipe.batch("animals", max_failure_rate=threshold)
        check = next(
            e for e in result.get_asset_check_evaluations() if e.check_name == "failure_rate_below_threshold"
        )
        assert check.passed is passed and check.metadata["failure_rate"].value == 1 / 3
    table = pd.read_parquet(env / "store" / "generated_images" / "animals.parquet")
    assert (table["state"] == "fail").sum() == 1
