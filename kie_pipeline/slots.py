"""Ending runs whose processes were killed, so they stop holding "kie" pool slots.

Dagster 1.13 frees the op-granularity pool slots of a run only when its orchestrating process says
so, or when the monitoring daemon sees the run in a finished status (``run_monitoring:
free_slots_after_run_end_seconds``). A run whose process is SIGKILLed (``kill -9``, the OOM killer, a
reboot) never writes its end, and nothing in Dagster marks it failed: the monitoring daemon
asks the run launcher whether the run's worker is alive, and ``DefaultRunLauncher`` cannot tell
(``supports_check_run_worker_health`` is False), while runs of ``dagster asset materialize`` are not
launched by any launcher at all. Such a run stays STARTED and keeps its slot forever.

:class:`ProcessCheckingRunLauncher` is ``DefaultRunLauncher`` plus that health check: a run is alive
while a process it recorded in its event log (the run or executor process, and step subprocesses)
is alive on this machine. deploy/dagster.yaml names it, so the monitoring daemon (``dagster dev``,
``dagster-daemon run``) fails dead runs, then frees their slots. Without a daemon,
``python -m kie_pipeline.slots`` does the same once (see docs/operations.md).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from dagster._core.events import DagsterEventType, JobFailureData, RunFailureReason
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.dagster_run import FINISHED_STATUSES
from dagster._core.storage.runs import SqliteRunStorage

#: Events whose metadata names a process working for the run: "Started process for run (pid: N)"
#: and the executors' "... (pid: N)" lines are ENGINE_EVENTs; step subprocesses log STEP_WORKER_STARTED.
_PID_EVENTS = {DagsterEventType.ENGINE_EVENT, DagsterEventType.STEP_WORKER_STARTED}

#: A process that started more than this after its pid was logged is another process reusing the number.
#: Generous on purpose: the start time comes from the boot time, which moves when the wall clock is
#: stepped, and taking a live run for dead (failing it, freeing its slot) is worse than keeping the
#: slot of a dead one whose pid came back in a few seconds (it needs the pid counter to wrap).
_START_SLACK_S = 60.0


def run_pids(instance: dg.DagsterInstance, run_id: str) -> dict[int, float]:
    """Every process the run's event log names, with the time it was first named there."""
    pids: dict[int, float] = {}
    for entry in instance.all_logs(run_id, of_type=_PID_EVENTS):
        metadata = getattr(entry.dagster_event and entry.dagster_event.event_specific_data, "metadata", None)
        value = (metadata or {}).get("pid")
        text = str(getattr(value, "value", value) or "")
        if text.isdigit():
            pids.setdefault(int(text), entry.timestamp)
    return pids


def _linux_proc(pid: int) -> tuple[str, float] | None:
    """(state, start time as a Unix timestamp) of ``pid`` from /proc, or None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        btime = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    # The command name (field 2) may hold spaces and parentheses: fields are counted after the last ")".
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], btime + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def process_alive(pid: int, named_at: float) -> bool:
    """Whether ``pid`` is (still) the process that logged it at ``named_at`` and has not exited."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    proc = _linux_proc(pid)
    if proc is None:
        return True  # no /proc (macOS): the number exists, assume it is still the run's process
    state, started = proc
    # A zombie has exited (its parent just has not reaped it: PID 1 of a container often never does);
    # a process started after the run named the number is a new process that reuses it.
    return state not in ("Z", "X") and started <= named_at + _START_SLACK_S


def runs_are_local(instance: dg.DagsterInstance) -> bool:
    """Whether every run of ``instance`` ran on this machine, so that its recorded pids mean something here.

    True for SQLite storage (the local ``dagster.yaml``): Dagster does not support sharing it between
    machines. With Postgres, runs may run anywhere and a pid says nothing about them.
    """
    return isinstance(instance.run_storage, SqliteRunStorage)


def check_run_processes(instance: dg.DagsterInstance, run: dg.DagsterRun) -> CheckRunHealthResult:
    """FAILED when every process the run recorded has exited; RUNNING otherwise, or when unsure."""
    if not runs_are_local(instance):
        return CheckRunHealthResult(WorkerStatus.RUNNING, "not judged: runs may run on other machines")
    pids = run_pids(instance, run.run_id)
    if not pids:
        # Nothing recorded yet (the run is starting) or an executor that logs no pid: never guess.
        return CheckRunHealthResult(WorkerStatus.RUNNING, "no process recorded yet")
    alive = sorted(pid for pid, named_at in pids.items() if process_alive(pid, named_at))
    if alive:
        return CheckRunHealthResult(WorkerStatus.RUNNING, f"process(es) {alive} alive")
    return CheckRunHealthResult(
        WorkerStatus.FAILED,
        f"every process of this run ({sorted(pids)}) has exited without ending it (killed?); "
        "re-materialize the partition to resume it: finished rows cost nothing",
    )


class ProcessCheckingRunLauncher(dg.DefaultRunLauncher):
    """``DefaultRunLauncher`` that can tell the monitoring daemon when a run's processes are gone.

    It launches and terminates runs exactly as ``DefaultRunLauncher`` does. Its health check covers
    every STARTED run of the instance, however it was started (UI, schedule, backfill, or
    ``dagster asset materialize``), because the daemon asks about each of them.
    """

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        return check_run_processes(self._instance, run)


@dataclass
class Released:
    """What :func:`release_dead_runs` did."""

    failed: list[str] = field(default_factory=list)
    freed: list[str] = field(default_factory=list)


def release_dead_runs(instance: dg.DagsterInstance) -> Released:
    """One pass of what the monitoring daemon does with :class:`ProcessCheckingRunLauncher`, for CLI users.

    Fails every STARTED run whose processes are all gone, then frees at once the pool slots of every
    finished run (there is no daemon to wait ``free_slots_after_run_end_seconds`` for).
    """
    done = Released()
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        health = check_run_processes(instance, run)
        if health.status == WorkerStatus.FAILED:
            instance.report_run_failed(
                run,
                f"Marked failed by `python -m kie_pipeline.slots`: {health.msg}.",
                JobFailureData(error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION),
            )
            done.failed.append(run.run_id)
    holding = instance.event_log_storage.get_concurrency_run_ids()
    if holding:
        finished = instance.get_run_records(
            filters=dg.RunsFilter(run_ids=sorted(holding), statuses=list(FINISHED_STATUSES))
        )
        for record in finished:
            instance.event_log_storage.free_concurrency_slots_for_run(record.dagster_run.run_id)
            done.freed.append(record.dagster_run.run_id)
    return done


def instance_problems(instance: dg.DagsterInstance) -> list[str]:
    """Why ``instance`` would leave the slots of killed runs held (empty when it frees them)."""
    problems = []
    # The property, not isinstance: under `python -m` this module is __main__, a second copy of the class.
    if not instance.run_launcher.supports_check_run_worker_health:
        problems.append(
            f"run_launcher {type(instance.run_launcher).__name__} cannot tell dead runs (use "
            "kie_pipeline.slots.ProcessCheckingRunLauncher): nothing marks a killed run failed"
        )
    if not instance.run_monitoring_enabled:
        problems.append("run_monitoring.enabled is not true: the daemon does not monitor runs")
    if not instance.run_monitoring_settings.get("free_slots_after_run_end_seconds"):
        problems.append(
            "run_monitoring.free_slots_after_run_end_seconds is unset: slots of ended runs stay held"
        )
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kie_pipeline.slots",
        description="Fail the runs of $DAGSTER_HOME whose processes were killed and free their pool slots "
        "(what the daemon does, for users of `dagster asset materialize` without a daemon).",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="only check that $DAGSTER_HOME/dagster.yaml makes the daemon do this; exit 1 if not",
    )
    args = parser.parse_args(argv)
    with dg.DagsterInstance.get() as instance:
        if args.check:
            problems = instance_problems(instance)
            for problem in problems:
                print(f"{instance.root_directory}/dagster.yaml: {problem}", file=sys.stderr)
            if problems:
                print(
                    "Copy deploy/dagster.yaml there (or merge its run_launcher and run_monitoring).",
                    file=sys.stderr,
                )
            return 1 if problems else 0
        done = release_dead_runs(instance)
        for run_id in done.failed:
            print(f"failed dead run {run_id}")
        for run_id in done.freed:
            print(f"freed the pool slots of finished run {run_id}")
        if not done.failed and not done.freed:
            print("no dead run, no slot held by a finished run")
    return 0


if __name__ == "__main__":
    sys.exit(main())
