"""The names one generation pipeline takes in a code location: asset keys, partitions, resource keys.

Several pipelines (component instances) live side by side in one code location: each has its own key
prefix, from which every other name derives, so they never collide. The unprefixed pipeline keeps the
names kie-pipeline always had (``prompt_manifest``, ``generated_images``, ``image_catalog``, the
``batches`` partitions, the ``dataset`` and ``parquet_io`` resources).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import dagster as dg

#: A prefix part names assets, partitions, resources and sensors: keep it to identifier characters.
_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True)
class PipelineNames:
    """Every name of one pipeline, derived from its asset key prefix (empty: the historic names)."""

    prefix: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for part in self.prefix:
            if not _PART.match(part):
                raise ValueError(
                    f"key prefix part {part!r} must be 1-64 of A-Z a-z 0-9 _ and not start with a digit"
                )

    def _named(self, name: str) -> str:
        return "_".join((*self.prefix, name))

    def key(self, name: str) -> dg.AssetKey:
        """The asset key of ``name`` (``prompt_manifest``, ``generated_images``, ``image_catalog``)."""
        return dg.AssetKey([*self.prefix, name])

    @property
    def partitions(self) -> str:
        """The dynamic partitions definition's name (one partition per batch)."""
        return self._named("batches")

    @property
    def dataset(self) -> str:
        """The resource key of the pipeline's :class:`~kie_pipeline.resources.DatasetResource`."""
        return self._named("dataset")

    @property
    def io_manager(self) -> str:
        """The resource key of the pipeline's Parquet IO manager."""
        return self._named("parquet_io")

    @property
    def group(self) -> str:
        """The asset group of the pipeline's assets."""
        return "kie" if not self.prefix else self._named("kie")

    def sensor(self, name: str) -> str:
        """A sensor or schedule name of this pipeline."""
        return self._named(name)


#: The unprefixed pipeline's names (the historic ones).
UNPREFIXED = PipelineNames()
