"""Creating a row's task: local images uploaded, the budget reserved, the intent recorded
under the row's lease, createTask, and the task id recorded at once (or kept in the fallback file).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from kie_pipeline.client import (
    KieAuthError,
    KieCreateUncertainError,
    KieError,
    KieInsufficientCreditsError,
    estimate_credits,
)

from .batch_state import utc_now
from .callbacks import CallbackWaiter
from .lease import RowLease, RowLeaseHeld
from .outcome import Outcome
from .planning import row_credits
from .record import FailCode, RecordStatus, RequestRecord
from .recovery import save_unrecorded
from .settling import SettlingBatch
from .uploads import LocalImageError, swap_refs


class SubmittingBatch(SettlingBatch):
    """A batch run's submit path (each created task is then waited for by :class:`SettlingBatch`)."""

    async def create(self, row: dict[str, Any], previous: RequestRecord | None) -> RequestRecord | None:
        """Create the row's task under its row lease and record it at once; None if none was created.

        Returns the record of a task another process created meanwhile (found under the lease), so
        the caller waits for that one instead.
        """
        if not self.stop_reason and (problem := self.lease_problem()):
            # Another run may be generating this batch now: creating more could pay twice.
            self.stop(f"{problem}; a rerun continues the batch", retryable=True)
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
            rec = RequestRecord.for_row(row, current or previous, RecordStatus.CREATING, intent_at=utc_now())
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
            rec.uncertain.append({"at": utc_now(), "reason": exc.reason})
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
        rec.task_id, rec.status, rec.submitted_at = task_id, RecordStatus.SUBMITTED, utc_now()
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
