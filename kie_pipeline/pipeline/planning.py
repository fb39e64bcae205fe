"""What a batch will do with each row, and what that costs, before anything is submitted.

:func:`plan_rows` is the one classification of rows into reused / kept expired / resumed / created:
generation (``_Batch``) acts on it and ``kie-pipeline estimate`` prints it, so the two cannot
disagree. :func:`estimate_plan` prices the rows that will really be created with the registry's
price table (:func:`~kie_pipeline.client.estimate_credits`); :class:`CreditBudget` holds a run's
``max_credits``. Nothing here does I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kie_pipeline.client import estimate_credits

from .record import MAYBE_PAID, PAID_AND_PENDING, RecordStatus, RequestRecord


class RowAction(StrEnum):
    """What a batch does with one row."""

    #: Finished earlier and every durable copy is in the store: nothing to do, nothing paid.
    REUSE = "reuse"
    #: Kie no longer has the result of an earlier task, and ``regenerate_expired`` is off.
    EXPIRED = "expired"
    #: A task exists (paid already): wait for it and copy what is missing; nothing new is paid.
    RESUME = "resume"
    #: A new createTask: this is what costs credits.
    CREATE = "create"


@dataclass(frozen=True)
class PlannedRow:
    """One manifest row, its record (if any) and what the batch will do with it."""

    row: dict[str, Any]
    record: RequestRecord | None
    action: RowAction

    @property
    def resubmits_uncertain(self) -> bool:
        """A CREATE of a row whose earlier createTask may have created a task (its id never came)."""
        return (
            self.action is RowAction.CREATE and self.record is not None and self.record.status in MAYBE_PAID
        )

    @property
    def regenerates_expired(self) -> bool:
        """A CREATE of a row whose earlier result expired (``regenerate_expired`` is on)."""
        return (
            self.action is RowAction.CREATE
            and self.record is not None
            and self.record.status is RecordStatus.EXPIRED
        )


def copy_uris(records: Iterable[RequestRecord]) -> list[str]:
    """The durable copies finished records point to: the files whose existence :func:`plan_rows`
    needs (``on_disk``), checked in one trip by the caller."""
    return [im.uri for r in records if r.status is RecordStatus.SUCCESS for im in r.images if im is not None]


def plan_rows(
    rows: Iterable[dict[str, Any]],
    existing: Mapping[str, RequestRecord],
    on_disk: set[str],
    *,
    regenerate_expired: bool,
) -> list[PlannedRow]:
    """Classify each row (in manifest order) by its record in ``existing`` (by request key).

    ``on_disk`` holds the durable copies that exist (of :func:`copy_uris`): a finished row whose
    copy is gone is resumed (its task is downloaded again), not reused.
    """
    plan: list[PlannedRow] = []
    for row in rows:
        rec = existing.get(row["request_key"])
        status = rec.status if rec else None
        if (
            rec
            and status is RecordStatus.SUCCESS
            and rec.images
            and all(im is not None and im.uri in on_disk for im in rec.images)
        ):
            action = RowAction.REUSE
        elif rec and status is RecordStatus.EXPIRED and not regenerate_expired:
            action = RowAction.EXPIRED
        elif rec and rec.task_id and status in PAID_AND_PENDING:
            # Paid for already (submitted, timed out, download failed or copy lost): resume.
            action = RowAction.RESUME
        else:
            action = RowAction.CREATE
        plan.append(PlannedRow(row, rec, action))
    return plan


def row_credits(row: Mapping[str, Any], prices: Mapping[str, Any] | None = None) -> float | None:
    """The estimated credits of creating ``row``'s task (a validated manifest row), None if unknown."""
    return estimate_credits(row["model"], json.loads(row["input_json"]), prices)


@dataclass
class CreditNeed:
    """What one batch needs for one model: rows by action and the credits of the rows to create."""

    batch: str
    model: str
    create: int = 0
    reuse: int = 0
    resume: int = 0
    expired: int = 0
    #: Estimated credits of the rows to create whose price is known.
    credits: float = 0.0
    #: Rows to create whose price the table does not know (not in ``credits``).
    unpriced: int = 0


def estimate_plan(plan: Iterable[PlannedRow], prices: Mapping[str, Any] | None = None) -> list[CreditNeed]:
    """Counts and estimated credits per (batch, model), sorted; only CREATE rows cost credits."""
    needs: dict[tuple[str, str], CreditNeed] = {}
    for p in plan:
        key = (str(p.row["batch"]), str(p.row["model"]))
        need = needs.setdefault(key, CreditNeed(*key))
        setattr(need, p.action.value, getattr(need, p.action.value) + 1)
        if p.action is RowAction.CREATE:
            credits = row_credits(p.row, prices)
            if credits is None:
                need.unpriced += 1
            else:
                need.credits += credits
    return [needs[k] for k in sorted(needs)]


def shortfall(needs: list[CreditNeed], balance: float, max_credits: float | None = None) -> str | None:
    """Why ``balance`` cannot pay for ``needs``, per model, or None when it can.

    With a budget the run spends at most ``max_credits``, so only that much must be on the account.
    """
    total = sum(n.credits for n in needs)
    spend = total if max_credits is None else min(total, max_credits)
    if spend <= balance:
        return None
    per_model = "; ".join(
        f"{n.model}: {n.create} task(s), {n.credits:g} credits" for n in needs if n.create and n.credits
    )
    capped = f" (capped by max_credits={max_credits:g})" if max_credits is not None and spend < total else ""
    return (
        f"the account's balance of {balance:g} credits is short of the {spend:g} credits this batch "
        f"needs{capped} ({per_model}); nothing was submitted. Top up at https://kie.ai or lower the batch"
    )


@dataclass
class CreditBudget:
    """A run's ``max_credits``: the estimates of the tasks it creates never add up past it.

    :meth:`try_reserve` is synchronous on purpose: called on the event loop with no ``await``
    between its check and its reservation, concurrent submitters cannot both take the last credits.
    """

    limit: float | None = None
    reserved: float = 0.0
    #: Rows refused because they did not fit.
    refused: int = 0
    _held: dict[str, float] = field(default_factory=dict, repr=False)

    def try_reserve(self, key: str, credits: float | None) -> bool:
        """Reserve ``credits`` for request ``key`` if they fit; False (and nothing reserved) if not.

        Without a limit everything fits. With one, a row of unknown price never fits: the budget
        could not be kept.
        """
        if self.limit is None:
            return True
        if credits is None or self.reserved + credits > self.limit:
            self.refused += 1
            return False
        self.reserved += credits
        self._held[key] = credits
        return True

    def release(self, key: str) -> None:
        """Give back the reservation of a row whose createTask surely created nothing."""
        self.reserved -= self._held.pop(key, 0.0)
