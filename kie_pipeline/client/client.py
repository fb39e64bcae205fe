"""The asyncio client of the Kie jobs API (createTask, recordInfo, credits, download-url, downloads,
File Upload).

One :class:`AsyncKieClient` can have hundreds of tasks in flight: requests share one
``httpx.AsyncClient``, createTask calls pass a sliding-window limiter (20 per 10 s by default) and
polls another (10 per s), and every request retries retryable failures with backoff, except that a
createTask is retried only when Kie cannot have created the task (see :meth:`AsyncKieClient.create_task`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from .download import fetch as _fetch
from .download import size_cap
from .errors import (
    KieCreateUncertainError,
    KieError,
    KieInsufficientCreditsError,
    KieProtocolError,
    KieRateLimitError,
    KieValidationError,
)
from .models import DownloadResult, FetchedFile, KieUsage, TaskRecord, UploadedFile
from .options import PollPolicy, RateLimits, RetryPolicy
from .pg_window import PostgresSlidingWindowLimiter
from .ratelimit import SharedSlidingWindowLimiter, SlidingWindowLimiter, account_id, shared_limiter_path
from .registry import JOBS, MediaType, get_model, validate_input
from .transport import created_task_id, retrying, transport_error, unwrap_response
from .upload import (
    DEFAULT_UPLOAD_FOLDER,
    DEFAULT_UPLOAD_URL,
    STREAM_UPLOAD_PATH,
    check_upload_path,
    sniff_image_type,
    uploaded_file,
)
from .waiting import PollingWaiter

DEFAULT_BASE_URL = "https://api.kie.ai"
#: Retries are logged here (what, why, how long), at INFO; never with the key.
logger = logging.getLogger("kie_pipeline.client")
#: Connections per client (API and file hosts each); more requests than this wait their turn.
MAX_CONNECTIONS = 16

#: Writes a downloaded file: ``write(dest, data)``.
Writer = Callable[[str, bytes], None]


def write_to_store(dest: str, data: bytes) -> None:
    """The default :data:`Writer` of :meth:`AsyncKieClient.download`: the store's atomic write of a
    local path or fsspec URL (fsynced on local disks)."""
    # Imported when called, not with the client: the store's module belongs to the pipeline, and
    # whatever it comes to import can then never make `import kie_pipeline.client` circular.
    from kie_pipeline.pipeline.store import write_atomically

    write_atomically(dest, data)


class _Secret:
    """Holds the API key; its repr never shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'**********'"


class AsyncKieClient:
    """Async client of the Kie.ai jobs API.

    Args:
        api_key: the Bearer key (never logged, never in reprs or error messages).
        base_url: ``https://api.kie.ai`` or the local emulator's URL.
        timeout: seconds for one HTTP request.
        limits: the createTask and status-call windows (:class:`RateLimits`: Kie's 20 per 10 s and
            10 per s by default).
        retry: attempts and backoff for retryable errors (:class:`RetryPolicy`).
        poll: how :meth:`wait` polls and when it gives up (:class:`PollPolicy`).
        max_download_bytes: downloads larger than this are refused.
        shared_limit_dir: when set, the createTask and poll windows live in files under this folder,
            shared by every process on the machine that uses the same account (URL + key).
        shared_limit_url: a PostgreSQL URL (``KIE_COORDINATION_URL``); when set, the windows live
            in that database, shared by every process on every machine that uses the account, and
            ``shared_limit_dir`` is ignored (see :mod:`.pg_window`). A secret: never logged or shown
            unmasked. psycopg2 (the ``cluster`` extra) must be installed.
        upload_url: Kie's File Upload API (``https://kieai.redpandaai.co``, or the emulator's URL).
    """

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: float = 30.0,
        limits: RateLimits | None = None,
        retry: RetryPolicy | None = None,
        poll: PollPolicy | None = None,
        max_download_bytes: int = 50 * 1024 * 1024,
        max_concurrent_downloads: int = 8,
        shared_limit_dir: str | None = None,
        shared_limit_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        upload_url: str = DEFAULT_UPLOAD_URL,
    ) -> None:
        if not api_key:
            raise KieError("No Kie API key given. Set KIE_API_KEY (or use the local emulator).")
        self._key = _Secret(api_key)
        self.base_url = base_url.rstrip("/")
        self.upload_url = upload_url.rstrip("/")
        self.usage = KieUsage()
        self.limits = limits = limits or RateLimits()
        self.retry = retry or RetryPolicy()
        self.poll = poll or PollPolicy()
        self.max_download_bytes = max_download_bytes
        self.create_limiter: SlidingWindowLimiter | SharedSlidingWindowLimiter | PostgresSlidingWindowLimiter
        self.poll_limiter: SlidingWindowLimiter | SharedSlidingWindowLimiter | PostgresSlidingWindowLimiter
        if shared_limit_url:
            # Connects at the first request, not here: building a client does no I/O.
            account = account_id(self.base_url, api_key)
            self.create_limiter = PostgresSlidingWindowLimiter(
                shared_limit_url, account, "create", limits.create_limit, limits.create_period_s
            )
            self.poll_limiter = PostgresSlidingWindowLimiter(
                shared_limit_url, account, "poll", limits.poll_limit, limits.poll_period_s
            )
        elif shared_limit_dir:
            path = functools.partial(shared_limiter_path, shared_limit_dir, self.base_url, api_key)
            self.create_limiter = SharedSlidingWindowLimiter(
                path("create"), limits.create_limit, limits.create_period_s
            )
            self.poll_limiter = SharedSlidingWindowLimiter(
                path("poll"), limits.poll_limit, limits.poll_period_s
            )
        else:
            self.create_limiter = SlidingWindowLimiter(limits.create_limit, limits.create_period_s)
            self.poll_limiter = SlidingWindowLimiter(limits.poll_limit, limits.poll_period_s)
        pool = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            limits=pool,
            transport=transport,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
        )
        # Result files live on other hosts: a separate client that never sends the key there.
        self._files = httpx.AsyncClient(timeout=timeout, limits=pool, follow_redirects=True)
        self._download_slots = asyncio.Semaphore(max_concurrent_downloads)
        # Queue requests here rather than in httpcore's pool, whose bookkeeping grows with the
        # queue (measured: 3x slower with 500 queued requests than with this gate).
        self._request_slots = asyncio.Semaphore(MAX_CONNECTIONS)

    def __repr__(self) -> str:
        return f"AsyncKieClient(base_url={self.base_url!r}, api_key={self._key!r})"

    async def __aenter__(self) -> AsyncKieClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pools."""
        await self._http.aclose()
        await self._files.aclose()

    def _on_retry(self, what: str, exc: BaseException, attempt: int, sleep: float) -> None:
        self.usage.retries += 1
        if isinstance(exc, KieRateLimitError):
            self.usage.rate_limited += 1
        # Kie errors and transport errors are built without the request, so no key can be in them.
        logger.info(
            "Kie %s failed (%s: %s); retry %d of %d in %.1f s",
            what,
            type(exc).__name__,
            exc,
            attempt,
            self.retry.max_attempts - 1,
            sleep,
        )

    async def _call(
        self,
        method: str,
        path: str,
        endpoint: str,
        *,
        limiter: Any | None = None,
        json: Any = None,
        params: dict[str, str] | None = None,
        idempotent: bool = True,
        data: dict[str, str] | None = None,
        files: dict[str, tuple[str, bytes, str]] | None = None,
    ) -> Any:
        # ``idempotent=False`` turns every failure after which Kie may have run the request into
        # KieCreateUncertainError, which the retry policy never retries (transport.py decides).
        async for attempt in retrying(self.retry, functools.partial(self._on_retry, endpoint)):
            with attempt:
                try:
                    # The limiter's slot spans the whole request: it ends when the answer is back,
                    # so the server's window holds whatever the request's delays (ratelimit.py).
                    async with limiter.slot() if limiter else contextlib.nullcontext(), self._request_slots:
                        response = await self._http.request(
                            method, path, json=json, params=params, data=data, files=files
                        )
                except httpx.HTTPError as exc:
                    raise transport_error(exc, endpoint, idempotent=idempotent) from None
                try:
                    return unwrap_response(response, endpoint, idempotent=idempotent)
                except KieRateLimitError as exc:
                    if limiter is not None and exc.retry_after:
                        limiter.pause(exc.retry_after)
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def create_task(
        self,
        model: str,
        input: dict[str, Any],
        *,
        callback_url: str | None = None,
        validate: bool = True,
    ) -> str:
        """Create a task at ``model``'s family endpoint (``POST /api/v1/jobs/createTask`` for jobs
        models); returns the task id. Validates ``input`` first.

        Kie has no idempotency key, so a createTask is retried only when Kie cannot have created the
        task: the connection was never made (connect error or timeout, pool timeout) or Kie answered
        with a retryable error (429, 5xx, 455, 408 as HTTP status or body ``code``).

        Raises:
            KieCreateUncertainError: the request may have reached Kie but no usable answer came back
                (read/write timeout, connection dropped after sending, unreadable answer, success
                without a taskId). The task may exist and be charged: never create it again blindly.
            KieError: any other typed error (402 with the balance looked up, 401, 422, ...).
        """
        if validate:
            input = validate_input(model, input)
        # Each family has its own endpoint and body shape (jobs: {model, input}; others flat).
        family = get_model(model).family
        if family.callback_required and not callback_url:
            raise KieValidationError(
                f"Kie requires a callBackUrl for {model}: set the callback receiver (KIE_CALLBACK_URL).",
                code=None,
                field="callBackUrl",
            )
        body = family.body(model, input, callback_url)
        try:
            data = await self._call(
                "POST",
                family.create_path,
                "createTask" if family is JOBS else f"{family.name} generate",
                limiter=self.create_limiter,
                json=body,
                idempotent=False,
            )
            task_id = created_task_id(data)
        except KieInsufficientCreditsError as exc:
            self.usage.failures += 1
            raise exc.with_balance(await self._balance()) from None
        except KieCreateUncertainError:
            self.usage.failures += 1
            self.usage.uncertain_creates += 1
            raise
        except KieError:
            self.usage.failures += 1
            raise
        self.usage.tasks_created += 1
        return task_id

    async def _balance(self) -> float | None:
        try:
            return await asyncio.wait_for(self.get_credits(), timeout=10)
        except (KieError, TimeoutError):
            return None

    async def get_task(self, task_id: str, *, model: str | None = None) -> TaskRecord:
        """The task's current record, decoded, from the status endpoint of ``model``'s family
        (``GET /api/v1/jobs/recordInfo`` when ``model`` is None or a jobs model)."""
        family = get_model(model).family if model else JOBS
        self.usage.polls += 1
        data = await self._call(
            "GET",
            family.status_path,
            "recordInfo" if family is JOBS else f"{family.name} record-info",
            limiter=self.poll_limiter,
            params={"taskId": task_id},
        )
        return family.decode(data)

    async def wait(
        self,
        task_id: str,
        *,
        model: str | None = None,
        timeout: float | None = None,
        first_delay: float | None = None,
    ) -> TaskRecord:
        """Poll until the task is ``success`` or ``fail`` and return its final record.

        ``model`` picks the family's status endpoint (default: the jobs API). Polls after
        ``first_delay`` (default ``poll.initial_s``), then backs off to ``poll.max_s``.
        Raises :class:`KieTaskTimeoutError` after ``timeout`` (default ``poll.timeout_s``) seconds.
        """
        return await PollingWaiter(self).wait(task_id, model=model, timeout=timeout, first_delay=first_delay)

    async def run(self, model: str, input: dict[str, Any], *, timeout: float | None = None) -> TaskRecord:
        """Create a task and wait for its final record."""
        task_id = await self.create_task(model, input)
        return await self.wait(task_id, model=model, timeout=timeout)

    async def get_veo_1080p(self, task_id: str, *, index: int = 0) -> str:
        """``GET /api/v1/veo/get-1080p-video``: the 1080p URL of a successful Veo task's video
        ``index``. Kie makes it in 1-3 minutes after success and answers non-200 until then (retry
        every 20-30 s); videos of the deprecated fallback cannot have one."""
        data = await self._call(
            "GET",
            "/api/v1/veo/get-1080p-video",
            "veo get-1080p-video",
            limiter=self.poll_limiter,
            params={"taskId": task_id, "index": str(index)},
        )
        url = data.get("resultUrl") if isinstance(data, dict) else None
        if not url:
            raise KieProtocolError("Kie get-1080p-video answered without data.resultUrl.")
        return str(url)

    async def get_credits(self) -> float:
        """``GET /api/v1/chat/credit``: the account's credit balance."""
        data = await self._call("GET", "/api/v1/chat/credit", "credit")
        return float(data)

    async def upload_file(
        self,
        source: bytes | str | os.PathLike[str],
        *,
        file_name: str | None = None,
        upload_path: str = DEFAULT_UPLOAD_FOLDER,
        content_type: str | None = None,
    ) -> UploadedFile:
        """``POST /api/file-stream-upload`` on :attr:`upload_url`: send a file (its bytes, or a local
        path) and return its public URL (:attr:`UploadedFile.url`), which Kie deletes after 3 days.

        Uploads are free and a repeat only stores the same file again, so transient failures (429,
        5xx, timeouts, drops) are retried like any idempotent request. ``file_name`` defaults to the
        path's name (Kie picks a random one for bytes without a name); a file of the same name in
        the same ``upload_path`` is replaced.

        Raises:
            KieValidationError: ``upload_path`` has a leading or trailing slash, or is empty.
            KieError: what Kie answered (400 missing parameter, 401, ...), or KieProtocolError for
                an answer without ``downloadUrl``/``fileUrl``.
        """
        check_upload_path(upload_path)
        if isinstance(source, bytes):
            data = source
        else:
            data = await asyncio.to_thread(Path(source).read_bytes)
            file_name = file_name or Path(source).name
        form = {"uploadPath": upload_path, **({"fileName": file_name} if file_name else {})}
        mime = content_type or sniff_image_type(data[:12]) or "application/octet-stream"
        part = (file_name or "upload", data, mime)
        answer = await self._call(
            "POST",
            f"{self.upload_url}{STREAM_UPLOAD_PATH}",
            "file-stream-upload",
            data=form,
            files={"file": part},
        )
        uploaded = uploaded_file(answer)
        self.usage.uploads += 1
        self.usage.bytes_uploaded += len(data)
        return uploaded

    async def get_download_url(self, url: str) -> str:
        """``POST /api/v1/common/download-url``: a fresh (20-minute) download link for a Kie result URL."""
        data = await self._call("POST", "/api/v1/common/download-url", "download-url", json={"url": url})
        return str(data)

    async def fetch(
        self, url: str, *, max_bytes: int | None = None, media: MediaType | str = MediaType.IMAGE
    ) -> FetchedFile:
        """Download ``url`` into memory (capped, type-checked), retrying transport errors and 5xx.

        ``media`` is what the result should be (the model's ``ModelSpec.media``): its content types
        are accepted, and the cap is at least the media type's (see :func:`.download.size_cap`).

        A 403/404/410 (an expired link) raises :class:`~kie_pipeline.client.errors.KieDownloadError`
        at once, with its ``status``: ask :meth:`get_download_url` for a fresh link.
        """
        cap = size_cap(media, self.max_download_bytes) if max_bytes is None else max_bytes
        async with self._download_slots:
            async for attempt in retrying(self.retry, functools.partial(self._on_retry, "download")):
                with attempt:
                    fetched = await _fetch(self._files, url, max_bytes=cap, media=media)
        self.usage.downloads += 1
        self.usage.bytes_downloaded += len(fetched.data)
        return fetched

    async def download(
        self,
        url: str,
        dest: str,
        *,
        max_bytes: int | None = None,
        write: Writer | None = None,
        media: MediaType | str = MediaType.IMAGE,
    ) -> DownloadResult:
        """Fetch ``url`` (see :meth:`fetch`; ``media`` is what the result should be) and hand its
        bytes to ``write(dest, data)``, off the event loop; returns what was written and its sha256.

        ``write`` defaults to :func:`write_to_store`: ``dest`` is a local path or fsspec URL, written
        atomically. Pass your own to write with storage options or anywhere else.
        """
        fetched = await self.fetch(url, max_bytes=max_bytes, media=media)
        await asyncio.to_thread(write or write_to_store, dest, fetched.data)
        return DownloadResult(
            path=dest, bytes=len(fetched.data), sha256=fetched.sha256, content_type=fetched.content_type
        )
