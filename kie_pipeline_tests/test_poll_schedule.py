"""The poll schedule learned from a batch's own finished tasks (issue 13).

Three levels: the learner and the schedule alone (no time at all), the waiter on a virtual clock
with a stub client (its sleeps are recorded, never slept), and polls counted at the emulator
(recordInfo calls, never wall-clock time).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from kie_pipeline.client import (
    AsyncKieClient,
    DurationEstimate,
    DurationEstimates,
    KieTaskTimeoutError,
    PollingWaiter,
    PollPolicy,
    PollSchedule,
    RateLimits,
    TaskRecord,
    TaskState,
    task_duration,
)
from kie_pipeline.client import durations as durations_module
from kie_pipeline.client import waiting as waiting_module
from kie_pipeline.emulator import EmulatorConfig, EmulatorServer
from kie_pipeline.pipeline.generation import generate_batch
from kie_pipeline.pipeline.manifest import validate_manifest
from kie_pipeline.pipeline.store import TaskStore

from .conftest import make_client

POLICY = PollPolicy()  # Kie's advice: 2.5 s, x1.5, up to 30 s


def _done(
    seconds: float | None, *, model: str | None = "m", state: TaskState = TaskState.SUCCESS
) -> TaskRecord:
    """A final record whose costTime says ``seconds`` (None: no costTime)."""
    cost = None if seconds is None else round(seconds * 1000)
    return TaskRecord(task_id="t", model=model, state=state, cost_time_ms=cost)


def _learned(*durations: float, model: str = "m") -> DurationEstimates:
    estimates = DurationEstimates()
    for seconds in durations:
        estimates.observe(_done(seconds, model=model))
    return estimates


def _polls(schedule: PollSchedule, duration: float, *, limit: int = 1000) -> list[float]:
    """The poll times (without jitter) of a task that ends ``duration`` s after its wait starts."""
    t, interval, times = schedule.first_s, schedule.step_s, []
    while len(times) < limit:
        times.append(t)
        if t >= duration:
            return times
        delay, interval = schedule.next_delay(t, interval)
        t += delay
    raise AssertionError(f"no end after {limit} polls: {times[:20]}...")


# -- the learner and the schedule, no time ---------------------------------------------------------


def test_a_duration_comes_from_cost_time_then_create_to_complete_then_the_wait() -> None:
    created = datetime(2026, 11, 25, tzinfo=UTC)
    both = TaskRecord(
        task_id="t",
        model="m",
        state=TaskState.SUCCESS,
        cost_time_ms=4200,
        create_time=created,
        complete_time=created + timedelta(seconds=9),
    )
    assert task_duration(both, waited_s=30) == 4.2
    times_only = TaskRecord(
        task_id="t",
        model="m",
        state=TaskState.SUCCESS,
        create_time=created,
        complete_time=created + timedelta(seconds=9),
    )
    assert task_duration(times_only, waited_s=30) == 9.0
    assert task_duration(_done(None), waited_s=30) == 30
    assert task_duration(_done(None)) is None
    # A completion before the creation (clocks) is no duration.
    skewed = TaskRecord(
        task_id="t",
        model="m",
        state=TaskState.SUCCESS,
        create_time=created,
        complete_time=created - timedelta(seconds=1),
    )
    assert task_duration(skewed) is None


def test_with_no_finished_task_the_schedule_is_the_policys_own() -> None:
    schedule = DurationEstimates().schedule(POLICY, "m")
    assert schedule == PollSchedule.default(POLICY) and not schedule.is_learned
    # Kie's advice, as before learning existed: 2.5 s, then 2.5, 3.75, 5.625 ... up to 30 s.
    assert _polls(schedule, 60) == pytest.approx(
        [2.5, 5.0, 8.75, 14.375, 22.8125, 35.46875, 54.453125, 82.9296875]
    )
    assert all(2.5 * 0.9 <= schedule.first_delay(random.Random(i)) <= 2.5 * 1.1 for i in range(100))


def test_one_finished_task_puts_the_first_poll_at_its_duration() -> None:
    schedule = _learned(5.0).schedule(POLICY, "m")
    assert schedule.is_learned and schedule.learned_from == 1
    assert schedule.first_s == 5.0
    assert schedule.step_s == pytest.approx(0.5)  # no spread yet: a tenth of the duration
    assert _polls(schedule, 5.0) == [5.0]  # a peer-like task: one poll instead of two
    assert len(_polls(PollSchedule.default(POLICY), 5.0)) == 2


def test_many_finished_tasks_first_poll_at_the_median_then_steps_across_the_spread() -> None:
    estimates = _learned(*[5 + i / 10 for i in range(101)])  # 5.0 ... 15.0 s
    estimate = estimates.get("m")
    assert estimate is not None and estimate.count == 101
    assert estimate.quantile(0.5) == pytest.approx(10.0) and estimate.quantile(0.95) == pytest.approx(14.5)
    schedule = estimates.schedule(POLICY, "m")
    assert schedule.first_s == pytest.approx(10.0)
    assert schedule.step_s == pytest.approx(2.25)  # (q95 - median) / 2
    assert schedule.until_s == pytest.approx(14.5 + 2.25)
    assert _polls(schedule, 14.0) == pytest.approx([10.0, 12.25, 14.5])


def test_the_learned_first_poll_is_never_early() -> None:
    schedule = _learned(5.0, 5.0, 5.0).schedule(POLICY, "m")
    draws = [schedule.first_delay(random.Random(i)) for i in range(200)]
    assert min(draws) >= 5.0 and max(draws) <= 5.0 * 1.04


def test_a_learned_schedule_polls_less_than_the_default_for_tasks_like_their_peers() -> None:
    rng = random.Random(7)
    for low, high in ((5, 5), (5, 15), (20, 60), (0.5, 2)):
        peers = [rng.uniform(low, high) for _ in range(40)]
        tasks = [rng.uniform(low, high) for _ in range(400)]
        learned = _learned(*peers).schedule(POLICY, "m")
        default = PollSchedule.default(POLICY)
        polls_learned = sum(len(_polls(learned, d)) for d in tasks)
        polls_default = sum(len(_polls(default, d)) for d in tasks)
        if high < POLICY.initial_s:
            # The policy's first poll already finds every task done: nothing to gain, keep it.
            assert learned == default and polls_learned == polls_default == len(tasks)
        else:
            assert learned.is_learned and polls_learned < polls_default, (
                low,
                high,
                polls_learned,
                polls_default,
            )


def test_a_task_slower_than_its_peers_backs_off_up_to_max_s() -> None:
    schedule = _learned(5.0, 5.0, 5.0).schedule(POLICY, "m")
    times = _polls(schedule, 400.0)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] == pytest.approx(0.5)  # one short step near the peers' finish
    backing_off = gaps[1:]
    assert all(b >= a for a, b in itertools.pairwise(backing_off))  # growing
    assert max(backing_off) == POLICY.max_s and min(backing_off) >= POLICY.initial_s
    # Not more polls than the policy's own schedule would make for the same slow task, plus the step.
    assert len(times) <= len(_polls(PollSchedule.default(POLICY), 400.0)) + 1


def test_failed_tasks_and_records_without_a_duration_teach_nothing() -> None:
    estimates = DurationEstimates()
    assert estimates.observe(_done(0.3, state=TaskState.FAIL)) is None  # a refusal says nothing of generation
    assert estimates.observe(_done(None)) is None
    assert estimates.get("m") is None and estimates.models() == []
    assert estimates.observe(_done(None), waited_s=7.5) == 7.5
    assert estimates.get("m") is not None and estimates.get("m").count == 1


def test_models_keep_separate_estimates() -> None:
    estimates = _learned(4.0, 4.4, model="fast")
    for seconds in (40.0, 44.0):
        estimates.observe(_done(seconds, model="slow"))
    estimates.observe(_done(9.0, model=None), model="keyed-by-the-wait")  # the waiter's key wins
    assert sorted(map(str, estimates.models())) == ["fast", "keyed-by-the-wait", "slow"]
    # Each model's first poll within its own tasks' durations (where exactly: see learned()).
    assert 4.0 <= estimates.schedule(POLICY, "fast").first_s <= 4.4
    assert 40.0 <= estimates.schedule(POLICY, "slow").first_s <= 44.0
    assert estimates.schedule(POLICY, "keyed-by-the-wait").first_s == 9.0
    assert not estimates.schedule(POLICY, "unseen").is_learned


def test_the_schedule_follows_new_durations_without_being_worked_out_at_every_task() -> None:
    estimates = _learned(*[5.0] * 40)
    schedule = estimates.schedule(POLICY, "m")
    estimates.observe(_done(50.0))
    assert estimates.schedule(POLICY, "m") is schedule  # one more among 40 moves nothing
    assert estimates.schedule(PollPolicy(initial_s=1.0), "m") is not schedule  # another policy
    for _ in range(40):
        estimates.observe(_done(9.0))
    assert estimates.schedule(POLICY, "m").first_s >= 9.0  # the median moved: worked out again


def test_an_estimate_keeps_the_most_recent_durations() -> None:
    estimate = DurationEstimate(max_samples=3)
    for seconds in (100.0, 1.0, 2.0, 3.0, float("nan"), -1.0):
        estimate.add(seconds)
    assert estimate.count == 3 and estimate.quantile(1.0) == 3.0
    assert DurationEstimate().quantile(0.5) is None


# -- the waiter on a virtual clock -----------------------------------------------------------------


class VirtualClock:
    """Stands for the waiter's ``time`` and ``asyncio``: sleeping advances the clock at once."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class StubClient:
    """Tasks that end ``duration`` s after they start; every poll counted."""

    def __init__(self, clock: VirtualClock, policy: PollPolicy = POLICY, *, cost_time: bool = True) -> None:
        self.clock, self.poll, self.cost_time = clock, policy, cost_time
        self.tasks: dict[str, tuple[float, float]] = {}  # task id: (start, duration)
        self.polls: dict[str, int] = {}

    def start(self, task_id: str, duration: float) -> str:
        self.tasks[task_id] = (self.clock.now, duration)
        return task_id

    async def get_task(self, task_id: str, *, model: str | None = None) -> TaskRecord:
        self.polls[task_id] = self.polls.get(task_id, 0) + 1
        start, duration = self.tasks[task_id]
        if self.clock.now < start + duration:
            return TaskRecord(task_id=task_id, model=model, state=TaskState.GENERATING)
        cost = round(duration * 1000) if self.cost_time else None
        return TaskRecord(task_id=task_id, model=model, state=TaskState.SUCCESS, cost_time_ms=cost)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> VirtualClock:
    """The waiter on a virtual clock, every jitter at the middle of its range (deterministic)."""
    clock = VirtualClock()
    middle = SimpleNamespace(uniform=lambda low, high: (low + high) / 2)
    monkeypatch.setattr(waiting_module, "time", SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(waiting_module, "asyncio", SimpleNamespace(sleep=clock.sleep))
    monkeypatch.setattr(waiting_module, "random", middle)
    monkeypatch.setattr(durations_module, "random", middle)
    return clock


def _wait(waiter: PollingWaiter, client: StubClient, task_id: str, duration: float, **kw: Any) -> TaskRecord:
    client.start(task_id, duration)
    return asyncio.run(waiter.wait(task_id, **kw))


def test_the_waiter_learns_per_model_and_polls_each_model_near_its_own_duration(clock: VirtualClock) -> None:
    client = StubClient(clock)
    waiter = PollingWaiter(client, durations=DurationEstimates())  # type: ignore[arg-type]
    for i in range(3):
        _wait(waiter, client, f"fast-{i}", 4.0, model="fast")
        _wait(waiter, client, f"slow-{i}", 30.0, model="slow")
    assert client.polls["fast-0"] == 2  # the policy's schedule: 2.5, 5
    assert client.polls["slow-0"] == 6  # the policy's schedule: 2.5, 5, 8.75, 14.4, 22.8, 35.5
    # From the second task on, each model's first poll comes at its own duration.
    assert client.polls["slow-1"] == client.polls["slow-2"] == 1
    assert client.polls["fast-1"] == client.polls["fast-2"] == 1
    clock.sleeps.clear()
    _wait(waiter, client, "fast-3", 4.0, model="fast")
    _wait(waiter, client, "slow-3", 30.0, model="slow")
    # Just after the known duration (never before it): 2% later, the middle of the first jitter.
    assert clock.sleeps == [pytest.approx(4.0 * 1.02), pytest.approx(30.0 * 1.02)]


def test_a_slow_outlier_still_ends_backing_off_and_a_stuck_task_times_out(clock: VirtualClock) -> None:
    client = StubClient(clock)
    waiter = PollingWaiter(client, durations=DurationEstimates())  # type: ignore[arg-type]
    for i in range(5):
        _wait(waiter, client, f"peer-{i}", 5.0, model="m")
    clock.sleeps.clear()
    assert _wait(waiter, client, "outlier", 120.0, model="m").state is TaskState.SUCCESS
    gaps = clock.sleeps[2:]  # after the first poll and one short step
    assert all(b >= a for a, b in itertools.pairwise(gaps))  # backing off
    assert max(gaps) == POLICY.max_s and min(gaps) >= POLICY.initial_s
    default_polls = len(_polls(PollSchedule.default(POLICY), 120.0))
    assert client.polls["outlier"] <= default_polls + 1
    # A task that never ends: the timeout holds whatever was learned.
    started = clock.now
    with pytest.raises(KieTaskTimeoutError) as info:
        _wait(waiter, client, "stuck", float("inf"), model="m", timeout=300.0)
    assert info.value.last_state == "generating"
    assert clock.now - started <= 300.0
    assert client.polls["stuck"] <= len(_polls(PollSchedule.default(POLICY), 300.0)) + 1


def test_a_resumed_task_is_asked_at_once_and_its_wait_is_not_taken_for_its_duration(
    clock: VirtualClock,
) -> None:
    client = StubClient(clock, cost_time=False)
    estimates = DurationEstimates()
    waiter = PollingWaiter(client, durations=estimates)  # type: ignore[arg-type]
    _wait(waiter, client, "resumed", 0.0, model="m", first_delay=0)
    assert clock.sleeps == [] and client.polls["resumed"] == 1
    assert estimates.get("m") is None  # no costTime, and the wait did not start at creation
    # A fresh task without costTime: the time from the start of its wait to the poll that saw it end.
    _wait(waiter, client, "fresh", 4.0, model="m")
    estimate = estimates.get("m")
    assert (
        estimate is not None
        and estimate.count == 1
        and estimate.quantile(0.5) == 5.0  # polled at 2.5 and 5 s
    )
    # Once something is learned, a resumed task still running is polled by the policy's schedule
    # (at once, then 2.5 and 3.75 s later), not in the short steps meant for a task whose age is known.
    assert waiter.schedule("m").is_learned
    clock.sleeps.clear()
    _wait(waiter, client, "resumed-running", 4.0, model="m", first_delay=0)
    assert clock.sleeps == [2.5, 3.75] and client.polls["resumed-running"] == 3


def test_without_durations_the_waiter_polls_as_before(clock: VirtualClock) -> None:
    client = StubClient(clock)
    waiter = PollingWaiter(client)  # type: ignore[arg-type]
    for i in range(3):
        _wait(waiter, client, f"t{i}", 5.0, model="m")
    assert [client.polls[f"t{i}"] for i in range(3)] == [2, 2, 2]  # at 2.5 and 5 s, each
    assert clock.sleeps == [2.5, 2.5] * 3
    assert waiter.schedule("m") == PollSchedule.default(POLICY)


# -- polls counted at the emulator -----------------------------------------------------------------


@pytest.fixture
def fixed_latency() -> Any:
    """An emulator whose tasks all take 0.4 s; its poll limit high enough that the default
    schedule's polls are not thinned out by it (what is counted is the schedule's own)."""
    config = EmulatorConfig(render_scale=1 / 16, latency=(0.4, 0.4), poll_limit=1000)
    with EmulatorServer(config) as server:
        yield server


#: Polls that start early and back off slowly, so that the default makes several per 0.4-s task.
SMALL_POLL = PollPolicy(initial_s=0.05, max_s=0.4)
MODEL = "nano-banana-pro"


def test_a_learned_waiter_makes_fewer_polls_per_task_than_the_default(fixed_latency: EmulatorServer) -> None:
    emu = fixed_latency.emulator

    async def polls_for(client: AsyncKieClient, waiter: PollingWaiter, tasks: int) -> int:
        # One task first (what the waiter learns from when it learns), then several at once.
        await waiter.wait(await client.create_task(MODEL, {"prompt": "first"}), model=MODEL)
        before = emu.snapshot()["polls"]
        ids = [await client.create_task(MODEL, {"prompt": f"p{i}"}) for i in range(tasks)]
        records = await asyncio.gather(*(waiter.wait(t, model=MODEL) for t in ids))
        assert all(r.state is TaskState.SUCCESS for r in records)
        return emu.snapshot()["polls"] - before

    async def go() -> tuple[int, int]:
        # One client for both: its limiter knows every poll made to the emulator.
        async with make_client(fixed_latency, poll=SMALL_POLL, limits=RateLimits(poll_limit=1000)) as client:
            default = await polls_for(client, PollingWaiter(client), 6)
            learned = await polls_for(client, PollingWaiter(client, durations=DurationEstimates()), 6)
            return default, learned

    default, learned = asyncio.run(go())
    # The default polls at 0.05, 0.1, 0.175, 0.29, 0.46 s: several times per task (fewer on a busy
    # machine, whose sleeps overrun: the count, not the time, is what is compared).
    assert default >= 6 * 2
    assert learned < default
    assert learned <= 6 * 1.5  # about one poll per task: the first lands after the known 0.4 s
    assert not emu.snapshot()["rate_limited"]


def test_a_batch_learns_from_its_own_tasks(fixed_latency: EmulatorServer, tmp_path: Path) -> None:
    """generate_batch's default waiter learns: rows created after the first ones end are polled
    near the known duration (4 createTask per 0.6 s, so the batch's 12 tasks come in 3 waves)."""
    fixed_latency.config.create_limit, fixed_latency.config.create_period = 4, 0.6
    emu = fixed_latency.emulator
    limits = RateLimits(create_limit=4, create_period_s=0.6, poll_limit=1000)
    rows = validate_manifest(
        pd.DataFrame([{"id": f"r{i}", "batch": "b", "prompt": f"picture {i}"} for i in range(12)])
    )

    async def polls_of(client: AsyncKieClient, store: Path, waiter: PollingWaiter | None) -> int:
        before = emu.snapshot()["polls"]
        out, summary = await generate_batch(client, TaskStore(str(store)), rows, waiter=waiter)
        assert summary.succeeded == 12 and (out["state"] == "success").all()
        return emu.snapshot()["polls"] - before

    async def go() -> tuple[int, int]:
        async with make_client(fixed_latency, poll=SMALL_POLL, limits=limits) as client:
            default = await polls_of(client, tmp_path / "default", PollingWaiter(client))
            learned = await polls_of(client, tmp_path / "learned", None)  # generate_batch's own waiter
            return default, learned

    default, learned = asyncio.run(go())
    assert learned < default
    assert not emu.snapshot()["rate_limited"]
