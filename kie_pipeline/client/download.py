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
from .registry import MediaType, is_http_url

#: Served for any kind of file by some storage (S3 without a type set): accepted for every media type.
_GENERIC = ("application/octet-stream", "binary/octet-stream")
#: Content types accepted for a result file, by the model's media type; anything else (an HTML error
#: page, an image where a video was due) is refused.
ACCEPTED_BY_MEDIA: dict[MediaType, tuple[str, ...]] = {
    MediaType.IMAGE: ("image/", *_GENERIC),
    MediaType.VIDEO: ("video/", *_GENERIC),
    # application/ogg: the registered type of Ogg files, which some servers use for Ogg audio.
    MediaType.AUDIO: ("audio/", "application/ogg", *_GENERIC),
}
#: The image types (kept for callers of earlier versions).
ACCEPTED_CONTENT_TYPES = ACCEPTED_BY_MEDIA[MediaType.IMAGE]
#: The smallest size cap per media type: a client's ``max_download_bytes`` (sized for images by
#: default) never refuses a video or a track under these (Kie's videos run to tens of MB).
MIN_CAP_BY_MEDIA: dict[MediaType, int] = {
    MediaType.IMAGE: 0,
    MediaType.VIDEO: 500 * 1024 * 1024,
    MediaType.AUDIO: 100 * 1024 * 1024,
}


def size_cap(media: MediaType | str, max_bytes: int) -> int:
    """The size cap of a download of ``media`` when the client's cap is ``max_bytes``."""
    return max(max_bytes, MIN_CAP_BY_MEDIA[MediaType(media)])


async def fetch(
    client: httpx.AsyncClient, url: str, *, max_bytes: int, media: MediaType | str = MediaType.IMAGE
) -> FetchedFile:
    """GET ``url`` into memory, refusing non-http(s) URLs, anything over ``max_bytes`` and content
    types that are not ``media`` (or the generic octet-stream)."""
    kind = MediaType(media)
    if not is_http_url(url):
        raise KieDownloadError(f"Refusing to download {url[:80]!r}: only http(s) URLs are allowed.")
    try:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise _status_error(response.status_code, url)
            ctype = (response.headers.get("content-type") or "").split(";")[0].strip().lower() or None
            if ctype is not None and not ctype.startswith(ACCEPTED_BY_MEDIA[kind]):
                raise KieDownloadError(f"Refusing a result with content type {ctype!r} (expected {kind}).")
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
