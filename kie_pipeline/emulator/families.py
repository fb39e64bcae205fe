"""The emulator's answers for Kie's non-jobs families, shaped as ``shared/kie/kie-models.md`` documents
them (sections 1, 2 and 8), not as our client reads them: status records and callback payloads.

A task moves through the same timeline as a jobs task (:meth:`Task.state_at`); each family reports
that timeline its own way. The fail marker ends a task as the family's documented generation failure.
"""

from __future__ import annotations

import json
from typing import Any

from .state import Emulator, Task

#: The message of a task failed by the fail marker.
FORCED_FAILURE = "Generation failed (forced by the emulator's fail marker)"


def _progress(task: Task, now: float) -> str:
    # 4o Image's progress is a string "0.00".."1.00" (kie-models.md section 1).
    share = 0.0 if task.stuck else (now - task.created_mono) / task.duration if task.duration > 0 else 1.0
    return f"{min(1.0, max(0.0, share)):.2f}"


def _common(emu: Emulator, task: Task, state: str) -> dict[str, Any]:
    done = state in ("success", "fail")
    return {
        "taskId": task.task_id,
        "paramJson": json.dumps(task.body if task.body is not None else task.request),
        "createTime": task.created_ms,
        "completeTime": task.created_ms + int(task.duration * 1000) if done else None,
    }


def record_4o_image(emu: Emulator, task: Task, base_url: str, now: float) -> dict[str, Any]:
    """``GET /api/v1/gpt4o-image/record-info`` ``data``: successFlag 0/1/2 with a status text."""
    state = task.state_at(now)
    record = _common(emu, task, state)
    if state == "success":
        flag, status, progress = 1, "SUCCESS", "1.00"
        response: dict[str, Any] | None = {"resultUrls": emu.result_urls(task, base_url)}
    elif state == "fail":
        flag, status, progress, response = 2, "GENERATE_FAILED", _progress(task, now), None
    else:
        # Waiting and queuing show as GENERATING at progress 0.00 (4o has no queue status).
        flag, status, response = 0, "GENERATING", None
        progress = _progress(task, now) if state == "generating" else "0.00"
    failed = state == "fail"
    return {
        **record,
        "response": response,
        "successFlag": flag,
        "status": status,
        "errorCode": 500 if failed else None,
        "errorMessage": FORCED_FAILURE if failed else None,
        "progress": progress,
    }


def record_flux_kontext(emu: Emulator, task: Task, base_url: str, now: float) -> dict[str, Any]:
    """``GET /api/v1/flux/kontext/record-info`` ``data``: successFlag 0 generating, 1 success,
    3 generation failed (2 is a task Kie could not create, which the emulator never makes)."""
    state = task.state_at(now)
    record = _common(emu, task, state)
    response = None
    if state == "success":
        url = emu.result_urls(task, base_url)[0]
        # originImageUrl is Kie's own (10-minute) link to the same image.
        response = {"originImageUrl": url, "resultImageUrl": url}
    failed = state == "fail"
    return {
        **record,
        "response": response,
        "successFlag": 1 if state == "success" else 3 if failed else 0,
        "errorCode": 501 if failed else None,
        "errorMessage": FORCED_FAILURE if failed else None,
    }


def callback_4o_image(emu: Emulator, task: Task, base_url: str, now: float) -> dict[str, Any]:
    """``{code:200, msg, data{taskId, info{result_urls[]}}}``; a failure has code 500 and ``info: null``."""
    if task.state_at(now) == "success":
        info: dict[str, Any] | None = {"result_urls": emu.result_urls(task, base_url)}
        return {"code": 200, "msg": "success", "data": {"taskId": task.task_id, "info": info}}
    return {"code": 500, "msg": FORCED_FAILURE, "data": {"taskId": task.task_id, "info": None}}


def callback_flux_kontext(emu: Emulator, task: Task, base_url: str, now: float) -> dict[str, Any]:
    """``{code:200, msg:"BFL image generated successfully.", data{taskId, info{originImageUrl,
    resultImageUrl}}}``; a generation failure has code 501."""
    if task.state_at(now) == "success":
        url = emu.result_urls(task, base_url)[0]
        info = {"originImageUrl": url, "resultImageUrl": url}
        return {
            "code": 200,
            "msg": "BFL image generated successfully.",
            "data": {"taskId": task.task_id, "info": info},
        }
    return {"code": 501, "msg": FORCED_FAILURE, "data": {"taskId": task.task_id, "info": None}}


#: Family name → (status record, callback payload).
FAMILY_ANSWERS = {
    "4o-image": (record_4o_image, callback_4o_image),
    "flux-kontext": (record_flux_kontext, callback_flux_kontext),
}
