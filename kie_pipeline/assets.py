"""The assets: prompt_manifest → generated_images (one partition per batch) → image_catalog.

:func:`build_pipeline_assets` builds them for one pipeline's names (a key prefix, its own partitions,
dataset and IO manager), so several pipelines live side by side in one code location. The module's
``prompt_manifest``, ``generated_images`` and ``image_catalog`` are the unprefixed pipeline's.
"""

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow.dataset as ds
from pydantic import Field

from kie_pipeline.client import AsyncKieClient, KieAuthError, KieError
from kie_pipeline.pipeline.catalog import mismatched_copies, missing_copies, typed
from kie_pipeline.pipeline.catalog_dataset import read_catalog, refresh_catalog, sample_rows, template
from kie_pipeline.pipeline.contact_sheet import MAX_CELLS, write_contact_sheet
from kie_pipeline.pipeline.dedup import DEFAULT_THRESHOLD, find_near_duplicates, pairs_markdown
from kie_pipeline.pipeline.generation import BatchSummary, SystemicError, generate_batch
from kie_pipeline.pipeline.lease import BatchLeaseHeld
from kie_pipeline.pipeline.manifest import ManifestError
from kie_pipeline.pipeline.schema import CATALOG_DTYPES, COLUMN_DESCRIPTIONS
from kie_pipeline.pipeline.store import TaskStore, join

from .names import UNPREFIXED, PipelineNames
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


def _counts(values: pd.Series) -> dict[str, int]:
    """Rows per value (e.g. per state), as JSON-ready counts."""
    return {str(k): int(v) for k, v in values.value_counts().items()}


#: ``by_batch`` shows this many batches (the largest), so its table stays small at 1000 batches.
TOP_BATCHES = 20


def _table(counts: dict[str, dict[str, int]], by: str, *, top: int | None = None) -> str:
    """A markdown table of rows per ``by`` value and state, with totals; the ``top`` values with the
    most rows only (the total row still counts every value)."""
    if not counts:
        return "_no rows_"
    table = pd.DataFrame.from_dict(counts, orient="index").fillna(0).astype("int64").sort_index()
    table = table[sorted(table.columns)]
    table["total"] = table.sum(axis=1)
    total = table.sum(axis=0).rename("total")
    more = ""
    if top is not None and len(table) > top:
        more = f"\n\n{len(table) - top} more {by} values not shown (the {top} with the most rows are)."
        table = table.sort_values("total", ascending=False, kind="stable").head(top)
    table = pd.concat([table, total.to_frame().T])
    table.index.name = by
    return table.to_markdown() + more


def _read_snapshot(dataset: DatasetResource, columns: list[str], names: PipelineNames) -> pd.DataFrame | None:
    """Columns of the last ``prompt_manifest`` table, or None before the first one."""
    *folders, last = names.key("prompt_manifest").path
    path = dataset.store.path(*folders, f"{last}.parquet")
    try:
        with path.open("rb") as fh:
            return pd.read_parquet(fh, columns=columns)
    except (FileNotFoundError, OSError, ValueError):
        return None


def _previous_keys(dataset: DatasetResource, names: PipelineNames) -> dict[str, set[str]]:
    """Request keys per batch in the last manifest snapshot (to find batches that changed)."""
    prev = _read_snapshot(dataset, ["batch", "request_key"], names)
    if prev is None:
        return {}
    return {str(b): set(g["request_key"]) for b, g in prev.groupby("batch")}


def snapshot_batches(dataset: DatasetResource, names: PipelineNames = UNPREFIXED) -> set[str]:
    """The batches of the last ``prompt_manifest`` table (what ``generated_images`` can generate)."""
    prev = _read_snapshot(dataset, ["batch"], names)
    return set() if prev is None else set(prev["batch"].astype(str))


def sync_partitions(
    instance: dg.DagsterInstance, current: list[str], partitions: str = UNPREFIXED.partitions
) -> tuple[list[str], list[str]]:
    """Make the ``partitions`` (``batches``) the manifest's batches; returns (added, removed).

    A removed batch loses its partition (so schedules, backfills and the catalog no longer see it)
    but keeps its table, task records and images in the store: adding it back reuses all of them.
    """
    known = set(instance.get_dynamic_partitions(partitions))
    new = [b for b in current if b not in known]
    removed = sorted(known - set(current))
    if new:
        instance.add_dynamic_partitions(partitions, new)
    for key in removed:
        instance.delete_dynamic_partition(partitions, key)
    return new, removed


class GenerateConfig(dg.Config):
    """Run settings of ``generated_images``."""

    max_failure_rate: float = Field(default=0.2, description="The failure-rate check fails above this.")
    max_consecutive_failures: int = Field(
        default=10, description="Stop submitting after this many failures in a row."
    )
    submitters: int = Field(
        default=4, description="Concurrent createTask callers (all share the rate limit)."
    )
    regenerate_expired: bool = Field(
        default=False,
        description="Pay for a new generation of rows whose result expired at Kie before it was copied "
        "(off by default: a new task costs credits again).",
    )
    progress_interval_s: float = Field(
        default=10.0, description="Seconds between progress lines in the run's log."
    )
    prices: dict[str, dict[str, float]] | None = Field(
        default=None,
        description="Credits per task by model and resolution, replacing the built-in estimate table "
        "(kie_pipeline.client.pricing), e.g. {'nano-banana-pro': {'1K': 18, '2K': 18, '4K': 24}}.",
    )
    max_credits: float | None = Field(
        default=None,
        ge=0,
        description="The run's budget: the estimated credits of the tasks it creates never exceed "
        "this (each row's estimate is reserved before its createTask; rows that do not fit are not "
        "submitted, fail code BUDGET, and the run fails without retry once everything created is "
        "recorded). None: no budget. A model without a price estimate cannot run under a budget.",
    )


#: Transient failures (Kie or the network down) are retried by Dagster with backoff; a resumed run
#: costs nothing for finished rows. A refused key or missing credits fail at once (no retry).
GENERATION_RETRY_POLICY = dg.RetryPolicy(
    max_retries=3, delay=15, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


async def _balance(client: AsyncKieClient) -> float | None:
    """The account's credits, or None when Kie cannot say right now (never fails the run)."""
    try:
        return await client.get_credits()
    except KieError:
        return None


def _what_was_recorded(summary: BatchSummary, store: str) -> str:
    """Exactly what a stopped run did and did not record (never "everything" when it is not)."""
    if not summary.unrecorded:
        return f"Every task this run created ({summary.created}) is recorded under {store}/tasks."
    ids = ", ".join(f"{e['id']} (task {e['task_id']})" for e in summary.unrecorded[:10])
    where = (
        f"saved to {summary.unrecorded_file}, which the next run of this batch adopts instead of "
        "creating them again"
        if summary.unrecorded_file
        else "saved nowhere but this message and the metadata `unrecorded_tasks`"
    )
    return (
        f"{summary.created} task(s) created; {summary.created - len(summary.unrecorded)} recorded under "
        f"{store}/tasks; {len(summary.unrecorded)} NOT recorded there ({ids}): {where}."
    )


def _run_metadata(summary: BatchSummary, balance: float | None, elapsed: float) -> dict[str, Any]:
    return {
        "images_created": summary.created,
        "images_reused": summary.reused,
        "images_resumed": summary.resumed,
        "images_succeeded": summary.succeeded + summary.reused,
        "images_failed": summary.failed + summary.timed_out + summary.download_failed + summary.expired,
        "results": summary.results,
        "timed_out": summary.timed_out,
        "download_failed": summary.download_failed,
        "expired": summary.expired,
        "regenerated_expired": summary.regenerated_expired,
        "uncertain": summary.uncertain,
        "resubmitted_uncertain": summary.resubmitted_uncertain,
        "not_submitted": summary.not_submitted,
        "store_errors": summary.store_errors,
        "expired_links_refreshed": summary.expired_links_refreshed,
        "recovered_records": summary.recovered_records,
        "adopted_unrecorded_tasks": summary.adopted,
        "fail_codes": dg.MetadataValue.json(dict(summary.fail_codes)),
        # Credits of the tasks this run created: Kie's own figure where it gave one, else the
        # price table's estimate. Never the balance difference, which counts other runs' spending.
        # Floats (MetadataValue.float) so Dagster charts spend per partition over time.
        "credits_used": dg.MetadataValue.float(float(summary.credits_used)),
        "credits_from_kie": summary.credits_from_kie,
        # The estimate of the rows this run planned to create (the pre-flight's figure).
        "credits_estimated_needed": dg.MetadataValue.float(float(summary.credits_estimated_needed)),
        "credits_unpriced_rows": summary.credits_unpriced_rows,
        "account_balance": balance,
        "elapsed_s": round(elapsed, 2),
    }


@dataclass(frozen=True)
class PipelineAssets:
    """One pipeline's assets and checks (see :func:`build_pipeline_assets`)."""

    names: PipelineNames
    partitions: dg.DynamicPartitionsDefinition
    prompt_manifest: dg.AssetsDefinition
    generated_images: dg.AssetsDefinition
    image_catalog: dg.AssetsDefinition
    checks: tuple[dg.AssetChecksDefinition, ...]

    @property
    def assets(self) -> list[dg.AssetsDefinition]:
        """The three assets, upstream first."""
        return [self.prompt_manifest, self.generated_images, self.image_catalog]


def build_pipeline_assets(
    names: PipelineNames = UNPREFIXED,
    *,
    pool: str = KIE_POOL,
    manifest_condition: dg.AutomationCondition | None = None,
    generation_condition: dg.AutomationCondition | None = None,
    catalog_condition: dg.AutomationCondition | None = None,
    manifest_deps: tuple[dg.AssetKey, ...] = (),
    near_duplicates: int = DEFAULT_THRESHOLD,
    split_column: str = "split",
    retry_policy: dg.RetryPolicy = GENERATION_RETRY_POLICY,
) -> PipelineAssets:
    """The assets of one pipeline, named by ``names``, generating in the Dagster pool ``pool``.

    Each asset reads its dataset (manifest and store) from the resource ``names.dataset`` and writes
    its table through the IO manager ``names.io_manager``; ``generated_images`` talks to Kie through
    the ``kie`` resource, shared by every pipeline of the code location (one account, one set of
    limits). The conditions are the assets' declarative automation (None: none);
    ``manifest_deps`` are assets ``prompt_manifest`` is refreshed from (the manifest file's
    external asset), for lineage and automation. The catalog's near-duplicate check flags results
    whose perceptual hashes differ in at most ``near_duplicates`` bits, pairs across the manifest
    column ``split_column`` first.
    """
    partitions = dg.DynamicPartitionsDefinition(name=names.partitions)
    manifest_key = names.key("prompt_manifest")
    images_key = names.key("generated_images")
    catalog_key = names.key("image_catalog")

    @dg.asset(
        key=manifest_key,
        deps=list(manifest_deps),
        io_manager_key=names.io_manager,
        required_resource_keys={names.dataset},
        kinds={"pandas", "parquet"},
        group_name=names.group,
        automation_condition=manifest_condition,
    )
    def prompt_manifest(context: dg.AssetExecutionContext) -> dg.Output[pd.DataFrame]:
        """The validated, normalized manifest; keeps one partition of ``generated_images`` per batch.

        Any invalid row fails this asset with a message that names every bad row and field, so
        nothing downstream is submitted.
        """
        dataset: DatasetResource = getattr(context.resources, names.dataset)
        try:
            df = dataset.load_manifest()
        except ManifestError as exc:
            raise dg.Failure(description=str(exc), metadata={"problems": len(exc.problems)}) from None
        all_batches = sorted(df["batch"].unique())
        new, removed = sync_partitions(context.instance, all_batches, names.partitions)
        previous = _previous_keys(dataset, names)
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
                "removed_batches": dg.MetadataValue.json(removed),
                "changed_batches": dg.MetadataValue.json(sorted(map(str, changed))),
                "manifest": dataset.manifest,
                "partition_column": dataset.partition_column,
                "preview": dg.MetadataValue.md(preview.to_markdown(index=False)),
            },
        )

    @dg.asset(
        key=images_key,
        ins={"prompt_manifest": dg.AssetIn(manifest_key)},
        partitions_def=partitions,
        pool=pool,
        # One partition per run: each batch is retried, cancelled and reported on its own, and the
        # pool bounds how many batches talk to Kie at once (they share the account's limits).
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
        retry_policy=retry_policy,
        io_manager_key=names.io_manager,
        required_resource_keys={names.dataset, "kie"},
        kinds={"pandas", "parquet"},
        group_name=names.group,
        automation_condition=generation_condition,
        check_specs=[
            # Partitioned checks: each batch's result is its own, shown on its partition.
            dg.AssetCheckSpec("durable_copies_match", asset=images_key, partitions_def=partitions,
                              description="Every success row has a durable file whose sha256 matches."),
            dg.AssetCheckSpec("failure_rate_below_threshold", asset=images_key, partitions_def=partitions,
                              description="The partition's failure rate is at most max_failure_rate."),
        ],
    )  # fmt: skip
    async def generated_images(
        context: dg.AssetExecutionContext,
        config: GenerateConfig,
        prompt_manifest: pd.DataFrame,
    ):  # -> dg.MaterializeResult[pd.DataFrame]; annotated, Dagster would count the checks as outputs
        """One batch of results: submitted to Kie within its rate limit, waited for, and copied durably.

        Rows already generated with an unchanged request are reused (no createTask); rows whose task
        was created by an earlier, interrupted run are resumed; failed rows are retried.
        """
        dataset: DatasetResource = getattr(context.resources, names.dataset)
        kie: KieResource = context.resources.kie
        batch = context.partition_key
        rows = prompt_manifest[prompt_manifest["batch"] == batch]
        if rows.empty:
            raise dg.Failure(
                description=f"Batch {batch!r} has no rows in the current manifest snapshot; "
                "materialize prompt_manifest first.",
                allow_retries=False,
            )
        started = time.monotonic()
        store = dataset.task_store()
        error: SystemicError | None = None
        async with kie.get_client() as client:
            # The pre-flight: the balance, compared with the estimate of the rows to create before any
            # is submitted. A refused key fails here, before any task is attempted.
            balance_before: float | None = None
            try:
                balance_before = await client.get_credits()
            except KieAuthError as exc:
                raise dg.Failure(description=f"{exc} No image was attempted.", allow_retries=False) from None
            except KieError as exc:
                context.log.warning(
                    f"Could not read the account's balance ({exc}); going on without the pre-flight "
                    "check (a 402 from Kie still stops the batch)."
                )
            try:
                df, summary = await generate_batch(
                    client,
                    store,
                    rows,
                    submitters=config.submitters,
                    max_consecutive_failures=config.max_consecutive_failures,
                    regenerate_expired=config.regenerate_expired,
                    prices=config.prices,
                    progress=context.log.info,
                    progress_interval=config.progress_interval_s,
                    lease_owner=f"Dagster run {context.run_id}",
                    max_credits=config.max_credits,
                    balance=balance_before,
                    callbacks=kie.callback_settings(),
                )
            except BatchLeaseHeld as exc:
                raise dg.Failure(description=f"{exc} Nothing was submitted.", allow_retries=False) from None
            except SystemicError as exc:
                df, summary, error = None, exc.summary, exc
            balance = await _balance(client)
            metadata = {
                **_run_metadata(summary, balance, time.monotonic() - started),
                **kie.usage_metadata(client),
            }
        if error is not None:
            then = (
                "Dagster retries this run with backoff; a retry costs nothing for finished rows."
                if error.retryable
                else "Fix the cause and re-materialize this partition to finish only what is missing."
            )
            recorded = _what_was_recorded(summary, dataset.store.url)
            raise dg.Failure(
                description=f"{str(error).rstrip('.')}. {recorded} {then}",
                metadata={**metadata, "unrecorded_tasks": dg.MetadataValue.json(summary.unrecorded)},
                allow_retries=error.retryable and not summary.unrecorded,
            )
        assert df is not None
        df = typed(df)
        # Both read the store (hashes, thumbnails): off the event loop.
        mismatched = await asyncio.to_thread(mismatched_copies, store, df)
        sheet_name = "_".join((*names.prefix, "generated_images", batch))
        sheet = await asyncio.to_thread(write_contact_sheet, store, df, sheet_name)
        rows_per_request = df.drop_duplicates("id")
        rate = float((rows_per_request["state"] != "success").mean()) if len(rows_per_request) else 0.0
        return dg.MaterializeResult(
            value=df,
            metadata={
                **metadata,
                "dagster/row_count": len(df),
                "dagster/column_schema": column_schema(df),
                "by_state": dg.MetadataValue.json(_counts(df["state"])),
                "contact_sheet": dg.MetadataValue.md(sheet.markdown),
                **({"contact_sheet_path": dg.MetadataValue.path(sheet.uri)} if sheet.uri else {}),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name="durable_copies_match",
                    passed=not mismatched,
                    metadata={
                        "checked": int((df["state"] == "success").sum()),
                        "mismatched": dg.MetadataValue.json(mismatched[:50]),
                    },
                ),
                dg.AssetCheckResult(
                    check_name="failure_rate_below_threshold",
                    passed=rate <= config.max_failure_rate,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={"failure_rate": rate, "threshold": config.max_failure_rate},
                ),
            ],
        )

    def catalog_url(store: TaskStore) -> str:
        *folders, last = catalog_key.path
        return join(store.root, *folders, f"{last}.parquet")

    def catalog_paths(dataset: DatasetResource) -> tuple[TaskStore, str, str]:
        """The store, the catalog folder and the result tables' folder (paths on the store's fs)."""
        store = dataset.task_store()
        root = store.normalize(catalog_url(store))
        sources = store.normalize(join(store.root, *images_key.path))
        return store, root, sources

    def read_catalog_columns(
        dataset: DatasetResource, columns: list[str], filter: Any = None
    ) -> pd.DataFrame:
        store, root, _ = catalog_paths(dataset)
        return read_catalog(store.fs, root, columns, filter=filter)

    @dg.asset(
        key=catalog_key,
        # deps, not ins: the result tables are read by the refresh itself, only those that changed,
        # and the manifest as its (batch, id) columns. Loading every partition through the IO manager
        # on each refresh is what made the catalog slow and large at 1 000 000 rows.
        deps=[images_key, manifest_key],
        io_manager_key=names.io_manager,  # what a downstream asset's `ins` loads the folder with
        required_resource_keys={names.dataset},
        kinds={"pandas", "parquet"},
        group_name=names.group,
        automation_condition=catalog_condition,
    )
    def image_catalog(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        """Every result of every batch of the current manifest: ``{store}/image_catalog.parquet/``, a
        folder of one Parquet file per batch that pandas, pyarrow, Spark and DuckDB read as one table.

        A refresh rewrites only the files of batches whose result table or manifest rows changed.
        Rows whose id and batch are no longer in the manifest (a removed or renamed batch, an id
        moved to another batch) are left out; their files and task records stay in the store.
        """
        dataset: DatasetResource = getattr(context.resources, names.dataset)
        store, root, sources = catalog_paths(dataset)
        *folders, last = manifest_key.path
        # The snapshot's (batch, id) columns only, and only when it changed or a batch needs its ids.
        manifest = store.normalize(join(store.root, *folders, f"{last}.parquet"))
        refresh = refresh_catalog(store.fs, root, sources, manifest)
        if refresh.migrated:
            context.log.info(
                f"The single-file catalog at {root} was replaced by a folder of one file per batch."
            )
        if refresh.not_generated:
            context.log.info(
                f"Batches not generated yet (materialize generated_images for them): {refresh.not_generated}"
            )
        sample = sample_rows(store.fs, root, MAX_CELLS, files=refresh.files)  # no second listing
        gallery = write_contact_sheet(store, sample, "_".join((*names.prefix, "image_catalog")))
        schema = template({k: v for k, v in refresh.dtypes.items() if k not in CATALOG_DTYPES})
        rows_by_batch = {b: e["summary"]["by_state"] for b, e in refresh.batches.items()}
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": refresh.rows,
                "dagster/column_schema": column_schema(schema),
                "rows": refresh.rows,
                "path": dg.MetadataValue.path(catalog_url(store)),
                "batches": len(refresh.batches),
                "batches_not_generated": dg.MetadataValue.json(refresh.not_generated),
                "batches_rewritten": len(refresh.rewritten),
                "batches_kept": len(refresh.kept),
                "batches_removed": dg.MetadataValue.json(refresh.removed),
                "rows_left_out": refresh.rows_left_out,
                "by_state": dg.MetadataValue.json(refresh.total("by_state")),
                "by_batch": dg.MetadataValue.md(_table(rows_by_batch, "batch", top=TOP_BATCHES)),
                "by_model": dg.MetadataValue.md(_table(refresh.crosstab("by_model"), "model")),
                "by_media_type": dg.MetadataValue.md(_table(refresh.crosstab("by_media_type"), "media_type")),
                "total_bytes": int(refresh.sum("bytes")),
                "credits": float(refresh.sum("credits")),
                "gallery": dg.MetadataValue.md(gallery.markdown),
                **({"gallery_path": dg.MetadataValue.path(gallery.uri)} if gallery.uri else {}),
            },
        )

    @dg.asset_check(
        asset=catalog_key,
        required_resource_keys={names.dataset},
        description="Every success row's durable copy exists with the recorded size (one listing of "
        "the store, no reads; each partition's check verified the sha256 when the copy was written).",
    )
    def catalog_copies_match(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        dataset: DatasetResource = getattr(context.resources, names.dataset)
        ok = read_catalog_columns(
            dataset, ["id", "result_index", "state", "image_uri", "bytes"], ds.field("state") == "success"
        )
        missing = missing_copies(dataset.task_store(), ok)
        return dg.AssetCheckResult(
            passed=not missing,
            metadata={
                "checked": len(ok),
                "missing_or_wrong_size": dg.MetadataValue.json(missing[:50]),
            },
        )

    @dg.asset_check(
        asset=catalog_key,
        blocking=True,
        required_resource_keys={names.dataset},
        description="No result appears twice (id and result_index are unique); fails the run if one does.",
    )
    def catalog_ids_unique(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        dataset: DatasetResource = getattr(context.resources, names.dataset)
        keys = read_catalog_columns(dataset, ["id", "result_index"])
        dupes = keys[keys.duplicated(["id", "result_index"])]["id"].tolist()
        return dg.AssetCheckResult(
            passed=not dupes,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"duplicates": dg.MetadataValue.json(dupes[:50])},
        )

    @dg.asset_check(
        asset=catalog_key,
        required_resource_keys={names.dataset},
        description=f"No two results are near-duplicates (perceptual hashes within {near_duplicates} "
        f"bits); pairs across `{split_column}` values (leaks between train and test) are listed first.",
    )
    def no_near_duplicates(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        dataset: DatasetResource = getattr(context.resources, names.dataset)
        columns = ["id", "result_index", "phash", "image_uri", "media_type", split_column]
        ok = read_catalog_columns(dataset, columns, ds.field("state") == "success").reset_index(drop=True)
        hashes = ok["phash"] if "phash" in ok.columns else pd.Series([None] * len(ok), dtype="Int64")
        splits = ok[split_column] if split_column in ok.columns else None
        pairs = find_near_duplicates(
            ok["id"], hashes, result_index=ok["result_index"], splits=splits, threshold=near_duplicates
        )
        crossing = int(pairs["crosses_split"].sum())
        return dg.AssetCheckResult(
            passed=pairs.empty,
            severity=dg.AssetCheckSeverity.WARN,
            description=None
            if pairs.empty
            else f"{len(pairs)} near-duplicate pair(s), {crossing} across splits.",
            metadata={
                "pairs": len(pairs),
                "pairs_across_splits": crossing,
                "hashed": int(hashes.notna().sum()),
                "threshold_bits": near_duplicates,
                "worst": dg.MetadataValue.md(pairs_markdown(dataset.task_store(), ok, pairs)),
            },
        )

    return PipelineAssets(
        names=names,
        partitions=partitions,
        prompt_manifest=prompt_manifest,
        generated_images=generated_images,
        image_catalog=image_catalog,
        checks=(catalog_copies_match, catalog_ids_unique, no_near_duplicates),
    )


#: The unprefixed pipeline (what tests, benchmarks and the demo materialize directly).
DEFAULT_PIPELINE = build_pipeline_assets()
prompt_manifest = DEFAULT_PIPELINE.prompt_manifest
generated_images = DEFAULT_PIPELINE.generated_images
image_catalog = DEFAULT_PIPELINE.image_catalog
catalog_copies_match, catalog_ids_unique, no_near_duplicates = DEFAULT_PIPELINE.checks

__all__ = [
    "DEFAULT_PIPELINE",
    "PipelineAssets",
    "build_pipeline_assets",
    "catalog_copies_match",
    "catalog_ids_unique",
    "generated_images",
    "image_catalog",
    "no_near_duplicates",
    "prompt_manifest",
    "snapshot_batches",
    "sync_partitions",
]
