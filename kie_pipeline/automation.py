"""Automation: a sensor that follows the manifest, and a schedule for periodic generation."""

import hashlib
import json

import dagster as dg
import fsspec

from kie_pipeline.pipeline.manifest import ManifestError, load_manifest

from .assets import generated_images, prompt_manifest, snapshot_batches
from .partitions import batches
from .resources import DatasetResource


def _manifest_digest(path: str) -> str | None:
    try:
        with fsspec.open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except FileNotFoundError:
        return None


@dg.sensor(
    target=[prompt_manifest, generated_images],
    minimum_interval_seconds=30,
    # It starts paid runs: off until a user turns it on (UI, or `dagster sensor start manifest_sensor`).
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def manifest_sensor(
    context: dg.SensorEvaluationContext, dataset: DatasetResource
) -> dg.SensorResult | dg.SkipReason:
    """Watches the manifest: registers new batches, refreshes ``prompt_manifest`` when the file
    changes, then generates the batches that snapshot reports as new or changed.

    The two steps are separate ticks so a batch is generated only from a snapshot that holds it.
    """
    cursor = json.loads(context.cursor) if context.cursor else {}
    run_requests: list[dg.RunRequest] = []
    partition_requests: list[dg.AddDynamicPartitionsRequest] = []

    digest = _manifest_digest(dataset.manifest)
    if digest is None:
        return dg.SkipReason(f"No manifest at {dataset.manifest}.")
    if digest != cursor.get("manifest_sha256"):
        try:
            manifest = load_manifest(dataset.manifest)
        except ManifestError as exc:
            return dg.SkipReason(f"The manifest is invalid, nothing requested:\n{exc}")
        known = set(context.instance.get_dynamic_partitions(batches.name))
        new = sorted(set(manifest["batch"]) - known)
        if new:
            partition_requests.append(batches.build_add_request(new))
        run_requests.append(
            dg.RunRequest(run_key=f"manifest-{digest[:16]}", asset_selection=[prompt_manifest.key])
        )
        cursor["manifest_sha256"] = digest

    records = context.instance.fetch_materializations(prompt_manifest.key, limit=1).records
    event = records[0] if records else None
    if event is not None and event.storage_id > cursor.get("snapshot_storage_id", -1):
        materialization = event.asset_materialization
        changed = materialization.metadata.get("changed_batches") if materialization else None
        for batch in (changed.value if changed is not None else []) or []:
            run_requests.append(
                dg.RunRequest(
                    run_key=f"generate-{batch}-{event.storage_id}",
                    partition_key=batch,
                    asset_selection=[generated_images.key],
                )
            )
        cursor["snapshot_storage_id"] = event.storage_id

    return dg.SensorResult(
        run_requests=run_requests, dynamic_partitions_requests=partition_requests, cursor=json.dumps(cursor)
    )


@dg.schedule(
    cron_schedule="0 2 * * *", target=generated_images, default_status=dg.DefaultScheduleStatus.STOPPED
)
def nightly_generation(context: dg.ScheduleEvaluationContext, dataset: DatasetResource):
    """Every night, one run per batch of the manifest snapshot: retries failed rows and resumes
    unfinished ones. Rows already generated cost nothing (no createTask), so this is safe daily.

    Batches no longer in the snapshot (removed from the manifest) are skipped: their data stays.
    """
    day = context.scheduled_execution_time.strftime("%Y-%m-%d")
    current = snapshot_batches(dataset)
    registered = context.instance.get_dynamic_partitions(batches.name)
    keys = [key for key in registered if key in current]
    if not keys:
        return dg.SkipReason("No batch to generate: materialize prompt_manifest first.")
    return [dg.RunRequest(run_key=f"nightly-{day}-{key}", partition_key=key) for key in keys]
