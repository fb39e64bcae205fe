"""The Dagster-native experience: KiePipelineComponent in a dg project (scaffold, check, list, launch
against the emulator), several instances side by side, the manifest options, and the declarative
automation (which conditions request what, and that nothing spending credits starts by itself)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from kie_pipeline.emulator import EmulatorServer
from kie_pipeline.pipeline.manifest import ManifestError, ManifestOptions, validate_manifest

from .pipeline_helpers import Pipeline, write_manifest

DG = str(Path(sys.executable).parent / "dg")
IN_PROCESS = json.dumps({"execution": {"config": {"in_process": {}}}})


def _dg(project: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [DG, *args], cwd=project, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert result.returncode == 0, f"dg {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _project(root: Path) -> Path:
    """A new dg project named ``studio`` (what `create-dagster project` makes, minus the venv)."""
    (root / "src/studio/defs").mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        '[project]\nname = "studio"\nversion = "0.1.0"\ndependencies = ["kie-pipeline"]\n\n'
        '[tool.dg]\ndirectory_type = "project"\n\n[tool.dg.project]\nroot_module = "studio"\n'
    )
    (root / "src/studio/__init__.py").write_text("")
    (root / "src/studio/defs/__init__.py").write_text("")
    (root / "src/studio/definitions.py").write_text(
        "from pathlib import Path\n\nimport dagster as dg\n\n\n@dg.definitions\ndef defs():\n"
        "    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)\n"
    )
    return root


def _readme_dg_lines() -> list[list[str]]:
    """The dg commands of the README's "Your own dg project" block, as argument lists."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("### Your own dg project", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [c.strip() for line in block.splitlines() for c in line.split("#")[0].split("&&")]
    return [shlex.split(c)[1:] for c in commands if c.startswith("dg ")]


def test_the_readme_dg_project_scaffolds_checks_lists_and_launches_pipelines_side_by_side(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    """The README's dg lines, as written, in a new dg project; a second instance beside the first."""
    project = _project(tmp_path / "studio")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(Path(sys.executable).parent.parent),
        "PYTHONPATH": str(project / "src"),
        "DAGSTER_HOME": str(tmp_path / "home"),
        "KIE_BASE_URL": emulator.url,  # the README's export line, with this test's emulator port
        "KIE_API_KEY": emulator.config.api_key,
        "TMPDIR": str(tmp_path),
    }
    for var in ("KIE_MANIFEST", "KIE_STORE", "KIE_STORE_OPTIONS", "KIE_CALLBACK_URL"):
        env.pop(var, None)
    (tmp_path / "home").mkdir()
    assert "kie_pipeline.component.KiePipelineComponent" in _dg(project, "list", "components", env=env).stdout
    lines = _readme_dg_lines()
    assert [line[0] for line in lines] == ["scaffold", "check", "list", "launch", "launch"]
    scaffold, check, listing, *launches = lines
    _dg(project, *scaffold, env=env)
    # A second pipeline beside the first: the same line with another name, manifest, store and prefix.
    _dg(project, *(arg.replace("faces", "pets") for arg in scaffold), env=env)
    assert "key_prefix: faces" in (project / "src/studio/defs/faces/defs.yaml").read_text()
    assert len(pd.read_csv(project / "data/faces.csv")) == 2  # the scaffolder's sample manifest

    assert "successfully" in _dg(project, *check, env=env).stdout
    listed = json.loads(_dg(project, *listing, "--json", env=env).stdout)
    keys = {a["asset_key"] for a in listed["assets"]}
    for name in ("faces", "pets"):
        assert {
            f"{name}/{a}" for a in ("manifest_file", "prompt_manifest", "generated_images", "image_catalog")
        } <= keys
    sensors = {s["name"] for s in listed["sensors"]}
    assert {"faces_manifest_sensor", "pets_generation_automation", "pets_refresh_automation"} <= sensors
    assert {s["name"] for s in listed["schedules"]} == {"faces_nightly_generation", "pets_nightly_generation"}

    # The README's launches; in process here (the multiprocess executor adds ~10 s per run).
    for launch in launches:
        _dg(project, *launch, "--config-json", IN_PROCESS, env=env)
    table = pd.read_parquet(project / "data/faces/faces/generated_images/first.parquet")
    assert sorted(table["id"]) == ["fox", "lighthouse"] and set(table["state"]) == {"success"}
    assert all(Path(uri).is_file() for uri in table["image_uri"])
    assert emulator.emulator.snapshot()["created"] == 2  # two rows, two createTask calls
    # The other pipeline is untouched: nothing in its store.
    assert not (project / "data/pets").exists()


def test_the_repo_is_a_dg_project_built_by_its_component(env: Path) -> None:
    from kie_pipeline.definitions import build_definitions

    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {
        "manifest_file", "prompt_manifest", "generated_images", "image_catalog", "kie_account",
        "training_dataset",
    }  # fmt: skip
    assert set(defs.resources or {}) >= {"kie", "dataset", "parquet_io"}


# -- the manifest options a component sets --------------------------------------------------------
def _validate(rows: list[dict[str, object]], **options: object) -> pd.DataFrame:
    return validate_manifest(pd.DataFrame(rows), options=ManifestOptions(**options))  # type: ignore[arg-type]


def test_a_partition_column_becomes_batch_and_its_problems_name_it() -> None:
    df = _validate([{"id": "a", "project": "p1", "prompt": "x"}], partition_column="project")
    assert list(df["batch"]) == ["p1"] and "project" not in df.columns
    with pytest.raises(ManifestError) as missing:
        _validate([{"id": "a", "prompt": "x"}], partition_column="project")
    assert "field 'project': the partition column is missing" in str(missing.value)
    with pytest.raises(ManifestError) as bad:
        _validate([{"id": "a", "project": "no/slash", "prompt": "x"}], partition_column="project")
    assert "row 1 (id 'a'), field 'project'" in str(bad.value)


def test_defaults_fill_only_empty_cells_of_models_that_take_them() -> None:
    rows = [
        {"id": "a", "prompt": "x"},  # default model, default resolution
        {"id": "b", "prompt": "x", "resolution": "4K"},  # its own value wins
        {
            "id": "c",
            "prompt": "x",
            "model": "suno/V4_5",
            "input": '{"customMode": false, "instrumental": false}',
        },
    ]
    df = _validate(
        rows, default_model="nano-banana-pro", defaults={"resolution": "2K", "aspect_ratio": "16:9"}
    )
    inputs = [json.loads(v) for v in df["input_json"]]
    assert (inputs[0]["resolution"], inputs[0]["aspect_ratio"]) == ("2K", "16:9")
    assert inputs[1]["resolution"] == "4K"
    assert "resolution" not in inputs[2] and "aspect_ratio" not in inputs[2]  # Suno takes neither
    # A default changes the request, so the request key: a changed default is a new request.
    assert df["request_key"][0] != _validate(rows[:1])["request_key"][0]


def test_options_that_name_nothing_are_refused_before_any_row() -> None:
    assert ManifestOptions(default_model="no-such-model").problems()
    assert ManifestOptions(defaults={"resolutoin": "2K"}).problems()[0].startswith("defaults: 'resolutoin'")
    assert ManifestOptions(defaults={"duration": 5, "resolution": "2K"}).problems() == []


# -- declarative automation -------------------------------------------------------------------
def _requested(result: dg.EvaluateAutomationConditionsResult, key: str) -> set[str | None]:
    return set(result.get_requested_partitions(dg.AssetKey.from_user_string(key)))


def test_automation_follows_the_manifest_and_refreshes_the_catalog(env: Path, instance) -> None:
    from kie_pipeline.definitions import build_definitions

    defs = build_definitions()
    sensor = defs.get_sensor_def("manifest_sensor")
    resources = {"dataset": defs.resources["dataset"]}
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        first = sensor(ctx)
    assert isinstance(first, dg.SensorResult) and first.run_requests == []
    [event] = first.asset_events
    assert event.asset_key == dg.AssetKey("manifest_file") and not instance.get_dynamic_partitions("batches")
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=first.cursor) as ctx:
        assert isinstance(sensor(ctx), dg.SkipReason)  # the same file: nothing to report
    instance.report_runless_asset_event(event)

    # The manifest file was recorded: prompt_manifest (free) is requested, no batch exists yet.
    result = dg.evaluate_automation_conditions(defs, instance)
    assert _requested(result, "prompt_manifest") == {None}
    result = dg.evaluate_automation_conditions(defs, instance, cursor=result.cursor)
    assert not _requested(result, "prompt_manifest")  # requested once, not on every tick
    assert not _requested(result, "generated_images")
    pipe = Pipeline(instance)
    pipe.manifest()
    # The snapshot registered the batches: each is requested, and the catalog waits for them.
    result = dg.evaluate_automation_conditions(defs, instance, cursor=result.cursor)
    assert _requested(result, "generated_images") == {"animals", "cities"}
    assert not _requested(result, "prompt_manifest")
    # What a daemon would launch: each batch (by automation or a UI backfill), and the catalog.
    pipe.batch("animals")
    pipe.batch("cities")
    # The catalog and its export, in one run as the daemon launches them (both unpartitioned).
    downstream = dg.AssetSelection.assets("image_catalog", "training_dataset")
    everything = [*(defs.assets or []), *(defs.asset_checks or [])]

    def refresh() -> None:
        dg.materialize(everything, selection=downstream, resources=defs.resources, instance=instance)

    refresh()
    result = dg.evaluate_automation_conditions(defs, instance, cursor=result.cursor)
    assert result.total_requested == 0  # built after the batches: everything is up to date
    # A backfill of one batch from the UI (a rerun): the catalog and the export refresh after it, once.
    pipe.batch("cities")
    result = dg.evaluate_automation_conditions(defs, instance, cursor=result.cursor)
    assert _requested(result, "image_catalog") == _requested(result, "training_dataset") == {None}
    assert result.total_requested == 2
    refresh()
    result = dg.evaluate_automation_conditions(defs, instance, cursor=result.cursor)
    assert result.total_requested == 0


def test_nothing_that_spends_credits_starts_by_itself(env: Path) -> None:
    from kie_pipeline.definitions import build_definitions

    defs = build_definitions()
    status = {s.name: s.default_status for s in defs.sensors or []}
    assert status == {
        "manifest_sensor": dg.DefaultSensorStatus.RUNNING,
        "refresh_automation": dg.DefaultSensorStatus.RUNNING,
        "generation_automation": dg.DefaultSensorStatus.STOPPED,
    }
    assert [s.default_status for s in defs.schedules or []] == [dg.DefaultScheduleStatus.STOPPED]
    # The running automation sensor targets only what spends nothing.
    refresh = defs.get_sensor_def("refresh_automation")
    graph = defs.resolve_asset_graph()
    targeted = refresh.asset_selection.resolve(graph)
    assert targeted == {dg.AssetKey(k) for k in ("prompt_manifest", "image_catalog", "training_dataset")}


def test_a_changed_manifest_is_reported_again(env: Path, instance) -> None:
    from kie_pipeline.definitions import build_definitions

    defs = build_definitions()
    sensor = defs.get_sensor_def("manifest_sensor")
    resources = {"dataset": defs.resources["dataset"]}
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        first = sensor(ctx)
    write_manifest(str(env / "prompts.csv"), [{"id": "one", "prompt": "just one"}])
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=first.cursor) as ctx:
        second = sensor(ctx)
    assert second.cursor != first.cursor and len(second.asset_events) == 1
    os.remove(env / "prompts.csv")
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=second.cursor) as ctx:
        assert "No manifest" in str(sensor(ctx).skip_message)


# -- packaging: ranges for other people's environments, the exact tested set for ours -----------
def test_dependencies_are_ranges_and_constraints_pin_every_one_inside_them() -> None:
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    repo = Path(__file__).resolve().parent.parent
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    runtime = [Requirement(r) for r in project["dependencies"]]
    extras = {name: [Requirement(r) for r in reqs] for name, reqs in project["optional-dependencies"].items()}
    pins = {}
    for line in (repo / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    # The library never pins an exact version of what it shares with its users' environments.
    assert all(not any(s.operator == "==" for s in r.specifier) for r in runtime), project["dependencies"]
    assert {r.name for r in runtime} >= {"dagster", "httpx", "pandas", "click", "rich"}
    for req in runtime + extras["emulator"] + extras["dev"]:
        pinned = pins.get(canonicalize_name(req.name))
        assert pinned is not None, f"{req.name} is not in constraints.txt"
        assert req.specifier.contains(pinned, prereleases=True), f"{req.name}=={pinned} is outside {req}"
    # The emulator's form parser is the emulator's: an extra, not a dependency of the library.
    assert "python-multipart" not in {r.name for r in runtime}
    assert [r.name for r in extras["emulator"]] == ["python-multipart"]


# -- a manifest expanded from a template, as an upstream asset -----------------------------------
TEMPLATE = """\
prompt: "A {animal} at {light}"
slots:
  animal: [red fox]
  light: [dawn, dusk]
columns: {batch: animals}
"""


def test_a_template_expands_into_the_manifest_upstream_and_an_edit_pays_only_for_new_rows(
    env: Path, emulator: EmulatorServer, instance
) -> None:
    from kie_pipeline.component import KiePipelineComponent
    from kie_pipeline.settings import kie_resource

    from .pipeline_helpers import FAST_KIE

    template = env / "animals.yaml"
    template.write_text(TEMPLATE)
    component = KiePipelineComponent(
        template=str(template), store=str(env / "tstore"), key_prefix="t", automation={"generate": True}
    )
    defs = dg.build_defs_for_component(component)
    resources = {**defs.resources, "kie": kie_resource(**FAST_KIE)}
    assets = list(defs.assets or [])

    def run(key: str, partition: str | None = None) -> dg.ExecuteInProcessResult:
        return dg.materialize(assets, selection=[key], partition_key=partition, resources=resources,
                              instance=instance)  # fmt: skip

    sensor = defs.get_sensor_def("t_manifest_sensor")
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        first = sensor(ctx)
    assert [e.asset_key for e in first.asset_events] == [dg.AssetKey(["t", "manifest_template"])]
    instance.report_runless_asset_event(first.asset_events[0])
    result = dg.evaluate_automation_conditions(defs, instance)
    assert _requested(result, "t/expanded_manifest") == {None}  # free: refreshed by itself

    md = run("t/expanded_manifest").asset_materializations_for_node("t__expanded_manifest")[0].metadata
    assert (md["rows"].value, md["added"].value) == (2, 2)
    assert len(pd.read_csv(env / "animals.csv")) == 2  # the manifest file, beside the template
    run("t/prompt_manifest")
    run("t/generated_images", "animals")
    assert emulator.emulator.snapshot()["created"] == 2
    # The daemon's next tick: the expanded manifest is up to date, only the catalog is due.
    result = dg.evaluate_automation_conditions(defs, instance, cursor=result.cursor)
    assert not _requested(result, "t/expanded_manifest") and _requested(result, "t/image_catalog") == {None}

    # One more value: the template changes, the manifest gains one row, only that row is paid for.
    template.write_text(TEMPLATE.replace("[dawn, dusk]", "[dawn, dusk, noon]"))
    with dg.build_sensor_context(instance=instance, resources=resources, cursor=first.cursor) as ctx:
        second = sensor(ctx)
    instance.report_runless_asset_event(second.asset_events[0])
    result = dg.evaluate_automation_conditions(defs, instance, cursor=result.cursor)
    assert _requested(result, "t/expanded_manifest") == {None}
    md = run("t/expanded_manifest").asset_materializations_for_node("t__expanded_manifest")[0].metadata
    assert (md["rows"].value, md["added"].value, md["removed"].value) == (3, 1, 0)
    run("t/prompt_manifest")
    run("t/generated_images", "animals")
    assert emulator.emulator.snapshot()["created"] == 3
    # On to a training set: the catalog, its export, loaded by Hugging Face datasets.
    run("t/image_catalog")
    md = run("t/training_dataset").asset_materializations_for_node("t__training_dataset")[0].metadata
    import datasets

    loaded = datasets.load_dataset(md["path"].value)
    assert md["rows"].value == 3 and loaded["train"].num_rows == 3
    assert sorted(loaded["train"]["prompt"]) == [
        "A red fox at dawn",
        "A red fox at dusk",
        "A red fox at noon",
    ]
    assert loaded["train"][0]["image"].size[0] > 0  # decoded as an image


def test_an_invalid_template_fails_its_asset_and_keeps_the_manifest(env: Path, instance) -> None:
    from kie_pipeline.component import KiePipelineComponent

    template = env / "bad.yaml"
    template.write_text(TEMPLATE.replace("{light}", "{lihgt}"))
    (env / "bad.csv").write_text("id,prompt\nkept,as it was\n")
    defs = dg.build_defs_for_component(KiePipelineComponent(template=str(template), key_prefix="b"))
    result = dg.materialize(list(defs.assets or []), selection=["b/expanded_manifest"],
                            resources=defs.resources, instance=instance, raise_on_error=False)  # fmt: skip
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert "lihgt" in failure.description and "light" in failure.description
    assert (env / "bad.csv").read_text() == "id,prompt\nkept,as it was\n"
