"""A manifest generated from a template, as an asset: ``manifest_template`` (the template file, an
external asset the manifest sensor reports) → ``expanded_manifest`` (writes the manifest file) →
``prompt_manifest``.

Expanding costs nothing and keeps every existing row's id, prompt and split (see
:mod:`kie_pipeline.pipeline.templates`), so re-expanding after an edit adds only the new rows and a
rerun pays only for them.
"""

import hashlib
import os

import dagster as dg
import pandas as pd

from .names import PipelineNames
from .pipeline.manifest import ManifestError, read_manifest
from .pipeline.templates import expand_template, load_template, summary, write_manifest_file


def build_template_asset(
    names: PipelineNames,
    template: str,
    manifest: str,
    condition: dg.AutomationCondition | None = None,
) -> dg.AssetsDefinition:
    """``expanded_manifest``: expands ``template`` into the manifest file ``manifest`` (a local path)."""

    @dg.asset(
        key=names.key("expanded_manifest"),
        deps=[names.key("manifest_template")],
        group_name=names.group,
        kinds={"csv"},
        automation_condition=condition,
    )
    def expanded_manifest(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        """The template's rows, written to the manifest file; an invalid template fails here, naming
        every problem by field, and the manifest file is left as it was."""
        try:
            spec = load_template(template)
            df = expand_template(spec, base_dir=os.path.dirname(manifest))
        except ManifestError as exc:
            raise dg.Failure(description=str(exc), metadata={"problems": len(exc.problems)}) from None
        before = _ids(manifest)
        write_manifest_file(df, manifest)
        ids = set(df["id"])
        with open(manifest, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
        context.log.info(f"{template} → {manifest}: {summary(spec, df)}")
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": len(df),
                "rows": len(df),
                "added": len(ids - before),
                "removed": len(before - ids),
                "summary": summary(spec, df),
                "template": template,
                "manifest": manifest,
            },
            data_version=dg.DataVersion(digest),
        )

    return expanded_manifest


def _ids(manifest: str) -> set[str]:
    """The ids of the manifest file as it is now (none when there is no readable file yet)."""
    try:
        df = read_manifest(manifest)
    except (OSError, ValueError, ManifestError):
        return set()
    return set(df["id"].astype(str)) if "id" in df.columns and isinstance(df, pd.DataFrame) else set()
