"""The durable store: task records and image copies under ``KIE_STORE`` (a folder or fsspec URL).

Layout::

    {store}/tasks/{request_key}.json     one record per request, written as soon as Kie answers
    {store}/images/{request_key}.{ext}   the durable copy of each image

File names come only from request keys (hex digests), never from manifest ids or server names, so
nothing can escape the store. Records are written whole (atomically on local disks).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

from .record import RecordStatus, RequestRecord

#: A task id in the text of a damaged record.
_TASK_ID = re.compile(r'"task_id"\s*:\s*"([A-Za-z0-9_-]+)"')


def join(root: str, *parts: str) -> str:
    """Join a local path or URL with path parts."""
    return "/".join([root.rstrip("/"), *parts])


def _is_local(fs: AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols or "local" in protocols


def atomic_write(
    fs: AbstractFileSystem, path: str, data: bytes, *, fsync: bool = True, hidden_temp: bool = False
) -> None:
    """Write ``data`` so that a reader never sees a partial file.

    Local disks: a temporary file in the same folder, fsynced, then renamed over the target (the
    temporary file is removed if anything fails). Object stores: one PUT, which publishes the object
    only when the upload is complete. ``hidden_temp`` names the temporary file ``.{name}.*.part``:
    readers of a directory dataset (pyarrow, pandas, Spark) skip names starting with ``.``, so a
    file being written into such a folder is never read as a part of the table.
    """
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if not _is_local(fs):
        fs.pipe_file(path, data)
        return
    folder, slash, name = path.rpartition("/")
    tmp = f"{folder}{slash}{'.' if hidden_temp else ''}{name}.{uuid.uuid4().hex}.part"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def write_atomically(url: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Write ``data`` to a local path or fsspec URL with :func:`atomic_write` (fsynced on local disks).

    ``storage_options`` are the fsspec options of the URL's filesystem (an S3 endpoint, say).
    """
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    atomic_write(fs, path, data)


class TaskStore:
    """Task records and images under one root (local path or fsspec URL).

    ``storage_options`` are the fsspec options of the root's filesystem (``endpoint_url``, ...): every
    read and write of the store goes through the one filesystem built with them.
    """

    def __init__(self, root: str, *, storage_options: dict[str, Any] | None = None) -> None:
        self.root = root.rstrip("/")
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        self.fs, self._root_path = fsspec.core.url_to_fs(self.root, **self.storage_options)

    def record_uri(self, key: str) -> str:
        return join(self.root, "tasks", f"{key}.json")

    def image_uri(self, key: str, ext: str) -> str:
        return join(self.root, "images", f"{key}.{ext}")

    def _path(self, uri: str) -> str:
        # Our own URIs all start with the root: map them without parsing (url_to_fs is ~0.1 ms).
        if uri.startswith(self.root + "/"):
            return self._root_path.rstrip("/") + uri[len(self.root) :]
        return fsspec.core.url_to_fs(uri)[1]

    def normalize(self, uri: str) -> str:
        """A URI as the filesystem names it (the keys of :meth:`image_sizes`)."""
        return self._path(uri)

    def image_sizes(self) -> dict[str, int]:
        """Size of every durable copy, from one listing of ``images/`` (no file is read)."""
        root = self._path(join(self.root, "images"))
        try:
            found = self.fs.find(root, detail=True)
        except FileNotFoundError:
            return {}
        return {path: int(info.get("size") or 0) for path, info in found.items()}

    def load_many(self, keys: list[str], *, set_aside: bool = True) -> dict[str, RequestRecord]:
        """The records that exist for ``keys`` (one batched read where the filesystem allows).

        A file that is not a valid record (truncated by a crash or a full disk, or edited by hand)
        is set aside under ``tasks/corrupt/`` and returned as a ``corrupt`` record with what could
        be read from it (the task id, if its text still holds one), so one bad file never blocks a
        batch. ``set_aside=False`` leaves such a file where it is (readers that must not write).
        """
        if not keys:
            return {}
        paths = {self._path(self.record_uri(k)): k for k in keys}
        found = self.fs.cat(list(paths), on_error="omit")
        out: dict[str, RequestRecord] = {}
        for path, data in found.items():
            key = paths[path]
            try:
                out[key] = RequestRecord.from_json(data)
            except ValueError as exc:
                out[key] = self._set_aside(key, path, data, exc, move=set_aside)
        return out

    def load(self, key: str) -> RequestRecord | None:
        """One record, or None (see :meth:`load_many`)."""
        return self.load_many([key]).get(key)

    def _set_aside(
        self, key: str, path: str, data: bytes, exc: Exception, *, move: bool = True
    ) -> RequestRecord:
        text = data.decode("utf-8", errors="replace")
        match = _TASK_ID.search(text)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        aside = self._path(join(self.root, "tasks", "corrupt", f"{key}.{stamp}.json"))
        try:
            if not move:
                raise PermissionError("left in place")  # reported the same way as a read-only store
            self.fs.makedirs(aside.rsplit("/", 1)[0], exist_ok=True)
            self.fs.mv(path, aside)
        except OSError:
            aside = path  # a read-only store: leave it where it is; it is reported all the same
        # One line, without pydantic's "further information" links.
        lines = [ln.strip() for ln in str(exc).splitlines() if "errors.pydantic.dev" not in ln]
        detail = " ".join(lines)[:300]
        return RequestRecord(
            key=key,
            status=RecordStatus.CORRUPT,
            task_id=match.group(1) if match else None,
            corrupt_file=path,
            set_aside=aside,
            error=f"{type(exc).__name__}: {detail}",
        )

    def copies_of(self, key: str) -> list[str]:
        """The durable copies written under a request key (result 0 first), found by listing."""
        folder = self._path(join(self.root, "images"))
        try:
            names = self.fs.glob(f"{folder}/{key}.*") + self.fs.glob(f"{folder}/{key}-*.*")
        except FileNotFoundError:
            return []
        names = [n for n in names if not n.endswith(".part")]

        def index(name: str) -> int:
            stem = name.rsplit("/", 1)[-1].split(".", 1)[0]
            return int(stem.rsplit("-", 1)[1]) if "-" in stem else 0

        prefix = self.root[: -len(self._root_path)] if self.root.endswith(self._root_path) else ""
        return [f"{prefix}{n}" for n in sorted(names, key=index)]

    @property
    def is_local(self) -> bool:
        """Whether the store is a local folder (atomic renames, flock)."""
        return _is_local(self.fs)

    @property
    def local_root(self) -> str:
        """The store's folder on this machine (local stores only)."""
        return self._root_path

    def save(self, record: RequestRecord, *, fsync: bool = True) -> None:
        """Write a record whole, under its request key. Raises OSError when the store is not writable."""
        atomic_write(self.fs, self._path(self.record_uri(record.key)), record.to_json(), fsync=fsync)

    def fsync(self, key: str) -> None:
        """Flush a record saved with ``fsync=False`` to disk (object stores need nothing)."""
        if _is_local(self.fs):
            fd = os.open(self._path(self.record_uri(key)), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write a durable copy whole (atomically). Raises OSError when the store is not writable."""
        atomic_write(self.fs, self._path(uri), data)

    def exists(self, uri: str) -> bool:
        return bool(self.fs.exists(self._path(uri)))

    def read_bytes(self, uri: str) -> bytes:
        return self.fs.cat_file(self._path(uri))


def parse_store_options(text: str) -> dict[str, Any]:
    """The store's fsspec options from ``KIE_STORE_OPTIONS``: a JSON object ('' means none).

    Raises ValueError naming the variable when ``text`` is not a JSON object. The value itself is not
    echoed: a misused variable could hold a secret.
    """
    if not text.strip():
        return {}
    example = """KIE_STORE_OPTIONS='{"endpoint_url": "https://s3.example.com"}'"""
    try:
        options = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"KIE_STORE_OPTIONS is not valid JSON ({exc}); set a JSON object, e.g. {example}."
        ) from None
    if not isinstance(options, dict):
        raise ValueError(
            f"KIE_STORE_OPTIONS must be a JSON object of fsspec options, not {_json_kind(options)};"
            f" e.g. {example}."
        )
    return options


def _json_kind(value: object) -> str:
    """What a decoded JSON value is, in JSON's words ("an array", "a string", ...)."""
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array"}
    return "null" if value is None else kinds.get(type(value), "a JSON value")
