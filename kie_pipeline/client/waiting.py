"""How to wait for a task: a small protocol, with polling as its first implementation.

Generation depends only on :class:`Waiter` ("wait for this task, give me its final record"), so a
waiter fed by Kie's callbacks can replace or complement polling without touching the pipeline.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING, Protocol, runtime_checkable

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
    first poll after ``first_delay`` (default ``initial_s``), then backing off up to ``max_s``."""

    def __init__(self, client: AsyncKieClient) -> None:
        self.client = client

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
        deadline = time.monotonic() + timeout
        delay = policy.initial_s if first_delay is None else first_delay
        interval = policy.initial_s
        last_state: str | None = None
        while True:
            remaining = deadline - time.monotonic()
            if delay > 0:
                if remaining <= 0:
                    raise KieTaskTimeoutError(task_id, timeout, last_state)
                # Jitter spreads the polls of tasks created in the same instant.
                await asyncio.sleep(min(delay * random.uniform(0.9, 1.1), remaining))
            record = await c.get_task(task_id, model=model)
            last_state = record.state.value
            if record.is_terminal:
                return record
            if time.monotonic() >= deadline:
                raise KieTaskTimeoutError(task_id, timeout, last_state)
            delay = interval
            interval = min(interval * policy.backoff, policy.max_s)
