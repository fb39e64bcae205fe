"""The durable store: task records and image copies under ``KIE_STORE`` (a folder or fsspec URL).

Layout::

    {store}/tasks/{request_key}.json     one record per request, written as soon as Kie answers
    {store}/images/{request_key}.{ext}   the durable copy of each image

File names come only from request keys (hex digests), never from manifest ids or server names, so
nothing can escape the store. Records are written whole (atomically on local disks).
"""

from __future__ import annotations

import json
from typing import Any

import fsspec

from kie_pipeline.client.download import fsync_file, write_bytes


def join(root: str, *parts: str) -> str:
    """Join a local path or URL with path parts."""
    return "/".join([root.rstrip("/"), *parts])


class TaskStore:
    """Task records and images under one root (local path or fsspec URL)."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")
        self.fs, self._root_path = fsspec.core.url_to_fs(self.root)

    def record_uri(self, key: str) -> str:
        return join(self.root, "tasks", f"{key}.json")

    def image_uri(self, key: str, ext: str) -> str:
        return join(self.root, "images", f"{key}.{ext}")

    def _path(self, uri: str) -> str:
        return fsspec.core.url_to_fs(uri)[1]

    def load_many(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        """The records that exist for ``keys`` (one batched read where the filesystem allows)."""
        if not keys:
            return {}
        paths = {self._path(self.record_uri(k)): k for k in keys}
        found = self.fs.cat(list(paths), on_error="omit")
        return {paths[p]: json.loads(data) for p, data in found.items()}

    def save(self, key: str, record: dict[str, Any], *, fsync: bool = True) -> None:
        """Write a record whole. Raises OSError when the store is not writable."""
        data = json.dumps(record, sort_keys=True, default=str).encode()
        write_bytes(self.record_uri(key), data, fsync=fsync)

    def fsync(self, key: str) -> None:
        """Flush a record saved with ``fsync=False`` to disk."""
        fsync_file(self.record_uri(key))

    def exists(self, uri: str) -> bool:
        return bool(self.fs.exists(self._path(uri)))

    def read_bytes(self, uri: str) -> bytes:
        return self.fs.cat_file(self._path(uri))
