"""Media beyond images: probes on real rendered files, download type checks, catalog columns, and
video and audio rows end to end against the emulator."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import httpx
import pandas as pd
import pytest

from kie_pipeline.client import KieDownloadError, PollingWaiter, PollPolicy, TaskRecord
from kie_pipeline.client.download import fetch, size_cap
from kie_pipeline.client.registry import JOBS, MODELS, MediaType, ModelSpec, Output, Prompt, _Input
from kie_pipeline.emulator import FAIL_MARKER, EmulatorServer
from kie_pipeline.emulator.render import render_media
from kie_pipeline.pipeline.callbacks import CallbackSettings
from kie_pipeline.pipeline.catalog import build_catalog, typed
from kie_pipeline.pipeline.contact_sheet import write_contact_sheet
from kie_pipeline.pipeline.generation import generate_batch, result_row
from kie_pipeline.pipeline.manifest import validate_manifest
from kie_pipeline.pipeline.media import MediaError, probe, thumbnail
from kie_pipeline.pipeline.record import RecordStatus, RequestRecord
from kie_pipeline.pipeline.recovery import describe_copy
from kie_pipeline.pipeline.schema import CATALOG_DTYPES
from kie_pipeline.pipeline.store import TaskStore
from kie_pipeline.receiver import ReceiverServer, build_receiver

from .conftest import make_client
from .test_registry import ROWS as REGISTRY_ROWS


@pytest.fixture(scope="module")
def clips() -> dict[str, bytes]:
    """One real file of each media type, as the emulator serves them."""
    return {m: render_media(m, "task-abc")[0] for m in ("image", "video", "audio")}


def test_probe_reads_a_real_video(clips) -> None:
    info = probe(clips["video"], MediaType.VIDEO)
    assert (info.media_type, info.ext, info.mime_type) == (MediaType.VIDEO, "mp4", "video/mp4")
    assert (info.width, info.height) == (64, 48)
    assert info.duration_s == pytest.approx(0.5, abs=0.15)


def test_probe_reads_a_real_audio_clip(clips) -> None:
    info = probe(clips["audio"], MediaType.AUDIO)
    assert (info.media_type, info.ext, info.mime_type) == (MediaType.AUDIO, "mp3", "audio/mpeg")
    assert info.duration_s == pytest.approx(0.5, abs=0.15)
    assert info.width is None and info.height is None


@pytest.mark.parametrize("media", ["video", "audio"])
def test_the_duration_is_read_from_the_file(media: str) -> None:
    data, _, _ = render_media(media, "longer", seconds=2.0)
    assert probe(data, media).duration_s == pytest.approx(2.0, abs=0.15)
    assert thumbnail(data, media) is not None


def test_probe_detects_the_media_type_and_refuses_the_wrong_one(clips) -> None:
    assert [probe(clips[m]).media_type for m in ("image", "video", "audio")] == ["image", "video", "audio"]
    with pytest.raises(MediaError):
        probe(clips["audio"], MediaType.VIDEO)
    with pytest.raises(MediaError):
        probe(clips["video"], MediaType.IMAGE)
    with pytest.raises(MediaError):
        probe(b"<html>not a file</html>", MediaType.AUDIO)


def test_thumbnails_of_a_video_frame_and_an_audio_waveform(clips) -> None:
    frame = thumbnail(clips["video"], "video", 32)
    wave = thumbnail(clips["audio"], "audio", 32)
    assert frame is not None and max(frame.size) <= 32
    assert wave is not None and wave.size == (32, 16)
    # The waveform is drawn: a tone leaves more than the background colour.
    assert len(set(wave.getdata())) > 1
    assert thumbnail(b"junk", "video") is None


def _serve(ctype: str):
    return httpx.MockTransport(
        lambda request: httpx.Response(200, content=b"x" * 10, headers={"content-type": ctype})
    )


@pytest.mark.parametrize(
    ("media", "ctype", "ok"),
    [
        ("image", "image/png", True),
        ("image", "video/mp4", False),
        ("video", "video/mp4", True),
        ("video", "video/webm", True),
        ("video", "image/png", False),
        ("video", "audio/mpeg", False),
        ("audio", "audio/mpeg", True),
        ("audio", "audio/wav", True),
        ("audio", "video/mp4", False),
        ("audio", "text/html", False),
        ("video", "application/octet-stream", True),
        ("audio", "binary/octet-stream", True),
    ],
)
def test_download_content_types_follow_the_media_type(media: str, ctype: str, ok: bool) -> None:
    async def go():
        async with httpx.AsyncClient(transport=_serve(ctype)) as http:
            return await fetch(http, "https://files.example/r", max_bytes=100, media=media)

    if ok:
        assert asyncio.run(go()).data == b"x" * 10
    else:
        with pytest.raises(KieDownloadError, match=f"expected {media}"):
            asyncio.run(go())


def test_size_caps_follow_the_media_type() -> None:
    cap = 50 * 1024 * 1024
    assert size_cap("image", cap) == cap
    assert size_cap("video", cap) > size_cap("audio", cap) > cap
    assert size_cap("video", 10**12) == 10**12  # a larger configured cap is kept


def test_catalog_schema_has_the_media_columns() -> None:
    expected = {
        "media_type": "string",
        "duration_s": "Float64",
        "mime_type": "string",
        "title": "string",
        "tags": "string",
        "width": "Int64",
        "height": "Int64",
    }
    assert {k: CATALOG_DTYPES[k] for k in expected} == expected
    empty = build_catalog([])
    assert {c: str(empty[c].dtype) for c in expected} == expected


def test_old_image_records_and_tables_still_load() -> None:
    old = {
        "key": "k",
        "id": "a",
        "batch": "b",
        "model": "nano-banana-pro",
        "status": "success",
        "task_id": "t",
        "image": {
            "uri": "/s/images/k.png",
            "sha256": "ab" * 32,
            "bytes": 10,
            "width": 2,
            "height": 3,
            "format": "png",
        },
    }
    rec = RequestRecord.from_json(json.dumps(old))
    assert rec.status is RecordStatus.SUCCESS and rec.images[0].media_type == "image"
    row = {"id": "a", "batch": "b", "model": "nano-banana-pro", "prompt": "p", "request_key": "k"}
    out = result_row(row, rec, 0, state="success")
    assert (out["media_type"], out["mime_type"], out["duration_s"]) == ("image", "image/png", None)
    # A result table written before media columns: its rows are images.
    table = typed(
        pd.DataFrame([{"id": "a", "batch": "b", "result_index": 0, "format": "jpg", "state": "success"}])
    )
    assert (table.loc[0, "media_type"], table.loc[0, "mime_type"]) == ("image", "image/jpeg")


class _ClipInput(_Input):
    prompt: Prompt(1000)


@pytest.fixture
def media_models(monkeypatch: pytest.MonkeyPatch) -> dict[str, MediaType]:
    """Test-only video and audio models on the jobs API (the emulator serves them real clips)."""
    models = {"test/clip-video": MediaType.VIDEO, "test/clip-audio": MediaType.AUDIO}
    for name, media in models.items():
        fmt = "mp4" if media is MediaType.VIDEO else "mp3"
        spec = ModelSpec(
            name, JOBS, _ClipInput, media, {"prompt": "prompt"}, lambda _i, f=fmt: Output("1:1", "1K", f)
        )
        monkeypatch.setitem(MODELS, name, spec)
    return models


def test_video_audio_and_image_rows_end_to_end(emulator: EmulatorServer, tmp_path, media_models) -> None:
    rows = validate_manifest(
        pd.DataFrame(
            [
                {"id": "v", "model": "test/clip-video", "prompt": "a river"},
                {"id": "a", "model": "test/clip-audio", "prompt": "a song"},
                {"id": "i", "prompt": "a fox"},
                {"id": "vf", "model": "test/clip-video", "prompt": f"a flood {FAIL_MARKER}"},
            ]
        )
    )
    store = TaskStore(str(tmp_path / "store"))

    async def go():
        async with make_client(emulator) as client:
            return await generate_batch(client, store, rows)

    out, summary = asyncio.run(go())
    assert (summary.succeeded, summary.failed) == (3, 1)
    cat = build_catalog([out]).set_index("id")
    # A failed row still says what its model returns; it has no file to describe.
    assert cat.loc["vf", "media_type"] == "video" and pd.isna(cat.loc["vf", "mime_type"])
    assert cat.loc["v", "media_type"] == "video" and cat.loc["v", "mime_type"] == "video/mp4"
    assert (cat.loc["v", "width"], cat.loc["v", "height"], cat.loc["v", "format"]) == (64, 48, "mp4")
    assert cat.loc["v", "duration_s"] == pytest.approx(0.5, abs=0.15)
    assert cat.loc["v", "image_uri"].endswith(".mp4")
    assert cat.loc["a", "media_type"] == "audio" and cat.loc["a", "mime_type"] == "audio/mpeg"
    assert cat.loc["a", "duration_s"] == pytest.approx(0.5, abs=0.15) and pd.isna(cat.loc["a", "width"])
    assert cat.loc["a", "image_uri"].endswith(".mp3")
    assert cat.loc["i", "media_type"] == "image" and cat.loc["i", "mime_type"] == "image/png"
    # A perceptual hash for the image and the video's first frame; none for audio.
    assert (
        pd.notna(cat.loc["i", "phash"]) and pd.notna(cat.loc["v", "phash"]) and pd.isna(cat.loc["a", "phash"])
    )
    assert pd.isna(cat.loc["i", "duration_s"])
    # Recovery describes a copy the way generation did.
    again = describe_copy(store, cat.loc["v", "image_uri"], "video")
    assert again is not None and (again.media_type, again.width, again.duration_s) == (
        "video",
        64,
        cat.loc["v", "duration_s"],
    )
    # The contact sheet shows every media type (a frame, a waveform, the image).
    sheet = write_contact_sheet(store, build_catalog([out]), "gallery")
    assert sheet.cells == 3 and store.read_bytes(sheet.uri)[:2] == b"\xff\xd8"


def test_kie_metadata_of_a_track_lands_in_title_and_tags(
    emulator: EmulatorServer, tmp_path, media_models
) -> None:
    """Per-result metadata on the final task record (``result["tracks"]``, as the Suno decoder gives
    it) fills the catalog's title and tags."""

    class TracksWaiter:
        def __init__(self, inner: PollingWaiter) -> None:
            self.inner = inner

        async def wait(self, task_id: str, **kwargs: Any) -> TaskRecord:
            final = await self.inner.wait(task_id, **kwargs)
            tracks = [{"title": "River Song", "tags": "folk, calm"}]
            return dataclasses.replace(final, result={**(final.result or {}), "tracks": tracks})

    rows = validate_manifest(pd.DataFrame([{"id": "a", "model": "test/clip-audio", "prompt": "a song"}]))

    async def go():
        async with make_client(emulator) as client:
            return await generate_batch(
                client, TaskStore(str(tmp_path / "store")), rows, waiter=TracksWaiter(PollingWaiter(client))
            )

    out, _ = asyncio.run(go())
    assert (out.loc[0, "title"], out.loc[0, "tags"]) == ("River Song", "folk, calm")


def test_the_client_downloads_a_video_as_video_only(emulator: EmulatorServer, tmp_path, media_models) -> None:
    """``AsyncKieClient.download`` checks the content type against ``media`` (default: image)."""

    async def go():
        async with make_client(emulator) as client:
            final = await client.run("test/clip-video", {"prompt": "a river"})
            (url,) = final.result_urls
            with pytest.raises(KieDownloadError, match="expected image"):
                await client.download(url, str(tmp_path / "wrong.mp4"))
            return await client.download(url, str(tmp_path / "clip.mp4"), media="video")

    got = asyncio.run(go())
    assert got.content_type == "video/mp4"
    assert probe((tmp_path / "clip.mp4").read_bytes(), "video").width == 64


#: The registry's own video and audio models (Veo, Runway, Suno as the families land).
REGISTRY_MEDIA_MODELS = sorted(m for m, spec in MODELS.items() if spec.media != MediaType.IMAGE)


@pytest.mark.parametrize(
    "model", REGISTRY_MEDIA_MODELS or [pytest.param(None, marks=pytest.mark.skip("none yet"))]
)
def test_registry_media_models_fill_the_media_columns(emulator: EmulatorServer, tmp_path, model: str) -> None:
    """A row of each registry video or audio model, through its family and callbacks, lands in the
    catalog with its media columns read from the emulator's real clip."""
    media = MODELS[model].media
    store = TaskStore(str(tmp_path / "store"))
    # The model's manifest row as test_registry writes it (its required fields included).
    row = {"id": "m", "model": model, "prompt": "a river at dawn", **REGISTRY_ROWS.get(model, {})}
    rows = validate_manifest(pd.DataFrame([row]))
    with ReceiverServer(build_receiver(store, secret="media-secret")) as receiver:

        async def go():
            poll = PollPolicy(initial_s=0.02, max_s=0.1, callback_fallback_s=60)
            async with make_client(emulator, poll=poll) as client:
                return await generate_batch(
                    client, store, rows, callbacks=CallbackSettings(receiver.url, "media-secret")
                )

        out, summary = asyncio.run(go())
    assert summary.succeeded == 1 and (out["state"] == "success").all()
    cat = build_catalog([out])
    assert (cat["media_type"] == media.value).all()
    assert cat["duration_s"].between(0.3, 0.7).all()
    if media is MediaType.VIDEO:
        assert (cat["mime_type"] == "video/mp4").all() and (cat["width"] == 64).all()
    else:
        assert (cat["mime_type"] == "audio/mpeg").all() and cat["width"].isna().all()
        if model.startswith("suno/"):
            # Suno names every track and gives its style tags.
            assert cat["title"].notna().all() and cat["tags"].notna().all()
