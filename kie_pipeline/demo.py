"""``make demo``: the sample manifest end to end against the local emulator.

Starts the emulator on a loopback port, materializes ``prompt_manifest``, every partition of
``generated_images`` and ``image_catalog`` (with its checks) on a persistent Dagster instance
(``DAGSTER_HOME``), then prints where the catalog and the images are. Run it again: every image is
reused and no task is created.
"""

import contextlib
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator

import dagster as dg

from kie_pipeline.emulator import EmulatorConfig, EmulatorServer
from kie_pipeline.pipeline.catalog_dataset import read_catalog
from kie_pipeline.pipeline.manifest import load_manifest
from kie_pipeline.pipeline.record import RecordStatus, RequestRecord
from kie_pipeline.pipeline.store import TaskStore

#: Dagster's console logger at WARNING: the demo prints its own summary.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

#: Outcomes after which this run does nothing more for a row (success counts once its copies exist).
SETTLED = frozenset(
    {
        RecordStatus.FAIL,
        RecordStatus.REFUSED,
        RecordStatus.TIMEOUT,
        RecordStatus.DOWNLOAD_FAILED,
        RecordStatus.EXPIRED,
        RecordStatus.CORRUPT,
    }
)

#: ``progress(settled, total)``: rows of the manifest settled so far, of all its rows.
Progress = Callable[[int, int], None]


def settled(record: RequestRecord) -> bool:
    """True when the run is done with the record's row: copied, or failed for good."""
    if record.status == RecordStatus.SUCCESS:
        return bool(record.images) and all(record.images)
    return record.status in SETTLED


@contextlib.contextmanager
def watch_settled(
    store: TaskStore, keys: list[str], progress: Progress, interval: float = 0.5
) -> Iterator[None]:
    """Report ``progress(settled, len(keys))`` every ``interval`` seconds from the store's task records
    (read only: a record being written or damaged is left alone), and once more on the way out."""
    stop = threading.Event()

    def report() -> None:
        records = store.load_many(keys, set_aside=False)
        progress(sum(settled(r) for r in records.values()), len(keys))

    def loop() -> None:
        while not stop.wait(interval):
            report()

    report()
    thread = threading.Thread(target=loop, name="demo-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        report()


def main(*, latency: tuple[float, float] = (0.5, 2.5), progress: Progress | None = None) -> int:
    """Run the demo; returns 0 when every row of the catalog succeeded, else 1.

    ``latency``: the emulator's MIN, MAX seconds per task. ``progress``, when given, is told how many
    rows are settled while the batches generate (``kie-pipeline demo`` draws a bar with it).
    """
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(EmulatorServer(EmulatorConfig(latency=latency, render_scale=1.0)))
        # The demo always runs offline: the emulator's URL and key, whatever the shell has.
        os.environ["KIE_BASE_URL"] = server.url
        os.environ["KIE_API_KEY"] = server.config.api_key
        # The sample's reference image (data/refs/) is uploaded to the emulator's File Upload API.
        os.environ["KIE_UPLOAD_URL"] = server.url
        from kie_pipeline.definitions import ASSET_CHECKS, ASSETS, build_resources
        from kie_pipeline.receiver import ReceiverServer, build_receiver

        assets, checks = ASSETS, ASSET_CHECKS
        # Callbacks go to a receiver of the demo's own (Suno requires a callBackUrl): the emulator
        # posts each task's end there, so the demo polls only as a fallback.
        for var in ("KIE_CALLBACK_URL", "KIE_CALLBACK_SECRET"):
            os.environ.pop(var, None)
        secret = secrets.token_hex(16)
        store = build_resources()["dataset"].task_store()
        receiver = stack.enter_context(ReceiverServer(build_receiver(store, secret=secret)))
        resources = build_resources(
            poll={"initial_s": 0.5}, callback_url=receiver.url, callback_secret=secret
        )
        instance = dg.DagsterInstance.get()
        started = time.monotonic()
        print(f"Kie emulator on {server.url}; Dagster instance at {os.environ.get('DAGSTER_HOME')}")

        result = dg.materialize(
            assets, selection=["prompt_manifest"], resources=resources, instance=instance, run_config=QUIET
        )
        manifest_md = result.asset_materializations_for_node("prompt_manifest")[0].metadata
        keys = instance.get_dynamic_partitions("batches")
        print(f"prompt_manifest: {manifest_md['rows'].value} rows in batches {', '.join(keys)}")

        created = reused = 0
        # The bar (if any) follows the task records while the batches generate.
        watching: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if progress is not None:
            rows = load_manifest(resources["dataset"].manifest)
            watching = watch_settled(store, list(rows["request_key"]), progress)
        with watching:
            for key in keys:
                res = dg.materialize(
                    assets,
                    selection=["generated_images"],
                    partition_key=key,
                    resources=resources,
                    instance=instance,
                    run_config=QUIET,
                )
                md = res.asset_materializations_for_node("generated_images")[0].metadata
                created += md["images_created"].value
                reused += md["images_reused"].value
                print(
                    f"  generated_images[{key}]: {md['images_created'].value} created, "
                    f"{md['images_reused'].value} reused, {md['images_failed'].value} failed, "
                    f"{md['polls'].value} polls, {md['elapsed_s'].value} s"
                )
        dg.materialize(
            [*assets, *checks],
            selection=["image_catalog"],
            resources=resources,
            instance=instance,
            run_config=QUIET,
        )

        store = resources["dataset"].store.url
        # The catalog is a folder of one Parquet file per batch, read as one table.
        folder = resources["dataset"].store.path("image_catalog.parquet")
        catalog = read_catalog(folder.fs, folder.path)
        print()
        print(f"Catalog: {store}/image_catalog.parquet/ ({len(catalog)} rows; one Parquet file per batch)")
        print(f"Images:  {store}/images/")
        columns = ["id", "batch", "model", "state", "media_type", "width", "height", "duration_s", "format"]
        print(catalog[columns].to_string(index=False))
        counts = catalog["state"].value_counts().to_dict()
        print(f"\nBy state: {counts}; {time.monotonic() - started:.1f} s in all.")
        if created == 0:
            print(f"Everything was already generated: {reused} images reused, 0 new Kie tasks created.")
        else:
            print(f"{created} new Kie tasks, {reused} reused. Run `make demo` again: 0 new tasks.")
        return 0 if counts.get("success", 0) == len(catalog) else 1


if __name__ == "__main__":
    sys.exit(main())
