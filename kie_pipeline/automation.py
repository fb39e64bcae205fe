"""Automation of one pipeline, the declarative way.

- ``manifest_file``: the manifest as an external asset. The ``manifest_sensor`` reports a new
  version of it (a materialization whose data version is the file's sha256) when the file changes;
  it starts no run, and reads the file only when its size or modification stamp changed.
- ``prompt_manifest`` follows ``manifest_file`` and ``image_catalog`` follows every batch of
  ``generated_images`` (an :class:`~dagster.AutomationCondition` each, evaluated by the
  ``refresh_automation`` sensor). Neither spends credits: on by default.
- ``generated_images`` follows ``prompt_manifest``: a new batch, or a snapshot that changed, starts
  one run per batch (rows already generated cost nothing: no createTask). It spends credits, so its
  sensor, ``generation_automation``, starts stopped, as does the ``nightly_generation`` schedule.

Batches become partitions when ``prompt_manifest`` materializes them (never earlier), so a batch is
never generated from a snapshot that does not hold it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import dagster as dg
import fsspec

from .assets import DEFAULT_PIPELINE, PipelineAssets, snapshot_batches
from .names import PipelineNames
from .resources import DatasetResource

AC = dg.AutomationCondition

#: Missing on the sensor's first evaluation (eager alone waits for the next change): a new
#: deployment materializes what it never had, once its inputs exist.
_FIRST_TIME = AC.missing().newly_true() & ~AC.any_deps_missing() & ~AC.in_progress()
#: prompt_manifest: when the manifest file has a new version, or when it was never materialized.
MANIFEST_CONDITION = AC.eager() | _FIRST_TIME
#: generated_images: each batch when it appears (or was never generated when the sensor is turned
#: on) and whenever the snapshot changes; never while a run or backfill of it is in progress.
GENERATION_CONDITION = AC.eager() | _FIRST_TIME
#: image_catalog: after any batch (or the snapshot) is materialized, once nothing upstream is in
#: progress (so a backfill ends with one refresh, not one per batch). Batches never generated do not
#: hold it back. (Dagster's eager, whose any_deps_missing would wait for every batch ever registered.)
CATALOG_CONDITION = AC.eager().without(~AC.any_deps_missing()).with_label("eager_allow_missing_batches")


@dataclass(frozen=True)
class AutomationSettings:
    """Which automation starts running on a new deployment (each can be toggled in the UI later)."""

    #: The manifest sensor and the refresh of prompt_manifest and image_catalog (no credits).
    refresh: bool = True
    #: generated_images follows the manifest (spends credits: off until a user turns it on).
    generate: bool = False
    #: The nightly schedule, which retries failed rows and resumes unfinished ones (spends credits).
    nightly: bool = False
    #: When the nightly schedule runs (cron, the Dagster instance's time zone).
    nightly_cron: str = "0 2 * * *"


def manifest_file_spec(names: PipelineNames, template: bool = False) -> dg.AssetSpec:
    """The file the manifest comes from, as an external asset upstream of the manifest's asset: the
    manifest file itself (CSV or Parquet), or with ``template`` the YAML template it is expanded from."""
    what = "manifest's template (YAML)" if template else "manifest file (CSV or Parquet)"
    return dg.AssetSpec(
        names.key("manifest_template" if template else "manifest_file"),
        group_name=names.group,
        kinds={"yaml" if template else "csv"},
        description=f"The {what}. The manifest sensor records a new version (data version: its "
        "sha256) each time the file changes.",
    )


def _signature(fs: fsspec.AbstractFileSystem, path: str) -> str | None:
    """Size and modification stamp of ``path`` from one metadata call (a stat, an S3 HEAD), or
    None when the filesystem gives no stamp (the file is then hashed on every tick)."""
    info = fs.info(path)
    stamp = next((info[k] for k in ("ETag", "mtime", "LastModified", "last_modified") if info.get(k)), None)
    return None if stamp is None else f"{info.get('size')}:{stamp}"


def _read_cursor(cursor: str | None) -> tuple[str | None, str | None]:
    """(signature, sha256) from the sensor's cursor; a bare digest is the cursor of older versions."""
    if not cursor:
        return None, None
    try:
        seen = json.loads(cursor)
    except ValueError:
        return None, cursor
    return (seen.get("signature"), seen.get("sha256")) if isinstance(seen, dict) else (None, cursor)


def _check(path: str, cursor: str | None) -> tuple[str | None, str | None, bool]:
    """(signature, sha256, changed) of the file at ``path``; sha256 None when it does not exist.

    The sensor ticks every 30 s and a manifest may hold millions of rows: the file is read and
    hashed only when its size or stamp moved since the last tick (the data version stays the hash,
    so a file rewritten with the same content is no new version).
    """
    fs, fs_path = fsspec.core.url_to_fs(path)
    old_signature, old_digest = _read_cursor(cursor)
    try:
        signature = _signature(fs, fs_path)
        if signature is not None and signature == old_signature and old_digest:
            return signature, old_digest, False
        with fs.open(fs_path, "rb") as fh:
            digest = hashlib.sha256()
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        return None, None, False
    return signature, digest.hexdigest(), digest.hexdigest() != old_digest


def _status(on: bool) -> dg.DefaultSensorStatus:
    return dg.DefaultSensorStatus.RUNNING if on else dg.DefaultSensorStatus.STOPPED


def build_manifest_sensor(
    names: PipelineNames, on: bool = True, template: str | None = None
) -> dg.SensorDefinition:
    """The sensor that records a new version of ``manifest_file`` (or, for a pipeline whose manifest
    is expanded from ``template``, of ``manifest_template``) when the file's content changes."""
    file_key = manifest_file_spec(names, template is not None).key

    @dg.sensor(
        name=names.sensor("manifest_sensor"),
        minimum_interval_seconds=30,
        required_resource_keys={names.dataset},
        default_status=_status(on),
        description="Records a new version of the manifest file when its content changes; the "
        "declarative automation does the rest. Starts no run itself.",
    )
    def manifest_sensor(
        context: dg.SensorEvaluationContext, **_resources: object
    ) -> dg.SensorResult | dg.SkipReason:
        # (Dagster hands required resources as keyword arguments when a sensor is called directly.)
        dataset: DatasetResource = getattr(context.resources, names.dataset)
        path = template or dataset.manifest
        signature, digest, changed = _check(path, context.cursor)
        what = "template" if template else "manifest"
        if digest is None:
            return dg.SkipReason(f"No {what} at {path}.")
        cursor = json.dumps({"signature": signature, "sha256": digest})
        if not changed:
            if cursor == context.cursor:
                return dg.SkipReason(f"The {what} has not changed.")
            # Touched, same content: remember the new stamp (no read next tick), report nothing.
            return dg.SensorResult(skip_reason=f"The {what} has not changed.", cursor=cursor)
        event = dg.AssetMaterialization(
            file_key,
            metadata={"path": path, "sha256": digest},
            tags={"dagster/data_version": digest},
        )
        return dg.SensorResult(asset_events=[event], cursor=cursor)

    return manifest_sensor


def build_automation_sensors(
    pipeline: PipelineAssets,
    settings: AutomationSettings,
    free: list[dg.AssetsDefinition] | None = None,
    template: str | None = None,
) -> list[dg.SensorDefinition]:
    """The manifest sensor and the two automation condition sensors of ``pipeline``; ``free`` are
    more assets that spend no credits (the expanded manifest of ``template``, the export), refreshed
    like prompt_manifest and image_catalog."""
    names = pipeline.names
    free = [pipeline.prompt_manifest, pipeline.image_catalog, *(free or [])]
    return [
        build_manifest_sensor(names, settings.refresh, template),
        dg.AutomationConditionSensorDefinition(
            names.sensor("refresh_automation"),
            target=dg.AssetSelection.assets(*free),
            default_status=_status(settings.refresh),
            description="Refreshes prompt_manifest when the manifest file changes and image_catalog "
            "after batches are generated (no credits).",
        ),
        dg.AutomationConditionSensorDefinition(
            names.sensor("generation_automation"),
            target=dg.AssetSelection.assets(pipeline.generated_images),
            default_status=_status(settings.generate),
            description="Generates each new or changed batch of the manifest (spends credits).",
        ),
    ]


def build_nightly_schedule(pipeline: PipelineAssets, settings: AutomationSettings) -> dg.ScheduleDefinition:
    """The schedule that runs every batch of the snapshot: retries failed rows, resumes unfinished
    ones. Rows already generated cost nothing (no createTask), so it is safe to run daily. Batches no
    longer in the snapshot (removed from the manifest) are skipped: their data stays."""
    names = pipeline.names

    @dg.schedule(
        name=names.sensor("nightly_generation"),
        cron_schedule=settings.nightly_cron,
        target=pipeline.generated_images,
        required_resource_keys={names.dataset},
        default_status=dg.DefaultScheduleStatus.RUNNING
        if settings.nightly
        else dg.DefaultScheduleStatus.STOPPED,
    )
    def nightly_generation(context: dg.ScheduleEvaluationContext, **_resources: object):
        dataset: DatasetResource = getattr(context.resources, names.dataset)
        day = context.scheduled_execution_time.strftime("%Y-%m-%d")
        current = snapshot_batches(dataset, names)
        registered = context.instance.get_dynamic_partitions(names.partitions)
        keys = [key for key in registered if key in current]
        if not keys:
            return dg.SkipReason("No batch to generate: materialize prompt_manifest first.")
        return [dg.RunRequest(run_key=f"nightly-{day}-{key}", partition_key=key) for key in keys]

    return nightly_generation


#: The unprefixed pipeline's schedule (the project's own; also for tests in process).
nightly_generation = build_nightly_schedule(DEFAULT_PIPELINE, AutomationSettings())
