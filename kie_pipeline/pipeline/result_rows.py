"""The catalog rows of a settled row: one per result of a finished task, one otherwise."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .media import MIME_BY_EXT, media_of
from .record import KieOutcome, RequestRecord
from .schema import CATALOG_DTYPES


def result_row(
    row: Mapping[str, Any],
    rec: RequestRecord | None,
    index: int,
    *,
    state: str,
    fail_code: str | None = None,
    fail_msg: str | None = None,
) -> dict[str, Any]:
    """One catalog row (before the manifest's extra columns): keys are exactly the schema's columns."""
    kie = (rec.kie if rec else None) or KieOutcome()
    urls = kie.result_urls
    image = None
    if rec is not None and state == "success" and index < len(rec.images):
        image = rec.images[index]
    out = dict.fromkeys(CATALOG_DTYPES)
    out.update(
        id=row["id"],
        batch=row["batch"],
        model=row["model"],
        prompt=row["prompt"],
        state=state,
        result_index=index,
        task_id=rec.task_id if rec else None,
        result_url=urls[index] if index < len(urls) else None,
        fail_code=fail_code,
        fail_msg=fail_msg,
        cost_time_ms=kie.cost_time_ms,
        created_at=kie.create_time,
        completed_at=kie.complete_time,
        submitted_at=rec.submitted_at if rec else None,
        request_key=row["request_key"],
        input=row.get("input_json"),
        aspect_ratio=row.get("aspect_ratio"),
        resolution=row.get("resolution"),
        output_format=row.get("output_format"),
        image_input=row.get("image_input"),
        result_urls=json.dumps(urls),
    )
    media = media_of(row["model"])
    out["media_type"] = media.value if media else None
    if image is not None:
        out.update(
            media_type=image.media_type,
            image_uri=image.uri,
            sha256=image.sha256,
            bytes=image.bytes,
            width=image.width,
            height=image.height,
            duration_s=image.duration_s,
            phash=image.phash,
            format=image.format,
            # Copies recorded before MIME types: from the extension, which came from the contents.
            mime_type=image.mime_type or MIME_BY_EXT.get(str(image.format)),
            title=image.title,
            tags=image.tags,
        )
    if index == 0 and rec is not None:
        # Credits belong to the task: on its first result only, so that sums are right.
        out.update(credits=rec.credits, credits_source=rec.credits_source)
    return out


def success_rows(row: Mapping[str, Any], rec: RequestRecord) -> list[dict[str, Any]]:
    """One row per result of a finished task."""
    return [result_row(row, rec, i, state="success") for i in range(len(rec.images))]
