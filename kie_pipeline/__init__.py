"""kie-pipeline: a Dagster integration that turns a manifest of prompts into a durable, queryable
dataset of AI-generated images through the Kie.ai API.

- :mod:`kie_pipeline.client`: the Kie API client (its modules import no Dagster).
- :mod:`kie_pipeline.pipeline`: manifests, the durable store, generation and the catalog (no Dagster).
- :mod:`kie_pipeline.emulator`: a local emulator of the Kie API (no Dagster).
- :mod:`kie_pipeline.component`: ``KiePipelineComponent``, a pipeline in a dg project's ``defs.yaml``.
- :mod:`kie_pipeline.definitions`: the repo's code location (``dagster dev -m kie_pipeline.definitions``),
  built by that component from ``kie_pipeline/defs/``.

This module imports nothing: importing the client, the emulator or the pipeline core must not import
Dagster, read ``KIE_*`` or build the definitions.
"""
