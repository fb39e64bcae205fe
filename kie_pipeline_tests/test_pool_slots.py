"""A killed run resumes, after any number of kills: SIGKILLed runs do not keep the "kie" pool's slots.

The end-to-end test is real: the shipped deploy/dagster.yaml in a temporary DAGSTER_HOME, the emulator on
loopback, `dagster asset materialize` and `dagster-daemon run` as subprocesses, SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._core.events import DagsterEventType, EngineEventData
from dagster._core.test_utils import create_run_for_test

from kie_pipeline.emulator import EmulatorServer
from kie_pipeline.slots import ProcessCheckingRunLauncher, instance_problems, main, process_alive

from .pipeline_helpers import Pipeline
from .processes import Processes as ProcessGroup
from .processes import wait_for

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "deploy" / "dagster.yaml"
BIN = Path(sys.executable).parent
#: The only change the end-to-end test makes to the shipped file: with the shipped 30 s poll and 60 s
#: grace it would take ~2 min. The mechanism (launcher, monitoring, slot freeing) is the shipped one.
FAST_MONITORING = {"poll_interval_seconds": 1, "free_slots_after_run_end_seconds": 1}


def _instance_file(home: Path, **monitoring: Any) -> dict[str, Any]:
    config = yaml.safe_load(SHIPPED.read_text())
    config["run_monitoring"].update(monitoring)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return config


def test_shipped_instance_fails_dead_runs_and_frees_their_slots(tmp_path: Path) -> None:
    """What `make dev` relies on: the launcher that tells dead runs, and the daemon that acts on it."""
    _instance_file(tmp_path)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert isinstance(instance.run_launcher, ProcessCheckingRunLauncher)
        assert instance_problems(instance) == []
        # `dagster dev` and `dagster-daemon run` start the daemons the instance requires.
        assert "MONITORING" in instance.get_required_daemon_types()
        monitoring = instance.run_monitoring_settings
        # docs/operations.md promises a killed run's slot back within ~2 min of the daemon seeing it.
        assert monitoring["poll_interval_seconds"] + monitoring["free_slots_after_run_end_seconds"] <= 120
        assert instance.run_monitoring_max_resume_run_attempts == 0  # DefaultRunLauncher cannot resume


def test_process_alive_tells_exited_zombie_and_reused_pids() -> None:
    me = os.getpid()
    assert process_alive(me, time.time())
    # This pid "named" before this process started: the number was reused by another process.
    assert not process_alive(me, named_at=0.0)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    named_at = time.time()
    wait_for(lambda: _proc_state(child.pid) == "Z", 30, "the child to exit")
    assert not process_alive(child.pid, named_at)  # exited, not reaped yet (a zombie)
    child.wait()
    assert not process_alive(child.pid, named_at)


def test_cli_pass_fails_only_dead_runs_and_frees_their_slots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m kie_pipeline.slots`, for users without a daemon: a dead run ends, a live one stays."""
    _instance_file(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()
    with dg.DagsterInstance.get() as instance:
        slots = instance.event_log_storage
        slots.set_concurrency_slots("kie", 2)
        runs = {}
        # The state a SIGKILL leaves: STARTED, the orchestrator's pid recorded, a slot claimed.
        for name, pid in (("dead", exited.pid), ("live", os.getpid())):
            runs[name] = create_run_for_test(instance, job_name=name, status=dg.DagsterRunStatus.STARTED)
            instance.report_engine_event(f"(pid: {pid})", runs[name], EngineEventData.in_process(pid))
            assert slots.claim_concurrency_slot("kie", runs[name].run_id, "generated_images").is_claimed
        dead, live = runs["dead"].run_id, runs["live"].run_id

        assert main([]) == 0
        assert main(["--check"]) == 0
        assert f"failed dead run {dead}" in capsys.readouterr().out
        assert (_status(instance, dead), _status(instance, live)) == (
            dg.DagsterRunStatus.FAILURE,
            dg.DagsterRunStatus.STARTED,
        )
        assert [s.run_id for s in slots.get_concurrency_info("kie").claimed_slots] == [live]


def _proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _finish_pending_tasks(emulator: EmulatorServer) -> None:
    """Every task the emulator has not finished completes now (its duration ends at this instant)."""
    state = emulator.emulator
    with state.lock:
        now = time.monotonic()
        for task in state.tasks.values():
            task.duration = min(task.duration, now - task.created_mono)


class Processes(ProcessGroup):
    """The test's processes, and `dagster asset materialize` runs among them."""

    def materialize(self, name: str, *selection: str) -> subprocess.Popen[bytes]:
        cli = [str(BIN / "dagster"), "asset", "materialize", "-m", "kie_pipeline.definitions"]
        return self.start(name, *cli, "--select", *selection)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()


def _run_of(instance: dg.DagsterInstance, partition: str, exclude: frozenset[str] = frozenset()) -> str:
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": partition}))
    run_id = next((r.run_id for r in runs if r.run_id not in exclude), None)
    assert run_id, f"no run of {partition}"
    return run_id


def _status(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRunStatus:
    run = instance.get_run_by_id(run_id)
    assert run
    return run.status


def _events(instance: dg.DagsterInstance, run_id: str, event_type: DagsterEventType) -> list[Any]:
    return list(instance.all_logs(run_id, of_type=event_type))


@pytest.mark.timeout(240)
def test_two_killed_runs_then_a_third_completes(
    env: Path, emulator: EmulatorServer, processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = env / "home"
    _instance_file(home, **FAST_MONITORING)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    tasks = env / "store" / "tasks"
    with dg.DagsterInstance.get() as instance:
        # The manifest (which registers the batches' partitions) is only the setup: materialized in this
        # process, on the same instance and store, without one more `dagster` CLI start-up.
        Pipeline(instance).manifest()
        assert instance.get_dynamic_partitions("batches") == ["animals", "cities"]

        # Tasks that do not finish by themselves, so that both runs are mid-batch when killed: their 5
        # rows submitted, none finished, however long B's start-up takes (a fixed 20 s latency was not
        # enough on a loaded machine: run A finished and gave its slot back). Released below.
        emulator.config.latency = (3600, 3600)

        def holding_slot(partition: str, rows: int) -> str | None:
            """The partition's run once it holds a kie slot and has recorded ``rows`` tasks in all."""
            runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": partition}))
            claimed = {s.run_id for s in instance.event_log_storage.get_concurrency_info("kie").claimed_slots}
            held = [r.run_id for r in runs if r.run_id in claimed]
            return held[0] if held and len(list(tasks.glob("*.json"))) == rows else None

        # One after the other: two claims at the same instant can take the same slot row on SQLite
        # (Dagster's claim relies on SELECT ... FOR UPDATE, which SQLite ignores), a separate race.
        animals = processes.materialize("animals", "generated_images", "--partition", "animals")
        run_a = wait_for(lambda: holding_slot("animals", 3), 120, "run A to hold a slot and submit 3 rows")
        cities = processes.materialize("cities", "generated_images", "--partition", "cities")
        run_b = wait_for(lambda: holding_slot("cities", 5), 120, "run B to hold a slot and submit 2 rows")
        # Run A dies whole (kill -9 of its process group); run B's orchestrator only (`kill -9 PID`):
        # its step process lives on and finishes the batch, holding the slot until it exits.
        os.killpg(animals.pid, signal.SIGKILL)
        os.kill(cities.pid, signal.SIGKILL)
        assert animals.wait(timeout=30) == -9
        assert cities.wait(timeout=30) == -9
        emulator.config.latency = (0.02, 0.1)

        # The defect: both slots held by runs still STARTED, which nothing ends without a daemon.
        pool = instance.event_log_storage.get_concurrency_info("kie")
        assert {s.run_id for s in pool.claimed_slots} == {run_a, run_b}
        assert {_status(instance, run_a), _status(instance, run_b)} == {dg.DagsterRunStatus.STARTED}

        third = processes.materialize("third", "generated_images", "--partition", "animals")

        def third_blocked() -> bool:
            pending = instance.event_log_storage.get_concurrency_info("kie").pending_steps
            return any(p.run_id not in (run_a, run_b) and p.assigned_timestamp is None for p in pending)

        wait_for(third_blocked, 120, "the third run to wait for a kie slot")
        _finish_pending_tasks(emulator)  # A's three (resumed by the third run) and B's two
        # The daemon of `dagster dev` (it runs `dagster-daemon run`); run monitoring needs no code location.
        processes.start("daemon", str(BIN / "dagster-daemon"), "run", "--empty-workspace")
        assert third.wait(timeout=150) == 0, processes.log("third") + processes.log("daemon")

        # B's orphaned step process may still be at work: B ends, and its slot returns, once it exits.
        wait_for(
            lambda: (
                _status(instance, run_b) == dg.DagsterRunStatus.FAILURE
                and not instance.event_log_storage.get_concurrency_info("kie").claimed_slots
            ),
            90,
            "run B to be failed and every kie slot to be free",
        )
        run_c = _run_of(instance, "animals", exclude=frozenset({run_a}))
        assert _status(instance, run_c) == dg.DagsterRunStatus.SUCCESS
        failures = {}
        for run_id in (run_a, run_b):
            assert _status(instance, run_id) == dg.DagsterRunStatus.FAILURE
            (failures[run_id],) = _events(instance, run_id, DagsterEventType.RUN_FAILURE)
            assert "has exited without ending it" in failures[run_id].message
        # B was alive while its orphaned step process was: it was declared dead only after that
        # process had finished the batch.
        (step_done,) = _events(instance, run_b, DagsterEventType.STEP_SUCCESS)
        assert step_done.timestamp < failures[run_b].timestamp
        # The killed batch resumed: the third run paid for nothing, it picked up A's three tasks.
        (materialization,) = _events(instance, run_c, DagsterEventType.ASSET_MATERIALIZATION)
        metadata = materialization.asset_materialization.metadata
        assert (metadata["images_created"].value, metadata["images_resumed"].value) == (0, 3)
