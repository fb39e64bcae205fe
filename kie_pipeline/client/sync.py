"""A small synchronous facade over :class:`AsyncKieClient`, for scripts and notebooks.

The async client runs on an event loop in a background thread (anyio's blocking portal), so the
facade keeps one connection pool and one set of rate limiters across calls.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from anyio.from_thread import start_blocking_portal

from .client import AsyncKieClient
from .models import DownloadResult, KieUsage, TaskRecord, UploadedFile


class KieClient:
    """Blocking Kie client: the same methods and arguments as :class:`AsyncKieClient`."""

    def __init__(self, api_key: str, base_url: str = "https://api.kie.ai", **options: Any) -> None:
        self._stack = ExitStack()
        self._portal = self._stack.enter_context(start_blocking_portal())
        self._client: AsyncKieClient = self._portal.call(self._make, api_key, base_url, options)

    @staticmethod
    async def _make(api_key: str, base_url: str, options: dict[str, Any]) -> AsyncKieClient:
        return AsyncKieClient(api_key, base_url, **options)

    def __repr__(self) -> str:
        return f"KieClient({self._client!r})"

    def __enter__(self) -> KieClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def usage(self) -> KieUsage:
        return self._client.usage

    def close(self) -> None:
        """Close the connections and stop the background loop."""
        self._portal.call(self._client.aclose)
        self._stack.close()

    def create_task(self, model: str, input: dict[str, Any], **kw: Any) -> str:
        return self._portal.call(lambda: self._client.create_task(model, input, **kw))

    def get_task(self, task_id: str, *, model: str | None = None) -> TaskRecord:
        return self._portal.call(lambda: self._client.get_task(task_id, model=model))

    def wait(self, task_id: str, **kw: Any) -> TaskRecord:
        return self._portal.call(lambda: self._client.wait(task_id, **kw))

    def run(self, model: str, input: dict[str, Any], **kw: Any) -> TaskRecord:
        return self._portal.call(lambda: self._client.run(model, input, **kw))

    def get_credits(self) -> float:
        return self._portal.call(self._client.get_credits)

    def upload_file(self, source: Any, **kw: Any) -> UploadedFile:
        """See :meth:`AsyncKieClient.upload_file`: a local path or bytes in, its public URL out."""
        return self._portal.call(lambda: self._client.upload_file(source, **kw))

    def get_download_url(self, url: str) -> str:
        return self._portal.call(self._client.get_download_url, url)

    def download(self, url: str, dest: str, **kw: Any) -> DownloadResult:
        """See :meth:`AsyncKieClient.download` (``max_bytes``, ``write``, which runs in a worker
        thread, and ``media``)."""
        return self._portal.call(lambda: self._client.download(url, dest, **kw))
