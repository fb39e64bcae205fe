"""The dataset export: Parquet shards that ``datasets.load_dataset`` reads back as the catalog's images.

One test runs the sample manifest through the emulator and compares what ``datasets`` loads (rows,
decoded pixels, splits) with the catalog and the durable copies; the incremental behaviour is checked
on that same catalog (batches added, changed, removed by editing the frame). The other tests build a
small catalog by hand on a local store: no successes, video and audio rows, a bad copy, and S3.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import dagster as dg
import datasets
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from kie_pipeline.pipeline.export import STATE_FILE, export_dataset
from kie_pipeline.pipeline.schema import CATALOG_DTYPES
from kie_pipeline.pipeline.store import TaskStore

from .pipeline_helpers import Pipeline


def _load(folder: Path) -> datasets.DatasetDict:
    """The export as a trainer reads it: the folder, through its card (no cache left behind)."""
    return datasets.load_dataset(
        str(folder), cache_dir=str(folder.parent / "hf-cache"), download_mode="force_redownload"
    )


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in (folder / "data").rglob("*.parquet")}


def test_the_export_loads_with_datasets_and_matches_the_catalog_then_updates_incrementally(
    env: Path, instance: dg.DagsterInstance
) -> None:
    """Rows, pixels and splits round-trip; then a batch added, changed or removed touches only its
    own shards (the summary and the files' mtimes say so)."""
    catalog = Pipeline(instance).all()
    store = TaskStore(str(env / "store"))
    success = catalog[catalog["state"] == "success"]
    assert len(success) == 5

    out = env / "store" / "export"
    summary = export_dataset(store, catalog, "export", settings={"manifest": "prompts.csv"})
    assert summary.rows == 5 and summary.skipped == {}
    assert summary.rows_per_split == {"test": 1, "train": 2, "val": 2}
    # one shard per (split, batch): animals has train, val, test; cities has train, val
    assert len(summary.shards_written) == 5 and not summary.shards_kept and not summary.shards_removed

    loaded = _load(out)
    assert set(loaded) == {"train", "val", "test"}
    assert isinstance(loaded["train"].features["image"], datasets.Image)
    for split, ds in loaded.items():
        expected = success[success["split"] == split].set_index("id")
        assert sorted(ds["id"]) == sorted(expected.index)
        for row in ds:
            source = expected.loc[row["id"]]
            assert row["prompt"] == source["prompt"] and row["model"] == source["model"]
            assert row["sha256"] == source["sha256"] and row["split"] == split
            assert (row["width"], row["height"]) == (source["width"], source["height"])
            assert row["batch"] == source["batch"]
            image = row["image"]
            assert isinstance(image, Image.Image) and image.size == (source["width"], source["height"])
            durable = store.read_bytes(source["image_uri"])
            assert np.array_equal(np.asarray(image.convert("RGB")), _pixels(durable))
    card = (out / "README.md").read_text()
    assert "path: data/train/*.parquet" in card and "| prompt | string |" in card
    assert "kie-pipeline version" in card and '- manifest: "prompts.csv"' in card

    # Nothing changed: every shard kept, no file rewritten.
    before = _mtimes(out)
    again = export_dataset(store, catalog, "export")
    assert not again.shards_written and len(again.shards_kept) == 5 and _mtimes(out) == before

    # Remove a batch: its shards go, the others stay untouched.
    animals = catalog["batch"] == "animals"
    removed = export_dataset(store, catalog[~animals], "export")
    assert not removed.shards_written and len(removed.shards_kept) == 2 and len(removed.shards_removed) == 3
    assert all("animals" in name for name in removed.shards_removed)
    after = _mtimes(out)
    assert set(after) == set(removed.shards_kept) and all(after[k] == before[k] for k in after)
    assert sorted(_load(out)["train"]["id"]) == ["tokyo"]

    # Add it back: only its shards are written.
    added = export_dataset(store, catalog, "export")
    assert sorted(added.shards_written) == sorted(removed.shards_removed)
    assert sorted(added.shards_kept) == sorted(removed.shards_kept)
    assert all(_mtimes(out)[k] == before[k] for k in removed.shards_kept)

    # Change one row of a batch: only that row's shard is rewritten.
    changed_catalog = catalog.copy()
    changed_catalog.loc[changed_catalog["id"] == "paris", "prompt"] = "Paris rooftops at dawn"
    before = _mtimes(out)
    changed = export_dataset(store, changed_catalog, "export")
    assert len(changed.shards_written) == 1 and "cities" in changed.shards_written[0]
    assert changed.shards_written[0].startswith("data/val/")
    after = _mtimes(out)
    assert [k for k in after if after[k] != before[k]] == changed.shards_written
    val = _load(out)["val"]
    assert dict(zip(val["id"], val["prompt"], strict=True))["paris"] == "Paris rooftops at dawn"


# -- a catalog by hand ------------------------------------------------------------------------------


def _png(color: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def _catalog(store: TaskStore, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Catalog rows with their files written to the store (``data`` is the file's content)."""
    out = []
    for row in rows:
        row = dict(row)
        data = row.pop("data", None)
        base = {"batch": "b1", "model": "m", "prompt": f"prompt {row['id']}", "result_index": 0}
        base.update(row)
        if data is not None:
            uri = store.image_uri(f"{base['id']}-{base['result_index']}", base.get("format", "png"))
            store.write_bytes(uri, data)
            base.update(image_uri=uri, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
        out.append(base)
    frame = pd.DataFrame(out)
    for name, dtype in CATALOG_DTYPES.items():
        frame[name] = frame[name].astype(dtype) if name in frame else pd.Series(pd.NA, index=frame.index)
        frame[name] = frame[name].astype(dtype)
    own = [c for c in frame.columns if c not in CATALOG_DTYPES]
    return frame[[*CATALOG_DTYPES, *own]]


def test_no_successes_export_no_shards_and_a_card_that_says_so(tmp_path: Path) -> None:
    """datasets cannot load a split of zero rows: an export without images has no data files (and
    the ones of an earlier export are removed); the first success makes it loadable."""
    store = TaskStore(str(tmp_path / "store"))
    out = tmp_path / "out"
    one = _catalog(store, [{"id": "a", "state": "success", "split": "val", "data": _png((1, 2, 3))}])
    first = export_dataset(store, one, str(out))
    assert first.rows == 1 and first.rows_per_split == {"val": 1}
    catalog = _catalog(
        store, [{"id": "a", "state": "fail", "split": "val"}, {"id": "b", "state": "uncertain"}]
    )
    summary = export_dataset(store, catalog, str(out))
    assert summary.rows == 0 and summary.skipped == {"state:fail": 1, "state:uncertain": 1}
    assert summary.shards_removed == first.shards_written and not summary.shards_written
    assert not list((out / "data").rglob("*.parquet"))
    card = (out / "README.md").read_text()
    assert "no images yet" in card and "configs:" not in card and "| image | Image |" in card
    again = export_dataset(store, one, str(out))
    assert again.shards_written == first.shards_written
    assert _load(out)["val"]["id"] == ["a"]


def test_video_and_audio_are_skipped_and_counted_rows_without_a_split_go_to_train(tmp_path: Path) -> None:
    """One image row among video and audio; the manifest's own columns (``style``) are kept, typed."""
    store = TaskStore(str(tmp_path / "store"))
    rows = [
        {"id": "img", "state": "success", "media_type": "image", "data": _png((9, 9, 9)), "style": "oil"},
        {"id": "vid", "state": "success", "media_type": "video", "format": "mp4", "data": b"not really"},
        {"id": "mus", "state": "success", "media_type": "audio", "format": "mp3", "data": b"nor this"},
    ]
    catalog = _catalog(store, rows)
    summary = export_dataset(store, catalog, str(tmp_path / "out"))
    assert summary.rows == 1 and summary.skipped == {"media_type:audio": 1, "media_type:video": 1}
    loaded = _load(tmp_path / "out")
    assert list(loaded) == ["train"]
    row = loaded["train"][0]
    assert row["id"] == "img" and row["style"] == "oil" and row["split"] == "train"
    assert np.array_equal(np.asarray(row["image"].convert("RGB")), _pixels(_png((9, 9, 9))))
    state = (tmp_path / "out" / STATE_FILE).read_text()
    assert "data/train/b1-" in state


def test_large_batches_are_cut_into_shards_strays_are_removed_bad_copies_refused(tmp_path: Path) -> None:
    store = TaskStore(str(tmp_path / "store"))
    rows = [
        {"id": f"r{i}", "state": "success", "data": _png((i, 0, 0)), "seed": i, "note": i if i % 2 else "x"}
        for i in range(5)
    ]
    rows[0]["extra"] = {"nested": [1, 2]}
    catalog = _catalog(store, rows)
    size = int(catalog["bytes"].max())
    summary = export_dataset(store, catalog, str(tmp_path / "out"), max_shard_bytes=2 * size)
    assert len(summary.shards_written) == 3
    train = _load(tmp_path / "out")["train"]
    got = {row["id"]: (row["seed"], row["note"], row["extra"]) for row in train.remove_columns("image")}
    # the manifest's own columns: ints stay ints, mixed and nested values become text
    assert got == {
        "r0": (0, "x", '{"nested": [1, 2]}'),
        "r1": (1, "1", None),
        "r2": (2, "x", None),
        "r3": (3, "3", None),
        "r4": (4, "x", None),
    }
    schemas = {str(pq.read_schema(tmp_path / "out" / name)) for name in summary.shards_written}
    assert len(schemas) == 1  # every shard has the same schema (datasets needs it)

    # A stray file under data/ (a crashed writer's) goes; a lost state file means every shard is rewritten.
    (tmp_path / "out" / "data" / "train" / "old.parquet").write_bytes(b"junk")
    (tmp_path / "out" / STATE_FILE).unlink()
    again = export_dataset(store, catalog, str(tmp_path / "out"), max_shard_bytes=2 * size)
    assert sorted(again.shards_written) == sorted(summary.shards_written)
    assert again.shards_removed == ["data/train/old.parquet"]
    assert len(_load(tmp_path / "out")["train"]) == 5

    missing = catalog.copy()
    missing.loc[1, "image_uri"] = store.image_uri("nowhere", "png")
    with pytest.raises(ValueError, match="missing"):
        export_dataset(store, missing, str(tmp_path / "again"))
    store.write_bytes(catalog["image_uri"].iloc[0], _png((200, 200, 200)))
    with pytest.raises(ValueError, match="sha256"):
        export_dataset(store, catalog, str(tmp_path / "again"))
    with pytest.raises(ValueError, match="split names"):
        export_dataset(store, catalog.assign(split="my-split"), str(tmp_path / "bad"))


def test_export_to_s3(tmp_path: Path, s3_endpoint: str) -> None:
    """The destination on S3 (moto on loopback); downloaded, it loads the same."""
    import fsspec

    options = {"endpoint_url": s3_endpoint}
    store = TaskStore(str(tmp_path / "store"))
    catalog = _catalog(store, [{"id": "a", "state": "success", "data": _png((5, 6, 7)), "split": "val"}])
    summary = export_dataset(store, catalog, "s3://datasets/export", destination_options=options)
    assert summary.rows == 1
    again = export_dataset(store, catalog, "s3://datasets/export", destination_options=options)
    assert not again.shards_written and len(again.shards_kept) == 1
    fs = fsspec.filesystem("s3", **options)
    local = tmp_path / "download"
    fs.get("datasets/export/", str(local), recursive=True)
    assert sorted(os.listdir(local)) == ["README.md", "data", STATE_FILE]
    assert _load(local)["val"]["id"] == ["a"]


def test_webdataset_tars_hold_each_image_and_its_columns_and_follow_the_parquet_shards(
    tmp_path: Path,
) -> None:
    """Tars read with tarfile (the webdataset package is not a dependency): {key}.png + {key}.json per
    row, in row order; kept when unchanged; removed when the option is turned off."""
    store = TaskStore(str(tmp_path / "store"))
    rows = [
        {"id": "a.1", "state": "success", "data": _png((1, 1, 1)), "split": "val", "style": "x"},
        {"id": "b", "state": "success", "data": _png((2, 2, 2)), "split": "val", "style": "y"},
        {"id": "c", "state": "success", "data": _png((3, 3, 3))},
    ]
    catalog = _catalog(store, rows)
    out = tmp_path / "out"
    summary = export_dataset(store, catalog, str(out), webdataset=True)
    tars = sorted(n for n in summary.shards_written if n.endswith(".tar"))
    assert [t.split("/")[1] for t in tars] == ["train", "val"] and len(summary.shards_written) == 4
    with tarfile.open(out / tars[1]) as tar:
        names = tar.getnames()
        assert names == ["a_1-0.png", "a_1-0.json", "b-0.png", "b-0.json"]
        assert tar.extractfile("b-0.png").read() == _png((2, 2, 2))
        meta = json.loads(tar.extractfile("a_1-0.json").read())
    assert meta["id"] == "a.1" and meta["style"] == "x" and meta["split"] == "val"
    assert meta["sha256"] == catalog.loc[catalog["id"] == "a.1", "sha256"].iloc[0]
    assert "webdataset/<split>/*.tar" in (out / "README.md").read_text()

    again = export_dataset(store, catalog, str(out), webdataset=True)
    assert not again.shards_written and len(again.shards_kept) == 4
    off = export_dataset(store, catalog, str(out))
    assert sorted(off.shards_removed) == tars and not off.shards_written
    assert not list((out / "webdataset").rglob("*.tar"))
