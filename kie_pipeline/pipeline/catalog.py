"""The catalog: typed result tables, their schema, and small thumbnail previews (images, video
frames, audio waveforms)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import pandas as pd

from .media import MIME_BY_EXT
from .schema import CATALOG_DTYPES
from .store import TaskStore


def typed(df: pd.DataFrame) -> pd.DataFrame:
    """Give the catalog columns stable dtypes (so every partition table has the same schema)."""
    out = df.copy()
    if "media_type" not in out.columns:
        # Result tables written before video and audio hold images only.
        out["media_type"] = "image"
    if "mime_type" not in out.columns and "format" in out.columns:
        out["mime_type"] = out["format"].map(MIME_BY_EXT, na_action="ignore")
    for col, dtype in CATALOG_DTYPES.items():
        if col not in out.columns:
            out[col] = pd.Series([None] * len(out), dtype="object")
        elif str(out[col].dtype) == dtype:
            continue  # already typed (a result table read back): converting again only costs time
        if dtype.startswith("datetime"):
            out[col] = pd.to_datetime(out[col], utc=True, format="ISO8601").astype(dtype)
        else:
            out[col] = out[col].astype(dtype)
    extras = [c for c in out.columns if c not in CATALOG_DTYPES]
    return out[[*CATALOG_DTYPES, *extras]]


def build_catalog(parts: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """One table of every result from the per-batch result tables, sorted by batch, id and result.

    The manifest's own columns keep their (nullable) dtype when every batch agrees on it. A column
    whose dtype differs between batches (ints in one, text in another) becomes text in the catalog,
    each value written as it reads, and missing values stay missing: one rule, never a crash.
    """
    frames = [typed(p) for p in parts if p is not None and len(p)]
    if not frames:
        return typed(pd.DataFrame(columns=list(CATALOG_DTYPES)))
    extras: dict[str, set[str]] = {}
    for frame in frames:
        for col in frame.columns:
            if col not in CATALOG_DTYPES:
                extras.setdefault(col, set()).add(str(frame[col].dtype))
    mixed = [col for col, dtypes in extras.items() if len(dtypes) > 1]
    if mixed:
        frames = [f.astype({c: "string" for c in mixed if c in f.columns}) for f in frames]
    catalog = pd.concat(frames, ignore_index=True)
    return catalog.sort_values(["batch", "id", "result_index"], kind="stable").reset_index(drop=True)


def _label(row: object) -> str:
    index = getattr(row, "result_index", 0)
    return str(row.id) if pd.isna(index) or int(index) == 0 else f"{row.id}#{int(index)}"


def mismatched_copies(store: TaskStore, df: pd.DataFrame) -> list[str]:
    """Ids of success rows whose durable copy is missing or whose sha256 differs (reads every byte)."""
    bad = []
    for row in df[df["state"] == "success"].itertuples():
        try:
            ok = hashlib.sha256(store.read_bytes(row.image_uri)).hexdigest() == row.sha256
        except OSError:
            ok = False
        if not ok:
            bad.append(_label(row))
    return bad


def missing_copies(store: TaskStore, df: pd.DataFrame) -> list[str]:
    """Ids of success rows whose durable copy is missing or has the wrong size.

    One listing of the image folder (one request per page on object stores), never a read of the
    files: cheap at any dataset size. Hashes are verified per partition, when the copy is written.
    """
    sizes = store.image_sizes()
    bad = []
    for row in df[df["state"] == "success"].itertuples():
        size = sizes.get(store.normalize(row.image_uri))
        if size is None or pd.isna(row.bytes) or size != int(row.bytes):
            bad.append(_label(row))
    return bad
