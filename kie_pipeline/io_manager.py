"""Parquet tables under KIE_STORE through Dagster's UPathIOManager (local folders, S3, GCS, ...).

``{store}/prompt_manifest.parquet`` and ``{store}/generated_images/{batch}.parquet``. Tables are
written whole and atomically, so a reader (or a run killed mid-write) sees the old table or the new
one, never a partial file. ``image_catalog`` writes its own folder (``{store}/image_catalog.parquet/``,
one file per batch: see :mod:`kie_pipeline.pipeline.catalog_dataset`); this IO manager reads such a
folder as one table, for a downstream asset that takes the catalog as an input.
"""

import io
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field
from upath import UPath

from kie_pipeline.pipeline.catalog_dataset import read_catalog
from kie_pipeline.pipeline.store import atomic_write

from .resources import StoreResource


class _ParquetUPathIOManager(dg.UPathIOManager):
    extension = ".parquet"

    def dump_to_path(self, context: dg.OutputContext, obj: pd.DataFrame, path: UPath) -> None:
        buf = io.BytesIO()
        obj.to_parquet(buf, index=False)
        atomic_write(path.fs, path.path, buf.getvalue())

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pd.DataFrame:
        if path.is_dir():
            return read_catalog(path.fs, path.path)
        with path.open("rb") as fh:
            return pd.read_parquet(fh)

    def load_partitions(self, context: dg.InputContext) -> dict[str, Any]:
        # The base class hands back a bare value when exactly one partition is loaded; a
        # downstream asset that reads "every batch" must get the same dict for one as for many.
        loaded = super().load_partitions(context)
        keys = context.asset_partition_keys
        if len(keys) == 1:
            return {} if loaded is None else {keys[0]: loaded}
        return loaded

    def load_input(self, context: dg.InputContext) -> Any:
        loaded = super().load_input(context)
        if loaded is None and context.has_asset_key and context.has_asset_partitions:
            return {}  # no partition registered yet: an empty dict, not None
        return loaded


class ParquetStoreIOManager(dg.ConfigurableIOManagerFactory):
    """Stores DataFrame outputs as Parquet in ``store`` (its URL, on its filesystem and options)."""

    store: StoreResource = Field(description="The store under which tables are written.")

    def create_io_manager(self, context: dg.InitResourceContext) -> _ParquetUPathIOManager:
        return _ParquetUPathIOManager(base_path=self.store.path())
