"""The image catalog: typed result tables, their schema, and small thumbnail previews."""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterable

import pandas as pd
from PIL import Image

from .store import TaskStore

#: The catalog's own columns and their pandas dtypes; the manifest's extra columns follow them.
CATALOG_DTYPES: dict[str, str] = {
    "id": "string",
    "batch": "string",
    "model": "string",
    "prompt": "string",
    "state": "string",
    "task_id": "string",
    "result_url": "string",
    "image_uri": "string",
    "sha256": "string",
    "bytes": "Int64",
    "width": "Int64",
    "height": "Int64",
    "format": "string",
    "fail_code": "string",
    "fail_msg": "string",
    "cost_time_ms": "Int64",
    "created_at": "datetime64[ms, UTC]",
    "completed_at": "datetime64[ms, UTC]",
    "submitted_at": "datetime64[ms, UTC]",
    "request_key": "string",
    "aspect_ratio": "string",
    "resolution": "string",
    "output_format": "string",
    "image_input": "string",
    "result_urls": "string",
}

COLUMN_DESCRIPTIONS: dict[str, str] = {
    "id": "The manifest row's id",
    "batch": "The manifest batch (partition key)",
    "state": "success or fail",
    "task_id": "Kie task id",
    "result_url": "Kie's result URL (expires)",
    "image_uri": "The durable copy under KIE_STORE",
    "sha256": "sha256 of the durable copy",
    "bytes": "Size of the durable copy",
    "fail_code": "Kie failCode, or TIMEOUT / DOWNLOAD_FAILED / an HTTP code",
    "cost_time_ms": "Kie's generation time",
    "created_at": "Kie createTime",
    "completed_at": "Kie completeTime",
    "request_key": "Hash of id + model + input: the idempotency key",
}


def typed(df: pd.DataFrame) -> pd.DataFrame:
    """Give the catalog columns stable dtypes (so every partition table has the same schema)."""
    out = df.copy()
    for col, dtype in CATALOG_DTYPES.items():
        if col not in out.columns:
            out[col] = pd.Series([None] * len(out), dtype="object")
        if dtype.startswith("datetime"):
            out[col] = pd.to_datetime(out[col], utc=True, format="ISO8601").astype(dtype)
        else:
            out[col] = out[col].astype(dtype)
    extras = [c for c in out.columns if c not in CATALOG_DTYPES]
    return out[[*CATALOG_DTYPES, *extras]]


def build_catalog(parts: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """One table of every image from the per-batch result tables, sorted by batch and id."""
    frames = [typed(p) for p in parts if p is not None and len(p)]
    if not frames:
        return typed(pd.DataFrame(columns=list(CATALOG_DTYPES)))
    catalog = pd.concat(frames, ignore_index=True)
    return catalog.sort_values(["batch", "id"], kind="stable").reset_index(drop=True)


def thumbnail_markdown(store: TaskStore, rows: pd.DataFrame, *, limit: int = 6, size: int = 96) -> str:
    """A markdown gallery of a few small inline thumbnails (JPEG data URIs), with ids and prompts."""
    ok = rows[rows["state"] == "success"].head(limit)
    if ok.empty:
        return "_no images yet_"
    cells = []
    for row in ok.itertuples():
        try:
            with Image.open(io.BytesIO(store.read_bytes(row.image_uri))) as img:
                img = img.convert("RGB")
                img.thumbnail((size, size))
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=70)
        except OSError:
            continue
        data = base64.b64encode(buf.getvalue()).decode()
        prompt = str(row.prompt).replace("|", "/").replace("\n", " ")[:60]
        cells.append(f"| ![{row.id}](data:image/jpeg;base64,{data}) | `{row.id}` | {prompt} |")
    return "| image | id | prompt |\n|---|---|---|\n" + "\n".join(cells)


def mismatched_copies(store: TaskStore, df: pd.DataFrame) -> list[str]:
    """Ids of success rows whose durable copy is missing or whose sha256 differs."""
    bad = []
    for row in df[df["state"] == "success"].itertuples():
        try:
            ok = hashlib.sha256(store.read_bytes(row.image_uri)).hexdigest() == row.sha256
        except OSError:
            ok = False
        if not ok:
            bad.append(str(row.id))
    return bad
