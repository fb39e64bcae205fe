"""The account's rate limit shared by runs on the tested deployment (deploy/dagster-postgres.yaml).

    .venv/bin/python benchmarks/cluster.py                     # scenarios A, B, C-A, C-B
    .venv/bin/python benchmarks/cluster.py --scenarios A C-A   # some of them

Every scenario starts from nothing: a new database on a PostgreSQL server started here (the Dagster
instance from the shipped deploy/dagster-postgres.yaml, and the coordination tables), the emulator
as a process at Kie's limits (20 createTask per 10 s, 10 polls per s) with fixed 5-s tasks, and a
manifest of 4 batches of 40 rows. The store is a local folder (what is measured is the pacing of
createTask, not the store; tests/test_cluster.py runs this deployment on S3).

  A    shared limiter (KIE_COORDINATION_URL): one backfill of the 4 batches, launched through the
       webserver's GraphQL API, run by `dagster-daemon run` (queued runs, each a process).
  B    shared limiter: 2 runs launched (the UI's "Materialize" of a partition), 2 more 30 s later.
  C-A  today's static share for comparison: each run KIE_CREATE_LIMIT=5 and KIE_POLL_LIMIT=2 (20/P
       and 10/P for P = 4) with a limiter of its own (no coordination URL; a temporary folder of its
       own, as on a machine of its own). Per-run environments cannot go through one daemon, so these
       runs are `dagster asset materialize` processes on the same instance; all 4 at once.
  C-B  as C-A, 2 runs at once and 2 more 30 s later.

From the first createTask to the last, as the emulator saw them arrive: the calls, the elapsed time,
the utilization (calls / (20 per 10 s x elapsed), as issue 13 defines it, which a client that sends
each window's 20 at once can push past 100%; and calls / the most that fit in that interval,
20 x (floor(elapsed / 10) + 1), which no client can pass), the most arrivals in any 10-s window
(must be <= 20), 429s (must be 0), and that no batch ran twice (runs per batch, tasks created).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pandas as pd
from _harness import emulator_process, free_port

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # kie_pipeline_tests.postgres: the tests' throwaway PostgreSQL server

from kie_pipeline_tests.postgres import PostgresServer, running_postgres  # noqa: E402
from kie_pipeline_tests.processes import Processes, wait_for  # noqa: E402

SHIPPED = REPO / "deploy" / "dagster-postgres.yaml"
BIN = Path(sys.executable).parent
LOCATION, REPOSITORY = "kie_pipeline.definitions", "__repository__"
BATCHES, ROWS_PER_BATCH = ("b0", "b1", "b2", "b3"), 40
LIMIT, PERIOD = 20, 10.0
#: Kie's limits, fixed 5-s tasks, small images (rendering is not what is measured).
EMULATOR = ("--create-limit", "20", "--create-period", "10", "--poll-limit", "10", "--latency", "5,5")
EMULATOR_IMAGES = ("--render-scale", "0.05")
#: How much later the second half of the runs starts in scenarios B and C-B.
LATE_S = 30.0
#: generated_images's checks (kie_pipeline/assets.py), selected with it in a launch of one partition.
CHECKS = ("durable_copies_match", "failure_rate_below_threshold")
PARTITION_TAG, RANGE_START_TAG = "dagster/partition", "dagster/asset_partition_range_start"


@dataclass
class Result:
    """One scenario's numbers."""

    name: str
    calls: int
    elapsed_s: float
    utilization: float
    of_possible: float
    max_in_window: int
    rate_limited: dict[str, int]
    runs_per_batch: dict[str, int]
    created: int
    wall_s: float
    #: The longest time between two createTask arrivals: a stretch when no run was creating (runs
    #: still starting, or ended) shows here, not as a fault of the limiter.
    longest_gap_s: float


class GraphQL:
    """The webserver's API, called as the UI calls it."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, query: str, **variables: Any) -> dict[str, Any]:
        answer = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=120)
        answer.raise_for_status()
        body = answer.json()
        if "errors" in body:
            raise RuntimeError(body["errors"])
        return body["data"]

    def loaded(self) -> bool:
        try:
            data = self("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }")
        except httpx.HTTPError:
            return False
        return any(
            e["name"] == LOCATION and e["loadStatus"] == "LOADED"
            for e in data["workspaceOrError"]["locationEntries"]
        )

    def stop_sensor(self, name: str) -> None:
        selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": name}
        state = self(
            "query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor { "
            "sensorState { id selectorId } } } }",
            s=selector,
        )["sensorOrError"]["sensorState"]
        self(
            "mutation($o: String, $s: String) { stopSensor(jobOriginId: $o, jobSelectorId: $s) { __typename } }",
            o=state["id"],
            s=state["selectorId"],
        )

    def backfill(self, partitions: list[str]) -> str:
        result = self(
            "mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) { "
            "__typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }",
            p={
                "assetSelection": [{"path": ["generated_images"]}],
                "partitionNames": partitions,
                "fromFailure": False,
            },
        )["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise RuntimeError(result)
        return result["backfillId"]

    def materialize(self, partition: str) -> str:
        """The UI's "Materialize" of one partition: a queued run tagged with it."""
        result = self(
            "mutation($e: ExecutionParams!) { launchPipelineExecution(executionParams: $e) { __typename "
            "... on LaunchRunSuccess { run { runId } } ... on PythonError { message } "
            "... on InvalidSubsetError { message } } }",
            e={
                "selector": {
                    "repositoryLocationName": LOCATION,
                    "repositoryName": REPOSITORY,
                    "pipelineName": "__ASSET_JOB",
                    "assetSelection": [{"path": ["generated_images"]}],
                    # With its checks, as the UI selects them: they run in the asset's step (all or
                    # none: Dagster refuses the asset without them).
                    "assetCheckSelection": [
                        {"assetKey": {"path": ["generated_images"]}, "name": c} for c in CHECKS
                    ],
                },
                "executionMetadata": {"tags": [{"key": PARTITION_TAG, "value": partition}]},
            },
        )["launchPipelineExecution"]
        if result["__typename"] != "LaunchRunSuccess":
            raise RuntimeError(result)
        return result["run"]["runId"]


def create_database(server: PostgresServer) -> str:
    import psycopg2

    name = f"bench_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(host=server.host, port=server.port, user=server.user, dbname=server.db)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return name


def batch_of(run: dg.DagsterRun) -> str | None:
    """A launch of one partition carries dagster/partition; a backfill's run the start of its range."""
    return run.tags.get(PARTITION_TAG) or run.tags.get(RANGE_START_TAG)


def max_in_window(times: list[float], period: float = PERIOD) -> int:
    """The most arrivals in any window [t, t + period)."""
    most, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= period:
            start += 1
        most = max(most, end - start + 1)
    return most


@contextlib.contextmanager
def deployment(
    server: PostgresServer, work: Path, emulator_url: str, shared: bool
) -> Iterator[dict[str, str]]:
    """DAGSTER_HOME with the shipped file, a new database, the manifest registered; the environment."""
    home = work / "home"
    home.mkdir(parents=True)
    shutil.copyfile(SHIPPED, home / "dagster.yaml")
    rows = pd.DataFrame(
        [
            {"id": f"{b}-{i:03d}", "batch": b, "prompt": f"cluster benchmark {b} image {i}"}
            for b in BATCHES
            for i in range(ROWS_PER_BATCH)
        ]
    )
    rows.to_csv(work / "prompts.csv", index=False)
    db = create_database(server)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KIE_")},
        **server.env(),
        "DAGSTER_PG_DB": db,
        "DAGSTER_HOME": str(home),
        "KIE_API_KEY": "emulator-key",
        "KIE_BASE_URL": emulator_url,
        "KIE_MANIFEST": str(work / "prompts.csv"),
        "KIE_STORE": str(work / "store"),
        "TMPDIR": str(work / "tmp"),
    }
    (work / "tmp").mkdir()
    if shared:
        env["KIE_COORDINATION_URL"] = f"postgresql://{server.user}@{server.host}:{server.port}/{db}"
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # this process's instance and the manifest's materialization read it too
    try:
        yield env
    finally:
        os.environ.clear()
        os.environ.update(saved)


def register_batches(instance: dg.DagsterInstance) -> None:
    """prompt_manifest materialized in this process (the batches become partitions)."""
    from kie_pipeline.definitions import ASSETS, build_resources

    dg.materialize(ASSETS, selection=["prompt_manifest"], resources=build_resources(), instance=instance)
    assert sorted(instance.get_dynamic_partitions("batches")) == list(BATCHES)


def generation_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return [r for r in instance.get_runs() if batch_of(r)]


def run_scenario(name: str, server: PostgresServer, work: Path) -> Result:
    shared = not name.startswith("C")
    late = name.endswith("B")
    started = time.monotonic()
    procs = Processes(work)
    with (
        emulator_process(*EMULATOR, *EMULATOR_IMAGES) as url,
        deployment(server, work, url, shared) as env,
        dg.DagsterInstance.get() as instance,
    ):
        try:
            register_batches(instance)
            if shared:
                port = free_port()
                api = GraphQL(f"http://127.0.0.1:{port}")
                web = [
                    str(BIN / "dagster-webserver"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-w",
                    "workspace.yaml",
                ]
                procs.start("webserver", *web, env=env)
                wait_for(api.loaded, 300, "the webserver", every=1.0)
                # Its catalog refresh would start a run in the middle of the measurement.
                api.stop_sensor("refresh_automation")
                if late:
                    for b in BATCHES[:2]:
                        api.materialize(b)
                else:
                    api.backfill(list(BATCHES))
                procs.start("daemon", str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml", env=env)
                if late:
                    time.sleep(LATE_S)
                    for b in BATCHES[2:]:
                        api.materialize(b)
            else:
                share = {
                    "KIE_CREATE_LIMIT": str(LIMIT // len(BATCHES)),
                    "KIE_POLL_LIMIT": str(10 // len(BATCHES)),
                }
                cli = [
                    str(BIN / "dagster"),
                    "asset",
                    "materialize",
                    "-m",
                    LOCATION,
                    "--select",
                    "generated_images",
                ]
                for i, b in enumerate(BATCHES):
                    if late and i == 2:
                        time.sleep(LATE_S)
                    own_tmp = work / f"tmp-{b}"  # a limiter file of its own, as on a machine of its own
                    own_tmp.mkdir()
                    procs.start(b, *cli, "--partition", b, env={**env, **share, "TMPDIR": str(own_tmp)})

            def all_done() -> bool:
                runs = generation_runs(instance)
                return len(runs) >= len(BATCHES) and all(r.is_finished for r in runs)

            wait_for(all_done, 1200, f"scenario {name}'s runs", every=2)
            runs = generation_runs(instance)
            failed = [r.run_id for r in runs if r.status != dg.DagsterRunStatus.SUCCESS]
            if failed:
                raise RuntimeError(f"{name}: runs failed: {failed} (logs in {work})")
            stats = httpx.get(f"{url}/emulator/stats").json()
            times = sorted(httpx.get(f"{url}/emulator/arrivals").json()["createTask"])
            (work / "arrivals.json").write_text(json.dumps(times))
        finally:
            procs.stop_all()
    elapsed = times[-1] - times[0]
    per_batch = {b: sum(1 for r in runs if batch_of(r) == b) for b in BATCHES}
    return Result(
        name=name,
        calls=len(times),
        elapsed_s=elapsed,
        utilization=len(times) / (LIMIT / PERIOD * elapsed),
        of_possible=len(times) / (LIMIT * (math.floor(elapsed / PERIOD) + 1)),
        max_in_window=max_in_window(times),
        rate_limited=stats["rate_limited"],
        runs_per_batch=per_batch,
        created=stats["created"],
        wall_s=time.monotonic() - started,
        longest_gap_s=max((b - a for a, b in itertools.pairwise(times)), default=0.0),
    )


def report(results: list[Result]) -> None:
    rows = len(BATCHES) * ROWS_PER_BATCH
    print(
        f"cluster, {len(BATCHES)} batches x {ROWS_PER_BATCH} rows, deploy/dagster-postgres.yaml, emulator at "
        f"{LIMIT} createTask/{PERIOD:.0f} s and 10 polls/s, fixed 5 s tasks"
    )
    header = (
        f"{'scenario':<9}{'calls':>6}{'elapsed':>9}{'util':>7}{'of max':>8}{'max/10s':>8}"
        f"{'429s':>6}{'created':>9}{'runs/batch':>12}{'gap':>7}{'wall':>7}"
    )
    print(header)
    for r in results:
        twice = "1 each" if set(r.runs_per_batch.values()) == {1} else json.dumps(r.runs_per_batch)
        print(
            f"{r.name:<9}{r.calls:>6}{r.elapsed_s:>8.1f}s{r.utilization:>7.1%}{r.of_possible:>8.1%}"
            f"{r.max_in_window:>8}{sum(r.rate_limited.values()):>6}{r.created:>5}/{rows:<3}{twice:>12}"
            f"{r.longest_gap_s:>6.1f}s{r.wall_s:>6.0f}s"
        )
    print("util: calls / (20 per 10 s x elapsed); of max: calls / (20 x (floor(elapsed/10) + 1)),")
    print("the most any client can send in that interval; max/10s: most arrivals in any 10-s window;")
    print("429s: createTask and recordInfo answered 429; created: tasks the emulator created / rows;")
    print("gap: the longest time without a createTask arrival; wall: the scenario, start-ups included.")
    print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")
    for r in results:
        if r.rate_limited:
            print(f"  {r.name} 429s: {r.rate_limited}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scenarios", nargs="+", default=["A", "B", "C-A", "C-B"], choices=["A", "B", "C-A", "C-B"]
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs) and print it")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kie-cluster-bench-"))
    print(f"load average (1, 5, 15 min) at the start: {os.getloadavg()}", file=sys.stderr)
    results = []
    try:
        with running_postgres() as server:
            for name in args.scenarios:
                results.append(run_scenario(name, server, work / name))
                # As each ends, so that a later failure does not lose it.
                print(f"  {name} done: {results[-1]}", file=sys.stderr, flush=True)
    finally:
        if args.keep:
            print(f"work folder: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(results)


if __name__ == "__main__":
    main()
