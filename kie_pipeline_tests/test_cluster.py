"""The tested deployment (docs/cluster.md): deploy/dagster-postgres.yaml as shipped, run for real.

A real PostgreSQL server (the session's ``postgres`` fixture, a database of this test's own), the
store on a real S3 protocol server (moto on loopback, reached only through ``KIE_STORE_OPTIONS``),
the Kie emulator, and Dagster's own processes: ``dagster-webserver`` and ``dagster-daemon run`` on
the repo's ``workspace.yaml``. Batches are registered with ``dagster asset materialize``, generated
by a backfill launched through the webserver's GraphQL API (the mutation of the UI's backfill
dialog), and each run is a process of its own started by the daemon's queue: the stand-in for a
machine per run. ``KIE_COORDINATION_URL`` points the runs' rate limiter and batch lease at the same
PostgreSQL database.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import fsspec
import httpx
import pandas as pd
import pytest
from dagster._core.events import DagsterEventType
from dagster._core.execution.backfill import BulkActionStatus
from dagster._core.storage.dagster_run import RunRecord

from kie_pipeline.emulator import EmulatorConfig, EmulatorServer
from kie_pipeline.slots import run_pids

from .pipeline_helpers import Pipeline, write_manifest
from .postgres import PostgresServer
from .processes import Processes, wait_for

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "deploy" / "dagster-postgres.yaml"
BIN = Path(sys.executable).parent
#: The code location of the repo's workspace.yaml, and the repository every Definitions object makes.
LOCATION, REPOSITORY = "kie_pipeline.definitions", "__repository__"
#: The limit the test sets on the "kie" pool (as `dagster instance concurrency set kie 2` does): lower
#: than the shipped default of 4, so that three batches and a second run of one must wait for slots.
POOL_LIMIT = 2
BATCHES = ("b0", "b1", "b2")
ROWS_PER_BATCH = 3
PARTITION_TAG, RANGE_START_TAG = "dagster/partition", "dagster/asset_partition_range_start"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster_db(postgres: PostgresServer) -> dict[str, str]:
    """A database of this test's own on the session's server: DAGSTER_PG_* and KIE_COORDINATION_URL."""
    import psycopg2

    name = f"cluster_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(host=postgres.host, port=postgres.port, user=postgres.user, dbname=postgres.db)
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return {
        **postgres.env(),
        "DAGSTER_PG_DB": name,
        "KIE_COORDINATION_URL": f"postgresql://{postgres.user}@{postgres.host}:{postgres.port}/{name}",
    }


class Webserver:
    """The webserver's GraphQL API, as the UI calls it."""

    def __init__(self, url: str) -> None:
        self.url = url

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        answer = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60)
        answer.raise_for_status()
        body = answer.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def location_loaded(self) -> bool:
        try:
            data = self.graphql(
                "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
                "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
            )
        except httpx.HTTPError:
            return False  # not listening yet
        entries = {e["name"]: e for e in data["workspaceOrError"]["locationEntries"]}
        entry = entries.get(LOCATION)
        if entry and entry["loadStatus"] == "LOADED":
            loaded = entry["locationOrLoadError"]
            assert loaded["__typename"] == "RepositoryLocation", loaded
            return True
        return False

    def stop_sensor(self, name: str) -> None:
        """The UI's sensor toggle: from running (its default) to stopped."""
        selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": name}
        found = self.graphql(
            "query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { __typename "
            "... on Sensor { sensorState { id selectorId } } ... on PythonError { message } } }",
            s=selector,
        )["sensorOrError"]
        assert found["__typename"] == "Sensor", found
        state = found["sensorState"]
        stopped = self.graphql(
            "mutation($o: String, $s: String) { stopSensor(jobOriginId: $o, jobSelectorId: $s) { "
            "__typename ... on StopSensorMutationResult { instigationState { status } } "
            "... on PythonError { message } } }",
            o=state["id"],
            s=state["selectorId"],
        )["stopSensor"]
        assert stopped.get("instigationState", {}).get("status") == "STOPPED", stopped

    def launch_backfill(self, asset: str, partitions: list[str]) -> str:
        """``launchPartitionBackfill`` with the parameters of the UI's "Materialize partitions" dialog."""
        result = self.graphql(
            "mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) { "
            "__typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message stack } "
            "... on PartitionKeysNotFoundError { message } } }",
            p={
                "assetSelection": [{"path": [asset]}],
                "partitionNames": partitions,
                "fromFailure": False,
                "tags": [],
            },
        )["launchPartitionBackfill"]
        assert result["__typename"] == "LaunchBackfillSuccess", result
        return result["backfillId"]


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals in progress at any one time (an end and a start at the same instant: 0 overlap)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, step in edges:  # at equal times -1 sorts before +1
        current += step
        most = max(most, current)
    return most


def test_max_overlap_counts_runs_in_progress_together() -> None:
    assert _max_overlap([]) == 0
    assert _max_overlap([(0, 1)]) == 1
    assert _max_overlap([(0, 2), (1, 3), (2, 4)]) == 2  # the first ends as the third starts
    assert _max_overlap([(0, 10), (1, 2), (3, 4), (5, 9), (6, 7)]) == 3


def _batch(run: dg.DagsterRun) -> str | None:
    """The batch a run generates: a launch of one partition carries dagster/partition, a run of a
    backfill (generated_images has a backfill policy) the start of its range of one partition."""
    return run.tags.get(PARTITION_TAG) or run.tags.get(RANGE_START_TAG)


def _materialized(instance: dg.DagsterInstance, run_id: str) -> dict[str, Any]:
    """The metadata of the run's one materialization."""
    (event,) = instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)
    metadata = event.asset_materialization.metadata  # type: ignore[union-attr]
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


#: Measured at 276-300 s with the machine's load average at 14-17 on 2 cores (process start-ups dominate).
@pytest.mark.timeout(480)
def test_backfill_on_the_postgres_deployment(
    tmp_path: Path, cluster_db: dict[str, str], s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three batches backfilled from the webserver's API, run by the daemon in processes of their own,
    in the pool's limit; a second run of a batch (a one-batch backfill) waits behind the first and pays
    for nothing."""
    rows = [
        {"id": f"{batch}-{i}", "batch": batch, "prompt": f"image {i} of {batch}"}
        for batch in BATCHES
        for i in range(ROWS_PER_BATCH)
    ]
    write_manifest(str(tmp_path / "prompts.csv"), rows)
    home = tmp_path / "home"
    home.mkdir()
    (tmp_path / "tmp").mkdir()
    shutil.copyfile(SHIPPED, home / "dagster.yaml")  # as shipped, byte for byte
    emulator = EmulatorServer(EmulatorConfig(render_scale=1 / 16, latency=(1.0, 1.0)))
    store_options = {"endpoint_url": s3_endpoint}
    # This process's environment, inherited by every process it starts (and read by its own instance).
    for name, value in {
        **cluster_db,
        "DAGSTER_HOME": str(home),
        "KIE_API_KEY": emulator.config.api_key,
        "KIE_MANIFEST": str(tmp_path / "prompts.csv"),
        "KIE_STORE": "s3://datasets/kie",
        "KIE_STORE_OPTIONS": json.dumps(store_options),
        # Rate-limit windows and lock files of this test's processes, apart from any other test's.
        "TMPDIR": str(tmp_path / "tmp"),
    }.items():
        monkeypatch.setenv(name, value)
    processes = Processes(tmp_path)
    with emulator, contextlib.ExitStack() as cleanup:
        monkeypatch.setenv("KIE_BASE_URL", emulator.url)
        cleanup.callback(processes.stop_all)
        # This process opens the instance first: it creates the schema, once, before the CLI, the
        # webserver and the daemon connect at the same time.
        instance = cleanup.enter_context(dg.DagsterInstance.from_config(str(home)))
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        instance.event_log_storage.set_concurrency_slots("kie", POOL_LIMIT)

        port = _free_port()
        web = Webserver(f"http://127.0.0.1:{port}")
        webserver = [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port)]
        processes.start("webserver", *webserver, "-w", "workspace.yaml")
        # The user's way to register batches (meanwhile the webserver loads the code location).
        cli = [str(BIN / "dagster"), "asset", "materialize", "-m", LOCATION]
        manifest = processes.start("manifest", *cli, "--select", "prompt_manifest")
        assert manifest.wait(timeout=180) == 0, processes.log("manifest")
        assert sorted(instance.get_dynamic_partitions("batches")) == list(BATCHES)
        wait_for(web.location_loaded, 180, "the webserver to load the code location", every=0.5)
        # The catalog is materialized by the test below: the refresh automation (a 30-s sensor)
        # would also refresh it, at a moment the test does not control.
        web.stop_sensor("refresh_automation")

        # The backfill of the three batches, and a backfill of b0 alone launched with it: its run of
        # b0 must wait in the queue until the other's has ended (one run per batch at a time).
        backfills = [
            web.launch_backfill("generated_images", list(BATCHES)),
            web.launch_backfill("generated_images", ["b0"]),
        ]
        # Started after the backfills exist: its first iteration picks them up at once (then every 30 s).
        processes.start("daemon", str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml")

        def generation_runs() -> list[RunRecord]:
            records = instance.get_run_records(filters=dg.RunsFilter(tags={"dagster/backfill": backfills}))
            return sorted(records, key=lambda r: r.start_time or 0)

        def all_ended() -> bool:
            runs = generation_runs()
            return len(runs) == len(BATCHES) + 1 and all(r.dagster_run.is_finished for r in runs)

        wait_for(all_ended, 240, "the backfills' runs", every=1)
        generation = generation_runs()
        assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in generation), processes.log(
            "daemon"
        )
        # Meanwhile the daemon's next backfill iteration (every 30 s) marks the backfills complete.
        Pipeline(instance).catalog()

        def complete(backfill: str) -> bool:
            found = instance.get_backfill(backfill)
            assert found and found.status not in (BulkActionStatus.FAILED, BulkActionStatus.CANCELED)
            return found.status == BulkActionStatus.COMPLETED_SUCCESS

        wait_for(lambda: all(map(complete, backfills)), 90, "the backfills to complete", every=1)

        by_batch = {b: [r for r in generation if _batch(r.dagster_run) == b] for b in BATCHES}
        assert {b: len(runs) for b, runs in by_batch.items()} == {"b0": 2, "b1": 1, "b2": 1}

        # Each run in a process of its own, none of them the daemon, the webserver or this test.
        pids = [set(run_pids(instance, r.dagster_run.run_id)) for r in generation]
        ours = {os.getpid(), *(p.pid for p in processes.started)}
        assert all(pids) and not any(p & ours for p in pids)
        assert sum(map(len, pids)) == len(set().union(*pids))

        # The pool's limit held: never more generation runs in progress at once than it allows.
        intervals = [(r.start_time, r.end_time) for r in generation]
        assert all(start and end for start, end in intervals)
        assert _max_overlap(intervals) <= POOL_LIMIT  # type: ignore[arg-type]

        # The two runs of b0 were in the queue together; the queue started the second only once the
        # first had ended (one run per batch), and the second found every row done: it paid nothing.
        first, second = by_batch["b0"]
        assert first.end_time and second.start_time
        assert second.create_timestamp.timestamp() < first.end_time <= second.start_time
        done = [_materialized(instance, r.dagster_run.run_id) for r in (first, second)]
        assert [(m["images_created"], m["images_reused"]) for m in done] == [
            (ROWS_PER_BATCH, 0),
            (0, ROWS_PER_BATCH),
        ]

        # Every row created exactly once at Kie, across every process; no 429.
        stats = emulator.emulator.snapshot()
        assert stats["created"] == len(rows)
        assert stats["rate_limited"] == {}

    # Results and the catalog on S3.
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **store_options)
    assert len(fs.ls("datasets/kie/images")) == len(rows)
    catalog = pd.read_parquet("s3://datasets/kie/image_catalog.parquet", storage_options=store_options)
    assert sorted(catalog["id"]) == sorted(r["id"] for r in rows)
    assert (catalog["state"] == "success").all()
    assert catalog["image_uri"].str.startswith("s3://datasets/kie/images/").all()
