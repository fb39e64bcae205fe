"""The catalog as a directory dataset, one Parquet file per batch, refreshed incrementally.

Layout (``root`` is ``{store}/image_catalog.parquet``, a folder, as Spark writes ``x.parquet``)::

    {root}/part-{batch}.parquet    one batch's results, sorted by id and result_index
    {root}/empty.parquet           a zero-row file with the full schema, only while no batch has one
    {root}/_catalog_state.json     each batch's source fingerprint, its column dtypes and its summary

pandas (``pd.read_parquet(root)``), pyarrow (``pyarrow.dataset.dataset(root)``), Spark
(``spark.read.parquet(root)``) and DuckDB (``read_parquet('{root}/*.parquet')``) read the folder as one
table: every file is written with the same schema (Arrow types and pandas metadata), the state file's
name starts with ``_`` and temporary files with ``.``, which those readers skip.

A refresh lists the result tables (``generated_images/{batch}.parquet``) once, and rewrites a batch's
file only when its fingerprint changed: the result table's size and mtime (ETag on object stores) and
a hash of the batch's (batch, id) pairs in the manifest. Files of batches no longer in the manifest are
deleted. The per-batch summaries in the state give the asset's metadata without reading the catalog.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from .catalog import typed
from .schema import CATALOG_DTYPES
from .store import _is_local, atomic_write

#: The state file (the leading ``_`` keeps it out of pyarrow's, Spark's and DuckDB's ``*.parquet``).
STATE_FILE = "_catalog_state.json"
#: Bumped when the files' layout or the state's meaning changes: a refresh then rebuilds every file.
STATE_FORMAT = 1
#: Batch files are ``part-{batch}.parquet``: the prefix keeps a batch named ``_x`` or ``.x`` visible.
PART_PREFIX = "part-"
#: Written while the catalog has no batch, so readers still see one (empty) table with every column.
EMPTY_FILE = "empty.parquet"


@dataclass
class CatalogRefresh:
    """What a refresh did, and the summaries of every batch in the catalog."""

    root: str
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    rewritten: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    not_generated: list[str] = field(default_factory=list)
    dtypes: dict[str, str] = field(default_factory=dict)
    migrated: bool = False
    #: The catalog's data files after the refresh (paths on its filesystem), in name order.
    files: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        """Rows in the catalog."""
        return sum(int(b["summary"]["rows"]) for b in self.batches.values())

    @property
    def rows_left_out(self) -> int:
        """Rows of the result tables whose (batch, id) is no longer in the manifest."""
        return sum(int(b["summary"]["left_out"]) for b in self.batches.values())

    def total(self, key: str) -> dict[str, int]:
        """A count summed over batches (``by_state``)."""
        out: Counter[str] = Counter()
        for b in self.batches.values():
            out.update(b["summary"][key])
        return dict(out)

    def crosstab(self, key: str) -> dict[str, dict[str, int]]:
        """Counts by a column and state summed over batches (``by_model``, ``by_media_type``)."""
        out: dict[str, Counter[str]] = {}
        for b in self.batches.values():
            for value, states in b["summary"][key].items():
                out.setdefault(value, Counter()).update(states)
        return {k: dict(v) for k, v in out.items()}

    def sum(self, key: str) -> float:
        """A number summed over batches (``bytes``, ``credits``)."""
        return sum(float(b["summary"][key]) for b in self.batches.values())


def part_name(batch: str) -> str:
    """The file name of one batch in the catalog folder."""
    return f"{PART_PREFIX}{batch}.parquet"


def source_fingerprints(fs: AbstractFileSystem, folder: str) -> dict[str, str]:
    """Each result table in ``folder`` (``{batch}.parquet``) → its size and modification stamp, from
    one listing (no file is opened). Temporary files of writes in progress are left out."""
    fs.invalidate_cache(folder)  # object stores cache listings; the tables change between refreshes
    try:
        listing = fs.ls(folder, detail=True)
    except FileNotFoundError:
        return {}
    out: dict[str, str] = {}
    for info in listing:
        name = str(info["name"]).rstrip("/").rsplit("/", 1)[-1]
        if info.get("type") == "directory" or not name.endswith(".parquet") or name.startswith("."):
            continue
        # ETag changes with the content on object stores; local files have an mtime (ns precision).
        stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
        out[name[: -len(".parquet")]] = f"{int(info.get('size') or 0)}:{stamp}"
    return out


def manifest_fingerprints(manifest: pd.DataFrame) -> dict[str, str]:
    """Each batch of ``manifest`` (columns batch, id) → a hash of its ids, whatever their order.

    The sum (mod 2**64) and xor of the rows' 64-bit hashes and their count: vectorized, so a
    1 000 000-row manifest costs well under a second.
    """
    if manifest.empty:
        return {}
    frame = manifest[["batch", "id"]].astype("string")
    hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype="uint64")
    codes, uniques = pd.factorize(frame["batch"], sort=True)
    order = np.argsort(codes, kind="stable")
    codes, hashes = codes[order], hashes[order]
    starts = np.r_[0, np.flatnonzero(np.diff(codes)) + 1]
    ends = np.r_[starts[1:], len(codes)]
    # np.add.reduceat wraps around on uint64 overflow: the sum is taken mod 2**64, as intended.
    sums = np.add.reduceat(hashes, starts)
    xors = np.bitwise_xor.reduceat(hashes, starts)
    return {
        str(uniques[codes[s]]): f"{e - s}:{int(a):016x}:{int(x):016x}"
        for s, e, a, x in zip(starts, ends, sums, xors, strict=True)
    }


def extras_dtypes(frame: pd.DataFrame) -> dict[str, str]:
    """The dtypes of a typed result table's own (manifest) columns, in table order."""
    return {str(c): str(t) for c, t in frame.dtypes.items() if c not in CATALOG_DTYPES}


def unify(per_batch: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """One dtype per manifest column across batches: the batches' dtype where they agree, else text.

    A column missing from a batch does not count (its rows get missing values of the column's type).
    Columns come in the order they first appear, batches taken in order.
    """
    seen: dict[str, set[str]] = {}
    for dtypes in per_batch:
        for col, dtype in dtypes.items():
            seen.setdefault(col, set()).add(dtype)
    return {col: next(iter(d)) if len(d) == 1 else "string" for col, d in seen.items()}


def template(extras: Mapping[str, str]) -> pd.DataFrame:
    """A zero-row catalog with every column and its dtype (the schema every file is written with)."""
    frame = typed(pd.DataFrame(columns=list(CATALOG_DTYPES)))
    for col, dtype in extras.items():
        frame[col] = pd.Series([], dtype=dtype)
    return frame


def arrow_schema(extras: Mapping[str, str]) -> pa.Schema:
    """The Arrow schema, pandas metadata included, of a catalog whose manifest columns are ``extras``."""
    return _arrow_schema(tuple(extras.items()))


@functools.lru_cache(maxsize=16)
def _arrow_schema(extras: tuple[tuple[str, str], ...]) -> pa.Schema:
    # Cached: a full build writes a thousand files with one schema (building it costs ~50 ms).
    return pa.Schema.from_pandas(template(dict(extras)), preserve_index=False)


def _schema_id(extras: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps([STATE_FORMAT, list(extras.items())]).encode()).hexdigest()[:16]


def _normalized(frame: pd.DataFrame) -> pd.DataFrame:
    """A typed result table whose object-dtype manifest columns are text (Arrow needs one type)."""
    frame = typed(frame)
    objects = {c: "string" for c, t in frame.dtypes.items() if c not in CATALOG_DTYPES and str(t) == "object"}
    return frame.astype(objects) if objects else frame


def _conform(frame: pd.DataFrame, extras: Mapping[str, str]) -> pd.DataFrame:
    """``frame`` with exactly the catalog's columns and dtypes (missing columns: missing values)."""
    out = frame.copy()
    for col, dtype in extras.items():
        if col not in out.columns:
            out[col] = pd.Series([None] * len(out), index=out.index, dtype="object").astype(dtype)
        elif str(out[col].dtype) != dtype:
            # The one rule of mixed types: text as each value reads, missing values stay missing.
            out[col] = out[col].astype(dtype)
    return out[[*CATALOG_DTYPES, *extras]]


def _parquet_bytes(frame: pd.DataFrame, schema: pa.Schema) -> bytes:
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    # The same pandas metadata in every file, so a reader of the folder restores the same dtypes.
    table = table.replace_schema_metadata(schema.metadata)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def summarize(frame: pd.DataFrame, left_out: int) -> dict[str, Any]:
    """One batch's counts (by state, by model and state, by media type and state), bytes and credits."""
    state = frame["state"].astype("string").fillna("(none)")

    def by(col: str) -> dict[str, dict[str, int]]:
        keys = frame[col].astype("string").fillna("(none)")
        counts = pd.DataFrame({"k": keys, "s": state}).value_counts()
        out: dict[str, dict[str, int]] = {}
        for (k, s), n in counts.items():
            out.setdefault(str(k), {})[str(s)] = int(n)
        return out

    return {
        "rows": len(frame),
        "left_out": int(left_out),
        "by_state": {str(k): int(v) for k, v in state.value_counts().items()},
        "by_model": by("model"),
        "by_media_type": by("media_type"),
        "bytes": int(frame["bytes"].fillna(0).sum()),
        "credits": float(frame["credits"].fillna(0).sum()),
    }


def _load_state(fs: AbstractFileSystem, path: str) -> dict[str, Any]:
    try:
        state = json.loads(fs.cat_file(path))
    except (FileNotFoundError, ValueError, OSError):
        return {"batches": {}}
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        return {"batches": {}}  # another layout: rebuild every file
    return state


def _listing(fs: AbstractFileSystem, root: str) -> set[str]:
    fs.invalidate_cache(root)
    try:
        return {str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)}
    except FileNotFoundError:
        return set()


def _is_file(fs: AbstractFileSystem, path: str) -> bool:
    try:
        return fs.info(path).get("type") == "file"
    except FileNotFoundError:
        return False


#: Up to this many changed batches read their ids from the manifest file one by one (a filtered read);
#: more (a full build) read the manifest's (batch, id) columns once.
FEW_BATCHES = 4


class _Manifest:
    """The manifest's (batch, id) pairs: a Parquet file on ``fs`` (read only as far as needed, with
    column projection), a DataFrame, or nothing."""

    def __init__(self, fs: AbstractFileSystem, source: str | pd.DataFrame | None) -> None:
        self.fs, self.source = fs, source
        self._frame: pd.DataFrame | None = None
        self._groups: dict[str, Any] | None = None

    def stamp(self) -> str | None:
        """The file's size and modification stamp (None: not a file, or missing)."""
        if not isinstance(self.source, str):
            return None
        try:
            info = self.fs.info(self.source)
        except FileNotFoundError:
            return "missing"
        stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified")
        return f"{int(info.get('size') or 0)}:{stamp}"

    def _read(self) -> pd.DataFrame:
        try:
            with self.fs.open(self.source, "rb") as fh:
                table = pq.read_table(fh, columns=["batch", "id"])
        except FileNotFoundError:
            table = None
        if table is None:
            return pd.DataFrame({"batch": pd.Series(dtype="string"), "id": pd.Series(dtype="string")})
        return table.to_pandas().astype("string")

    def _ids_of_one(self, batch: str) -> Any:
        # Record batches of 64k rows, each filtered at once: at 1 000 000 rows this holds less than
        # a whole-column read with a filter (about 70 MB instead of 90) and takes a quarter of its time.
        kept: list[pa.Array] = []
        try:
            with self.fs.open(self.source, "rb") as fh:
                for chunk in pq.ParquetFile(fh).iter_batches(batch_size=65536, columns=["batch", "id"]):
                    mask = pc.equal(chunk.column(0).cast(pa.string()), batch)
                    kept.append(chunk.column(1).filter(mask).cast(pa.string()))
        except FileNotFoundError:
            return np.array([], dtype=object)
        return pa.chunked_array(kept, type=pa.string()).to_numpy(zero_copy_only=False)

    def frame(self) -> pd.DataFrame:
        if self._frame is None:
            if isinstance(self.source, pd.DataFrame):
                self._frame = self.source[["batch", "id"]].astype("string")
            elif self.source is None:
                self._frame = pd.DataFrame(
                    {"batch": pd.Series(dtype="string"), "id": pd.Series(dtype="string")}
                )
            else:
                self._frame = self._read()
        return self._frame

    def ids(self, batch: str, *, few: bool) -> Any:
        """The ids of ``batch``; ``few``: only a few batches are wanted (a filtered read each)."""
        if few and isinstance(self.source, str) and self._frame is None:
            return self._ids_of_one(batch)
        if self._groups is None:
            frame = self.frame()
            ids = frame["id"].to_numpy()
            positions = frame.groupby("batch", sort=False).indices
            self._groups = {str(k): ids[p] for k, p in positions.items()}
        return self._groups.get(batch, [])


def refresh_catalog(
    fs: AbstractFileSystem,
    root: str,
    sources: str,
    manifest: str | pd.DataFrame | None,
    *,
    on_write: Callable[[str], None] | None = None,
) -> CatalogRefresh:
    """Bring the catalog folder ``root`` up to date with the result tables in ``sources`` and the
    manifest's (batch, id) pairs. ``fs`` is the store's filesystem; ``root`` and ``sources`` are paths
    on it. ``manifest`` is the ``prompt_manifest`` Parquet file (a path on ``fs``; missing: no batch),
    or its (batch, id) columns as a DataFrame, or None (no batch). A file unchanged since the last
    refresh (size and modification stamp) is not read at all, and a few changed batches read only
    their own rows from it. ``on_write(batch)`` is called for each batch file written.

    Rows of a result table whose (batch, id) is not in the manifest are left out (counted). A manifest
    column whose dtype differs between batches is text in every file; when that changes the schema,
    every file is written again (rare: a column changes type).

    A single-file catalog at ``root`` (the layout before this folder) is replaced: on a local disk the
    folder is built beside it and swapped in with two renames; on an object store the old object is
    deleted first (readers see no catalog while the first build runs).
    """
    migrated = False
    if _is_file(fs, root):
        migrated = True
        if _is_local(fs):
            parent, _, name = root.rstrip("/").rpartition("/")
            building = f"{parent}/.{name}.{uuid.uuid4().hex}.building"
            result = refresh_catalog(fs, building, sources, manifest, on_write=on_write)
            aside = f"{parent}/.{name}.{uuid.uuid4().hex}.old"
            os.rename(root, aside)
            os.rename(building, root)
            with contextlib.suppress(OSError):
                os.remove(aside)
            result.root, result.migrated = root, True
            return result
        fs.rm_file(root)

    root = root.rstrip("/")
    source = _Manifest(fs, manifest)
    found = source_fingerprints(fs, sources)
    state = _load_state(fs, f"{root}/{STATE_FILE}")
    stamp = source.stamp()
    if stamp is not None and state.get("manifest_file") == stamp:
        wanted: dict[str, str] = state.get("manifest_batches", {})
    else:
        wanted = manifest_fingerprints(source.frame())
    files = _listing(fs, root)
    previous: dict[str, dict[str, Any]] = state.get("batches", {})

    batches = sorted(b for b in wanted if b in found)
    result = CatalogRefresh(root=root, migrated=migrated)
    result.not_generated = sorted(set(wanted) - set(found))

    def unchanged(b: str) -> bool:
        old = previous.get(b)
        return (
            old is not None
            and old.get("source") == found[b]
            and old.get("manifest") == wanted[b]
            and old.get("file") in files
        )

    entries = {b: previous[b] for b in batches if unchanged(b)}
    changed = [b for b in batches if b not in entries]
    few = [len(changed) <= FEW_BATCHES]

    def load(b: str) -> tuple[pd.DataFrame, int]:
        with fs.open(f"{sources}/{b}.parquet", "rb") as fh:
            frame = _normalized(pd.read_parquet(fh))
        keep = (frame["batch"] == b).fillna(False) & frame["id"].isin(source.ids(b, few=few[0])).fillna(False)
        kept = frame[keep.to_numpy(dtype=bool)]
        kept = kept.sort_values(["id", "result_index"], kind="stable").reset_index(drop=True)
        return kept, len(frame) - len(kept)

    def write(b: str, frame: pd.DataFrame, extras: dict[str, str], left_out: int) -> dict[str, Any]:
        name = part_name(b)
        data = _parquet_bytes(_conform(frame, extras), arrow_schema(extras))
        atomic_write(fs, f"{root}/{name}", data, hidden_temp=True)
        if on_write is not None:
            on_write(b)
        result.rewritten.append(b)
        return {
            "file": name,
            "source": found[b],
            "manifest": wanted[b],
            "dtypes": extras_dtypes(frame),
            "schema": _schema_id(extras),
            "summary": summarize(frame, left_out),
        }

    # Each changed batch is read once and written with the schema known so far (in the usual case,
    # the final one); a batch whose columns change that schema makes the others be written again.
    dtypes = {b: entries[b]["dtypes"] for b in entries}
    extras = unify(dtypes[b] for b in sorted(dtypes))
    for b in changed:
        frame, left_out = load(b)
        dtypes[b] = extras_dtypes(frame)
        if any(extras.get(c) != t for c, t in dtypes[b].items()):
            extras = unify(dtypes[x] for x in sorted(dtypes))
        entries[b] = write(b, frame, extras, left_out)
    final = unify(dtypes[b] for b in batches)
    final_id = _schema_id(final)
    stale = [b for b in batches if entries[b].get("schema") != final_id]
    few[0] = few[0] and len(stale) <= FEW_BATCHES
    for b in stale:
        frame, left_out = load(b)
        entries[b] = write(b, frame, final, left_out)
    result.kept = [b for b in batches if b not in set(result.rewritten)]
    result.rewritten = sorted(set(result.rewritten))

    if not batches:
        empty = _parquet_bytes(template(final), arrow_schema(final))
        atomic_write(fs, f"{root}/{EMPTY_FILE}", empty, hidden_temp=True)
    new_state = {
        "format": STATE_FORMAT,
        "schema": final,
        "manifest_file": stamp,
        "manifest_batches": wanted,
        "batches": {b: entries[b] for b in batches},
    }
    atomic_write(fs, f"{root}/{STATE_FILE}", json.dumps(new_state).encode(), hidden_temp=True)

    # Files of batches that left the catalog go last: a reader meanwhile sees the old rows or none.
    live = {entries[b]["file"] for b in batches} | ({EMPTY_FILE} if not batches else set())
    for name in sorted(files):
        if name.endswith(".parquet") and not name.startswith((".", "_")) and name not in live:
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(f"{root}/{name}")
            if name.startswith(PART_PREFIX):
                result.removed.append(name[len(PART_PREFIX) : -len(".parquet")])
    result.batches = {b: entries[b] for b in batches}
    result.dtypes = {**CATALOG_DTYPES, **final}
    result.files = [f"{root}/{name}" for name in sorted(live)]
    return result


def catalog_files(fs: AbstractFileSystem, root: str) -> list[str]:
    """The catalog's data files (paths on ``fs``), in name order; none before the first refresh."""
    root = root.rstrip("/")
    if _is_file(fs, root):
        return [root]  # a single-file catalog not refreshed yet
    names = sorted(n for n in _listing(fs, root) if n.endswith(".parquet") and not n.startswith((".", "_")))
    return [f"{root}/{n}" for n in names]


def read_catalog(
    fs: AbstractFileSystem,
    root: str,
    columns: list[str] | None = None,
    *,
    filter: ds.Expression | None = None,
) -> pd.DataFrame:
    """The catalog (or some of its columns, rows matching ``filter``) as one DataFrame, with its dtypes.

    Reads only the columns asked for (Parquet's column projection); a column the catalog does not
    have is left out rather than failing. Raises FileNotFoundError before the first refresh.
    """
    files = catalog_files(fs, root)
    if not files:
        raise FileNotFoundError(f"no catalog at {root}: materialize image_catalog first")
    dataset = ds.dataset(files, format="parquet", filesystem=fs)
    if columns is not None:
        columns = [c for c in columns if c in dataset.schema.names]
    return dataset.to_table(columns=columns, filter=filter).to_pandas()


def sample_rows(
    fs: AbstractFileSystem,
    root: str,
    successes: int,
    *,
    max_files: int = 20,
    files: list[str] | None = None,
) -> pd.DataFrame:
    """The first rows of the catalog, file by file, until ``successes`` success rows (or ``max_files``
    files) are read: enough for a gallery, without reading the whole catalog. ``files``: the data
    files when known (a refresh's :attr:`CatalogRefresh.files`), else the folder is listed."""
    frames: list[pd.DataFrame] = []
    found = 0
    for path in (catalog_files(fs, root) if files is None else files)[:max_files]:
        with fs.open(path, "rb") as fh:
            frame = pq.read_table(fh).to_pandas()
        frames.append(frame)
        found += int((frame["state"] == "success").fillna(False).sum())
        if found >= successes:
            break
    return pd.concat(frames, ignore_index=True) if frames else template({})
