"""What one run of a batch counts: how each row ends (:class:`Outcome`), the run's
:class:`BatchSummary`, and :class:`SystemicError` (the batch stopped for every row).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Outcome(Enum):
    """How a row ends in a run: the :class:`BatchSummary` counter it adds to, its catalog ``state``,
    and whether it counts toward ``max_consecutive_failures``. Rows are settled only through
    ``BatchState.settle``, so the counters, the fail codes and the catalog always agree."""

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
