"""Packaging: the shipped instance files load in the installed Dagster, and the layers import as promised.

The instance files go through Dagster's own validation, and every class they name is imported and its
config checked, without connecting to anything. The tested deployment's file (dagster-postgres.yaml)
is also opened as an instance on a real PostgreSQL server (the ``postgres`` fixture); nothing here
connects to Kubernetes.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._config import process_config, resolve_to_config_type
from dagster._core.instance.config import ConcurrencyConfig, PoolGranularity
from dagster._core.instance.ref import InstanceRef
from dagster._serdes import ConfigurableClassData

from .postgres import PostgresServer

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
#: Every shipped instance file: a glob, so a file added later is checked too.
INSTANCE_FILES = sorted(DEPLOY.glob("*.yaml"))


def _env_names(node: Any) -> Iterator[str]:
    """The variables a YAML tree reads through Dagster's ``{env: NAME}`` source."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            yield node["env"]
        for value in node.values():
            yield from _env_names(value)
    elif isinstance(node, list):
        for value in node:
            yield from _env_names(value)


def _load_ref(path: Path, base_dir: Path, monkeypatch: pytest.MonkeyPatch) -> InstanceRef:
    """The instance ref Dagster builds from ``path`` (its defaults pointing into ``base_dir``)."""
    # Placeholders so that `{env: ...}` sources resolve (a port must be a number); nothing is ever
    # connected to.
    for name in _env_names(yaml.safe_load(path.read_text())):
        monkeypatch.setenv(name, "5432" if name.endswith("_PORT") else f"placeholder-{name.lower()}")
    return InstanceRef.from_dir(str(base_dir), config_dir=str(path.parent), config_filename=path.name)


def _resolve(data: ConfigurableClassData) -> type:
    """Import the class ``data`` names and validate its config, as ``rehydrate`` does, minus ``__init__``."""
    module = importlib.import_module(data.module_name)  # a missing package fails here
    klass = getattr(module, data.class_name)  # a misspelt class fails here
    result = process_config(resolve_to_config_type(klass.config_type()), data.config_dict)
    assert result.success, (data.module_name, data.class_name, [e.message for e in result.errors])
    return klass


def test_deploy_ships_the_local_and_cluster_instance_files() -> None:
    assert {p.name for p in INSTANCE_FILES} >= {
        "dagster.yaml",
        "dagster-cluster.yaml",
        "dagster-postgres.yaml",
    }


@pytest.mark.parametrize("path", INSTANCE_FILES, ids=lambda p: p.name)
def test_instance_file_loads_in_installed_dagster(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dagster's validation accepts the file and every configurable class it names resolves."""
    ref = _load_ref(path, tmp_path, monkeypatch)
    resolved = {
        field: _resolve(data)
        for field in InstanceRef._fields
        if isinstance(data := getattr(ref, field), ConfigurableClassData)
    }
    assert {"storage_data", "run_coordinator_data", "run_launcher_data"} <= set(resolved)
    assert resolved["run_coordinator_data"].__name__ == "QueuedRunCoordinator"


@pytest.mark.parametrize("path", INSTANCE_FILES, ids=lambda p: p.name)
def test_instance_file_frees_pool_slots_of_dead_runs(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SIGKILLed run must not hold a "kie" pool slot forever: the monitoring daemon must be on."""
    monitoring = _load_ref(path, tmp_path, monkeypatch).settings.get("run_monitoring", {})
    assert monitoring.get("enabled") is True
    assert monitoring.get("start_timeout_seconds", 0) > 0
    assert monitoring.get("cancel_timeout_seconds", 0) > 0
    # Only the monitoring daemon frees op-granularity slots of finished runs, and only with this set.
    assert monitoring.get("free_slots_after_run_end_seconds", 0) > 0


def test_cluster_file_keeps_its_intent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Postgres, a queue of 20 runs, the "kie" pool of 4 by run, one run per batch, pods that get the
    KIE_* variables."""
    ref = _load_ref(DEPLOY / "dagster-cluster.yaml", tmp_path, monkeypatch)
    assert ref.storage_data.module_name == "dagster_postgres"
    assert ref.storage_data.config_dict["postgres_db"]["hostname"] == {"env": "DAGSTER_PG_HOST"}
    # The limits as Dagster itself reads them (the queue limit lives under `concurrency: runs:`).
    coordinator = ref.run_coordinator_data.rehydrate()  # type: ignore[union-attr]
    concurrency = ConcurrencyConfig.from_concurrency_settings(
        ref.settings["concurrency"], coordinator.get_run_queue_config()
    )
    assert concurrency.run_queue_config.max_concurrent_runs == 20  # type: ignore[union-attr]
    assert concurrency.pool_config.default_pool_limit == 4
    assert concurrency.pool_config.pool_granularity is PoolGranularity.RUN
    launcher = ref.run_launcher_data
    assert (launcher.module_name, launcher.class_name) == ("dagster_k8s", "K8sRunLauncher")  # type: ignore[union-attr]
    # The key and the coordination URL (which may hold a password) reach run pods from Secrets,
    # never as plain env vars copied into the Job spec.
    assert launcher.config_dict["env_secrets"] == ["kie-api-key", "kie-coordination"]  # type: ignore[union-attr]
    env_vars = set(launcher.config_dict["env_vars"])  # type: ignore[union-attr]
    assert not env_vars & {"KIE_API_KEY", "KIE_COORDINATION_URL"}
    assert env_vars >= {"KIE_STORE", "KIE_MANIFEST"}
    # The shared limiter gives every run the whole limit: no static share per run any more.
    assert "KIE_CREATE_LIMIT" not in env_vars
    # One run per batch at a time, as in the tested deployment.
    assert [limit["key"] for limit in concurrency.run_queue_config.tag_concurrency_limits] == [  # type: ignore[union-attr]
        "dagster/partition",
        "dagster/asset_partition_range_start",
    ]
    assert ref.settings["telemetry"] == {"enabled": False}


def test_postgres_file_loads_as_an_instance_on_a_real_server(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tested deployment's file, read from deploy/ itself, opens a Dagster instance on PostgreSQL
    (its schema created) with the queue's limits and the pool it promises (docs/cluster.md)."""
    for name, value in postgres.env().items():
        monkeypatch.setenv(name, value)
    ref = InstanceRef.from_dir(str(tmp_path), config_dir=str(DEPLOY), config_filename="dagster-postgres.yaml")
    with dg.DagsterInstance.from_ref(ref) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert type(instance.run_launcher) is dg.DefaultRunLauncher
        assert instance.get_runs() is not None  # the schema is there: a query answers
        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.default_pool_limit == 4
        assert concurrency.pool_config.pool_granularity is PoolGranularity.RUN
        # One run per batch at a time, whichever way Dagster tags a run of one partition.
        per_batch = {"value": {"applyLimitPerUniqueValue": True}, "limit": 1}
        assert concurrency.run_queue_config.tag_concurrency_limits == [  # type: ignore[union-attr]
            {"key": "dagster/partition", **per_batch},
            {"key": "dagster/asset_partition_range_start", **per_batch},
        ]
        assert {"QUEUED_RUN_COORDINATOR", "BACKFILL", "MONITORING"} <= set(
            instance.get_required_daemon_types()
        )
        assert instance.run_monitoring_enabled


def _fresh_python(code: str, **env: str) -> dict[str, Any]:
    """Run ``code`` in a new interpreter (no KIE_* from the caller) and return the JSON it prints last."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KIE_")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.splitlines()[-1])


DAGSTER_FREE_MODULES = [
    "kie_pipeline",
    "kie_pipeline.client",
    "kie_pipeline.emulator",
    "kie_pipeline.pipeline",
    "kie_pipeline.pipeline.manifest",
    "kie_pipeline.pipeline.store",
    "kie_pipeline.pipeline.catalog",
    "kie_pipeline.pipeline.generation",
    "kie_pipeline.pipeline.media",
    "kie_pipeline.pipeline.callbacks",
    "kie_pipeline.pipeline.coordination",
    "kie_pipeline.client.pg_window",
    "kie_pipeline.receiver",
    "kie_pipeline.cli",
]


@pytest.mark.parametrize("module", DAGSTER_FREE_MODULES)
def test_module_imports_without_dagster(module: str) -> None:
    """The client, the emulator and the pipeline core stay usable from any orchestrator or script."""
    loaded = _fresh_python(
        f"import importlib, json, sys; importlib.import_module({module!r}); "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0].startswith('dagster'))))"
    )
    assert loaded == [], f"{module} imports {loaded[:5]}"


def test_importing_the_package_reads_no_kie_environment(tmp_path: Path) -> None:
    """`import kie_pipeline` neither reads KIE_* nor builds the definitions (nor touches the store)."""
    store = tmp_path / "odd" / "store"
    code = """
import json, os, sys
reads = []
getitem = os._Environ.__getitem__
def recording(self, key):
    if str(key).startswith("KIE_"):
        reads.append(key)
    return getitem(self, key)
os._Environ.__getitem__ = recording  # os.environ.get, `in` and [] all go through it
import kie_pipeline
print(json.dumps({"reads": reads, "definitions": "kie_pipeline.definitions" in sys.modules}))
"""
    result = _fresh_python(code, KIE_STORE=str(store), KIE_MANIFEST=str(tmp_path / "odd" / "prompts.csv"))
    assert result == {"reads": [], "definitions": False}
    assert not (tmp_path / "odd").exists()


def test_importing_the_definitions_module_reads_no_environment(tmp_path: Path) -> None:
    """The definitions are built when Dagster loads the code location (@dg.definitions), not on import."""
    code = """
import json, os, sys
reads = []
getitem = os._Environ.__getitem__
def recording(self, key):
    # Only reads by our own code (libraries copy the whole environment when they start): the first
    # caller outside the standard library's mapping machinery must be one of our modules.
    caller = sys._getframe(1)
    while caller.f_back is not None and caller.f_code.co_filename.startswith("<frozen"):
        caller = caller.f_back
    if str(key).startswith("KIE_") and "/kie_pipeline/" in caller.f_code.co_filename:
        reads.append(key)
    return getitem(self, key)
os._Environ.__getitem__ = recording
import kie_pipeline.definitions as d
before = list(reads)
built = d.defs()
print(json.dumps({"on_import": before, "on_load": sorted(set(reads)), "assets": len(built.assets),
                  "defined": len(d.ASSETS)}))
"""
    result = _fresh_python(code, KIE_STORE=str(tmp_path / "store"))
    assert result["on_import"] == [] and "KIE_STORE" in result["on_load"]
    # The three assets and the account, the manifest file's external asset (automation only) and
    # the training dataset's export.
    assert result["assets"] == result["defined"] + 2 >= 6


def test_mutation_groups_name_files_and_tests_that_exist() -> None:
    """`make mutation` (not run here: it takes hours) mutates these files against these tests; a
    renamed module or test must not silently shrink what it checks."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mutation_run", REPO / "tools" / "mutation" / "run.py")
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = run  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(run)
    finally:
        del sys.modules[spec.name]
    assert set(run.DEFAULT_GROUPS) <= set(run.GROUPS)
    for name, group in run.GROUPS.items():
        assert group.files and all((REPO / f).is_file() for f in group.files), name
        assert run.existing_tests(REPO, group.tests) == group.tests, name
    # Every safety-critical module the project names is in some group.
    mutated = {f for g in run.GROUPS.values() for f in g.files}
    for module in ("generation", "store", "transport", "ratelimit", "download", "manifest", "client"):
        assert any(f.endswith(f"/{module}.py") for f in mutated), module
