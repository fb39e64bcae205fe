"""Data shapes of the Kie jobs API: task states and the decoded task record."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from .errors import KieProtocolError


class TaskState(StrEnum):
    """The five states of a Kie task; only ``success`` and ``fail`` are terminal."""

    WAITING = "waiting"
    QUEUING = "queuing"
    GENERATING = "generating"
    SUCCESS = "success"
    FAIL = "fail"

    @property
    def is_terminal(self) -> bool:
        return self in (TaskState.SUCCESS, TaskState.FAIL)


def _ms_to_datetime(value: Any) -> datetime | None:
    if value in (None, "", 0):
        return None
    try:
        return datetime.fromtimestamp(int(value) / 1000, tz=UTC)
    except (TypeError, ValueError, OverflowError):
        return None


def _credits(data: dict[str, Any]) -> float | None:
    """Kie's own figure of credits consumed, under either documented key; None if absent or unreadable."""
    for key in ("consumeCredits", "creditsConsumed"):
        value = data.get(key)
        if value is None or value == "" or isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            return number
    return None


def _decode_json_string(value: Any, name: str) -> Any:
    """``param`` and ``resultJson`` are JSON strings; accept an already-decoded object too."""
    if value in (None, ""):
        return None
    if isinstance(value, (dict, list)):
        return value
    try:
        return json.loads(value)
    except (TypeError, ValueError) as exc:
        raise KieProtocolError(f"Kie recordInfo field {name} is not valid JSON.") from exc


@dataclass(frozen=True)
class TaskRecord:
    """One task as reported by ``GET /api/v1/jobs/recordInfo`` (or a callback), decoded."""

    task_id: str
    model: str | None
    state: TaskState
    param: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    fail_code: str | None = None
    fail_msg: str | None = None
    cost_time_ms: int | None = None
    create_time: datetime | None = None
    complete_time: datetime | None = None
    update_time: datetime | None = None
    #: Credits Kie says the task consumed (``consumeCredits``, on some models ``creditsConsumed``);
    #: None when the record does not say (recordInfo often does not; callbacks may).
    credits: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def result_urls(self) -> list[str]:
        """Every result URL (a task can return several)."""
        if not self.result:
            return []
        urls = self.result.get("resultUrls") or []
        return [str(u) for u in urls]

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> TaskRecord:
        """Decode the ``data`` object of a recordInfo response or callback."""
        if not isinstance(data, dict):
            raise KieProtocolError("Kie recordInfo returned no data object.")
        task_id = data.get("taskId") or data.get("task_id")
        raw_state = data.get("state")
        if not task_id or not raw_state:
            raise KieProtocolError("Kie recordInfo data lacks taskId or state.")
        try:
            state = TaskState(str(raw_state).lower())
        except ValueError as exc:
            raise KieProtocolError(f"Kie reported an unknown task state {raw_state!r}.") from exc
        cost = data.get("costTime")
        known = {
            "taskId", "task_id", "model", "state", "param", "resultJson", "failCode", "failMsg",
            "costTime", "completeTime", "createTime", "updateTime", "consumeCredits", "creditsConsumed",
        }  # fmt: skip
        fail_code = data.get("failCode")
        return cls(
            task_id=str(task_id),
            model=data.get("model"),
            state=state,
            param=_decode_json_string(data.get("param"), "param"),
            result=_decode_json_string(data.get("resultJson"), "resultJson"),
            fail_code=None if fail_code in (None, "") else str(fail_code),
            fail_msg=data.get("failMsg") or None,
            cost_time_ms=int(cost) if cost not in (None, "") else None,
            create_time=_ms_to_datetime(data.get("createTime")),
            complete_time=_ms_to_datetime(data.get("completeTime")),
            update_time=_ms_to_datetime(data.get("updateTime")),
            credits=_credits(data),
            extra={k: v for k, v in data.items() if k not in known},
        )


@dataclass
class KieUsage:
    """Counters of what a client did; assets put them in their metadata."""

    tasks_created: int = 0
    polls: int = 0
    retries: int = 0
    rate_limited: int = 0
    failures: int = 0
    #: createTask calls that ended in KieCreateUncertainError (a task may exist that we have no id for).
    uncertain_creates: int = 0
    downloads: int = 0
    bytes_downloaded: int = 0
    #: Files sent to Kie's File Upload API (free; local reference images).
    uploads: int = 0
    bytes_uploaded: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class DownloadResult:
    """What a streamed download wrote."""

    path: str
    bytes: int
    sha256: str
    content_type: str | None


@dataclass(frozen=True)
class UploadedFile:
    """What Kie's File Upload API answered for one file (Kie deletes it 3 days after ``uploaded_at``)."""

    #: The public URL to hand to createTask (``downloadUrl``, or ``fileUrl`` in one version of the docs).
    url: str
    file_name: str | None = None
    file_path: str | None = None
    size: int | None = None
    mime_type: str | None = None
    #: As Kie wrote it (``uploadedAt`` or ``uploadTime``); None when the answer has neither.
    uploaded_at: str | None = None


@dataclass(frozen=True)
class FetchedFile:
    """A result file held in memory after a capped, type-checked download."""

    data: bytes
    sha256: str
    content_type: str | None
