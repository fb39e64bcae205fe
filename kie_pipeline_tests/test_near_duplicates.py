"""Near-duplicates end to end: each copy's perceptual hash in the catalog, and the catalog's
no_near_duplicates check finding planted duplicates (pairs across splits first) and nothing else."""

from __future__ import annotations

import pandas as pd

from kie_pipeline.emulator import EmulatorServer

from .pipeline_helpers import Pipeline, metadata, write_manifest

ROWS = [
    {"id": "fox", "batch": "b", "prompt": "A red fox in snow", "split": "train"},
    # The same prompt: the emulator (like a model with a fixed seed) renders the same picture.
    {"id": "fox-again", "batch": "b", "prompt": "A red fox in snow", "split": "test"},
    {"id": "owl", "batch": "b", "prompt": "An owl at dusk over a frozen lake", "split": "train"},
    {"id": "city", "batch": "b", "prompt": "Tokyo at night in the rain", "split": "val"},
    {"id": "fox-twin", "batch": "b", "prompt": "A red fox in snow", "split": "train"},
]


def _check(result, name: str = "no_near_duplicates"):
    return next(e for e in result.get_asset_check_evaluations() if e.check_name == name)


def test_planted_near_duplicates_are_found_across_splits_first(
    env, emulator: EmulatorServer, instance
) -> None:
    emulator.config.same_prompt_same_image = True
    write_manifest(str(env / "prompts.csv"), ROWS)
    pipe = Pipeline(instance)
    pipe.manifest()
    pipe.batch("b")
    result = pipe.catalog(raise_on_error=False)
    catalog = pd.read_parquet(env / "store" / "image_catalog.parquet")
    assert catalog["phash"].notna().all() and catalog["phash"].dtype == "Int64"
    check = _check(result)
    md = {k: getattr(v, "value", v) for k, v in check.metadata.items()}
    assert not check.passed and str(check.severity).endswith("WARN")
    # fox, fox-again and fox-twin are one picture: 3 pairs, 2 of them across splits (train/test).
    assert (md["pairs"], md["pairs_across_splits"], md["hashed"]) == (3, 2, 5)
    table = md["worst"].splitlines()
    assert "crosses" in table[2] and "crosses" in table[3] and "crosses" not in table[4]
    assert "owl" not in md["worst"] and "city" not in md["worst"]
    assert md["worst"].count("data:image/jpeg;base64,") == 6  # both files of each pair, inline
    # The catalog itself is written: a near-duplicate is a warning, not a failure.
    assert metadata(result, "image_catalog")["rows"] == 5


def test_distinct_prompts_have_no_near_duplicates(env, emulator: EmulatorServer, instance) -> None:
    write_manifest(str(env / "prompts.csv"), [r for r in ROWS if r["id"] in ("fox", "owl", "city")])
    Pipeline(instance).manifest()
    pipe = Pipeline(instance)
    pipe.batch("b")
    check = _check(pipe.catalog())
    assert check.passed and check.metadata["pairs"].value == 0 and check.metadata["hashed"].value == 3
