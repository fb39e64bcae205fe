"""Manifest validation: every bad row named with its field, before any request; odd but valid CSVs read."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kie_pipeline.pipeline.manifest import ManifestError, load_manifest, validate_manifest

GOOD = {"id": "a-1", "batch": "b1", "prompt": "a cat"}


def rows(*overrides: dict) -> pd.DataFrame:
    return pd.DataFrame([{**GOOD, "id": f"r{i}", **o} for i, o in enumerate(overrides)])


@pytest.mark.parametrize(
    ("df", "row", "field"),
    [
        (rows({}, {"id": ""}), 2, "id"),
        (rows({"id": "dup"}, {"id": "dup"}), 2, "id"),
        (rows({}, {"prompt": ""}), 2, "prompt"),
        (rows({"prompt": "x" * 10_001}), 1, "prompt"),
        (rows({"image_input": json.dumps([f"https://e.com/{i}.png" for i in range(9)])}), 1, "image_input"),
        (rows({"image_input": "not a url"}), 1, "image_input"),
        (rows({"image_input": "[not json"}), 1, "image_input"),
        (rows({"aspect_ratio": "7:5"}), 1, "aspect_ratio"),
        (rows({"resolution": "8K"}), 1, "resolution"),
        (rows({"output_format": "gif"}), 1, "output_format"),
        (rows({"batch": ""}), 1, "batch"),
        (rows({"batch": "a/b"}), 1, "batch"),
        (rows({"id": "../../etc/passwd"}), 1, "id"),
        (rows({"id": "a/b"}), 1, "id"),
        (rows({"id": "a\\b"}), 1, "id"),
        (rows({"id": "a\nb"}), 1, "id"),
        (rows({"id": "a..b"}), 1, "id"),
        (rows({"id": "x" * 201}), 1, "id"),
    ],
)
def test_bad_rows_are_named_with_row_and_field(df, row, field) -> None:
    with pytest.raises(ManifestError) as info:
        validate_manifest(df)
    problems = info.value.problems
    assert [(p.row, p.field) for p in problems] == [(row, field)]
    assert f"row {row}" in str(info.value) and repr(field) in str(info.value)
    assert "nothing was submitted" in str(info.value)


def test_every_problem_is_listed_not_just_the_first() -> None:
    df = rows({"prompt": ""}, {}, {"aspect_ratio": "9:9"}, {"id": "r1"})
    with pytest.raises(ManifestError) as info:
        validate_manifest(df)
    assert [(p.row, p.field) for p in info.value.problems] == [(1, "prompt"), (3, "aspect_ratio"), (4, "id")]


@pytest.mark.parametrize("missing", ["id", "prompt"])
def test_missing_required_columns(missing) -> None:
    with pytest.raises(ManifestError) as info:
        validate_manifest(rows({}).drop(columns=[missing]))
    assert info.value.problems[0].field == missing


def test_empty_manifest(tmp_path) -> None:
    (tmp_path / "m.csv").write_text("id,batch,prompt\n")
    with pytest.raises(ManifestError, match="no rows"):
        load_manifest(str(tmp_path / "m.csv"))


def test_invalid_utf8_names_the_line(tmp_path) -> None:
    (tmp_path / "m.csv").write_bytes(b"id,batch,prompt\na,b,ok\nc,b,caf\xe9\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(str(tmp_path / "m.csv"))
    assert info.value.problems[0].field == "encoding" and "line 3" in str(info.value)


def test_parquet_with_wrong_types(tmp_path) -> None:
    pd.DataFrame({"id": [1, 2], "batch": ["b", "b"], "prompt": [3.5, None]}).to_parquet(
        tmp_path / "m.parquet"
    )
    with pytest.raises(ManifestError) as info:
        load_manifest(str(tmp_path / "m.parquet"))
    assert [(p.row, p.field) for p in info.value.problems] == [(1, "prompt"), (2, "prompt")]


def test_reserved_extra_column(tmp_path) -> None:
    with pytest.raises(ManifestError, match="sha256"):
        validate_manifest(rows({"sha256": "x"}))


def test_csv_with_commas_quotes_newlines_and_unicode(tmp_path) -> None:
    prompt = 'A "quoted", comma\nsecond line — 日本語 🦊'
    df = pd.DataFrame([{"id": "u1", "batch": "b", "prompt": prompt, "split": "train", "seed": "007"}])
    df.to_csv(tmp_path / "m.csv", index=False)
    out = load_manifest(str(tmp_path / "m.csv"))
    assert out.loc[0, "prompt"] == prompt
    assert out.loc[0, "seed"] == "007"  # extra columns are carried unchanged (no type guessing)
    assert json.loads(out.loc[0, "input_json"]) == {
        "prompt": prompt,
        "image_input": [],
        "aspect_ratio": "1:1",
        "resolution": "1K",
        "output_format": "png",
    }


def test_image_input_json_or_pipe_separated_give_the_same_request() -> None:
    urls = ["https://e.com/a.png", "https://e.com/b.png"]
    a = validate_manifest(rows({"image_input": json.dumps(urls)}))
    b = validate_manifest(rows({"image_input": " | ".join(urls)}))
    assert a.loc[0, "request_key"] == b.loc[0, "request_key"]


def test_explicit_defaults_do_not_change_the_request_key() -> None:
    a = validate_manifest(rows({}))
    b = validate_manifest(rows({"aspect_ratio": "1:1", "resolution": "1K", "output_format": "png"}))
    assert a.loc[0, "request_key"] == b.loc[0, "request_key"]


cell = st.one_of(st.none(), st.text(max_size=30), st.sampled_from(["1:1", "4K", "png", "jpg", "x" * 10_001]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "id": cell,
                "batch": cell,
                "prompt": cell,
                "aspect_ratio": cell,
                "resolution": cell,
                "output_format": cell,
                "image_input": st.one_of(cell, st.just('["https://e.com/a.png"]'), st.just("[1, 2]")),
            }
        ),
        max_size=6,
    )
)
def test_random_manifests_validate_or_raise_manifest_error(records) -> None:
    df = pd.DataFrame(
        records,
        columns=["id", "batch", "prompt", "aspect_ratio", "resolution", "output_format", "image_input"],
    )
    try:
        out = validate_manifest(df)
    except ManifestError as exc:
        assert exc.problems
        return
    assert len(out) == len(df) and out["id"].is_unique


_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,11}", fullmatch=True)
_valid_row = st.fixed_dictionaries(
    {
        "batch": st.sampled_from(["b1", "b.2", "night_3"]),
        "prompt": st.text(min_size=1, max_size=40).filter(lambda t: t.strip() != ""),
        "aspect_ratio": st.one_of(st.none(), st.sampled_from(["1:1", "16:9", "9:16", "auto"])),
        "resolution": st.one_of(st.none(), st.sampled_from(["1K", "2K", "4K"])),
        "output_format": st.one_of(st.none(), st.sampled_from(["png", "jpg"])),
        "image_input": st.one_of(
            st.none(), st.just('["https://e.com/a.png"]'), st.just("https://e.com/b.png")
        ),
    }
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_ids, min_size=1, max_size=6, unique=True), st.booleans(), st.data())
def test_random_valid_manifests_are_accepted_with_one_request_per_row(ids, batch_column, data) -> None:
    """Valid manifests of 1 to 6 rows (every optional field present or not) pass, each row once."""
    records = [{"id": i, **data.draw(_valid_row)} for i in ids]
    df = pd.DataFrame(records)
    if not batch_column:
        df = df.drop(columns=["batch"])
    out = validate_manifest(df)
    assert list(out["id"]) == ids and out["request_key"].is_unique
    assert set(out["batch"]) <= {"b1", "b.2", "night_3", "default"}
    for rec, inp in zip(records, out["input_json"], strict=True):
        assert json.loads(inp)["prompt"] == rec["prompt"]


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"id": "a..b"}, "ids never become paths"),
        ({"id": "x" * 201}, "201 characters long; at most 200"),
        ({"id": "a\tb"}, "control characters"),
    ],
)
def test_problems_say_why(override, reason) -> None:
    with pytest.raises(ManifestError) as info:
        validate_manifest(rows(override))
    assert reason in str(info.value)


def test_longest_id_and_parquet_list_columns_are_accepted(tmp_path) -> None:
    urls = ["https://e.com/a.png", "https://e.com/b.png"]
    df = pd.DataFrame(
        [{**GOOD, "id": "x" * 200, "image_input": urls}, {**GOOD, "id": "two", "image_input": []}]
    )
    df.to_parquet(tmp_path / "m.parquet")  # image_input becomes a Parquet list column (numpy arrays)
    out = load_manifest(str(tmp_path / "m.parquet")).set_index("id")
    assert json.loads(out.loc["x" * 200, "input_json"])["image_input"] == urls
    assert "image_input" not in json.loads(out.loc["two", "input_json"]) or not json.loads(
        out.loc["two", "input_json"]
    ).get("image_input")
