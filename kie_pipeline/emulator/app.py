"""The emulator's HTTP API: the same endpoints, JSON shapes and codes as Kie's documents.

- ``POST /api/v1/jobs/createTask``, ``GET /api/v1/jobs/recordInfo``, ``GET /api/v1/chat/credit``,
  ``POST /api/v1/common/download-url`` (Bearer auth), and ``GET /files/{token}.{ext}`` (result files,
  no auth, 404 once expired).
- ``GET /emulator/stats`` and ``POST /emulator/config`` (counters and run-time settings, for tests and
  benchmarks; the server binds to loopback only).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .render import render
from .state import Emulator, Task

ASPECT_RATIOS = {"1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9", "auto"}
SUPPORTED_MODELS = {"nano-banana-pro"}


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


def _check_input(model: Any, inp: Any) -> str | None:
    """Kie's documented rules for nano-banana-pro; returns a 422 message or None."""
    if not isinstance(model, str) or not model:
        return "model is required"
    if model not in SUPPORTED_MODELS:
        return f"model {model!r} is not supported"
    if not isinstance(inp, dict):
        return "input is required"
    prompt = inp.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        return "prompt: is required"
    if len(prompt) > 10000:
        return "prompt: must be at most 10000 characters"
    images = inp.get("image_input", [])
    if not isinstance(images, list) or len(images) > 8:
        return "image_input: at most 8 images"
    if inp.get("aspect_ratio", "1:1") not in ASPECT_RATIOS:
        return "aspect_ratio: invalid value"
    if inp.get("resolution", "1K") not in {"1K", "2K", "4K"}:
        return "resolution: invalid value"
    if inp.get("output_format", "png") not in {"png", "jpg"}:
        return "output_format: invalid value"
    return None


def build_app(emu: Emulator) -> Starlette:
    """The Starlette app over an :class:`Emulator` state."""

    async def create_task(request: Request) -> Response:
        if not _authorized(emu, request):
            return _error(emu, 401, "You do not have access permissions")
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
        problem = _check_input(body.get("model"), body.get("input"))
        if problem:
            return _error(emu, 422, problem)
        created = emu.create(body)
        if not isinstance(created, Task):
            return _error(
                emu, 402, f"Credits insufficient: balance {created}, this task costs {emu.cost_of(body)}"
            )
        if body.get("callBackUrl"):
            asyncio.get_running_loop().create_task(
                _send_callback(emu, created, body["callBackUrl"], _base(request))
            )
        return _ok({"taskId": created.task_id})

    async def record_info(request: Request) -> Response:
        if not _authorized(emu, request):
            return _error(emu, 401, "You do not have access permissions")
        wait = emu.admit_poll()
        if wait is not None:
            return _error(emu, 429, "Rate limit exceeded: 10 requests per second", {"Retry-After": "1"})
        task_id = request.query_params.get("taskId", "")
        task = emu.tasks.get(task_id)
        if not task_id:
            return _error(emu, 400, "taskId is required")
        if task is None:
            return _error(emu, 404, "Task not found")
        return _ok(emu.record(task, _base(request)))

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
        fresh = emu.new_token(task.task_id, entry.index, emu.config.download_url_ttl)
        ext = "jpg" if task.input.get("output_format") == "jpg" else "png"
        return _ok(f"{_base(request)}/files/{fresh}.{ext}")

    async def files(request: Request) -> Response:
        name = request.path_params["name"]
        entry = emu.tokens.get(name.split(".", 1)[0])
        if entry is None or time.monotonic() > entry.expires_mono:
            return Response("Not Found", status_code=404, media_type="text/plain")
        task = emu.tasks[entry.task_id]
        inp = task.input
        fmt = "jpg" if inp.get("output_format") == "jpg" else "png"
        data = await asyncio.to_thread(
            render,
            task.task_id,
            str(inp.get("prompt", "")),
            str(inp.get("aspect_ratio", "1:1")),
            str(inp.get("resolution", "1K")),
            fmt,
            emu.config.render_scale,
        )
        emu.stats.downloads += 1
        if "authorization" in request.headers:
            emu.stats.downloads_with_auth += 1
        return Response(data, media_type="image/jpeg" if fmt == "jpg" else "image/png")

    async def stats(request: Request) -> Response:
        return JSONResponse(emu.snapshot())

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
        Route("/api/v1/common/download-url", download_url, methods=["POST"]),
        Route("/files/{name}", files, methods=["GET"]),
        Route("/emulator/stats", stats, methods=["GET"]),
        Route("/emulator/config", config, methods=["POST"]),
    ]
    return Starlette(routes=routes)


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


async def _send_callback(emu: Emulator, task: Task, url: str, base_url: str) -> None:
    """POST the final record to callBackUrl, as Kie does: 15 s timeout, up to 3 attempts."""
    if task.stuck:
        return
    # asyncio may wake a hair early: wait until the task really is terminal.
    while task.state_at(time.monotonic()) not in ("success", "fail"):
        await asyncio.sleep(max(0.005, task.completed_at() - time.monotonic()))
    record = emu.record(task, base_url)
    payload = {"code": 200 if record["state"] == "success" else 501, "msg": "success", "data": record}
    async with httpx.AsyncClient(timeout=15) as client:
        for _ in range(3):
            try:
                response = await client.post(url, json=payload)
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
}


class FaultInjection:
    """ASGI middleware that makes a fraction of API requests fail, before the handler sees them.

    Faults strike before the request is processed, so a failed createTask never creates a task.
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
            await self.app(scope, receive, send)
        elif isinstance(fault, int):
            msg = _FORCED_MESSAGES.get(fault, "Forced error")
            headers = {"Retry-After": "1"} if fault == 429 else None
            await _error(self.emu, fault, msg, headers)(scope, receive, send)
        elif fault == "slow":
            await asyncio.sleep(self.emu.config.faults.slow_seconds)
            await self.app(scope, receive, send)
        elif fault == "error_500":
            await _error(self.emu, 500, "Internal server error")(scope, receive, send)
        elif fault == "error_429":
            await _error(self.emu, 429, "Rate limit exceeded", {"Retry-After": "1"})(scope, receive, send)
        elif fault == "malformed":
            await Response('{"code": 200, "msg": "succ', media_type="application/json")(scope, receive, send)
        else:  # drop: announce a body, send part of it and hang up
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]}
            )
            await send({"type": "http.response.body", "body": b'{"code": 2', "more_body": False})


def build_asgi(emu: Emulator) -> ASGIApp:
    """The full ASGI app: API routes behind fault injection."""
    return FaultInjection(build_app(emu), emu)
