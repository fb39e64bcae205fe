"""The state of one batch run and the one place rows are settled: its records, its stop,
the failure streak, and the outcome of each row (see :mod:`kie_pipeline.pipeline.generation`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from kie_pipeline.client import AsyncKieClient, Waiter

from .callbacks import CallbackBox, CallbackSettings
from .outcome import BatchSummary, Outcome
from .planning import CreditBudget
from .record import FailCode, RecordStatus, RequestRecord
from .result_rows import result_row, success_rows
from .store import TaskStore
from .uploads import Uploader


def utc_now() -> str:
    return datetime.now(UTC).isoformat()


def iso_or_none(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


class BatchState:
    """What every step of a batch run shares: settings, counters, results, and the stop."""

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
        #: Why the batch's lease does not hold any more (None while it does): nothing new is created.
        self.lease_problem: Callable[[], str | None] = lambda: None

    # -- records ---------------------------------------------------------------------------------
    async def save(self, rec: RequestRecord, *, fsync: bool = True) -> None:
        await asyncio.to_thread(self.save_now, rec, fsync=fsync)

    def save_now(self, rec: RequestRecord, *, fsync: bool = True) -> None:
        rec.updated_at = utc_now()
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

    async def _expired(self, row: dict[str, Any], rec: RequestRecord, why: str) -> None:
        msg = (
            f"{why}; the image was paid for but can no longer be downloaded. Re-materialize with "
            "regenerate_expired: true to pay for a new generation."
        )
        rec.status, rec.error = RecordStatus.EXPIRED, msg
        await self._save_quietly(rec)
        self.settle(row, rec, Outcome.EXPIRED, FailCode.EXPIRED, msg)
