"""Parquet tables under KIE_STORE through Dagster's UPathIOManager (local folders, S3, GCS, ...).

``{store}/prompt_manifest.parquet``, ``{store}/generated_images/{batch}.parquet`` and
``{store}/image_catalog.parquet``.
"""

from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field
from upath import UPath


class _ParquetUPathIOManager(dg.UPathIOManager):
    extension = ".parquet"

    def dump_to_path(self, context: dg.OutputContext, obj: pd.DataFrame, path: UPath) -> None:
        with path.open("wb") as fh:
            obj.to_parquet(fh, index=False)

    def load_from_path(self, context: dg.InputContext, path: UPath) -> pd.DataFrame:
        with path.open("rb") as fh:
            return pd.read_parquet(fh)


class ParquetStoreIOManager(dg.ConfigurableIOManagerFactory):
    """Stores DataFrame outputs as Parquet under ``store`` (a folder or an fsspec URL)."""

    store: str = Field(description="Folder or fsspec URL under which tables are written.")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options (e.g. S3 endpoint)."
    )

    def create_io_manager(self, context: dg.InitResourceContext) -> _ParquetUPathIOManager:
        return _ParquetUPathIOManager(base_path=UPath(self.store, **self.storage_options))
