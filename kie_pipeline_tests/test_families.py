"""Kie's API families beyond the jobs API (4o Image, Flux Kontext): the emulator's documented states,
records and callbacks, the client's create/status through each family, both error styles, and rows
of these models through generation with callbacks."""

from __future__ import annotations

import asyncio
import functools
import json

import httpx
import pandas as pd
import pytest

from kie_pipeline.client import (
    MODELS,
    KieInsufficientCreditsError,
    KieServerError,
    KieValidationError,
    PollPolicy,
    RetryPolicy,
    TaskState,
    get_model,
)
from kie_pipeline.client.registry import ALEPH
from kie_pipeline.emulator import FAIL_MARKER, EmulatorServer
from kie_pipeline.emulator.families import FAMILY_ANSWERS
from kie_pipeline.emulator.state import Emulator
from kie_pipeline.pipeline.callbacks import CallbackSettings, decode, sign, task_id_of
from kie_pipeline.pipeline.generation import generate_batch
from kie_pipeline.pipeline.manifest import validate_manifest
from kie_pipeline.pipeline.store import TaskStore
from kie_pipeline.receiver import ReceiverServer, build_receiver

from .conftest import CallbackSink, make_client

#: Every registered model of a family with its own (flat) body, and a valid input of each.
FAMILY_MODELS = sorted(m for m, spec in MODELS.items() if spec.family.flat)
INPUTS = {
    "gpt4o-image": {"size": "3:2", "prompt": "a lighthouse", "nVariants": 4},
    "flux-kontext-pro": {"prompt": "a lighthouse", "aspectRatio": "4:3"},
    "flux-kontext-max": {"prompt": "a lighthouse", "outputFormat": "png"},
    **{m: {"prompt": "a lighthouse", "instrumental": True} for m in MODELS if m.startswith("suno/")},
    "veo3": {"prompt": "a lighthouse", "aspect_ratio": "9:16"},
    "veo3_fast": {"prompt": "a lighthouse", "imageUrls": ["https://example.com/a.png"]},
    "veo3_lite": {"prompt": "a lighthouse", "aspectRatio": "16:9", "resolution": "1080p"},
    "runway": {"prompt": "a lighthouse", "duration": 10, "quality": "720p", "aspectRatio": "4:3"},
    "runway-aleph": {"prompt": "a lighthouse", "videoUrl": "https://example.com/in.mp4"},
}
#: Results per successful task of each input above.
RESULTS = (
    {"gpt4o-image": 4, "flux-kontext-pro": 1, "flux-kontext-max": 1}
    | {m: 2 for m in MODELS if m.startswith("suno/")}
    | {"veo3": 1, "veo3_fast": 1, "veo3_lite": 1, "runway": 1, "runway-aleph": 1}
)
#: The keys each family's status ``data`` has (kie-models.md sections 1 and 2).
RECORD_KEYS = {
    "4o-image": {"taskId", "paramJson", "completeTime", "response", "successFlag", "status", "errorCode",
                 "errorMessage", "createTime", "progress"},
    "flux-kontext": {"taskId", "paramJson", "completeTime", "createTime", "response", "successFlag",
                     "errorCode", "errorMessage"},
    "suno": {"taskId", "parentMusicId", "param", "response", "status", "type", "operationType", "errorCode",
             "errorMessage"},
    "veo": {"taskId", "paramJson", "completeTime", "createTime", "response", "successFlag", "errorCode",
            "errorMessage", "fallbackFlag"},
    "runway": {"taskId", "parentTaskId", "generateParam", "state", "generateTime", "videoInfo", "failCode",
               "failMsg", "expireFlag"},
    "runway-aleph": {"taskId", "paramJson", "response", "completeTime", "createTime", "successFlag",
                     "errorCode", "errorMessage"},
}  # fmt: skip
#: What each family's record says at a fraction of the task's time (see Task.state_at):
#: (successFlag, status), None where the family has no such field, for a success and a failure.
TIMELINE = {
    "4o-image": {
        "success": [(0, "GENERATING"), (0, "GENERATING"), (0, "GENERATING"), (1, "SUCCESS")],
        "fail": [(0, "GENERATING"), (0, "GENERATING"), (0, "GENERATING"), (2, "GENERATE_FAILED")],
    },
    "flux-kontext": {
        "success": [(0, None), (0, None), (0, None), (1, None)],
        "fail": [(0, None)] * 3 + [(3, None)],
    },
    "suno": {
        "success": [(None, "PENDING"), (None, "TEXT_SUCCESS"), (None, "FIRST_SUCCESS"), (None, "SUCCESS")],
        "fail": [(None, "PENDING"), (None, "TEXT_SUCCESS"), (None, "FIRST_SUCCESS"),
                 (None, "GENERATE_AUDIO_FAILED")],
    },
    "veo": {"success": [(0, None)] * 3 + [(1, None)], "fail": [(0, None)] * 3 + [(3, None)]},
    "runway": {
        "success": [(None, "wait"), (None, "queueing"), (None, "generating"), (None, "success")],
        "fail": [(None, "wait"), (None, "queueing"), (None, "generating"), (None, "fail")],
    },
    # Aleph: 0 while running and 0 on failure (told apart by errorMessage).
    "runway-aleph": {"success": [(0, None)] * 3 + [(1, None)], "fail": [(0, None)] * 4},
}  # fmt: skip
#: Each family's callback keys (kie-models.md section 8): the data object's, and where the task id is.
CALLBACK_DATA_KEYS = {
    "4o-image": {"taskId", "info"},
    "flux-kontext": {"taskId", "info"},
    "suno": {"callbackType", "task_id", "data"},
    "veo": {"taskId", "info", "fallbackFlag"},  # a failure has no info
    "runway": {"task_id", "video_id", "video_url", "image_url"},
    "runway-aleph": {"result_video_url", "result_image_url"},  # the task id is at the top
}
#: The image models among them (the named aspect_ratio column is theirs).
IMAGE = {m for m in FAMILY_MODELS if MODELS[m].media == "image"}
FRACTIONS = (0.0, 0.2, 0.5, 1.0)  # waiting, queuing, generating, done


def test_every_family_model_has_test_inputs() -> None:
    assert set(INPUTS) == set(FAMILY_MODELS) and set(FAMILY_ANSWERS) == {
        MODELS[m].family.name for m in FAMILY_MODELS
    }


def _task(emu: Emulator, model: str, *, fail: bool):
    spec = get_model(model)
    inp = {**INPUTS[model], "prompt": "x " + (FAIL_MARKER if fail else "")}
    task = emu.create({"model": model, "input": spec.validate(inp)})
    task.family, task.body = spec.family.name, spec.family.body(model, inp)
    return task


@pytest.mark.parametrize("outcome", ["success", "fail"])
@pytest.mark.parametrize("model", FAMILY_MODELS)
def test_the_emulator_reports_each_state_as_the_family_documents(model, outcome) -> None:
    """The task's timeline read at fixed instants (no clock): each family's own status values, decoded
    by the client's family decoder onto the five task states."""
    emu = Emulator()
    emu.config.latency = (10.0, 10.0)
    task = _task(emu, model, fail=outcome == "fail")
    family = get_model(model).family
    record, _ = FAMILY_ANSWERS[family.name]
    seen = []
    for fraction, (flag, status) in zip(FRACTIONS, TIMELINE[family.name][outcome], strict=True):
        data = record(emu, task, "http://emu", task.created_mono + fraction * task.duration)
        assert set(data) == RECORD_KEYS[family.name]
        # Runway's word is "state"; the others say "status" or only successFlag.
        assert data.get("successFlag") == flag and data.get("status", data.get("state")) == status
        if family.name == "runway":
            assert data["generateParam"]["prompt"] == task.body["prompt"]
        else:
            assert json.loads(data.get("paramJson") or data["param"]) == task.body
        decoded = family.decode(data)
        seen.append(decoded.state)
        assert decoded.is_terminal == (fraction == 1.0)
    assert seen[-1] is TaskState(outcome)
    final = family.decode(record(emu, task, "http://emu", task.completed_at()))
    assert len(final.result_urls) == (RESULTS[model] if outcome == "success" else 0)
    if outcome == "fail":
        assert final.fail_code in ("400", "500", "501") and "fail marker" in (final.fail_msg or "")


@pytest.mark.parametrize("outcome", ["success", "fail"])
@pytest.mark.parametrize("model", FAMILY_MODELS)
def test_client_creates_and_waits_through_the_family_endpoints(
    emulator: EmulatorServer, callback_sink: CallbackSink, model, outcome
) -> None:
    prompt = "a lighthouse " + (FAIL_MARKER if outcome == "fail" else "")
    # Suno's schema requires callBackUrl; the others may go without (polling alone).
    callback = callback_sink.url if get_model(model).family.callback_required else None

    async def go():
        async with make_client(emulator) as client:
            inp = {**INPUTS[model], "prompt": prompt}
            task_id = await client.create_task(model, inp, callback_url=callback)
            final = await client.wait(task_id, model=model)
            media = get_model(model).media
            sizes = [len((await client.fetch(u, media=media)).data) for u in final.result_urls]
            return task_id, final, sizes

    task_id, final, sizes = asyncio.run(go())
    assert final.task_id == task_id and final.state is TaskState(outcome)
    assert len(final.result_urls) == len(sizes) == (RESULTS[model] if outcome == "success" else 0)
    assert all(sizes)
    task = emulator.emulator.tasks[task_id]
    assert task.model == model and task.family == get_model(model).family.name
    # The flat body as sent: Kie's model value where the family names one (suno/V5 is "V5").
    family = get_model(model).family
    assert task.body == family.body(model, get_model(model).validate(inp_of(model, outcome)), callback)


def inp_of(model: str, outcome: str) -> dict:
    return {**INPUTS[model], "prompt": "a lighthouse " + (FAIL_MARKER if outcome == "fail" else "")}


@pytest.mark.parametrize("model", FAMILY_MODELS)
def test_the_raw_endpoints_follow_the_documents(emulator: EmulatorServer, model) -> None:
    family = get_model(model).family
    headers = {"Authorization": f"Bearer {emulator.config.api_key}"}
    with httpx.Client(base_url=emulator.url, headers=headers) as http:
        if family.callback_required:  # Suno: the schema lists callBackUrl as required
            refused = http.post(family.create_path, json=family.body(model, INPUTS[model]))
            assert refused.status_code == 422 and "callBackUrl" in refused.json()["msg"]
        body = family.body(model, INPUTS[model], "http://127.0.0.1:9/never-answers")
        created = http.post(family.create_path, json=body).json()
        assert created["code"] == 200 and created["msg"] == "success"
        task_id = created["data"]["taskId"]
        data = http.get(family.status_path, params={"taskId": task_id}).json()["data"]
        assert set(data) == RECORD_KEYS[family.name] and data["taskId"] == task_id
        # A task is known only at its own family's status endpoint; the jobs API does not know it.
        assert http.get("/api/v1/jobs/recordInfo", params={"taskId": task_id}).status_code == 404
        # A jobs body at a flat family's endpoint is refused (its fields are not the family's).
        jobs_shaped = {"model": model, "input": INPUTS[model], "callBackUrl": "http://127.0.0.1:9/x"}
        assert http.post(family.create_path, json=jobs_shaped).status_code == 422
        assert http.post(family.create_path, content=b"{").status_code == 400


async def create_with_callback(
    client, input, *, model: str, sink: CallbackSink, validate: bool = True
) -> str:
    """create_task with a callback URL where the family requires one (Suno)."""
    callback = sink.url if get_model(model).family.callback_required else None
    return await client.create_task(model, input, callback_url=callback, validate=validate)


@pytest.mark.parametrize("style", ["http", "body"])
@pytest.mark.parametrize("model", FAMILY_MODELS)
def test_errors_in_both_styles(emulator: EmulatorServer, callback_sink: CallbackSink, model, style) -> None:
    """Kie reports errors as HTTP statuses or in the body's code: the client types them the same."""
    emulator.config.error_style = style
    emu = emulator.emulator
    create = functools.partial(create_with_callback, model=model, sink=callback_sink)

    async def go():
        # Short backoffs: the test policy's took ~0.7 s per case here, and no timing is checked.
        async with make_client(
            emulator, retry=RetryPolicy(backoff_initial_s=0.001, backoff_max_s=0.005)
        ) as client:
            # 550 (4o: queue full) is a refusal: retried, then the task is created once.
            emu.config.faults.force_code, emu.config.faults.force_count = 550, 1
            task_id = await create(client, INPUTS[model])
            await client.wait(task_id, model=model)
            emu.config.faults.force_code, emu.config.faults.force_count = 550, 10
            with pytest.raises(KieServerError) as server:
                await create(client, INPUTS[model])
            emu.config.faults.force_count = 0
            with pytest.raises(KieValidationError) as invalid:
                await create(client, {"prompt": "x", "nope": 1}, validate=False)
            emu.config.balance = 0
            with pytest.raises(KieInsufficientCreditsError):
                await create(client, INPUTS[model])
            return server.value, invalid.value

    server, invalid = asyncio.run(go())
    assert server.code == 550 and invalid.code == 422
    assert emu.snapshot()["created"] == 1


@pytest.mark.parametrize("outcome", ["success", "fail"])
@pytest.mark.parametrize("model", FAMILY_MODELS)
def test_callbacks_have_the_family_shape_and_decode(
    emulator: EmulatorServer, callback_sink: CallbackSink, model, outcome
) -> None:
    emulator.config.webhook_key = "k"
    prompt = "a lighthouse " + (FAIL_MARKER if outcome == "fail" else "")

    async def go():
        async with make_client(emulator) as client:
            inp = {**INPUTS[model], "prompt": prompt}
            task_id = await client.create_task(model, inp, callback_url=callback_sink.url)
            final = await client.wait(task_id, model=model)
            # Suno sends three callbacks on success (text, first, complete): wait for all of them.
            expected = 3 if family.name == "suno" and outcome == "success" else 1
            while len(callback_sink.received) < expected:
                await asyncio.sleep(0.02)
            return final

    family = get_model(model).family
    final = asyncio.run(go())
    payloads = [json.loads(body) for body in callback_sink.received]
    records = [decode(payload, model) for payload in payloads]
    for payload in payloads:
        assert set(payload) == {"code", "msg", "data"} | ({"taskId"} if family is ALEPH else set())
        assert set(payload["data"] or {}) <= CALLBACK_DATA_KEYS[family.name]
        assert task_id_of(payload) == final.task_id
    # Only the last callback ends the task; it carries what the status endpoint says.
    assert [r.is_terminal for r in records] == [False] * (len(records) - 1) + [True]
    assert records[-1].state is final.state and records[-1].result_urls == final.result_urls
    assert (payloads[-1]["code"] == 200) == (outcome == "success")


#: Fields a manifest row of these models must give in its input column (required, no defaults).
ROW_INPUTS = {
    "runway": {"duration": 5, "quality": "720p", "aspectRatio": "16:9"},
    "runway-aleph": {"videoUrl": "https://example.com/in.mp4"},
}
SECRET = "family-secret"
WEBHOOK_KEY = "family-webhook-key"


def test_rows_of_every_family_finish_by_their_callbacks(emulator: EmulatorServer, tmp_path) -> None:
    """A batch mixing nano-banana-pro with every family's models ends by callbacks alone (no status
    call): the receiver stores each family's payload, the waiter reads it through the row's model."""
    emulator.config.webhook_key = WEBHOOK_KEY
    store = TaskStore(str(tmp_path / "store"))
    rows = [{"id": "jobs", "prompt": "a jobs row"}]
    rows += [
        {
            "id": f"f{i}",
            "model": m,
            "prompt": f"row of {m}",
            **({"aspect_ratio": "1:1"} if m in IMAGE else {}),
            # Runway and Aleph fields that are required without a default (see ROW_INPUTS).
            **({"input": json.dumps(ROW_INPUTS[m])} if m in ROW_INPUTS else {}),
        }
        for i, m in enumerate(FAMILY_MODELS)
    ]
    manifest = validate_manifest(pd.DataFrame(rows))
    with ReceiverServer(build_receiver(store, secret=SECRET, webhook_key=WEBHOOK_KEY)) as receiver:

        async def go():
            poll = PollPolicy(initial_s=0.02, max_s=0.1, callback_fallback_s=60)
            async with make_client(emulator, poll=poll) as client:
                out, summary = await generate_batch(
                    client,
                    store,
                    manifest,
                    callbacks=CallbackSettings(receiver.url, SECRET),
                    progress_interval=60,
                )
                return out, summary, client.usage

        out, summary, usage = asyncio.run(go())
    assert summary.succeeded == len(rows) and (out["state"] == "success").all()
    # Every result, several per task where the family gives several (Suno's two tracks).
    assert len(out) == 1 + sum(1 if m in IMAGE else RESULTS[m] for m in FAMILY_MODELS)
    assert usage.polls == 0
    assert set(out["model"]) == {"nano-banana-pro", *FAMILY_MODELS}


def test_a_signed_family_callback_names_its_task(emulator: EmulatorServer) -> None:
    """The signature covers the task id wherever the family puts it (here data.taskId)."""
    payload = {
        "code": 200,
        "msg": "success",
        "data": {"taskId": "t1", "info": {"result_urls": ["https://x/1.png"]}},
    }
    assert task_id_of(payload) == "t1" and sign("k", "t1", 1) == sign("k", task_id_of(payload) or "", 1)
    aleph = {"code": 200, "msg": "success", "taskId": "t2", "data": {"result_video_url": "https://x/v.mp4"}}
    runway = {"code": 200, "msg": "All generated successfully.", "data": {"task_id": "t3", "video_url": "u"}}
    assert task_id_of(aleph) == "t2" and task_id_of(runway) == "t3"


def test_veo_1080p_is_retrieved_after_success(emulator: EmulatorServer) -> None:
    """get-1080p-video answers 422 ("record status is not success") until the task succeeds."""

    async def go():
        async with make_client(emulator) as client:
            stuck = await client.create_task("veo3_fast", {"prompt": "a wave #kie-stuck"})
            with pytest.raises(KieValidationError) as early:
                await client.get_veo_1080p(stuck)
            task_id = await client.create_task("veo3_fast", {"prompt": "a wave"})
            final = await client.wait(task_id, model="veo3_fast")
            return early.value, final, await client.get_veo_1080p(task_id, index=0)

    early, final, url = asyncio.run(go())
    assert early.code == 422 and "not success" in str(early)
    assert url == final.result_urls[0]
