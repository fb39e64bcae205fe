"""Generating one batch: submit (rate-limited), record at once, wait, download durable copies.

Never pay twice: an intent record is written before each createTask and the task id as soon as Kie
answers; a row whose request key already has a task is never submitted again unless that task
failed. A createTask whose answer was lost (Kie may or may not have created the task) is never
retried within the run: the row ends ``uncertain`` and the next run submits it again, saying so.
Never lose what was paid for: a run stopped anywhere resumes from the records (tasks are polled,
finished copies are not downloaded again), and every result of a task is copied.

The steps live in their own modules: :mod:`.outcome` (what a run counts), :mod:`.batch_state`
(records, the stop, settling a row), :mod:`.submitting` (creating tasks), :mod:`.settling`
(waiting for them), :mod:`.copying` (durable copies) and :mod:`.result_rows` (catalog rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from kie_pipeline.client import AsyncKieClient, DurationEstimates, PollingWaiter, Waiter

from .batch_state import utc_now
from .callbacks import CallbackBox, CallbackSettings, CallbackWaiter
from .copying import EXPIRED_STATUSES, result_meta
from .lease import batch_lease
from .outcome import BatchSummary, Outcome, SystemicError
from .planning import RowAction, copy_uris, estimate_plan, plan_rows, shortfall
from .record import MAYBE_PAID, FailCode, RecordStatus, RequestRecord
from .recovery import forget_unrecorded, load_unrecorded, recover_record
from .result_rows import result_row, success_rows
from .schema import CATALOG_DTYPES, INTERNAL_MANIFEST_COLUMNS
from .store import TaskStore
from .submitting import SubmittingBatch

log = logging.getLogger(__name__)

__all__ = [
    "EXPIRED_STATUSES",
    "BatchSummary",
    "Outcome",
    "SystemicError",
    "generate_batch",
    "result_meta",
    "result_row",
    "success_rows",
]


class _Batch(SubmittingBatch):
    """One run of :func:`generate_batch`: plan the rows, repair and adopt, submit, wait, copy."""

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
        await asyncio.to_thread(self.box.prune, self._settled, [r["request_key"] for r in rows])

    def _settled(self, keys: list[str]) -> list[str]:
        """(In a thread.) The rows among ``keys`` whose final record is written: their callbacks
        are spent (a ``timeout`` or ``uncertain`` row keeps its own for the next run to adopt)."""
        records = self.store.load_many(keys)
        final = (RecordStatus.SUCCESS, RecordStatus.FAIL)
        return [k for k in keys if (rec := records.get(k)) is not None and rec.status in final]

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
                    submitted_at=utc_now(),
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


def _default_waiter(client: AsyncKieClient, store: TaskStore, callbacks: CallbackSettings | None) -> Waiter:
    if callbacks:
        return CallbackWaiter(client, CallbackBox(store))
    # One estimate per batch: its own tasks say when to poll the next ones (per model).
    return PollingWaiter(client, durations=DurationEstimates())


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
    ``waiter`` waits for each task (default: polling through ``client``, each model's tasks polled
    by what this batch's finished tasks of that model say of their durations; callbacks when
    ``callbacks`` is set).

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
        waiter=waiter or _default_waiter(client, store, callbacks),
        callbacks=callbacks,
    )
    rows = manifest_rows.to_dict("records")
    started = time.monotonic()
    names = sorted({str(r["batch"]) for r in rows}) or ["empty"]
    # One run per batch at a time: a second run of the same batch would pay again for every row.
    with contextlib.ExitStack() as leases:
        owner = lease_owner or f"pid {os.getpid()}"
        held = [leases.enter_context(batch_lease(store, name, owner)) for name in names]
        batch.lease_problem = lambda: next((h.problem for h in held if h.problem), None)
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
