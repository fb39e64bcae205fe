"""Manifests from templates (issue 14): expansion, stable ids and splits, samples, every validation
problem, the cap, ``kie-pipeline expand``, and a template run through the pipeline twice against the
emulator (the second expansion adds a value: only its rows create tasks)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from kie_pipeline.cli import cli
from kie_pipeline.pipeline.manifest import ManifestError, load_manifest, validate_manifest
from kie_pipeline.pipeline.templates import (
    Template,
    TemplateError,
    expand_template,
    load_template,
    parse_template,
    row_id_of,
    write_manifest_file,
)

from .pipeline_helpers import Pipeline

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "data" / "templates" / "animals.yaml"


def template(**overrides: Any) -> dict[str, Any]:
    """A small valid template (3 × 2 = 6 rows) with ``overrides`` (None removes a key)."""
    base: dict[str, Any] = {
        "prompt": "A {animal} in {style} style",
        "slots": {"animal": ["fox", "owl", "cat"], "style": ["watercolor", "woodcut"]},
        "columns": {"batch": "animals", "model": "nano-banana-pro", "aspect_ratio": "1:1"},
        "split": {"seed": 1, "fractions": {"train": 0.8, "val": 0.1, "test": 0.1}},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def expand(data: dict[str, Any], **limits: int) -> pd.DataFrame:
    """The expansion of ``data``, checked by validate_manifest as the pipeline will."""
    df = parse_template(data, **limits).expand()
    validate_manifest(df)
    return df


def problems(data: Any, **limits: int) -> set[tuple[str, str]]:
    """(field, message) of every problem of ``data``; it must be refused."""
    with pytest.raises(TemplateError) as caught:
        parse_template(data, **limits)
    assert all(p.row is None and p.id is None for p in caught.value.problems)
    return {(p.field, p.message) for p in caught.value.problems}


def fields(data: Any, **limits: int) -> list[str]:
    return sorted(f for f, _ in problems(data, **limits))


def by_id(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in df.to_dict("records")}


# -- zero, one, many ------------------------------------------------------------------------------------


def test_a_prompt_without_slots_is_one_row_and_one_value_is_one_row() -> None:
    [row] = expand(template(prompt="A lighthouse at night", slots=None)).to_dict("records")
    assert row["prompt"] == "A lighthouse at night" and row["id"] == row_id_of({})
    one = expand(template(slots={"animal": ["fox"], "style": ["woodcut"]}))
    assert one["prompt"].tolist() == ["A fox in woodcut style"]
    assert one[["animal", "style", "batch", "model", "aspect_ratio"]].iloc[0].tolist() == [
        "fox", "woodcut", "animals", "nano-banana-pro", "1:1",
    ]  # fmt: skip


def test_many_values_give_every_combination_in_order_with_unique_readable_ids() -> None:
    df = expand(template())
    assert df["prompt"].tolist() == [
        f"A {a} in {s} style" for a in ("fox", "owl", "cat") for s in ("watercolor", "woodcut")
    ]
    assert df["id"].is_unique and df["id"].str.match(r"^fox-watercolor-[0-9a-f]{12}$").iloc[0]
    assert list(df.columns) == [
        "id", "prompt", "batch", "model", "aspect_ratio", "animal", "style", "split",
    ]  # fmt: skip
    assert set(df["split"]) <= {"train", "val", "test"}
    # The id is a function of the slot values alone (row_id_of, the public form of it).
    assert df["id"].tolist() == [
        row_id_of({"animal": a, "style": s}) for a, s in zip(df["animal"], df["style"], strict=True)
    ]
    assert row_id_of({"style": "woodcut", "animal": "fox"}).endswith(
        row_id_of({"animal": "fox", "style": "woodcut"})[-12:]
    )


def test_ids_meet_the_manifest_rules_for_long_unicode_and_unsafe_values() -> None:
    values = ["../../etc/passwd", "a\\b/c..d", "Café au lait " * 40, "日本の猫", "!!!"]
    df = expand(template(slots={"animal": values, "style": ["x"]}, id_prefix="set-1"))
    assert df["id"].is_unique
    for rid in df["id"]:
        assert len(rid) <= 200 and "/" not in rid and "\\" not in rid and ".." not in rid
        assert rid.startswith("set-1-")
    assert df["id"].iloc[2].startswith("set-1-cafe-au-lait-")


def test_input_and_image_input_columns_become_json_and_reach_the_request() -> None:
    df = expand(
        template(columns={"model": "bytedance/seedream-v4-text-to-image", "input": {"max_images": 1}})
    )
    normalized = validate_manifest(df)
    assert all('"max_images":1' in s for s in normalized["input_json"])


# -- stability -----------------------------------------------------------------------------------------


def test_adding_a_value_keeps_every_existing_row_and_adds_only_the_new_ones() -> None:
    before = by_id(expand(template()))
    grown = template()
    grown["slots"]["animal"].insert(1, "heron")  # in the middle: order must not matter
    grown["slots"]["style"].append("linocut")
    after = by_id(expand(grown))
    assert set(before) < set(after) and len(after) == 4 * 3
    for rid, row in before.items():
        assert after[rid] == row  # same id, prompt, split, columns
    assert {r["animal"] for i, r in after.items() if i not in before} | {
        r["style"] for i, r in after.items() if i not in before
    } >= {"heron", "linocut"}
    new = [r for i, r in after.items() if i not in before]
    assert all(r["animal"] == "heron" or r["style"] == "linocut" for r in new)


def test_the_split_is_a_function_of_the_id_and_the_seed_and_follows_the_fractions() -> None:
    big = template(
        slots={"animal": [f"animal {i}" for i in range(100)], "style": [f"s{i}" for i in range(50)]}
    )
    df = expand(big)
    counts = df["split"].value_counts(normalize=True)
    assert abs(counts["train"] - 0.8) < 0.03 and abs(counts["val"] - 0.1) < 0.02
    assert abs(counts["test"] - 0.1) < 0.02
    other = expand({**big, "split": {"seed": 2, "fractions": big["split"]["fractions"]}})
    assert (df["id"] == other["id"]).all() and (df["split"] != other["split"]).sum() > 500
    assert expand(big)["split"].tolist() == df["split"].tolist()  # deterministic
    renamed = expand({**big, "split": {**big["split"], "column": "subset"}})
    assert renamed["subset"].tolist() == df["split"].tolist() and "split" not in renamed


def test_a_sample_is_deterministic_per_seed_and_grows_without_moving_rows() -> None:
    slots = {"animal": [f"a{i}" for i in range(20)], "style": [f"s{i}" for i in range(10)]}
    first = expand(template(slots=slots, sample={"size": 30, "seed": 7}))
    assert len(first) == 30 and first["id"].is_unique
    assert expand(template(slots=slots, sample={"size": 30, "seed": 7})).equals(first)
    other_seed = expand(template(slots=slots, sample={"size": 30, "seed": 8}))
    assert set(other_seed["id"]) != set(first["id"])
    assert expand(template(slots=slots, sample={"size": 30, "seed": 8})).equals(other_seed)
    # A bigger sample keeps every row chosen before, unchanged.
    bigger = by_id(expand(template(slots=slots, sample={"size": 60, "seed": 7})))
    assert all(bigger[rid] == row for rid, row in by_id(first).items())
    # The whole product as a sample is the product.
    assert set(expand(template(slots=slots, sample={"size": 200, "seed": 7}))["id"]) == set(
        expand(template(slots=slots))["id"]
    )


def test_weights_favour_their_values_in_a_sample() -> None:
    slots = {"animal": {"fox": 20, "owl": 1}, "style": [f"s{i}" for i in range(200)]}
    df = expand(template(slots=slots, sample={"size": 100, "seed": 3}))
    counts = df["animal"].value_counts()
    assert counts["fox"] > 3 * counts.get("owl", 0)
    uniform = expand(template(slots={**slots, "animal": ["fox", "owl"]}, sample={"size": 100, "seed": 3}))
    assert abs(uniform["animal"].value_counts()["fox"] - 50) < 15


# -- validation ----------------------------------------------------------------------------------------


def test_unknown_and_unused_slots_are_named() -> None:
    got = problems(template(prompt="A {animal} in {style} style at {time}"))
    assert ("prompt", "uses the slot {time}, which has no values under slots") in got
    got = problems(template(slots={"animal": ["fox"], "style": ["x"], "mood": ["calm"]}))
    assert got == {("slots.mood", "the prompt does not use {mood}")}


def test_empty_missing_and_duplicate_values_are_named() -> None:
    got = problems(template(slots={"animal": [], "style": ["x", " ", "x", None, True, 1.5]}))
    assert {f for f, _ in got} == {
        "slots.animal", "slots.style[1]", "slots.style[2]", "slots.style[3]", "slots.style[4]",
        "slots.style[5]",
    }  # fmt: skip
    assert ("slots.animal", "has no values") in got
    assert ("slots.style[1]", "is empty") in got
    assert ("slots.style[2]", "'x' duplicates value 0") in got
    assert any("boolean" in m for f, m in got if f == "slots.style[4]")
    assert any("quote it" in m for f, m in got if f == "slots.style[5]")


def test_the_prompt_is_checked() -> None:
    assert fields(template(prompt=None)) == ["prompt"]
    assert fields(template(prompt="  ")) == ["prompt"]
    assert fields(template(prompt="A {animal} in {style style")) == ["prompt"]
    got = problems(template(prompt="A {animal!r} in {style:>9} {} {0} {a.b}", slots=None))
    assert {f for f, _ in got} == {"prompt"} and len(got) == 5


def test_every_other_field_is_checked_and_every_problem_collected() -> None:
    bad = template(
        colour="red",
        columns={"id": "x", "credits": "3", "seed": True, "empty": ""},
        sample={"size": 0, "seed": "seven", "extra": 1},
        split={"seed": 1.5, "fractions": {"train": 0.7, "val": 0.2}, "column": "batch", "by": "x"},
        id_prefix="a/b",
    )
    assert fields(bad) == sorted(
        [
            "colour", "columns.id", "columns.credits", "columns.seed", "columns.empty", "sample.extra",
            "sample.size", "sample.seed", "split.by", "split.seed", "split.column", "split.fractions",
            "id_prefix",
        ]
    )  # fmt: skip
    assert ("split.fractions", "must sum to 1, not 0.9") in problems(bad)
    assert fields([1, 2]) == ["template"] and fields(None) == ["template"]
    assert fields(template(split={"seed": 1, "fractions": {"train": 0, "val": 1}})) == [
        "split.fractions.train"
    ]
    assert fields(template(slots={"animal": {"fox": -1, "owl": "x"}, "style": ["a"]}, sample={
        "size": 1, "seed": 1})) == ["slots.animal[0]", "slots.animal[1]"]  # fmt: skip


def test_slot_names_that_clash_with_columns_are_refused() -> None:
    got = fields(
        template(
            prompt="{model} {title} {style} {split}",
            slots={"model": ["a"], "title": ["b"], "style": ["c"], "split": ["d"]},
            columns={"style": "fixed"},
        )
    )
    assert got == ["slots.model", "slots.split", "slots.style", "slots.title"]


def test_weights_without_a_sample_and_a_sample_larger_than_the_product_are_refused() -> None:
    assert fields(template(slots={"animal": {"fox": 2, "owl": 1}, "style": ["x"]})) == ["slots"]
    got = problems(template(sample={"size": 7, "seed": 1}))
    assert got == {("sample.size", "7 is more than the 6 combinations (3 animal × 2 style)")}
    assert fields(template(prompt="One prompt", slots=None, sample={"size": 2, "seed": 1})) == ["sample.size"]


def test_oversized_expansions_are_refused_under_the_cap() -> None:
    slots = {"animal": [f"a{i}" for i in range(400)], "style": [f"s{i}" for i in range(300)]}
    got = problems(template(slots=slots))  # 120 000 rows, default cap 100 000
    assert got == {
        (
            "slots",
            "expands to 120000 rows (400 animal × 300 style), more than the cap of 100000 (max_rows): "
            "remove values, or draw a sample",
        )
    }
    assert len(expand(template(slots={"animal": ["a", "b"], "style": ["c", "d"]}), max_rows=4)) == 4
    assert fields(template(slots={"animal": ["a", "b"], "style": ["c", "d", "e"]}), max_rows=4) == ["slots"]
    # A sample of the big product is fine; a sample above the cap or from too many combinations is not.
    assert len(parse_template(template(slots=slots, sample={"size": 10, "seed": 1})).expand()) == 10
    assert fields(template(slots=slots, sample={"size": 10, "seed": 1}), max_combinations=1000) == ["slots"]
    assert fields(template(slots=slots, sample={"size": 11, "seed": 1}), max_rows=10) == ["sample.size"]


def test_yaml_problems_are_named_with_their_line(tmp_path) -> None:
    (tmp_path / "dup.yaml").write_text("prompt: 'A {a}'\nslots:\n  a: [x]\n  a: [y]\n")
    with pytest.raises(TemplateError) as caught:
        load_template(str(tmp_path / "dup.yaml"))
    [p] = caught.value.problems
    assert p.field == "yaml" and "'a' is given twice" in p.message and "line 4" in p.message
    (tmp_path / "broken.yaml").write_text("prompt: [unclosed\n")
    with pytest.raises(TemplateError, match="is not valid YAML"):
        load_template(str(tmp_path / "broken.yaml"))
    with pytest.raises(TemplateError) as caught:
        load_template(str(tmp_path / "missing.yaml"))
    assert [(p.field, p.message) for p in caught.value.problems] == [
        ("path", f"no template at {tmp_path / 'missing.yaml'}")
    ]


def test_rows_the_manifest_refuses_are_refused_before_anything_is_written(tmp_path) -> None:
    """A fixed column every row has wrong is one problem of the template's field; a problem of some
    rows only is named by row, as validate names it."""
    for columns, field in (
        ({"model": "google/nano-banana", "resolution": "2K"}, "columns.resolution"),
        ({"model": "nano-banana-pro", "aspect_ratio": "7:7"}, "columns.aspect_ratio"),
        ({"model": "no-such-model"}, "columns.model"),
        ({"batch": "not a batch"}, "columns.batch"),
    ):
        (tmp_path / "t.yaml").write_text(yaml.safe_dump(template(columns=columns)))
        with pytest.raises(TemplateError) as caught:
            expand_template(str(tmp_path / "t.yaml"))
        [p] = caught.value.problems
        assert (p.row, p.id, p.field) == (None, None, field), p
    data = template(slots={"animal": ["fox", "owl " * 3000], "style": ["a", "b"]})
    with pytest.raises(ManifestError) as caught:
        expand_template(parse_template(data))
    assert not isinstance(caught.value, TemplateError)
    assert {(p.row, p.field) for p in caught.value.problems} == {(3, "prompt"), (4, "prompt")}


# -- files ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["m.csv", "m.parquet"])
def test_the_written_manifest_loads_back_as_expanded(tmp_path, name) -> None:
    df = expand(template())
    write_manifest_file(df, str(tmp_path / name))
    loaded = load_manifest(str(tmp_path / name))
    assert loaded["id"].tolist() == df["id"].tolist() and loaded["prompt"].tolist() == df["prompt"].tolist()
    assert loaded["split"].astype(str).tolist() == df["split"].tolist()
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left


def test_the_example_template_expands_to_a_valid_manifest() -> None:
    parsed = load_template(str(EXAMPLE))
    assert isinstance(parsed, Template)
    df = expand_template(str(EXAMPLE))
    assert len(df) == parsed.combinations == 12 and df["id"].str.startswith("animals-").all()
    assert set(validate_manifest(df)["batch"]) == {"animals"}


# -- the command ---------------------------------------------------------------------------------------


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_expand_writes_the_manifest_and_prints_one_line(tmp_path) -> None:
    out = tmp_path / "animals.csv"
    result = run("expand", str(EXAMPLE), "-o", str(out))
    assert result.exit_code == 0, result.output
    [line] = result.stdout.splitlines()
    assert line.startswith(f"{EXAMPLE} → {out}: 12 rows (3 animal × 2 style × 2 light), split train ")
    assert result.stderr == ""
    assert len(load_manifest(str(out))) == 12
    # Default output: the template's name with .csv.
    (tmp_path / "t.yaml").write_text(EXAMPLE.read_text())
    assert run("expand", str(tmp_path / "t.yaml")).exit_code == 0
    assert (tmp_path / "t.csv").exists()


def test_expand_the_readme_example(tmp_path) -> None:
    """The README's lines, as written (run in a copy of the repo's data folder)."""
    os.makedirs(tmp_path / "data" / "templates")
    (tmp_path / "data" / "templates" / "animals.yaml").write_text(EXAMPLE.read_text())
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = run("expand", "data/templates/animals.yaml", "-o", "data/animals.csv")
        assert result.exit_code == 0, result.output
        assert run("validate", "data/animals.csv").exit_code == 0
    finally:
        os.chdir(cwd)


def test_expand_an_invalid_template_exits_1_with_a_table_and_writes_nothing(tmp_path) -> None:
    (tmp_path / "t.yaml").write_text(
        yaml.safe_dump(template(prompt="A {animal} at {time}", slots={"animal": ["fox", "fox", ""]}))
    )
    result = run("expand", str(tmp_path / "t.yaml"), "-o", str(tmp_path / "out.csv"))
    assert result.exit_code == 1
    table = [line.split()[:2] for line in result.stdout.splitlines() if line.split()[:1] == ["-"]]
    assert sorted(table) == [["-", "prompt"], ["-", "slots.animal[1]"], ["-", "slots.animal[2]"]]
    assert "is invalid: 3 problem(s)." in result.stdout
    assert not (tmp_path / "out.csv").exists()
    assert "Traceback" not in result.output


def test_expand_a_missing_template_exits_2_and_a_bad_output_too(tmp_path) -> None:
    missing = str(tmp_path / "nope.yaml")
    result = run("expand", missing)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.strip() == f"kie-pipeline expand: {missing}: no template at {missing}"
    assert run("expand", str(EXAMPLE), "-o", str(tmp_path / "m.json")).exit_code == 2
    result = run("expand", str(EXAMPLE), "-o", str(tmp_path / "no-such-folder" / "m.csv"))
    assert result.exit_code == 2 and "cannot be written" in result.stderr


def test_expand_replaces_the_output_whole(tmp_path) -> None:
    out = tmp_path / "m.csv"
    out.write_text("id,prompt\nold,an old row\n")
    assert run("expand", str(EXAMPLE), "-o", str(out)).exit_code == 0
    assert "old" not in load_manifest(str(out))["id"].tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]


# -- end to end ----------------------------------------------------------------------------------------


def test_a_template_runs_through_the_pipeline_and_a_new_value_creates_only_its_rows(
    env, instance, emulator, tmp_path
) -> None:
    data = template(slots={"animal": ["fox", "owl"], "style": ["watercolor", "woodcut"]})
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(data))
    assert run("expand", str(tmp_path / "t.yaml"), "-o", str(env / "prompts.csv")).exit_code == 0
    catalog = Pipeline(instance).all()
    assert emulator.emulator.snapshot()["created"] == 4
    assert (catalog["state"] == "success").all() and len(catalog) == 4
    first = by_id(pd.read_csv(env / "prompts.csv", dtype=str))

    data["slots"]["animal"].append("cat")
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(data))
    assert run("expand", str(tmp_path / "t.yaml"), "-o", str(env / "prompts.csv")).exit_code == 0
    second = by_id(pd.read_csv(env / "prompts.csv", dtype=str))
    assert all(second[rid] == row for rid, row in first.items()) and len(second) == 6
    catalog = Pipeline(instance).all()
    assert emulator.emulator.snapshot()["created"] == 4 + 2  # only the two cat rows
    assert len(catalog) == 6 and (catalog["state"] == "success").all()
    assert set(catalog.loc[catalog["animal"] == "cat", "id"]) == set(second) - set(first)
    assert set(catalog["split"]) <= {"train", "val", "test"}
