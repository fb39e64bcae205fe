"""Images the emulator renders itself: the requested size and format, showing the prompt."""

from __future__ import annotations

import hashlib
import io
import textwrap
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

LONG_SIDE = {"1K": 1024, "2K": 2048, "4K": 4096}


def image_size(aspect_ratio: str, resolution: str, scale: float = 1.0) -> tuple[int, int]:
    """Width and height for an aspect ratio and resolution (1K is 1024 px on the long side)."""
    long_side = max(16, round(LONG_SIDE.get(resolution, 1024) * scale))
    if aspect_ratio in ("auto", "", None) or ":" not in aspect_ratio:
        aspect_ratio = "1:1"
    w, h = (int(x) for x in aspect_ratio.split(":"))
    if w >= h:
        return long_side, max(1, round(long_side * h / w))
    return max(1, round(long_side * w / h)), long_side


@lru_cache(maxsize=64)
def render(
    task_id: str, prompt: str, aspect_ratio: str, resolution: str, fmt: str, scale: float, index: int = 0
) -> bytes:
    """Render a deterministic image for a task's result ``index``: colours from both, the prompt's text.

    Each result of a task gets its own colours and label, so the files of one task differ.
    """
    width, height = image_size(aspect_ratio, resolution, scale)
    # Index 0 keeps the seed of a one-result task, so earlier renders stay byte-identical.
    seed = hashlib.sha256((task_id if index == 0 else f"{task_id}#{index}").encode()).digest()
    top = tuple(40 + b % 150 for b in seed[:3])
    bottom = tuple(40 + b % 150 for b in seed[3:6])
    img = Image.new("RGB", (width, height), top)
    draw = ImageDraw.Draw(img)
    for y in range(0, height, max(1, height // 32)):
        t = y / max(1, height - 1)
        colour = tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        draw.rectangle([0, y, width, y + max(1, height // 32)], fill=colour)
    font_size = max(8, width // 24)
    font = ImageFont.load_default(size=font_size)
    chars_per_line = max(8, int(width / (font_size * 0.55)))
    lines = textwrap.wrap(prompt, chars_per_line)[: max(1, (height - 2 * font_size) // (font_size + 4))]
    y = font_size
    for line in lines:
        draw.text((font_size // 2, y), line, fill=(255, 255, 255), font=font)
        y += font_size + 4
    label = task_id[:12] if index == 0 else f"{task_id[:12]} #{index + 1}"
    draw.text((font_size // 2, height - font_size - 4), label, fill=(230, 230, 230), font=font)
    buf = io.BytesIO()
    if fmt == "jpg":
        img.save(buf, format="JPEG", quality=85)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()
