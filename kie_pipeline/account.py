"""The Kie account as an observable asset: its credit balance each time it is observed.

``kie_account`` reads ``GET /api/v1/chat/credit`` and records the balance as numeric metadata (so
Dagster charts it over time); its check ``balance_above_threshold`` warns when the balance is below
``KieResource.low_balance_credits`` (``KIE_LOW_BALANCE`` in the environment-built definitions).
Observe it from the UI (the asset's Observe button) or from a job or schedule that selects it.
"""

import dagster as dg

from kie_pipeline.client import KieError

from .resources import KieResource

KIE_ACCOUNT = dg.AssetKey("kie_account")
BALANCE_CHECK = "balance_above_threshold"


# multi_observable_source_asset (beta in 1.13) is the one decorator that lets an observation carry
# its check's result: one credit call per observation, the check evaluated on that same figure.
@dg.multi_observable_source_asset(
    specs=[
        dg.AssetSpec(
            KIE_ACCOUNT,
            group_name="kie",
            kinds={"kie"},
            description="The Kie.ai account: its credit balance (metadata `balance`) when observed.",
        )
    ],
    check_specs=[
        dg.AssetCheckSpec(
            BALANCE_CHECK,
            asset=KIE_ACCOUNT,
            description="Warns when the balance is below the kie resource's low_balance_credits.",
        )
    ],
)
async def kie_account(context: dg.AssetExecutionContext, kie: KieResource) -> dg.ObserveResult:
    """Observe the account's balance; the check warns below ``kie.low_balance_credits``.

    Raises ``dg.Failure`` when Kie cannot tell the balance (a refused key, Kie down).
    """
    async with kie.get_client() as client:
        try:
            balance = await client.get_credits()
        except KieError as exc:
            raise dg.Failure(description=f"Could not read the Kie account's balance: {exc}") from None
    threshold = float(kie.low_balance_credits)
    passed = balance >= threshold
    if not passed:
        context.log.warning(f"Kie balance {balance:g} credits is below the threshold {threshold:g}.")
    return dg.ObserveResult(
        asset_key=KIE_ACCOUNT,
        metadata={"balance": dg.MetadataValue.float(balance)},
        check_results=[
            dg.AssetCheckResult(
                asset_key=KIE_ACCOUNT,
                check_name=BALANCE_CHECK,
                passed=passed,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "balance": dg.MetadataValue.float(balance),
                    "threshold": dg.MetadataValue.float(threshold),
                },
                description=None
                if passed
                else f"Balance {balance:g} credits is below {threshold:g}: top up at https://kie.ai.",
            )
        ],
    )


__all__ = ["BALANCE_CHECK", "KIE_ACCOUNT", "kie_account"]
