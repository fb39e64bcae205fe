"""The repo's own dg defs folder: one ``KiePipelineComponent`` (``pipeline/defs.yaml``) and the Kie
account (``account.py``)."""
