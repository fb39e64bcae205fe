"""How to wait for a task: a small protocol, with polling as its first implementation.

Generation depends only on :class:`Waiter` ("wait for this task, give me its final record"), so a
waiter fed by Kie's callbacks can replace or complement polling without touching the pipeline.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .durations import JITTER, DurationEstimates, PollSchedule
from .errors import KieTaskTimeoutError
from .models import TaskRecord

if TYPE_CHECKING:
    from .client import AsyncKieClient


@runtime_checkable
class Waiter(Protocol):
    """Waits for one task to end and returns its final (``success`` or ``fail``) record."""

    async def wait(
        self,
        task_id: str,
        *,
        key: str | None = None,
        model: str | None = None,
        timeout: float | None = None,
        first_delay: float | None = None,
    ) -> TaskRecord:
        """The task's final record; :class:`KieTaskTimeoutError` after ``timeout`` seconds.

        ``key`` is the request key of the row the task belongs to (a callback names it); ``model``
        is the row's model, whose API family says where to ask and how to read the answers
        (None: the jobs API).
        """
        ...


class PollingWaiter:
    """Polls recordInfo as the client's :class:`~kie_pipeline.client.options.PollPolicy` says: the
    first poll after ``first_delay`` (default ``initial_s``), then backing off up to ``max_s``.

    With ``durations`` (one :class:`~kie_pipeline.client.durations.DurationEstimates` per batch),
    each task that ends teaches it how long its model's tasks take, and the next tasks of that
    model are polled by the learned :class:`~kie_pipeline.client.durations.PollSchedule`: first
    shortly after their peers' typical finish, then in short steps across their spread, backing
    off as before once clearly slower. The client's poll limiter still bounds the rate of polls.
    """

    def __init__(self, client: AsyncKieClient, *, durations: DurationEstimates | None = None) -> None:
        self.client = client
        self.durations = durations

    def schedule(self, model: str | None) -> PollSchedule:
        """How a task of ``model`` starting its wait now is polled."""
        if self.durations is None:
            return PollSchedule.default(self.client.poll)
        return self.durations.schedule(self.client.poll, model)

    async def wait(
        self,
        task_id: str,
        *,
        key: str | None = None,
        model: str | None = None,
        timeout: float | None = None,
        first_delay: float | None = None,
    ) -> TaskRecord:
        c, policy = self.client, self.client.poll
        timeout = policy.timeout_s if timeout is None else timeout
        started = time.monotonic()
        deadline = started + timeout
        if first_delay is None:
            schedule = self.schedule(model)
            delay = schedule.first_delay()
        else:
            # An explicit first delay (0 for a resumed task): the task's age is unknown, so what its
            # peers took says nothing of when it ends; the policy's schedule from there.
            schedule = PollSchedule.default(policy)
            delay = first_delay * random.uniform(*JITTER)
        interval = schedule.step_s
        last_state: str | None = None
        while True:
            remaining = deadline - time.monotonic()
            if delay > 0:
                if remaining <= 0:
                    raise KieTaskTimeoutError(task_id, timeout, last_state)
                await asyncio.sleep(min(delay, remaining))
            record = await c.get_task(task_id, model=model)
            last_state = record.state.value
            if record.is_terminal:
                if self.durations is not None:
                    # The time waited stands for the duration only if the wait began at creation.
                    waited = time.monotonic() - started if first_delay is None else None
                    self.durations.observe(record, model=model, waited_s=waited)
                return record
            now = time.monotonic()
            if now >= deadline:
                raise KieTaskTimeoutError(task_id, timeout, last_state)
            delay, interval = schedule.next_delay(now - started, interval)
            # Jitter spreads the polls of tasks created in the same instant.
            delay *= random.uniform(*JITTER)
