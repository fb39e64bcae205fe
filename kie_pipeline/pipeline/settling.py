"""Waiting for a created task and settling its row: Kie's answer recorded, then its results
copied (see :mod:`kie_pipeline.pipeline.copying`).
"""

from __future__ import annotations

from typing import Any

from kie_pipeline.client import KieAuthError, KieError, KieNotFoundError, KieTaskTimeoutError, TaskState

from .batch_state import iso_or_none
from .copying import CopyingBatch
from .outcome import Outcome
from .record import FailCode, KieOutcome, RecordStatus, RequestRecord


class SettlingBatch(CopyingBatch):
    """A batch run's wait for each task and the recording of its outcome."""

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
            create_time=iso_or_none(final.create_time),
            complete_time=iso_or_none(final.complete_time),
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
