"""kie-pipeline: a Dagster integration that turns a manifest of prompts into a durable, queryable
dataset of AI-generated images through the Kie.ai API.

- :mod:`kie_pipeline.client`: the Kie API client (no Dagster imports).
- :mod:`kie_pipeline.pipeline`: manifests, the durable store, generation and the catalog.
- :mod:`kie_pipeline.emulator`: a local emulator of the Kie API.
- :mod:`kie_pipeline.definitions`: the Dagster definitions (``dagster ... -m kie_pipeline``).
"""


def __getattr__(name: str):
    # `dagster ... -m kie_pipeline` looks up `defs` here; import Dagster only when asked, so the
    # client and the emulator stay light to import.
    if name == "defs":
        from .definitions import defs

        return defs
    raise AttributeError(name)
