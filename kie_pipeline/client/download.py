"""Streaming download of result files to a local path or an fsspec URL, with a size cap."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import uuid

import fsspec
import httpx

from .errors import KieDownloadError
from .models import DownloadResult, FetchedFile
from .registry import is_http_url

#: Content types accepted for a result file; anything else (an HTML error page, say) is refused.
ACCEPTED_CONTENT_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")


async def fetch(client: httpx.AsyncClient, url: str, *, max_bytes: int) -> FetchedFile:
    """GET ``url`` into memory, refusing non-http(s) URLs, wrong types and anything over ``max_bytes``."""
    if not is_http_url(url):
        raise KieDownloadError(f"Refusing to download {url[:80]!r}: only http(s) URLs are allowed.")
    try:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise _status_error(response.status_code, url)
            ctype = (response.headers.get("content-type") or "").split(";")[0].strip().lower() or None
            if ctype is not None and not ctype.startswith(ACCEPTED_CONTENT_TYPES):
                raise KieDownloadError(f"Refusing a result with content type {ctype!r} (expected an image).")
            length = response.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise KieDownloadError(f"Result is {int(length)} bytes, over the cap of {max_bytes} bytes.")
            digest = hashlib.sha256()
            buf = io.BytesIO()
            async for chunk in response.aiter_bytes(1 << 16):
                if buf.tell() + len(chunk) > max_bytes:
                    raise KieDownloadError(f"Result is over the cap of {max_bytes} bytes; download aborted.")
                digest.update(chunk)
                buf.write(chunk)
            return FetchedFile(buf.getvalue(), digest.hexdigest(), ctype)
    except httpx.HTTPError as exc:
        err = KieDownloadError(f"Download failed: {type(exc).__name__}.")
        err.retryable = True
        raise err from None


def _status_error(status: int, url: str) -> KieDownloadError:
    # Never echo the query string: signed URLs carry tokens.
    host = httpx.URL(url).host
    err = KieDownloadError(f"Download from {host} answered HTTP {status}.", status=status)
    err.retryable = status >= 500 or status == 429
    return err


def write_bytes(dest: str, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to a local path or fsspec URL so that a reader never sees a partial file.

    ``fsync=False`` survives a killed process but not a lost machine; call :func:`fsync_file` later.
    """
    fs, path = fsspec.core.url_to_fs(dest)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if "file" in fs.protocol or fs.protocol == "local":
        tmp = f"{path}.{uuid.uuid4().hex}.part"
        with fs.open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)  # atomic on a local filesystem
    else:
        # Object stores (S3, GCS, ...) publish an object only when its upload completes.
        with fs.open(path, "wb") as fh:
            fh.write(data)


def fsync_file(dest: str) -> None:
    """Flush a local file written with ``fsync=False`` to disk (object stores need nothing)."""
    fs, path = fsspec.core.url_to_fs(dest)
    if "file" in fs.protocol or fs.protocol == "local":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


async def save(fetched: FetchedFile, dest: str) -> DownloadResult:
    """Write a fetched file to ``dest`` (local path or fsspec URL) off the event loop."""
    await asyncio.to_thread(write_bytes, dest, fetched.data)
    return DownloadResult(
        path=dest, bytes=len(fetched.data), sha256=fetched.sha256, content_type=fetched.content_type
    )
