"""Fetching result files into memory, with a size cap and a content-type check.

Writing them is not the client's business: :meth:`AsyncKieClient.download` hands the bytes to a
writer (by default the store's atomic writer, :func:`kie_pipeline.pipeline.store.write_atomically`).
"""

from __future__ import annotations

import hashlib
import io

import httpx

from .errors import KieDownloadError
from .models import FetchedFile
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
