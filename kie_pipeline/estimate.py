"""``kie-pipeline estimate``: what materializing a manifest would create, reuse and cost.

The rows are classified by the same :func:`~kie_pipeline.pipeline.planning.plan_rows` that
generation uses, against the store's task records (read only: nothing is written, no createTask is
made, no API key is needed), and priced with the registry's price table.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from kie_pipeline.client import AsyncKieClient
from kie_pipeline.pipeline.manifest import load_manifest
from kie_pipeline.pipeline.planning import CreditNeed, copy_uris, estimate_plan, plan_rows
from kie_pipeline.pipeline.store import TaskStore

#: The table's columns: the first two name the row, the others are counts and credits.
COLUMNS = ("batch", "model", "create", "reuse", "resume", "expired", "credits")


def estimate_manifest(
    manifest: str,
    store: TaskStore | None,
    *,
    prices: Mapping[str, Any] | None = None,
    regenerate_expired: bool = False,
    on_step: Callable[[str], None] | None = None,
) -> list[CreditNeed]:
    """Counts and estimated credits per (batch, model) of materializing every batch of ``manifest``.

    ``store`` (None: nothing generated yet) supplies the task records and durable copies that make
    rows reused or resumed. ``on_step`` receives a short line as each step starts (the command shows
    it beside a spinner). Raises :class:`~kie_pipeline.pipeline.manifest.ManifestError`.
    """
    step = on_step or (lambda _line: None)
    step(f"Reading and validating {manifest}")
    df = load_manifest(manifest)
    rows = df.to_dict("records")
    existing: dict[str, Any] = {}
    on_disk: set[str] = set()
    if store is not None:
        step(f"Reading the task records of {len(rows)} rows")
        # set_aside=False: an estimate only reads; a damaged record is left for the next run.
        existing = store.load_many([r["request_key"] for r in rows], set_aside=False)
        on_disk = {u for u in copy_uris(existing.values()) if store.exists(u)}
    return estimate_plan(plan_rows(rows, existing, on_disk, regenerate_expired=regenerate_expired), prices)


#: The legend under the table.
LEGEND = (
    "create: new createTask calls, the only rows that cost credits; reuse: finished, copies",
    "in the store; resume: a task exists, waited for again; expired: kept failed.",
)


def estimate_rows(needs: list[CreditNeed]) -> tuple[tuple[str, ...], list[tuple[str, ...]], tuple[str, ...]]:
    """The table of ``needs`` as text cells: the header, one row per (batch, model), the total row."""
    counts = ("create", "reuse", "resume", "expired")
    body = [
        (n.batch, n.model, *(str(getattr(n, c)) for c in counts), _credits(n.credits, n.unpriced))
        for n in needs
    ]
    total = (
        "total",
        "",
        *(str(sum(getattr(n, c) for n in needs)) for c in COLUMNS[2:6]),
        _credits(sum(n.credits for n in needs), sum(n.unpriced for n in needs)),
    )
    return COLUMNS, body, total


def estimate_notes(needs: list[CreditNeed], balance: float | None = None) -> list[str]:
    """The lines under the table: the legend, unpriced rows, and the balance when one is given."""
    total_credits = sum(n.credits for n in needs)
    unpriced = sum(n.unpriced for n in needs)
    out = list(LEGEND)
    if unpriced:
        out.append(f"{unpriced} row(s) to create have no price estimate (marked +N?): set prices for them.")
    if balance is not None:
        verdict = "enough" if balance >= total_credits else "NOT enough"
        out.append(f"Balance: {balance:g} credits ({verdict} for {total_credits:g}).")
    return out


def format_estimate(needs: list[CreditNeed], balance: float | None = None) -> str:
    """A plain-text table of ``needs`` with a total line, and the balance when one is given."""
    header, body, total = estimate_rows(needs)
    table = [header, *body, total]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    out = [line(header), rule, *(line(r) for r in body), rule, line(total)]
    return "\n".join([*out, *estimate_notes(needs, balance)])


def _credits(credits: float, unpriced: int) -> str:
    return f"{credits:g}" + (f" +{unpriced}?" if unpriced else "")


def read_balance(api_key: str, base_url: str) -> float:
    """The account's balance (``GET /api/v1/chat/credit``). Raises KieError when Kie cannot tell it."""

    async def read() -> float:
        async with AsyncKieClient(api_key, base_url) as client:
            return await client.get_credits()

    return asyncio.run(read())
