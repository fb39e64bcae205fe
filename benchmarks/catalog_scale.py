"""image_catalog at scale: a full build, then a refresh after one batch changed, and the checks.

    .venv/bin/python benchmarks/catalog_scale.py                   # 100 000 and 1 000 000 rows
    .venv/bin/python benchmarks/catalog_scale.py --rows 100000     # one size

Builds N synthetic result rows (1000 per batch: ``generated_images/{batch}.parquet``) and a
``prompt_manifest`` snapshot holding all of them in a temporary store, materializes ``image_catalog``
once (the full build), rewrites one batch's result table (some rows now failed) and materializes it
again (the refresh), then runs the catalog's three checks. Each step runs in a fresh process (on one
persistent Dagster instance in the temporary folder), so each peak RSS is that step's own: Python,
Dagster and the pipeline imported, plus what the step itself held.

Times: ``run`` is the ``dagster.materialize`` call (the run, its events and the instance's writes);
``step`` is the asset's or the check's own step as Dagster timed it. Copies are not written (1 000 000
files): ``catalog_copies_match`` lists an empty image folder and reports every row, which costs the
same loop as a passing check. ``--before DIR`` first runs the same steps with the pipeline of another
checkout (a git worktree of an older commit) on the same store.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROWS_PER_BATCH = 1000


def _batch(key: str, n: int, work: str, seed: int) -> object:
    import numpy as np
    import pandas as pd

    from kie_pipeline.pipeline.catalog import typed

    rng = np.random.default_rng(seed)
    ids = [f"{key}-{i:04d}" for i in range(n)]
    return typed(
        pd.DataFrame(
            {
                "id": ids,
                "batch": key,
                "model": "nano-banana-pro",
                "prompt": [f"synthetic prompt number {i} of {key}" for i in range(n)],
                "state": "success",
                "result_index": 0,
                "task_id": [f"{seed:08x}{i:024x}" for i in range(n)],
                "image_uri": [f"{work}/store/images/{i}.png" for i in ids],
                "sha256": "0" * 64,
                "bytes": 123456,
                "width": 1024,
                "height": 1024,
                "format": "png",
                "phash": rng.integers(-(2**63), 2**63 - 1, size=n, dtype="int64"),
                "credits": 18.0,
                "created_at": "2026-11-24T00:00:00+00:00",
                "completed_at": "2026-11-24T00:00:09+00:00",
                "split": rng.choice(["train", "val", "test"], size=n),
            }
        )
    )


def setup(work: str, rows: int) -> list[str]:
    """The synthetic store: result tables, the manifest snapshot, and the instance's partitions."""
    import dagster as dg
    import pandas as pd

    os.makedirs(f"{work}/store/generated_images")
    os.makedirs(f"{work}/home")
    keys = [f"p{i:04d}" for i in range(rows // ROWS_PER_BATCH)]
    manifest = []
    for n, key in enumerate(keys):
        df = _batch(key, ROWS_PER_BATCH, work, n)
        df.to_parquet(f"{work}/store/generated_images/{key}.parquet", index=False)
        # The snapshot has the manifest's columns; the catalog reads only (batch, id).
        manifest.append(df[["id", "batch", "model", "prompt", "task_id", "split"]])
    pd.concat(manifest, ignore_index=True).to_parquet(f"{work}/store/prompt_manifest.parquet", index=False)
    with dg.DagsterInstance.local_temp(tempdir=f"{work}/home") as inst:
        inst.add_dynamic_partitions("batches", keys)  # what the catalog of the code before read
    return keys


def change_one_batch(work: str, key: str) -> None:
    """A rerun of one batch: its table is written again, 10 of its rows failed this time."""
    import pandas as pd

    path = f"{work}/store/generated_images/{key}.parquet"
    df = pd.read_parquet(path)
    df.loc[df.index[:10], "state"] = "fail"
    df.to_parquet(path, index=False)


def child(work: str, what: str) -> None:
    """One step in this (fresh) process; prints a JSON line of its times and peak RSS."""
    import dagster as dg

    started = time.monotonic()
    os.environ.update(KIE_STORE=f"{work}/store", KIE_MANIFEST=f"{work}/none.csv", KIE_API_KEY="unused")
    from kie_pipeline.definitions import ASSET_CHECKS, ASSETS, build_resources

    quiet = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
    key = dg.AssetKey("image_catalog")
    selection = dg.AssetSelection.checks_for_assets(key) if what == "checks" else [key.to_user_string()]
    with dg.DagsterInstance.local_temp(tempdir=f"{work}/home") as inst:
        imported = time.monotonic()
        result = dg.materialize(
            [*ASSETS, *ASSET_CHECKS] if what == "checks" else ASSETS,
            selection=selection,
            resources=build_resources(rate_limit_dir=None),
            instance=inst,
            run_config=quiet,
            raise_on_error=False,
        )
        run = time.monotonic() - imported
    steps = {
        str(e.step_key): e.event_specific_data.duration_ms / 1000
        for e in result.all_events
        if e.is_step_success
    }
    rows = None
    if what != "checks":
        md = result.asset_materializations_for_node("image_catalog")[0].metadata
        rows = md["rows"].value
    print(
        json.dumps(
            {
                "what": what,
                "run_s": round(run, 2),
                "process_s": round(time.monotonic() - started, 2),
                "steps_s": {k: round(v, 2) for k, v in steps.items()},
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "rows": rows,
            }
        )
    )


def run_child(work: str, what: str, pythonpath: str | None = None) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath  # another checkout's kie_pipeline, imported before this one
    out = subprocess.run(
        [sys.executable, __file__, "--child", what, "--work", work],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def steps(work: str, keys: list[str], checks: bool, pythonpath: str | None, label: str) -> None:
    """Full build, one batch changed, refresh, checks: each in a fresh process; prints each."""
    full = run_child(work, "refresh", pythonpath)
    change_one_batch(work, keys[len(keys) // 2 + (1 if pythonpath else 0)])
    refresh = run_child(work, "refresh", pythonpath)
    checked = run_child(work, "checks", pythonpath) if checks else None
    print(f" {label}")
    for name, r in (("full build", full), ("refresh, 1 batch changed", refresh)):
        step = r["steps_s"].get("image_catalog")
        print(
            f"  {name:26s} run {r['run_s']:6.2f} s  step {step:6.2f} s  process {r['process_s']:6.2f} s  "
            f"peak RSS {r['peak_rss_mb']:5d} MB  rows {r['rows']:,}"
        )
    if checked is not None:
        times = ", ".join(
            f"{k.removeprefix('image_catalog_')} {v:.2f} s" for k, v in checked["steps_s"].items()
        )
        print(
            f"  {'checks (one run)':26s} run {checked['run_s']:6.2f} s  peak RSS {checked['peak_rss_mb']:5d} MB"
        )
        print(f"    steps: {times}")
    sys.stdout.flush()


def measure(rows: int, checks: bool, before: str | None) -> None:
    with tempfile.TemporaryDirectory(prefix="catalog-scale-") as work:
        t0 = time.monotonic()
        keys = setup(work, rows)
        made = time.monotonic() - t0
        batches = f"{len(keys)} batches of {ROWS_PER_BATCH}"
        print(f"catalog of {rows:,} result rows ({batches}; synthetic store {made:.0f} s)")
        if before:
            # The code before on the same store first; this checkout's full build then also
            # migrates the single-file catalog it wrote.
            steps(work, keys, checks, before, f"before ({before})")
        note = " (its full build replaces the single file above)" if before else ""
        steps(work, keys, checks, None, f"this checkout{note}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, nargs="*", default=[100_000, 1_000_000])
    p.add_argument("--no-checks", action="store_true", help="skip the checks' run")
    p.add_argument("--before", help="first run another checkout's pipeline (its folder, as PYTHONPATH)")
    p.add_argument("--child", choices=("refresh", "checks"), help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.work, a.child)
        return
    for rows in a.rows:
        measure(rows, not a.no_checks, a.before)


if __name__ == "__main__":
    main()
