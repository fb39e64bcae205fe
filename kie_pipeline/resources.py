"""Dagster resources: the Kie API client (KieResource) and where the dataset lives (DatasetResource)."""

import os
import tempfile

import dagster as dg
from pydantic import Field

from kie_pipeline.client import DEFAULT_BASE_URL, AsyncKieClient
from kie_pipeline.pipeline.store import TaskStore

MISSING_KEY_HELP = (
    "KIE_API_KEY is not set. Set it to your key from https://kie.ai/api-key "
    "(export KIE_API_KEY=...), or run offline against the local emulator: "
    "`python -m kie_pipeline.emulator --port 8765` and then "
    "KIE_BASE_URL=http://127.0.0.1:8765 KIE_API_KEY=emulator-key."
)


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
    timeout_s: float = Field(default=30.0, description="Timeout of one HTTP request.")
    create_limit: int = Field(default=20, description="createTask calls allowed per create_period_s.")
    create_period_s: float = Field(default=10.0, description="Window of the createTask limit.")
    poll_limit: int = Field(default=10, description="recordInfo calls allowed per second.")
    poll_initial_s: float = Field(default=2.5, description="First poll after this many seconds.")
    poll_max_s: float = Field(default=30.0, description="Polls back off up to this interval.")
    wait_timeout_s: float = Field(default=900.0, description="Give up waiting on a task after this long.")
    max_attempts: int = Field(default=8, description="Attempts per request on 429/5xx/timeouts.")
    backoff_initial_s: float = Field(default=1.0, description="First retry backoff.")
    backoff_max_s: float = Field(default=60.0, description="Longest retry backoff.")
    max_download_mb: int = Field(default=50, description="Refuse result files larger than this.")
    rate_limit_dir: str | None = Field(
        default="",
        description="Folder of the rate-limit windows shared by every run on this machine; empty: "
        "kie-pipeline/ in this machine's temporary folder (resolved when a run starts); None: per "
        "process. Across machines, give each one a share: create_limit = 20 / machines.",
    )

    def get_client(self) -> AsyncKieClient:
        """A new async client (use it as ``async with resource.get_client() as client``)."""
        if not self.api_key:
            raise dg.Failure(description=MISSING_KEY_HELP, allow_retries=False)
        return AsyncKieClient(
            self.api_key,
            self.base_url,
            timeout=self.timeout_s,
            create_limit=self.create_limit,
            create_period=self.create_period_s,
            poll_limit=self.poll_limit,
            poll_initial=self.poll_initial_s,
            poll_max=self.poll_max_s,
            wait_timeout=self.wait_timeout_s,
            max_attempts=self.max_attempts,
            backoff_initial=self.backoff_initial_s,
            backoff_max=self.backoff_max_s,
            max_download_bytes=self.max_download_mb * 1024 * 1024,
            shared_limit_dir=self._limit_dir(),
        )

    def _limit_dir(self) -> str | None:
        if self.rate_limit_dir == "":
            # Resolved at run time, not at import: TMPDIR is the run's, not the importer's.
            return os.path.join(tempfile.gettempdir(), "kie-pipeline")
        return self.rate_limit_dir


class DatasetResource(dg.ConfigurableResource):
    """Where the manifest is read from and where images, task records and tables are written."""

    manifest: str = Field(description="Path or fsspec URL of the manifest (.csv or .parquet).")
    store: str = Field(description="Folder or fsspec URL (e.g. s3://bucket/prefix) for all outputs.")

    def task_store(self) -> TaskStore:
        return TaskStore(self.store)


def local_or_url(value: str) -> str:
    """Local paths become absolute (runs may start in another directory); URLs stay as they are."""
    return value if "://" in value else os.path.abspath(value)
