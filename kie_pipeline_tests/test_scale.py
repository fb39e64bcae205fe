"""Scale: several partitions in parallel processes share Kie's limit; the store on S3 (moto server),
configured through ``KIE_STORE_OPTIONS``."""

from __future__ import annotations

import json
import subprocess

import dagster as dg
import pandas as pd
import pytest

from .pipeline_helpers import SAMPLE, Pipeline, metadata, spawn_partition, write_manifest


def test_four_partitions_in_parallel_processes_share_the_rate_limit(env, emulator) -> None:
    """Four runs at once, each allowed the whole limit: the shared window keeps the account within it."""
    emulator.config.create_limit, emulator.config.create_period = 4, 1.0
    emulator.config.latency = (0.1, 0.5)
    rows = [
        {"id": f"b{b}-{i}", "batch": f"b{b}", "prompt": f"batch {b} image {i}"}
        for b in range(4)
        for i in range(6)
    ]
    write_manifest(str(env / "prompts.csv"), rows)
    with dg.DagsterInstance.local_temp(tempdir=str(env / "home")) as instance:
        Pipeline(instance).manifest()
        options = {
            "limits": {"create_limit": 4, "create_period_s": 1.0}, "poll": {"initial_s": 0.05, "max_s": 0.2},
            "rate_limit_dir": str(env / "limits"),
        }  # fmt: skip
        procs = [
            spawn_partition(str(env / "home"), f"b{b}", options, stderr=subprocess.PIPE) for b in range(4)
        ]
        errors = [p.communicate(timeout=240)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0, 0], errors[0][-2000:]
        stats = emulator.emulator.snapshot()
        assert stats["created"] == 24  # every row once: nothing paid twice
        assert stats["rate_limited"].get("createTask", 0) == 0  # paced together, no 429
        # Arrivals, not acceptances (the server refuses what is over the limit before counting it).
        assert stats["max_create_arrivals_in_window"] <= 4
        Pipeline(instance).catalog()
    catalog = pd.read_parquet(env / "store" / "image_catalog.parquet")
    assert len(catalog) == 24 and (catalog["state"] == "success").all() and catalog["id"].is_unique


@pytest.mark.parametrize(
    ("value", "problem"),
    [("endpoint_url=http://x", "not valid JSON"), ('["endpoint_url"]', "not an array"), ("null", "not null")],
)
def test_kie_store_options_that_are_not_a_json_object_are_refused_by_name(
    monkeypatch, value, problem
) -> None:
    from kie_pipeline.definitions import build_resources

    monkeypatch.setenv("KIE_STORE_OPTIONS", value)
    with pytest.raises(ValueError, match=f"KIE_STORE_OPTIONS .*{problem}") as caught:
        build_resources()
    assert 'e.g. KIE_STORE_OPTIONS=\'{"endpoint_url"' in str(caught.value)


def test_kie_store_options_reach_records_copies_and_tables_through_one_resource(
    tmp_path, monkeypatch
) -> None:
    from kie_pipeline.definitions import build_resources

    monkeypatch.setenv("KIE_STORE", "memory://options-test/store")
    monkeypatch.setenv("KIE_STORE_OPTIONS", '{"auto_mkdir": true}')
    resources = build_resources()
    store = resources["dataset"].store
    assert resources["parquet_io"].store is store  # the IO manager has no copy of its own
    assert store.storage_options == {"auto_mkdir": True}
    assert resources["dataset"].task_store().fs.storage_options == {"auto_mkdir": True}
    assert store.path("image_catalog.parquet").fs.storage_options == {"auto_mkdir": True}
    monkeypatch.setenv("KIE_STORE_OPTIONS", "")
    assert build_resources()["dataset"].store.storage_options == {}


def test_store_on_s3_via_kie_store_options_images_records_partitions_and_catalog(
    tmp_path, emulator, s3_endpoint, monkeypatch
) -> None:
    """The whole pipeline on S3, whose endpoint reaches the store only through KIE_STORE_OPTIONS."""
    import fsspec

    write_manifest(str(tmp_path / "prompts.csv"), SAMPLE)
    monkeypatch.setenv("KIE_API_KEY", emulator.config.api_key)
    monkeypatch.setenv("KIE_BASE_URL", emulator.url)
    monkeypatch.setenv("KIE_MANIFEST", str(tmp_path / "prompts.csv"))
    monkeypatch.setenv("KIE_STORE", "s3://datasets/kie")
    monkeypatch.setenv("KIE_STORE_OPTIONS", json.dumps({"endpoint_url": s3_endpoint}))
    (tmp_path / "home").mkdir()
    with dg.DagsterInstance.local_temp(tempdir=str(tmp_path / "home")) as instance:
        pipe = Pipeline(instance)
        pipe.manifest()
        for key in ("animals", "cities"):
            pipe.batch(key)
        result = pipe.catalog()
        assert all(e.passed for e in result.get_asset_check_evaluations())  # sha256 re-read from S3
        again = metadata(pipe.batch("animals"))
    fs = fsspec.filesystem("s3", endpoint_url=s3_endpoint, skip_instance_cache=True)
    assert len(fs.ls("datasets/kie/images")) == 5
    assert len(fs.ls("datasets/kie/tasks")) == 5
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("datasets/kie/generated_images")) == [
        "animals.parquet",
        "cities.parquet",
    ]
    # The catalog is a folder of one Parquet file per batch, read as one table.
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls("datasets/kie/image_catalog.parquet")) == [
        "_catalog_state.json",
        "part-animals.parquet",
        "part-cities.parquet",
    ]
    catalog = pd.read_parquet("datasets/kie/image_catalog.parquet", filesystem=fs)
    assert len(catalog) == 5 and catalog["image_uri"].str.startswith("s3://datasets/kie/images/").all()
    assert again["images_created"] == 0 and again["images_reused"] == 3
    assert emulator.emulator.snapshot()["created"] == 5
