"""The pipeline's own logic, independent of Dagster: manifests, the durable store, generation, catalog."""
