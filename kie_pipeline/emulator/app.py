"""The emulator's HTTP API: the same endpoints, JSON shapes and codes as Kie's documents.

- ``POST /api/v1/jobs/createTask``, ``GET /api/v1/jobs/recordInfo``, ``GET /api/v1/chat/credit``,
  ``POST /api/v1/common/download-url`` (Bearer auth), and ``GET /files/{token}.{ext}`` (result files,
  no auth, 404 once expired).
- Kie's File Upload API on the same port (``POST /api/file-stream-upload``, ``file-base64-upload``,
  ``file-url-upload``; uploaded files at ``GET /tempfile/...``): see :mod:`.uploads`.
- ``GET /emulator/stats`` and ``POST /emulator/config`` (counters and run-time settings, for tests and
  benchmarks; the server binds to loopback only); ``GET /emulator/arrivals`` (the Unix time of every
  createTask arrival, for benchmarks that measure how fully the limit was used).

Result files are kept ``retention`` seconds after completion (Kie: 14 days); after that they answer 404
and download-url refuses them with code 404.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import hmac
import math
import time
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kie_pipeline.client.errors import KieValidationError
from kie_pipeline.client.registry import FAMILIES, JOBS, MODELS, ApiFamily

from .families import FAMILY_ANSWERS
from .render import render, render_media
from .state import Emulator, Task
from .uploads import upload_routes

CREATE_PATH = "/api/v1/jobs/createTask"
#: Every family's create endpoint (a lost answer can strike any of them).
CREATE_PATHS = frozenset(f.create_path for f in FAMILIES.values())
#: Scope key through which the createTask handler tells FaultInjection to lose its answer.
LOST_ANSWER_KEY = "kie_emulator.lost_answer"
#: Chunk size of streamed (chunked) result files.
FILE_CHUNK = 4096


def _error(emu: Emulator, code: int, msg: str, headers: dict[str, str] | None = None) -> JSONResponse:
    status = code if emu.config.error_style == "http" else 200
    return JSONResponse({"code": code, "msg": msg, "data": None}, status_code=status, headers=headers)


def _ok(data: Any) -> JSONResponse:
    return JSONResponse({"code": 200, "msg": "success", "data": data})


def _authorized(emu: Emulator, request: Request) -> bool:
    ok = request.headers.get("authorization", "") == f"Bearer {emu.config.api_key}"
    if not ok:
        with emu.lock:
            emu.stats.unauthorized += 1
    return ok


def _check_input(model: Any, inp: Any, family: ApiFamily = JOBS) -> str | None:
    """Kie's documented rules for the model (the model registry); a 422 message or None."""
    if not isinstance(model, str) or not model:
        return "model is required"
    if model not in MODELS or MODELS[model].family is not family:
        return f"model {model!r} is not supported"
    if not isinstance(inp, dict):
        return "input is required"
    try:
        MODELS[model].validate(inp)
    except KieValidationError as exc:
        return exc.message
    return None


def build_app(emu: Emulator) -> Starlette:
    """The Starlette app over an :class:`Emulator` state."""

    async def create_task(request: Request, family: ApiFamily = JOBS) -> Response:
        if not _authorized(emu, request):
            return _error(emu, 401, "You do not have access permissions")
        emu.arrive_create()
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _error(emu, 400, "Request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(emu, 400, "Request body must be a JSON object")
        wait = emu.admit_create()
        if wait is not None:
            return _error(
                emu,
                429,
                "Rate limit exceeded: 20 requests per 10 seconds",
                {"Retry-After": str(math.ceil(wait))},
            )
        # Flat families name their fields at the top of the body; the task keeps {model, input}.
        model, inp = family.split_body(body)
        problem = _check_input(model, inp, family)
        if not problem and family.callback_required and not body.get("callBackUrl"):
            problem = "callBackUrl is required"
        if problem:
            return _error(emu, 422, problem)
        internal = body if family is JOBS else {"model": model, "input": inp}
        created = emu.create(internal)
        if not isinstance(created, Task):
            return _error(
                emu, 402, f"Credits insufficient: balance {created}, this task costs {emu.cost_of(internal)}"
            )
        if family is not JOBS:
            created.family, created.body = family.name, body
        if body.get("callBackUrl"):
            asyncio.get_running_loop().create_task(
                _send_callback(emu, created, body["callBackUrl"], _base(request))
            )
        # The task exists and is charged; FaultInjection may now lose the answer (lost_answer fault).
        holder = request.scope.get(LOST_ANSWER_KEY)
        if isinstance(holder, dict):
            holder["mode"] = emu.draw_lost_answer()
        return _ok({"taskId": created.task_id})

    async def record_info(request: Request, family: ApiFamily = JOBS) -> Response:
        if not _authorized(emu, request):
            return _error(emu, 401, "You do not have access permissions")
        wait = emu.admit_poll()
        if wait is not None:
            return _error(emu, 429, "Rate limit exceeded: 10 requests per second", {"Retry-After": "1"})
        task_id = request.query_params.get("taskId", "")
        task = emu.tasks.get(task_id)
        if not task_id:
            return _error(emu, 400, "taskId is required")
        if task is None or task.family != family.name:
            return _error(emu, 404, "Task not found")
        if family is not JOBS:
            return _ok(FAMILY_ANSWERS[family.name][0](emu, task, _base(request), time.monotonic()))
        return _ok(emu.record(task, _base(request)))

    async def veo_1080p(request: Request) -> Response:
        """``GET /api/v1/veo/get-1080p-video?taskId=&index=``: ``data.resultUrl`` once the task has
        succeeded (422 with Kie's texts before, or for an index it does not have)."""
        if not _authorized(emu, request):
            return _error(emu, 401, "You do not have access permissions")
        task = emu.tasks.get(request.query_params.get("taskId", ""))
        if task is None or task.family != "veo":
            return _error(emu, 422, "record is null")
        try:
            index = int(request.query_params.get("index", "0"))
        except ValueError:
            return _error(emu, 422, "index must be an integer")
        if task.state_at(time.monotonic()) != "success":
            return _error(emu, 422, "record status is not success")
        urls = emu.result_urls(task, _base(request))
        if not 0 <= index < len(urls):
            return _error(emu, 422, "record result data is empty")
        return _ok({"resultUrl": urls[index]})

    async def credit(request: Request) -> Response:
        if not _authorized(emu, request):
            return _error(emu, 401, "You do not have access permissions")
        return _ok(emu.config.balance)

    async def download_url(request: Request) -> Response:
        if not _authorized(emu, request):
            return _error(emu, 401, "You do not have access permissions")
        emu.stats.download_url_calls += 1
        try:
            url = (await request.json()).get("url", "")
        except (ValueError, AttributeError):
            return _error(emu, 400, "Request body must be a JSON object with url")
        token = str(url).rsplit("/", 1)[-1].split(".", 1)[0].split("?", 1)[0]
        entry = emu.tokens.get(token)
        if not str(url).startswith(_base(request)) or entry is None:
            return _error(emu, 422, "url: only Kie-generated result URLs are supported")
        task = emu.tasks[entry.task_id]
        if task.expired(time.monotonic(), emu.config.retention):
            return _error(emu, 404, "file has expired: Kie keeps generated files for a limited time")
        fresh = emu.new_token(task.task_id, entry.index, emu.config.download_url_ttl)
        return _ok(f"{_base(request)}/files/{fresh}.{task.output.format}")

    async def files(request: Request) -> Response:
        name = request.path_params["name"]
        entry = emu.tokens.get(name.split(".", 1)[0])
        now = time.monotonic()
        if entry is None or now > entry.expires_mono:
            return Response("Not Found", status_code=404, media_type="text/plain")
        task = emu.tasks[entry.task_id]
        if task.expired(now, emu.config.retention):
            return Response("Not Found", status_code=404, media_type="text/plain")
        out = task.output
        fmt = out.format
        spec = MODELS.get(task.model)
        if spec is not None and spec.media != "image":
            # Video and audio models: a small real clip (see render_media), whatever the URL's extension.
            seed = task.task_id if entry.index == 0 else f"{task.task_id}#{entry.index}"
            data, media_type, _ = await asyncio.to_thread(
                render_media, spec.media.value, seed, str(task.input.get("prompt", ""))
            )
        else:
            prompt = str(task.input.get("prompt", ""))
            data = await asyncio.to_thread(
                render,
                task.task_id,
                prompt,
                out.aspect_ratio,
                out.resolution,
                fmt,
                emu.config.render_scale,
                entry.index,
                seed=prompt if emu.config.same_prompt_same_image else None,
            )
            media_type = "image/jpeg" if fmt == "jpg" else "image/png"
        emu.stats.downloads += 1
        if "authorization" in request.headers:
            emu.stats.downloads_with_auth += 1
        if emu.config.chunked_files:
            # No Content-Length: the client can only enforce its size cap while streaming.
            chunks = [data[i : i + FILE_CHUNK] for i in range(0, len(data), FILE_CHUNK)]
            return StreamingResponse(_iterate(chunks), media_type=media_type)
        return Response(data, media_type=media_type)

    async def stats(request: Request) -> Response:
        return JSONResponse(emu.snapshot())

    async def arrivals(request: Request) -> Response:
        # Read-only: the Unix time of every createTask arrival (past auth, before the 429 check).
        with emu.lock:
            times = list(emu.create_arrival_times)
        return JSONResponse({"createTask": times})

    async def config(request: Request) -> Response:
        try:
            emu.config.update(await request.json())
        except (ValueError, TypeError, AttributeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(emu.snapshot())

    routes = [
        Route("/api/v1/jobs/createTask", create_task, methods=["POST"]),
        Route("/api/v1/jobs/recordInfo", record_info, methods=["GET"]),
        Route("/api/v1/chat/credit", credit, methods=["GET"]),
        Route("/api/v1/veo/get-1080p-video", veo_1080p, methods=["GET"]),
        Route("/api/v1/common/download-url", download_url, methods=["POST"]),
        Route("/files/{name}", files, methods=["GET"]),
        Route("/emulator/stats", stats, methods=["GET"]),
        Route("/emulator/arrivals", arrivals, methods=["GET"]),
        Route("/emulator/config", config, methods=["POST"]),
        *upload_routes(emu, _authorized),
    ]
    for fam in FAMILIES.values():
        if fam is not JOBS:
            create, status = (functools.partial(f, family=fam) for f in (create_task, record_info))
            routes.append(Route(fam.create_path, create, methods=["POST"]))
            routes.append(Route(fam.status_path, status, methods=["GET"]))
    return Starlette(routes=routes)


async def _iterate(chunks: list[bytes]) -> Any:
    for chunk in chunks:
        yield chunk


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def _send_callback(emu: Emulator, task: Task, url: str, base_url: str) -> None:
    """POST the final record to callBackUrl, as Kie does: 15 s timeout, up to 3 attempts, signed
    when the account has a webhook key; the ``callback_*`` switches lose, repeat or mis-sign it."""
    if task.stuck:
        return
    # asyncio may wake a hair early: wait until the task really is terminal.
    while task.state_at(time.monotonic()) not in ("success", "fail"):
        await asyncio.sleep(max(0.005, task.completed_at() - time.monotonic()))
    if emu.config.callback_delay > 0:
        await asyncio.sleep(emu.config.callback_delay)
    if emu.draw_callback_lost():
        return
    if task.family in FAMILY_ANSWERS:
        # Each family's own callback shapes (kie-models.md section 8); Suno sends its stages too.
        payloads = FAMILY_ANSWERS[task.family][1](emu, task, base_url, time.monotonic())
    else:
        # Callbacks carry Kie's credit figures (recordInfo only when credits_in_record is on).
        record = {**emu.record(task, base_url), **emu.credit_fields(task)}
        payloads = [{"code": 200 if record["state"] == "success" else 501, "msg": "success", "data": record}]
    faults = emu.config.faults
    async with httpx.AsyncClient(timeout=15) as client:
        for payload in payloads:
            for _ in range(1 + max(0, faults.callback_duplicates)):
                await _deliver(client, emu, task, url, payload)


async def _deliver(
    client: httpx.AsyncClient, emu: Emulator, task: Task, url: str, payload: dict[str, Any]
) -> None:
    """One delivery: up to 3 attempts, 1 s apart, until the receiver answers 2xx."""
    key = emu.config.webhook_key
    for _ in range(3):
        headers = {}
        if key:
            stamp = int(time.time())
            signing_key = key + "-wrong" if emu.config.faults.callback_bad_signature else key
            mac = hmac.new(signing_key.encode(), f"{task.task_id}.{stamp}".encode(), hashlib.sha256)
            headers = {
                "X-Webhook-Timestamp": str(stamp),
                "X-Webhook-Signature": base64.b64encode(mac.digest()).decode(),
            }
        try:
            response = await client.post(url, json=payload, headers=headers)
            if response.status_code < 300:
                task.callback_sent = True
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(1)


_FORCED_MESSAGES = {
    400: "Invalid request parameters",
    401: "You do not have access permissions",
    402: "Credits insufficient",
    404: "Resource not found",
    408: "Upstream timeout",
    422: "prompt: parameter validation failed",
    429: "Rate limit exceeded",
    455: "Service under maintenance",
    500: "Internal server error",
    501: "Generation failed",
    505: "Feature disabled",
    550: "Queue is full, please try again later",
}


class FaultInjection:
    """ASGI middleware that makes a fraction of API requests fail.

    The usual faults strike before the handler sees the request, so a failed createTask never creates
    a task ("slow" reads the request, waits, then handles it: the task is created even if the client
    has given up). The lost-answer fault strikes after: the createTask handler creates the task and marks
    the request, and this middleware then loses the answer ("drop": hang up with no response;
    "hold": answer only after ``slow_seconds``).
    """

    def __init__(self, app: ASGIApp, emu: Emulator) -> None:
        self.app = app
        self.emu = emu

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        fault = self.emu.draw_fault()
        if fault is None:
            if scope["path"] in CREATE_PATHS:
                # A holder object, not a flag: it survives any copying of the scope downstream.
                holder: dict[str, str | None] = {}
                scope = {**scope, LOST_ANSWER_KEY: holder}
                send = self._answer_sender(holder, receive, send)
            await self.app(scope, receive, send)
        elif isinstance(fault, int):
            msg = _FORCED_MESSAGES.get(fault, "Forced error")
            headers = {"Retry-After": "1"} if fault == 429 else None
            await _error(self.emu, fault, msg, headers)(scope, receive, send)
        elif fault == "slow":
            # Read the request first, as a server does before working on it: the request is then
            # handled even if the client gives up meanwhile (uvicorn would drop an unread body).
            received = await _read_request(receive)
            await asyncio.sleep(self.emu.config.faults.slow_seconds)
            await self.app(scope, _replay(received, receive), send)
        elif fault == "error_500":
            await _error(self.emu, 500, "Internal server error")(scope, receive, send)
        elif fault == "error_429":
            await _error(self.emu, 429, "Rate limit exceeded", {"Retry-After": "1"})(scope, receive, send)
        elif fault == "malformed":
            await Response('{"code": 200, "msg": "succ', media_type="application/json")(scope, receive, send)
        else:  # drop: announce a body, send part of it and hang up
            await _partial_answer(send)

    def _answer_sender(self, holder: dict[str, str | None], receive: Receive, send: Send) -> Send:
        """A ``send`` that forwards the answer unless the handler marked it as lost."""
        emu = self.emu
        dropped = False

        async def sender(message: Message) -> None:
            nonlocal dropped
            mode = holder.get("mode")
            if dropped:
                return
            if mode == "hold" and message["type"] == "http.response.start":
                await asyncio.sleep(emu.config.faults.slow_seconds)
            elif mode == "drop":
                dropped = True
                await _hang_up(send, receive)
                return
            await send(message)

        return sender


async def _read_request(receive: Receive) -> list[Message]:
    """Every message of the request body."""
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body"):
            return messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that first returns ``messages``, then defers to the real one."""
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


async def _partial_answer(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]})
    await send({"type": "http.response.body", "body": b'{"code": 2', "more_body": False})


async def _hang_up(send: Send, receive: Receive) -> None:
    """Close the connection without sending any response.

    ASGI has no message for that, so this reaches uvicorn's transport through the ``send`` it gave us
    (a bound method of its request cycle). Without one, it falls back to a truncated answer, which a
    client cannot tell from a lost one either.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        await _partial_answer(send)
        return
    transport.close()
    # Wait until uvicorn has seen the disconnect, so it does not try to answer 500 on its own.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2.0):
            while (await receive())["type"] != "http.disconnect":
                pass


def build_asgi(emu: Emulator) -> ASGIApp:
    """The full ASGI app: API routes behind fault injection."""
    return FaultInjection(build_app(emu), emu)
