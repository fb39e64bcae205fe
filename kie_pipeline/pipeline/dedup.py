"""Near-duplicate detection: a 64-bit perceptual hash per file, and the pairs within a Hamming distance.

The hash is imagehash's pHash (``imagehash.phash``, hash_size 8), computed here with numpy and Pillow
only: grey, LANCZOS to 32x32, a 2-D DCT-II, the 8x8 lowest frequencies, each bit 1 where its
coefficient is above their median. It gives the same 64 bits as imagehash 4.3.2 (tested against
values it computed) without imagehash's scipy and PyWavelets (~150 MB installed) for one 32x32 DCT.
A video is hashed by its first frame; audio has no hash.

A hash is stored as a signed 64-bit integer: the 64 bits in imagehash's order (the first bit is the
most significant), read as two's complement. Parquet, DuckDB (``BIGINT``), Spark (``LongType``) and
pandas (``Int64``, nullable) all hold it natively, and the distance is ``bit_count(a # b)`` in DuckDB
or ``bit_count(a ^ b)`` in Spark. :func:`hash_to_hex` gives imagehash's 16-character hex string.

Pairs are found without comparing all pairs (:func:`near_duplicate_pairs`): the 64 bits are split
into ``m`` blocks; two hashes within distance ``k`` differ in at most ``k`` blocks, so they agree
exactly on at least ``m - k`` of them (pigeonhole). For each choice of ``m - k`` blocks the hashes
are grouped by the bits of those blocks, only hashes of one group are compared, and each candidate
is kept if the popcount of the XOR is at most ``k``. ``m = k + 1`` is classic multi-index hashing
(one block agrees); a larger ``m`` makes more groupings but far smaller groups, and ``m`` is chosen
by a cost model for ``N`` and ``k``. The result is exact: the same pairs as comparing all of them.
"""

from __future__ import annotations

import base64
import io
import itertools
import math
from collections.abc import Iterator, Sequence

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from kie_pipeline.client.registry import MediaType

from .store import TaskStore

#: Bits of a hash.
HASH_BITS = 64
#: Default Hamming threshold: pairs at distance <= 6 of 64 bits are near-duplicates. A re-encode
#: (JPEG q40-q90), a resize (x0.5, x2) or +10% brightness of one picture measured 0-4 bits here
#: (even numbers: the median splits the 64 coefficients in halves); two random hashes are within 6
#: bits with probability 5e-12 (~0.05 pairs among 100 000 hashes). Pictures sharing a layout are far
#: closer than random: the emulator's distinct prompts measured 8-34 bits. Raise it for crops and edits.
DEFAULT_THRESHOLD = 6
#: Side of the grey image the DCT runs on (imagehash: hash_size * highfreq_factor = 8 * 4).
_DCT_SIDE = 32
#: Side of the low-frequency corner kept (imagehash: hash_size).
_LOW = 8


def _dct_matrix(n: int) -> np.ndarray:
    """The unnormalized DCT-II matrix: ``M @ x`` is ``scipy.fftpack.dct(x)`` (up to the factor 2)."""
    k = np.arange(n).reshape(-1, 1)
    i = np.arange(n).reshape(1, -1)
    return np.cos(np.pi * k * (2 * i + 1) / (2 * n))


_DCT = _dct_matrix(_DCT_SIDE)[:_LOW]  # only the 8 lowest frequencies are ever used
_WEIGHTS = (1 << np.arange(HASH_BITS - 1, -1, -1, dtype=np.uint64)).astype(np.uint64)


def phash_bits(image: Image.Image) -> np.ndarray:
    """The 8x8 boolean pHash of ``image``, exactly as ``imagehash.phash(image).hash``."""
    grey = image.convert("L").resize((_DCT_SIDE, _DCT_SIDE), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.float64)
    low = _DCT @ pixels @ _DCT.T  # rows: vertical frequency, columns: horizontal frequency
    return low > np.median(low)


def phash_image(image: Image.Image) -> int:
    """The 64-bit pHash of ``image`` as a signed int64 (the storage form; see the module docstring)."""
    bits = phash_bits(image).reshape(-1).astype(np.uint64)
    return int(np.sum(bits * _WEIGHTS, dtype=np.uint64).astype(np.int64))


def phash_bytes(data: bytes, media: MediaType | str = MediaType.IMAGE) -> int | None:
    """The pHash of a file's contents: an image, a video's first frame; None for audio or a file
    that cannot be decoded (a missing hash only leaves that file out of the near-duplicate search)."""
    kind = MediaType(media)
    if kind is MediaType.IMAGE:
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                return phash_image(img)
        except (OSError, UnidentifiedImageError, ValueError):
            return None
    if kind is MediaType.VIDEO:
        from .media import thumbnail  # the first frame, decoded by PyAV (imported on first use)

        # thumbnail() only shrinks: with this size it is the first frame as decoded, in RGB.
        frame = thumbnail(data, MediaType.VIDEO, size=1 << 16)
        return None if frame is None else phash_image(frame)
    return None


def hash_to_hex(value: int) -> str:
    """The 16-character hex string imagehash prints for the hash (``str(imagehash.phash(img))``)."""
    return f"{value & 0xFFFF_FFFF_FFFF_FFFF:016x}"


def hash_from_hex(text: str) -> int:
    """The signed int64 of a 16-character hex hash (the inverse of :func:`hash_to_hex`)."""
    value = int(text, 16)
    if not 0 <= value < 1 << HASH_BITS:
        raise ValueError(f"not a 64-bit hex hash: {text!r}")
    return value - (1 << HASH_BITS) if value >= 1 << (HASH_BITS - 1) else value


def hamming(a: int, b: int) -> int:
    """Bits that differ between two hashes (signed or unsigned 64-bit ints)."""
    return ((a ^ b) & 0xFFFF_FFFF_FFFF_FFFF).bit_count()


# --- The pair finder -------------------------------------------------------------------------------

#: Relative costs per hash per grouping (key, sort, gathers) and per candidate pair (XOR, popcount),
#: measured with benchmarks/near_duplicates.py; only their ratio matters, to choose the number of blocks.
_COST_PER_HASH = 4.0
_COST_PER_PAIR = 1.0
#: At most this many blocks are considered (more makes thousands of groupings for a small gain).
_MAX_EXTRA_BLOCKS = 10


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (numpy's bitwise_count where it exists, else the SWAR formula)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).astype(np.int64)
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return ((x * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.int64)


def _block_masks(blocks: int) -> list[int]:
    """``blocks`` contiguous bit ranges covering the 64 bits, sizes as equal as possible."""
    bounds = [round(i * HASH_BITS / blocks) for i in range(blocks + 1)]
    return [((1 << (hi - lo)) - 1) << lo for lo, hi in itertools.pairwise(bounds)]


def _estimated_cost(n: int, threshold: int, blocks: int) -> float:
    """Relative cost of the search with ``blocks`` blocks, for ``n`` uniformly random hashes."""
    keep = blocks - threshold  # blocks that agree exactly, at least
    groupings = math.comb(blocks, keep)
    sizes = sorted(mask.bit_count() for mask in _block_masks(blocks))
    key_bits = sum(sizes[:keep])  # the worst grouping: the fewest bits, the largest groups
    pairs_per_grouping = n * (n - 1) / 2 / 2.0**key_bits
    return groupings * (n * _COST_PER_HASH + pairs_per_grouping * _COST_PER_PAIR)


def choose_blocks(n: int, threshold: int) -> int | None:
    """The number of blocks that makes the search cheapest for ``n`` hashes, or None when comparing
    all pairs is cheaper (a few thousand hashes, or a threshold so high that no grouping helps)."""
    brute = n * (n - 1) / 2 * _COST_PER_PAIR
    best, best_cost = None, brute
    for blocks in range(threshold + 1, min(HASH_BITS, threshold + 1 + _MAX_EXTRA_BLOCKS) + 1):
        cost = _estimated_cost(n, threshold, blocks)
        if cost < best_cost:
            best, best_cost = blocks, cost
    return best


def _pairs_in_groups(
    sorted_keys: np.ndarray, sorted_hashes: np.ndarray, threshold: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Positions (p < q, in the sorted order) of hashes with equal keys and distance <= threshold.

    Step ``d`` compares every position with the one ``d`` places later in its group, over the
    positions whose group still has one there: the work is the number of candidate pairs, in
    streaming numpy operations, and memory stays O(N) however large a group is.
    """
    n = len(sorted_keys)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    sizes = np.diff(np.r_[starts, n])
    later = np.repeat(starts + sizes, sizes) - np.arange(n) - 1  # positions after p in p's group
    active = np.flatnonzero(later > 0)
    step = 1
    while active.size:
        distance = _popcount(sorted_hashes[active] ^ sorted_hashes[active + step])
        near = distance <= threshold
        if near.any():
            yield active[near], active[near] + step, distance[near]
        active = active[later[active] > step]
        step += 1


def near_duplicate_pairs(
    hashes: np.ndarray, threshold: int = DEFAULT_THRESHOLD, *, blocks: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of hashes at Hamming distance <= ``threshold``, without comparing all pairs.

    ``hashes`` is a 1-D int64 or uint64 array. Returns ``(i, j, distance)``: int64 arrays of
    positions with ``i < j``, sorted by ``(i, j)``; each pair once. ``blocks`` forces the number of
    blocks (``threshold + 1`` to 64; 0 compares all pairs); by default :func:`choose_blocks` picks it.
    """
    if not 0 <= threshold < HASH_BITS:
        raise ValueError(f"threshold must be in 0..{HASH_BITS - 1}, not {threshold}")
    if blocks and not threshold < blocks <= HASH_BITS:
        raise ValueError(f"blocks must be in {threshold + 1}..{HASH_BITS} (or 0), not {blocks}")
    u = np.ascontiguousarray(hashes).view(np.uint64) if len(hashes) else np.zeros(0, np.uint64)
    # Equal hashes (blank frames, re-uploads) are searched once: the search runs over the distinct
    # values, and its pairs and each value's own copies are expanded to rows at the end.
    values, inverse, counts = np.unique(u, return_inverse=True, return_counts=True)
    vi, vj, vd = _search(values, threshold, blocks)
    members = np.argsort(inverse, kind="stable")  # rows of value 0, then of value 1, ...
    first = np.cumsum(counts) - counts
    parts = [_cross(members, first, counts, vi, vj, vd)]
    multi = np.flatnonzero(counts > 1)
    if multi.size:  # pairs among the copies of one value, at distance 0
        rows = members[_ranges(first[multi], first[multi] + counts[multi])]
        for p, q, d in _pairs_in_groups(inverse[rows], u[rows], 0):
            parts.append((rows[p], rows[q], d))
    i = np.concatenate([np.minimum(a, b) for a, b, _ in parts]).astype(np.int64)
    j = np.concatenate([np.maximum(a, b) for a, b, _ in parts]).astype(np.int64)
    d = np.concatenate([x for _, _, x in parts]).astype(np.int64)
    order = np.lexsort((j, i))
    return i[order], j[order], d[order]


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(s, e)`` for each pair, without a Python loop."""
    lengths = ends - starts
    return np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())


def _cross(
    members: np.ndarray, first: np.ndarray, counts: np.ndarray, vi: np.ndarray, vj: np.ndarray, vd: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every row of value ``vi[p]`` with every row of value ``vj[p]``, at distance ``vd[p]``."""
    ca, cb = counts[vi], counts[vj]
    total = ca * cb
    k = np.arange(total.sum()) - np.repeat(np.cumsum(total) - total, total)
    cb_k = np.repeat(cb, total)
    a = members[np.repeat(first[vi], total) + k // cb_k]
    b = members[np.repeat(first[vj], total) + k % cb_k]
    return a, b, np.repeat(vd, total)


def _search(u: np.ndarray, threshold: int, blocks: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`near_duplicate_pairs` over distinct uint64 values (positions ``i < j``, any order)."""
    n = len(u)
    if blocks is None:
        blocks = choose_blocks(n, threshold) or 0
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    found_d: list[np.ndarray] = []
    if n < 2:
        pass
    elif not blocks:
        # All pairs: one grouping whose key is the same for every hash.
        for p, q, d in _pairs_in_groups(np.zeros(n, np.uint8), u, threshold):
            found_i.append(p)
            found_j.append(q)
            found_d.append(d)
    else:
        # Each block's bits, shifted down once; a grouping's key packs its blocks' bits side by side
        # into the smallest integer type, which numpy sorts fastest (16 bits: a radix sort).
        values, widths = [], []
        for mask in _block_masks(blocks):
            low = (mask & -mask).bit_length() - 1
            values.append((u >> np.uint64(low)) & np.uint64(mask >> low))
            widths.append(mask.bit_count())
        for chosen in itertools.combinations(range(blocks), blocks - threshold):
            key = np.zeros(n, np.uint64)
            shift = 0
            for b in chosen:
                key |= values[b] << np.uint64(shift)
                shift += widths[b]
            if shift <= 16:
                order = np.argsort(key.astype(np.uint16), kind="stable")
            else:
                order = np.argsort(key.astype(np.uint32) if shift <= 32 else key)
            for p, q, d in _pairs_in_groups(key[order], u[order], threshold):
                a, b = order[p], order[q]
                found_i.append(np.minimum(a, b))
                found_j.append(np.maximum(a, b))
                found_d.append(d)
    if not found_i:
        empty = np.zeros(0, np.int64)
        return empty, empty.copy(), empty.copy()
    i, j, d = (np.concatenate(x).astype(np.int64) for x in (found_i, found_j, found_d))
    # A pair that agrees on several groupings' blocks was found by each: keep it once.
    _, once = np.unique(i * n + j, return_index=True)
    return i[once], j[once], d[once]


#: Columns of :func:`find_near_duplicates`'s frame, in order.
PAIR_COLUMNS = (
    "a",
    "a_result_index",
    "b",
    "b_result_index",
    "distance",
    "crosses_split",
    "a_split",
    "b_split",
    "a_row",
    "b_row",
)


def _hash_array(hashes: Sequence[int | None] | np.ndarray | pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``(int64 values, present mask)`` of hashes given as ints (signed or unsigned 64-bit) or nulls."""
    if isinstance(hashes, np.ndarray) and hashes.dtype.kind in "iu":
        return hashes.astype(np.uint64).view(np.int64), np.ones(len(hashes), bool)
    if isinstance(hashes, pd.Series) and str(hashes.dtype) in ("Int64", "int64"):  # the catalog's column
        return hashes.fillna(0).to_numpy(np.int64), hashes.notna().to_numpy(bool)
    series = pd.Series(hashes, dtype="object")
    present = series.notna().to_numpy()
    values = np.zeros(len(series), np.int64)
    for position in np.flatnonzero(present):
        value = int(series.iat[position])
        if not -(1 << 63) <= value < 1 << 64:
            raise ValueError(f"hash at row {position} is not a 64-bit value: {value}")
        values[position] = value - (1 << 64) if value >= 1 << 63 else value
    return values, present


def find_near_duplicates(
    ids: Sequence[str] | pd.Series,
    hashes: Sequence[int | None] | np.ndarray | pd.Series,
    *,
    result_index: Sequence[int] | pd.Series | None = None,
    splits: Sequence[str | None] | pd.Series | None = None,
    threshold: int = DEFAULT_THRESHOLD,
) -> pd.DataFrame:
    """The near-duplicate pairs among rows (the catalog's, typically): distance <= ``threshold``.

    ``ids``, ``hashes`` (int64 as :func:`phash_bytes` gives, or null: that row is left out),
    ``result_index`` and ``splits`` are aligned row by row. Returns one row per pair, columns
    :data:`PAIR_COLUMNS`: ``a``/``b`` the ids (``a`` the earlier row), their result indexes (0 when
    not given), ``distance`` in bits, ``crosses_split`` (both rows have a split, and they differ:
    the pairs that leak between train and test), the two splits, and ``a_row``/``b_row``, the
    positions in the input. Pairs that cross splits come first, then by distance, then by row.
    """
    ids = list(ids)
    values, present = _hash_array(hashes)
    if len(values) != len(ids):
        raise ValueError(f"{len(ids)} ids but {len(values)} hashes")
    index = np.zeros(len(ids), np.int64) if result_index is None else np.asarray(result_index, np.int64)
    split = pd.Series([None] * len(ids) if splits is None else list(splits), dtype="object")
    if len(index) != len(ids) or len(split) != len(ids):
        raise ValueError("ids, hashes, result_index and splits must have the same length")
    rows = np.flatnonzero(present)
    i, j, distance = near_duplicate_pairs(values[rows], threshold)
    a_row, b_row = rows[i], rows[j]
    a_split = split.iloc[a_row].reset_index(drop=True)
    b_split = split.iloc[b_row].reset_index(drop=True)
    crosses = (a_split.notna() & b_split.notna() & (a_split != b_split)).to_numpy(bool)
    ids_array = np.asarray(ids, dtype=object)
    out = pd.DataFrame(
        {
            "a": pd.array(ids_array[a_row], dtype="string"),
            "a_result_index": index[a_row],
            "b": pd.array(ids_array[b_row], dtype="string"),
            "b_result_index": index[b_row],
            "distance": distance,
            "crosses_split": crosses,
            "a_split": pd.array(a_split, dtype="string"),
            "b_split": pd.array(b_split, dtype="string"),
            "a_row": a_row,
            "b_row": b_row,
        },
        columns=list(PAIR_COLUMNS),
    )
    out = out.sort_values(
        ["crosses_split", "distance", "a_row", "b_row"], ascending=[False, True, True, True], kind="stable"
    )
    return out.reset_index(drop=True)


def pairs_markdown(
    store: TaskStore, rows: pd.DataFrame, pairs: pd.DataFrame, *, limit: int = 10, size: int = 48
) -> str:
    """A markdown table of the first ``limit`` pairs of :func:`find_near_duplicates` over ``rows``
    (their ``a_row``/``b_row`` index ``rows`` by position), each file as a small inline thumbnail."""
    if pairs.empty:
        return "_no near-duplicates_"
    lines = ["| a | b | ids | bits | splits |", "|---|---|---|---|---|"]
    for pair in pairs.head(limit).itertuples():
        cells = [_thumb(store, rows.iloc[int(r)], size) for r in (pair.a_row, pair.b_row)]
        splits = f"{pair.a_split} / {pair.b_split}" + (" **crosses**" if pair.crosses_split else "")
        lines.append(f"| {cells[0]} | {cells[1]} | `{pair.a}` `{pair.b}` | {pair.distance} | {splits} |")
    if len(pairs) > limit:
        lines.append(f"\n{len(pairs) - limit} more pair(s) not shown.")
    return "\n".join(lines)


def _thumb(store: TaskStore, row: pd.Series, size: int) -> str:
    from .media import thumbnail

    try:
        img = thumbnail(store.read_bytes(str(row["image_uri"])), str(row.get("media_type") or "image"), size)
    except OSError:
        img = None
    if img is None:
        return "(no preview)"
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=60)
    return f"![{row['id']}](data:image/jpeg;base64,{base64.b64encode(buf.getvalue()).decode()})"
