"""Local validation of task inputs, before any request is made (and before any credit is spent).

Only ``nano-banana-pro`` is validated, exactly as Kie documents it; other models pass through until a
model registry exists.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .errors import KieValidationError

NANO_BANANA_PRO = "nano-banana-pro"
ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9", "auto")
RESOLUTIONS = ("1K", "2K", "4K")
OUTPUT_FORMATS = ("png", "jpg")
MAX_PROMPT_CHARS = 10_000
MAX_IMAGE_INPUTS = 8

_DEFAULTS: dict[str, Any] = {
    "image_input": [],
    "aspect_ratio": "1:1",
    "resolution": "1K",
    "output_format": "png",
}


def is_http_url(value: str) -> bool:
    """True for an absolute http(s) URL with a host."""
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def validate_input(model: str, input: dict[str, Any]) -> dict[str, Any]:
    """Check ``input`` for ``model`` and return it with documented defaults filled in.

    Filling defaults makes two requests that mean the same thing identical, which the pipeline
    relies on to recognise work it has already paid for.

    Raises:
        KieValidationError: naming the first invalid field.
    """
    if not isinstance(model, str) or not model.strip():
        raise KieValidationError("The model must be a non-empty string.", code=None, field="model")
    if not isinstance(input, dict):
        raise KieValidationError("The input must be an object.", code=None, field="input")
    if model != NANO_BANANA_PRO:
        return dict(input)

    unknown = sorted(set(input) - {"prompt", *_DEFAULTS})
    if unknown:
        # A misspelt field would silently be ignored by Kie and cost credits for the wrong image.
        raise KieValidationError(
            f"Unknown input field(s) for {model}: {', '.join(unknown)}.", code=None, field=unknown[0]
        )
    out = {**_DEFAULTS, **{k: v for k, v in input.items() if v is not None}}

    prompt = out.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise KieValidationError("prompt is required and must be non-empty text.", code=None, field="prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise KieValidationError(
            f"prompt has {len(prompt)} characters; {model} allows at most {MAX_PROMPT_CHARS}.",
            code=None,
            field="prompt",
        )

    images = out["image_input"]
    if not isinstance(images, (list, tuple)):
        raise KieValidationError("image_input must be a list of URLs.", code=None, field="image_input")
    if len(images) > MAX_IMAGE_INPUTS:
        raise KieValidationError(
            f"image_input has {len(images)} images; {model} allows at most {MAX_IMAGE_INPUTS}.",
            code=None,
            field="image_input",
        )
    for i, url in enumerate(images):
        if not isinstance(url, str) or not is_http_url(url):
            raise KieValidationError(
                f"image_input[{i}] is not an http(s) URL: {str(url)[:80]!r}.", code=None, field="image_input"
            )
    out["image_input"] = list(images)

    for name, allowed in (
        ("aspect_ratio", ASPECT_RATIOS),
        ("resolution", RESOLUTIONS),
        ("output_format", OUTPUT_FORMATS),
    ):
        if out[name] not in allowed:
            raise KieValidationError(
                f"{name} {out[name]!r} is not one of {', '.join(allowed)}.", code=None, field=name
            )
    return out
