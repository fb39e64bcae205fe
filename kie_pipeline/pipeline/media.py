"""What a result file is: its media type, container, MIME type, size in pixels and duration.

Images are read with Pillow; video and audio with PyAV (FFmpeg's demuxers and decoders, bundled in
its wheel), never by parsing containers by hand. PyAV is imported on first use of a video or audio
file, so image-only runs never pay its import time.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from PIL import Image, ImageDraw, UnidentifiedImageError

from kie_pipeline.client.errors import KieValidationError
from kie_pipeline.client.registry import MediaType, get_model

#: Pillow's format names → the file extension of the durable copy.
_IMAGE_EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif"}
_IMAGE_MIME = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}
#: FFmpeg's demuxer names (``container.format.name`` lists aliases, comma separated) → extension
#: and MIME type. The first alias found wins; "mov,mp4,m4a,..." is told apart by its streams.
_AV_FORMATS = {
    "mp4": ("mp4", "video/mp4"),
    "mov": ("mp4", "video/mp4"),
    "webm": ("webm", "video/webm"),
    "matroska": ("mkv", "video/x-matroska"),
    "mp3": ("mp3", "audio/mpeg"),
    "wav": ("wav", "audio/wav"),
    "ogg": ("ogg", "audio/ogg"),
    "flac": ("flac", "audio/flac"),
    "aac": ("aac", "audio/aac"),
}
#: The MIME type of a durable copy by its extension (for records written before media types).
MIME_BY_EXT = {
    **_IMAGE_MIME,
    "jpeg": "image/jpeg",
    **{ext: mime for ext, mime in _AV_FORMATS.values()},
    "m4a": "audio/mp4",
}


class MediaError(ValueError):
    """The bytes are not a readable file of the expected media type (or PyAV is missing)."""


@dataclass(frozen=True)
class MediaInfo:
    """The properties of one result file that the catalog keeps."""

    media_type: MediaType
    #: The durable copy's extension, from the detected container (png, jpg, mp4, webm, mp3, wav...).
    ext: str
    mime_type: str
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None


def media_of(model: Any) -> MediaType | None:
    """What ``model`` returns (its registry entry's ``media``); None for a model not in the registry."""
    try:
        return get_model(model).media
    except KieValidationError:
        return None


def _av() -> Any:
    try:
        import av
    except ImportError as exc:  # pragma: no cover - av is a dependency; a broken install says so
        raise MediaError(
            "reading video and audio results needs PyAV (`pip install av`, a dependency of "
            "kie-pipeline); the file was downloaded but cannot be described without it"
        ) from exc
    return av


def probe(data: bytes, media: MediaType | str | None = None) -> MediaInfo:
    """Describe ``data``, a file of ``media`` (None: whatever it is; images are tried first).

    Raises :class:`MediaError` when the bytes are not a readable file of that media type.
    """
    kind = MediaType(media) if media else None
    if kind in (MediaType.IMAGE, None):
        try:
            return _probe_image(data)
        except MediaError:
            if kind is MediaType.IMAGE:
                raise
    return _probe_av(data, kind)


def _probe_image(data: bytes) -> MediaInfo:
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height, fmt = img.width, img.height, (img.format or "").upper()
    except (UnidentifiedImageError, OSError) as exc:
        raise MediaError("not a readable image") from exc
    ext = _IMAGE_EXT.get(fmt, fmt.lower() or "bin")
    return MediaInfo(MediaType.IMAGE, ext, _IMAGE_MIME.get(ext, "application/octet-stream"), width, height)


def _probe_av(data: bytes, kind: MediaType | None) -> MediaInfo:
    av = _av()
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            video = next(iter(container.streams.video), None)
            audio = next(iter(container.streams.audio), None)
            names = container.format.name.split(",")
            duration = _duration(container, video or audio)
            width = video.codec_context.width if video is not None else None
            height = video.codec_context.height if video is not None else None
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise MediaError(f"not a readable {kind or 'media'} file") from exc
    found = MediaType.VIDEO if video is not None else MediaType.AUDIO if audio is not None else None
    if found is None or (kind is not None and found is not kind):
        raise MediaError(f"expected {kind or 'video or audio'}, found {found or 'no media streams'}")
    unknown = (names[0], "application/octet-stream")
    ext, mime = next((_AV_FORMATS[n] for n in names if n in _AV_FORMATS), unknown)
    if found is MediaType.AUDIO and ext == "mp4":
        ext, mime = "m4a", "audio/mp4"
    return MediaInfo(found, ext, mime, width, height, duration)


def _duration(container: Any, stream: Any) -> float | None:
    # The container's figure (microseconds) when the demuxer knows it, else the stream's own.
    if container.duration:
        return round(container.duration / 1_000_000, 3)
    if stream is not None and stream.duration and stream.time_base:
        return round(float(stream.duration * Fraction(stream.time_base)), 3)
    return None


def thumbnail(data: bytes, media: MediaType | str, size: int = 96) -> Image.Image | None:
    """A small RGB preview: the image itself, a video's first frame, or an audio waveform.

    None when the file cannot be decoded (a preview is never worth failing a run for).
    """
    try:
        kind = MediaType(media)
        if kind is MediaType.IMAGE:
            with Image.open(io.BytesIO(data)) as img:
                out = img.convert("RGB")
        elif kind is MediaType.VIDEO:
            out = _first_frame(data)
        else:
            out = _waveform(data, size)
    except (MediaError, OSError, ValueError):
        return None
    if out is None:
        return None
    out.thumbnail((size, size))
    return out


def _first_frame(data: bytes) -> Image.Image | None:
    av = _av()
    try:
        with av.open(io.BytesIO(data)) as container:
            for frame in container.decode(video=0):
                return frame.to_image()
    except av.error.FFmpegError as exc:
        raise MediaError("no decodable video frame") from exc
    return None


#: The waveform preview covers at most this many seconds: decoding a whole 4-minute track for a
#: 96-pixel picture would cost about a second per row of the gallery.
WAVEFORM_SECONDS = 30.0


def _waveform(data: bytes, size: int) -> Image.Image:
    """Peak amplitude per column of the first channel (first WAVEFORM_SECONDS), drawn as bars."""
    av = _av()
    peaks: list[float] = []
    try:
        with av.open(io.BytesIO(data)) as container:
            for frame in container.decode(audio=0):
                if frame.time is not None and frame.time > WAVEFORM_SECONDS:
                    break
                samples = frame.to_ndarray()
                first = samples[0] if samples.ndim > 1 else samples
                # Integer samples peak at 2**(bits-1); float samples at 1.0.
                scale = float(1 << (8 * first.dtype.itemsize - 1)) if first.dtype.kind in "iu" else 1.0
                if len(first):
                    peaks.append(float(abs(first).max()) / scale)
    except av.error.FFmpegError as exc:
        raise MediaError("no decodable audio") from exc
    img = Image.new("RGB", (size, size // 2), (32, 32, 40))
    draw = ImageDraw.Draw(img)
    if peaks:
        mid = size // 4
        for x in range(size):
            peak = min(1.0, peaks[x * len(peaks) // size])
            half = max(1, round(peak * (mid - 1)))
            draw.line([(x, mid - half), (x, mid + half)], fill=(120, 200, 255))
    return img
