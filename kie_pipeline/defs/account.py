"""The Kie account's balance, observed (one per code location: every pipeline shares the account)."""

from kie_pipeline.account import kie_account

__all__ = ["kie_account"]
