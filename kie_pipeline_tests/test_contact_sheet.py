"""Contact sheets: a grid of real thumbnails (images, video frames, audio waveforms) written to a local
store, and the markdown snippet that stays within Dagster's metadata size."""

from __future__ import annotations

import asyncio
import base64
import io
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from kie_pipeline.emulator import FAIL_MARKER, EmulatorServer
from kie_pipeline.emulator.render import render, render_media
from kie_pipeline.pipeline.contact_sheet import (
    CELL_SIZE,
    GAP,
    LABEL_HEIGHT,
    MAX_CELLS,
    MAX_COLUMNS,
    MAX_MARKDOWN_CHARS,
    NO_RESULTS,
    PREVIEW_WIDTH,
    sheet_uri,
    write_contact_sheet,
)
from kie_pipeline.pipeline.generation import generate_batch
from kie_pipeline.pipeline.manifest import validate_manifest
from kie_pipeline.pipeline.store import TaskStore

from .conftest import make_client

_DATA_URI = re.compile(r"!\[[^\]]*\]\(data:image/jpeg;base64,([A-Za-z0-9+/=]+)\)")
_BACKGROUND = (24, 24, 28)


def _media_file(store: TaskStore, media: str, seed: str) -> str:
    """A real file in the store: a 1K-class PNG render, an H.264 clip or an MP3 tone."""
    if media == "image":
        data, ext = render(seed, f"prompt of {seed}", "16:9", "1K", "png", 0.5), "png"
    else:
        data, _, ext = render_media(media, seed)
    uri = store.image_uri(f"key-{seed}", ext)
    store.write_bytes(uri, data)
    return uri


def _rows(store: TaskStore, count: int, *, fail_every: int = 0) -> pd.DataFrame:
    """``count`` result rows cycling image, video and audio; every ``fail_every``-th row failed."""
    out = []
    for i in range(count):
        media = ("image", "video", "audio")[i % 3]
        failed = fail_every and i % fail_every == fail_every - 1
        out.append(
            {
                "id": f"row-{i}",
                "result_index": 0,
                "state": "fail" if failed else "success",
                "media_type": media,
                "image_uri": None if failed else _media_file(store, media, f"s{i}"),
                "prompt": f"prompt {i}",
            }
        )
    return pd.DataFrame(out)


def _grid_size(columns: int, rows: int) -> tuple[int, int]:
    return GAP + columns * (CELL_SIZE + GAP), GAP + rows * (CELL_SIZE + LABEL_HEIGHT + GAP)


def _cell_centre(index: int, columns: int) -> tuple[int, int]:
    x = GAP + (index % columns) * (CELL_SIZE + GAP) + CELL_SIZE // 2
    y = GAP + (index // columns) * (CELL_SIZE + LABEL_HEIGHT + GAP) + CELL_SIZE // 2
    return x, y


def _preview(markdown: str) -> Image.Image:
    match = _DATA_URI.search(markdown)
    assert match, markdown[:300]
    img = Image.open(io.BytesIO(base64.b64decode(match.group(1))))
    img.load()
    return img


def _far_from_background(pixel: tuple[int, ...]) -> bool:
    return sum(abs(a - b) for a, b in zip(pixel, _BACKGROUND, strict=False)) > 40


@pytest.fixture
def store(tmp_path: Path) -> TaskStore:
    return TaskStore(str(tmp_path / "store"))


def test_no_success_row_writes_nothing(store: TaskStore, tmp_path: Path) -> None:
    empty = pd.DataFrame(columns=["id", "result_index", "state", "media_type", "image_uri", "prompt"])
    sheet = write_contact_sheet(store, empty, "b")
    assert (sheet.uri, sheet.cells, sheet.left_out, sheet.not_shown) == (None, 0, 0, 0)
    assert sheet.markdown == NO_RESULTS == "_no results yet_"
    # Only failures: still nothing written, and the failed ids are named.
    failed = _rows(store, 2, fail_every=1)
    sheet = write_contact_sheet(store, failed, "b")
    assert sheet.uri is None and sheet.cells == 0 and sheet.not_shown == 2
    assert (
        sheet.markdown.startswith(NO_RESULTS) and "`row-0`" in sheet.markdown and "2 fail" in sheet.markdown
    )
    assert not (tmp_path / "store" / "contact_sheets").exists()


def test_one_row_is_one_cell(store: TaskStore) -> None:
    sheet = write_contact_sheet(store, _rows(store, 1), "one")
    assert (sheet.cells, sheet.left_out, sheet.not_shown) == (1, 0, 0)
    assert sheet.uri == sheet_uri(store, "one") and sheet.uri.endswith("/contact_sheets/one.jpg")
    with Image.open(io.BytesIO(store.read_bytes(sheet.uri))) as img:
        assert img.format == "JPEG" and img.size == _grid_size(1, 1)
        assert _far_from_background(img.convert("RGB").getpixel(_cell_centre(0, 1)))
    assert f"Full sheet: `{sheet.uri}`" in sheet.markdown and "1 of 1 results shown" in sheet.markdown
    assert _preview(sheet.markdown).size == _grid_size(1, 1)  # small sheets are not scaled down


def test_many_rows_are_capped_and_the_markdown_stays_small(store: TaskStore) -> None:
    # 70 rows, every 10th failed: 63 successes, of which the sheet holds MAX_CELLS.
    rows = _rows(store, 70, fail_every=10)
    sheet = write_contact_sheet(store, rows, "many")
    assert (sheet.cells, sheet.left_out, sheet.not_shown) == (MAX_CELLS, 63 - MAX_CELLS, 7)
    columns = MAX_COLUMNS
    with Image.open(io.BytesIO(store.read_bytes(sheet.uri))) as img:
        assert img.size == _grid_size(columns, MAX_CELLS // columns)
        rgb = img.convert("RGB")
        # Every cell holds a picture: an image, a video's first frame or a waveform (its centre line).
        for i in range(MAX_CELLS):
            assert _far_from_background(rgb.getpixel(_cell_centre(i, columns))), i
    assert len(sheet.markdown) <= MAX_MARKDOWN_CHARS
    assert f"{MAX_CELLS} of 63 results shown ({63 - MAX_CELLS} left out" in sheet.markdown
    assert "Not shown (7 fail): `row-9`, `row-19`" in sheet.markdown
    preview = _preview(sheet.markdown)
    assert preview.format == "JPEG" and preview.width <= PREVIEW_WIDTH
    # Same proportions as the sheet.
    assert abs(preview.width / preview.height - _grid_size(8, 6)[0] / _grid_size(8, 6)[1]) < 0.02


def test_a_tight_budget_shrinks_the_preview(store: TaskStore) -> None:
    rows = _rows(store, 24)
    roomy = write_contact_sheet(store, rows, "b")
    tight = write_contact_sheet(store, rows, "b", max_markdown_chars=6_000)
    assert len(tight.markdown) <= 6_000 < len(roomy.markdown)
    assert _preview(tight.markdown).width < _preview(roomy.markdown).width


def test_a_success_row_without_a_readable_copy_keeps_a_placeholder_cell(store: TaskStore) -> None:
    rows = _rows(store, 2)
    rows.loc[1, "image_uri"] = store.image_uri("gone", "png")  # never written
    sheet = write_contact_sheet(store, rows, "b", max_cells=2)
    assert sheet.cells == 2
    with Image.open(io.BytesIO(store.read_bytes(sheet.uri))) as img:
        assert img.convert("RGB").getpixel(_cell_centre(1, 2))[:3] == pytest.approx((70, 70, 76), abs=8)


def test_rewriting_replaces_the_sheet_whole(store: TaskStore, tmp_path: Path) -> None:
    write_contact_sheet(store, _rows(store, 9), "b")
    sheet = write_contact_sheet(store, _rows(store, 2), "b")
    folder = tmp_path / "store" / "contact_sheets"
    assert [p.name for p in folder.iterdir()] == ["b.jpg"]  # no temporary file left behind
    with Image.open(folder / "b.jpg") as img:
        assert img.size == _grid_size(2, 1)
    assert sheet.cells == 2


def test_names_never_escape_the_folder(store: TaskStore) -> None:
    root = f"{store.root}/contact_sheets/"
    names = ["../../etc/passwd", "a b", "a_b", "", "ünï/cödé", "x" * 300]
    uris = [sheet_uri(store, n) for n in names]
    assert all(u.startswith(root) and "/" not in u[len(root) :] and ".." not in u for u in uris)
    assert len(set(uris)) == len(uris)
    assert sheet_uri(store, "media") == f"{root}media.jpg"


def test_a_batch_through_the_emulator(emulator: EmulatorServer, store: TaskStore) -> None:
    """A real result table: images (one task with two results), a video, and a failed row."""
    rows = validate_manifest(
        pd.DataFrame(
            [
                {"id": "img", "prompt": "a fox"},
                {
                    "id": "two",
                    "model": "gpt4o-image",
                    "prompt": "two foxes",
                    "aspect_ratio": "2:3",
                    "input": '{"nVariants": 2}',
                },
                {"id": "clip", "model": "veo3", "prompt": "a river", "aspect_ratio": "16:9"},
                {"id": "bad", "prompt": f"a storm {FAIL_MARKER}"},
            ]
        )
    )

    async def go() -> pd.DataFrame:
        async with make_client(emulator) as client:
            return (await generate_batch(client, store, rows))[0]

    out = asyncio.run(go())
    sheet = write_contact_sheet(store, out, "media")
    assert (sheet.cells, sheet.left_out, sheet.not_shown) == (4, 0, 1)
    assert "Not shown (1 fail): `bad`" in sheet.markdown
    with Image.open(io.BytesIO(store.read_bytes(sheet.uri))) as img:
        assert img.size == _grid_size(4, 1)
        rgb = img.convert("RGB")
        assert all(_far_from_background(rgb.getpixel(_cell_centre(i, 4))) for i in range(4))
    _preview(sheet.markdown)
