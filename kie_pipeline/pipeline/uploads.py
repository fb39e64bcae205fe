"""Local reference images: checked with the manifest, uploaded just before createTask, cached by content.

A manifest's image fields (``image_input`` and each model's image-URL fields) may name local files,
relative to the manifest's folder or absolute (or any fsspec URL that is not http(s)). Validation
checks each file (it exists, is a jpeg/png/webp by its first bytes, is within the model's documented
size) and writes it into the request's input as ``local:sha256:<hex>``: the request key then hashes
the file's *content*, so the same image never pays twice and a changed image is generated again,
while the URL Kie gives each upload (new every time) never enters the key.

Just before createTask, :class:`Uploader` swaps each reference for a URL of Kie's File Upload API.
URLs are cached by content hash in ``{store}/uploads/{sha256}.json`` and reused while younger than
:data:`UPLOAD_MAX_AGE_S`, so a reference image shared by a whole dataset is uploaded once (rows of
one run that need it at the same time wait for the same upload).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os.path
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import fsspec

from kie_pipeline.client import AsyncKieClient
from kie_pipeline.client.upload import IMAGE_EXTENSIONS, UPLOAD_RETENTION_S, sniff_image_type

from .store import TaskStore, join

log = logging.getLogger(__name__)

#: How a local file appears in a request's input (and so in the request key, records and catalog).
LOCAL_PREFIX = "local:sha256:"
#: Reuse a cached upload while younger than Kie's 3-day retention minus one day. The day is margin for
#: what happens after createTask: Kie fetches inputs when the task runs (minutes, but a queue or a
#: retried task can take longer), and Kie's deletion clock is not ours. Uploads are free, so erring
#: towards a new upload costs nothing but a second.
UPLOAD_MAX_AGE_S = UPLOAD_RETENTION_S - 24 * 3600.0
#: The folder (``uploadPath``) of our uploads; files are named by content hash, so a repeat replaces
#: the same file with the same bytes.
UPLOAD_FOLDER = "kie-pipeline"


class LocalImageError(Exception):
    """A local reference image cannot be used (missing, not an accepted image, too large, changed)."""


@dataclass(frozen=True)
class LocalImage:
    """A checked local image: where it is, its content hash, size and type."""

    path: str
    sha256: str
    bytes: int
    mime_type: str

    @property
    def ref(self) -> str:
        """The reference that stands for this content in a request's input."""
        return f"{LOCAL_PREFIX}{self.sha256}"


def is_local_ref(value: Any) -> bool:
    """Whether ``value`` is a local image reference made by :func:`inspect_image`."""
    return isinstance(value, str) and value.startswith(LOCAL_PREFIX)


def resolve_path(value: str, base_dir: str) -> str:
    """A manifest's image path made absolute: relative paths are relative to ``base_dir`` (the
    manifest's folder, a local path or fsspec URL); absolute paths and URLs stay as they are."""
    if "://" in value or value.startswith("/"):
        return value
    if "://" in base_dir:
        return join(base_dir, value)
    return os.path.normpath(os.path.join(base_dir, value))


def _read(path: str, max_bytes: int | None = None) -> bytes:
    """The file's bytes; raises LocalImageError when it is missing, too large or unreadable."""
    try:
        return _read_file(path, max_bytes)
    except (OSError, ValueError) as exc:  # unreadable, or a name the filesystem cannot hold
        raise LocalImageError(f"{path} cannot be read ({type(exc).__name__}: {exc})") from None


def _read_file(path: str, max_bytes: int | None) -> bytes:
    fs, fpath = fsspec.core.url_to_fs(path)
    if not fs.isfile(fpath):
        raise LocalImageError(f"{path} is not a file" if fs.exists(fpath) else f"no file at {path}")
    size = int(fs.size(fpath))
    # The size is checked before reading: a mistaken path to a huge file is refused, not read.
    if max_bytes is not None and size > max_bytes:
        raise LocalImageError(f"{path} is {size:,} bytes; this field takes images of at most {max_bytes:,}")
    return fs.cat_file(fpath)


def inspect_image(path: str, max_bytes: int) -> LocalImage:
    """Check a local image for an image field (exists, jpeg/png/webp, at most ``max_bytes``).

    Raises:
        LocalImageError: saying what is wrong with the file.
    """
    data = _read(path, max_bytes)
    mime = sniff_image_type(data[:12])
    if mime is None:
        accepted = ", ".join(IMAGE_EXTENSIONS.values())
        raise LocalImageError(f"{path} is not an image Kie accepts ({accepted})")
    return LocalImage(path, hashlib.sha256(data).hexdigest(), len(data), mime)


def swap_refs(value: Any, urls: Mapping[str, str]) -> Any:
    """``value`` (an input, or any JSON value in it) with each reference in ``urls`` replaced."""
    if isinstance(value, str):
        return urls.get(value, value)
    if isinstance(value, list):
        return [swap_refs(v, urls) for v in value]
    if isinstance(value, dict):
        return {k: swap_refs(v, urls) for k, v in value.items()}
    return value


def refs_in(value: Any) -> set[str]:
    """Every local reference in an input."""
    if isinstance(value, list):
        return set().union(*map(refs_in, value)) if value else set()
    if isinstance(value, dict):
        return refs_in(list(value.values()))
    return {value} if is_local_ref(value) else set()


@dataclass(frozen=True)
class _Upload:
    url: str
    uploaded_at: datetime


class UploadCache:
    """``{store}/uploads/{sha256}.json``: the URL of each uploaded content and when it was uploaded."""

    def __init__(self, store: TaskStore, max_age_s: float = UPLOAD_MAX_AGE_S) -> None:
        self.store = store
        self.max_age_s = max_age_s

    def uri(self, sha256: str) -> str:
        return join(self.store.root, "uploads", f"{sha256}.json")

    def fresh(self, upload: _Upload) -> bool:
        return (datetime.now(UTC) - upload.uploaded_at).total_seconds() < self.max_age_s

    def get(self, sha256: str) -> _Upload | None:
        """The cached upload of this content while it is fresh, else None (a damaged entry is ignored)."""
        try:
            entry = json.loads(self.store.read_bytes(self.uri(sha256)))
            upload = _Upload(str(entry["url"]), datetime.fromisoformat(entry["uploaded_at"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return upload if self.fresh(upload) else None

    def put(self, image: LocalImage, upload: _Upload) -> None:
        entry = {
            "sha256": image.sha256,
            "url": upload.url,
            "uploaded_at": upload.uploaded_at.isoformat(),
            "bytes": image.bytes,
            "mime_type": image.mime_type,
            "source": image.path,
        }
        self.store.write_bytes(self.uri(image.sha256), json.dumps(entry, sort_keys=True).encode())


class Uploader:
    """Swaps the local references of a request's input for uploaded URLs.

    One upload per content per run at most: rows that need the same image at the same time share one
    upload, and a fresh URL in the store's cache is used without uploading at all.
    """

    def __init__(
        self, client: AsyncKieClient, store: TaskStore, *, max_age_s: float = UPLOAD_MAX_AGE_S
    ) -> None:
        self.client = client
        self.cache = UploadCache(store, max_age_s)
        self._pending: dict[str, asyncio.Future[_Upload]] = {}

    async def resolve(
        self, input: dict[str, Any], files: Mapping[str, str]
    ) -> tuple[dict[str, Any], dict[str, str]]:
        """``input`` with each local reference replaced by its URL, and the map reference → URL.

        ``files`` maps each reference to the file it was made from (the manifest's ``local_images``).

        Raises:
            LocalImageError: a reference without a file, or a file that changed since validation.
            KieError: the upload failed (after the client's retries).
        """
        refs = sorted(refs_in(input))
        if not refs:
            return input, {}
        missing = [r for r in refs if r not in files]
        if missing:
            raise LocalImageError(f"no file is known for {missing[0]}; materialize prompt_manifest again")
        urls = await asyncio.gather(*(self._url(ref, files[ref]) for ref in refs))
        by_ref = dict(zip(refs, urls, strict=True))
        return swap_refs(input, by_ref), by_ref

    async def _url(self, ref: str, path: str) -> str:
        sha = ref.removeprefix(LOCAL_PREFIX)
        pending = self._pending.get(sha)
        # A failed upload is not kept: the next row that needs the image tries again.
        if pending is None or (
            pending.done() and (pending.exception() or not self.cache.fresh(pending.result()))
        ):
            pending = asyncio.ensure_future(self._upload(sha, path))
            self._pending[sha] = pending
        return (await asyncio.shield(pending)).url

    async def _upload(self, sha: str, path: str) -> _Upload:
        cached = await asyncio.to_thread(self.cache.get, sha)
        if cached is not None:
            return cached
        # Checked against the model's limit at validation; only the content hash matters now.
        data = await asyncio.to_thread(_read, path)
        if hashlib.sha256(data).hexdigest() != sha:
            raise LocalImageError(
                f"{path} changed after the manifest was validated; materialize prompt_manifest again "
                "(the changed image is then a new request)"
            )
        mime = sniff_image_type(data[:12]) or "application/octet-stream"
        name = f"{sha}.{IMAGE_EXTENSIONS.get(mime, 'bin')}"
        uploaded = await self.client.upload_file(
            data, file_name=name, upload_path=UPLOAD_FOLDER, content_type=mime
        )
        upload = _Upload(uploaded.url, datetime.now(UTC))
        image = LocalImage(path, sha, len(data), mime)
        try:
            await asyncio.to_thread(self.cache.put, image, upload)
        except OSError as exc:  # the cache only saves uploads; the store's own errors surface elsewhere
            log.warning("Could not cache the upload of %s in the store: %s", path, exc)
        return upload


__all__ = [
    "LOCAL_PREFIX",
    "UPLOAD_MAX_AGE_S",
    "LocalImage",
    "LocalImageError",
    "UploadCache",
    "Uploader",
    "inspect_image",
    "is_local_ref",
    "refs_in",
    "resolve_path",
    "swap_refs",
]
