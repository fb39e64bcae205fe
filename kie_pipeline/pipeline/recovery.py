"""Keeping what was paid for when the store fails: unrecorded task ids and damaged records.

- A task whose record cannot be written (the store became read-only, the disk filled up) must never
  exist only in memory: its id goes to a **fallback file** on this machine's disk (and to the run's
  log and failure metadata), and the next run of the batch **adopts** it instead of creating the row
  again.
- A task record that is not valid JSON is set aside by the store; :func:`recover_record` rebuilds
  what can be rebuilt from the task id still readable in it and from the durable copies under the
  row's request key, before anything is created again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from kie_pipeline.client import MediaType

from .dedup import phash_bytes
from .media import MediaError, media_of, probe
from .record import RecordStatus, RequestRecord, ResultCopy
from .store import TaskStore


def fallback_path(store: TaskStore) -> str:
    """The fallback file of ``store``'s unrecorded tasks on this machine (outside the store)."""
    digest = hashlib.sha256(store.root.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), "kie-pipeline", "unrecorded", f"{digest}.jsonl")


def save_unrecorded(store: TaskStore, entry: dict[str, Any]) -> str | None:
    """Append one unrecorded task (row id, request key, task id, ...) to the fallback file.

    Returns the file's path, or None if even that could not be written (then the run's log and the
    failure's metadata are the only copies, and the message says so).
    """
    path = fallback_path(store)
    line = json.dumps({**entry, "at": datetime.now(UTC).isoformat()}, sort_keys=True) + "\n"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError:
        return None
    return path


def load_unrecorded(store: TaskStore) -> dict[str, dict[str, Any]]:
    """Unrecorded tasks of ``store`` by request key (the latest entry of each key wins)."""
    out: dict[str, dict[str, Any]] = {}
    try:
        with open(fallback_path(store), encoding="utf-8") as fh:
            for line in fh:
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if isinstance(entry, dict) and entry.get("request_key") and entry.get("task_id"):
                        out[entry["request_key"]] = entry
    except FileNotFoundError:
        pass
    return out


def forget_unrecorded(store: TaskStore, keys: Iterable[str]) -> None:
    """Drop entries whose task is now recorded in the store (rewritten atomically)."""
    done = set(keys)
    if not done:
        return
    path = fallback_path(store)
    remaining = [e for k, e in load_unrecorded(store).items() if k not in done]
    if not remaining:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(e, sort_keys=True) + "\n" for e in remaining)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def describe_copy(store: TaskStore, uri: str, media: MediaType | str | None = None) -> ResultCopy | None:
    """The durable copy found on disk at ``uri`` (hash, size, media properties), or None.

    ``media`` is the row's model's media type (None: whatever the file is), probed as generation
    probes it, so a recovered copy has the same catalog fields as one written by a run.
    """
    try:
        data = store.read_bytes(uri)
        info = probe(data, media)
    except (OSError, MediaError):
        return None
    return ResultCopy(
        uri=uri,
        sha256=hashlib.sha256(data).hexdigest(),
        bytes=len(data),
        width=info.width,
        height=info.height,
        format=uri.rsplit(".", 1)[-1],
        media_type=info.media_type.value,
        mime_type=info.mime_type,
        duration_s=info.duration_s,
        phash=phash_bytes(data, info.media_type),
    )


def recover_record(store: TaskStore, row: dict[str, Any], damaged: RequestRecord) -> RequestRecord:
    """A usable record for ``row`` from a damaged one (see :meth:`TaskStore.load_many`).

    - copies on disk and no task id: ``success`` with those copies (reused, nothing paid);
    - a task id (with or without copies): ``submitted``, so the run polls that task and downloads
      only what is missing;
    - neither: ``uncertain`` (a task may have been paid for): the row is submitted again, and the
      run says it may pay twice.
    """
    media = media_of(row.get("model"))
    found = (describe_copy(store, u, media) for u in store.copies_of(row["request_key"]))
    copies = [c for c in found if c]
    if damaged.task_id:
        status = RecordStatus.SUBMITTED
    elif copies:
        status = RecordStatus.SUCCESS
    else:
        status = RecordStatus.UNCERTAIN
    return RequestRecord.for_row(
        row, None, status, task_id=damaged.task_id, images=list(copies), recovered_from=damaged.set_aside
    )
