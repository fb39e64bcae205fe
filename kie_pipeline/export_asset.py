"""The training dataset, as an asset downstream of ``image_catalog``: the catalog's images exported
as Parquet shards that Hugging Face ``datasets`` loads directly (see
:mod:`kie_pipeline.pipeline.export`), rewritten incrementally: only the shards of changed batches."""

import dagster as dg

from .names import PipelineNames
from .pipeline.catalog_dataset import read_catalog
from .pipeline.export import export_dataset
from .pipeline.store import join
from .resources import DatasetResource


def build_export_asset(
    names: PipelineNames,
    destination: str,
    *,
    split_column: str = "split",
    webdataset: bool = False,
    condition: dg.AutomationCondition | None = None,
) -> dg.AssetsDefinition:
    """``training_dataset``: exports ``image_catalog`` to ``destination`` (relative: under the store)."""

    @dg.asset(
        key=names.key("training_dataset"),
        # deps, not ins: the catalog is a folder of one file per batch, read here as one table.
        deps=[names.key("image_catalog")],
        required_resource_keys={names.dataset},
        group_name=names.group,
        kinds={"parquet", "huggingface"},
        automation_condition=condition,
    )
    def training_dataset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        """The catalog's successful images as a Hugging Face dataset (Parquet shards per split and
        batch, a dataset card): ``datasets.load_dataset(<path>)``. Video and audio are not exported."""
        dataset: DatasetResource = getattr(context.resources, names.dataset)
        settings = {"manifest": dataset.manifest, "partition_column": dataset.partition_column}
        store = dataset.task_store()
        *folders, last = names.key("image_catalog").path
        image_catalog = read_catalog(store.fs, store.normalize(join(store.root, *folders, f"{last}.parquet")))
        summary = export_dataset(
            store,
            image_catalog,
            destination,
            split_column=split_column,
            settings=settings,
            webdataset=webdataset,
        )
        md = summary.as_metadata()
        return dg.MaterializeResult(
            metadata={
                **{k: v for k, v in md.items() if k not in ("rows_per_split", "skipped", "path")},
                "dagster/row_count": summary.rows,
                "path": dg.MetadataValue.path(summary.path),
                "rows_per_split": dg.MetadataValue.json(md["rows_per_split"]),
                "skipped": dg.MetadataValue.json(md["skipped"]),
                "load_with": dg.MetadataValue.md(f"```python\ndatasets.load_dataset({summary.path!r})\n```"),
            }
        )

    return training_dataset
