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
    task_id: str,
    prompt: str,
    aspect_ratio: str,
    resolution: str,
    fmt: str,
    scale: float,
    index: int = 0,
    *,
    seed: str | None = None,
) -> bytes:
    """Render a deterministic image for a task's result ``index``: colours from both, the prompt's text.

    Each result of a task gets its own colours and label, so the files of one task differ. With
    ``seed`` (a fixed seed, e.g. the prompt), the colours come from it and no task label is drawn:
    the same seed, prompt and size give the same image whatever the task.
    """
    width, height = image_size(aspect_ratio, resolution, scale)
    # Index 0 keeps the seed of a one-result task, so earlier renders stay byte-identical.
    source = seed if seed is not None else task_id
    seed_bytes = hashlib.sha256((source if index == 0 else f"{source}#{index}").encode()).digest()
    top = tuple(40 + b % 150 for b in seed_bytes[:3])
    bottom = tuple(40 + b % 150 for b in seed_bytes[3:6])
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
    if seed is None:
        label = task_id[:12] if index == 0 else f"{task_id[:12]} #{index + 1}"
        draw.text((font_size // 2, height - font_size - 4), label, fill=(230, 230, 230), font=font)
    buf = io.BytesIO()
    if fmt == "jpg":
        img.save(buf, format="JPEG", quality=85)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


#: Seconds of the emulator's video and audio results: long enough to probe, small enough to be quick.
MEDIA_SECONDS = 0.5
_VIDEO_SIZE = (64, 48)
_VIDEO_FPS = 10
_AUDIO_RATE = 22_050


@lru_cache(maxsize=64)
def render_media(
    media_type: str, seed: str, prompt: str = "", *, seconds: float = MEDIA_SECONDS
) -> tuple[bytes, str, str]:
    """A small real media file for ``seed`` (a task id and result index): ``(data, content_type, ext)``.

    ``media_type`` is a :class:`~kie_pipeline.client.registry.MediaType` value. Images are the
    default 1K-scaled render; video is H.264 in MP4 (what Veo and Runway return; 64x48, 10 fps);
    audio is MP3 (what Suno returns), mono 22.05 kHz, a tone whose pitch comes from ``seed``. Both
    are encoded by PyAV's bundled FFmpeg (libx264, libmp3lame), so the pipeline probes real files.
    """
    digest = hashlib.sha256(seed.encode()).digest()
    if media_type == "image":
        return render(seed, prompt, "1:1", "1K", "png", 0.0625), "image/png", "png"
    if media_type == "video":
        return _video(digest, seconds), "video/mp4", "mp4"
    if media_type == "audio":
        return _audio(digest, seconds), "audio/mpeg", "mp3"
    raise ValueError(f"unknown media type {media_type!r}")


def _video(digest: bytes, seconds: float) -> bytes:
    import av  # PyAV: imported here so image-only emulators never load FFmpeg

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=_VIDEO_FPS)
        stream.width, stream.height = _VIDEO_SIZE
        stream.pix_fmt = "yuv420p"
        start = tuple(40 + b % 150 for b in digest[:3])
        frames = max(1, round(seconds * _VIDEO_FPS))
        for i in range(frames):
            # A colour that drifts frame by frame, so the frames differ and the file is a real clip.
            colour = tuple((c + 12 * i) % 256 for c in start)
            frame = av.VideoFrame.from_image(Image.new("RGB", _VIDEO_SIZE, colour))
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


def _audio(digest: bytes, seconds: float) -> bytes:
    import math

    import av
    import numpy as np

    pitch = 220 + digest[0] * 2
    count = round(seconds * _AUDIO_RATE)
    t = np.arange(count, dtype=np.float32) / _AUDIO_RATE
    wave = (0.4 * np.sin(2 * math.pi * pitch * t)).astype(np.float32).reshape(1, -1)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=_AUDIO_RATE)
        stream.layout = "mono"
        frame_size = 1152  # one MP3 frame's samples
        for start in range(0, count, frame_size):
            chunk = np.ascontiguousarray(wave[:, start : start + frame_size])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate = _AUDIO_RATE
            frame.pts = start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()
