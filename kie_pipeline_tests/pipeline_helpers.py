"""Helpers to run the Dagster assets against an emulator, with a real (temporary) Dagster instance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import dagster as dg
import pandas as pd

from kie_pipeline.definitions import ASSET_CHECKS, ASSETS, build_resources

#: KieResource settings that keep tests fast.
FAST_KIE = {
    "poll": {"initial_s": 0.02, "max_s": 0.2},
    "retry": {"backoff_initial_s": 0.01, "backoff_max_s": 0.2},
}


def kie_options(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides``; the nested option dicts (limits, retry, poll) merge field by field."""
    out = dict(base)
    for key, value in overrides.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = {**out[key], **value} if nested else value
    return out


SAMPLE = [
    {"id": "fox", "batch": "animals", "prompt": "A red fox in snow", "split": "train"},
    {"id": "owl", "batch": "animals", "prompt": "An owl at dusk", "aspect_ratio": "3:2", "split": "val"},
    {
        "id": "cat",
        "batch": "animals",
        "prompt": 'A cat, "oil", painting',
        "output_format": "jpg",
        "split": "test",
    },
    {
        "id": "tokyo",
        "batch": "cities",
        "prompt": "Tokyo at night\nin the rain",
        "aspect_ratio": "9:16",
        "split": "train",
    },
    {"id": "paris", "batch": "cities", "prompt": "Paris rooftops — café", "split": "val"},
]


def write_manifest(path: str, records: list[dict[str, Any]]) -> None:
    pd.DataFrame(records).to_csv(path, index=False)


class Pipeline:
    """The assets wired to an emulator and a store, on one Dagster instance."""

    def __init__(self, instance: dg.DagsterInstance, assets: list[Any] | None = None, **kie: Any) -> None:
        self.instance = instance
        self.assets = assets or ASSETS
        self.resources = build_resources(**kie_options(FAST_KIE, kie))
        self.store = self.resources["dataset"].store.url

    def manifest(self, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            self.assets, selection=["prompt_manifest"], resources=self.resources, instance=self.instance,
            raise_on_error=raise_on_error,
        )  # fmt: skip

    def batch(self, key: str, raise_on_error: bool = True, **config: Any) -> dg.ExecuteInProcessResult:
        """Materialize one partition; ``config`` sets GenerateConfig fields."""
        run_config = {"ops": {"generated_images": {"config": config}}} if config else None
        return dg.materialize(
            self.assets, selection=["generated_images"], partition_key=key, resources=self.resources,
            instance=self.instance, raise_on_error=raise_on_error, run_config=run_config,
        )  # fmt: skip

    def catalog(self, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [*self.assets, *ASSET_CHECKS],
            selection=["image_catalog"],
            resources=self.resources,
            instance=self.instance,
            raise_on_error=raise_on_error,
        )

    def all(self) -> pd.DataFrame:
        self.manifest()
        for key in self.instance.get_dynamic_partitions("batches"):
            self.batch(key)
        self.catalog()
        return pd.read_parquet(os.path.join(self.store, "image_catalog.parquet"))


def metadata(result: dg.ExecuteInProcessResult, node: str = "generated_images") -> dict[str, Any]:
    md = result.asset_materializations_for_node(node)[0].metadata
    return {k: getattr(v, "value", v) for k, v in md.items()}


#: Materializes one partition in a separate process (so tests can SIGKILL it or run several at once).
RUNNER = """
import json, os, sys
import dagster as dg
from kie_pipeline.definitions import ASSETS, build_resources
instance = dg.DagsterInstance.local_temp(tempdir=sys.argv[1])
dg.materialize(ASSETS, selection=["generated_images"], partition_key=sys.argv[2],
               resources=build_resources(**json.loads(os.environ["TEST_KIE_OPTIONS"])), instance=instance)
"""


def spawn_partition(home: str, partition: str, options: dict[str, Any], **popen: Any) -> subprocess.Popen:
    """Start materializing ``partition`` in another process on the instance in ``home``."""
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, home, partition],
        env={**os.environ, "TEST_KIE_OPTIONS": json.dumps(options)},
        stdout=subprocess.DEVNULL,
        **{"stderr": subprocess.DEVNULL, **popen},
    )
