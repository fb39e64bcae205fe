"""Local images as inputs: Kie's File Upload API in the client and the emulator, local paths in the
manifest, uploads cached by content hash in the store, and generation through ``materialize``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest
from PIL import Image

from kie_pipeline.client import KieClient, KieNotFoundError, KieValidationError
from kie_pipeline.emulator import EmulatorServer
from kie_pipeline.pipeline.manifest import ManifestError, load_manifest, validate_manifest
from kie_pipeline.pipeline.uploads import LOCAL_PREFIX, UPLOAD_MAX_AGE_S

from .conftest import FAST, make_client
from .pipeline_helpers import Pipeline, metadata, write_manifest

README = Path(__file__).resolve().parents[1] / "README.md"


def image_bytes(color: str = "red", fmt: str = "PNG", size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def auth(server: EmulatorServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.config.api_key}"}


# -- the client against the emulator ---------------------------------------------------------------


def test_upload_file_returns_a_url_that_serves_the_same_bytes(emulator, tmp_path) -> None:
    png, jpg = image_bytes(), image_bytes("blue", "JPEG")
    (tmp_path / "ref.jpg").write_bytes(jpg)

    async def go():
        async with make_client(emulator, upload_url=emulator.url) as client:
            from_bytes = await client.upload_file(png, file_name="a.png")
            from_path = await client.upload_file(tmp_path / "ref.jpg")
            return from_bytes, from_path, client.usage

    first, second, usage = asyncio.run(go())
    assert httpx.get(first.url).content == png and first.mime_type == "image/png" and first.size == len(png)
    got = httpx.get(second.url)
    assert got.content == jpg and got.headers["content-type"] == "image/jpeg"
    assert second.file_name == "ref.jpg" and second.uploaded_at  # the path's own name by default
    assert (usage.uploads, usage.bytes_uploaded) == (2, len(png) + len(jpg))
    assert usage.tasks_created == 0 and emulator.emulator.snapshot()["uploads"] == 2


def test_upload_reads_file_url_answers_too(emulator) -> None:
    """One version of Kie's docs answers with ``fileUrl`` instead of ``downloadUrl``."""
    emulator.config.upload_url_field = "fileUrl"
    with KieClient(emulator.config.api_key, emulator.url, upload_url=emulator.url, **FAST) as kie:
        uploaded = kie.upload_file(image_bytes(), file_name="b.png")
    assert httpx.get(uploaded.url).content == image_bytes()


def test_upload_retries_transient_errors_and_never_logs_the_key(emulator, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    emulator.config.faults.force_code, emulator.config.faults.force_count = 500, 2

    async def go():
        async with make_client(emulator, upload_url=emulator.url) as client:
            return await client.upload_file(image_bytes(), file_name="c.png"), client.usage

    uploaded, usage = asyncio.run(go())
    assert httpx.get(uploaded.url).status_code == 200
    assert usage.retries == 2 and usage.uploads == 1 and emulator.emulator.snapshot()["uploads"] == 1
    assert "file-stream-upload" in caplog.text and emulator.config.api_key not in caplog.text


def test_upload_errors_are_typed_and_not_retried(emulator) -> None:
    async def go(upload_url: str, **kw):
        async with make_client(emulator, upload_url=upload_url) as client:
            try:
                return await client.upload_file(image_bytes(), file_name="d.png", **kw)
            finally:
                assert client.usage.retries == 0

    with pytest.raises(KieValidationError, match="uploadPath"):
        asyncio.run(go(emulator.url, upload_path="/lead"))
    # No upload API at this URL: Kie's 404, at once.
    with pytest.raises(KieNotFoundError):
        asyncio.run(go(f"{emulator.url}/nowhere"))
    assert emulator.emulator.snapshot()["uploads"] == 0


def test_emulator_upload_endpoints_follow_kies_documents(emulator) -> None:
    png = image_bytes()
    url = emulator.url
    stream = f"{url}/api/file-stream-upload"

    def post(path: str, **kw):
        return httpx.post(f"{url}{path}", headers=auth(emulator), **kw).json()

    refusals = [
        post("/api/file-stream-upload", files={"file": ("a.png", png)}),
        post("/api/file-stream-upload", data={"uploadPath": "x"}),
        post("/api/file-stream-upload", files={"file": ("a.png", png)}, data={"uploadPath": "x/"}),
        post("/api/file-base64-upload", json={"base64Data": "!!", "uploadPath": "x"}),
        post("/api/file-url-upload", json={"uploadPath": "x"}),
    ]
    assert [(r["success"], r["code"]) for r in refusals] == [(False, 400)] * 5
    assert refusals[0]["msg"] == "Missing required parameter: uploadPath"
    assert refusals[1]["msg"] == "Missing required parameter: file"
    wrong_key = httpx.post(stream, headers={"Authorization": "Bearer nope"}, data={"uploadPath": "x"})
    assert wrong_key.status_code == 401

    ok = post("/api/file-stream-upload", files={"file": ("a.png", png)}, data={"uploadPath": "in"})
    assert ok["success"] and ok["code"] == 200
    assert set(ok["data"]) == {"fileName", "filePath", "downloadUrl", "fileSize", "mimeType", "uploadedAt"}
    b64 = base64.b64encode(png).decode()
    as_data_url = post(
        "/api/file-base64-upload",
        json={"base64Data": f"data:image/png;base64,{b64}", "uploadPath": "in", "fileName": "b.png"},
    )["data"]
    from_url = post(
        "/api/file-url-upload", json={"fileUrl": as_data_url["downloadUrl"], "uploadPath": "in/c"}
    )
    for data in (ok["data"], as_data_url, from_url["data"]):
        assert httpx.get(data["downloadUrl"]).content == png and data["mimeType"] == "image/png"
    assert from_url["data"]["filePath"] == "in/c/b.png"
    emulator.config.upload_retention = 0  # Kie deletes uploads after 3 days
    assert httpx.get(ok["data"]["downloadUrl"]).status_code == 404


# -- the manifest ------------------------------------------------------------------------------------


def test_local_paths_become_content_references(tmp_path) -> None:
    png = image_bytes()
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "cat.png").write_bytes(png)
    (tmp_path / "copy.png").write_bytes(png)
    absolute = str(tmp_path / "copy.png")
    url = "https://e.com/a.png"
    write_manifest(
        str(tmp_path / "m.csv"),
        [
            {"id": "none", "prompt": "p"},
            {"id": "one", "prompt": "p", "image_input": "refs/cat.png"},
            {"id": "many", "prompt": "p", "image_input": json.dumps([url, "refs/cat.png", absolute])},
            {"id": "flux", "prompt": "p", "model": "flux-2/pro-image-to-image", "image_input": absolute},
        ],
    )
    out = load_manifest(str(tmp_path / "m.csv")).set_index("id")
    ref = f"{LOCAL_PREFIX}{sha(png)}"
    assert json.loads(out.loc["none", "local_images"]) == {}
    assert json.loads(out.loc["one", "input_json"])["image_input"] == [ref]
    assert json.loads(out.loc["many", "input_json"])["image_input"] == [url, ref, ref]
    assert json.loads(out.loc["flux", "input_json"])["input_urls"] == [ref]
    # The same content under another name is the same reference; the file is remembered for upload.
    assert json.loads(out.loc["one", "local_images"]) == {ref: str(tmp_path / "refs" / "cat.png")}
    assert json.loads(out.loc["many", "image_input"]) == [url, str(tmp_path / "refs" / "cat.png"), absolute]


def test_readme_manifest_example(tmp_path) -> None:
    """The manifest of the README's "Local images (File Upload)" section, as written there."""
    section = README.read_text().split("### Local images (File Upload)", 1)[1]
    (tmp_path / "m.csv").write_text(section.split("```csv\n", 1)[1].split("```", 1)[0])
    (tmp_path / "refs").mkdir()
    (tmp_path / "refs" / "fox.png").write_bytes(image_bytes())
    out = load_manifest(str(tmp_path / "m.csv")).set_index("id")
    ref = f"{LOCAL_PREFIX}{sha(image_bytes())}"
    assert json.loads(out.loc["fox-summer", "input_json"])["image_input"] == [ref]
    assert json.loads(out.loc["fox-duo", "input_json"])["image_input"] == [
        ref,
        "https://example.com/style.jpg",
    ]


def test_request_key_follows_the_content_not_the_path_or_upload(tmp_path) -> None:
    def key(content: bytes, name: str) -> str:
        (tmp_path / name).write_bytes(content)
        df = pd.DataFrame([{"id": "r", "prompt": "p", "image_input": name}])
        return validate_manifest(df, base_dir=str(tmp_path))["request_key"].iloc[0]

    same = key(image_bytes(), "a.png")
    assert key(image_bytes(), "b.png") == same  # moved or renamed: nothing to pay again
    assert key(image_bytes("green"), "a.png") != same  # a changed image is a new request


@pytest.mark.parametrize(
    ("setup", "cell", "reason"),
    [
        (lambda d: None, "missing.png", "no file at"),
        (lambda d: (d / "notes.png").write_text("not an image"), "notes.png", "not an image Kie accepts"),
        (lambda d: (d / "folder").mkdir(), "folder", "is not a file"),
        (
            lambda d: (d / "big.png").write_bytes(image_bytes()[:16].ljust(30_000_001, b"\0")),
            "big.png",
            "at most",
        ),
    ],
)
def test_bad_local_images_are_named_by_row_and_field(tmp_path, setup, cell, reason) -> None:
    setup(tmp_path)
    (tmp_path / "ok.png").write_bytes(image_bytes())
    df = pd.DataFrame(
        [
            {"id": "good", "prompt": "p", "image_input": "ok.png", "input": None},
            {"id": "bad", "prompt": "p", "image_input": cell, "input": None},
        ]
    )
    with pytest.raises(ManifestError) as info:
        validate_manifest(df, base_dir=str(tmp_path))
    assert [(p.row, p.id, p.field) for p in info.value.problems] == [(2, "bad", "image_input")]
    assert reason in str(info.value) and "nothing was submitted" in str(info.value)


def test_size_limit_is_the_models_own_and_input_fields_are_named(tmp_path) -> None:
    """flux-2 takes 10 MB per image (nano-banana-pro 30 MB); a path in the input column is checked too."""
    (tmp_path / "big.webp").write_bytes(b"RIFF\0\0\0\0WEBP".ljust(10_000_001, b"\0"))
    df = pd.DataFrame(
        [
            {
                "id": "pro",
                "prompt": "p",
                "model": "nano-banana-pro",
                "input": '{"image_input": ["big.webp"]}',
            },
            {
                "id": "flux",
                "prompt": "p",
                "model": "flux-2/pro-image-to-image",
                "input": '{"input_urls": ["big.webp"]}',
            },
        ]
    )
    with pytest.raises(ManifestError) as info:
        validate_manifest(df, base_dir=str(tmp_path))
    assert [(p.id, p.field) for p in info.value.problems] == [("flux", "input.input_urls")]
    assert "10,000,000" in str(info.value)


# -- generation through materialize -----------------------------------------------------------------


def _records(store: Path) -> dict[str, dict]:
    out = {}
    for path in (store / "tasks").glob("*.json"):
        rec = json.loads(path.read_text())
        out[rec["id"]] = rec
    return out


def test_one_upload_for_a_whole_dataset_and_none_on_rerun(env, emulator, instance, monkeypatch) -> None:
    ref = env / "refs" / "style.png"
    ref.parent.mkdir()
    ref.write_bytes(image_bytes("purple"))
    rows = [
        {"id": f"r{i}", "batch": "b", "prompt": f"prompt {i}", "image_input": "refs/style.png"}
        for i in range(6)
    ]
    rows.append({"id": "plain", "batch": "b", "prompt": "no image"})
    write_manifest(str(env / "prompts.csv"), rows)
    monkeypatch.setenv("KIE_UPLOAD_URL", emulator.url)  # the README's setting for the emulator
    pipe = Pipeline(instance)
    pipe.manifest()
    md = metadata(pipe.batch("b", submitters=4))
    assert md["images_created"] == 7 and md["images_failed"] == 0
    assert md["uploads"] == 1 and emulator.emulator.snapshot()["uploads"] == 1  # rows at once: one upload
    # Kie received the upload's URL, which serves the reference image.
    sent = [t.input for t in emulator.emulator.tasks.values() if t.input.get("image_input")]
    assert len(sent) == 6 and len({s["image_input"][0] for s in sent}) == 1
    assert httpx.get(sent[0]["image_input"][0]).content == ref.read_bytes()
    # The record and the catalog keep the content reference; the record says what Kie was sent.
    local = f"{LOCAL_PREFIX}{sha(ref.read_bytes())}"
    rec = _records(env / "store")["r0"]
    assert rec["input"]["image_input"] == [local] and rec["uploaded"] == {local: sent[0]["image_input"][0]}
    cache = json.loads((env / "store" / "uploads" / f"{sha(ref.read_bytes())}.json").read_text())
    assert cache["url"] == sent[0]["image_input"][0]
    catalog = pipe.all().set_index("id")
    assert json.loads(catalog.loc["r0", "input"])["image_input"] == [local]
    assert json.loads(catalog.loc["r0", "image_input"]) == [str(ref)]
    # A rerun: nothing created, nothing uploaded.
    pipe.manifest()
    md = metadata(pipe.batch("b"))
    assert (md["images_created"], md["images_reused"], md["uploads"]) == (0, 7, 0)


def test_cache_is_reused_across_runs_until_near_expiry_and_changes_regenerate(
    env, emulator, instance
) -> None:
    ref = env / "ref.png"
    ref.write_bytes(image_bytes("orange"))
    write_manifest(
        str(env / "prompts.csv"), [{"id": "a", "batch": "b", "prompt": "a", "image_input": "ref.png"}]
    )
    pipe = Pipeline(instance, upload_url=emulator.url)
    pipe.manifest()
    assert metadata(pipe.batch("b"))["uploads"] == 1
    # A new row with the same image in a later run: the cached URL is fresh, no upload.
    rows = [{"id": i, "batch": "b", "prompt": i, "image_input": "ref.png"} for i in ("a", "b2")]
    write_manifest(str(env / "prompts.csv"), rows)
    pipe.manifest()
    md = metadata(pipe.batch("b"))
    assert (md["images_created"], md["uploads"]) == (1, 0)
    # Near Kie's 3-day expiry the cached URL is not trusted: the next new row uploads again.
    entry_path = env / "store" / "uploads" / f"{sha(ref.read_bytes())}.json"
    entry = json.loads(entry_path.read_text())
    entry["uploaded_at"] = (datetime.now(UTC) - timedelta(seconds=UPLOAD_MAX_AGE_S + 60)).isoformat()
    entry_path.write_text(json.dumps(entry))
    write_manifest(
        str(env / "prompts.csv"), [*rows, {"id": "c3", "batch": "b", "prompt": "c", "image_input": "ref.png"}]
    )
    pipe.manifest()
    md = metadata(pipe.batch("b"))
    assert (md["images_created"], md["images_reused"], md["uploads"]) == (1, 2, 1)
    # The image changes: every row that uses it is a new request, generated (and uploaded) again.
    ref.write_bytes(image_bytes("black"))
    pipe.manifest()
    md = metadata(pipe.batch("b"))
    assert (md["images_created"], md["images_reused"], md["uploads"]) == (3, 0, 1)


def test_failed_upload_fails_the_row_without_create_task(env, emulator, instance) -> None:
    ref = env / "ref.png"
    ref.write_bytes(image_bytes())
    rows = [
        {"id": "img", "batch": "b", "prompt": "a", "image_input": "ref.png"},
        {"id": "plain", "batch": "b", "prompt": "b"},
    ]
    write_manifest(str(env / "prompts.csv"), rows)
    # No upload API at this URL (Kie's 404): the row with an image fails, the other is generated.
    pipe = Pipeline(instance, upload_url=f"{emulator.url}/nowhere")
    pipe.manifest()
    result = pipe.batch("b")
    md = metadata(result)
    assert (md["images_created"], md["images_failed"], md["uploads"]) == (1, 1, 0)
    assert md["fail_codes"] == {"UPLOAD_FAILED": 1} and emulator.emulator.snapshot()["created"] == 1
    row = pd.read_parquet(env / "store" / "generated_images" / "b.parquet").set_index("id").loc["img"]
    assert row["fail_code"] == "UPLOAD_FAILED" and "no task was created" in row["fail_msg"]
    # The file changes between validation and generation: refused, never uploaded under the old key.
    pipe = Pipeline(instance, upload_url=emulator.url)
    ref.write_bytes(image_bytes("white"))
    md = metadata(pipe.batch("b"))
    assert md["fail_codes"] == {"UPLOAD_FAILED": 1} and md["uploads"] == 0
    pipe.manifest()
    md = metadata(pipe.batch("b"))
    assert (md["images_created"], md["images_reused"], md["uploads"]) == (1, 1, 1)
    assert os.path.exists(env / "store" / "uploads" / f"{sha(ref.read_bytes())}.json")
