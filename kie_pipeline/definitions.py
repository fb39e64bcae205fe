"""The Dagster definitions of kie-pipeline (``dagster dev -m kie_pipeline.definitions``).

Configuration comes from the environment:

- ``KIE_API_KEY``: the Kie key (required to generate; read through ``EnvVar``, never logged).
- ``KIE_BASE_URL``: default ``https://api.kie.ai``; the local emulator's URL to run offline.
- ``KIE_UPLOAD_URL``: Kie's File Upload API for the manifest's local images (default
  ``https://kieai.redpandaai.co``); the emulator's URL to run offline (it serves uploads too).
- ``KIE_CALLBACK_URL`` and ``KIE_CALLBACK_SECRET``: the callback receiver's public base URL and the
  secret it runs with (optional: without them, tasks are polled).
- ``KIE_LOW_BALANCE``: the ``kie_account`` check warns below this balance (default 1000 credits).
- ``KIE_MANIFEST``: the manifest, CSV or Parquet (default ``data/prompts.csv``).
- ``KIE_STORE``: folder or fsspec URL for images, task records and tables (default ``data/store``).
- ``KIE_STORE_OPTIONS``: the store's fsspec options as a JSON object, e.g.
  ``{"endpoint_url": "https://s3.example.com"}`` or ``{"client_kwargs": {"region_name": "eu-west-1"}}``
  (default none). They reach everything that reads or writes the store. Endpoint, region and similar
  options only: config is shown in the UI, so credentials stay in the filesystem's usual environment
  (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, a profile or an instance role).
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from .account import kie_account
from .assets import catalog_copies_match, catalog_ids_unique, generated_images, image_catalog, prompt_manifest
from .automation import manifest_sensor, nightly_generation
from .client import DEFAULT_BASE_URL
from .io_manager import ParquetStoreIOManager
from .pipeline.store import parse_store_options
from .resources import DatasetResource, KieResource, StoreResource, local_or_url

#: kie_account carries its own check (balance_above_threshold), evaluated with each observation.
ASSETS = [prompt_manifest, generated_images, image_catalog, kie_account]
ASSET_CHECKS = [catalog_copies_match, catalog_ids_unique]


def build_resources(**kie_options: Any) -> dict[str, Any]:
    """Resources wired to the environment; ``kie_options`` override KieResource settings (the nested
    ones as dicts, e.g. ``poll={"initial_s": 0.5}``).

    Raises ValueError when ``KIE_STORE_OPTIONS`` is set but is not a JSON object."""
    # One store resource, nested in the dataset and the IO manager: one URL and one set of options.
    store = StoreResource(
        url=local_or_url(os.environ.get("KIE_STORE", "data/store")),
        storage_options=parse_store_options(os.environ.get("KIE_STORE_OPTIONS", "")),
    )
    manifest = local_or_url(os.environ.get("KIE_MANIFEST", "data/prompts.csv"))
    # The key goes through EnvVar (resolved at run time, never stored in config or shown in the UI).
    # Without it, KieResource explains how to set it or how to use the emulator.
    api_key = dg.EnvVar("KIE_API_KEY") if os.environ.get("KIE_API_KEY") else None
    base_url = dg.EnvVar("KIE_BASE_URL") if os.environ.get("KIE_BASE_URL") else DEFAULT_BASE_URL
    # A run's share of the account's limits when several machines run at once (see docs/cluster.md).
    limits = dict(kie_options.get("limits") or {})
    for var, option in (("KIE_CREATE_LIMIT", "create_limit"), ("KIE_POLL_LIMIT", "poll_limit")):
        if os.environ.get(var):
            limits.setdefault(option, int(os.environ[var]))
    if limits:
        kie_options["limits"] = limits
    if os.environ.get("KIE_UPLOAD_URL"):
        kie_options.setdefault("upload_url", dg.EnvVar("KIE_UPLOAD_URL"))
    if os.environ.get("KIE_LOW_BALANCE"):
        kie_options.setdefault("low_balance_credits", float(os.environ["KIE_LOW_BALANCE"]))
    return {
        "kie": KieResource(api_key=api_key, base_url=base_url, **_callback_options(), **kie_options),
        "dataset": DatasetResource(manifest=manifest, store=store),
        "parquet_io": ParquetStoreIOManager(store=store),
    }


def _callback_options() -> dict[str, Any]:
    """KIE_CALLBACK_URL / KIE_CALLBACK_SECRET, through EnvVar (resolved at run time, never shown)."""
    if not os.environ.get("KIE_CALLBACK_URL"):
        return {}
    secret = dg.EnvVar("KIE_CALLBACK_SECRET") if os.environ.get("KIE_CALLBACK_SECRET") else None
    return {"callback_url": dg.EnvVar("KIE_CALLBACK_URL"), "callback_secret": secret}


def build_definitions() -> dg.Definitions:
    """Definitions wired to the environment (a function so tests can build them after setting env)."""
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=ASSET_CHECKS,
        sensors=[manifest_sensor],
        schedules=[nightly_generation],
        resources=build_resources(),
    )


@dg.definitions
def defs() -> dg.Definitions:
    """What ``dagster ... -m kie_pipeline.definitions`` and ``workspace.yaml`` load: built when Dagster
    loads the code location, not when the module is imported (importing reads no environment)."""
    return build_definitions()
