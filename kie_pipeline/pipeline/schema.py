"""The catalog's schema, written once: every result column with its dtype and description.

Everything else is derived from :data:`CATALOG_COLUMNS`: the dtypes of the result tables, the column
descriptions shown in Dagster, the names a manifest may not use for its own columns, and the keys of
one result row (see :func:`kie_pipeline.pipeline.result_rows.result_row`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    """One catalog column."""

    name: str
    dtype: str
    description: str


_UTC_MS = "datetime64[ms, UTC]"

#: The catalog's own columns, in table order; the manifest's extra columns follow them.
CATALOG_COLUMNS: tuple[Column, ...] = (
    Column("id", "string", "The manifest row's id"),
    Column("batch", "string", "The manifest batch (partition key)"),
    Column("model", "string", "The Kie model"),
    Column("prompt", "string", "The prompt sent to Kie"),
    Column("state", "string", "success, fail, or uncertain (createTask's answer was lost: see the README)"),
    Column("result_index", "Int64", "Which of the task's results this row is (0, 1, ...)"),
    Column("task_id", "string", "Kie task id"),
    Column("result_url", "string", "Kie's result URL for this result (expires)"),
    Column("media_type", "string", "What the model returns: image, video or audio"),
    Column("image_uri", "string", "The durable copy under KIE_STORE (an image, video or audio file)"),
    Column("sha256", "string", "sha256 of the durable copy"),
    Column("bytes", "Int64", "Size of the durable copy in bytes"),
    Column("width", "Int64", "Width in pixels (image, video)"),
    Column("height", "Int64", "Height in pixels (image, video)"),
    Column("duration_s", "Float64", "Duration in seconds (video, audio), read from the file"),
    Column("format", "string", "File format of the durable copy, from its contents (png, jpg, mp4, mp3...)"),
    Column("mime_type", "string", "MIME type of the durable copy (image/png, video/mp4, audio/mpeg...)"),
    Column(
        "phash",
        "Int64",
        "64-bit perceptual hash (imagehash's pHash bits as a signed integer) of the image or a video's "
        "first frame; none for audio. Near-duplicates differ in few bits: bit_count(a # b) in DuckDB",
    ),
    Column("title", "string", "The track's title, where Kie gives one (music)"),
    Column("tags", "string", "The track's style tags as Kie gives them (music)"),
    Column(
        "fail_code", "string", "Kie failCode, or TIMEOUT / DOWNLOAD_FAILED / EXPIRED / UNCERTAIN / a code"
    ),
    Column("fail_msg", "string", "What went wrong, and what to do"),
    Column("cost_time_ms", "Int64", "Kie's generation time"),
    Column("credits", "Float64", "Credits this task cost (on the row of result 0 only, so sums are right)"),
    Column("credits_source", "string", "kie (Kie's own figure) or estimate (the price table)"),
    Column("created_at", _UTC_MS, "Kie createTime"),
    Column("completed_at", _UTC_MS, "Kie completeTime"),
    Column("submitted_at", _UTC_MS, "When createTask answered"),
    Column("request_key", "string", "Hash of id + model + input: the idempotency key"),
    Column("input", "string", "The exact input sent to Kie, in the model's own field names (JSON)"),
    Column("aspect_ratio", "string", "Requested aspect ratio"),
    Column("resolution", "string", "Requested resolution"),
    Column("output_format", "string", "Requested output format"),
    Column("image_input", "string", "Input images (JSON list): URLs, and local files as their paths"),
    Column("result_urls", "string", "Every result URL of the task (JSON list)"),
)

#: Column name → pandas dtype.
CATALOG_DTYPES: dict[str, str] = {c.name: c.dtype for c in CATALOG_COLUMNS}
#: Column name → description (shown in Dagster's column schema).
COLUMN_DESCRIPTIONS: dict[str, str] = {c.name: c.description for c in CATALOG_COLUMNS}
#: Columns of the normalized manifest that the pipeline uses internally and never writes out.
INTERNAL_MANIFEST_COLUMNS: tuple[str, ...] = ("input_json", "row_number", "local_images")
#: Names a manifest may not use for its own extra columns (they would be overwritten).
RESERVED_NAMES: frozenset[str] = frozenset(CATALOG_DTYPES) | frozenset(INTERNAL_MANIFEST_COLUMNS)
