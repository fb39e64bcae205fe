"""The emulator's answers for Kie's non-jobs families, shaped as ``shared/kie/kie-models.md`` documents
them (sections 1, 2 and 8), not as our client reads them: status records and callback payloads.

A task moves through the same timeline as a jobs task (:meth:`Task.state_at`); each family reports
that timeline its own way. The fail marker ends a task as the family's documented generation failure.
"""

from __future__ import annotations

import json
import time
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
    return {**record, **_flagged(state, response)}


def _flagged(state: str, response: dict[str, Any] | None) -> dict[str, Any]:
    """The ``successFlag`` fields of Flux Kontext and Veo: 0 running, 1 success, 3 generation failed."""
    failed = state == "fail"
    return {
        "response": response,
        "successFlag": 1 if state == "success" else 3 if failed else 0,
        "errorCode": 501 if failed else None,
        "errorMessage": FORCED_FAILURE if failed else None,
    }


def callback_4o_image(emu: Emulator, task: Task, base_url: str, now: float) -> list[dict[str, Any]]:
    """``{code:200, msg, data{taskId, info{result_urls[]}}}``; a failure has code 500 and ``info: null``."""
    if task.state_at(now) == "success":
        info: dict[str, Any] | None = {"result_urls": emu.result_urls(task, base_url)}
        return [{"code": 200, "msg": "success", "data": {"taskId": task.task_id, "info": info}}]
    return [{"code": 500, "msg": FORCED_FAILURE, "data": {"taskId": task.task_id, "info": None}}]


def callback_flux_kontext(emu: Emulator, task: Task, base_url: str, now: float) -> list[dict[str, Any]]:
    """``{code:200, msg:"BFL image generated successfully.", data{taskId, info{originImageUrl,
    resultImageUrl}}}``; a generation failure has code 501."""
    if task.state_at(now) == "success":
        url = emu.result_urls(task, base_url)[0]
        info = {"originImageUrl": url, "resultImageUrl": url}
        msg = "BFL image generated successfully."
        return [{"code": 200, "msg": msg, "data": {"taskId": task.task_id, "info": info}}]
    return [{"code": 501, "msg": FORCED_FAILURE, "data": {"taskId": task.task_id, "info": None}}]


#: Suno's status at each step of the task's timeline (kie-models.md section 5).
_SUNO_STATUS = {"waiting": "PENDING", "queuing": "TEXT_SUCCESS", "generating": "FIRST_SUCCESS"}
#: Seconds of each emulated track (what record-info reports as ``duration``).
SUNO_TRACK_SECONDS = 0.5


def _suno_tracks(emu: Emulator, task: Task, base_url: str, camel: bool) -> list[dict[str, Any]]:
    """The task's tracks, camelCase as record-info writes them or snake_case as callbacks do."""
    inp = task.input
    tracks = []
    for i, url in enumerate(emu.result_urls(task, base_url)):
        track = {
            "id": f"{task.task_id}-{i}",
            "audioUrl": url,
            "streamAudioUrl": url,
            "imageUrl": None,
            "prompt": inp.get("prompt", ""),
            "modelName": task.model.removeprefix("suno/"),
            "title": inp.get("title") or f"Track {i + 1}",
            "tags": inp.get("style") or "emulated",
            "createTime": task.created_ms,
            "duration": SUNO_TRACK_SECONDS,
        }
        if not camel:
            rename = {"audioUrl": "audio_url", "streamAudioUrl": "stream_audio_url", "imageUrl": "image_url",
                      "modelName": "model_name"}  # fmt: skip
            track = {rename.get(k, k): v for k, v in track.items()}
        tracks.append(track)
    return tracks


def record_suno(emu: Emulator, task: Task, base_url: str, now: float) -> dict[str, Any]:
    """``GET /api/v1/generate/record-info`` ``data``: PENDING → TEXT_SUCCESS → FIRST_SUCCESS →
    SUCCESS (or GENERATE_AUDIO_FAILED), every track in ``response.sunoData`` at SUCCESS."""
    state = task.state_at(now)
    failed = state == "fail"
    status = "SUCCESS" if state == "success" else "GENERATE_AUDIO_FAILED" if failed else _SUNO_STATUS[state]
    response = None
    if state == "success":
        response = {"taskId": task.task_id, "sunoData": _suno_tracks(emu, task, base_url, camel=True)}
    return {
        "taskId": task.task_id,
        "parentMusicId": "",
        "param": json.dumps(task.body if task.body is not None else task.request),
        "response": response,
        "status": status,
        "type": "GENERATE",
        "operationType": "generate",
        "errorCode": 400 if failed else None,
        "errorMessage": FORCED_FAILURE if failed else None,
    }


def callback_suno(emu: Emulator, task: Task, base_url: str, now: float) -> list[dict[str, Any]]:
    """Suno's callbacks in order: ``text``, ``first``, then ``complete`` with every track (snake_case
    keys), or one ``error`` with ``data.data: null``."""
    if task.state_at(now) != "success":
        data = {"callbackType": "error", "task_id": task.task_id, "data": None}
        return [{"code": 400, "msg": FORCED_FAILURE, "data": data}]
    tracks = _suno_tracks(emu, task, base_url, camel=False)
    stages = (("text", "Text generation completed."), ("first", "First track completed."),
              ("complete", "All generated successfully."))  # fmt: skip
    # The text stage has lyrics but no audio yet; the first stage carries the first track.
    carried = {"text": [], "first": tracks[:1], "complete": tracks}
    return [
        {
            "code": 200,
            "msg": msg,
            "data": {"callbackType": kind, "task_id": task.task_id, "data": carried[kind]},
        }
        for kind, msg in stages
    ]


def record_veo(emu: Emulator, task: Task, base_url: str, now: float) -> dict[str, Any]:
    """``GET /api/v1/veo/record-info`` ``data``: successFlag 0 generating, 1 success, 3 generation
    failed; videos in ``response.resultUrls`` (``originUrls`` only when the ratio is not 16:9)."""
    state = task.state_at(now)
    record = _common(emu, task, state)
    response = None
    if state == "success":
        urls = emu.result_urls(task, base_url)
        ratio = task.input.get("aspect_ratio", "16:9")
        response = {
            "taskId": task.task_id,
            "resultUrls": urls,
            "originUrls": urls if ratio != "16:9" else None,
            "fullResultUrls": None,
            "resolution": task.input.get("resolution", "720p"),
        }
    return {**record, **_flagged(state, response), "fallbackFlag": False}


def callback_veo(emu: Emulator, task: Task, base_url: str, now: float) -> list[dict[str, Any]]:
    """``{code:200, msg, data{taskId, info{resultUrls, originUrls, resolution}, fallbackFlag}}``; a
    failure: code 501, ``data{taskId, fallbackFlag}``."""
    if task.state_at(now) != "success":
        return [{"code": 501, "msg": FORCED_FAILURE, "data": {"taskId": task.task_id, "fallbackFlag": False}}]
    info = {
        "resultUrls": emu.result_urls(task, base_url),
        "originUrls": [],
        "resolution": task.input.get("resolution", "720p"),
    }
    data = {"taskId": task.task_id, "info": info, "fallbackFlag": False}
    return [{"code": 200, "msg": "Veo3 video generated successfully.", "data": data}]


def record_runway(emu: Emulator, task: Task, base_url: str, now: float) -> dict[str, Any]:
    """``GET /api/v1/runway/record-detail`` ``data``: ``state`` wait → queueing → generating →
    success/fail, the video in ``videoInfo`` (camelCase), ``failCode``/``failMsg``."""
    state = {"waiting": "wait", "queuing": "queueing"}.get(task.state_at(now), task.state_at(now))
    inp = task.input
    video = None
    if state == "success":
        url = emu.result_urls(task, base_url)[0]
        video = {"videoId": f"{task.task_id}-video", "taskId": task.task_id, "videoUrl": url, "imageUrl": ""}
    generated = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(task.created_ms / 1000))
    return {
        "taskId": task.task_id,
        "parentTaskId": "",
        "generateParam": {
            "prompt": inp.get("prompt", ""),
            "imageUrl": inp.get("imageUrl", ""),
            "expandPrompt": False,
        },
        "state": state,
        "generateTime": generated,
        "videoInfo": video,
        "failCode": 400 if state == "fail" else None,
        "failMsg": FORCED_FAILURE if state == "fail" else "",
        "expireFlag": 0,
    }


def callback_runway(emu: Emulator, task: Task, base_url: str, now: float) -> list[dict[str, Any]]:
    """``{code:200, msg:"All generated successfully.", data{task_id, video_id, video_url,
    image_url}}`` (snake_case); a failure: code 400 with the same keys empty."""
    if task.state_at(now) != "success":
        data = {"task_id": task.task_id, "video_id": "", "video_url": "", "image_url": ""}
        return [{"code": 400, "msg": FORCED_FAILURE, "data": data}]
    url = emu.result_urls(task, base_url)[0]
    data = {"task_id": task.task_id, "video_id": f"{task.task_id}-video", "video_url": url, "image_url": ""}
    return [{"code": 200, "msg": "All generated successfully.", "data": data}]


def record_aleph(emu: Emulator, task: Task, base_url: str, now: float) -> dict[str, Any]:
    """``GET /api/v1/aleph/record-info`` ``data``: successFlag 1 on success and 0 otherwise, a
    failure being 0 with an ``errorMessage``; the video in ``response.resultVideoUrl``."""
    state = task.state_at(now)
    record = _common(emu, task, state)
    response = None
    if state == "success":
        url = emu.result_urls(task, base_url)[0]
        response = {"taskId": task.task_id, "resultVideoUrl": url, "resultImageUrl": ""}
    failed = state == "fail"
    return {
        **record,
        "response": response,
        "successFlag": 1 if state == "success" else 0,
        "errorCode": 400 if failed else 0,
        "errorMessage": FORCED_FAILURE if failed else "",
    }


def callback_aleph(emu: Emulator, task: Task, base_url: str, now: float) -> list[dict[str, Any]]:
    """``{code:200, msg, taskId, data{result_video_url, result_image_url}}``; a failure:
    ``{code:400, msg, data:null, taskId}``."""
    if task.state_at(now) != "success":
        return [{"code": 400, "msg": FORCED_FAILURE, "data": None, "taskId": task.task_id}]
    data = {"result_video_url": emu.result_urls(task, base_url)[0], "result_image_url": ""}
    return [{"code": 200, "msg": "success", "taskId": task.task_id, "data": data}]


#: Family name → (status record, callback payloads in the order Kie sends them).
FAMILY_ANSWERS = {
    "4o-image": (record_4o_image, callback_4o_image),
    "flux-kontext": (record_flux_kontext, callback_flux_kontext),
    "suno": (record_suno, callback_suno),
    "veo": (record_veo, callback_veo),
    "runway": (record_runway, callback_runway),
    "runway-aleph": (record_aleph, callback_aleph),
}
