"""``KiePipelineComponent``: a generation pipeline added to a dg project with one ``defs.yaml``.

.. code-block:: yaml

    type: kie_pipeline.KiePipelineComponent
    attributes:
      manifest: data/faces.csv          # relative to the project root; or s3://...
      store: data/faces                 # results, task records and tables
      key_prefix: faces                 # faces/prompt_manifest, faces/generated_images, ...
      partition_column: batch
      default_model: nano-banana-pro
      default_params: {resolution: 2K, aspect_ratio: "1:1"}
      pool: kie
      automation: {refresh: true, generate: false, nightly: false}

Several instances live side by side in one code location: each has its own key prefix, partitions,
dataset and IO manager; all share the ``kie`` resource (one account, one set of rate limits), built
from the ``KIE_*`` environment variables (see :mod:`kie_pipeline.settings`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import BaseModel, Field

from .assets import KIE_POOL, build_pipeline_assets
from .automation import (
    CATALOG_CONDITION,
    GENERATION_CONDITION,
    MANIFEST_CONDITION,
    AutomationSettings,
    build_automation_sensors,
    build_nightly_schedule,
    manifest_file_spec,
)
from .export_asset import build_export_asset
from .names import PipelineNames
from .pipeline.dedup import DEFAULT_THRESHOLD
from .pipeline.manifest import ManifestOptions
from .settings import pipeline_resources, shared_kie_resource, store_resource
from .template_asset import build_template_asset

_AUTOMATION_DEFAULTS = AutomationSettings()


class AutomationModel(dg.Model):
    """Which automation starts running on a new deployment (each can be toggled in the UI later)."""

    refresh: bool = Field(
        default=_AUTOMATION_DEFAULTS.refresh,
        description="Follow the manifest file with prompt_manifest and every batch with image_catalog "
        "(spends no credits).",
    )
    generate: bool = Field(
        default=_AUTOMATION_DEFAULTS.generate,
        description="Generate each new or changed batch by itself (spends credits).",
    )
    nightly: bool = Field(
        default=_AUTOMATION_DEFAULTS.nightly,
        description="Run every batch nightly: retry failed rows, resume unfinished ones (spends credits).",
    )
    nightly_cron: str = Field(default=_AUTOMATION_DEFAULTS.nightly_cron, description="The nightly cron.")

    def settings(self) -> AutomationSettings:
        return AutomationSettings(self.refresh, self.generate, self.nightly, self.nightly_cron)


class ScaffoldParams(BaseModel):
    """``dg scaffold defs kie_pipeline.KiePipelineComponent NAME --json-params '{...}'``."""

    manifest: str = "data/prompts.csv"
    store: str = "data/store"
    key_prefix: str | None = None


class KiePipelineScaffolder(dg.Scaffolder[ScaffoldParams]):
    """Writes a ``defs.yaml`` and, when the manifest does not exist yet, a two-row sample of it."""

    @classmethod
    def get_scaffold_params(cls) -> type[ScaffoldParams]:
        return ScaffoldParams

    def scaffold(self, request: dg.ScaffoldRequest[ScaffoldParams]) -> None:
        params = request.params or ScaffoldParams()
        attributes: dict[str, Any] = {"manifest": params.manifest, "store": params.store}
        if params.key_prefix:
            attributes["key_prefix"] = params.key_prefix
        attributes["automation"] = {"refresh": True, "generate": False, "nightly": False}
        dg.scaffold_component(request, attributes)
        root = request.project_root or Path.cwd()
        manifest = root / params.manifest
        if "://" not in params.manifest and not manifest.exists():
            manifest.parent.mkdir(parents=True, exist_ok=True)
            manifest.write_text(
                "id,batch,prompt\n"
                "lighthouse,first,A lighthouse on a cliff at dawn\n"
                "fox,first,A red fox in fresh snow\n"
            )


@dg.scaffold_with(KiePipelineScaffolder)
class KiePipelineComponent(dg.Component, dg.Model, dg.Resolvable):
    """A Kie generation pipeline: manifest → prompt_manifest → generated_images (one partition per
    batch) → image_catalog, with its automation.

    Unset ``manifest``, ``store`` and ``store_options`` come from ``KIE_MANIFEST``, ``KIE_STORE``
    and ``KIE_STORE_OPTIONS`` (else ``data/prompts.csv`` and ``data/store``). Relative paths are
    relative to the project root.
    """

    manifest: str | None = Field(default=None, description="The manifest (CSV or Parquet): path or URL.")
    template: str | None = Field(
        default=None,
        description="A template (YAML) the manifest is expanded from, by the asset expanded_manifest "
        "(then `manifest` is a local .csv or .parquet path; default: the template's name with .csv).",
    )
    store: str | None = Field(
        default=None, description="Folder or fsspec URL of results, task records and tables."
    )
    store_options: dict[str, Any] | None = Field(
        default=None, description="The store's fsspec options (endpoint, region; never credentials)."
    )
    key_prefix: str | list[str] | None = Field(
        default=None, description="Asset key prefix; also names the partitions, resources and sensors."
    )
    partition_column: str = Field(
        default=ManifestOptions.partition_column,
        description="The manifest column whose values are the partitions.",
    )
    default_model: str | None = Field(
        default=None, description="The model of rows whose `model` is empty (None: nano-banana-pro)."
    )
    default_params: dict[str, Any] = Field(
        default_factory=dict,
        description="Defaults of empty input cells (a named column or a model's field), per model.",
    )
    pool: str = Field(default=KIE_POOL, description="The Dagster pool of generation runs.")
    split_column: str = Field(
        default="split", description="The manifest column of train/val/test splits (for near-duplicates)."
    )
    export_to: str | None = Field(
        default="export",
        description="Where training_dataset exports the catalog's images for Hugging Face datasets: a "
        "folder under the store, or a URL; null: no export.",
    )
    export_webdataset: bool = Field(
        default=False, description="Also write each export shard as a WebDataset tar."
    )
    near_duplicate_bits: int = Field(
        default=DEFAULT_THRESHOLD,
        ge=0,
        le=32,
        description="Results whose perceptual hashes differ in at most this many of 64 bits are "
        "near-duplicates (the catalog's no_near_duplicates check).",
    )
    automation: AutomationModel = Field(default_factory=AutomationModel, description=AutomationModel.__doc__)

    def names(self) -> PipelineNames:
        """The names this instance's definitions take."""
        prefix = self.key_prefix
        return PipelineNames(tuple([prefix] if isinstance(prefix, str) else prefix or ()))

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        names = self.names()
        problems = ManifestOptions(self.partition_column, self.default_model, self.default_params).problems()
        if problems:
            raise ValueError(f"{context.path}: " + "; ".join(problems))
        settings = self.automation.settings()
        template = _under(context.project_root, self.template)
        manifest = _under(context.project_root, self.manifest)
        extra: list[Any] = []
        if template is not None:
            manifest = manifest or os.path.splitext(template)[0] + ".csv"
            if "://" in manifest or "://" in template:
                raise ValueError(f"{context.path}: with a template, manifest and template are local paths")
            expanded = build_template_asset(names, template, manifest, MANIFEST_CONDITION)
            extra = [manifest_file_spec(names, template=True), expanded]
            upstream = expanded.key
        else:
            extra = [manifest_file_spec(names)]
            upstream = extra[0].key
        pipeline = build_pipeline_assets(
            names,
            pool=self.pool,
            manifest_condition=MANIFEST_CONDITION,
            generation_condition=GENERATION_CONDITION,
            catalog_condition=CATALOG_CONDITION,
            manifest_deps=(upstream,),
            near_duplicates=self.near_duplicate_bits,
            split_column=self.split_column,
        )
        if self.export_to is not None:
            exported = build_export_asset(
                names,
                self.export_to,
                split_column=self.split_column,
                webdataset=self.export_webdataset,
                condition=CATALOG_CONDITION,
            )
            extra.append(exported)
        store = store_resource(_under(context.project_root, self.store), self.store_options)
        resources = pipeline_resources(
            names,
            manifest=manifest,
            store=store,
            partition_column=self.partition_column,
            default_model=self.default_model,
            default_params=self.default_params,
        )
        return dg.Definitions(
            assets=[*extra, *pipeline.assets],
            asset_checks=list(pipeline.checks),
            sensors=build_automation_sensors(
                pipeline, settings, [a for a in extra if isinstance(a, dg.AssetsDefinition)], template
            ),
            schedules=[build_nightly_schedule(pipeline, settings)],
            resources={"kie": shared_kie_resource(), **resources},
        )


def _under(root: Path, value: str | None) -> str | None:
    """``value`` relative to the project root, unless it is a URL, absolute, or unset."""
    if value is None or "://" in value or os.path.isabs(value):
        return value
    return str(root / value)
