"""The manifest sensor at scale: a tick reads the manifest only when its size or stamp moved."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import fsspec
import pytest

from .pipeline_helpers import write_manifest


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file the sensor opens (the real filesystem still serves it)."""
    seen: list[str] = []
    real = fsspec.implementations.local.LocalFileSystem.open

    def counting(self, path, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(str(path))
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(fsspec.implementations.local.LocalFileSystem, "open", counting)
    return seen


def _tick(
    sensor: dg.SensorDefinition, instance: dg.DagsterInstance, defs: dg.Definitions, cursor: str | None
):  # type: ignore[no-untyped-def]
    resources = {"dataset": defs.resources["dataset"]}
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor) as ctx:
        return sensor(ctx)


def test_an_unchanged_manifest_is_not_read_again(env: Path, instance, opened: list[str]) -> None:
    from kie_pipeline.definitions import build_definitions

    defs = build_definitions()
    sensor = defs.get_sensor_def("manifest_sensor")
    manifest = str(env / "prompts.csv")
    first = _tick(sensor, instance, defs, None)
    assert len(first.asset_events) == 1 and opened.count(manifest) == 1
    # Ten quiet ticks: one stat each, no read.
    for _ in range(10):
        assert isinstance(_tick(sensor, instance, defs, first.cursor), dg.SkipReason)
    assert opened.count(manifest) == 1

    # Touched with the same content: read once, no new version, the new stamp remembered.
    stat = os.stat(manifest)
    os.utime(manifest, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = _tick(sensor, instance, defs, first.cursor)
    assert isinstance(touched, dg.SensorResult) and touched.asset_events == []
    assert touched.cursor != first.cursor and opened.count(manifest) == 2
    assert isinstance(_tick(sensor, instance, defs, touched.cursor), dg.SkipReason)
    assert opened.count(manifest) == 2

    # A real change: one read and a new version whose data version is the new hash.
    write_manifest(manifest, [{"id": "one", "prompt": "just one"}])
    changed = _tick(sensor, instance, defs, touched.cursor)
    [event] = changed.asset_events
    assert opened.count(manifest) == 3
    assert event.tags["dagster/data_version"] != first.asset_events[0].tags["dagster/data_version"]


def test_the_cursor_of_older_versions_is_a_bare_digest(env: Path, instance) -> None:
    from kie_pipeline.definitions import build_definitions

    defs = build_definitions()
    sensor = defs.get_sensor_def("manifest_sensor")
    first = _tick(sensor, instance, defs, None)
    digest = first.asset_events[0].tags["dagster/data_version"]
    # An instance upgraded from a version whose cursor was the sha256 alone: same file, no new version.
    upgraded = _tick(sensor, instance, defs, digest)
    assert isinstance(upgraded, dg.SensorResult) and upgraded.asset_events == []
    assert isinstance(_tick(sensor, instance, defs, upgraded.cursor), dg.SkipReason)
