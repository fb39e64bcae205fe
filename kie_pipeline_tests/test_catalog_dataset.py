"""The catalog as a folder of one Parquet file per batch (kie_pipeline.pipeline.catalog_dataset):
incremental refreshes, removed batches, manifest filters, the mixed-dtype rule, the migration of a
single-file catalog, one table for pandas, pyarrow and DuckDB, and the asset's checks on it."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import duckdb
import fsspec
import pandas as pd
import pyarrow.dataset as ds
import pytest

from kie_pipeline.pipeline.catalog import typed
from kie_pipeline.pipeline.catalog_dataset import (
    EMPTY_FILE,
    STATE_FILE,
    manifest_fingerprints,
    part_name,
    read_catalog,
    refresh_catalog,
)
from kie_pipeline.pipeline.schema import CATALOG_DTYPES

from .pipeline_helpers import Pipeline, metadata

FS = fsspec.filesystem("file")


def results(store: Path, batch: str, n: int, *, start: int = 0, **extra: object) -> pd.DataFrame:
    """A synthetic result table of ``n`` success rows (ids ``{batch}-{i}``), with a 3-byte copy each."""
    ids = [f"{batch}-{i:03d}" for i in range(start, start + n)]
    images = store / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i in ids:
        (images / f"{i}.png").write_bytes(b"png")
    df = pd.DataFrame(
        {
            "id": ids[::-1],  # unsorted on purpose: each file is sorted by id
            "batch": batch,
            "model": "nano-banana-pro",
            "prompt": [f"prompt {i}" for i in ids[::-1]],
            "state": "success",
            "result_index": 0,
            "image_uri": [str(images / f"{i}.png") for i in ids[::-1]],
            "bytes": 3,
            "phash": [hash(i) & 0x7FFF_FFFF_FFFF_FFFF for i in ids[::-1]],
            "credits": 18.0,
            **extra,
        }
    )
    return typed(df)


def write_results(store: Path, batch: str, df: pd.DataFrame) -> None:
    folder = store / "generated_images"
    folder.mkdir(parents=True, exist_ok=True)
    df.to_parquet(folder / f"{batch}.parquet", index=False)


def manifest_of(*frames: pd.DataFrame) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame({"batch": pd.Series(dtype="string"), "id": pd.Series(dtype="string")})
    return pd.concat([f[["batch", "id"]] for f in frames], ignore_index=True)


class Catalog:
    """A store with result tables, and the catalog folder refreshed from them; counts file writes."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.root = str(store / "image_catalog.parquet")
        self.sources = str(store / "generated_images")
        self.writes: list[str] = []

    def refresh(self, manifest: pd.DataFrame | None):
        return refresh_catalog(FS, self.root, self.sources, manifest, on_write=self.writes.append)

    def mtimes(self) -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in Path(self.root).glob("*.parquet")}


def test_zero_batches_is_one_empty_table_with_every_column(tmp_path) -> None:
    cat = Catalog(tmp_path)
    done = cat.refresh(None)
    assert done.rows == 0 and done.batches == {} and cat.writes == []
    assert sorted(os.listdir(cat.root)) == [STATE_FILE, EMPTY_FILE]
    empty = pd.read_parquet(cat.root)
    assert len(empty) == 0 and list(empty.columns) == list(CATALOG_DTYPES)
    assert duckdb.sql(f"select count(*) from read_parquet('{cat.root}/*.parquet')").fetchall() == [(0,)]
    # The first batch replaces the empty file.
    a = results(tmp_path, "a", 2)
    write_results(tmp_path, "a", a)
    cat.refresh(manifest_of(a))
    assert sorted(os.listdir(cat.root)) == [STATE_FILE, part_name("a")]


def test_one_batch_and_many_read_as_one_table_by_pandas_pyarrow_and_duckdb(tmp_path) -> None:
    cat = Catalog(tmp_path)
    a = results(tmp_path, "a", 3, split="train")
    write_results(tmp_path, "a", a)
    one = cat.refresh(manifest_of(a))
    assert (one.rows, one.rewritten, one.kept) == (3, ["a"], [])
    assert list(pd.read_parquet(cat.root)["id"]) == ["a-000", "a-001", "a-002"]  # sorted in the file

    frames = [a] + [results(tmp_path, b, 4, split="val") for b in ("b", "c_d", "_hidden")]
    for f in frames[1:]:
        write_results(tmp_path, str(f["batch"].iloc[0]), f)
    many = cat.refresh(manifest_of(*frames))
    assert many.rows == 15 and many.rewritten == ["_hidden", "b", "c_d"] and many.kept == ["a"]
    assert many.total("by_state") == {"success": 15} and many.sum("credits") == 15 * 18.0

    table = pd.read_parquet(cat.root)
    assert len(table) == 15 and table.duplicated(["id"]).sum() == 0
    assert set(table["batch"]) == {"a", "b", "c_d", "_hidden"}  # a batch named _x is not skipped
    assert str(table["phash"].dtype) == "Int64" and str(table["bytes"].dtype) == "Int64"
    assert str(table["created_at"].dtype) == "datetime64[ms, UTC]"
    assert list(table.columns) == [*CATALOG_DTYPES, "split"]
    assert ds.dataset(cat.root, format="parquet").count_rows() == 15
    for path in Path(cat.root).glob("part-*.parquet"):
        ids = list(pd.read_parquet(path)["id"])
        assert ids == sorted(ids)
    con = duckdb.connect()
    got = con.sql(
        f"select batch, count(*) from read_parquet('{cat.root}/*.parquet') group by batch order by batch"
    ).fetchall()
    assert got == [("_hidden", 4), ("a", 3), ("b", 4), ("c_d", 4)]
    assert read_catalog(FS, cat.root, ["id", "no_such_column"]).shape == (15, 1)


def test_a_refresh_after_one_batch_changed_rewrites_only_that_batch(tmp_path) -> None:
    cat = Catalog(tmp_path)
    frames = {b: results(tmp_path, b, 5) for b in ("a", "b", "c")}
    for b, f in frames.items():
        write_results(tmp_path, b, f)
    manifest = manifest_of(*frames.values())
    cat.refresh(manifest)
    assert sorted(cat.writes) == ["a", "b", "c"]
    before = cat.mtimes()

    cat.writes.clear()
    again = cat.refresh(manifest)  # nothing changed: nothing written
    assert cat.writes == [] and again.kept == ["a", "b", "c"] and cat.mtimes() == before

    changed = frames["b"].assign(state=["success", "success", "fail", "success", "success"])
    write_results(tmp_path, "b", changed)  # a re-run of batch b rewrote its result table
    done = cat.refresh(manifest)
    assert cat.writes == ["b"] and done.rewritten == ["b"] and done.kept == ["a", "c"]
    after = cat.mtimes()
    assert after[part_name("a")] == before[part_name("a")] and after[part_name("c")] == before[part_name("c")]
    assert after[part_name("b")] != before[part_name("b")]
    assert done.total("by_state") == {"success": 14, "fail": 1}
    assert done.crosstab("by_model") == {"nano-banana-pro": {"success": 14, "fail": 1}}


def test_a_removed_batch_disappears_and_a_manifest_change_filters_rows(tmp_path) -> None:
    cat = Catalog(tmp_path)
    a, b = results(tmp_path, "a", 4), results(tmp_path, "b", 4)
    write_results(tmp_path, "a", a)
    write_results(tmp_path, "b", b)
    cat.refresh(manifest_of(a, b))

    cat.writes.clear()
    gone = cat.refresh(manifest_of(a))  # batch b left the manifest; its result table stays
    assert gone.removed == ["b"] and cat.writes == [] and not Path(cat.root, part_name("b")).exists()
    assert set(pd.read_parquet(cat.root)["batch"]) == {"a"}

    fewer = a[a["id"] != "a-001"]
    filtered = cat.refresh(manifest_of(fewer))  # an id left batch a: only a's file is written again
    assert cat.writes == ["a"] and filtered.rows == 3 and filtered.rows_left_out == 1
    assert "a-001" not in set(pd.read_parquet(cat.root)["id"])
    # A batch of the manifest without a result table is reported, not an error.
    assert cat.refresh(manifest_of(fewer, results(tmp_path, "later", 1))).not_generated == ["later"]


def test_a_column_whose_dtype_differs_between_batches_is_text_in_every_file(tmp_path) -> None:
    cat = Catalog(tmp_path)
    a = results(tmp_path, "a", 2).assign(score=pd.array([1, None], dtype="Int64"))
    b = results(tmp_path, "b", 2).assign(score=pd.array([3, 4], dtype="Int64"))
    c = results(tmp_path, "c", 1)  # without the column: missing values of its type
    for f in (a, b, c):
        write_results(tmp_path, str(f["batch"].iloc[0]), f)
    manifest = manifest_of(a, b, c)
    cat.refresh(manifest)
    ints = pd.read_parquet(cat.root).set_index("id")
    # (results() lists ids in reverse: the first value is the last id's)
    assert str(ints["score"].dtype) == "Int64" and ints.loc["a-001", "score"] == 1
    assert pd.isna(ints.loc["c-000", "score"])

    cat.writes.clear()
    write_results(tmp_path, "b", b.assign(score=pd.array(["high", None], dtype="string")))
    cat.refresh(manifest)
    assert sorted(cat.writes) == ["a", "b", "c"]  # the schema changed: every file is written again
    mixed = pd.read_parquet(cat.root).set_index("id")
    assert str(mixed["score"].dtype) == "string"
    assert mixed.loc["a-001", "score"] == "1" and mixed.loc["b-001", "score"] == "high"
    assert pd.isna(mixed.loc["a-000", "score"]) and pd.isna(mixed.loc["b-000", "score"])
    assert duckdb.sql(f"select count(score) from read_parquet('{cat.root}/*.parquet')").fetchall() == [(2,)]


def test_a_single_file_catalog_is_replaced_by_the_folder(tmp_path) -> None:
    cat = Catalog(tmp_path)
    a = results(tmp_path, "a", 3)
    write_results(tmp_path, "a", a)
    a.to_parquet(cat.root, index=False)  # the catalog as it was written before: one file
    done = cat.refresh(manifest_of(a))
    assert done.migrated and Path(cat.root).is_dir() and len(pd.read_parquet(cat.root)) == 3
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # nothing left beside it
    assert not cat.refresh(manifest_of(a)).migrated


def test_manifest_fingerprints_ignore_row_order_and_see_a_moved_id() -> None:
    m = pd.DataFrame({"batch": ["a", "a", "b"], "id": ["x", "y", "z"]})
    assert manifest_fingerprints(m) == manifest_fingerprints(m.iloc[::-1])
    moved = pd.DataFrame({"batch": ["a", "b", "b"], "id": ["x", "y", "z"]})
    assert manifest_fingerprints(moved)["a"] != manifest_fingerprints(m)["a"]
    assert manifest_fingerprints(m.iloc[:0]) == {}


# -- the asset and its checks on a synthetic store (no Kie, no emulator) ---------------------------------
@pytest.fixture
def synthetic(env: Path) -> Path:
    """Three batches of result tables and a prompt_manifest snapshot holding every row."""
    store = env / "store"
    frames = [results(store, b, 30, split="train" if b != "c" else "test") for b in ("a", "b", "c")]
    for f in frames:
        write_results(store, str(f["batch"].iloc[0]), f)
    manifest_of(*frames).to_parquet(store / "prompt_manifest.parquet", index=False)
    return store


def _checks(result) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_the_asset_refreshes_one_batch_and_its_checks_pass(synthetic, instance) -> None:
    pipe = Pipeline(instance)
    first = pipe.catalog()
    md = metadata(first, "image_catalog")
    assert (md["rows"], md["batches"], md["batches_rewritten"], md["batches_kept"]) == (90, 3, 3, 0)
    assert md["by_state"] == {"success": 90} and "| a " in md["by_batch"]
    assert all(e.passed for e in _checks(first).values())
    write_results(synthetic, "b", results(synthetic, "b", 30))
    md = metadata(pipe.catalog(), "image_catalog")
    assert (md["batches_rewritten"], md["batches_kept"]) == (1, 2)


def test_the_checks_catch_a_missing_copy_duplicates_and_near_duplicates(synthetic, instance) -> None:
    (synthetic / "images" / "a-003.png").unlink()
    c = results(synthetic, "c", 30, split="test")
    c.loc[c["id"] == "c-005", "phash"] = int(c.loc[c["id"] == "c-006", "phash"].iloc[0]) ^ 0b11
    b = results(synthetic, "b", 30)
    write_results(synthetic, "b", pd.concat([b, b.head(2)]))  # a hand-edited table: two rows twice
    write_results(synthetic, "c", c)
    result = Pipeline(instance).catalog(raise_on_error=False)
    checks = _checks(result)
    assert not result.success  # catalog_ids_unique is blocking
    assert checks["catalog_copies_match"].metadata["missing_or_wrong_size"].value == ["a-003"]
    assert sorted(checks["catalog_ids_unique"].metadata["duplicates"].value) == ["b-028", "b-029"]
    near = checks["no_near_duplicates"]
    # The planted pair, and the two rows written twice (each the same picture as its copy).
    assert not near.passed and near.metadata["pairs"].value == 3
    assert "`c-005`" in near.metadata["worst"].value and "`c-006`" in near.metadata["worst"].value


def test_by_batch_shows_the_largest_batches_only(env, instance) -> None:
    store = env / "store"
    frames = [results(store, f"b{i:02d}", 1 + i % 3) for i in range(25)]
    for f in frames:
        write_results(store, str(f["batch"].iloc[0]), f)
    manifest_of(*frames).to_parquet(store / "prompt_manifest.parquet", index=False)
    md = metadata(Pipeline(instance).catalog(), "image_catalog")
    assert md["batches"] == 25 and "5 more batch values not shown" in md["by_batch"]
    total = next(line for line in md["by_batch"].splitlines() if line.startswith("| total"))
    assert md["by_batch"].count("\n| b") == 20 and total.split("|")[-2].strip() == str(md["rows"]) == "49"


def test_the_readme_query_block_runs_as_written(tmp_path, monkeypatch) -> None:
    """README's "Querying the catalog" block, run in a folder whose data/store holds a catalog."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("### Querying the catalog", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    store = tmp_path / "data" / "store"
    frames = [results(store, b, 3) for b in ("a", "b")]
    for f in frames:
        write_results(store, str(f["batch"].iloc[0]), f)
    cat = Catalog(store)
    cat.refresh(manifest_of(*frames))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert len(scope["catalog"]) == 6 and scope["ok"].num_rows == 6
    assert scope["by_model"].to_dict("records") == [{"model": "nano-banana-pro", "n": 6}]


def test_a_downstream_asset_still_gets_the_catalog_as_one_dataframe(synthetic, instance) -> None:
    """An asset of the user's that takes ``image_catalog`` as an input (through the pipeline's IO
    manager) reads the folder as one table, as it read the single file before."""
    from kie_pipeline.definitions import ASSETS, build_resources

    seen: dict = {}

    @dg.asset(ins={"image_catalog": dg.AssetIn("image_catalog")}, io_manager_key="parquet_io")
    def my_report(image_catalog: pd.DataFrame) -> dg.MaterializeResult:
        seen["rows"], seen["dtype"] = len(image_catalog), str(image_catalog["phash"].dtype)
        return dg.MaterializeResult()

    selection = ["image_catalog", "my_report"]
    dg.materialize([*ASSETS, my_report], selection=selection, resources=build_resources(), instance=instance)
    assert seen == {"rows": 90, "dtype": "Int64"}


def test_a_manifest_file_is_read_only_for_the_batch_that_changed(tmp_path) -> None:
    """The snapshot as a Parquet file: unchanged, its per-batch hashes come from the state; the one
    changed batch reads its own ids from it, so a row the manifest does not hold is still left out."""
    cat = Catalog(tmp_path)
    frames = {b: results(tmp_path, b, 5) for b in ("a", "b", "c")}
    for b, f in frames.items():
        write_results(tmp_path, b, f)
    manifest = str(tmp_path / "prompt_manifest.parquet")
    manifest_of(*frames.values()).assign(prompt="unused").to_parquet(manifest, index=False)
    assert refresh_catalog(FS, cat.root, cat.sources, manifest).rows == 15
    stray = results(tmp_path, "b", 1, start=7)  # a row of an older snapshot, not in this one
    write_results(tmp_path, "b", pd.concat([frames["b"], stray]))
    done = cat.refresh(manifest)
    assert cat.writes == ["b"] and done.rows == 15 and done.rows_left_out == 1
    assert "b-007" not in set(pd.read_parquet(cat.root)["id"])
    Path(manifest).unlink()  # no snapshot: no batch
    assert cat.refresh(manifest).batches == {} and pd.read_parquet(cat.root).empty
