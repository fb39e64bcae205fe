"""The partitions of generated images: one dynamic partition per manifest ``batch``."""

import dagster as dg

batches = dg.DynamicPartitionsDefinition(name="batches")
