"""The Kie client against the emulator, over real HTTP: states, errors, retries, limits, downloads."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time

import pytest

from kie_pipeline.client import (
    KieAuthError,
    KieBadRequestError,
    KieClient,
    KieCreateUncertainError,
    KieDownloadError,
    KieError,
    KieFeatureDisabledError,
    KieGenerationFailedError,
    KieInsufficientCreditsError,
    KieMaintenanceError,
    KieNotFoundError,
    KieRateLimitError,
    KieServerError,
    KieTaskTimeoutError,
    KieUpstreamTimeoutError,
    KieValidationError,
    RateLimits,
    SlidingWindowLimiter,
    TaskState,
)
from kie_pipeline.emulator import FAIL_MARKER, STUCK_MARKER, EmulatorConfig, EmulatorServer

from .conftest import FAST_POLL, FAST_RETRY, make_client

PROMPT = {"prompt": "a lighthouse on a cliff at dawn"}


def run(coro):
    return asyncio.run(coro)


def test_task_passes_through_every_state_to_success(emulator: EmulatorServer) -> None:
    emulator.config.latency = (1.0, 1.0)

    async def go():
        async with make_client(emulator) as client:
            task_id = await client.create_task("nano-banana-pro", PROMPT)
            seen = []
            while True:
                record = await client.get_task(task_id)
                if not seen or seen[-1] != record.state:
                    seen.append(record.state)
                if record.is_terminal:
                    return seen, record
                await asyncio.sleep(0.05)

    seen, record = run(go())
    assert seen == [TaskState.WAITING, TaskState.QUEUING, TaskState.GENERATING, TaskState.SUCCESS]
    # param and resultJson arrive as JSON strings and are decoded.
    assert record.param["model"] == "nano-banana-pro"
    assert record.param["input"]["prompt"] == PROMPT["prompt"]
    assert record.param["input"]["aspect_ratio"] == "1:1"  # documented default filled in
    assert len(record.result_urls) == 1 and record.result_urls[0].startswith(emulator.url)
    assert record.cost_time_ms == 1000
    assert record.create_time is not None and record.complete_time > record.create_time
    assert record.update_time == record.complete_time


def test_forced_failure_is_a_fail_record(emulator: EmulatorServer) -> None:
    async def go():
        async with make_client(emulator) as client:
            return await client.run("nano-banana-pro", {"prompt": f"a cat {FAIL_MARKER}"})

    record = run(go())
    assert record.state is TaskState.FAIL
    assert record.fail_code == "501"
    assert "fail" in record.fail_msg.lower()
    assert record.result_urls == []


def test_wait_times_out_on_a_stuck_task(emulator: EmulatorServer) -> None:
    async def go():
        async with make_client(emulator) as client:
            task_id = await client.create_task("nano-banana-pro", {"prompt": f"slow {STUCK_MARKER}"})
            with pytest.raises(KieTaskTimeoutError) as info:
                await client.wait(task_id, timeout=0.3)
            return task_id, info.value

    task_id, err = run(go())
    assert err.task_id == task_id
    assert err.last_state in ("waiting", "generating")
    assert "may still complete" in str(err)


CODES = [
    (400, KieBadRequestError, False),
    (401, KieAuthError, False),
    (402, KieInsufficientCreditsError, False),
    (404, KieNotFoundError, False),
    (408, KieUpstreamTimeoutError, True),
    (422, KieValidationError, False),
    (429, KieRateLimitError, True),
    (455, KieMaintenanceError, True),
    (500, KieServerError, True),
    (501, KieGenerationFailedError, False),
    (505, KieFeatureDisabledError, False),
]


@pytest.mark.parametrize("style", ["http", "body"])
@pytest.mark.parametrize(("code", "exc_type", "retryable"), CODES)
def test_every_error_code_in_both_styles(emulator, style, code, exc_type, retryable) -> None:
    """Each documented code maps to its typed error, whether sent as HTTP status or body code."""
    emulator.config.error_style = style
    emulator.config.faults.force_code = code
    emulator.config.faults.force_count = 100  # more than the retries: the error must surface

    async def go():
        async with make_client(emulator, retry=FAST_RETRY.model_copy(update={"max_attempts": 3})) as client:
            with pytest.raises(KieError) as info:
                await client.create_task("nano-banana-pro", PROMPT)
            return info.value, client.usage

    err, usage = run(go())
    assert type(err) is exc_type
    assert err.code == code
    stats = emulator.emulator.snapshot()
    forced = stats["faults"][f"code_{code}"]
    if retryable:
        assert forced == 3 and usage.retries == 2  # retried up to max_attempts
    else:
        # never retried; a 402 looks up the balance once (that request is forced too)
        assert forced == (2 if code == 402 else 1) and usage.retries == 0
    assert stats["created"] == 0


def test_error_messages_say_what_to_do(emulator: EmulatorServer) -> None:
    emulator.config.balance = 10  # less than one image (18 credits)

    async def go():
        async with make_client(emulator) as client:
            with pytest.raises(KieInsufficientCreditsError) as credits:
                await client.create_task("nano-banana-pro", PROMPT)
        async with make_client(emulator) as client:
            client._http.headers["Authorization"] = "Bearer wrong"
            with pytest.raises(KieAuthError) as auth:
                await client.get_credits()
        return credits.value, auth.value

    credits, auth = run(go())
    assert credits.balance == 10 and "balance: 10 credits" in str(credits) and "Top up" in str(credits)
    assert "KIE_API_KEY" in str(auth)


def test_server_side_422_names_the_field(emulator: EmulatorServer) -> None:
    async def go():
        async with make_client(emulator) as client:
            with pytest.raises(KieValidationError) as info:
                await client.create_task(
                    "nano-banana-pro", {"prompt": "x", "resolution": "8K"}, validate=False
                )
            return info.value

    err = run(go())
    assert err.field == "resolution" and err.code == 422


@pytest.mark.parametrize(
    ("inp", "field"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 10_001}, "prompt"),
        ({"prompt": "x", "image_input": [f"https://e.com/{i}.png" for i in range(9)]}, "image_input"),
        ({"prompt": "x", "image_input": ["file:///etc/passwd"]}, "image_input"),
        ({"prompt": "x", "aspect_ratio": "7:5"}, "aspect_ratio"),
        ({"prompt": "x", "resolution": "8K"}, "resolution"),
        ({"prompt": "x", "output_format": "gif"}, "output_format"),
        ({"prompt": "x", "aspectRatio": "1:1"}, "aspectRatio"),
    ],
)
def test_local_validation_refuses_before_any_request(emulator, inp, field) -> None:
    async def go():
        async with make_client(emulator) as client:
            with pytest.raises(KieValidationError) as info:
                await client.create_task("nano-banana-pro", inp)
            return info.value

    err = run(go())
    assert err.field == field
    assert emulator.emulator.snapshot()["create_requests"] == 0


def test_limits_of_the_documented_model_are_accepted(emulator: EmulatorServer) -> None:
    inp = {
        "prompt": "x" * 10_000,
        "image_input": [f"https://example.com/{i}.png" for i in range(8)],
        "aspect_ratio": "21:9",
        "resolution": "4K",
        "output_format": "jpg",
    }

    async def go():
        async with make_client(emulator) as client:
            return await client.create_task("nano-banana-pro", inp)

    assert run(go())
    assert emulator.emulator.snapshot()["credits_spent"] == 24  # 4K costs more


def test_retries_survive_500s_drops_and_malformed_json(emulator: EmulatorServer, tmp_path) -> None:
    """Polls, credit and downloads (which cannot pay twice) are retried through every kind of fault."""

    async def go():
        async with make_client(emulator, retry=FAST_RETRY.model_copy(update={"max_attempts": 12})) as client:
            ids = [await client.create_task("nano-banana-pro", PROMPT) for _ in range(20)]
            emulator.config.faults.error_500 = 0.15
            emulator.config.faults.drop = 0.1
            emulator.config.faults.malformed = 0.1
            emulator.config.faults.error_429 = 0.1
            records = await asyncio.gather(*(client.wait(t) for t in ids))
            links = [await client.get_download_url(r.result_urls[0]) for r in records[:5]]
            credits = await client.get_credits()
            return records, links, credits, client.usage

    records, links, credits, usage = run(go())
    assert all(r.state is TaskState.SUCCESS for r in records)
    assert len(links) == 5 and credits == emulator.config.balance
    stats = emulator.emulator.snapshot()
    assert set(stats["faults"]) >= {"error_500", "drop", "malformed", "error_429"}
    assert usage.retries >= sum(stats["faults"].values()) - 1
    assert stats["created"] == 20 and usage.uncertain_creates == 0


@pytest.mark.parametrize("fault", ["drop", "malformed"])
def test_create_task_is_not_retried_after_a_dropped_or_malformed_answer(emulator, fault) -> None:
    """createTask has no idempotency key: an answer lost after sending is not retried, it is uncertain.

    These faults strike before the emulator handles the request, so no task exists here; the client
    cannot know that, and must not resend (see test_money_client.py for the task-created case).
    """
    setattr(emulator.config.faults, fault, 1.0)

    async def go():
        async with make_client(emulator) as client:
            with pytest.raises(KieCreateUncertainError) as info:
                await client.create_task("nano-banana-pro", PROMPT)
            return info.value, client.usage

    err, usage = run(go())
    stats = emulator.emulator.snapshot()
    assert stats["faults"] == {fault: 1}  # exactly one request: no retry
    assert stats["created"] == 0 and usage.retries == 0
    assert usage.uncertain_creates == 1 and usage.tasks_created == 0
    # A hang-up reads as RemoteProtocolError, or as ReadError when the reset wins the race.
    dropped = {"RemoteProtocolError", "ReadError"}
    assert err.reason in (dropped if fault == "drop" else {"unreadable HTTP 200 answer"})


def test_create_task_delayed_past_the_timeout_is_uncertain_and_created_once(emulator) -> None:
    """The "slow" fault delays the request, then handles it: the task is created after the client gave up."""
    emulator.config.faults.slow = 1.0
    emulator.config.faults.slow_seconds = 0.4

    async def go():
        async with make_client(emulator, timeout=0.1) as client:
            with pytest.raises(KieCreateUncertainError) as info:
                await client.create_task("nano-banana-pro", PROMPT)
            return info.value, client.usage

    err, usage = run(go())
    assert err.reason == "ReadTimeout" and usage.retries == 0
    for _ in range(200):  # the delayed handler runs on the emulator's thread; wait for it (bounded)
        if emulator.emulator.snapshot()["created"]:
            break
        time.sleep(0.01)
    stats = emulator.emulator.snapshot()
    assert stats["created"] == 1 and stats["faults"] == {"slow": 1}


def test_429_retry_after_is_honoured(emulator: EmulatorServer) -> None:
    """The server's limit is tighter than the client's: the 429 is absorbed by waiting Retry-After."""
    emulator.config.create_limit = 2
    emulator.config.create_period = 1.0

    async def go():
        async with make_client(emulator, limits=RateLimits(create_limit=100)) as client:
            ids = [await client.create_task("nano-banana-pro", PROMPT) for _ in range(4)]
            return ids, client.usage

    ids, usage = run(go())
    assert len(set(ids)) == 4
    assert usage.rate_limited >= 1
    assert emulator.emulator.snapshot()["created"] == 4


def test_client_rate_limiter_keeps_every_window_within_the_limit(emulator: EmulatorServer) -> None:
    emulator.config.create_limit = 5
    emulator.config.create_period = 0.5

    async def go():
        async with make_client(emulator, limits=RateLimits(create_limit=5, create_period_s=0.5)) as client:
            await asyncio.gather(*(client.create_task("nano-banana-pro", PROMPT) for _ in range(17)))
            return client.usage

    usage = run(go())
    stats = emulator.emulator.snapshot()
    assert stats["created"] == 17
    assert stats["rate_limited"] == {} and usage.rate_limited == 0
    # Arrivals, not acceptances: the server saw no more than the limit in any window.
    assert stats["max_create_arrivals_in_window"] <= 5
    assert stats["max_creates_in_window"] <= 5


def test_sliding_window_never_exceeds_limit_in_any_window() -> None:
    limiter = SlidingWindowLimiter(4, 0.2)
    stamps: list[float] = []

    async def one():
        await limiter.acquire()
        stamps.append(time.monotonic())

    async def go():
        await asyncio.gather(*(one() for _ in range(14)))

    run(go())
    stamps.sort()
    # any 5 consecutive acquisitions span at least one full window
    assert all(stamps[i + 4] - stamps[i] >= 0.2 for i in range(len(stamps) - 4))


def test_download_to_file_with_sha256_and_fresh_links(emulator: EmulatorServer, tmp_path) -> None:
    async def go():
        async with make_client(emulator) as client:
            record = await client.run("nano-banana-pro", {**PROMPT, "output_format": "jpg"})
            result = await client.download(record.result_urls[0], str(tmp_path / "a" / "img.jpg"))
            fresh = await client.get_download_url(record.result_urls[0])
            again = await client.download(fresh, str(tmp_path / "b.jpg"))
            with pytest.raises(KieValidationError):
                await client.get_download_url("https://example.com/not-kie.png")
            return result, again

    result, again = run(go())
    data = (tmp_path / "a" / "img.jpg").read_bytes()
    assert result.bytes == len(data) and result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.content_type == "image/jpeg" and data[:2] == b"\xff\xd8"
    assert again.sha256 == result.sha256  # deterministic rendering per task
    assert not [p for p in tmp_path.rglob("*.part")]
    # the API key is never sent to the file host
    assert emulator.emulator.snapshot()["downloads_with_auth"] == 0


def test_expired_result_url_is_404_and_download_url_recovers(emulator: EmulatorServer, tmp_path) -> None:
    emulator.config.result_url_ttl = 0.0

    async def go():
        async with make_client(emulator) as client:
            record = await client.run("nano-banana-pro", PROMPT)
            with pytest.raises(KieDownloadError) as info:
                await client.fetch(record.result_urls[0])
            fresh = await client.get_download_url(record.result_urls[0])
            return info.value, await client.fetch(fresh)

    err, fetched = run(go())
    assert err.status == 404 and not err.retryable
    assert fetched.data[:8] == b"\x89PNG\r\n\x1a\n"


def test_download_refuses_oversize_non_http_and_non_images(emulator: EmulatorServer, tmp_path) -> None:
    async def go():
        async with make_client(emulator) as client:
            record = await client.run("nano-banana-pro", PROMPT)
            url = record.result_urls[0]
            errors = []
            for target, kwargs in (
                (url, {"max_bytes": 100}),
                ("file:///etc/passwd", {}),
                (f"{emulator.url}/emulator/stats", {}),  # JSON, not an image
            ):
                with pytest.raises(KieDownloadError) as info:
                    await client.download(target, str(tmp_path / "x.png"), **kwargs)
                errors.append(str(info.value))
            return errors

    oversize, scheme, ctype = run(go())
    assert "cap of 100 bytes" in oversize
    assert "only http(s)" in scheme
    assert "content type" in ctype
    assert not (tmp_path / "x.png").exists()


def test_credits_and_the_sync_facade(emulator: EmulatorServer, tmp_path) -> None:
    with KieClient(emulator.config.api_key, emulator.url, poll=FAST_POLL) as client:
        before = client.get_credits()
        record = client.run("nano-banana-pro", PROMPT)
        result = client.download(record.result_urls[0], str(tmp_path / "s.png"))
        after = client.get_credits()
        assert client.usage.tasks_created == 1
    assert before - after == 18
    assert result.bytes == (tmp_path / "s.png").stat().st_size


def test_download_hands_the_bytes_to_the_writer_it_is_given(emulator: EmulatorServer, tmp_path) -> None:
    """The client fetches; writing belongs to whoever it is given (the store's atomic write by default)."""
    written: dict[str, bytes] = {}

    async def go():
        async with make_client(emulator) as client:
            record = await client.run("nano-banana-pro", PROMPT)
            return await client.download(record.result_urls[0], "dest://a", write=written.__setitem__)

    result = run(go())
    with KieClient(emulator.config.api_key, emulator.url, poll=FAST_POLL) as client:
        record = client.run("nano-banana-pro", PROMPT)
        again = client.download(record.result_urls[0], "dest://b", write=written.__setitem__)
    assert sorted(written) == ["dest://a", "dest://b"] and not list(tmp_path.iterdir())
    assert result.path == "dest://a" and result.sha256 == hashlib.sha256(written["dest://a"]).hexdigest()
    assert again.bytes == len(written["dest://b"]) > 0


def test_callback_url_receives_the_final_record(emulator: EmulatorServer, callback_sink) -> None:
    received = callback_sink.received

    async def go():
        async with make_client(emulator) as client:
            task_id = await client.create_task("nano-banana-pro", PROMPT, callback_url=callback_sink.url)
            record = await client.wait(task_id)
            for _ in range(100):
                if received:
                    break
                await asyncio.sleep(0.02)
            return task_id, record

    task_id, record = run(go())
    import json

    from kie_pipeline.client import TaskRecord

    body = json.loads(received[0])
    assert body["code"] == 200
    callback = TaskRecord.from_api(body["data"])
    assert callback.task_id == task_id and callback.state is TaskState.SUCCESS
    assert callback.param["callBackUrl"].endswith("/cb")  # param holds the whole request
    assert callback.result_urls == record.result_urls


def test_api_key_never_in_reprs_errors_or_logs(caplog, tmp_path) -> None:
    secret = "sk-SECRET-" + os.urandom(6).hex()
    caplog.set_level(logging.DEBUG)
    with EmulatorServer(EmulatorConfig(api_key=secret, render_scale=1 / 16, latency=(0.01, 0.05))) as server:
        server.config.faults.error_500 = 0.3

        async def go():
            texts = []
            async with make_client(server) as client:
                texts.append(repr(client))
                record = await client.run("nano-banana-pro", PROMPT)
                await client.download(record.result_urls[0], str(tmp_path / "k.png"))
                server.config.faults.error_500 = 0.0
                server.config.faults.force_code, server.config.faults.force_count = 401, 1
                try:
                    await client.get_credits()
                except KieError as exc:
                    texts += [str(exc), repr(exc), str(exc.__cause__), str(exc.__context__)]
            return texts

        texts = run(go())
    with KieClient(secret, "http://127.0.0.1:9") as sync_client:
        texts.append(repr(sync_client))
    from kie_pipeline.resources import KieResource

    texts.append(repr(KieResource(api_key=secret)))
    everything = "\n".join(texts) + caplog.text
    assert "HTTP Request" in caplog.text  # httpx did log its requests
    assert secret not in everything


def test_client_and_emulator_modules_import_no_dagster() -> None:
    """The client layer (and the emulator) stay usable from any orchestrator: in a fresh interpreter,
    importing them loads no Dagster (also not through a parent package or an indirect import)."""
    import subprocess
    import sys

    code = (
        "import sys, kie_pipeline.client, kie_pipeline.emulator; "
        "print(sorted(m for m in sys.modules if m.split('.')[0].startswith('dagster')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_each_retry_is_logged_with_what_why_and_how_long(emulator, caplog) -> None:
    caplog.set_level(logging.INFO, logger="kie_pipeline.client")
    emulator.config.faults.force_code, emulator.config.faults.force_count = 500, 2

    async def go():
        async with make_client(emulator, retry=FAST_RETRY.model_copy(update={"max_attempts": 3})) as client:
            await client.create_task("nano-banana-pro", PROMPT)
            return client.usage.retries

    assert run(go()) == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "kie_pipeline.client"]
    assert len(lines) == 2
    for n, line in enumerate(lines, 1):
        assert line.startswith("Kie createTask failed (KieServerError") and f"retry {n} of 2 in " in line
        assert emulator.config.api_key not in line
