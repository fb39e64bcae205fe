"""Copying a finished task's results into the store: download (a fresh link when the
direct one expired), probe as the model's media type, write the durable copy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from kie_pipeline.client import KieDownloadError, KieError, MediaType, TaskRecord

from .batch_state import BatchState
from .dedup import phash_bytes
from .media import MediaError, MediaInfo, media_of, probe
from .outcome import Outcome
from .record import FailCode, RecordStatus, RequestRecord, ResultCopy

#: Result-link statuses that mean "expired": ask download-url for a fresh link.
EXPIRED_STATUSES = (403, 404, 410)


def result_meta(final: TaskRecord, index: int) -> dict[str, Any]:
    """Kie's metadata of result ``index`` (a track's title and tags), where its family's decoder
    gives it: ``result["tracks"]``, one dict per result URL, in their order (Suno; absent: {})."""
    tracks = (final.result or {}).get("tracks") or []
    entry = tracks[index] if index < len(tracks) else None
    return entry if isinstance(entry, dict) else {}


def _text_or_none(value: Any) -> str | None:
    if value in (None, "", []):
        return None
    # Tags come as a comma-separated string from Suno; a list is joined the same way.
    return ", ".join(map(str, value)) if isinstance(value, list) else str(value)


class CopyingBatch(BatchState):
    """A batch run's result copying."""

    async def _fetch_result(self, url: str, media: MediaType) -> tuple[bytes, str] | None:
        """The bytes and sha256 of one result; None when it is gone for good (past retention)."""
        try:
            fetched = await self.client.fetch(url, media=media)
        except KieDownloadError as exc:
            if exc.status not in EXPIRED_STATUSES:
                raise
            # The direct link expired: ask Kie for a fresh one (valid 20 minutes).
            try:
                fresh = await self.client.get_download_url(url)
            except KieError as refused:
                if refused.retryable:
                    raise
                return None  # Kie refuses a fresh link: the file is past its retention.
            self.summary.expired_links_refreshed += 1
            # Kie vouched for the file with a fresh link: if that fails, retry on the next run.
            fetched = await self.client.fetch(fresh, media=media)
        return fetched.data, fetched.sha256

    async def _copy(
        self, row: dict[str, Any], index: int, url: str, meta: Mapping[str, Any] | None = None
    ) -> ResultCopy | None:
        """Download result ``index`` and write its durable copy; None when it has expired.

        The file is probed as the model's media type (Pillow for images, PyAV for video and
        audio), and its extension follows the detected container. ``meta`` is Kie's metadata of
        this result (title, tags). Raises KieError when the download fails or the file is not of
        that media type (retry on the next run), OSError when the store cannot be written.
        """
        media = media_of(row["model"]) or MediaType.IMAGE
        got = await self._fetch_result(url, media)
        if got is None:
            return None
        data, sha = got
        try:
            # Probed and hashed in one thread hop: both decode the file.
            info, phash = await asyncio.to_thread(_describe, data, media)
        except MediaError as exc:
            raise KieDownloadError(f"Result {index} is not a readable {media} file: {exc}.") from exc
        name = row["request_key"] if index == 0 else f"{row['request_key']}-{index}"
        uri = self.store.image_uri(name, info.ext)
        await asyncio.to_thread(self.store.write_bytes, uri, data)
        meta = meta or {}
        return ResultCopy(
            uri=uri,
            sha256=sha,
            bytes=len(data),
            width=info.width,
            height=info.height,
            format=info.ext,
            media_type=info.media_type.value,
            mime_type=info.mime_type,
            duration_s=info.duration_s,
            phash=phash,
            title=_text_or_none(meta.get("title")),
            tags=_text_or_none(meta.get("tags")),
        )

    async def download(self, row: dict[str, Any], rec: RequestRecord, final: TaskRecord) -> None:
        """Copy every result of a finished task (those an earlier run copied are kept)."""
        urls = final.result_urls
        rec.images = (rec.images + [None] * len(urls))[: len(urls)]
        try:
            if not urls:
                raise KieDownloadError("Kie reported success without a result URL.")
            on_disk = await asyncio.to_thread(
                lambda: [im is not None and self.store.exists(im.uri) for im in rec.images]
            )
            for index, url in enumerate(urls):
                if on_disk[index]:
                    continue
                image = await self._copy(row, index, url, result_meta(final, index))
                if image is None:
                    await self._expired(row, rec, f"result {index} of task {rec.task_id} has expired")
                    return
                rec.images[index] = image
        except KieError as exc:
            rec.status, rec.error = RecordStatus.DOWNLOAD_FAILED, str(exc)
            await self._save_quietly(rec)
            self.settle(row, rec, Outcome.DOWNLOAD_FAILED, FailCode.DOWNLOAD_FAILED, str(exc))
            return
        except OSError as exc:
            self.stop(f"the store {self.store.root} is not writable: {exc} (task {rec.task_id} is recorded)")
            self.settle(row, rec, Outcome.STORE_ERROR, FailCode.STORE_ERROR, str(exc))
            return
        rec.status, rec.error = RecordStatus.SUCCESS, None
        try:
            await self.save(rec)
        except OSError:
            self.settle(
                row, rec, Outcome.STORE_ERROR, FailCode.STORE_ERROR, self.stop_reason or "store error"
            )
            return
        self.settle(row, rec, Outcome.SUCCEEDED)


def _describe(data: bytes, media: MediaType) -> tuple[MediaInfo, int | None]:
    """The file's media properties and its perceptual hash (None for audio)."""
    info = probe(data, media)
    return info, phash_bytes(data, info.media_type)
