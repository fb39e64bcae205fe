"""Dagster resources: the Kie API client (KieResource), the store (StoreResource) and the dataset
(DatasetResource: the manifest and the store)."""

import os
import tempfile
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field
from upath import UPath

from kie_pipeline.client import (
    DEFAULT_BASE_URL,
    DEFAULT_UPLOAD_URL,
    AsyncKieClient,
    PollPolicy,
    RateLimits,
    RetryPolicy,
)
from kie_pipeline.pipeline.callbacks import CallbackSettings
from kie_pipeline.pipeline.coordination import CoordinatedTaskStore
from kie_pipeline.pipeline.manifest import ManifestOptions, load_manifest
from kie_pipeline.pipeline.store import TaskStore

MISSING_KEY_HELP = (
    "KIE_API_KEY is not set. Set it to your key from https://kie.ai/api-key "
    "(export KIE_API_KEY=...), or run offline against the local emulator: "
    "`python -m kie_pipeline.emulator --port 8765` and then "
    "KIE_BASE_URL=http://127.0.0.1:8765 KIE_API_KEY=emulator-key."
)


# The client's option objects as nested Dagster config: the same fields, defaults and descriptions.
class RateLimitsConfig(dg.Config, RateLimits):
    __doc__ = RateLimits.__doc__


class RetryPolicyConfig(dg.Config, RetryPolicy):
    __doc__ = RetryPolicy.__doc__


class PollPolicyConfig(dg.Config, PollPolicy):
    __doc__ = PollPolicy.__doc__


class KieResource(dg.ConfigurableResource):
    """The Kie.ai API, handed to assets as an :class:`AsyncKieClient`.

    ``api_key`` comes from ``EnvVar("KIE_API_KEY")``; it never appears in logs, metadata or errors.
    The client counts what it does (``client.usage``: tasks created, polls, retries, 429s, failures,
    downloads) so assets can report it.
    """

    api_key: str | None = Field(
        default=None, repr=False, description="Kie API key; set with EnvVar('KIE_API_KEY')."
    )
    base_url: str = Field(default=DEFAULT_BASE_URL, description="Kie API base URL (or the emulator's).")
    upload_url: str = Field(
        default=DEFAULT_UPLOAD_URL,
        description="Kie's File Upload API, where local images of the manifest are uploaded (or the "
        "emulator's URL, which serves it too).",
    )
    timeout_s: float = Field(default=30.0, description="Timeout of one HTTP request.")
    limits: RateLimitsConfig = Field(default=RateLimitsConfig(), description=RateLimits.__doc__)
    retry: RetryPolicyConfig = Field(default=RetryPolicyConfig(), description=RetryPolicy.__doc__)
    poll: PollPolicyConfig = Field(default=PollPolicyConfig(), description=PollPolicy.__doc__)
    max_download_mb: int = Field(default=50, description="Refuse result files larger than this.")
    low_balance_credits: float = Field(
        default=1000.0,
        description="The kie_account asset's check warns when the balance is below this many credits "
        "(KIE_LOW_BALANCE in the environment-built definitions).",
    )
    callback_url: str | None = Field(
        default=None,
        description="Public base URL of the callback receiver (`kie-pipeline receiver`); None: poll only.",
    )
    callback_secret: str | None = Field(
        default=None,
        repr=False,
        description="Secret of the callback URLs' tokens; set with EnvVar('KIE_CALLBACK_SECRET'), the "
        "same value the receiver runs with.",
    )
    rate_limit_dir: str | None = Field(
        default="",
        description="Folder of the rate-limit windows shared by every run on this machine; empty: "
        "kie-pipeline/ in this machine's temporary folder (resolved when a run starts); None: per "
        "process. Ignored when rate_limit_url is set; across machines without it, give each one a "
        "share: limits.create_limit = 20 / machines.",
    )
    rate_limit_url: str | None = Field(
        default=None,
        repr=False,
        description="PostgreSQL URL of the account-wide rate-limit windows, shared by every run on every "
        "machine (each run may then use the whole limit); set with EnvVar('KIE_COORDINATION_URL'). "
        "Takes precedence over rate_limit_dir. A secret: never logged; errors show it with the "
        "password masked. Needs psycopg2 (kie-pipeline's 'cluster' extra).",
    )

    def callback_settings(self) -> CallbackSettings | None:
        """Where Kie sends this run's callbacks, or None when no receiver is configured."""
        if not self.callback_url:
            return None
        if not self.callback_secret:
            raise dg.Failure(
                description="callback_url is set but not callback_secret: set KIE_CALLBACK_SECRET to the "
                "secret the receiver runs with (see the README, Callbacks).",
                allow_retries=False,
            )
        return CallbackSettings(self.callback_url, self.callback_secret)

    def get_client(self) -> AsyncKieClient:
        """A new async client (use it as ``async with resource.get_client() as client``)."""
        if not self.api_key:
            raise dg.Failure(description=MISSING_KEY_HELP, allow_retries=False)
        return AsyncKieClient(
            self.api_key,
            self.base_url,
            timeout=self.timeout_s,
            limits=self.limits,
            retry=self.retry,
            poll=self.poll,
            max_download_bytes=self.max_download_mb * 1024 * 1024,
            shared_limit_dir=self._limit_dir(),
            shared_limit_url=self.rate_limit_url or None,
            upload_url=self.upload_url,
        )

    def usage_metadata(self, client: AsyncKieClient) -> dict[str, int]:
        """What ``client`` did, as asset metadata: Kie calls, retries, 429s and downloads."""
        usage = client.usage
        return {
            "create_task_calls": usage.tasks_created,
            "polls": usage.polls,
            "retries": usage.retries,
            "rate_limited_429": usage.rate_limited,
            "uncertain_creates": usage.uncertain_creates,
            "downloads": usage.downloads,
            "bytes_downloaded": usage.bytes_downloaded,
            "uploads": usage.uploads,
        }

    def _limit_dir(self) -> str | None:
        if self.rate_limit_dir == "":
            # Resolved at run time, not at import: TMPDIR is the run's, not the importer's.
            return os.path.join(tempfile.gettempdir(), "kie-pipeline")
        return self.rate_limit_dir


class StoreResource(dg.ConfigurableResource):
    """Where images, task records and tables live: a folder or fsspec URL and its fsspec options.

    The one place the store's filesystem is described: the task records and durable copies
    (:meth:`task_store`), the Parquet tables (``ParquetStoreIOManager``) and every read of the store
    (:meth:`path`) all use these options. Put endpoint- and region-style options here; leave
    credentials to the filesystem's usual sources (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
    a profile, an instance role), since config is shown in Dagster's UI and stored with each run.
    """

    url: str = Field(description="Folder or fsspec URL (e.g. s3://bucket/prefix) for all outputs.")
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options of the store's filesystem, e.g. {'endpoint_url': ...}; no keys.",
    )
    coordination_url: str | None = Field(
        default=None,
        repr=False,
        description="PostgreSQL URL where the batch leases are held, so that two runs of one batch "
        "never run at once on any machines; set with EnvVar('KIE_COORDINATION_URL'). None: lock files "
        "(one machine). A secret: never logged; errors show it with the password masked.",
    )

    def task_store(self) -> TaskStore:
        """Task records and durable copies under :attr:`url` (with :attr:`coordination_url`, a
        store whose batch leases are held in that database)."""
        if self.coordination_url:
            return CoordinatedTaskStore(
                self.url, storage_options=self.storage_options, coordination_url=self.coordination_url
            )
        return TaskStore(self.url, storage_options=self.storage_options)

    def path(self, *parts: str) -> UPath:
        """A path under the store, on its filesystem (``path("image_catalog.parquet")``)."""
        return UPath(self.url, **self.storage_options).joinpath(*parts)


class DatasetResource(dg.ConfigurableResource):
    """Where the manifest is read from and the store images, task records and tables are written to,
    and how the manifest is read (its partition column, the defaults of its empty cells)."""

    manifest: str = Field(description="Path or fsspec URL of the manifest (.csv or .parquet).")
    store: StoreResource = Field(description="The store of all outputs.")
    partition_column: str = Field(
        default=ManifestOptions.partition_column,
        description="The manifest column whose values are the partitions (named `batch` in the tables).",
    )
    default_model: str | None = Field(
        default=ManifestOptions.default_model,
        description="The model of rows whose `model` is empty (None: nano-banana-pro).",
    )
    default_params: dict[str, Any] = Field(
        default_factory=dict,
        description="Defaults of empty input cells: a named column (resolution, aspect_ratio, ...) or a "
        "model's own field; each applies to the rows whose model has it.",
    )

    def manifest_options(self) -> ManifestOptions:
        """How this dataset's manifest is read."""
        return ManifestOptions(self.partition_column, self.default_model, self.default_params)

    def load_manifest(self) -> pd.DataFrame:
        """The validated manifest (raises :class:`~kie_pipeline.pipeline.manifest.ManifestError`)."""
        return load_manifest(self.manifest, self.manifest_options())

    def task_store(self) -> TaskStore:
        """Task records and durable copies in :attr:`store`."""
        return self.store.task_store()


def local_or_url(value: str) -> str:
    """Local paths become absolute (runs may start in another directory); URLs stay as they are."""
    return value if "://" in value else os.path.abspath(value)
