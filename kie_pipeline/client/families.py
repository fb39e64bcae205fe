"""Decoders of Kie's non-jobs API families: status answers and callbacks, onto one :class:`TaskRecord`.

Each family reports a task its own way (``shared/kie/kie-models.md`` sections 0, 1, 2 and 8): 4o Image
with ``successFlag`` 0/1/2 plus a ``status`` text and ``response.resultUrls`` (``result_urls`` in the
quickstart: both accepted); Flux Kontext with ``successFlag`` 0-3 and one ``response.resultImageUrl``.
Every decoder maps onto the five :class:`TaskState` values and keeps results as ``{"resultUrls": [...]}``
so the pipeline reads every family the same way (``TaskRecord.result_urls``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from .errors import KieProtocolError
from .models import TaskRecord, TaskState, _decode_json_string

#: What a family's create call is: ``body(model, input, callback_url)``.
BodyBuilder = Callable[[str, Mapping[str, Any], "str | None"], dict[str, Any]]


def jobs_body(model: str, input: Mapping[str, Any], callback_url: str | None) -> dict[str, Any]:
    """The jobs API's ``{model, input, callBackUrl?}``."""
    body: dict[str, Any] = {"model": model, "input": dict(input)}
    if callback_url:
        body["callBackUrl"] = callback_url
    return body


def flat_body(model_key: str | None) -> BodyBuilder:
    """A family whose fields sit at the top of the body, the model (if any) under ``model_key``."""

    def build(model: str, input: Mapping[str, Any], callback_url: str | None) -> dict[str, Any]:
        body = {**({model_key: model} if model_key else {}), **input}
        if callback_url:
            body["callBackUrl"] = callback_url
        return body

    return build


def _time(value: Any) -> datetime | None:
    """Kie's timestamps: ms since the epoch (number or digits) or text ("2025-06-06 10:30:00", ISO)."""
    if value in (None, "", 0):
        return None
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.isdigit()):
        try:
            return datetime.fromtimestamp(int(value) / 1000, tz=UTC)
        except (ValueError, OverflowError):
            return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _data(data: Any, family: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise KieProtocolError(f"Kie {family} record-info returned no data object.")
    if not data.get("taskId"):
        raise KieProtocolError(f"Kie {family} record-info data lacks taskId.")
    return data


def _code(value: Any) -> str | None:
    # errorCode 0 means "no error" on some families (Aleph); absent or empty likewise.
    return None if value in (None, "", 0, "0") else str(value)


def _urls(value: Any) -> list[str]:
    """A list of URLs, also when Kie sends it as a JSON string (Veo's quickstart, callbacks)."""
    if isinstance(value, str):
        value = _decode_json_string(value, "resultUrls") if value.startswith("[") else [value]
    return [str(u) for u in value or [] if u]


def _record(
    data: dict[str, Any], state: TaskState, urls: list[str], known: set[str], *, model: str | None = None
) -> TaskRecord:
    param = data.get("paramJson")
    decoded = _decode_json_string(param, "paramJson") if param else None
    return TaskRecord(
        task_id=str(data["taskId"]),
        model=model,
        state=state,
        param=decoded if isinstance(decoded, dict) else None,
        result={"resultUrls": urls} if urls else None,
        fail_code=_code(data.get("errorCode")) if state is TaskState.FAIL else None,
        fail_msg=(data.get("errorMessage") or None) if state is TaskState.FAIL else None,
        create_time=_time(data.get("createTime")),
        complete_time=_time(data.get("completeTime")),
        extra={k: v for k, v in data.items() if k not in known},
    )


_4O_KNOWN = {"taskId", "paramJson", "completeTime", "response", "successFlag", "status", "errorCode",
             "errorMessage", "createTime"}  # fmt: skip
#: 4o Image ``status`` texts; ``successFlag`` decides when the two disagree is never needed (they pair).
_4O_FAILED = {"CREATE_TASK_FAILED", "GENERATE_FAILED"}


def decode_4o_image(data: Any) -> TaskRecord:
    """``GET /api/v1/gpt4o-image/record-info`` ``data``: ``successFlag`` 0 generating, 1 success,
    2 failed, with ``status`` GENERATING/SUCCESS/CREATE_TASK_FAILED/GENERATE_FAILED."""
    data = _data(data, "4o Image")
    flag, status = data.get("successFlag"), str(data.get("status") or "").upper()
    if status in _4O_FAILED or flag in (2, "2", 3, "3"):
        state = TaskState.FAIL
    elif flag in (1, "1") or status == "SUCCESS":
        state = TaskState.SUCCESS
    elif flag in (0, "0", None) and status in ("", "GENERATING"):
        # progress "0.00" before the model starts: still queued as far as the record tells.
        state = TaskState.GENERATING if _progress(data.get("progress")) > 0 else TaskState.WAITING
    else:
        raise KieProtocolError(f"Kie 4o Image reported an unknown status {status!r} / successFlag {flag!r}.")
    response = data.get("response") if isinstance(data.get("response"), dict) else {}
    urls = _urls(response.get("resultUrls") or response.get("result_urls"))
    return _record(data, state, urls if state is TaskState.SUCCESS else [], _4O_KNOWN)


def _progress(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


_FLUX_KNOWN = {"taskId", "paramJson", "completeTime", "response", "successFlag", "errorCode",
               "errorMessage", "createTime"}  # fmt: skip
#: ``successFlag`` of Flux Kontext and Veo: 0 generating, 1 success, 2 CREATE_TASK_FAILED (Veo:
#: failed), 3 GENERATE_FAILED (Veo: in the text, not the schema's enum: read as failure too).
_FLAG_STATES = {0: TaskState.GENERATING, 1: TaskState.SUCCESS, 2: TaskState.FAIL, 3: TaskState.FAIL}


def _flag_state(data: dict[str, Any], family: str) -> TaskState:
    try:
        return _FLAG_STATES[int(data.get("successFlag"))]
    except (TypeError, ValueError, KeyError):
        raise KieProtocolError(
            f"Kie {family} reported an unknown successFlag {data.get('successFlag')!r}."
        ) from None


def decode_flux_kontext(data: Any) -> TaskRecord:
    """``GET /api/v1/flux/kontext/record-info`` ``data``: one ``response.resultImageUrl``."""
    data = _data(data, "Flux Kontext")
    state = _flag_state(data, "Flux Kontext")
    response = data.get("response") if isinstance(data.get("response"), dict) else {}
    urls = _urls(response.get("resultImageUrl")) if state is TaskState.SUCCESS else []
    model = (_decode_json_string(data.get("paramJson"), "paramJson") or {}) if data.get("paramJson") else {}
    return _record(
        data, state, urls, _FLUX_KNOWN, model=model.get("model") if isinstance(model, dict) else None
    )


# -- callbacks ---------------------------------------------------------------------------------------


def _callback_parts(payload: Any, family: str) -> tuple[int | None, str | None, dict[str, Any]]:
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
        raise KieProtocolError(f"Kie {family} callback has no data object.")
    code = payload.get("code")
    return (
        (int(code) if isinstance(code, int) or str(code).isdigit() else None),
        payload.get("msg"),
        payload["data"],
    )


def _callback_record(
    task_id: Any, code: int | None, msg: str | None, urls: list[str], family: str
) -> TaskRecord:
    if not task_id:
        raise KieProtocolError(f"Kie {family} callback lacks its task id.")
    ok = code == 200 and bool(urls)
    return TaskRecord(
        task_id=str(task_id),
        model=None,
        state=TaskState.SUCCESS if ok else TaskState.FAIL,
        result={"resultUrls": urls} if ok else None,
        fail_code=None if ok else str(code if code is not None else 500),
        fail_msg=None if ok else (msg or f"Kie {family} callback reported failure"),
    )


def decode_4o_image_callback(payload: Any) -> TaskRecord:
    """``{code, msg, data{taskId, info{result_urls[]}}}``; failures: code 400/451/500, ``info: null``."""
    code, msg, data = _callback_parts(payload, "4o Image")
    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    urls = _urls(info.get("result_urls") or info.get("resultUrls"))
    return _callback_record(data.get("taskId") or data.get("task_id"), code, msg, urls, "4o Image")


def decode_flux_kontext_callback(payload: Any) -> TaskRecord:
    """``{code, msg, data{taskId, info{originImageUrl, resultImageUrl}}}``; failures 400/500/501."""
    code, msg, data = _callback_parts(payload, "Flux Kontext")
    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    urls = _urls(info.get("resultImageUrl"))
    return _callback_record(data.get("taskId") or data.get("task_id"), code, msg, urls, "Flux Kontext")


def decode_jobs_callback(payload: Any) -> TaskRecord:
    """The jobs API's callback: shaped like its recordInfo answer (``data.taskId``/``data.task_id``)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), dict):
        raise KieProtocolError("Kie jobs callback has no data object.")
    data = dict(payload["data"])
    data.setdefault("taskId", data.get("task_id"))
    return TaskRecord.from_api(data)


def callback_task_id(payload: Any) -> str | None:
    """The task id of any family's callback: ``data.taskId`` (jobs, 4o, Flux, Veo), ``data.task_id``
    (Runway, Suno, Veo 4K), or a top-level ``taskId`` (Runway Aleph)."""
    if not isinstance(payload, dict):
        return None
    data = payload.get("data")
    value = None
    if isinstance(data, dict):
        value = data.get("taskId") or data.get("task_id")
    value = value or payload.get("taskId")
    return str(value) if value else None


# -- Suno (kie-models.md section 5) ------------------------------------------------------------------

_SUNO_KNOWN = {"taskId", "parentMusicId", "param", "response", "status", "type", "operationType",
               "errorCode", "errorMessage"}  # fmt: skip
#: Suno's staged statuses: lyrics written (TEXT_SUCCESS) and the first track ready (FIRST_SUCCESS) are
#: not the end; every track is ready at SUCCESS.
_SUNO_STATES = {
    "PENDING": TaskState.WAITING,
    "TEXT_SUCCESS": TaskState.GENERATING,
    "FIRST_SUCCESS": TaskState.GENERATING,
    "SUCCESS": TaskState.SUCCESS,
    "CREATE_TASK_FAILED": TaskState.FAIL,
    "GENERATE_AUDIO_FAILED": TaskState.FAIL,
    "CALLBACK_EXCEPTION": TaskState.FAIL,
    "SENSITIVE_WORD_ERROR": TaskState.FAIL,
}


def _tracks(items: Any, url_key: str) -> list[dict[str, Any]]:
    return [t for t in items or [] if isinstance(t, dict) and t.get(url_key)]


def decode_suno(data: Any) -> TaskRecord:
    """``GET /api/v1/generate/record-info`` ``data``: ``status`` (8 values), tracks in
    ``response.sunoData[].audioUrl`` (several per task). ``result["tracks"]`` keeps each track's
    title, tags and duration as Kie gives them.

    ``CALLBACK_EXCEPTION`` says Kie could not deliver the callback: when the record nevertheless has
    every track's audio, the music exists and the task counts as a success; otherwise a failure.
    """
    data = _data(data, "Suno")
    status = str(data.get("status") or "").upper()
    state = _SUNO_STATES.get(status)
    if state is None:
        raise KieProtocolError(f"Kie Suno reported an unknown status {status!r}.")
    response = data.get("response") if isinstance(data.get("response"), dict) else {}
    tracks = _tracks(response.get("sunoData"), "audioUrl")
    if status == "CALLBACK_EXCEPTION" and tracks:
        state = TaskState.SUCCESS
    record = _record(data, state, [], _SUNO_KNOWN)
    if state is not TaskState.SUCCESS:
        return record
    param = _decode_json_string(data.get("param"), "param") if data.get("param") else None
    return TaskRecord(
        **{
            **record.__dict__,
            "param": param if isinstance(param, dict) else None,
            "result": {"resultUrls": [str(t["audioUrl"]) for t in tracks], "tracks": tracks},
        }
    )


def decode_suno_callback(payload: Any) -> TaskRecord:
    """``{code, msg, data{callbackType, task_id, data[{audio_url, ...}]}}``: ``text`` and ``first``
    are stages (non-terminal), ``complete`` the end, ``error`` (``data.data: null``) a failure."""
    code, msg, data = _callback_parts(payload, "Suno")
    task_id = data.get("task_id") or data.get("taskId")
    kind = str(data.get("callbackType") or "").lower()
    if kind in ("text", "first") and code == 200:
        if not task_id:
            raise KieProtocolError("Kie Suno callback lacks its task id.")
        return TaskRecord(task_id=str(task_id), model=None, state=TaskState.GENERATING)
    tracks = _tracks(data.get("data"), "audio_url") if kind == "complete" else []
    record = _callback_record(task_id, code, msg, [str(t["audio_url"]) for t in tracks], "Suno")
    if record.result is not None:
        return TaskRecord(**{**record.__dict__, "result": {**record.result, "tracks": tracks}})
    return record


# -- Veo 3.1 (kie-models.md section 3) ---------------------------------------------------------------

_VEO_KNOWN = {"taskId", "paramJson", "completeTime", "createTime", "response", "successFlag", "errorCode",
              "errorMessage", "resultUrls"}  # fmt: skip


def decode_veo(data: Any) -> TaskRecord:
    """``GET /api/v1/veo/record-info`` ``data``: videos in ``response.resultUrls`` (the quickstart
    reads a JSON string ``data.resultUrls`` instead: both accepted)."""
    data = _data(data, "Veo")
    state = _flag_state(data, "Veo")
    response = data.get("response") if isinstance(data.get("response"), dict) else {}
    urls = _urls(response.get("resultUrls") or data.get("resultUrls")) if state is TaskState.SUCCESS else []
    return _record(data, state, urls, _VEO_KNOWN)


def decode_veo_callback(payload: Any) -> TaskRecord:
    """``{code, msg, data{taskId, info{resultUrls[], originUrls[], resolution}, fallbackFlag}}``
    (``info.resultUrls`` an array or a JSON string); failures 400/422/500/501 with ``data{taskId}``."""
    code, msg, data = _callback_parts(payload, "Veo")
    info = data.get("info") if isinstance(data.get("info"), dict) else {}
    urls = _urls(info.get("resultUrls") or info.get("result_urls"))
    return _callback_record(data.get("taskId") or data.get("task_id"), code, msg, urls, "Veo")


# -- Runway (kie-models.md section 4) ----------------------------------------------------------------

_RUNWAY_KNOWN = {"taskId", "parentTaskId", "generateParam", "state", "generateTime", "videoInfo", "failCode",
                 "failMsg"}  # fmt: skip
#: Runway's ``state`` values; ``queueing`` is spelt so here (the jobs API says ``queuing``).
_RUNWAY_STATES = {
    "wait": TaskState.WAITING,
    "queueing": TaskState.QUEUING,
    "queuing": TaskState.QUEUING,
    "generating": TaskState.GENERATING,
    "success": TaskState.SUCCESS,
    "fail": TaskState.FAIL,
}


def decode_runway(data: Any) -> TaskRecord:
    """``GET /api/v1/runway/record-detail`` ``data``: ``state``, the video in ``videoInfo.videoUrl``
    (snake_case ``video_url`` as one SDK types it: accepted), ``failCode``/``failMsg``."""
    data = _data(data, "Runway")
    state = _RUNWAY_STATES.get(str(data.get("state") or "").lower())
    if state is None:
        raise KieProtocolError(f"Kie Runway reported an unknown state {data.get('state')!r}.")
    info = data.get("videoInfo") if isinstance(data.get("videoInfo"), dict) else {}
    urls = _urls(info.get("videoUrl") or info.get("video_url")) if state is TaskState.SUCCESS else []
    failed = state is TaskState.FAIL
    return TaskRecord(
        task_id=str(data["taskId"]),
        model=None,
        state=state,
        param=data.get("generateParam") if isinstance(data.get("generateParam"), dict) else None,
        result={"resultUrls": urls} if urls else None,
        fail_code=_code(data.get("failCode")) if failed else None,
        fail_msg=(data.get("failMsg") or None) if failed else None,
        create_time=_time(data.get("generateTime")),
        extra={k: v for k, v in data.items() if k not in _RUNWAY_KNOWN},
    )


def decode_runway_callback(payload: Any) -> TaskRecord:
    """``{code:200, msg, data{task_id, video_id, video_url, image_url}}``; a failure has code 400/500
    and the same keys empty."""
    code, msg, data = _callback_parts(payload, "Runway")
    urls = _urls(data.get("video_url") or data.get("videoUrl"))
    return _callback_record(data.get("task_id") or data.get("taskId"), code, msg, urls, "Runway")


# -- Runway Aleph (kie-models.md section 4) ----------------------------------------------------------

_ALEPH_KNOWN = {"taskId", "paramJson", "response", "completeTime", "createTime", "successFlag", "errorCode",
                "errorMessage"}  # fmt: skip


def decode_aleph(data: Any) -> TaskRecord:
    """``GET /api/v1/aleph/record-info`` ``data``: ``successFlag`` 1 success, 0 running **or** failed
    (failed is 0 with a non-empty ``errorMessage``); the video in ``response.resultVideoUrl``."""
    data = _data(data, "Runway Aleph")
    flag = data.get("successFlag")
    if flag in (1, "1"):
        state = TaskState.SUCCESS
    elif flag in (0, "0", None):
        state = TaskState.FAIL if data.get("errorMessage") else TaskState.GENERATING
    else:
        raise KieProtocolError(f"Kie Runway Aleph reported an unknown successFlag {flag!r}.")
    response = data.get("response") if isinstance(data.get("response"), dict) else {}
    urls = _urls(response.get("resultVideoUrl")) if state is TaskState.SUCCESS else []
    return _record(data, state, urls, _ALEPH_KNOWN)


def decode_aleph_callback(payload: Any) -> TaskRecord:
    """``{code:200, msg, taskId, data{result_video_url, result_image_url}}``; a failure:
    ``{code:400, msg, data:null, taskId}`` (the task id is at the top)."""
    if not isinstance(payload, dict):
        raise KieProtocolError("Kie Runway Aleph callback is not an object.")
    data = payload.get("data") if isinstance(payload.get("data"), dict) else {}
    code = payload.get("code")
    code = int(code) if isinstance(code, int) or str(code).isdigit() else None
    urls = _urls(data.get("result_video_url") or data.get("resultVideoUrl"))
    task_id = payload.get("taskId") or data.get("taskId") or data.get("task_id")
    return _callback_record(task_id, code, payload.get("msg"), urls, "Runway Aleph")
