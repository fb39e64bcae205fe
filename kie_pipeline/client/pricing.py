"""Estimated price of a Kie task in credits, from the model registry's price entries.

These are estimates: Kie publishes prices on its model pages and changes them without notice, and
the only authoritative figure is what Kie charges (``TaskRecord.credits`` when Kie reports it, or the
change in :meth:`AsyncKieClient.get_credits`). Use the estimate for budgets and dry runs, and pass
``prices=`` to :func:`estimate_credits` to override the table with your account's current prices.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .registry import MODELS

#: Credits per task by model, then by the value of the model's price field (``"*"``: any value).
PRICES: Mapping[str, Mapping[str, float]] = {name: spec.prices for name, spec in MODELS.items()}


def estimate_credits(
    model: str, input: Mapping[str, Any], prices: Mapping[str, Mapping[str, float]] | None = None
) -> float | None:
    """The estimated credits one task of ``model`` with ``input`` costs, or None if not known.

    ``input`` is the validated input (defaults filled in). ``prices`` replaces :data:`PRICES` (same
    shape); a model it does not list has no estimate.
    """
    spec = MODELS.get(model)
    if spec is None:
        return None
    table = (PRICES if prices is None else prices).get(model)
    return spec.price(input, table or {})
