"""kie-pipeline: a Dagster integration that turns a manifest of prompts into a durable, queryable
dataset of AI-generated images through the Kie.ai API.

- :mod:`kie_pipeline.client`: the Kie API client (its modules import no Dagster).
- :mod:`kie_pipeline.pipeline`: manifests, the durable store, generation and the catalog.
- :mod:`kie_pipeline.emulator`: a local emulator of the Kie API.
- :mod:`kie_pipeline.definitions`: the Dagster definitions.

``defs`` is exported here so that ``dagster ... -m kie_pipeline`` finds it.
"""

from .definitions import defs

__all__ = ["defs"]
