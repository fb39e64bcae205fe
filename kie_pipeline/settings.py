"""What the environment configures, read when definitions load (never at import).

- ``KIE_API_KEY``: the Kie key (required to generate; read through ``EnvVar``, never logged).
- ``KIE_BASE_URL``: default ``https://api.kie.ai``; the local emulator's URL to run offline.
- ``KIE_UPLOAD_URL``: Kie's File Upload API for the manifest's local images (default
  ``https://kieai.redpandaai.co``); the emulator's URL to run offline (it serves uploads too).
- ``KIE_CALLBACK_URL`` and ``KIE_CALLBACK_SECRET``: the callback receiver's public base URL and the
  secret it runs with (optional: without them, tasks are polled).
- ``KIE_LOW_BALANCE``: the ``kie_account`` check warns below this balance (default 1000 credits).
- ``KIE_CREATE_LIMIT`` / ``KIE_POLL_LIMIT``: this machine's share of the account's rate limits.
- ``KIE_COORDINATION_URL``: a PostgreSQL URL (``postgresql://user:password@host:5432/db``, e.g. the
  Dagster instance's database) where every machine shares the account's rate-limit windows (each
  run may then use the whole limit) and the batch leases (two runs of one batch never run at once,
  on any machines). Read through ``EnvVar``: a secret, never logged or put in metadata; errors show
  it with the password masked. Optional: without it the windows and leases are per machine (files).
- ``KIE_MANIFEST``: the manifest, CSV or Parquet (default ``data/prompts.csv``), for a pipeline
  whose ``manifest`` is not set.
- ``KIE_STORE``: folder or fsspec URL for results, task records and tables (default
  ``data/store``), for a pipeline whose ``store`` is not set.
- ``KIE_STORE_OPTIONS``: the store's fsspec options as a JSON object, e.g.
  ``{"endpoint_url": "https://s3.example.com"}`` (default none). Endpoint, region and similar
  options only: config is shown in the UI, so credentials stay in the filesystem's usual environment
  (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, a profile or an instance role).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import dagster as dg

from .client import DEFAULT_BASE_URL
from .io_manager import ParquetStoreIOManager
from .names import UNPREFIXED, PipelineNames
from .pipeline.store import parse_store_options
from .resources import DatasetResource, KieResource, StoreResource, local_or_url

#: The variables the shared ``kie`` resource is built from.
KIE_VARIABLES = (
    "KIE_API_KEY",
    "KIE_BASE_URL",
    "KIE_UPLOAD_URL",
    "KIE_CALLBACK_URL",
    "KIE_CALLBACK_SECRET",
    "KIE_LOW_BALANCE",
    "KIE_CREATE_LIMIT",
    "KIE_POLL_LIMIT",
    "KIE_COORDINATION_URL",
)


def kie_resource(**kie_options: Any) -> KieResource:
    """The Kie resource wired to the environment; ``kie_options`` override its settings (the nested
    ones as dicts, e.g. ``poll={"initial_s": 0.5}``)."""
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
    if os.environ.get("KIE_COORDINATION_URL"):
        # Through EnvVar: resolved when a run starts, and Dagster shows the variable's name, not
        # the URL (which may hold a password).
        kie_options.setdefault("rate_limit_url", dg.EnvVar("KIE_COORDINATION_URL"))
    if os.environ.get("KIE_CALLBACK_URL"):
        kie_options.setdefault("callback_url", dg.EnvVar("KIE_CALLBACK_URL"))
        if os.environ.get("KIE_CALLBACK_SECRET"):
            kie_options.setdefault("callback_secret", dg.EnvVar("KIE_CALLBACK_SECRET"))
    return KieResource(api_key=api_key, base_url=base_url, **kie_options)


@functools.cache
def _shared_kie(environment: tuple[str | None, ...]) -> KieResource:
    del environment  # the cache key: one object per state of the variables
    return kie_resource()


def shared_kie_resource() -> KieResource:
    """The ``kie`` resource every pipeline of a code location shares: the same object for the same
    environment, so that several pipelines (component instances) merge into one code location."""
    return _shared_kie(tuple(os.environ.get(name) for name in KIE_VARIABLES))


def store_resource(url: str | None = None, storage_options: dict[str, Any] | None = None) -> StoreResource:
    """The store at ``url`` (default ``KIE_STORE``, else ``data/store``) with ``storage_options``
    (default ``KIE_STORE_OPTIONS``); its batch leases in ``KIE_COORDINATION_URL``'s database when set.

    Raises ValueError when ``KIE_STORE_OPTIONS`` is needed, set, and not a JSON object."""
    if storage_options is None:
        storage_options = parse_store_options(os.environ.get("KIE_STORE_OPTIONS", ""))
    # The batch leases go where the rate windows go (through EnvVar, like the key: never shown).
    coordination = dg.EnvVar("KIE_COORDINATION_URL") if os.environ.get("KIE_COORDINATION_URL") else None
    return StoreResource(
        url=local_or_url(url or os.environ.get("KIE_STORE", "data/store")),
        storage_options=storage_options,
        coordination_url=coordination,
    )


def pipeline_resources(
    names: PipelineNames = UNPREFIXED,
    *,
    manifest: str | None = None,
    store: StoreResource | None = None,
    **manifest_options: Any,
) -> dict[str, Any]:
    """One pipeline's own resources: its dataset and its IO manager (one store resource for both)."""
    store = store or store_resource()
    manifest = local_or_url(manifest or os.environ.get("KIE_MANIFEST", "data/prompts.csv"))
    return {
        names.dataset: DatasetResource(manifest=manifest, store=store, **manifest_options),
        names.io_manager: ParquetStoreIOManager(store=store),
    }


def build_resources(**kie_options: Any) -> dict[str, Any]:
    """The unprefixed pipeline's resources and ``kie``, wired to the environment (tests, the demo and
    benchmarks materialize with these); ``kie_options`` override KieResource settings.

    Raises ValueError when ``KIE_STORE_OPTIONS`` is set but is not a JSON object."""
    return {"kie": kie_resource(**kie_options), **pipeline_resources()}
