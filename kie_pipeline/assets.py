"""The assets: prompt_manifest → generated_images (one partition per batch) → image_catalog."""

import asyncio
import time
from typing import Any

import dagster as dg
import pandas as pd
from pydantic import Field
from upath import UPath

from kie_pipeline.client import AsyncKieClient, KieAuthError, KieError
from kie_pipeline.pipeline.catalog import (
    COLUMN_DESCRIPTIONS,
    build_catalog,
    mismatched_copies,
    thumbnail_markdown,
    typed,
)
from kie_pipeline.pipeline.generation import BatchSummary, SystemicError, generate_batch
from kie_pipeline.pipeline.manifest import ManifestError, load_manifest

from .partitions import batches
from .resources import DatasetResource, KieResource

#: Every run that talks to Kie shares this pool, so parallel runs share the account's limits.
KIE_POOL = "kie"


def column_schema(df: pd.DataFrame) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(str(c), str(t), description=COLUMN_DESCRIPTIONS.get(str(c)))
            for c, t in df.dtypes.items()
        ]
    )


def _previous_keys(dataset: DatasetResource) -> dict[str, set[str]]:
    """Request keys per batch in the last manifest snapshot (to find batches that changed)."""
    path = UPath(dataset.store) / "prompt_manifest.parquet"
    try:
        with path.open("rb") as fh:
            prev = pd.read_parquet(fh, columns=["batch", "request_key"])
    except (FileNotFoundError, OSError, ValueError):
        return {}
    return {str(b): set(g["request_key"]) for b, g in prev.groupby("batch")}


@dg.asset(io_manager_key="parquet_io", kinds={"pandas", "parquet"}, group_name="kie")
def prompt_manifest(context: dg.AssetExecutionContext, dataset: DatasetResource) -> dg.Output[pd.DataFrame]:
    """The validated, normalized manifest; registers one ``batches`` partition per batch value.

    Any invalid row fails this asset with a message that names every bad row and field, so nothing
    downstream is submitted.
    """
    try:
        df = load_manifest(dataset.manifest)
    except ManifestError as exc:
        raise dg.Failure(description=str(exc), metadata={"problems": len(exc.problems)}) from None
    all_batches = sorted(df["batch"].unique())
    known = set(context.instance.get_dynamic_partitions(batches.name))
    new = [b for b in all_batches if b not in known]
    if new:
        context.instance.add_dynamic_partitions(batches.name, new)
    previous = _previous_keys(dataset)
    changed = [b for b, g in df.groupby("batch") if set(g["request_key"]) != previous.get(str(b))]
    preview = df[["id", "batch", "model", "prompt"]].head(10).copy()
    preview["prompt"] = preview["prompt"].str.slice(0, 80)
    return dg.Output(
        df,
        metadata={
            "dagster/row_count": len(df),
            "dagster/column_schema": column_schema(df),
            "rows": len(df),
            "batches": len(all_batches),
            "new_batches": dg.MetadataValue.json(new),
            "changed_batches": dg.MetadataValue.json(sorted(map(str, changed))),
            "manifest": dataset.manifest,
            "preview": dg.MetadataValue.md(preview.to_markdown(index=False)),
        },
    )


class GenerateConfig(dg.Config):
    """Run settings of ``generated_images``."""

    max_failure_rate: float = Field(default=0.2, description="The failure-rate check fails above this.")
    max_consecutive_failures: int = Field(
        default=10, description="Stop submitting after this many failures in a row."
    )
    submitters: int = Field(
        default=4, description="Concurrent createTask callers (all share the rate limit)."
    )


async def _generate(
    client: AsyncKieClient, dataset: DatasetResource, rows: pd.DataFrame, config: GenerateConfig, log: Any
):
    async def credits() -> float | None:
        try:
            return await client.get_credits()
        except KieAuthError:
            raise  # a refused key: fail before any task is attempted
        except KieError:
            return None

    before = await credits()
    try:
        df, summary = await generate_batch(
            client,
            dataset.task_store(),
            rows,
            submitters=config.submitters,
            max_consecutive_failures=config.max_consecutive_failures,
            progress=log.info,
        )
        error = None
    except SystemicError as exc:
        df, summary, error = None, exc.summary, exc
    after = await credits()
    used = before - after if before is not None and after is not None else None
    return df, summary, error, used


def _run_metadata(
    summary: BatchSummary, usage: dict[str, int], credits_used: float | None, elapsed: float
) -> dict[str, Any]:
    return {
        "images_created": summary.created,
        "images_reused": summary.reused,
        "images_resumed": summary.resumed,
        "images_succeeded": summary.succeeded + summary.reused,
        "images_failed": summary.failed + summary.timed_out + summary.download_failed,
        "timed_out": summary.timed_out,
        "download_failed": summary.download_failed,
        "not_submitted": summary.not_submitted,
        "expired_links_refreshed": summary.expired_links_refreshed,
        "fail_codes": dg.MetadataValue.json(dict(summary.fail_codes)),
        "credits_used": credits_used,
        "polls": usage["polls"],
        "retries": usage["retries"],
        "rate_limited_429": usage["rate_limited"],
        "create_task_calls": usage["tasks_created"],
        "elapsed_s": round(elapsed, 2),
    }


@dg.asset(
    partitions_def=batches,
    pool=KIE_POOL,
    # One partition per run: each batch is retried, cancelled and reported on its own, and the
    # "kie" pool bounds how many batches talk to Kie at once (they share the account's limits).
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
    io_manager_key="parquet_io",
    kinds={"pandas", "parquet"},
    group_name="kie",
    check_specs=[
        dg.AssetCheckSpec("durable_copies_match", asset="generated_images",
                          description="Every success row has a durable file whose sha256 matches."),
        dg.AssetCheckSpec("failure_rate_below_threshold", asset="generated_images",
                          description="The partition's failure rate is at most max_failure_rate."),
    ],
)  # fmt: skip
def generated_images(
    context: dg.AssetExecutionContext,
    config: GenerateConfig,
    prompt_manifest: pd.DataFrame,
    kie: KieResource,
    dataset: DatasetResource,
):
    """One batch of images: submitted to Kie within its rate limit, waited for, and copied durably.

    Rows already generated with an unchanged request are reused (no createTask); rows whose task
    was created by an earlier, interrupted run are resumed; failed rows are retried.
    """
    batch = context.partition_key
    rows = prompt_manifest[prompt_manifest["batch"] == batch]
    if rows.empty:
        raise dg.Failure(description=f"Batch {batch!r} has no rows in the current manifest snapshot.")
    started = time.monotonic()

    async def run():
        async with kie.get_client() as client:
            out = await _generate(client, dataset, rows, config, context.log)
            return (*out, client.usage.as_dict())

    try:
        df, summary, error, credits_used, usage = asyncio.run(run())
    except KieAuthError as exc:
        raise dg.Failure(description=f"{exc} No image was attempted.") from None
    metadata = _run_metadata(summary, usage, credits_used, time.monotonic() - started)
    if error is not None:
        raise dg.Failure(
            description=f"{str(error).rstrip('.')}. Everything already paid for is recorded under "
            f"{dataset.store}/tasks; "
            "fix the cause and re-materialize this partition to finish only what is missing.",
            metadata=metadata,
        )
    df = typed(df)
    store = dataset.task_store()
    yield dg.Output(
        df,
        metadata={
            **metadata,
            "dagster/row_count": len(df),
            "dagster/column_schema": column_schema(df),
            "preview": dg.MetadataValue.md(thumbnail_markdown(store, df, limit=4)),
        },
    )
    mismatched = mismatched_copies(store, df)
    yield dg.AssetCheckResult(
        check_name="durable_copies_match",
        passed=not mismatched,
        metadata={
            "checked": int((df["state"] == "success").sum()),
            "mismatched": dg.MetadataValue.json(mismatched[:50]),
        },
    )
    rate = float((df["state"] == "fail").mean()) if len(df) else 0.0
    yield dg.AssetCheckResult(
        check_name="failure_rate_below_threshold",
        passed=rate <= config.max_failure_rate,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"failure_rate": rate, "threshold": config.max_failure_rate},
    )


@dg.asset(
    ins={"generated_images": dg.AssetIn(metadata={"allow_missing_partitions": True})},
    io_manager_key="parquet_io",
    kinds={"pandas", "parquet"},
    group_name="kie",
)
def image_catalog(
    context: dg.AssetExecutionContext, generated_images: dict[str, pd.DataFrame], dataset: DatasetResource
) -> dg.Output[pd.DataFrame]:
    """Every image of every batch in one Parquet table: ``{KIE_STORE}/image_catalog.parquet``."""
    catalog = build_catalog(generated_images.values())
    by_state = catalog["state"].value_counts().to_dict()
    by_batch = catalog.groupby("batch")["state"].value_counts().unstack(fill_value=0)
    return dg.Output(
        catalog,
        metadata={
            "dagster/row_count": len(catalog),
            "dagster/column_schema": column_schema(catalog),
            "rows": len(catalog),
            "batches": len(generated_images),
            "by_state": dg.MetadataValue.json({str(k): int(v) for k, v in by_state.items()}),
            "by_batch": dg.MetadataValue.md(by_batch.to_markdown()) if len(by_batch) else "",
            "total_bytes": int(catalog["bytes"].fillna(0).sum()),
            "gallery": dg.MetadataValue.md(thumbnail_markdown(dataset.task_store(), catalog, limit=8)),
        },
    )


@dg.asset_check(
    asset=image_catalog, description="Every success row's durable copy exists and its sha256 matches."
)
def catalog_copies_match(image_catalog: pd.DataFrame, dataset: DatasetResource) -> dg.AssetCheckResult:
    mismatched = mismatched_copies(dataset.task_store(), image_catalog)
    return dg.AssetCheckResult(
        passed=not mismatched,
        metadata={
            "checked": int((image_catalog["state"] == "success").sum()),
            "mismatched": dg.MetadataValue.json(mismatched[:50]),
        },
    )


@dg.asset_check(asset=image_catalog, description="No id appears twice in the catalog.")
def catalog_ids_unique(image_catalog: pd.DataFrame) -> dg.AssetCheckResult:
    dupes = image_catalog["id"][image_catalog["id"].duplicated()].tolist()
    return dg.AssetCheckResult(passed=not dupes, metadata={"duplicates": dg.MetadataValue.json(dupes[:50])})


__all__ = [
    "catalog_copies_match",
    "catalog_ids_unique",
    "generated_images",
    "image_catalog",
    "prompt_manifest",
]
