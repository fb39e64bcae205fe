"""The task record: what the store keeps for one request (``{store}/tasks/{request_key}.json``).

One typed model, read and written only by :class:`~kie_pipeline.pipeline.store.TaskStore`. Its JSON
is the same as the dict records of earlier versions (those still load: a single ``image`` becomes
``images``), and fields this version does not know are kept when a record is rewritten.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RecordStatus(StrEnum):
    """Where a request stands. Only ``success`` needs nothing more; see :data:`PAID_AND_PENDING`."""

    #: Written before createTask: a run killed during the call leaves it (the row may be paid for).
    CREATING = "creating"
    #: Kie created the task (its id is recorded); waiting for its outcome.
    SUBMITTED = "submitted"
    #: createTask's answer was lost: Kie may or may not have created the task.
    UNCERTAIN = "uncertain"
    #: Kie answered createTask with an error: nothing was created.
    REFUSED = "refused"
    SUCCESS = "success"
    #: Kie reported the task failed.
    FAIL = "fail"
    TIMEOUT = "timeout"
    DOWNLOAD_FAILED = "download_failed"
    #: Kie no longer has the result: it was paid for but cannot be copied.
    EXPIRED = "expired"
    #: The file on disk was not a readable record (set aside; see ``TaskStore.load_many``).
    CORRUPT = "corrupt"


#: Statuses of a task that exists at Kie and is not finished here: the next run resumes it (polls,
#: downloads what is missing) instead of paying for a new one.
PAID_AND_PENDING = frozenset(
    {RecordStatus.SUBMITTED, RecordStatus.SUCCESS, RecordStatus.TIMEOUT, RecordStatus.DOWNLOAD_FAILED}
)
#: Statuses after which a createTask may have happened without its id reaching us.
MAYBE_PAID = frozenset({RecordStatus.CREATING, RecordStatus.UNCERTAIN})


class FailCode(StrEnum):
    """The catalog's own ``fail_code`` values (beside Kie's failCodes and HTTP codes, kept as text)."""

    TIMEOUT = "TIMEOUT"
    DOWNLOAD_FAILED = "DOWNLOAD_FAILED"
    EXPIRED = "EXPIRED"
    UNCERTAIN = "UNCERTAIN"
    NOT_SUBMITTED = "NOT_SUBMITTED"
    STORE_ERROR = "STORE_ERROR"
    #: Not submitted: the run's ``max_credits`` budget had no room left for this row.
    BUDGET = "BUDGET"
    #: Not submitted: the pre-flight found the account's balance short of what the batch needs.
    INSUFFICIENT_CREDITS = "INSUFFICIENT_CREDITS"
    #: A local image could not be uploaded (or changed since validation): no task was created.
    UPLOAD_FAILED = "UPLOAD_FAILED"
    #: Kie answered with an error that carried no code.
    ERROR = "ERROR"
    #: Kie reported a failed task without a failCode.
    FAIL = "fail"


class ResultCopy(BaseModel):
    """The durable copy of one result."""

    model_config = ConfigDict(extra="allow")

    uri: str
    sha256: str
    bytes: int
    width: int | None = None
    height: int | None = None
    format: str | None = None
    #: Records written before video and audio hold images only: their copies default to "image".
    media_type: str = "image"
    #: None in older records: the catalog derives it from ``format``.
    mime_type: str | None = None
    duration_s: float | None = None
    #: Perceptual hash (see :mod:`.dedup`); None for audio and in records older than the column.
    phash: int | None = None
    #: Per-result metadata Kie gives for music (Suno's title and tags).
    title: str | None = None
    tags: str | None = None


class KieOutcome(BaseModel):
    """What Kie last reported about the task."""

    model_config = ConfigDict(extra="allow")

    state: str | None = None
    fail_code: str | None = None
    fail_msg: str | None = None
    cost_time_ms: int | None = None
    create_time: str | None = None
    complete_time: str | None = None
    result_urls: list[str] = Field(default_factory=list)


class RequestRecord(BaseModel):
    """The task record of one request: its task (and earlier ones), its outcome, its copies."""

    model_config = ConfigDict(extra="allow")

    key: str = Field(description="The request key (hash of id + model + input)")
    id: str = ""
    batch: str = ""
    model: str = ""
    input: dict[str, Any] = Field(default_factory=dict)
    #: Local images of ``input`` (``local:sha256:<hex>``, as the request key hashes them) → the URL
    #: of the upload that createTask received in their place.
    uploaded: dict[str, str] = Field(default_factory=dict)
    task_id: str | None = None
    status: RecordStatus
    error: str | None = None
    intent_at: str | None = None
    submitted_at: str | None = None
    updated_at: str | None = None
    credits: float | None = None
    credits_source: str | None = None
    kie: KieOutcome | None = None
    #: One slot per result of the task (None: not copied yet).
    images: list[ResultCopy | None] = Field(default_factory=list)
    previous_task_ids: list[str] = Field(default_factory=list)
    #: Each createTask of this request whose answer was lost: {at, reason}.
    uncertain: list[dict[str, Any]] = Field(default_factory=list)
    adopted_from: str | None = None
    recovered_from: str | None = None
    #: Set on a CORRUPT record: the damaged file and where it was moved.
    corrupt_file: str | None = None
    set_aside: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _single_image(cls, data: Any) -> Any:
        # Records written before 0.2 held one ``image`` instead of ``images``.
        if isinstance(data, dict) and "image" in data and "images" not in data:
            data = dict(data)
            image = data.pop("image")
            data["images"] = [image] if image else []
        return data

    @classmethod
    def for_row(
        cls, row: Mapping[str, Any], previous: RequestRecord | None, status: RecordStatus, **fields: Any
    ) -> RequestRecord:
        """A record for a manifest row that replaces ``previous``, keeping its task history."""
        return cls(
            key=row["request_key"],
            id=row["id"],
            batch=row["batch"],
            model=row["model"],
            input=json.loads(row["input_json"]),
            status=status,
            previous_task_ids=previous.history() if previous else [],
            uncertain=list(previous.uncertain) if previous else [],
            **fields,
        )

    @property
    def result_urls(self) -> list[str]:
        return self.kie.result_urls if self.kie else []

    def history(self) -> list[str]:
        """The task ids this request has had, oldest first (for a record that replaces this one)."""
        return [*self.previous_task_ids, *([self.task_id] if self.task_id else [])]

    def to_json(self) -> bytes:
        # The layout of earlier versions (sorted keys, ": " separators), which people grep.
        return json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> RequestRecord:
        """Raises ``ValueError`` (pydantic's ``ValidationError`` is one) for anything not a record."""
        return cls.model_validate_json(data)
