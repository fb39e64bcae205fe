"""Time to find near-duplicate pairs among N random 64-bit hashes with planted near-duplicates.

    .venv/bin/python benchmarks/near_duplicates.py [N ...] [--threshold K] [--blocks M]

For each N (default 10 000, 100 000 and 1 000 000): N uniformly random hashes, of which 1% are
replaced by copies of others with 0..K bits flipped (the planted pairs), then
``kie_pipeline.pipeline.dedup.near_duplicate_pairs``. Prints the wall time, the number of blocks
used, the pairs found, and the planted pairs found (all must be: the search is exact). Random pairs
within K bits also count as found; for K <= 6 there are almost none among uniformly random hashes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from kie_pipeline.pipeline.dedup import DEFAULT_THRESHOLD, choose_blocks, near_duplicate_pairs


def planted(n: int, threshold: int, seed: int = 0) -> tuple[np.ndarray, set[tuple[int, int]]]:
    """``n`` random hashes; 1% of them copies of another with 0..threshold bits flipped."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(
        np.iinfo(np.int64).min, np.iinfo(np.int64).max, size=n, dtype=np.int64, endpoint=True
    )
    count = max(1, n // 100)
    positions = rng.permutation(n)[: 2 * count]
    pairs = set()
    for source, copy in zip(positions[:count], positions[count:], strict=True):
        flips = rng.choice(64, size=int(rng.integers(0, threshold + 1)), replace=False)
        mask = np.uint64(sum(1 << int(b) for b in flips))
        hashes[copy] = (hashes[source : source + 1].view(np.uint64) ^ mask).view(np.int64)[0]
        pairs.add((min(source, copy), max(source, copy)))
    return hashes, pairs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("n", nargs="*", type=int, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--threshold", type=int, default=DEFAULT_THRESHOLD)
    parser.add_argument("--blocks", type=int, default=None, help="force the number of blocks (0: all pairs)")
    args = parser.parse_args()
    k = args.threshold
    print(
        f"near-duplicate pairs among N random 64-bit hashes, threshold {k} bits, 1% planted within {k} bits"
    )
    for n in args.n:
        hashes, pairs = planted(n, k)
        blocks = args.blocks if args.blocks is not None else choose_blocks(n, k)
        start = time.perf_counter()
        i, j, _ = near_duplicate_pairs(hashes, k, blocks=args.blocks)
        elapsed = time.perf_counter() - start
        found = set(zip(i.tolist(), j.tolist(), strict=True))
        print(
            f"  N={n:>9,}  {elapsed:7.2f} s  blocks={blocks or 'all pairs'}  pairs found {len(found):>6,}"
            f"  planted {len(pairs):>6,}  planted found {len(pairs & found):>6,}  others {len(found - pairs)}"
        )


if __name__ == "__main__":
    main()
