"""Money safety of the client, against the emulator over real HTTP: createTask is never paid twice,
several results per task, retention, credits per task, arrivals in the rate window, streaming caps."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from types import SimpleNamespace

import httpx
import pytest

from kie_pipeline.client import (
    PRICES,
    KieCreateUncertainError,
    KieDownloadError,
    KieError,
    KieNotFoundError,
    KieTransportError,
    RateLimits,
    TaskRecord,
    TaskState,
    estimate_credits,
)
from kie_pipeline.client.transport import created_task_id, transport_error, unwrap_response
from kie_pipeline.emulator import EmulatorServer
from kie_pipeline.emulator.__main__ import config_from_args

from .conftest import FAST_RETRY, make_client

PROMPT = {"prompt": "a lighthouse on a cliff at dawn"}
MODEL = "nano-banana-pro"


def run(coro):
    return asyncio.run(coro)


def set_config(server: EmulatorServer, changes: dict) -> dict:
    """Change the emulator at run time through its admin endpoint (as a benchmark script would)."""
    response = httpx.post(f"{server.url}/emulator/config", json=changes, timeout=5)
    response.raise_for_status()
    return response.json()


async def create_uncertain(server: EmulatorServer, **options: object):
    async with make_client(server, **options) as client:
        with pytest.raises(KieCreateUncertainError) as info:
            await client.create_task(MODEL, PROMPT)
        return info.value, client.usage


# -- 1 and 2: createTask is never retried after an ambiguous failure ----------------------------------


def test_lost_answer_hold_times_out_and_is_not_retried(emulator: EmulatorServer) -> None:
    """Kie creates (and charges) the task, then answers after the client's read timeout."""
    set_config(
        emulator, {"faults": {"lost_answer_count": 1, "lost_answer_mode": "hold", "slow_seconds": 0.5}}
    )

    err, usage = run(create_uncertain(emulator, timeout=0.15))

    stats = emulator.emulator.snapshot()
    assert stats["created"] == 1 and stats["credits_spent"] == 18  # created and paid, exactly once
    assert stats["create_requests"] == 1 and stats["faults"] == {"lost_answer": 1}
    assert err.reason == "ReadTimeout" and err.code is None and not err.retryable
    assert isinstance(err, KieError)
    assert "may have created the task" in str(err) and "not create it again blindly" in str(err)
    assert emulator.config.api_key not in str(err) + repr(err)
    assert usage.retries == 0 and usage.uncertain_creates == 1 and usage.tasks_created == 0


def test_lost_answer_drop_after_a_500_is_not_retried(emulator: EmulatorServer) -> None:
    """A 500 proves no task was made (retried); the connection then drops after the task exists."""
    set_config(emulator, {"faults": {"force_code": 500, "force_count": 1}})
    set_config(emulator, {"faults": {"lost_answer": 1.0, "lost_answer_mode": "drop"}})

    err, usage = run(create_uncertain(emulator))

    stats = emulator.emulator.snapshot()
    assert stats["faults"] == {"code_500": 1, "lost_answer": 1}
    assert stats["created"] == 1 and stats["create_requests"] == 1  # the 500 struck before the handler
    assert usage.retries == 1  # the 500, and only the 500
    # The emulator hangs up without a response (ReadError if the close arrives as a reset).
    assert err.reason in ("RemoteProtocolError", "ReadError")
    assert usage.uncertain_creates == 1


def test_lost_answer_drop_hangs_up_without_a_single_byte(emulator: EmulatorServer) -> None:
    emulator.config.faults.lost_answer_count = 1
    body = json.dumps({"model": MODEL, "input": PROMPT}).encode()
    head = (
        f"POST /api/v1/jobs/createTask HTTP/1.1\r\nHost: {emulator.host}\r\n"
        f"Authorization: Bearer {emulator.config.api_key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((emulator.host, emulator.port), timeout=5) as conn:
        conn.sendall(head + body)
        answer = conn.recv(1024)
    assert answer == b""  # closed with no status line: the client cannot know the task exists
    assert emulator.emulator.snapshot()["created"] == 1


def test_lost_answer_strikes_only_when_a_task_was_created(emulator: EmulatorServer) -> None:
    """A createTask refused by Kie (here 402) keeps its answer and does not use up the lost-answer count."""
    emulator.config.balance = 10
    emulator.config.faults.lost_answer_count = 1

    async def go():
        async with make_client(emulator) as client:
            with pytest.raises(KieError) as refused:
                await client.create_task(MODEL, PROMPT)
            emulator.config.balance = 1000
            with pytest.raises(KieCreateUncertainError):
                await client.create_task(MODEL, PROMPT)
            return refused.value, await client.create_task(MODEL, PROMPT)

    refused, task_id = run(go())
    assert refused.code == 402 and task_id
    stats = emulator.emulator.snapshot()
    assert stats["created"] == 2 and stats["faults"] == {"lost_answer": 1}


def test_lost_answer_settings_are_checked(emulator: EmulatorServer) -> None:
    bad = httpx.post(f"{emulator.url}/emulator/config", json={"faults": {"lost_answer_mode": "x"}}, timeout=5)
    assert bad.status_code == 400 and emulator.config.faults.lost_answer_mode == "drop"
    bad = httpx.post(f"{emulator.url}/emulator/config", json={"results_per_task": 0}, timeout=5)
    assert bad.status_code == 400 and emulator.config.results_per_task == 1


@pytest.mark.parametrize("style", ["http", "body"])
@pytest.mark.parametrize("code", [429, 455, 500])
def test_create_task_is_retried_after_an_error_answer(emulator: EmulatorServer, style, code) -> None:
    """An error answer proves Kie made no task: createTask is retried and the task made exactly once."""
    emulator.config.error_style = style
    errors = 1 if code == 429 else 2  # each forced 429 says Retry-After: 1 s
    emulator.config.faults.force_code = code
    emulator.config.faults.force_count = errors

    async def go():
        async with make_client(emulator) as client:
            return await client.create_task(MODEL, PROMPT), client.usage

    task_id, usage = run(go())
    stats = emulator.emulator.snapshot()
    assert task_id in emulator.emulator.tasks
    assert stats["created"] == 1 and stats["faults"] == {f"code_{code}": errors}
    assert usage.retries == errors and usage.tasks_created == 1 and usage.uncertain_creates == 0


def test_create_task_is_retried_when_the_connection_is_refused() -> None:
    """Nothing listens on the port: the request never left, so resending is safe."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before use: connections are refused

    closed = SimpleNamespace(url=f"http://127.0.0.1:{port}", config=SimpleNamespace(api_key="emulator-key"))

    async def go():
        async with make_client(closed, retry=FAST_RETRY.model_copy(update={"max_attempts": 3})) as client:  # type: ignore[arg-type]
            with pytest.raises(KieTransportError) as info:
                await client.create_task(MODEL, PROMPT)
            return info.value, client.usage

    err, usage = run(go())
    assert not isinstance(err, KieCreateUncertainError) and "ConnectError" in str(err)
    assert usage.retries == 2 and usage.uncertain_creates == 0


def test_create_answers_are_classified_in_one_place() -> None:
    """The mapping of ambiguous answers, without a server (every case the emulator cannot produce)."""
    request = httpx.Request("POST", "https://api.kie.ai/api/v1/jobs/createTask")

    def answer(status: int, content: bytes) -> httpx.Response:
        return httpx.Response(status, content=content, request=request)

    # Errors that prove nothing was sent stay retryable; the rest are uncertain for createTask only.
    for exc, uncertain in (
        (httpx.ConnectError("x"), False),
        (httpx.ConnectTimeout("x"), False),
        (httpx.PoolTimeout("x"), False),
        (httpx.ReadTimeout("x"), True),
        (httpx.WriteTimeout("x"), True),
        (httpx.WriteError("x"), True),
        (httpx.ReadError("x"), True),
        (httpx.RemoteProtocolError("x"), True),
    ):
        err = transport_error(exc, "createTask", idempotent=False)
        assert isinstance(err, KieCreateUncertainError) is uncertain, exc
        assert err.retryable is not uncertain
        if isinstance(err, KieCreateUncertainError):
            assert err.reason == type(exc).__name__
        assert type(transport_error(exc, "recordInfo")) is KieTransportError  # polls: as before

    for response, reason in (
        (answer(200, b'{"code": 200, "msg": "succ'), "unreadable HTTP 200 answer"),
        (answer(200, b'{"code": "ok", "data": {"taskId": "t"}}'), "non-numeric code 'ok'"),
        (answer(504, b"<html>Gateway Timeout</html>"), "HTTP 504 from a gateway"),
        (answer(524, b"<html>A timeout occurred</html>"), "HTTP 524 from a gateway"),
    ):
        with pytest.raises(KieCreateUncertainError) as info:
            unwrap_response(response, "createTask", idempotent=False)
        assert info.value.reason == reason
        with pytest.raises(KieError) as plain:
            unwrap_response(response, "recordInfo")
        assert plain.value.retryable  # the same answers to a poll are retried
    with pytest.raises(KieCreateUncertainError) as info:
        created_task_id({"taskId": ""})
    assert info.value.reason == "success without a taskId"
    # Kie's own error answers (also a 504 with Kie's JSON body) prove no task: retryable.
    for status, content in ((503, b"<html>busy</html>"), (504, b'{"code": 504, "msg": "busy"}')):
        with pytest.raises(KieError) as info:
            unwrap_response(answer(status, content), "createTask", idempotent=False)
        assert info.value.retryable and not isinstance(info.value, KieCreateUncertainError)
    assert created_task_id({"taskId": "abc"}) == "abc"


def test_cli_flags_reach_the_config() -> None:
    args = [
        "--fault-lost-answer", "0.25", "--lost-answer-mode", "hold", "--lost-answer-count", "2",
        "--results-per-task", "3", "--retention", "60", "--credits-in-record", "--chunked-files",
    ]  # fmt: skip
    _, config = config_from_args(args)
    f = config.faults
    assert (f.lost_answer, f.lost_answer_mode, f.lost_answer_count) == (0.25, "hold", 2)
    assert config.results_per_task == 3 and config.retention == 60.0
    assert config.credits_in_record and config.chunked_files
    _, default = config_from_args([])
    assert default.retention == 14 * 24 * 3600 and default.results_per_task == 1
    assert default.faults.lost_answer == 0.0 and not default.chunked_files


# -- 3: several results per task ---------------------------------------------------------------------


def test_several_result_urls_are_distinct_and_each_downloadable(emulator: EmulatorServer) -> None:
    set_config(emulator, {"results_per_task": 3})

    async def go():
        async with make_client(emulator) as client:
            record = await client.run(MODEL, PROMPT)
            direct = [await client.fetch(url) for url in record.result_urls]
            fresh = [await client.fetch(await client.get_download_url(url)) for url in record.result_urls]
            return record, direct, fresh

    record, direct, fresh = run(go())
    assert record.state is TaskState.SUCCESS and len(record.result_urls) == 3
    assert len(set(record.result_urls)) == 3
    assert len({f.sha256 for f in direct}) == 3
    assert all(f.data[:8] == b"\x89PNG\r\n\x1a\n" for f in direct)
    # A fresh link serves the same result as the URL it was made for.
    assert [f.sha256 for f in fresh] == [f.sha256 for f in direct]
    assert emulator.emulator.snapshot()["credits_spent"] == 18  # priced per task, not per image


# -- 4: retention ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["http", "body"])
def test_files_past_retention_are_gone_and_download_url_refuses(emulator: EmulatorServer, style) -> None:
    emulator.config.error_style = style

    async def go():
        async with make_client(emulator) as client:
            record = await client.run(MODEL, PROMPT)
            fresh = await client.get_download_url(record.result_urls[0])
            before = await client.fetch(fresh)
            emulator.config.retention = 0.0  # now past retention
            errors = []
            for url in (record.result_urls[0], fresh):
                with pytest.raises(KieDownloadError) as gone:
                    await client.fetch(url)
                errors.append(gone.value)
            with pytest.raises(KieNotFoundError) as refused:
                await client.get_download_url(record.result_urls[0])
            return before, errors, refused.value, client.usage

    before, errors, refused, usage = run(go())
    assert before.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert [e.status for e in errors] == [404, 404] and not any(e.retryable for e in errors)
    assert refused.code == 404 and "expired" in str(refused) and not refused.retryable
    assert usage.retries == 0
    assert emulator.emulator.snapshot()["download_url_calls"] == 2  # refused once, not retried


# -- 5: credits per task ---------------------------------------------------------------------------------


def test_callbacks_carry_credits_and_record_info_only_when_asked(
    emulator: EmulatorServer, callback_sink
) -> None:
    received = callback_sink.received

    async def go():
        async with make_client(emulator) as client:
            inp = {**PROMPT, "resolution": "4K"}
            task_id = await client.create_task(MODEL, inp, callback_url=callback_sink.url)
            plain = await client.wait(task_id)
            for _ in range(250):
                if received:
                    break
                await asyncio.sleep(0.02)
            emulator.config.credits_in_record = True
            return plain, await client.get_task(task_id), await client.get_credits()

    plain, with_credits, balance = run(go())
    callback = TaskRecord.from_api(json.loads(received[0])["data"])
    assert callback.credits == 24.0 and callback.extra["remainedCredits"] == balance
    assert plain.credits is None and "consumeCredits" not in plain.extra
    assert with_credits.credits == 24.0 and with_credits.extra["remainedCredits"] == balance


def test_task_record_reads_either_credit_key() -> None:
    base = {"taskId": "t1", "state": "success"}
    assert TaskRecord.from_api({**base, "creditsConsumed": "12.5"}).credits == 12.5
    assert TaskRecord.from_api({**base, "consumeCredits": 18}).credits == 18.0
    assert TaskRecord.from_api({**base, "consumeCredits": None, "creditsConsumed": 4}).credits == 4.0
    assert TaskRecord.from_api({**base, "consumeCredits": "n/a"}).credits is None
    assert TaskRecord.from_api(base).credits is None


def test_price_table_matches_what_the_emulator_charges(emulator: EmulatorServer) -> None:
    """The emulator keeps its own costs (an independent check of the published table)."""

    async def go():
        charged = {}
        async with make_client(emulator) as client:
            for resolution in ("1K", "2K", "4K"):
                before = await client.get_credits()
                await client.create_task(MODEL, {**PROMPT, "resolution": resolution})
                charged[resolution] = before - await client.get_credits()
        return charged

    charged = run(go())
    for resolution, credits in charged.items():
        assert estimate_credits(MODEL, {**PROMPT, "resolution": resolution}) == credits
    assert estimate_credits(MODEL, PROMPT) == charged["1K"]  # Kie's default resolution
    assert estimate_credits("no-such-model", PROMPT) is None
    assert estimate_credits(MODEL, {"resolution": "4K"}, prices={MODEL: {"4K": 30}}) == 30.0
    assert estimate_credits(MODEL, {"resolution": "2K"}, prices={MODEL: {"4K": 30}}) is None
    assert estimate_credits("google/nano-banana", {}, prices={"google/nano-banana": {"*": 3}}) == 3.0
    assert estimate_credits("flat", {}, prices={"flat": {"*": 4}}) is None  # not a known model
    assert set(PRICES[MODEL]) == {"1K", "2K", "4K"}


# -- 6: arrivals, not acceptances ------------------------------------------------------------------------


def test_arrivals_show_a_client_that_exceeds_the_limit(emulator: EmulatorServer) -> None:
    """Accepted creates never exceed the server's limit; arrivals do when the client's limit is too high."""
    emulator.config.create_limit = 20
    emulator.config.create_period = 1.0

    async def go():
        async with make_client(emulator, limits=RateLimits(create_limit=40, create_period_s=1.0)) as client:
            await asyncio.gather(*(client.create_task(MODEL, PROMPT) for _ in range(30)))
            return client.usage

    usage = run(go())
    stats = emulator.emulator.snapshot()
    assert stats["created"] == 30 and usage.rate_limited >= 1
    assert stats["max_creates_in_window"] <= 20
    assert stats["max_create_arrivals_in_window"] > 20


# -- 7: the streaming size cap ------------------------------------------------------------------------------


def test_chunked_download_is_capped_while_streaming(emulator: EmulatorServer, tmp_path) -> None:
    emulator.config.chunked_files = True

    async def go():
        async with make_client(emulator) as client:
            record = await client.run(MODEL, PROMPT)
            url = record.result_urls[0]
            with pytest.raises(KieDownloadError) as info:
                await client.download(url, str(tmp_path / "capped.png"), max_bytes=100)
            whole = await client.download(url, str(tmp_path / "whole.png"))
            async with httpx.AsyncClient() as raw:
                response = await raw.get(url)
            return info.value, whole, response

    err, whole, response = run(go())
    # The file really came without Content-Length, so only the streaming check could refuse it.
    assert "content-length" not in response.headers
    assert response.headers.get("transfer-encoding") == "chunked" and len(response.content) > 100
    assert "download aborted" in str(err) and "cap of 100 bytes" in str(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["whole.png"]  # nothing written for the capped one
    assert whole.sha256 == hashlib.sha256(response.content).hexdigest()


def test_a_killed_process_does_not_hold_its_shared_limiter_slot(tmp_path) -> None:
    """A run killed with a request in flight frees its slot one period after its death is seen, not
    after STALE_AFTER (which made the rerun of a killed run wait two minutes)."""
    import signal
    import subprocess
    import sys
    import time

    from kie_pipeline.client.ratelimit import _RECHECK, STALE_AFTER, SharedSlidingWindowLimiter

    path = str(tmp_path / "kie.window")
    holder = (
        "import asyncio, sys\n"
        "from kie_pipeline.client.ratelimit import SharedSlidingWindowLimiter\n"
        "async def main():\n"
        f"    async with SharedSlidingWindowLimiter({path!r}, 1, 0.2).slot():\n"
        "        print('in flight', flush=True)\n"
        "        await asyncio.sleep(3600)\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "in flight"
        limiter = SharedSlidingWindowLimiter(path, 1, 0.2)
        assert limiter._update("probe-1") == _RECHECK  # a live request in flight holds the slot
    finally:
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    wait = limiter._update("probe-2")
    assert wait == pytest.approx(0.2, abs=1e-3) and STALE_AFTER > 1  # one period from now, no more
    (line,) = (tmp_path / "kie.window").read_text().split()
    assert line.split(",")[2] == "1"  # the dead process's request now counts as answered
    time.sleep(wait)
    assert limiter._update("probe-3") is None  # and the slot is free again


def _answer(status: int, body: object = None, *, text: str | None = None, headers=None) -> httpx.Response:
    content = text if text is not None else json.dumps(body)
    return httpx.Response(status, content=content.encode(), headers=headers)


@pytest.mark.parametrize("idempotent", [True, False])
def test_unwrap_response_edges(idempotent) -> None:
    """The edges of the one status-to-error map that mutation testing found unchecked."""
    from kie_pipeline.client import KieBadRequestError, KieRateLimitError, KieServerError

    # HTTP 400 itself is an error, whatever the body.
    with pytest.raises(KieBadRequestError):
        unwrap_response(_answer(400, text="<html>bad</html>"), "recordInfo", idempotent=idempotent)
    # A body code of 400 under an HTTP 5xx is Kie's own verdict: a bad request, not a server error.
    with pytest.raises(KieBadRequestError):
        unwrap_response(_answer(502, {"code": 400, "msg": "x"}), "recordInfo", idempotent=idempotent)
    with pytest.raises(KieServerError):
        unwrap_response(_answer(500, {"code": 200, "msg": "x"}), "recordInfo", idempotent=idempotent)
    # Kie's own message reaches the error ("msg", or "message" when that is all there is), with the endpoint.
    for body in ({"code": 500, "msg": "upstream down"}, {"message": "upstream down"}):
        with pytest.raises(KieServerError) as info:
            unwrap_response(_answer(500, body), "recordInfo", idempotent=idempotent)
        assert "upstream down" in str(info.value) and "recordInfo" in str(info.value)
    with pytest.raises(KieServerError) as info:
        unwrap_response(_answer(200, {"code": 500, "msg": "busy"}), "recordInfo", idempotent=idempotent)
    assert "busy" in str(info.value) and "recordInfo" in str(info.value)
    # Retry-After is honoured whether the 429 is an HTTP status or a body code.
    for status, body in ((429, {"code": 429}), (200, {"code": 429, "msg": "slow down"})):
        with pytest.raises(KieRateLimitError) as info:
            unwrap_response(_answer(status, body, headers={"Retry-After": "7"}), "createTask")
        assert info.value.retry_after == 7.0
    # A body without a code is a success.
    assert unwrap_response(_answer(200, {"data": {"taskId": "t1"}}), "createTask") == {"taskId": "t1"}


def test_unusable_answers_name_the_endpoint() -> None:
    for response in (_answer(200, text="not json"), _answer(200, {"code": "abc"}), _answer(504, text="gw")):
        with pytest.raises(KieCreateUncertainError) as info:
            unwrap_response(response, "createTask", idempotent=False)
        assert "createTask" in str(info.value) and "None" not in str(info.value)
    for response in (_answer(200, text="not json"), _answer(200, {"code": "abc"})):
        with pytest.raises(KieError) as info:
            unwrap_response(response, "recordInfo")
        assert "recordInfo" in str(info.value) and info.value.retryable


class _FileHost:
    """A file host on loopback: serves ``body`` with ``ctype``, with or without Content-Length, and
    drops the connection mid-body for the first ``drops`` requests."""

    def __init__(self, body: bytes, ctype: str, *, length: bool = True, drops: int = 0) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                if length or host.drops:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if host.drops:
                    host.drops -= 1
                    self.wfile.write(body[: len(body) // 2])  # then the connection closes short
                    return
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.drops = drops
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/result.png"
        import threading

        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "streamed"])
def test_download_cap_is_inclusive_and_content_type_parameters_are_ignored(emulator, length) -> None:
    body = b"\x89PNG" + bytes(range(256)) * 40
    host = _FileHost(body, "IMAGE/PNG; charset=binary", length=length)
    try:

        async def go():
            async with make_client(emulator) as client:
                fetched = await client.fetch(host.url, max_bytes=len(body))  # exactly at the cap: fine
                with pytest.raises(KieDownloadError, match="over the cap"):
                    await client.fetch(host.url, max_bytes=len(body) - 1)
                return fetched

        fetched = run(go())
    finally:
        host.close()
    assert fetched.data == body and fetched.content_type == "image/png"
    assert fetched.sha256 == hashlib.sha256(body).hexdigest()


def test_a_download_cut_short_is_retried_and_an_html_page_is_refused(emulator) -> None:
    body = b"\x89PNG" + b"x" * 5000
    host = _FileHost(body, "image/png", drops=1)
    page = _FileHost(b"<html>expired</html>", "text/html; charset=utf-8")
    try:

        async def go():
            async with make_client(emulator) as client:
                fetched = await client.fetch(host.url)
                retries = client.usage.retries
                with pytest.raises(KieDownloadError, match="content type 'text/html'"):
                    await client.fetch(page.url)
                return fetched, retries

        fetched, retries = run(go())
    finally:
        host.close()
        page.close()
    assert fetched.data == body and retries == 1


def test_download_to_an_fsspec_url(emulator) -> None:
    import fsspec

    async def go():
        async with make_client(emulator) as client:
            record = await client.run(MODEL, PROMPT)
            return await client.download(record.result_urls[0], "memory://results/one.png")

    result = run(go())
    fs = fsspec.filesystem("memory")
    data = fs.cat_file("/results/one.png")
    assert result.path == "memory://results/one.png" and result.bytes == len(data) > 0
    assert result.sha256 == hashlib.sha256(data).hexdigest()


def test_shared_limiter_window_file_edges(tmp_path) -> None:
    """What another process (or an older version, or a previous boot) may have left in the window."""
    import os
    import time

    from kie_pipeline.client.ratelimit import _RECHECK, STALE_AFTER, SharedSlidingWindowLimiter

    for limit, period in ((0, 1.0), (1, 0.0)):
        with pytest.raises(ValueError, match="limit must be"):
            SharedSlidingWindowLimiter(str(tmp_path / "bad.window"), limit, period)
    me, now = os.getpid(), time.monotonic()
    cases = {
        # A live request in flight behind a garbage line and an entry from a previous boot still counts.
        f"garbage\nfuture,{now + 1000:.6f},0,{me}\nlive,{now:.6f},0,{me}": _RECHECK,
        # A line of an older version (no process) in flight counts until STALE_AFTER ...
        f"old,{now:.6f},0": _RECHECK,
        # ... and a request never answered for STALE_AFTER no longer does.
        f"stale,{now - STALE_AFTER - 1:.6f},0,{me}": None,
    }
    for n, (text, expected) in enumerate(cases.items()):
        path = tmp_path / f"w{n}.window"
        path.write_text(text)
        assert SharedSlidingWindowLimiter(str(path), 1, 0.5)._update(f"probe{n}") == expected, text
