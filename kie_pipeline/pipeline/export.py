"""Export the catalog's images as a dataset that Hugging Face ``datasets`` loads directly.

Layout under the destination (a folder or fsspec URL)::

    README.md                                 dataset card: YAML ``configs`` (one data_files per split),
                                              the schema and the generation settings
    export_state.json                         per shard: its rows' fingerprint (what incremental uses)
    data/<split>/<batch>-<hash8>-00000.parquet  one or more shards per (split, batch)
    webdataset/<split>/<batch>-<hash8>-00000.tar  the same shards as WebDataset tars (if asked for)

Each shard is written with pyarrow alone (``datasets`` is not needed at export time): the ``image``
column has the Image feature's layout (``struct<bytes: binary, path: string>``) and the schema metadata
carries the ``huggingface`` features JSON, so ``datasets.load_dataset(destination)`` decodes it as PIL
images. Only images are exported: video and audio rows are skipped and counted, as are rows that are
not successes.

Incremental: a shard is rewritten only when the fingerprint of its rows (ids, sha256s, every exported
value and the schema) changed, or its file is missing; shards of batches or splits that disappeared
are removed. Every write is atomic.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from kie_pipeline.pipeline.schema import COLUMN_DESCRIPTIONS, RESERVED_NAMES
from kie_pipeline.pipeline.store import TaskStore, atomic_write, join

#: Bumped when the shard format changes, so every shard is rewritten once.
EXPORT_FORMAT = 1
STATE_FILE = "export_state.json"
CARD_FILE = "README.md"
DATA_DIR = "data"
WEBDATASET_DIR = "webdataset"
#: Catalog columns kept in the export, in order (after ``image``); the manifest's own columns follow.
EXPORTED_CATALOG_COLUMNS: tuple[str, ...] = (
    "id",
    "result_index",
    "batch",
    "model",
    "prompt",
    "sha256",
    "width",
    "height",
    "phash",
    "format",
    "aspect_ratio",
    "resolution",
    "output_format",
)
#: Hugging Face split names (datasets.naming's rule).
_SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")
_DEFAULT_SPLIT = "train"


@dataclass
class ExportSummary:
    """What one export did."""

    path: str
    rows: int = 0
    rows_per_split: dict[str, int] = field(default_factory=dict)
    shards_written: list[str] = field(default_factory=list)
    shards_kept: list[str] = field(default_factory=list)
    shards_removed: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def as_metadata(self) -> dict[str, Any]:
        """A flat dict for Dagster metadata (counts, not lists)."""
        return {
            "path": self.path,
            "rows": self.rows,
            "rows_per_split": dict(self.rows_per_split),
            "shards_written": len(self.shards_written),
            "shards_kept": len(self.shards_kept),
            "shards_removed": len(self.shards_removed),
            "skipped": dict(self.skipped),
        }


@dataclass
class _Shard:
    name: str  # relative to the destination, e.g. data/train/animals-1a2b3c4d-00000.parquet
    split: str
    batch: str
    rows: pd.DataFrame
    fingerprint: str = ""


def export_dataset(
    store: TaskStore,
    catalog: pd.DataFrame,
    destination: str,
    *,
    split_column: str = "split",
    settings: Mapping[str, Any] | None = None,
    max_shard_bytes: int = 256 * 1024 * 1024,
    destination_options: Mapping[str, Any] | None = None,
    webdataset: bool = False,
) -> ExportSummary:
    """Export the catalog's successful image rows to ``destination`` as a Parquet dataset with a card.

    ``destination`` is a folder or fsspec URL; a relative path is taken under the store's root. It is
    opened with ``destination_options`` (fsspec options; default: the store's own). ``split_column``
    names the manifest column that holds each row's split (rows without one, or a catalog without the
    column, go to ``train``); split names must be Hugging Face split names (letters, digits, ``_``,
    dots). ``settings`` are extra generation settings written into the card. Shards hold at most
    ``max_shard_bytes`` of image bytes (from the catalog's ``bytes`` column), at least one row. Video
    and audio rows, and rows that are not successes, are skipped and counted in the summary.
    ``webdataset`` also writes each shard as a WebDataset tar under ``webdataset/<split>/`` (same
    names, ``.tar``), kept incrementally like the Parquet shards (and removed when turned off).
    Raises ``ValueError`` for an invalid split name, or
    when a durable copy is missing or its sha256 is not the catalog's.
    """
    url = (
        destination if "://" in destination or destination.startswith("/") else join(store.root, destination)
    )
    options = store.storage_options if destination_options is None else destination_options
    fs, root = fsspec.core.url_to_fs(url, **dict(options))
    root = root.rstrip("/")
    summary = ExportSummary(path=url)

    rows, skipped = _exportable_rows(catalog, split_column)
    summary.skipped = skipped
    columns = _columns(catalog, split_column)
    with_split = rows.assign(**{split_column: rows["_split"]})
    frame = with_split[columns] if len(rows) else _empty(catalog, columns)
    frame, schema = _arrow_schema(frame, columns)
    shards = _plan_shards(rows, frame, max_shard_bytes)
    schema_text = schema.to_string(show_schema_metadata=True)
    for shard in shards:
        shard.fingerprint = _fingerprint(shard.rows, schema_text)

    old = _load_state(fs, f"{root}/{STATE_FILE}")
    existing: set[str] = set()
    for folder in (DATA_DIR, WEBDATASET_DIR):
        if fs.exists(f"{root}/{folder}"):
            existing |= {_relative(p, root) for p in fs.find(f"{root}/{folder}")}
    state: dict[str, Any] = {"format": EXPORT_FORMAT, "shards": {}}
    wanted: set[str] = set()
    for shard in shards:
        targets = [(shard.name, "parquet")]
        if webdataset:
            targets.append((_tar_name(shard.name), "webdataset"))
        images: list[dict[str, Any]] | None = None
        for name, kind in targets:
            wanted.add(name)
            if old.get(name, {}).get("fingerprint") == shard.fingerprint and name in existing:
                summary.shards_kept.append(name)
            else:
                images = _images(store, shard, rows) if images is None else images
                data = (
                    _parquet_bytes(shard, images, schema) if kind == "parquet" else _tar_bytes(shard, images)
                )
                atomic_write(fs, f"{root}/{name}", data)
                summary.shards_written.append(name)
            state["shards"][name] = {
                "fingerprint": shard.fingerprint,
                "rows": len(shard.rows),
                "split": shard.split,
                "batch": shard.batch,
            }
    for name in sorted((existing | set(old)) - wanted):
        if name in existing:
            fs.rm_file(f"{root}/{name}")
        summary.shards_removed.append(name)

    summary.rows = len(rows)
    summary.rows_per_split = (
        {s: int(n) for s, n in sorted(Counter(rows["_split"]).items())} if len(rows) else {}
    )
    card = _card(catalog, frame, schema, shards, summary, settings, webdataset=webdataset)
    atomic_write(fs, f"{root}/{CARD_FILE}", card.encode())
    atomic_write(fs, f"{root}/{STATE_FILE}", json.dumps(state, indent=1, sort_keys=True).encode())
    return summary


def _relative(path: str, root: str) -> str:
    return path[len(root) + 1 :] if path.startswith(root + "/") else path


def _load_state(fs: Any, path: str) -> dict[str, Any]:
    try:
        state = json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError):
        return {}
    if not isinstance(state, dict) or state.get("format") != EXPORT_FORMAT:
        return {}
    return dict(state.get("shards") or {})


def _exportable_rows(catalog: pd.DataFrame, split_column: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """The success image rows (with a ``_split`` column) and the skipped rows counted by reason."""
    skipped: Counter[str] = Counter()
    if catalog.empty:
        return catalog.assign(_split=pd.Series(dtype="string")), {}
    state = catalog["state"].astype("string").fillna("unknown")
    for value, n in state[state != "success"].value_counts().items():
        skipped[f"state:{value}"] += int(n)
    rows = catalog[state == "success"]
    media = rows["media_type"].astype("string").fillna("image") if "media_type" in rows else None
    if media is not None:
        for value, n in media[media != "image"].value_counts().items():
            skipped[f"media_type:{value}"] += int(n)
        rows = rows[media == "image"]
    no_copy = rows["image_uri"].isna()
    if no_copy.any():
        skipped["no_copy"] += int(no_copy.sum())
        rows = rows[~no_copy]
    if split_column in rows.columns:
        split = rows[split_column].astype("string").str.strip().replace("", pd.NA).fillna(_DEFAULT_SPLIT)
    else:
        split = pd.Series(_DEFAULT_SPLIT, index=rows.index, dtype="string")
    bad = sorted({s for s in split if not _SPLIT_NAME.match(s)})
    if bad:
        raise ValueError(
            f"split names must be letters, digits, _ and dots (Hugging Face split names), not {bad}"
            f" (column {split_column!r})"
        )
    rows = rows.assign(_split=split.astype(str))
    order = ["_split", "batch", "id", "result_index"]
    rows = rows.sort_values(order, kind="stable").reset_index(drop=True)
    return rows, dict(sorted(skipped.items()))


def _columns(catalog: pd.DataFrame, split_column: str) -> list[str]:
    """The exported columns: the kept catalog columns that exist, then the manifest's own columns."""
    own = [c for c in catalog.columns if c not in RESERVED_NAMES and not str(c).startswith("_")]
    kept = [c for c in EXPORTED_CATALOG_COLUMNS if c in catalog.columns]
    if split_column not in own and split_column not in kept:
        own = [split_column, *own]
    return kept + own


def _empty(catalog: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: catalog[c] if c in catalog else pd.Series(dtype="string") for c in columns}).iloc[
        :0
    ]


_PRIMITIVES = (
    pa.types.is_integer,
    pa.types.is_floating,
    pa.types.is_boolean,
    pa.types.is_timestamp,
)


def _arrow_schema(frame: pd.DataFrame, columns: list[str]) -> tuple[pd.DataFrame, pa.Schema]:
    """The export's schema, from the whole export (so every shard has the same one), with HF features;
    and the frame with the columns exported as text (nested, mixed or all-empty ones) made text."""
    fields = [pa.field("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())]))]
    features: dict[str, Any] = {"image": {"_type": "Image"}}
    frame = frame.copy()
    for name in columns:
        try:
            kind = pa.Schema.from_pandas(frame[[name]], preserve_index=False).field(name).type
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            kind = pa.null()
        if not pa.types.is_string(kind) and not any(test(kind) for test in _PRIMITIVES):
            kind = pa.string()  # nested, mixed, null (all empty) or odd columns: exported as text
            frame[name] = frame[name].map(_text).astype("string")
        fields.append(pa.field(name, kind))
        features[name] = {"dtype": _hf_dtype(kind), "_type": "Value"}
    metadata = {"huggingface": json.dumps({"info": {"features": features}})}
    return frame, pa.schema(fields, metadata=metadata)


def _text(value: Any) -> str | None:
    if isinstance(value, (list, dict, tuple)):
        return json.dumps(value, default=str, ensure_ascii=False)
    if value is None or (not hasattr(value, "__len__") and pd.isna(value)):
        return None
    return str(value)


def _hf_dtype(kind: pa.DataType) -> str:
    names = {pa.float64(): "float64", pa.float32(): "float32", pa.float16(): "float16", pa.bool_(): "bool"}
    return names.get(kind, str(kind))


def _plan_shards(rows: pd.DataFrame, frame: pd.DataFrame, max_shard_bytes: int) -> list[_Shard]:
    """Shards per (split, batch), cut at ``max_shard_bytes``; none for an export without rows (datasets
    cannot load a split of zero rows, so an empty export has no splits; its card says so)."""
    if rows.empty:
        return []
    shards: list[_Shard] = []
    sizes = rows["bytes"].fillna(0).astype("int64") if "bytes" in rows else pd.Series(0, index=rows.index)
    for (split, batch), group in rows.groupby(["_split", "batch"], sort=True, dropna=False):
        batch = "" if pd.isna(batch) else str(batch)
        stem = f"{_slug(batch)}-{hashlib.sha256(batch.encode()).hexdigest()[:8]}"
        start, total, index = 0, 0, 0
        positions = list(group.index)
        for i, pos in enumerate(positions):
            size = int(sizes[pos])
            if i > start and total + size > max_shard_bytes:
                shards.append(_shard(split, batch, stem, index, frame.loc[positions[start:i]]))
                start, total, index = i, 0, index + 1
            total += size
        shards.append(_shard(split, batch, stem, index, frame.loc[positions[start:]]))
    return shards


def _shard(split: str, batch: str, stem: str, index: int, rows: pd.DataFrame) -> _Shard:
    return _Shard(f"{DATA_DIR}/{split}/{stem}-{index:05d}.parquet", split, batch, rows)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", text).strip("._")[:40] or "batch"


def _fingerprint(rows: pd.DataFrame, schema_text: str) -> str:
    """sha256 over the schema and every exported value (sha256 stands for the image bytes)."""
    digest = hashlib.sha256(f"{EXPORT_FORMAT}\n{schema_text}\n".encode())
    for record in rows.astype(object).where(rows.notna(), None).itertuples(index=False):
        digest.update(json.dumps(list(record), default=str, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _images(store: TaskStore, shard: _Shard, rows: pd.DataFrame) -> list[dict[str, Any]]:
    """The shard's durable copies, checked against the catalog's sha256: ``{bytes, path}`` per row."""
    uris = [str(rows.at[pos, "image_uri"]) for pos in shard.rows.index]
    # One call for the shard's copies: concurrent on object stores (s3fs), a loop on local disks.
    found = store.fs.cat([store.normalize(uri) for uri in uris], on_error="return")
    images = []
    for pos, uri in zip(shard.rows.index, uris, strict=True):
        data = found.get(store.normalize(uri))
        if not isinstance(data, bytes):
            raise ValueError(f"export: the durable copy {uri} of row {rows.at[pos, 'id']!r} is missing")
        expected = rows.at[pos, "sha256"]
        if isinstance(expected, str) and hashlib.sha256(data).hexdigest() != expected:
            raise ValueError(
                f"export: {uri} (row {rows.at[pos, 'id']!r}) does not match the catalog's sha256"
            )
        images.append({"bytes": data, "path": uri.rsplit("/", 1)[-1]})
    return images


def _parquet_bytes(shard: _Shard, images: list[dict[str, Any]], schema: pa.Schema) -> bytes:
    """The shard's Parquet file: its rows with their durable copies embedded."""
    table = pa.Table.from_pandas(shard.rows, schema=schema.remove(0), preserve_index=False, safe=False)
    table = table.add_column(0, schema.field("image"), pa.array(images, type=schema.field("image").type))
    table = table.replace_schema_metadata(schema.metadata)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=100)
    return buffer.getvalue()


def _tar_bytes(shard: _Shard, images: list[dict[str, Any]]) -> bytes:
    """The shard as a WebDataset tar: ``{key}.{png,jpg,...}`` and ``{key}.json`` per row, in row order.

    The key is ``{id}-{result_index}`` with dots replaced (WebDataset splits a name at its first dot);
    the JSON holds the row's exported columns. Members have a fixed mtime, so equal rows give equal tars.
    """
    buffer = io.BytesIO()
    records = shard.rows.astype(object).where(shard.rows.notna(), None).to_dict("records")
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for record, image in zip(records, images, strict=True):
            key = re.sub(r"[^\w\-]", "_", f"{record.get('id')}-{record.get('result_index') or 0}")
            ext = image["path"].rsplit(".", 1)[-1].lower() if "." in image["path"] else "png"
            meta = json.dumps(record, default=str, ensure_ascii=False).encode()
            for name, data in ((f"{key}.{ext}", image["bytes"]), (f"{key}.json", meta)):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _tar_name(parquet_name: str) -> str:
    return WEBDATASET_DIR + parquet_name[len(DATA_DIR) : -len(".parquet")] + ".tar"


def _kie_pipeline_version() -> str:
    try:
        return version("kie-pipeline")
    except PackageNotFoundError:
        return "unknown"


def _card(
    catalog: pd.DataFrame,
    frame: pd.DataFrame,
    schema: pa.Schema,
    shards: list[_Shard],
    summary: ExportSummary,
    settings: Mapping[str, Any] | None,
    *,
    webdataset: bool = False,
) -> str:
    """The dataset card: YAML configs (data_files per split), then the schema and generation settings."""
    splits = sorted({s.split for s in shards})
    lines = ["---", "tags:", "- kie-pipeline"]
    if splits:
        lines += ["configs:", "- config_name: default", "  data_files:"]
    for split in splits:
        lines += [f"  - split: {split}", f"    path: {DATA_DIR}/{split}/*.parquet"]
    lines += ["---", "", "# Generated image dataset", ""]
    if not splits:
        lines += ["This export has no images yet: the catalog has no successful image rows.", ""]
    lines += [
        "Exported by kie-pipeline from its image catalog: one row per generated image, the image embedded "
        "(Hugging Face `Image` feature), with the prompt, the model and the manifest's own columns.",
        "",
        "```python",
        "import datasets",
        'ds = datasets.load_dataset("<this folder>")',
        "```",
        "",
    ]
    if webdataset:
        lines += [
            f"The same shards as WebDataset tars are under `{WEBDATASET_DIR}/<split>/*.tar`: per row "
            "`{key}.png` (or `.jpg`...) and `{key}.json` (the row's columns), key = `{id}-{result_index}`.",
            "",
        ]
    lines += [
        "## Splits",
        "",
        "| split | rows |",
        "| --- | --- |",
    ]
    lines += [f"| {s} | {summary.rows_per_split.get(s, 0)} |" for s in splits]
    lines += ["", "## Schema", "", "| column | type | description |", "| --- | --- | --- |"]
    for f in schema:
        kind = "Image" if f.name == "image" else str(f.type)
        description = (
            "The image (bytes and file name)"
            if f.name == "image"
            else COLUMN_DESCRIPTIONS.get(f.name, "From the manifest")
        )
        lines.append(f"| {f.name} | {kind} | {description} |")
    models = Counter(frame["model"].astype(str)) if "model" in frame and len(frame) else Counter()
    prompts = int(catalog["id"].nunique()) if "id" in catalog else 0
    lines += [
        "",
        "## Generation settings",
        "",
        f"- kie-pipeline version: {_kie_pipeline_version()}",
        f"- exported at: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- prompts in the catalog: {prompts}",
        f"- images exported: {summary.rows}",
        f"- images per model: {json.dumps(dict(sorted(models.items())))}",
        f"- rows not exported, by reason: {json.dumps(summary.skipped)}",
    ]
    for key, value in (settings or {}).items():
        lines.append(f"- {key}: {json.dumps(value, default=str)}")
    return "\n".join(lines) + "\n"
