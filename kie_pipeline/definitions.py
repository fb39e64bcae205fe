"""The repo's code location (``dagster dev -m kie_pipeline.definitions``, ``workspace.yaml``, ``dg``).

Built by the dg defs folder ``kie_pipeline/defs/``: one :class:`~kie_pipeline.component.KiePipelineComponent`
(``defs/pipeline/defs.yaml``) and the Kie account. The environment configures it (see
:mod:`kie_pipeline.settings`), read when Dagster loads the code location, not when this module is
imported.

``ASSETS``, ``ASSET_CHECKS`` and :func:`build_resources` are the unprefixed pipeline without its
automation, for materializing in process (tests, the demo, benchmarks).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from .account import kie_account
from .assets import DEFAULT_PIPELINE
from .settings import build_resources

#: kie_account carries its own check (balance_above_threshold), evaluated with each observation.
ASSETS = [*DEFAULT_PIPELINE.assets, kie_account]
ASSET_CHECKS = list(DEFAULT_PIPELINE.checks)


def build_definitions() -> dg.Definitions:
    """The code location's definitions, from the defs folder and the current environment."""
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)


@dg.definitions
def defs() -> dg.Definitions:
    """What ``dagster ... -m kie_pipeline.definitions`` and ``workspace.yaml`` load."""
    return build_definitions()


__all__ = ["ASSETS", "ASSET_CHECKS", "build_definitions", "build_resources", "defs"]
