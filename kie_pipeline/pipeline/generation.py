"""Generating one batch: submit (rate-limited), record at once, wait, download a durable copy.

Never pay twice: a row whose request key already has a record is never submitted again unless its
task failed; a record is written as soon as createTask answers. Never lose what was paid for: a run
stopped anywhere resumes from the records (tasks are polled, finished images are not re-downloaded).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from PIL import Image, UnidentifiedImageError

from kie_pipeline.client import (
    AsyncKieClient,
    KieAuthError,
    KieDownloadError,
    KieError,
    KieInsufficientCreditsError,
    KieTaskTimeoutError,
    TaskRecord,
    TaskState,
)
from kie_pipeline.client.download import write_bytes

from .store import TaskStore

log = logging.getLogger(__name__)

#: Result-link statuses that mean "expired": ask download-url for a fresh link.
EXPIRED_STATUSES = (403, 404, 410)
_FORMAT_EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}


class SystemicError(RuntimeError):
    """The batch stopped for a reason that affects every row (auth, credits, store, mass failure).

    Raised only after every task already created has been waited for and recorded.
    """

    def __init__(self, message: str, summary: BatchSummary) -> None:
        self.summary = summary
        super().__init__(message)


@dataclass
class BatchSummary:
    """What one call of :func:`generate_batch` did."""

    rows: int = 0
    created: int = 0
    reused: int = 0
    resumed: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    download_failed: int = 0
    not_submitted: int = 0
    expired_links_refreshed: int = 0
    fail_codes: Counter[str] = field(default_factory=Counter)
    stop_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "fail_codes"}
        d["fail_codes"] = dict(self.fail_codes)
        return d


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


class _Batch:
    def __init__(
        self,
        client: AsyncKieClient,
        store: TaskStore,
        *,
        submitters: int,
        max_consecutive_failures: int,
        wait_timeout: float | None,
        progress: Callable[[str], None],
    ) -> None:
        self.client = client
        self.store = store
        self.submitters = submitters
        self.max_consecutive_failures = max_consecutive_failures
        self.wait_timeout = wait_timeout
        self.progress = progress
        self.summary = BatchSummary()
        self.stop_reason: str | None = None
        self.consecutive_failures = 0
        self.results: dict[str, dict[str, Any]] = {}

    # -- records ---------------------------------------------------------------------------------
    async def save(self, rec: dict[str, Any]) -> None:
        await asyncio.to_thread(self.save_now, rec)

    def save_now(self, rec: dict[str, Any], *, fsync: bool = True) -> None:
        rec["updated_at"] = _now()
        try:
            self.store.save(rec["key"], rec, fsync=fsync)
        except OSError as exc:
            task = f" (task {rec['task_id']} was created and must not be lost)" if rec.get("task_id") else ""
            self.stop(f"the store {self.store.root} is not writable: {exc}{task}")
            raise

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.progress(f"Stopping new submissions: {reason}")

    # -- the row's life --------------------------------------------------------------------------
    async def create(self, row: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any] | None:
        """Create the row's task and record it at once; None when nothing was created."""
        if self.stop_reason:
            self.summary.not_submitted += 1
            self.results[row["id"]] = _result(
                row, None, "NOT_SUBMITTED", f"not submitted: {self.stop_reason}"
            )
            return None
        try:
            task_id = await self.client.create_task(
                row["model"], json.loads(row["input_json"]), validate=False
            )
        except (KieAuthError, KieInsufficientCreditsError) as exc:
            self.stop(str(exc))
            self.summary.not_submitted += 1
            self.results[row["id"]] = _result(row, None, str(exc.code), str(exc))
            return None
        except KieError as exc:
            # Nothing was created, so nothing is recorded: the next run submits this row again.
            self.summary.failed += 1
            self.summary.fail_codes[str(exc.code or "ERROR")] += 1
            self._count_failure()
            self.results[row["id"]] = _result(row, None, str(exc.code or "ERROR"), str(exc))
            return None
        self.summary.created += 1
        history = list((previous or {}).get("previous_task_ids", []))
        if previous and previous.get("task_id"):
            history.append(previous["task_id"])
        rec = {
            "key": row["request_key"],
            "id": row["id"],
            "batch": row["batch"],
            "model": row["model"],
            "input": json.loads(row["input_json"]),
            "task_id": task_id,
            "status": "submitted",
            "submitted_at": _now(),
            "previous_task_ids": history,
        }
        try:
            # Written synchronously, with no await between Kie's answer and the record: the only
            # window in which a kill loses a paid task is the answer's own trip over the network
            # (Kie has no idempotency key and no task listing to close it). The fsync, which only
            # a lost machine needs, happens off the event loop right after.
            self.save_now(rec, fsync=False)
            await asyncio.to_thread(self.store.fsync, rec["key"])
        except OSError:
            self.results[row["id"]] = _result(row, rec, "STORE_ERROR", self.stop_reason or "store error")
            return None
        return rec

    async def finish(self, row: dict[str, Any], rec: dict[str, Any], *, first_delay: float | None) -> None:
        """Wait for the task, record its outcome and make the durable copy."""
        try:
            final = await self.client.wait(rec["task_id"], timeout=self.wait_timeout, first_delay=first_delay)
        except KieTaskTimeoutError as exc:
            rec.update(status="timeout", error=str(exc), kie={"state": exc.last_state})
            self.summary.timed_out += 1
            await self._save_quietly(rec)
            self.results[row["id"]] = _result(row, rec, "TIMEOUT", str(exc))
            return
        except KieAuthError as exc:
            self.stop(str(exc))
            self.results[row["id"]] = _result(row, rec, "401", str(exc))
            return
        except KieError as exc:
            rec.update(error=str(exc))
            await self._save_quietly(rec)
            self.summary.failed += 1
            self.results[row["id"]] = _result(row, rec, str(exc.code or "ERROR"), str(exc))
            return
        rec["kie"] = {
            "state": final.state.value,
            "fail_code": final.fail_code,
            "fail_msg": final.fail_msg,
            "cost_time_ms": final.cost_time_ms,
            "create_time": _iso(final.create_time),
            "complete_time": _iso(final.complete_time),
            "result_urls": final.result_urls,
        }
        if final.state is TaskState.FAIL:
            rec.update(status="fail")
            self.summary.failed += 1
            self.summary.fail_codes[final.fail_code or "fail"] += 1
            self._count_failure()
            await self._save_quietly(rec)
            self.results[row["id"]] = _result(row, rec, final.fail_code, final.fail_msg)
            return
        await self.download(row, rec, final)

    async def download(self, row: dict[str, Any], rec: dict[str, Any], final: TaskRecord) -> None:
        urls = final.result_urls
        try:
            if not urls:
                raise KieDownloadError("Kie reported success without a result URL.")
            try:
                fetched = await self.client.fetch(urls[0])
            except KieDownloadError as exc:
                if exc.status not in EXPIRED_STATUSES:
                    raise
                # The direct link expired: ask Kie for a fresh one (valid 20 minutes).
                fresh = await self.client.get_download_url(urls[0])
                self.summary.expired_links_refreshed += 1
                fetched = await self.client.fetch(fresh)
            try:
                with Image.open(io.BytesIO(fetched.data)) as img:
                    width, height, fmt = img.width, img.height, img.format or ""
            except (UnidentifiedImageError, OSError) as exc:
                raise KieDownloadError("The result file is not a readable image.") from exc
        except KieError as exc:
            rec.update(status="download_failed", error=str(exc))
            self.summary.download_failed += 1
            await self._save_quietly(rec)
            self.results[row["id"]] = _result(row, rec, "DOWNLOAD_FAILED", str(exc))
            return
        ext = _FORMAT_EXT.get(fmt.upper(), row.get("output_format") or "bin")
        uri = self.store.image_uri(row["request_key"], ext)
        try:
            await asyncio.to_thread(write_bytes, uri, fetched.data)
        except OSError as exc:
            self.stop(
                f"the store {self.store.root} is not writable: {exc} (task {rec['task_id']} is recorded)"
            )
            self.results[row["id"]] = _result(row, rec, "STORE_ERROR", str(exc))
            return
        rec.update(
            status="success",
            error=None,
            image={
                "uri": uri,
                "sha256": fetched.sha256,
                "bytes": len(fetched.data),
                "width": width,
                "height": height,
                "format": ext,
            },
        )
        try:
            await self.save(rec)
        except OSError:
            self.results[row["id"]] = _result(row, rec, "STORE_ERROR", self.stop_reason or "store error")
            return
        self.summary.succeeded += 1
        self.consecutive_failures = 0
        self.results[row["id"]] = _result(row, rec, None, None)

    async def _save_quietly(self, rec: dict[str, Any]) -> None:
        # On failure stop() has recorded why, with the task id in the message.
        with contextlib.suppress(OSError):
            await self.save(rec)

    def _count_failure(self) -> None:
        self.consecutive_failures += 1
        if self.max_consecutive_failures and self.consecutive_failures >= self.max_consecutive_failures:
            self.stop(f"{self.consecutive_failures} consecutive failures; check the prompts and Kie's status")

    # -- the batch -------------------------------------------------------------------------------
    async def run(self, rows: list[dict[str, Any]]) -> None:
        self.summary.rows = len(rows)
        existing = await asyncio.to_thread(self.store.load_many, [r["request_key"] for r in rows])
        done_uris = [r["image"]["uri"] for r in existing.values() if r.get("status") == "success"]
        # One trip off the event loop for every existence check, not one per row.
        on_disk = await asyncio.to_thread(lambda: {u for u in done_uris if self.store.exists(u)})
        waiters: list[asyncio.Task[None]] = []
        queue: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
        for row in rows:
            rec = existing.get(row["request_key"])
            status = (rec or {}).get("status")
            if status == "success" and rec["image"]["uri"] in on_disk:
                self.summary.reused += 1
                self.results[row["id"]] = _result(row, rec, None, None)
            elif rec and rec.get("task_id") and status != "fail":
                # Paid for already (submitted, timed out, download failed or copy lost): resume.
                self.summary.resumed += 1
                waiters.append(asyncio.create_task(self.finish(row, rec, first_delay=0)))
            else:
                queue.append((row, rec))
        pending = iter(queue)

        async def submitter() -> None:
            # Rows are taken in manifest order; each created task gets its own waiter, so tasks in
            # flight are bounded by Kie's rate limit, not by the number of submitters.
            for row, previous in pending:
                rec = await self.create(row, previous)
                if rec is not None:
                    waiters.append(asyncio.create_task(self.finish(row, rec, first_delay=None)))

        await asyncio.gather(*(submitter() for _ in range(self.submitters)))
        # Whatever stopped submissions, every task already created is waited for and recorded.
        await asyncio.gather(*waiters)


def _result(
    row: dict[str, Any], rec: dict[str, Any] | None, fail_code: str | None, fail_msg: str | None
) -> dict[str, Any]:
    """One result row (a catalog row before the manifest's extra columns)."""
    rec = rec or {}
    kie = rec.get("kie") or {}
    image = rec.get("image") or {}
    urls = kie.get("result_urls") or []
    ok = fail_code is None and rec.get("status") == "success"
    return {
        "id": row["id"],
        "batch": row["batch"],
        "model": row["model"],
        "prompt": row["prompt"],
        "state": "success" if ok else "fail",
        "task_id": rec.get("task_id"),
        "result_url": urls[0] if urls else None,
        "image_uri": image.get("uri") if ok else None,
        "sha256": image.get("sha256") if ok else None,
        "bytes": image.get("bytes") if ok else None,
        "width": image.get("width") if ok else None,
        "height": image.get("height") if ok else None,
        "format": image.get("format") if ok else None,
        "fail_code": None if ok else (fail_code or kie.get("fail_code")),
        "fail_msg": None if ok else (fail_msg or kie.get("fail_msg")),
        "cost_time_ms": kie.get("cost_time_ms"),
        "created_at": kie.get("create_time"),
        "completed_at": kie.get("complete_time"),
        "submitted_at": rec.get("submitted_at"),
        "request_key": row["request_key"],
        "aspect_ratio": row.get("aspect_ratio"),
        "resolution": row.get("resolution"),
        "output_format": row.get("output_format"),
        "image_input": row.get("image_input"),
        "result_urls": json.dumps(urls),
    }


RESULT_COLUMNS = list(
    _result({k: None for k in ("id", "batch", "model", "prompt", "request_key")}, None, "", "").keys()
)


async def generate_batch(
    client: AsyncKieClient,
    store: TaskStore,
    manifest_rows: pd.DataFrame,
    *,
    submitters: int = 4,
    max_consecutive_failures: int = 10,
    wait_timeout: float | None = None,
    progress: Callable[[str], None] = log.info,
) -> tuple[pd.DataFrame, BatchSummary]:
    """Generate every row of a validated manifest slice; return one result row per manifest row.

    Raises:
        SystemicError: after recording everything already paid for, when submissions stopped
            (401, 402, an unwritable store, ``max_consecutive_failures`` failures in a row).
    """
    batch = _Batch(
        client,
        store,
        submitters=submitters,
        max_consecutive_failures=max_consecutive_failures,
        wait_timeout=wait_timeout,
        progress=progress,
    )
    rows = manifest_rows.to_dict("records")
    started = time.monotonic()
    await batch.run(rows)
    batch.summary.stop_reason = batch.stop_reason
    progress(
        f"Batch of {len(rows)} rows done in {time.monotonic() - started:.1f} s: {batch.summary.as_dict()}"
    )
    if batch.stop_reason:
        raise SystemicError(f"Generation stopped: {batch.stop_reason}", batch.summary)
    extras = [
        c for c in manifest_rows.columns if c not in RESULT_COLUMNS and c not in ("input_json", "row_number")
    ]
    ordered = [batch.results[r["id"]] for r in rows]
    out = pd.DataFrame(ordered, columns=RESULT_COLUMNS)
    for col in extras:
        out[col] = manifest_rows[col].to_numpy()
    return out, batch.summary
