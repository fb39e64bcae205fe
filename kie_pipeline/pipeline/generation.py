"""Generating one batch: submit (rate-limited), record at once, wait, download durable copies.

Never pay twice: an intent record is written before each createTask and the task id as soon as Kie
answers; a row whose request key already has a task is never submitted again unless that task
failed. A createTask whose answer was lost (Kie may or may not have created the task) is never
retried within the run: the row ends ``uncertain`` and the next run submits it again, saying so.
Never lose what was paid for: a run stopped anywhere resumes from the records (tasks are polled,
finished copies are not downloaded again), and every result of a task is copied.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import pandas as pd

from kie_pipeline.client import (
    AsyncKieClient,
    KieAuthError,
    KieCreateUncertainError,
    KieDownloadError,
    KieError,
    KieInsufficientCreditsError,
    KieNotFoundError,
    KieTaskTimeoutError,
    MediaType,
    PollingWaiter,
    TaskRecord,
    TaskState,
    Waiter,
    estimate_credits,
)

from .callbacks import CallbackBox, CallbackSettings, CallbackWaiter
from .lease import RowLease, RowLeaseHeld, batch_lease
from .media import MIME_BY_EXT, MediaError, media_of, probe
from .planning import CreditBudget, RowAction, copy_uris, estimate_plan, plan_rows, row_credits, shortfall
from .record import (
    MAYBE_PAID,
    FailCode,
    KieOutcome,
    RecordStatus,
    RequestRecord,
    ResultCopy,
)
from .recovery import forget_unrecorded, load_unrecorded, recover_record, save_unrecorded
from .schema import CATALOG_DTYPES, INTERNAL_MANIFEST_COLUMNS
from .store import TaskStore
from .uploads import LocalImageError, Uploader, swap_refs

log = logging.getLogger(__name__)

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


class Outcome(Enum):
    """How a row ends in a run: the :class:`BatchSummary` counter it adds to, its catalog ``state``,
    and whether it counts toward ``max_consecutive_failures``. Rows are settled only through
    ``_Batch.settle``, so the counters, the fail codes and the catalog always agree."""

    SUCCEEDED = ("succeeded", "success", False)
    REUSED = ("reused", "success", False)
    #: Kie reported the task failed, refused createTask, or could not be asked about the task.
    FAILED = ("failed", "fail", True)
    TIMED_OUT = ("timed_out", "fail", False)
    DOWNLOAD_FAILED = ("download_failed", "fail", False)
    EXPIRED = ("expired", "fail", False)
    UNCERTAIN = ("uncertain", "uncertain", True)
    NOT_SUBMITTED = ("not_submitted", "fail", False)
    STORE_ERROR = ("store_errors", "fail", False)

    def __init__(self, counter: str, state: str, streak: bool) -> None:
        self.counter = counter
        self.state = state
        self.streak = streak


class SystemicError(RuntimeError):
    """The batch stopped for a reason that affects every row (auth, credits, store, mass failure).

    Raised only after every task already created has been waited for and recorded. ``retryable``
    says whether running again later may succeed (an outage) or needs a fix first (a key, credits).
    """

    def __init__(self, message: str, summary: BatchSummary, *, retryable: bool) -> None:
        self.summary = summary
        self.retryable = retryable
        super().__init__(message)


@dataclass
class BatchSummary:
    """What one call of :func:`generate_batch` did (counted per row, not per result).

    Each row adds to exactly one :class:`Outcome` counter (``succeeded`` ... ``store_errors``), and
    every row that did not succeed adds its catalog ``fail_code`` to ``fail_codes``.
    """

    rows: int = 0
    created: int = 0
    reused: int = 0
    resumed: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    download_failed: int = 0
    not_submitted: int = 0
    store_errors: int = 0
    uncertain: int = 0
    resubmitted_uncertain: int = 0
    expired: int = 0
    regenerated_expired: int = 0
    results: int = 0
    expired_links_refreshed: int = 0
    credits_used: float = 0.0
    credits_from_kie: int = 0
    #: Estimated credits of the rows this run planned to create (before any budget or pre-flight).
    credits_estimated_needed: float = 0.0
    #: Rows planned to be created whose price the table does not know (not in the figure above).
    credits_unpriced_rows: int = 0
    recovered_records: int = 0
    adopted: int = 0
    #: Rows whose createTask answer was lost and whose task id a callback delivered.
    found_by_callback: int = 0
    fail_codes: Counter[str] = field(default_factory=Counter)
    stop_reason: str | None = None
    #: Tasks created whose record could not be written: {id, request_key, task_id, ...}.
    unrecorded: list[dict[str, Any]] = field(default_factory=list)
    #: Where those were saved for the next run to adopt (None: nowhere but the log and metadata).
    unrecorded_file: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in ("fail_codes", "unrecorded")}
        d["fail_codes"] = dict(self.fail_codes)
        d["unrecorded"] = len(self.unrecorded)
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
        regenerate_expired: bool,
        prices: Mapping[str, Any] | None,
        progress: Callable[[str], None],
        waiter: Waiter,
        max_credits: float | None = None,
        balance: float | None = None,
        callbacks: CallbackSettings | None = None,
    ) -> None:
        self.client = client
        self.waiter = waiter
        self.callbacks = callbacks
        self.box = CallbackBox(store)
        #: One task per created or resumed row, waiting for it and copying its results.
        self.waiters: list[asyncio.Task[None]] = []
        self.store = store
        self.uploads = Uploader(client, store)
        self.submitters = submitters
        self.max_consecutive_failures = max_consecutive_failures
        self.wait_timeout = wait_timeout
        self.regenerate_expired = regenerate_expired
        self.prices = prices
        self.progress = progress
        self.summary = BatchSummary()
        self.stop_reason: str | None = None
        self.stop_retryable = False
        #: The fail code of the rows not submitted after the stop.
        self.stop_code: str = FailCode.NOT_SUBMITTED
        self.budget = CreditBudget(max_credits)
        self.balance = balance
        self.consecutive_failures = 0
        self.results: dict[str, list[dict[str, Any]]] = {}
        self.in_flight = 0
        self.finished = 0
        self.created_keys: set[str] = set()
        self.adopted_keys: set[str] = set()

    # -- records ---------------------------------------------------------------------------------
    async def save(self, rec: RequestRecord, *, fsync: bool = True) -> None:
        await asyncio.to_thread(self.save_now, rec, fsync=fsync)

    def save_now(self, rec: RequestRecord, *, fsync: bool = True) -> None:
        rec.updated_at = _now()
        try:
            self.store.save(rec, fsync=fsync)
        except OSError as exc:
            task = f" (task {rec.task_id} was created and must not be lost)" if rec.task_id else ""
            self.stop(f"the store {self.store.root} is not writable: {exc}{task}")
            raise

    async def _save_quietly(self, rec: RequestRecord) -> None:
        # On failure stop() has recorded why, with the task id in the message.
        with contextlib.suppress(OSError):
            await self.save(rec)

    def stop(self, reason: str, *, retryable: bool = False, code: str = FailCode.NOT_SUBMITTED) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_retryable = retryable
            self.stop_code = code
            self.progress(f"Stopping new submissions: {reason}")

    def _count_failure(self, *, transient: bool) -> None:
        self.consecutive_failures += 1
        if self.max_consecutive_failures and self.consecutive_failures >= self.max_consecutive_failures:
            what = "Kie or the network looks unavailable" if transient else "check the prompts"
            self.stop(
                f"{self.consecutive_failures} consecutive failures; {what} and Kie's status",
                retryable=transient,
            )

    def settle(
        self,
        row: dict[str, Any],
        rec: RequestRecord | None,
        outcome: Outcome,
        code: str | None = None,
        msg: str | None = None,
        *,
        transient: bool = False,
    ) -> None:
        """The one place a row's outcome is counted and its catalog rows are made.

        ``code`` and ``msg`` are the catalog's ``fail_code`` and ``fail_msg`` of a row that did not
        succeed; ``transient`` says whether a failure may pass by itself (Kie or the network down).
        """
        summary = self.summary
        setattr(summary, outcome.counter, getattr(summary, outcome.counter) + 1)
        if outcome.state == "success":
            assert rec is not None
            rows = success_rows(row, rec)
            if outcome is Outcome.SUCCEEDED:
                self.consecutive_failures = 0
        else:
            code = str(code or FailCode.ERROR)
            summary.fail_codes[code] += 1
            rows = [result_row(row, rec, 0, state=outcome.state, fail_code=code, fail_msg=msg)]
            if outcome.streak:
                self._count_failure(transient=transient)
        self.results[row["id"]] = rows
        self.finished += 1

    # -- the row's life --------------------------------------------------------------------------
    async def create(self, row: dict[str, Any], previous: RequestRecord | None) -> RequestRecord | None:
        """Create the row's task under its row lease and record it at once; None if none was created.

        Returns the record of a task another process created meanwhile (found under the lease), so
        the caller waits for that one instead.
        """
        # Local images first (free, cached by content): a failed upload creates no task.
        uploaded = await self._upload(row, previous) if not self.stop_reason else {}
        if uploaded is None:
            return None
        if not self.stop_reason:
            self._reserve(row)
        if self.stop_reason:
            self.settle(
                row, previous, Outcome.NOT_SUBMITTED, self.stop_code, f"not submitted: {self.stop_reason}"
            )
            return None
        key = row["request_key"]
        lease = RowLease(self.store, key)
        try:
            # One trip off the event loop: take the lease, re-read the record, write the intent.
            found, rec = await asyncio.to_thread(self._claim, lease, row, previous)
        except RowLeaseHeld as exc:
            self.budget.release(key)
            self.settle(row, previous, Outcome.NOT_SUBMITTED, FailCode.NOT_SUBMITTED, f"not submitted: {exc}")
            return None
        except OSError:
            self.budget.release(key)
            self.settle(
                row, previous, Outcome.STORE_ERROR, FailCode.STORE_ERROR, self.stop_reason or "store error"
            )
            return None
        if found is not None:
            self.budget.release(key)  # another process paid for it
            self.summary.resumed += 1
            return found
        assert rec is not None
        # The record keeps the local references as its input (what the request key hashes) and
        # the URLs createTask received for them.
        rec.uploaded = uploaded
        try:
            return await self._create(row, rec, previous)
        finally:
            lease.release()
            if rec.status is RecordStatus.REFUSED:
                # Kie refused the createTask: nothing was paid, so the budget gets it back. Any
                # other end (created, uncertain) keeps the reservation: it may have been paid.
                self.budget.release(key)

    async def _upload(self, row: dict[str, Any], previous: RequestRecord | None) -> dict[str, str] | None:
        """Upload the row's local images: reference → URL ({} without any), or None when an upload
        failed (the row is then settled with ``UPLOAD_FAILED``; nothing was created)."""
        files = row.get("local_images")
        files = json.loads(files) if isinstance(files, str) else {}
        if not files:
            return {}
        try:
            _, urls = await self.uploads.resolve(json.loads(row["input_json"]), files)
        except (KieError, LocalImageError) as exc:
            if isinstance(exc, KieAuthError):
                self.stop(str(exc))
            msg = f"uploading a local image failed, so no task was created: {exc}"
            transient = isinstance(exc, KieError) and exc.retryable
            self.settle(row, previous, Outcome.FAILED, FailCode.UPLOAD_FAILED, msg, transient=transient)
            return None
        return urls

    def _reserve(self, row: dict[str, Any]) -> None:
        """Reserve the row's estimate in the budget, or stop submissions at the budget.

        Synchronous, so that no other submitter runs between the check and the reservation.
        """
        budget = self.budget
        credits = row_credits(row, self.prices)
        if budget.try_reserve(row["request_key"], credits):
            return
        why = (
            f"{row['model']} has no price estimate (set prices for it to use a budget)"
            if credits is None
            else f"row {row['id']!r} needs {credits:g} more"
        )
        self.stop(
            f"the run's budget max_credits={budget.limit:g} is reached ({budget.reserved:g} credits "
            f"reserved for the tasks created; {why}). Everything created was waited for and recorded; "
            "re-materializing spends another budget on the rows left",
            code=FailCode.BUDGET,
        )

    def _claim(
        self, lease: RowLease, row: dict[str, Any], previous: RequestRecord | None
    ) -> tuple[RequestRecord | None, RequestRecord | None]:
        """(In a thread.) Under the row's lease: a task another process created meanwhile (the lease
        is then released), or the intent record written before createTask (the lease stays held)."""
        lease.acquire()
        try:
            current = self.store.load(row["request_key"])
            if (
                current
                and current.task_id
                and current.status in (RecordStatus.SUBMITTED, RecordStatus.SUCCESS)
            ):
                lease.release()
                return current, None
            rec = RequestRecord.for_row(row, current or previous, RecordStatus.CREATING, intent_at=_now())
            # The intent comes first: a run killed during createTask leaves it, so the next run
            # knows this row may have been paid for (page cache survives a killed process).
            self.save_now(rec, fsync=False)
            return None, rec
        except BaseException:
            lease.release()
            raise

    async def _create(
        self, row: dict[str, Any], rec: RequestRecord, previous: RequestRecord | None
    ) -> RequestRecord | None:
        try:
            callback_url = self.callbacks.url_for(rec.key) if self.callbacks else None
            task_id = await self.client.create_task(
                row["model"], swap_refs(rec.input, rec.uploaded), validate=False, callback_url=callback_url
            )
        except KieCreateUncertainError as exc:
            rec.status, rec.error = RecordStatus.UNCERTAIN, str(exc)
            rec.uncertain.append({"at": _now(), "reason": exc.reason})
            if self.callbacks:
                # If Kie did create the task, its callback names this row: wait for it (in its own
                # task, so submissions go on) instead of leaving the row to be paid for again.
                self.progress(
                    f"Row {row['id']!r} (request key {row['request_key']}): createTask's answer was "
                    f"lost ({exc.reason}); waiting for the task's callback before calling it uncertain."
                )
                await self._save_quietly(rec)
                self.waiters.append(asyncio.create_task(self._found_by_callback(row, rec, str(exc))))
                return None
            self.progress(
                f"Row {row['id']!r} (request key {row['request_key']}): createTask's answer was lost "
                f"({exc.reason}); Kie may have created the task. Not retried in this run; the next run "
                "submits it again and may pay twice for it."
            )
            await self._save_quietly(rec)
            self.settle(row, rec, Outcome.UNCERTAIN, FailCode.UNCERTAIN, str(exc), transient=True)
            return None
        except (KieAuthError, KieInsufficientCreditsError) as exc:
            self.stop(str(exc))
            rec.status, rec.error = RecordStatus.REFUSED, str(exc)
            await self._save_quietly(rec)
            self.settle(row, previous, Outcome.NOT_SUBMITTED, str(exc.code), str(exc))
            return None
        except KieError as exc:
            # Kie answered with an error: nothing was created; the next run submits this row again.
            rec.status, rec.error = RecordStatus.REFUSED, str(exc)
            await self._save_quietly(rec)
            self.settle(row, rec, Outcome.FAILED, exc.code, str(exc), transient=exc.retryable)
            return None
        return rec if await self._record_created(row, rec, task_id) else None

    async def _record_created(
        self, row: dict[str, Any], rec: RequestRecord, task_id: str, *, adopted_from: str | None = None
    ) -> bool:
        """Record that the row's task exists (created now, or named by a callback: ``adopted_from``):
        its estimate as the credits until Kie's figure comes, counted as created, and saved at once.

        False when the record could not be written: the task id then goes to the fallback file of
        unrecorded tasks and the row is settled (see :meth:`_unrecorded`).
        """
        estimate = estimate_credits(row["model"], rec.input, self.prices)
        rec.task_id, rec.status, rec.submitted_at = task_id, RecordStatus.SUBMITTED, _now()
        rec.credits, rec.credits_source = estimate, "estimate" if estimate is not None else None
        if adopted_from is not None:
            rec.adopted_from = adopted_from
        self.summary.created += 1
        self.created_keys.add(rec.key)
        try:
            # Written synchronously, with no await between Kie's answer and the record: the only
            # window in which a kill loses a paid task is the answer's own trip over the network.
            # The fsync, which only a lost machine needs, happens off the event loop right after.
            self.save_now(rec, fsync=False)
            await asyncio.to_thread(self.store.fsync, rec.key)
        except OSError as exc:
            await self._unrecorded(row, rec, exc)
            return False
        return True

    async def _found_by_callback(self, row: dict[str, Any], rec: RequestRecord, why: str) -> None:
        """A createTask whose answer was lost, with callbacks on: adopt the task its callback names,
        or settle the row uncertain when none arrives within the wait timeout."""
        assert isinstance(self.waiter, CallbackWaiter)
        timeout = self.wait_timeout if self.wait_timeout is not None else self.client.poll.timeout_s
        task_id = await self.waiter.task_id_for(rec.key, known=rec.history(), timeout=timeout)
        if task_id is None:
            self.progress(
                f"Row {row['id']!r} (request key {row['request_key']}): no callback within {timeout:.0f} s; "
                "the row is uncertain and the next run submits it again (it may pay twice)."
            )
            self.settle(row, rec, Outcome.UNCERTAIN, FailCode.UNCERTAIN, why, transient=True)
            return
        self.summary.found_by_callback += 1
        self.progress(f"Row {row['id']!r}: its callback named task {task_id}; no new task is created.")
        if await self._record_created(row, rec, task_id, adopted_from="callback"):
            await self.finish(row, rec, first_delay=0)

    async def _unrecorded(self, row: dict[str, Any], rec: RequestRecord, exc: OSError) -> None:
        """A created task whose record could not be written: never let its id live only in memory."""
        entry = {
            "id": row["id"],
            "batch": row["batch"],
            "model": row["model"],
            "request_key": row["request_key"],
            "task_id": rec.task_id,
            "store": self.store.root,
        }
        self.summary.unrecorded.append(entry)
        saved = await asyncio.to_thread(save_unrecorded, self.store, entry)
        if saved:
            self.summary.unrecorded_file = saved
        where = f"saved to {saved} for the next run to adopt" if saved else "NOT saved anywhere else"
        self.progress(
            f"Task {rec.task_id} of row {row['id']!r} (request key {row['request_key']}) was created "
            f"and paid for, but its record could not be written ({exc}); {where}."
        )
        msg = f"task {rec.task_id} created but not recorded: {exc}"
        self.settle(row, rec, Outcome.STORE_ERROR, FailCode.STORE_ERROR, msg)

    async def finish(self, row: dict[str, Any], rec: RequestRecord, *, first_delay: float | None) -> None:
        """Wait for the task, record its outcome and make the durable copies."""
        self.in_flight += 1
        try:
            await self._finish(row, rec, first_delay=first_delay)
        finally:
            self.in_flight -= 1
            if rec.key in self.created_keys:
                self.summary.credits_used += float(rec.credits or 0)
                self.summary.credits_from_kie += rec.credits_source == "kie"

    async def _finish(self, row: dict[str, Any], rec: RequestRecord, *, first_delay: float | None) -> None:
        assert rec.task_id is not None
        try:
            final = await self.waiter.wait(
                rec.task_id,
                key=rec.key,
                model=row["model"],
                timeout=self.wait_timeout,
                first_delay=first_delay,
            )
        except KieTaskTimeoutError as exc:
            rec.status, rec.error, rec.kie = RecordStatus.TIMEOUT, str(exc), KieOutcome(state=exc.last_state)
            await self._save_quietly(rec)
            self.settle(row, rec, Outcome.TIMED_OUT, FailCode.TIMEOUT, str(exc))
            return
        except KieAuthError as exc:
            self.stop(str(exc))
            self.settle(row, rec, Outcome.FAILED, exc.code, str(exc))
            return
        except KieNotFoundError as exc:
            # Kie no longer knows the task (past its retention): nothing left to download.
            await self._expired(row, rec, f"Kie no longer knows task {rec.task_id}: {exc}")
            return
        except KieError as exc:
            rec.error = str(exc)
            await self._save_quietly(rec)
            self.settle(row, rec, Outcome.FAILED, exc.code, str(exc), transient=exc.retryable)
            return
        rec.kie = KieOutcome(
            state=final.state.value,
            fail_code=final.fail_code,
            fail_msg=final.fail_msg,
            cost_time_ms=final.cost_time_ms,
            create_time=_iso(final.create_time),
            complete_time=_iso(final.complete_time),
            result_urls=final.result_urls,
        )
        if final.credits is not None:
            rec.credits, rec.credits_source = final.credits, "kie"
        if final.state is TaskState.FAIL:
            rec.status = RecordStatus.FAIL
            await self._save_quietly(rec)
            code = final.fail_code or FailCode.FAIL
            self.settle(row, rec, Outcome.FAILED, code, final.fail_msg or "Kie reported fail")
            return
        await self.download(row, rec, final)

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
            info = await asyncio.to_thread(probe, data, media)
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

    async def _expired(self, row: dict[str, Any], rec: RequestRecord, why: str) -> None:
        msg = (
            f"{why}; the image was paid for but can no longer be downloaded. Re-materialize with "
            "regenerate_expired: true to pay for a new generation."
        )
        rec.status, rec.error = RecordStatus.EXPIRED, msg
        await self._save_quietly(rec)
        self.settle(row, rec, Outcome.EXPIRED, FailCode.EXPIRED, msg)

    # -- the batch -------------------------------------------------------------------------------
    def _plan(
        self, rows: list[dict[str, Any]], existing: dict[str, RequestRecord], on_disk: set[str]
    ) -> tuple[list[tuple[dict[str, Any], RequestRecord]], list[tuple[dict[str, Any], RequestRecord | None]]]:
        """Split rows into reused (settled here), to resume (a task exists) and to create, by
        :func:`plan_rows` (which ``kie-pipeline estimate`` uses too); then the pre-flight."""
        plan = plan_rows(rows, existing, on_disk, regenerate_expired=self.regenerate_expired)
        resume: list[tuple[dict[str, Any], RequestRecord]] = []
        create: list[tuple[dict[str, Any], RequestRecord | None]] = []
        for p in plan:
            row, rec = p.row, p.record
            if p.action is RowAction.REUSE:
                self.settle(row, rec, Outcome.REUSED)
            elif p.action is RowAction.EXPIRED:
                assert rec is not None
                why = rec.error or "the result expired before it was copied"
                self.settle(row, rec, Outcome.EXPIRED, FailCode.EXPIRED, why)
            elif p.action is RowAction.RESUME:
                assert rec is not None
                self.summary.resumed += 1
                resume.append((row, rec))
            else:
                if p.resubmits_uncertain:
                    self.summary.resubmitted_uncertain += 1
                    self.progress(
                        f"Row {row['id']!r} (request key {row['request_key']}): an earlier createTask "
                        "may have created a task whose id never arrived; submitting it again, which "
                        "may pay twice for this row."
                    )
                elif p.regenerates_expired:
                    self.summary.regenerated_expired += 1
                create.append((row, rec))
        needs = estimate_plan(plan, self.prices)
        self.summary.credits_estimated_needed = sum(n.credits for n in needs)
        self.summary.credits_unpriced_rows = sum(n.unpriced for n in needs)
        if self.summary.credits_unpriced_rows:
            self.progress(
                f"{self.summary.credits_unpriced_rows} row(s) to create have no price estimate (set "
                "prices for their model): the pre-flight cannot count them, and a budget refuses them."
            )
        if create and self.balance is not None:
            short = shortfall(needs, self.balance, self.budget.limit)
            if short:
                # Before the first createTask: every row to create is settled not submitted, and
                # the tasks already paid for (resume) are still waited for.
                self.stop(short, code=FailCode.INSUFFICIENT_CREDITS)
        return resume, create

    async def _report_progress(self, total: int, interval: float, started: float) -> None:
        while True:
            await asyncio.sleep(interval)
            done = self.finished
            elapsed = time.monotonic() - started
            eta = f"{(total - done) * elapsed / done:.0f} s" if done else "unknown"
            s = self.summary
            self.progress(
                f"Progress: {done}/{total} rows settled; created {s.created}, succeeded "
                f"{s.succeeded + s.reused}, failed {s.failed + s.timed_out + s.download_failed}, "
                f"uncertain {s.uncertain}, in flight {self.in_flight}; ETA {eta}"
            )

    async def run(self, rows: list[dict[str, Any]], progress_interval: float) -> None:
        self.summary.rows = len(rows)
        started = time.monotonic()
        existing = await asyncio.to_thread(self.store.load_many, [r["request_key"] for r in rows])
        await self._repair(rows, existing)
        done_uris = copy_uris(existing.values())
        # One trip off the event loop for every existence check, not one per row.
        on_disk = await asyncio.to_thread(lambda: {u for u in done_uris if self.store.exists(u)})
        resume, create = self._plan(rows, existing, on_disk)
        reporter = asyncio.create_task(self._report_progress(len(rows), progress_interval, started))
        waiters = self.waiters
        waiters.extend(asyncio.create_task(self.finish(row, rec, first_delay=0)) for row, rec in resume)
        pending = iter(create)

        async def submitter() -> None:
            # Rows are taken in manifest order; each created task gets its own waiter, so tasks in
            # flight are bounded by Kie's rate limit, not by the number of submitters.
            for row, previous in pending:
                rec = await self.create(row, previous)
                if rec is not None:
                    waiters.append(asyncio.create_task(self.finish(row, rec, first_delay=None)))

        try:
            await asyncio.gather(*(submitter() for _ in range(self.submitters)))
            # Whatever stopped submissions, every task already created is waited for and recorded.
            while waiters:  # a waiter may add another (a task found by its callback)
                await waiters.pop(0)
        finally:
            reporter.cancel()
        if self.adopted_keys:
            await asyncio.to_thread(self._forget_adopted)

    async def _repair(self, rows: list[dict[str, Any]], existing: dict[str, RequestRecord]) -> None:
        """Before planning: rebuild damaged records and adopt tasks an earlier run could not record."""
        for row in rows:
            key = row["request_key"]
            rec = existing.get(key)
            if rec and rec.status is RecordStatus.CORRUPT:
                fixed = await asyncio.to_thread(recover_record, self.store, row, rec)
                self.summary.recovered_records += 1
                self.progress(
                    f"The task record {rec.corrupt_file} of row {row['id']!r} is damaged "
                    f"({rec.error}); set aside as {rec.set_aside}. Recovered: task id "
                    f"{fixed.task_id or 'none'}, {len(fixed.images)} durable copy(ies); the row is "
                    f"now {fixed.status}."
                )
                await self._save_quietly(fixed)
                existing[key] = fixed
        for row in rows:
            key = row["request_key"]
            rec = existing.get(key)
            if rec is None or rec.status not in MAYBE_PAID:
                continue
            # A createTask whose answer was lost, or a run killed during it: a callback may have
            # delivered the task id since. Then that task is this row's, and nothing is created.
            delivered = await asyncio.to_thread(self.box.task_ids, key)
            fresh = [t for t in delivered if t not in rec.history()]
            if fresh:
                adopted = RequestRecord.for_row(
                    row,
                    rec,
                    RecordStatus.SUBMITTED,
                    task_id=fresh[0],
                    submitted_at=_now(),
                    adopted_from="callback",
                )
                self.summary.adopted += 1
                self.progress(
                    f"Row {row['id']!r}: adopting task {fresh[0]}, whose callback arrived after an earlier "
                    "run lost createTask's answer (no new task is created)."
                )
                await self._save_quietly(adopted)
                existing[key] = adopted
        fallback = await asyncio.to_thread(load_unrecorded, self.store)
        for row in rows:
            key = row["request_key"]
            entry, rec = fallback.get(key), existing.get(key)
            if not entry:
                continue
            if rec and (rec.task_id == entry["task_id"] or rec.status is RecordStatus.SUCCESS):
                self.adopted_keys.add(key)  # recorded after all: only forget the fallback entry
                continue
            adopted = RequestRecord.for_row(
                row,
                rec,
                RecordStatus.SUBMITTED,
                task_id=entry["task_id"],
                submitted_at=entry.get("at"),
                adopted_from="fallback file of unrecorded tasks",
            )
            self.summary.adopted += 1
            self.adopted_keys.add(key)
            self.progress(
                f"Row {row['id']!r}: adopting task {entry['task_id']}, created by an earlier run that "
                "could not record it (no new task is created)."
            )
            await self._save_quietly(adopted)
            existing[key] = adopted

    def _forget_adopted(self) -> None:
        saved = self.store.load_many(sorted(self.adopted_keys))
        recorded = [k for k, rec in saved.items() if rec.task_id]
        forget_unrecorded(self.store, recorded)


def result_row(
    row: Mapping[str, Any],
    rec: RequestRecord | None,
    index: int,
    *,
    state: str,
    fail_code: str | None = None,
    fail_msg: str | None = None,
) -> dict[str, Any]:
    """One catalog row (before the manifest's extra columns): keys are exactly the schema's columns."""
    kie = (rec.kie if rec else None) or KieOutcome()
    urls = kie.result_urls
    image = None
    if rec is not None and state == "success" and index < len(rec.images):
        image = rec.images[index]
    out = dict.fromkeys(CATALOG_DTYPES)
    out.update(
        id=row["id"],
        batch=row["batch"],
        model=row["model"],
        prompt=row["prompt"],
        state=state,
        result_index=index,
        task_id=rec.task_id if rec else None,
        result_url=urls[index] if index < len(urls) else None,
        fail_code=fail_code,
        fail_msg=fail_msg,
        cost_time_ms=kie.cost_time_ms,
        created_at=kie.create_time,
        completed_at=kie.complete_time,
        submitted_at=rec.submitted_at if rec else None,
        request_key=row["request_key"],
        input=row.get("input_json"),
        aspect_ratio=row.get("aspect_ratio"),
        resolution=row.get("resolution"),
        output_format=row.get("output_format"),
        image_input=row.get("image_input"),
        result_urls=json.dumps(urls),
    )
    media = media_of(row["model"])
    out["media_type"] = media.value if media else None
    if image is not None:
        out.update(
            media_type=image.media_type,
            image_uri=image.uri,
            sha256=image.sha256,
            bytes=image.bytes,
            width=image.width,
            height=image.height,
            duration_s=image.duration_s,
            format=image.format,
            # Copies recorded before MIME types: from the extension, which came from the contents.
            mime_type=image.mime_type or MIME_BY_EXT.get(str(image.format)),
            title=image.title,
            tags=image.tags,
        )
    if index == 0 and rec is not None:
        # Credits belong to the task: on its first result only, so that sums are right.
        out.update(credits=rec.credits, credits_source=rec.credits_source)
    return out


def success_rows(row: Mapping[str, Any], rec: RequestRecord) -> list[dict[str, Any]]:
    """One row per result of a finished task."""
    return [result_row(row, rec, i, state="success") for i in range(len(rec.images))]


async def generate_batch(
    client: AsyncKieClient,
    store: TaskStore,
    manifest_rows: pd.DataFrame,
    *,
    submitters: int = 4,
    max_consecutive_failures: int = 10,
    wait_timeout: float | None = None,
    regenerate_expired: bool = False,
    prices: Mapping[str, Any] | None = None,
    progress: Callable[[str], None] = log.info,
    progress_interval: float = 10.0,
    lease_owner: str | None = None,
    waiter: Waiter | None = None,
    max_credits: float | None = None,
    balance: float | None = None,
    callbacks: CallbackSettings | None = None,
) -> tuple[pd.DataFrame, BatchSummary]:
    """Generate every row of a validated manifest slice; return one result row per result.

    A row whose task produced several results gives one row per result (``result_index`` 0, 1, ...);
    any other row gives one row. ``progress`` receives a line every ``progress_interval`` seconds.
    ``waiter`` waits for each task (default: polling through ``client``).

    Credits: ``balance`` (the account's, read before the batch; None: unknown) is compared with the
    estimate of the rows that will be created, and when it is short nothing is submitted.
    ``max_credits`` (None: no budget) caps the estimated credits of the tasks this call creates:
    each row's estimate is reserved before its createTask, and the rows that do not fit are not
    submitted (fail code ``BUDGET``).

    Raises:
        SystemicError: after recording everything already paid for, when submissions stopped
            (401, 402, an unwritable store, ``max_consecutive_failures`` failures in a row, a
            balance short of the estimate, the ``max_credits`` budget reached).
        BatchLeaseHeld: another run is generating the same batch (nothing was submitted).
    """
    batch = _Batch(
        client,
        store,
        submitters=submitters,
        max_consecutive_failures=max_consecutive_failures,
        wait_timeout=wait_timeout,
        regenerate_expired=regenerate_expired,
        prices=prices,
        progress=progress,
        max_credits=max_credits,
        balance=balance,
        waiter=waiter or (CallbackWaiter(client, CallbackBox(store)) if callbacks else PollingWaiter(client)),
        callbacks=callbacks,
    )
    rows = manifest_rows.to_dict("records")
    started = time.monotonic()
    names = sorted({str(r["batch"]) for r in rows}) or ["empty"]
    # One run per batch at a time: a second run of the same batch would pay again for every row.
    with contextlib.ExitStack() as leases:
        for name in names:
            leases.enter_context(batch_lease(store, name, lease_owner or f"pid {os.getpid()}"))
        await batch.run(rows, progress_interval)
    summary = batch.summary
    summary.stop_reason = batch.stop_reason
    summary.results = sum(len(v) for v in batch.results.values())
    progress(f"Batch of {len(rows)} rows done in {time.monotonic() - started:.1f} s: {summary.as_dict()}")
    if batch.stop_reason:
        raise SystemicError(
            f"Generation stopped: {batch.stop_reason}", summary, retryable=batch.stop_retryable
        )
    extras = [
        c for c in manifest_rows.columns if c not in CATALOG_DTYPES and c not in INTERNAL_MANIFEST_COLUMNS
    ]
    ordered = [r for row in rows for r in batch.results[row["id"]]]
    out = pd.DataFrame(ordered, columns=list(CATALOG_DTYPES))
    if extras:
        # Each result row carries its manifest row's extra columns, with their dtypes kept.
        positions = [i for i, row in enumerate(rows) for _ in batch.results[row["id"]]]
        for col in extras:
            out[col] = manifest_rows[col].iloc[positions].reset_index(drop=True)
    return out, summary
