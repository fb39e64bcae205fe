"""Estimated price of a Kie task in credits, from one table of Kie's published prices.

These are estimates: Kie publishes prices on its model pages and changes them without notice, and
the only authoritative figure is what Kie charges (``TaskRecord.credits`` when Kie reports it, or the
change in :meth:`AsyncKieClient.get_credits`). Use the estimate for budgets and dry runs, and pass
``prices=`` to :func:`estimate_credits` to override the table with your account's current prices.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The key of a price that applies whatever the resolution (for models priced per task only).
ANY_RESOLUTION = "*"
#: The resolution Kie uses when the input names none (nano-banana-pro's documented default).
DEFAULT_RESOLUTION = "1K"

#: Credits per task by model, then by the input's ``resolution`` (or :data:`ANY_RESOLUTION`).
#: Kie's published prices for nano-banana-pro (1 credit is about $0.005); other models are not
#: listed until their prices are confirmed from Kie's own pages.
PRICES: Mapping[str, Mapping[str, float]] = {
    "nano-banana-pro": {"1K": 18, "2K": 18, "4K": 24},
}


def estimate_credits(
    model: str, input: Mapping[str, Any], prices: Mapping[str, Mapping[str, float]] | None = None
) -> float | None:
    """The estimated credits one task of ``model`` with ``input`` costs, or None if not known.

    The price is looked up by the input's ``resolution`` (default ``"1K"``), falling back to the
    model's :data:`ANY_RESOLUTION` entry. ``prices`` replaces :data:`PRICES` (same shape).
    """
    table = (PRICES if prices is None else prices).get(model)
    if not table:
        return None
    resolution = input.get("resolution") or DEFAULT_RESOLUTION
    price = table.get(str(resolution), table.get(ANY_RESOLUTION))
    return None if price is None else float(price)
