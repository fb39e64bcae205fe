"""The model registry, checked against golden examples from Kie's documents, and the emulator checked
against the same examples independently (over real HTTP, not through our client)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from kie_pipeline.client import MODELS, KieValidationError, TaskRecord, get_model, validate_input
from kie_pipeline.emulator import EmulatorServer
from kie_pipeline.pipeline.callbacks import task_id_of
from kie_pipeline.pipeline.store import TaskStore
from kie_pipeline.receiver import ReceiverServer, build_receiver

from .pipeline_helpers import Pipeline, metadata, write_manifest

GOLDEN = Path(__file__).parent / "golden"


def golden(model: str) -> dict[str, Any]:
    text = (GOLDEN / f"{model.replace('/', '__')}.json").read_text()
    return json.loads(text.replace("PROMPT_OVER_5000", "x" * 5001))


def test_every_registered_model_has_golden_examples_and_every_example_a_model() -> None:
    files = {p.stem.replace("__", "/") for p in GOLDEN.glob("*.json")}
    assert files == set(MODELS)


def golden_input(model: str) -> dict[str, Any]:
    """The input of a golden request, read as Kie reads its family's body (jobs: ``input``; the
    other families: the body's own fields)."""
    name, inp = get_model(model).family.split_body(golden(model)["request"])
    assert name == model
    return inp


@pytest.mark.parametrize("model", sorted(MODELS))
def test_golden_request_is_valid_and_defaults_are_filled(model) -> None:
    inp = golden_input(model)
    normalized = validate_input(model, inp)
    assert {k: normalized[k] for k in inp} == inp
    assert set(normalized) <= set(get_model(model).input.model_fields)
    assert validate_input(model, normalized) == normalized  # idempotent: same request, same key


@pytest.mark.parametrize(
    ("model", "case"), [(m, c) for m in sorted(MODELS) for c in golden(m)["invalid"]], ids=str
)
def test_golden_invalid_input_is_refused_naming_the_field(model, case) -> None:
    with pytest.raises(KieValidationError) as info:
        validate_input(model, case["input"])
    assert info.value.field == case["field"]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_emulator_accepts_golden_requests_and_refuses_invalid_ones(emulator: EmulatorServer, model) -> None:
    example, family = golden(model), get_model(model).family
    headers = {"Authorization": f"Bearer {emulator.config.api_key}"}
    with httpx.Client(base_url=emulator.url, headers=headers) as http:
        ok = http.post(family.create_path, json=example["request"]).json()
        assert ok["code"] == 200 and ok["data"]["taskId"]
        for case in example["invalid"]:
            answer = http.post(family.create_path, json=family.body(model, case["input"]))
            assert answer.status_code == 422, case


def test_golden_record_decodes_through_the_family_decoder() -> None:
    example = golden("nano-banana-pro")
    record = get_model("nano-banana-pro").family.decode(example["record"]["data"])
    assert isinstance(record, TaskRecord)
    assert record.state.value == example["decoded"]["state"]
    assert record.result_urls == example["decoded"]["result_urls"]
    assert record.param is not None and record.param["model"] == "nano-banana-pro"


#: Models whose golden file carries status records and callbacks (the families with their own
#: status shapes); each example names what it must decode to.
DECODED = [
    (m, kind, i)
    for m in sorted(MODELS)
    for kind in ("records", "callbacks")
    for i in range(len(golden(m).get(kind, [])))
]


@pytest.mark.parametrize(("model", "kind", "index"), DECODED, ids=str)
def test_golden_records_and_callbacks_decode_through_the_family(model, kind, index) -> None:
    example = golden(model)[kind][index]
    family = get_model(model).family
    if kind == "records":
        record = family.decode(example["data"])
    else:
        record = family.decode_callback(example["payload"])
        assert task_id_of(example["payload"]) == record.task_id
    want = example["decoded"]
    assert record.state.value == want["state"]
    assert record.result_urls == want["result_urls"]
    assert record.fail_code == want.get("fail_code")
    if "model" in want:
        assert record.model == want["model"]
    assert record.is_terminal == (want["state"] in ("success", "fail"))


def test_every_family_but_jobs_has_golden_records_and_callbacks() -> None:
    for model, spec in MODELS.items():
        if spec.family.flat:
            assert golden(model).get("records") and golden(model).get("callbacks"), model


def test_unknown_model_is_refused_with_the_list_of_known_ones() -> None:
    with pytest.raises(KieValidationError) as info:
        validate_input("dall-e-9", {"prompt": "x"})
    assert info.value.field == "model"
    assert all(name in str(info.value) for name in MODELS)


#: One manifest row per model, written as a user would: named columns where the model has the field,
#: the `input` column (JSON) for the rest.
ROWS = {
    "nano-banana-pro": {"aspect_ratio": "16:9", "resolution": "2K"},
    "google/nano-banana": {"aspect_ratio": "9:16", "output_format": "jpeg"},
    "google/nano-banana-edit": {"image_input": "https://example.com/in.png"},
    "nano-banana-2": {"aspect_ratio": "4:1", "output_format": "png"},
    "bytedance/seedream-v4-text-to-image": {
        "input": json.dumps({"max_images": 2, "image_size": "portrait_4_3"})
    },
    "flux-2/pro-text-to-image": {"aspect_ratio": "3:2", "resolution": "2K"},
    "flux-2/pro-image-to-image": {"image_input": "https://example.com/room.png", "aspect_ratio": "2:3"},
    "gpt4o-image": {"aspect_ratio": "2:3", "input": json.dumps({"nVariants": 2})},
    "flux-kontext-pro": {"aspect_ratio": "21:9", "output_format": "png"},
    "flux-kontext-max": {"image_input": "https://example.com/in.png", "aspect_ratio": "9:16"},
    **{m: {} for m in MODELS if m.startswith("suno/")},
    "veo3": {"aspect_ratio": "9:16"},
    "veo3_fast": {"image_input": "https://example.com/first.png|https://example.com/last.png"},
    "veo3_lite": {"resolution": "1080p", "input": json.dumps({"seeds": 12345})},
    "runway": {"aspect_ratio": "9:16", "resolution": "720p", "input": json.dumps({"duration": 10})},
    "runway-aleph": {"aspect_ratio": "1:1", "input": json.dumps({"videoUrl": "https://example.com/in.mp4"})},
    "suno/V5": {
        "input": json.dumps({"customMode": True, "style": "lo-fi", "title": "Tide", "vocalGender": "f"})
    },
}
#: (results, orientation) each row must give.
EXPECTED = {
    "nano-banana-pro": (1, "landscape"),
    "google/nano-banana": (1, "portrait"),
    "google/nano-banana-edit": (1, "square"),
    "nano-banana-2": (1, "landscape"),
    "bytedance/seedream-v4-text-to-image": (2, "portrait"),
    "flux-2/pro-text-to-image": (1, "landscape"),
    "flux-2/pro-image-to-image": (1, "portrait"),
    "gpt4o-image": (2, "portrait"),
    "flux-kontext-pro": (1, "landscape"),
    "flux-kontext-max": (1, "portrait"),
    # Audio has no orientation: two tracks per Suno task.
    **{m: (2, None) for m in MODELS if m.startswith("suno/")},
    # One clip per Veo task (the emulator's small test video).
    "veo3": (1, None),
    "veo3_fast": (1, None),
    "veo3_lite": (1, None),
    "runway": (1, None),
    "runway-aleph": (1, None),
}


def _orientation(width: int, height: int) -> str:
    return "landscape" if width > height else "portrait" if height > width else "square"


@contextlib.contextmanager
def _kie_settings(env: Path, models: list[str]) -> Iterator[dict[str, Any]]:
    """The KieResource settings a run of ``models`` needs: a callback receiver when any of their
    families requires a callBackUrl (Suno), none otherwise."""
    if not any(get_model(m).family.callback_required for m in models):
        yield {}
        return
    receiver = build_receiver(TaskStore(str(env / "store")), secret=CALLBACK_SECRET)
    with ReceiverServer(receiver) as server:
        yield {"callback_url": server.url, "callback_secret": CALLBACK_SECRET}


CALLBACK_SECRET = "registry-callback-secret"


def _assert_model_rows(catalog: pd.DataFrame, model: str, *, credits: bool = True) -> None:
    """What a run gives for ``model``'s one row: its results (each a success, indexed 0..n-1), their
    orientation, files that exist and, with ``credits``, the estimated credits (checked where the row ran
    as it would alone: polled, or by callbacks only where the family requires a callBackUrl, since
    callbacks carry Kie's own figure for some families)."""
    rows = catalog[catalog["model"] == model]
    count, orientation = EXPECTED[model]
    assert len(rows) == count and (rows["state"] == "success").all(), model
    assert rows["id"].nunique() == 1, model
    assert list(rows["result_index"]) == list(range(count)), model
    if orientation is not None:
        sizes = zip(rows["width"], rows["height"], strict=True)
        assert all(_orientation(w, h) == orientation for w, h in sizes), model
    assert all(Path(u).exists() for u in rows["image_uri"]), model
    if credits:
        price = get_model(model).price(json.loads(rows["input"].iloc[0]))
        # A model without a documented price has no estimate (and so no credits) in the catalog.
        got = rows["credits"].iloc[0]
        assert pd.isna(got) if price is None else got == price, (model, got, price)


#: The models whose family does not require a callBackUrl: they run polled, with no receiver.
POLLED = sorted(m for m in MODELS if not get_model(m).family.callback_required)
#: The others (Suno) run only with a callback receiver: the mixed batch below has one.
CALLED = sorted(set(MODELS) - set(POLLED))


def test_every_model_that_can_poll_runs_end_to_end_polled(env, emulator, instance) -> None:
    """One batch of every model whose family needs no callBackUrl, with no receiver: each row ends by
    polling its own family's status endpoint and gives what its model promises."""
    rows = [{"id": f"p{i}", "model": m, "prompt": f"a test of {m}", **ROWS[m]} for i, m in enumerate(POLLED)]
    write_manifest(str(env / "prompts.csv"), rows)
    with _kie_settings(env, POLLED) as kie:
        assert kie == {}  # polling alone
        catalog = Pipeline(instance, **kie).all()
    assert set(catalog["model"]) == set(POLLED)
    assert len(catalog) == sum(EXPECTED[m][0] for m in POLLED)
    for model in POLLED:
        _assert_model_rows(catalog, model)


def test_a_batch_mixing_every_model(env, emulator, instance) -> None:
    rows = [
        {"id": f"m{i}", "model": m, "prompt": f"mixed {m}", **ROWS[m]} for i, m in enumerate(sorted(MODELS))
    ]
    write_manifest(str(env / "prompts.csv"), rows)
    # More rows than Kie's 20 creations per window: the batch waits for the next window. Kie's limit
    # with a 1 s window instead of 10 s (same count, on both sides), so that wait is short.
    assert len(rows) > emulator.config.create_limit
    emulator.config.create_period = 1.0
    with _kie_settings(env, list(MODELS)) as kie:
        pipe = Pipeline(instance, limits={"create_period_s": 1.0}, **kie)
        catalog = pipe.all()
        again = metadata(pipe.batch("default"))
    assert set(catalog["model"]) == set(MODELS)
    assert len(catalog) == sum(n for n, _ in EXPECTED.values()) and (catalog["state"] == "success").all()
    assert emulator.emulator.snapshot()["created"] == len(MODELS)
    assert again["images_reused"] == len(MODELS) and again["images_created"] == 0
    inputs = {r.model: json.loads(r.input) for r in catalog.drop_duplicates("id").itertuples()}
    assert inputs["google/nano-banana"]["image_size"] == "9:16"  # the named column, in Kie's field
    assert inputs["google/nano-banana-edit"]["image_urls"] == ["https://example.com/in.png"]
    # Every model's row gives what its model promises (the credits of the models that need callbacks,
    # which ran this way alone too; the others' estimates are checked polled, above).
    for model in sorted(MODELS):
        _assert_model_rows(catalog, model, credits=model in CALLED)


@pytest.mark.parametrize(
    ("row", "field"),
    [
        ({"model": "google/nano-banana", "resolution": "2K"}, "resolution"),
        ({"model": "flux-2/pro-text-to-image", "resolution": "4K"}, "resolution"),
        ({"model": "bytedance/seedream-v4-text-to-image", "input": '{"max_images": 9}'}, "input.max_images"),
        ({"model": "nano-banana-pro", "input": "[1, 2]"}, "input"),
        (
            {"model": "nano-banana-pro", "input": '{"aspect_ratio": "1:1"}', "aspect_ratio": "4:3"},
            "aspect_ratio",
        ),
        ({"model": "dall-e-9"}, "model"),
    ],
)
def test_manifest_rows_are_checked_against_their_model(row, field) -> None:
    from kie_pipeline.pipeline.manifest import ManifestError, validate_manifest

    with pytest.raises(ManifestError) as info:
        validate_manifest(pd.DataFrame([{"id": "a", "prompt": "p", **row}]))
    assert [p.field for p in info.value.problems] == [field]


def test_generation_waits_through_the_waiter_seam(emulator: EmulatorServer, tmp_path) -> None:
    """Generation depends on the Waiter protocol only: any waiter (here polling, counted) will do."""
    import asyncio

    from kie_pipeline.client import PollingWaiter, Waiter
    from kie_pipeline.pipeline.generation import generate_batch
    from kie_pipeline.pipeline.manifest import validate_manifest
    from kie_pipeline.pipeline.store import TaskStore

    from .conftest import make_client

    class CountingWaiter:
        def __init__(self, inner: Waiter) -> None:
            self.inner, self.asked = inner, []

        async def wait(self, task_id, *, key=None, model=None, timeout=None, first_delay=None):
            self.asked.append(task_id)
            return await self.inner.wait(
                task_id, key=key, model=model, timeout=timeout, first_delay=first_delay
            )

    rows = validate_manifest(pd.DataFrame([{"id": f"r{i}", "prompt": f"p {i}"} for i in range(3)]))

    async def go():
        async with make_client(emulator) as client:
            waiter = CountingWaiter(PollingWaiter(client))
            assert isinstance(waiter, Waiter)
            out, summary = await generate_batch(
                client, TaskStore(str(tmp_path / "store")), rows, waiter=waiter
            )
            return out, summary, waiter

    out, summary, waiter = asyncio.run(go())
    assert summary.succeeded == 3 and sorted(waiter.asked) == sorted(out["task_id"])
