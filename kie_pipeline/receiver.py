"""The callback receiver: a small Starlette app that keeps Kie's callbacks in the store.

``kie-pipeline receiver --port 8766`` serves it (see the README: it must be reachable by Kie, e.g.
behind your HTTPS ingress). ``POST /kie/callback/{request_key}/{token}``:

- 404 unless the token is the row's (HMAC of the key with ``KIE_CALLBACK_SECRET``): no one else can
  post to a row;
- 401 when a webhook key is configured and the signature is missing, wrong, or its timestamp is more
  than :data:`~kie_pipeline.pipeline.callbacks.REPLAY_WINDOW_S` away (a replay);
- 400 for a body without a task id; otherwise 200 at once, after writing the delivery whole to the
  store. A duplicate (the same task again) changes nothing and is answered 200 too.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from kie_pipeline.pipeline.callbacks import (
    REPLAY_WINDOW_S,
    REQUEST_KEY,
    TASK_ID,
    CallbackBox,
    signature_problem,
    task_id_of,
    token_for,
)
from kie_pipeline.pipeline.store import TaskStore
from kie_pipeline.serving import ThreadedServer

log = logging.getLogger(__name__)


def build_receiver(
    store: TaskStore, *, secret: str, webhook_key: str | None = None, window_s: float = REPLAY_WINDOW_S
) -> Starlette:
    """The receiver app for ``store``. ``secret`` checks the URL's token; ``webhook_key`` (Kie's
    webhook HMAC key, optional) checks the signature."""
    if not secret:
        raise ValueError("the callback secret must not be empty")
    box = CallbackBox(store)
    counts = {"accepted": 0, "duplicates": 0, "refused": 0}

    def refuse(status: int, why: str) -> JSONResponse:
        counts["refused"] += 1
        log.warning("Refused a callback (%s): %s", status, why)
        return JSONResponse({"code": status, "msg": why}, status_code=status)

    async def callback(request: Request) -> JSONResponse:
        key, token = request.path_params["key"], request.path_params["token"]
        if not REQUEST_KEY.match(key) or not hmac.compare_digest(token_for(secret, key), token):
            return refuse(404, "unknown callback URL")
        try:
            payload: Any = json.loads(await request.body())
        except ValueError:
            return refuse(400, "the body is not JSON")
        task_id = task_id_of(payload)
        if task_id is None or not TASK_ID.match(task_id):
            return refuse(400, "the body names no task (data.taskId)")
        if webhook_key:
            why = signature_problem(
                webhook_key,
                task_id,
                request.headers.get("x-webhook-timestamp"),
                request.headers.get("x-webhook-signature"),
                window_s=window_s,
            )
            if why:
                return refuse(401, why)
        kept = await asyncio.to_thread(box.deliver, key, task_id, payload)
        counts["accepted" if kept else "duplicates"] += 1
        return JSONResponse({"code": 200, "msg": "received" if kept else "duplicate"})

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse(counts)

    return Starlette(
        routes=[
            Route("/kie/callback/{key}/{token}", callback, methods=["POST"]),
            Route("/receiver/stats", stats, methods=["GET"]),
        ]
    )


class ReceiverServer(ThreadedServer):
    """The receiver on a loopback port in a background thread (tests, ``make demo``)."""

    name = "callback receiver"


def serve(store: TaskStore, *, secret: str, webhook_key: str | None, host: str, port: int) -> None:
    """Serve the receiver in the foreground until interrupted."""
    app = build_receiver(store, secret=secret, webhook_key=webhook_key)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
