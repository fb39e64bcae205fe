"""What a batch learns of how long its tasks take, and the poll schedule that follows from it.

Kie's advice (first poll after 2-3 s, then back off) is written for a task of unknown length. A
batch soon knows better: its finished tasks say how long they took (``costTime``, or ``createTime``
to ``completeTime``), and its other tasks of the same model usually take about as long. With that,
:class:`PollSchedule` polls a task shortly after its peers' typical finish, then at short intervals
across their spread, and falls back to backing off once the task is clearly slower than its peers.

Nothing here sleeps or calls Kie: :class:`~kie_pipeline.client.waiting.PollingWaiter` consults a
:class:`DurationEstimates` (one per batch) and feeds it each record it ends with.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass

from .models import TaskRecord, TaskState
from .options import PollPolicy

#: Where the first poll of a task may land, as quantiles of its peers' durations. Earliest is best
#: (the median: with identical tasks it finds them done, with spread ones half are done at once),
#: but only if it costs no more polls than the policy's own schedule on those same durations; a
#: later quantile (fewer polls, later answers) otherwise. With tasks shorter than the policy's first
#: poll, that is the peers' longest duration: one poll, earlier than the policy's.
FIRST_QUANTILES = (0.5, 0.75, 0.95, 1.0)
#: Tasks slower than this quantile of their peers (plus one step) are "clearly slower": from there
#: the task is polled with a growing interval, as when nothing is known. Not the maximum: one
#: outlier among 20 peers does not widen everyone's steps.
LAST_QUANTILE = 0.95
#: Polls between the median and the last quantile: the spread is cut into this many steps.
STEPS_ACROSS_SPREAD = 2
#: The shortest step, as a fraction of the median duration: with identical tasks (no spread) a poll
#: that came a moment too early is repeated this much later, not at once.
MIN_STEP_FRACTION = 0.1
#: The first poll is this much later than the quantile (a fraction of it, drawn uniformly): never
#: early, and spread a little so that the tasks created together do not poll in the same instant.
FIRST_JITTER = (1.0, 1.04)
#: The jitter of every other delay, as before anything was learned.
JITTER = (0.9, 1.1)
#: Durations kept per model: the most recent ones (a long batch follows Kie's current speed).
MAX_SAMPLES = 256
#: Candidate schedules are compared on at most this many quantiles of the durations (a bounded
#: cost per finished task, whatever the sample).
EVALUATION_POINTS = 64
#: A schedule whose evaluation reaches this many polls for one duration counts them as that many
#: (a zero interval, e.g. ``initial_s=0``, would otherwise never end).
MAX_EVALUATED_POLLS = 100


def task_duration(record: TaskRecord, *, waited_s: float | None = None) -> float | None:
    """How long a finished task took (seconds), by the best figure at hand.

    Kie's ``costTime``; else ``completeTime - createTime``; else ``waited_s``, the time from
    createTask's answer to the poll that saw the task end (an overestimate by up to one poll
    interval, so only a fallback). None when none is usable.
    """
    if record.cost_time_ms is not None and record.cost_time_ms >= 0:
        return record.cost_time_ms / 1000
    if record.create_time is not None and record.complete_time is not None:
        seconds = (record.complete_time - record.create_time).total_seconds()
        if seconds >= 0:
            return seconds
    if waited_s is not None and math.isfinite(waited_s) and waited_s >= 0:
        return waited_s
    return None


class DurationEstimate:
    """The durations (seconds) of one model's finished tasks, and their quantiles.

    Not thread-safe: one batch's waits share it on one event loop.
    """

    def __init__(self, max_samples: int = MAX_SAMPLES) -> None:
        self._samples: deque[float] = deque(maxlen=max_samples)
        self._sorted: list[float] | None = None

    def add(self, seconds: float) -> None:
        """Record one finished task's duration."""
        if not (math.isfinite(seconds) and seconds >= 0):
            return
        self._samples.append(float(seconds))
        self._sorted = None

    @property
    def count(self) -> int:
        """How many durations are known."""
        return len(self._samples)

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (0-1, linear between samples) of the known durations; None if none."""
        if not self._samples:
            return None
        if self._sorted is None:
            self._sorted = sorted(self._samples)
        values = self._sorted
        pos = min(max(q, 0.0), 1.0) * (len(values) - 1)
        low = math.floor(pos)
        high = min(low + 1, len(values) - 1)
        return values[low] + (values[high] - values[low]) * (pos - low)

    def points(self, k: int = EVALUATION_POINTS) -> list[float]:
        """The durations, or ``k`` evenly spaced quantiles of them when there are more."""
        if self.count <= k:
            return sorted(self._samples)
        return [self.quantile((i + 0.5) / k) or 0.0 for i in range(k)]

    def __repr__(self) -> str:
        median = self.quantile(0.5)
        return f"DurationEstimate(count={self.count}, median={median})"


class DurationEstimates:
    """One :class:`DurationEstimate` per model (a batch can mix models, which take different times).

    Only successful tasks are learned from: a task that fails often fails early (a refused prompt,
    a bad input) and says nothing about how long a generation takes.
    """

    def __init__(self, max_samples: int = MAX_SAMPLES) -> None:
        self._by_model: dict[str | None, DurationEstimate] = {}
        self._max_samples = max_samples
        # Durations learned per model (ever, not only those kept), and the schedule last worked
        # out per model with the count it was worked out at.
        self._learned: dict[str | None, int] = {}
        self._schedules: dict[str | None, tuple[int, PollSchedule]] = {}

    def observe(
        self, record: TaskRecord, *, model: str | None = None, waited_s: float | None = None
    ) -> float | None:
        """Learn from a final record; returns the duration learned, None when nothing was.

        ``model`` is the key (default: the record's own model); ``waited_s`` as in
        :func:`task_duration`.
        """
        if record.state is not TaskState.SUCCESS:
            return None
        seconds = task_duration(record, waited_s=waited_s)
        if seconds is None:
            return None
        key = model if model is not None else record.model
        estimate = self._by_model.get(key)
        if estimate is None:
            estimate = self._by_model[key] = DurationEstimate(self._max_samples)
        estimate.add(seconds)
        self._learned[key] = self._learned.get(key, 0) + 1
        return seconds

    def get(self, model: str | None) -> DurationEstimate | None:
        """What is known of ``model``'s tasks; None before one of them finished."""
        return self._by_model.get(model)

    def models(self) -> list[str | None]:
        """The models learned about."""
        return list(self._by_model)

    def schedule(self, policy: PollPolicy, model: str | None) -> PollSchedule:
        """How to poll a new task of ``model`` (the policy's own schedule before anything is known)."""
        learned = self._learned.get(model, 0)
        cached = self._schedules.get(model)
        if cached is not None:
            at, schedule = cached
            # Worked out again after each of the first durations, then once the sample has grown by
            # a sixteenth (at least every 16): a fresh duration barely moves the quantiles of many.
            if schedule.policy == policy and learned - at < min(16, max(1, at // 16)):
                return schedule
        schedule = PollSchedule.learned(policy, self.get(model))
        self._schedules[model] = (learned, schedule)
        return schedule

    def __repr__(self) -> str:
        return f"DurationEstimates({self._by_model!r})"


@dataclass(frozen=True)
class PollSchedule:
    """When to poll one task, as delays (seconds) relative to the start of its wait.

    The first poll after ``first_s``; then every ``step_s`` while less than ``until_s`` has
    passed; after that the interval grows with the time already waited, by the policy's
    ``backoff`` (up to ``max_s``). Before anything is learned this is the policy's own schedule
    (``until_s`` 0: the interval starts at ``initial_s`` and grows by ``backoff`` at each poll).
    """

    policy: PollPolicy
    first_s: float
    step_s: float
    until_s: float = 0.0
    learned_from: int = 0

    @classmethod
    def default(cls, policy: PollPolicy) -> PollSchedule:
        """Kie's advice as the policy writes it: first poll after ``initial_s``, then back off."""
        return cls(policy, first_s=policy.initial_s, step_s=policy.initial_s)

    @classmethod
    def learned(cls, policy: PollPolicy, estimate: DurationEstimate | None) -> PollSchedule:
        """The schedule for a task whose peers took ``estimate``'s durations (default if None).

        Of the candidates (first poll at each of :data:`FIRST_QUANTILES`), the one that answers
        soonest on the peers' durations among those that poll no more than the policy's own
        schedule would; the policy's schedule when none does.
        """
        default = cls.default(policy)
        if estimate is None or estimate.count == 0:
            return default
        median, last = estimate.quantile(0.5), estimate.quantile(LAST_QUANTILE)
        assert median is not None and last is not None
        # A very wide spread still gets a poll at least every max_s.
        step = min(max((last - median) / STEPS_ACROSS_SPREAD, MIN_STEP_FRACTION * median), policy.max_s)
        points = estimate.points()
        budget, _ = default.evaluate(points)
        # The next task may be slower than every peer so far (1 chance in count + 1) and then need
        # one more poll than the peers did: counted against the candidate, so that on new tasks too
        # the learned schedule polls no more than the policy's.
        unseen = 1 / (estimate.count + 1)
        best, best_lag = default, math.inf
        for q in FIRST_QUANTILES:
            first = estimate.quantile(q)
            assert first is not None
            candidate = cls(policy, first, step, until_s=max(last, first) + step, learned_from=estimate.count)
            polls, lag = candidate.evaluate(points)
            if polls + unseen <= budget and lag < best_lag:
                best, best_lag = candidate, lag
        return best

    def evaluate(self, durations: list[float]) -> tuple[float, float]:
        """Mean polls per task and mean lag (seconds from a task's end to the poll that sees it)
        for tasks of these ``durations``, without jitter."""
        if not durations:
            return 0.0, 0.0
        polls = lag = 0.0
        for duration in durations:
            t, interval, n = self.first_s, self.step_s, 1
            while t < duration and n < MAX_EVALUATED_POLLS:
                delay, interval = self.next_delay(t, interval)
                t, n = t + delay, n + 1
            polls, lag = polls + n, lag + max(t - duration, 0.0)
        return polls / len(durations), lag / len(durations)

    @property
    def is_learned(self) -> bool:
        """Whether the schedule comes from finished peers (else: the policy's defaults)."""
        return self.learned_from > 0

    def first_delay(self, rng: random.Random | None = None) -> float:
        """Seconds before the first poll, jittered (a learned one never earlier than ``first_s``)."""
        low, high = FIRST_JITTER if self.is_learned else JITTER
        return self.first_s * (rng or random).uniform(low, high)

    def next_delay(self, elapsed: float, interval: float) -> tuple[float, float]:
        """After a poll at ``elapsed`` seconds that found the task unfinished: ``(delay, interval)``,
        the seconds until the next poll (before jitter) and the ``interval`` to pass next time
        (start with ``step_s``)."""
        p = self.policy
        if not self.is_learned:
            # The policy's schedule, as before learning existed.
            return interval, min(interval * p.backoff, p.max_s)
        if elapsed < self.until_s:
            # Among its peers' finishing times: short, even steps.
            return self.step_s, interval
        # Clearly slower than its peers: back off as when nothing is known, the interval growing
        # with the time already waited (as the policy's own schedule does), from at least a step
        # or the policy's first interval, up to max_s.
        floor = max(self.step_s, min(p.initial_s, p.max_s))
        delay = min(max((p.backoff - 1) * elapsed, floor), p.max_s)
        return delay, interval
