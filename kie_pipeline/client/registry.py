"""The model registry: every Kie model this client knows, each written once.

An entry says which API family serves the model (its create and status endpoints and the decoder
of its status answers), the model's input fields as a pydantic model (Kie's names, types, enums,
limits and defaults, from ``shared/kie``: ``kie-api-docs.md`` and ``kie-models.md`` section 6),
how the manifest's named columns map to those fields, what media it returns and how many results,
and the price used for estimates. Validation of manifest rows, of client calls and the emulator's
acceptance all come from here; golden request and response examples taken from Kie's documents
(``kie_pipeline_tests/golden/``) check the registry and the emulator independently.

Adding a model is one :class:`ModelSpec` in :data:`MODELS` plus its golden examples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .errors import KieValidationError
from .families import (
    decode_4o_image,
    decode_4o_image_callback,
    decode_aleph,
    decode_aleph_callback,
    decode_flux_kontext,
    decode_flux_kontext_callback,
    decode_jobs_callback,
    decode_runway,
    decode_runway_callback,
    decode_suno,
    decode_suno_callback,
    decode_veo,
    decode_veo_callback,
    flat_body,
    jobs_body,
)
from .models import TaskRecord


def is_http_url(value: str) -> bool:
    """True for an absolute http(s) URL with a host."""
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _http_url(value: str) -> str:
    if not is_http_url(value):
        raise ValueError(f"is not an http(s) URL: {value[:80]!r}")
    return value


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must be non-empty text")
    return value


#: A public http(s) URL (Kie fetches input images itself).
Url = Annotated[str, AfterValidator(_http_url)]
#: The image types Kie's models accept as inputs (kie-api-docs.md; kie-models.md section 6).
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
#: Kie's "MB" read as 10**6 bytes: the stricter reading, so no file we pass is over Kie's limit.
MB = 1_000_000


def Prompt(max_chars: int) -> Any:
    """A prompt of 1 to ``max_chars`` characters, not blank."""
    return Annotated[str, Field(min_length=1, max_length=max_chars), AfterValidator(_text)]


class MediaType(StrEnum):
    """What a model returns."""

    IMAGE = "image"
    VIDEO = "video"
    AUDIO = "audio"


@dataclass(frozen=True)
class ApiFamily:
    """One of Kie's APIs: where tasks are created and queried, and how its answers decode.

    The jobs API posts ``{model, input}``; the other families post their fields flat
    (``{prompt, ..., callBackUrl}``), naming the model under ``model_key`` when they have several
    (None: the family is one model). ``default_model`` is the model Kie picks when a flat body names
    none (the emulator reads bodies that way, as Kie documents them).
    """

    name: str
    create_path: str
    status_path: str
    decode: Callable[[Any], TaskRecord]
    decode_callback: Callable[[Any], TaskRecord] = decode_jobs_callback
    flat: bool = False
    model_key: str | None = "model"
    default_model: str | None = None
    #: Registry names are this prefix + Kie's model value (Suno's ``V4_5`` is ``suno/V4_5`` here).
    model_prefix: str = ""
    #: Kie's schema requires ``callBackUrl`` (Suno): a create call without one is refused.
    callback_required: bool = False

    def body(self, model: str, input: Mapping[str, Any], callback_url: str | None = None) -> dict[str, Any]:
        """The create call's JSON body for ``model`` with (validated) ``input``."""
        if not self.flat:
            return jobs_body(model, input, callback_url)
        return flat_body(self.model_key)(model.removeprefix(self.model_prefix), input, callback_url)

    def split_body(self, body: Mapping[str, Any]) -> tuple[str | None, Any]:
        """The model and input a create body asks for (the inverse of :meth:`body`, callBackUrl aside)."""
        if not self.flat:
            return body.get("model"), body.get("input")
        rest = {k: v for k, v in body.items() if k != "callBackUrl"}
        model = rest.pop(self.model_key, None) if self.model_key else None
        if isinstance(model, str) and model:
            return self.model_prefix + model, rest
        return self.default_model, rest


#: The jobs ("market") API: ``POST /api/v1/jobs/createTask`` with ``{model, input}``.
JOBS = ApiFamily("jobs", "/api/v1/jobs/createTask", "/api/v1/jobs/recordInfo", TaskRecord.from_api)
#: 4o Image (GPT-Image-1): one model, flat body (kie-models.md section 1).
GPT4O_IMAGE = ApiFamily(
    "4o-image", "/api/v1/gpt4o-image/generate", "/api/v1/gpt4o-image/record-info", decode_4o_image,
    decode_4o_image_callback, flat=True, model_key=None, default_model="gpt4o-image",
)  # fmt: skip
#: Flux Kontext: ``model`` flux-kontext-pro (Kie's default) or flux-kontext-max (section 2).
FLUX_KONTEXT = ApiFamily(
    "flux-kontext", "/api/v1/flux/kontext/generate", "/api/v1/flux/kontext/record-info",
    decode_flux_kontext, decode_flux_kontext_callback, flat=True, default_model="flux-kontext-pro",
)  # fmt: skip
#: Suno music: ``model`` V4 ... V5_5 (section 5); several tracks per task; callBackUrl required.
SUNO = ApiFamily(
    "suno", "/api/v1/generate", "/api/v1/generate/record-info", decode_suno, decode_suno_callback,
    flat=True, model_prefix="suno/", callback_required=True,
)  # fmt: skip
#: Veo 3.1 video: ``model`` veo3 (Quality), veo3_fast (Kie's default), veo3_lite (section 3).
VEO = ApiFamily(
    "veo", "/api/v1/veo/generate", "/api/v1/veo/record-info", decode_veo, decode_veo_callback,
    flat=True, default_model="veo3_fast",
)  # fmt: skip
#: Runway video: one model, ``state`` values, callBackUrl "required" in the text only (section 4).
RUNWAY = ApiFamily(
    "runway", "/api/v1/runway/generate", "/api/v1/runway/record-detail", decode_runway,
    decode_runway_callback, flat=True, model_key=None, default_model="runway",
)  # fmt: skip
#: Runway Aleph video-to-video: one model, ``successFlag`` 1 or 0 (running or failed).
ALEPH = ApiFamily(
    "runway-aleph", "/api/v1/aleph/generate", "/api/v1/aleph/record-info", decode_aleph,
    decode_aleph_callback, flat=True, model_key=None, default_model="runway-aleph",
)  # fmt: skip
#: Every family, by name.
FAMILIES = {f.name: f for f in (JOBS, GPT4O_IMAGE, FLUX_KONTEXT, SUNO, VEO, RUNWAY, ALEPH)}


@dataclass(frozen=True)
class Output:
    """What a task with a given input returns (used to render in the emulator and to name files)."""

    aspect_ratio: str
    resolution: str
    format: Literal["png", "jpg", "mp3", "mp4"]
    count: int = 1


class _Input(BaseModel):
    # Unknown fields are refused: Kie would ignore a misspelt one and charge for the wrong image.
    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class ModelSpec:
    """One model: its family, input fields, manifest columns, media, results and price."""

    name: str
    family: ApiFamily
    input: type[_Input]
    media: MediaType
    #: Manifest named column → input field (columns a model does not take are refused, not dropped).
    columns: Mapping[str, str]
    output: Callable[[Mapping[str, Any]], Output]
    #: Estimated credits per task, by the value of ``price_field`` (``"*"``: any value).
    prices: Mapping[str, float] = field(default_factory=dict)
    price_field: str | None = None
    #: Input fields that take image URLs → the documented largest file per image (bytes). These
    #: fields may also hold local files in a manifest (uploaded first; types in IMAGE_TYPES).
    image_fields: Mapping[str, int] = field(default_factory=dict)

    def validate(self, input: Mapping[str, Any]) -> dict[str, Any]:
        """``input`` checked and completed with Kie's documented defaults.

        Defaults are filled in so that two requests that mean the same thing are identical (the
        pipeline's request key depends on it). Raises :class:`KieValidationError` naming the field.
        """
        try:
            parsed = self.input.model_validate(dict(input))
        except ValidationError as exc:
            err = exc.errors()[0]
            name = str(err["loc"][0]) if err["loc"] else "input"
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"][1:])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"is not a field of {self.name} (its fields: {', '.join(self.input.model_fields)})"
            head, _, rest = msg.partition(": ")
            if not err["loc"] and head in self.input.model_fields:
                # A rule across fields names the field it is about first ("prompt: ...").
                name, msg = head, rest
            raise KieValidationError(f"{name}{where}: {msg}.", code=None, field=name) from None
        return parsed.model_dump(mode="json", exclude_none=True)

    def price(self, input: Mapping[str, Any], prices: Mapping[str, Any] | None = None) -> float | None:
        """Estimated credits of one task (``prices`` replaces this model's table, same shape)."""
        table = prices if prices is not None else self.prices
        key = "*"
        if self.price_field:
            # An input that leaves the field out gets Kie's default, and so its price.
            key = str(input.get(self.price_field, self.input.model_fields[self.price_field].default))
        value = table.get(key, table.get("*"))
        return None if value is None else float(value)


# -- input models (Kie's field names) --------------------------------------------------------------

ASPECT_RATIOS = Literal["1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9", "auto"]
RESOLUTION = Literal["1K", "2K", "4K"]
SEEDREAM_SIZES = Literal[
    "square", "square_hd", "portrait_4_3", "portrait_3_2", "portrait_16_9",
    "landscape_4_3", "landscape_3_2", "landscape_16_9", "landscape_21_9",
]  # fmt: skip
#: The aspect ratio of each size preset (to render in the emulator).
PRESET_RATIOS = {
    "square": "1:1", "square_hd": "1:1", "portrait_4_3": "3:4", "portrait_3_2": "2:3",
    "portrait_16_9": "9:16", "landscape_4_3": "4:3", "landscape_3_2": "3:2", "landscape_16_9": "16:9",
    "landscape_21_9": "21:9",
}  # fmt: skip


class NanoBananaProInput(_Input):
    """``nano-banana-pro`` (kie-api-docs.md)."""

    prompt: Prompt(10_000)
    image_input: list[Url] = Field(default_factory=list, max_length=8)
    aspect_ratio: ASPECT_RATIOS = "1:1"
    resolution: RESOLUTION = "1K"
    output_format: Literal["png", "jpg"] = "png"


class NanoBananaInput(_Input):
    """``google/nano-banana`` (kie-models.md section 6)."""

    prompt: Prompt(5000)
    image_size: ASPECT_RATIOS = "1:1"
    output_format: Literal["png", "jpeg"] = "png"


class NanoBananaEditInput(NanoBananaInput):
    """``google/nano-banana-edit``: the same, with 1 to 10 input images."""

    image_urls: list[Url] = Field(min_length=1, max_length=10)


class NanoBanana2Input(_Input):
    """``nano-banana-2`` (``google_search`` is in one copy of Kie's page only: accepted, optional)."""

    prompt: Prompt(20_000)
    image_input: list[Url] = Field(default_factory=list, max_length=14)
    aspect_ratio: Literal[
        "1:1", "1:4", "1:8", "2:3", "3:2", "3:4", "4:1", "4:3", "4:5", "5:4", "8:1", "9:16", "16:9",
        "21:9", "auto",
    ] = "auto"  # fmt: skip
    resolution: RESOLUTION = "1K"
    output_format: Literal["jpg", "png"] = "jpg"
    google_search: bool | None = None


class SeedreamV4Input(_Input):
    """``bytedance/seedream-v4-text-to-image``: up to 6 images per task (``max_images``)."""

    prompt: Prompt(5000)
    image_size: SEEDREAM_SIZES = "square_hd"
    image_resolution: RESOLUTION = "1K"
    max_images: int = Field(default=1, ge=1, le=6)
    seed: int | None = None
    nsfw_checker: bool | None = None


class Flux2TextInput(_Input):
    """``flux-2/pro-text-to-image`` (prompt 3-5000 on one page, up to 5000 on another: 1-5000)."""

    prompt: Prompt(5000)
    aspect_ratio: Literal["1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3"] = "1:1"
    resolution: Literal["1K", "2K"] = "1K"
    nsfw_checker: bool | None = None


class Flux2ImageInput(Flux2TextInput):
    """``flux-2/pro-image-to-image``: 1 to 8 input images; ``auto`` takes the first input's ratio."""

    input_urls: list[Url] = Field(min_length=1, max_length=8)
    aspect_ratio: Literal["1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "auto"] = "1:1"


def _text_prompt() -> Any:
    """A prompt Kie gives no length limit for: any non-blank text."""
    return Annotated[str, Field(min_length=1), AfterValidator(_text)]


def _one_url(value: Any) -> Any:
    # The manifest's image_input column is a list; a field that takes one image accepts a list of one.
    if isinstance(value, list) and len(value) == 1:
        return value[0]
    return value


class Gpt4oImageInput(_Input):
    """4o Image (``/api/v1/gpt4o-image/generate``, kie-models.md section 1): ``size`` is the only
    required field; at least one of ``prompt`` and ``filesUrl``.

    ``nVariants`` is in the 2025 schema and the current quickstart but not the current schema
    (unconfirmed): accepted, and left out unless given (Kie's default is 1 result).
    """

    size: Literal["1:1", "3:2", "2:3"]
    prompt: _text_prompt() | None = None
    filesUrl: list[Url] | None = Field(default=None, min_length=1, max_length=5)
    maskUrl: Url | None = None
    nVariants: Literal[1, 2, 4] | None = None
    isEnhance: bool = False
    uploadCn: bool | None = None
    enableFallback: bool = False
    fallbackModel: Literal["GPT_IMAGE_1", "FLUX_MAX"] = "FLUX_MAX"
    #: Deprecated single-image form of ``filesUrl``.
    fileUrl: Url | None = None

    @model_validator(mode="after")
    def _prompt_or_files(self) -> Gpt4oImageInput:
        if self.prompt is None and not self.filesUrl and self.fileUrl is None:
            raise ValueError("prompt or filesUrl is required")
        return self


class FluxKontextInput(_Input):
    """Flux Kontext (``/api/v1/flux/kontext/generate``, section 2); the model (pro or max) is the
    registry entry. ``inputImage`` makes it an edit: ``safetyTolerance`` is then 0-2 (else 0-6), and
    an omitted ``aspectRatio`` keeps the source's ratio (so it is filled with 16:9 only without one).
    """

    prompt: _text_prompt()
    inputImage: Annotated[Url | None, BeforeValidator(_one_url)] = None
    aspectRatio: Literal["21:9", "16:9", "4:3", "1:1", "3:4", "9:16"] | None = None
    outputFormat: Literal["jpeg", "png"] = "jpeg"
    enableTranslation: bool = True
    promptUpsampling: bool = False
    safetyTolerance: int = Field(default=2, ge=0, le=6)
    uploadCn: bool | None = None
    watermark: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _generate_ratio(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("inputImage") and data.get("aspectRatio") is None:
            return {**data, "aspectRatio": "16:9"}
        return data

    @field_validator("safetyTolerance")
    @classmethod
    def _edit_tolerance(cls, value: int, info: ValidationInfo) -> int:
        if info.data.get("inputImage") and value > 2:
            raise ValueError("should be 0-2 when editing (inputImage given)")
        return value


Weight = Annotated[float, Field(ge=0, le=1, multiple_of=0.01)]


class SunoInput(_Input):
    """Suno ``/api/v1/generate`` (kie-models.md section 5), V4_5 and later limits.

    Kie's schema requires ``customMode`` and ``instrumental`` without giving defaults: both are
    filled with false (the simple mode: ``prompt`` is an idea of at most 500 characters). In custom
    mode ``style`` and ``title`` are required, and ``prompt`` (the exact lyrics) unless instrumental.
    """

    #: (prompt in custom mode, style) limits of this model version.
    LIMITS: ClassVar[tuple[int, int]] = (5000, 1000)

    prompt: Annotated[str, AfterValidator(_text)] | None = None
    customMode: bool = False
    instrumental: bool = False
    style: str | None = None
    title: Annotated[str, Field(max_length=80)] | None = None
    negativeTags: str | None = None
    vocalGender: Literal["m", "f"] | None = None
    styleWeight: Weight | None = None
    weirdnessConstraint: Weight | None = None
    audioWeight: Weight | None = None
    personaId: str | None = None

    @model_validator(mode="after")
    def _mode_rules(self) -> SunoInput:
        prompt_max, style_max = self.LIMITS if self.customMode else (500, self.LIMITS[1])
        if self.prompt is not None and len(self.prompt) > prompt_max:
            raise PydanticCustomError("too_long", "prompt: at most {n} characters", {"n": prompt_max})
        if self.style is not None and len(self.style) > style_max:
            raise PydanticCustomError("too_long", "style: at most {n} characters", {"n": style_max})
        if self.customMode:
            for name in ("style", "title") + (() if self.instrumental else ("prompt",)):
                if not getattr(self, name):
                    raise PydanticCustomError("missing", f"{name}: required in custom mode")
        else:
            if not self.prompt:
                raise PydanticCustomError("missing", "prompt: required without custom mode")
            for name in ("vocalGender", "personaId"):
                if getattr(self, name) is not None:
                    raise PydanticCustomError("custom", f"{name}: only in custom mode (customMode: true)")
        return self


class SunoV4Input(SunoInput):
    """Suno V3_5 and V4: custom-mode prompt at most 3000 characters, style 200."""

    LIMITS: ClassVar[tuple[int, int]] = (3000, 200)


VEO_GENERATION = Literal["TEXT_2_VIDEO", "FIRST_AND_LAST_FRAMES_2_VIDEO", "REFERENCE_2_VIDEO"]


class VeoInput(_Input):
    """Veo 3.1 ``/api/v1/veo/generate`` (section 3). ``imageUrls``: 1 image is animated, 2 are the
    first and last frames, REFERENCE_2_VIDEO takes 1-3; ``generationType`` omitted is inferred by Kie.

    ``aspectRatio`` (older docs, the SDK, callbacks) is read as ``aspect_ratio`` (current docs).
    ``resolution`` (720p default, 1080p, 4k) and ``veo3_lite`` are in the 2026 docs only: accepted,
    not filled in. REFERENCE_2_VIDEO: veo3_fast in the schema, also Lite on a newer page.
    """

    #: Whether this model takes REFERENCE_2_VIDEO.
    REFERENCE: ClassVar[bool] = True

    prompt: _text_prompt()
    imageUrls: list[Url] | None = Field(default=None, min_length=1, max_length=3)
    generationType: VEO_GENERATION | None = None
    aspect_ratio: Literal["16:9", "9:16", "Auto"] = "16:9"
    resolution: Literal["720p", "1080p", "4k"] | None = None
    seeds: int | None = Field(default=None, ge=10_000, le=99_999)
    enableTranslation: bool = True
    watermark: str | None = None
    #: Deprecated (its videos cannot use get-1080p).
    enableFallback: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _older_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "aspectRatio" in data:
            data = dict(data)
            old = data.pop("aspectRatio")
            if data.setdefault("aspect_ratio", old) != old:
                raise PydanticCustomError("conflict", "aspect_ratio: differs from aspectRatio (give one)")
        return data

    @model_validator(mode="after")
    def _images(self) -> VeoInput:
        n, kind = len(self.imageUrls or []), self.generationType
        problem = None
        if kind == "REFERENCE_2_VIDEO" and not self.REFERENCE:
            problem = "generationType: REFERENCE_2_VIDEO needs veo3_fast or veo3_lite"
        elif kind == "REFERENCE_2_VIDEO" and n == 0:
            problem = "imageUrls: REFERENCE_2_VIDEO takes 1 to 3 images"
        elif kind == "TEXT_2_VIDEO" and n:
            problem = "imageUrls: TEXT_2_VIDEO takes no images"
        elif kind != "REFERENCE_2_VIDEO" and n > 2:
            problem = "imageUrls: at most 2 (first and last frame) unless REFERENCE_2_VIDEO"
        elif kind == "FIRST_AND_LAST_FRAMES_2_VIDEO" and n == 0:
            problem = "imageUrls: FIRST_AND_LAST_FRAMES_2_VIDEO takes 1 or 2 images"
        if problem:
            raise PydanticCustomError("images", problem)
        return self


class VeoQualityInput(VeoInput):
    """``veo3`` (Quality): no REFERENCE_2_VIDEO."""

    REFERENCE: ClassVar[bool] = False


class RunwayInput(_Input):
    """Runway ``/api/v1/runway/generate`` (section 4): ``prompt``, ``duration`` and ``quality``
    required (no defaults documented); ``aspectRatio`` required without ``imageUrl`` (ignored with
    one); 1080p only for 5-second videos. (The docs' example body, with a ``model`` and neither
    duration nor quality, is a docs error.)"""

    prompt: Prompt(1800)
    duration: Literal[5, 10]
    quality: Literal["720p", "1080p"]
    aspectRatio: Literal["16:9", "4:3", "1:1", "3:4", "9:16"] | None = None
    imageUrl: Annotated[Url | None, BeforeValidator(_one_url)] = None
    waterMark: str | None = None

    @model_validator(mode="after")
    def _rules(self) -> RunwayInput:
        if self.quality == "1080p" and self.duration != 5:
            raise PydanticCustomError("quality", "quality: 1080p only with duration 5")
        if self.imageUrl is None and self.aspectRatio is None:
            raise PydanticCustomError("ratio", "aspectRatio: required without imageUrl (text to video)")
        return self


class AlephInput(_Input):
    """Runway Aleph ``/api/v1/aleph/generate`` (section 4): ``prompt`` and ``videoUrl`` required
    (an SDK's "video at most 10 MB over HTTPS" is unconfirmed: not enforced)."""

    prompt: _text_prompt()
    videoUrl: Url
    aspectRatio: Literal["16:9", "9:16", "4:3", "3:4", "1:1", "21:9"] | None = None
    seed: int | None = None
    referenceImage: Annotated[Url | None, BeforeValidator(_one_url)] = None
    waterMark: str | None = None
    uploadCn: bool = False


# -- what each model returns -------------------------------------------------------------------------


def _ratio(value: Any) -> str:
    return "1:1" if value in (None, "auto") else str(value)


def _fmt(value: Any) -> Literal["png", "jpg"]:
    return "jpg" if value in ("jpg", "jpeg") else "png"


def _same_fields(inp: Mapping[str, Any]) -> Output:
    ratio, resolution = _ratio(inp.get("aspect_ratio")), inp.get("resolution", "1K")
    return Output(ratio, resolution, _fmt(inp.get("output_format")))


def _nano_banana(inp: Mapping[str, Any]) -> Output:
    return Output(_ratio(inp.get("image_size")), "1K", _fmt(inp.get("output_format")))


def _gpt4o_image(inp: Mapping[str, Any]) -> Output:
    return Output(str(inp["size"]), "1K", "png", int(inp.get("nVariants") or 1))


def _flux_kontext(inp: Mapping[str, Any]) -> Output:
    # An edit without aspectRatio keeps its source's ratio, which only Kie knows: square here.
    return Output(_ratio(inp.get("aspectRatio")), "1K", _fmt(inp.get("outputFormat")))


def _veo(inp: Mapping[str, Any]) -> Output:
    ratio = inp.get("aspect_ratio", "16:9")
    return Output("16:9" if ratio == "Auto" else ratio, inp.get("resolution", "720p"), "mp4")


def _runway(inp: Mapping[str, Any]) -> Output:
    return Output(inp.get("aspectRatio") or "16:9", str(inp["quality"]), "mp4")


def _aleph(inp: Mapping[str, Any]) -> Output:
    # Without aspectRatio Aleph keeps its source video's, which only Kie knows: 16:9 here.
    return Output(inp.get("aspectRatio") or "16:9", "720p", "mp4")


def _suno(inp: Mapping[str, Any]) -> Output:
    # Kie's examples give two tracks per request; the emulator returns as many.
    return Output("1:1", "1K", "mp3", 2)


def _seedream(inp: Mapping[str, Any]) -> Output:
    ratio = PRESET_RATIOS[inp.get("image_size", "square_hd")]
    return Output(ratio, inp.get("image_resolution", "1K"), "png", int(inp.get("max_images", 1)))


# -- the registry ------------------------------------------------------------------------------------

_NAMED = {"prompt": "prompt"}
#: Prices are estimates (kie-models.md section 9: "mostly unconfirmed", 1 credit is about $0.005);
#: nano-banana-pro's are Kie's published ones. Override them with ``prices`` where your account differs.
MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "nano-banana-pro", JOBS, NanoBananaProInput, MediaType.IMAGE,
            {**_NAMED, "image_input": "image_input", "aspect_ratio": "aspect_ratio",
             "resolution": "resolution", "output_format": "output_format"},
            _same_fields, {"1K": 18, "2K": 18, "4K": 24}, "resolution", {"image_input": 30 * MB},
        ),
        ModelSpec(
            "google/nano-banana", JOBS, NanoBananaInput, MediaType.IMAGE,
            {**_NAMED, "aspect_ratio": "image_size", "output_format": "output_format"},
            _nano_banana, {"*": 4},
        ),
        ModelSpec(
            "google/nano-banana-edit", JOBS, NanoBananaEditInput, MediaType.IMAGE,
            {**_NAMED, "aspect_ratio": "image_size", "output_format": "output_format",
             "image_input": "image_urls"},
            _nano_banana, {"*": 4}, image_fields={"image_urls": 10 * MB},
        ),
        ModelSpec(
            "nano-banana-2", JOBS, NanoBanana2Input, MediaType.IMAGE,
            {**_NAMED, "image_input": "image_input", "aspect_ratio": "aspect_ratio",
             "resolution": "resolution", "output_format": "output_format"},
            _same_fields, {"1K": 8, "2K": 12, "4K": 18}, "resolution", {"image_input": 30 * MB},
        ),
        ModelSpec(
            "bytedance/seedream-v4-text-to-image", JOBS, SeedreamV4Input, MediaType.IMAGE,
            {**_NAMED, "resolution": "image_resolution"},
            _seedream, {"*": 5},
        ),
        ModelSpec(
            "flux-2/pro-text-to-image", JOBS, Flux2TextInput, MediaType.IMAGE,
            {**_NAMED, "aspect_ratio": "aspect_ratio", "resolution": "resolution"},
            _same_fields, {"*": 5},
        ),
        ModelSpec(
            "flux-2/pro-image-to-image", JOBS, Flux2ImageInput, MediaType.IMAGE,
            {**_NAMED, "aspect_ratio": "aspect_ratio", "resolution": "resolution",
             "image_input": "input_urls"},
            _same_fields, {"*": 5}, image_fields={"input_urls": 10 * MB},
        ),
        ModelSpec(
            "gpt4o-image", GPT4O_IMAGE, Gpt4oImageInput, MediaType.IMAGE,
            {**_NAMED, "aspect_ratio": "size", "image_input": "filesUrl"},
            # Kie's errorCode 400 names 26214400 bytes as the largest image.
            _gpt4o_image, {"*": 6}, image_fields={"filesUrl": 25 * MB},
        ),
        *(
            ModelSpec(
                name, FLUX_KONTEXT, FluxKontextInput, MediaType.IMAGE,
                {**_NAMED, "aspect_ratio": "aspectRatio", "output_format": "outputFormat",
                 "image_input": "inputImage"},
                _flux_kontext,  # no price in Kie's documents or the third-party lists
            )
            for name in ("flux-kontext-pro", "flux-kontext-max")
        ),
        *(
            # Third-party prices per 8 s clip (section 9, unconfirmed); Lite is in the 2026 docs only.
            ModelSpec(
                name, VEO, VeoQualityInput if name == "veo3" else VeoInput, MediaType.VIDEO,
                {**_NAMED, "aspect_ratio": "aspect_ratio", "resolution": "resolution",
                 "image_input": "imageUrls"},
                _veo, {"*": price},
            )
            for name, price in (("veo3", 250), ("veo3_fast", 60), ("veo3_lite", 30))
        ),
        ModelSpec(
            "runway", RUNWAY, RunwayInput, MediaType.VIDEO,
            {**_NAMED, "aspect_ratio": "aspectRatio", "resolution": "quality", "image_input": "imageUrl"},
            # Third-party: 12 credits per 5 s (section 9, unconfirmed); 10 s read as twice that.
            _runway, {"5": 12, "10": 24}, "duration",
        ),
        ModelSpec(
            "runway-aleph", ALEPH, AlephInput, MediaType.VIDEO,
            {**_NAMED, "aspect_ratio": "aspectRatio", "image_input": "referenceImage"},
            _aleph,  # no price in Kie's documents or the third-party lists
        ),
        *(
            # V3_5 is only in the 2025 enum (the current quickstart still uses it): both accepted.
            ModelSpec(
                f"suno/{version}", SUNO, SunoV4Input if version in ("V3_5", "V4") else SunoInput,
                MediaType.AUDIO, dict(_NAMED), _suno, {"*": 10},
            )
            for version in ("V3_5", "V4", "V4_5", "V4_5PLUS", "V4_5ALL", "V5", "V5_5")
        ),
    )
}  # fmt: skip

#: The model of a manifest row that names none.
DEFAULT_MODEL = "nano-banana-pro"


def get_model(name: str) -> ModelSpec:
    """The registry entry of ``name``; unknown models are refused with the list of known ones."""
    if not isinstance(name, str) or not name.strip():
        raise KieValidationError("The model must be a non-empty string.", code=None, field="model")
    spec = MODELS.get(name)
    if spec is None:
        raise KieValidationError(
            f"Unknown model {name!r}; known models: {', '.join(sorted(MODELS))}.", code=None, field="model"
        )
    return spec


def validate_input(model: str, input: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``input`` for ``model`` and return it with documented defaults filled in."""
    if not isinstance(input, Mapping):
        raise KieValidationError("The input must be an object.", code=None, field="input")
    return get_model(model).validate(input)
