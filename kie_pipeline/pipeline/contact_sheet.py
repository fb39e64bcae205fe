"""Contact sheets: one grid image of a result table's thumbnails, written to the store.

A sheet shows the table's ``success`` rows, in table order, each cell a thumbnail (the image itself,
a video's first frame, an audio file's waveform: :func:`~kie_pipeline.pipeline.media.thumbnail`)
labelled with the row's id (``id#n`` for a task's further results). Rows that did not succeed
(``fail``, ``uncertain``) have no file to show: they are left out of the grid and counted, with their
ids, in the caption instead. A success row whose copy cannot be read or decoded keeps its cell, drawn
as a grey "no preview" placeholder, so the grid always covers every success row it shows.

The sheet is written whole under ``{store}/contact_sheets/`` and described by a small markdown
snippet with a downscaled inline JPEG (a data URI) sized for Dagster's metadata. No Dagster import
here: the assets put the snippet into their metadata.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
import re
from dataclasses import dataclass

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from .media import thumbnail
from .store import TaskStore, join

#: At most this many cells per sheet; further success rows are counted as left out.
MAX_CELLS = 48
#: At most this many columns; fewer when there are fewer cells.
MAX_COLUMNS = 8
#: Side of a cell's thumbnail area in the full sheet, in pixels.
CELL_SIZE = 192
#: Height of the label strip under each thumbnail.
LABEL_HEIGHT = 22
#: Gap between cells and around the grid.
GAP = 6
#: The markdown snippet (inline preview included) stays under this many characters.
MAX_MARKDOWN_CHARS = 60_000
#: The inline preview is at most this wide (it is shrunk further when it would not fit).
PREVIEW_WIDTH = 720
#: Failed ids named in the caption at most.
MAX_NAMED_FAILURES = 10

NO_RESULTS = "_no results yet_"

_BACKGROUND = (24, 24, 28)
_PLACEHOLDER = (70, 70, 76)
_LABEL = (235, 235, 235)
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class ContactSheet:
    """What :func:`write_contact_sheet` wrote.

    ``uri`` is the full sheet in the store (None when there was nothing to show), ``cells`` how many
    thumbnails it holds, ``left_out`` how many success rows did not fit (beyond ``MAX_CELLS``),
    ``not_shown`` how many rows were not successes (not drawn), and ``markdown`` the snippet for
    Dagster's metadata: the inline preview, the counts and the full sheet's location.
    """

    uri: str | None
    cells: int
    left_out: int
    not_shown: int
    markdown: str


def sheet_uri(store: TaskStore, name: str) -> str:
    """Where the sheet called ``name`` goes: ``{store}/contact_sheets/{safe name}.jpg``.

    Names (partition keys) may hold any character: anything outside ``[A-Za-z0-9._-]`` is replaced and
    a short hash of the original name added, so two names never share a file and none escapes the folder.
    """
    safe = _SAFE.sub("_", name).strip("._")[:64]
    if safe != name:
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        safe = f"{safe}-{digest}" if safe else digest
    return join(store.root, "contact_sheets", f"{safe}.jpg")


def write_contact_sheet(
    store: TaskStore,
    rows: pd.DataFrame,
    name: str,
    *,
    max_cells: int = MAX_CELLS,
    cell_size: int = CELL_SIZE,
    max_markdown_chars: int = MAX_MARKDOWN_CHARS,
) -> ContactSheet:
    """Draw the contact sheet of ``rows`` (a result table), write it to ``store`` and describe it.

    ``name`` names the file (a batch, say: see :func:`sheet_uri`). Without a success row nothing is
    written and the markdown reads ``_no results yet_`` (with the rows that failed, if any). The file
    is replaced whole (atomically on local disks), so a reader never sees half a sheet.
    """
    if max_cells < 1:
        raise ValueError("max_cells must be at least 1")
    success = (rows["state"].astype("string") == "success").fillna(False).to_numpy(dtype=bool)
    ok, others = rows[success], rows[~success]
    caption_failed = _failures(others)
    if ok.empty:
        text = NO_RESULTS if not caption_failed else f"{NO_RESULTS}\n\n{caption_failed}"
        return ContactSheet(uri=None, cells=0, left_out=0, not_shown=len(others), markdown=text)

    shown = ok.head(max_cells)
    sheet = _draw(store, shown, cell_size)
    uri = sheet_uri(store, name)
    store.write_bytes(uri, _jpeg(sheet, quality=85))

    left_out = len(ok) - len(shown)
    counts = f"{len(shown)} of {len(ok)} results shown"
    if left_out:
        counts += f" ({left_out} left out: a sheet holds at most {max_cells})"
    lines = [counts]
    if caption_failed:
        lines.append(caption_failed)
    lines.append(f"Full sheet: `{uri}`")
    tail = "\n\n".join(lines)
    alt = f"contact sheet {name}".replace("]", ")").replace("[", "(")
    budget = max_markdown_chars - len(tail) - len(alt) - 40
    data = _preview(sheet, budget)
    image = f"![{alt}](data:image/jpeg;base64,{data})\n\n" if data else "_(sheet too large to preview)_\n\n"
    return ContactSheet(
        uri=uri, cells=len(shown), left_out=left_out, not_shown=len(others), markdown=image + tail
    )


def _failures(others: pd.DataFrame) -> str:
    """A caption line for the rows that are not drawn: their count by state and the first ids."""
    if others.empty:
        return ""
    by_state = others["state"].astype("string").fillna("unknown").value_counts().to_dict()
    counted = ", ".join(f"{n} {state}" for state, n in sorted(by_state.items()))
    ids = [f"`{_label(row)}`" for row in others.head(MAX_NAMED_FAILURES).itertuples()]
    more = f" and {len(others) - len(ids)} more" if len(others) > len(ids) else ""
    return f"Not shown ({counted}): {', '.join(ids)}{more}"


def _label(row: object) -> str:
    """The row's id, with ``#n`` for a task's result n > 0."""
    index = getattr(row, "result_index", 0)
    ident = str(getattr(row, "id", "?")).replace("`", "'")
    return ident if index is None or pd.isna(index) or int(index) == 0 else f"{ident}#{int(index)}"


def _media(row: object) -> str:
    media = getattr(row, "media_type", None)
    return "image" if media is None or pd.isna(media) else str(media)


def _draw(store: TaskStore, shown: pd.DataFrame, cell_size: int) -> Image.Image:
    """The grid: up to MAX_COLUMNS columns, each cell a centred thumbnail over its label."""
    count = len(shown)
    columns = min(MAX_COLUMNS, count)
    rows = math.ceil(count / columns)
    cell_w, cell_h = cell_size, cell_size + LABEL_HEIGHT
    width = GAP + columns * (cell_w + GAP)
    height = GAP + rows * (cell_h + GAP)
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=max(10, LABEL_HEIGHT - 8))
    for i, row in enumerate(shown.itertuples()):
        x = GAP + (i % columns) * (cell_w + GAP)
        y = GAP + (i // columns) * (cell_h + GAP)
        media = _media(row)
        thumb = _thumbnail(store, getattr(row, "image_uri", None), media, cell_size)
        if thumb is None:
            draw.rectangle([x, y, x + cell_w - 1, y + cell_size - 1], fill=_PLACEHOLDER)
            draw.text((x + 8, y + cell_size // 2 - 8), "no preview", fill=_LABEL, font=font)
        else:
            sheet.paste(thumb, (x + (cell_w - thumb.width) // 2, y + (cell_size - thumb.height) // 2))
        label = _label(row) if media == "image" else f"{_label(row)} · {media}"
        draw.text((x + 2, y + cell_size + 3), _fit(draw, label, font, cell_w - 4), fill=_LABEL, font=font)
    return sheet


def _thumbnail(store: TaskStore, uri: object, media: str, size: int) -> Image.Image | None:
    """The cell's picture, or None when the copy is missing, unreadable or not decodable."""
    if uri is None or pd.isna(uri):
        return None
    try:
        data = store.read_bytes(str(uri))
    except (OSError, ValueError):
        return None
    thumb = thumbnail(data, media, size)
    if thumb is not None and max(thumb.size) < size:
        # Small files (a 64x48 clip) are scaled up to the cell, so every cell reads the same.
        scale = size / max(thumb.size)
        thumb = thumb.resize((max(1, round(thumb.width * scale)), max(1, round(thumb.height * scale))))
    return thumb


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.ImageFont, width: int) -> str:
    """``text``, cut with an ellipsis so that it fits ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _jpeg(img: Image.Image, *, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _preview(sheet: Image.Image, budget: int) -> str:
    """The sheet shrunk to at most PREVIEW_WIDTH, as base64 JPEG of at most ``budget`` characters.

    The width and quality step down until it fits; '' when even a tiny preview would not.
    """
    width = min(PREVIEW_WIDTH, sheet.width)
    quality = 75
    while width >= 64:
        height = max(1, round(sheet.height * width / sheet.width))
        small = sheet.resize((width, height), Image.Resampling.LANCZOS)
        data = base64.b64encode(_jpeg(small, quality=quality)).decode()
        if len(data) <= budget:
            return data
        if quality > 50:
            quality -= 10
        else:
            width = int(width * 0.8)
    return ""
