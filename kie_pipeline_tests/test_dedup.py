"""Near-duplicates: the perceptual hash, the pair finder against brute force, and a real emulator batch."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw, ImageEnhance

from kie_pipeline.emulator.render import render_media
from kie_pipeline.pipeline.dedup import (
    DEFAULT_THRESHOLD,
    PAIR_COLUMNS,
    choose_blocks,
    find_near_duplicates,
    hamming,
    hash_from_hex,
    hash_to_hex,
    near_duplicate_pairs,
    phash_bytes,
    phash_image,
)

from .pipeline_helpers import Pipeline, write_manifest

RNG_MAX = np.iinfo(np.int64).max
RNG_MIN = np.iinfo(np.int64).min


def random_hashes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(RNG_MIN, RNG_MAX, size=n, dtype=np.int64, endpoint=True)


def flip(value: int, bits: list[int]) -> int:
    """``value`` (a signed int64) with ``bits`` flipped, as a signed int64."""
    return hash_from_hex(hash_to_hex(value ^ sum(1 << b for b in bits)))


def png(img: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def brute_force(hashes: np.ndarray, threshold: int) -> set[tuple[int, int, int]]:
    u = hashes.view(np.uint64)
    distance = np.bitwise_count(u[:, None] ^ u[None, :])
    i, j = np.nonzero(np.triu(distance <= threshold, k=1))
    return set(zip(i.tolist(), j.tolist(), distance[i, j].tolist(), strict=True))


# --- The hash ------------------------------------------------------------------------------------


def golden_images() -> list[Image.Image]:
    images = [
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        for seed, (w, h) in enumerate([(32, 32), (64, 48), (200, 120), (17, 91)])
    ]
    shapes = Image.new("RGB", (120, 80), (20, 40, 200))
    draw = ImageDraw.Draw(shapes)
    draw.ellipse([10, 10, 70, 60], fill=(250, 200, 0))
    draw.rectangle([80, 5, 115, 75], fill=(0, 0, 0))
    return [*images, shapes]


#: str(imagehash.phash(image)) of golden_images(), computed with ImageHash 4.3.2 (scipy 1.17.1).
IMAGEHASH_4_3_2 = [
    "ff2a51ccf02abe40",
    "d84c407d6a3d6d3c",
    "cf7584bd9a6208c7",
    "9beebe6e0c607610",
    "c8c43737b839a4f8",
]


def test_the_hash_is_imagehash_phash_bit_for_bit() -> None:
    """Our numpy DCT gives imagehash's pHash: a catalog hashed here compares with hashes made there."""
    assert [hash_to_hex(phash_image(img)) for img in golden_images()] == IMAGEHASH_4_3_2


def test_the_hash_matches_imagehash_where_it_is_installed() -> None:
    imagehash = pytest.importorskip("imagehash")
    rng = np.random.default_rng(7)
    for _ in range(100):
        h, w = rng.integers(8, 160, size=2)
        img = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        assert hash_to_hex(phash_image(img)) == str(imagehash.phash(img))


def test_hex_round_trip_and_signed_storage() -> None:
    for text in [*IMAGEHASH_4_3_2, "0000000000000000", "ffffffffffffffff", "8000000000000000"]:
        value = hash_from_hex(text)
        assert RNG_MIN <= value <= RNG_MAX  # fits a signed int64 column (Parquet, DuckDB, Spark)
        assert hash_to_hex(value) == text
    assert hash_from_hex("ffffffffffffffff") == -1
    assert hamming(0, -1) == 64 and hamming(5, 6) == 2
    with pytest.raises(ValueError):
        hash_from_hex("1" * 17)


def test_edits_of_one_picture_stay_close_and_other_pictures_do_not() -> None:
    img = golden_images()[4].resize((480, 320), Image.Resampling.BICUBIC)
    original = phash_bytes(png(img))
    assert original is not None
    edits = [
        png(img, "JPEG", quality=40),
        png(img.resize((240, 160))),
        png(ImageEnhance.Brightness(img).enhance(1.1)),
    ]
    for data in edits:
        distance = hamming(original, phash_bytes(data))  # type: ignore[arg-type]
        assert distance <= DEFAULT_THRESHOLD, distance
    others = [phash_image(other) for other in golden_images()[:4]]
    assert min(hamming(original, other) for other in others) > DEFAULT_THRESHOLD


def test_video_is_hashed_by_its_first_frame_audio_and_garbage_have_none() -> None:
    video, _, _ = render_media("video", "task-1")
    import av

    with av.open(io.BytesIO(video)) as container:
        first = next(container.decode(video=0)).to_image()
    assert phash_bytes(video, "video") == phash_image(first)
    audio, _, _ = render_media("audio", "task-1")
    assert phash_bytes(audio, "audio") is None
    assert phash_bytes(b"not an image") is None
    assert phash_bytes(b"not a video", "video") is None


# --- The pair finder ------------------------------------------------------------------------------


def test_zero_and_one_hash_give_no_pairs() -> None:
    for hashes in (np.zeros(0, np.int64), np.array([42], np.int64)):
        i, j, d = near_duplicate_pairs(hashes)
        assert len(i) == len(j) == len(d) == 0
    empty = find_near_duplicates([], [])
    assert list(empty.columns) == list(PAIR_COLUMNS) and empty.empty
    assert find_near_duplicates(["only"], [7]).empty


def test_many_identical_hashes_pair_each_once() -> None:
    """Copies (blank frames, re-uploads) are searched once per value and expanded to every row pair:
    among themselves at distance 0, and with the copies of a near value at its distance."""
    hashes = np.concatenate([np.full(40, 12345, np.int64), np.full(10, 12345 ^ 0b101, np.int64)])
    hashes = np.concatenate([hashes, random_hashes(500)])
    hashes = hashes[np.random.default_rng(1).permutation(len(hashes))]
    i, j, d = near_duplicate_pairs(hashes, 3)
    assert set(zip(i.tolist(), j.tolist(), d.tolist(), strict=True)) == brute_force(hashes, 3)
    assert len(i) >= 50 * 49 // 2 and (i < j).all()
    assert (np.lexsort((j, i)) == np.arange(len(i))).all()  # sorted by (i, j), each pair once


@pytest.mark.parametrize("threshold", [0, 1, 3, DEFAULT_THRESHOLD, 10])
def test_planted_pairs_found_at_the_threshold_and_not_beyond(threshold: int) -> None:
    rng = np.random.default_rng(threshold)
    hashes = random_hashes(3000, seed=threshold)
    at, beyond = {}, {}
    for n, (src, dst) in enumerate(rng.permutation(3000)[:400].reshape(-1, 2)):
        bits = rng.choice(64, size=threshold + (n % 2), replace=False).tolist()
        hashes[dst] = flip(int(hashes[src]), bits)
        (beyond if n % 2 else at)[(min(src, dst), max(src, dst))] = len(bits)
    i, j, d = near_duplicate_pairs(hashes, threshold)
    found = dict(zip(zip(i.tolist(), j.tolist(), strict=True), d.tolist(), strict=True))
    assert all(found.get(pair) == bits for pair, bits in at.items())
    assert not set(beyond) & set(found)


def test_pairs_crossing_splits_are_flagged_and_first() -> None:
    base = random_hashes(6, seed=3)
    ids = ["a", "a-copy", "b", "b-copy", "c", "c-copy", "x", "y", "z", "w", "v", "u"]
    hashes = [int(base[0]), flip(int(base[0]), [1]), int(base[1]), flip(int(base[1]), [5, 9])]
    hashes += [int(base[2]), int(base[2]), *map(int, base[3:6]), None, None, None]
    splits = ["train", "train", "train", "test", "val", None, "train", "train", "test", "test", "val", "val"]
    pairs = find_near_duplicates(ids, hashes, splits=splits, result_index=[0] * 11 + [1])
    assert list(pairs.columns) == list(PAIR_COLUMNS)
    assert list(zip(pairs["a"], pairs["b"], pairs["distance"], pairs["crosses_split"], strict=True)) == [
        ("b", "b-copy", 2, True),  # the leak between train and test comes first
        ("c", "c-copy", 0, False),  # a row without a split crosses nothing
        ("a", "a-copy", 1, False),
    ]
    assert pairs.loc[0, "a_split"] == "train" and pairs.loc[0, "b_split"] == "test"
    assert pairs["a_row"].tolist() == [2, 4, 0] and pairs["b_row"].tolist() == [3, 5, 1]


def test_nulls_are_left_out_and_unsigned_values_accepted() -> None:
    unsigned = int(hash_to_hex(-5), 16)  # the same 64 bits written as an unsigned int
    pairs = find_near_duplicates(
        pd.Series(["p", "q", "r"]), pd.Series([-5, None, unsigned], dtype="object"), result_index=[0, 1, 2]
    )
    assert pairs[["a", "b", "distance", "b_result_index"]].values.tolist() == [["p", "r", 0, 2]]
    with pytest.raises(ValueError):
        find_near_duplicates(["p"], [1 << 64])
    with pytest.raises(ValueError):
        near_duplicate_pairs(random_hashes(3), threshold=64)


@pytest.mark.parametrize("threshold", [0, 1, 2, 4, DEFAULT_THRESHOLD, 8, 12])
def test_the_finder_agrees_with_brute_force(threshold: int) -> None:
    """Random hashes plus clusters of near copies (0..threshold+2 bits) so both sides of the
    threshold are exercised; every number of blocks gives the brute-force set exactly."""
    rng = np.random.default_rng(100 + threshold)
    hashes = random_hashes(2000, seed=threshold)
    for src in rng.choice(2000, size=150, replace=False):
        for dst in rng.choice(2000, size=3, replace=False):
            size = int(rng.integers(0, threshold + 3))
            hashes[dst] = flip(int(hashes[src]), rng.choice(64, size=size, replace=False).tolist())
    expected = brute_force(hashes, threshold)
    assert expected  # the sample has pairs to find
    for blocks in {None, 0, threshold + 1, threshold + 2, min(64, threshold + 4)}:
        i, j, d = near_duplicate_pairs(hashes, threshold, blocks=blocks)
        assert set(zip(i.tolist(), j.tolist(), d.tolist(), strict=True)) == expected, blocks
        assert len(i) == len(expected)


def test_the_cost_model_groups_large_inputs() -> None:
    """Large inputs are never compared all pairs (the point of the finder)."""
    assert choose_blocks(100_000, DEFAULT_THRESHOLD) is not None
    assert choose_blocks(1_000_000, 2) is not None


# --- End to end: a batch rendered by the emulator -------------------------------------------------


def test_near_duplicates_among_a_real_emulator_batch(env: Path, instance: dg.DagsterInstance) -> None:
    """Real files: the emulator renders a batch, the durable copies are hashed as stored.

    The emulator colours an image from its task id and writes the task id on it, so two ids with
    the same prompt are *not* reliably near (measured: 0-30 bits at the tests' 64-px scale); the
    near-duplicates are planted as a re-encoded and a resized copy of a durable file, in another
    split, as a re-upload or a resize would leak into a dataset.
    """
    records = [
        {"id": "fox", "batch": "b", "prompt": "A red fox in snow", "split": "train"},
        {"id": "owl", "batch": "b", "prompt": "An owl at dusk", "split": "val"},
        {"id": "cat", "batch": "b", "prompt": 'A cat, "oil", painting', "split": "test"},
        {"id": "tokyo", "batch": "b", "prompt": "Tokyo at night\nin the rain", "split": "train"},
        {"id": "paris", "batch": "b", "prompt": "Paris rooftops — café", "split": "val"},
        {"id": "fox-again", "batch": "b", "prompt": "A red fox in snow", "split": "test"},
    ]
    write_manifest(str(env / "prompts.csv"), records)
    catalog = Pipeline(instance).all().set_index("id")
    assert (catalog["state"] == "success").all() and len(catalog) == len(records)
    files = {row_id: Path(catalog.loc[row_id, "image_uri"]).read_bytes() for row_id in catalog.index}
    # The planted copies of fox's durable file, written by the test (as a user would re-upload it).
    fox = Image.open(io.BytesIO(files["fox"])).convert("RGB")
    files["fox-jpeg"] = png(fox, "JPEG", quality=90)
    files["fox-2x"] = png(fox.resize((fox.width * 2, fox.height * 2), Image.Resampling.BICUBIC))
    splits = {**catalog["split"].to_dict(), "fox-jpeg": "test", "fox-2x": "train"}
    ids = list(files)
    hashes = [phash_bytes(files[i], "image") for i in ids]
    assert all(h is not None for h in hashes)

    pairs = find_near_duplicates(ids, hashes, splits=[splits[i] for i in ids])
    found = {frozenset(p): c for *p, c in pairs[["a", "b", "crosses_split"]].itertuples(index=False)}
    assert found[frozenset({"fox", "fox-jpeg"})] is True  # train vs test: a leak, flagged
    assert found[frozenset({"fox", "fox-2x"})] is False
    assert pairs["crosses_split"].iloc[0]  # leaks first
    distinct = ["fox", "owl", "cat", "tokyo", "paris"]
    assert not any(frozenset(p) in found for p in itertools.combinations(distinct, 2))


def test_a_nullable_int64_column_is_read_as_is() -> None:
    """The catalog column form: pandas Int64 with nulls (audio, undecodable files)."""
    column = pd.Series([-5, pd.NA, -5, 7], dtype="Int64")
    pairs = find_near_duplicates(["a", "b", "c", "d"], column, splits=["train", "train", "test", "test"])
    assert pairs[["a", "b", "distance", "crosses_split"]].values.tolist() == [["a", "c", 0, True]]
