"""A sliding-window rate limiter.

Kie's limits ("20 createTask per 10 s") may be counted over any window, so the limiter guarantees
that no window of ``period`` seconds ever holds more than ``limit`` acquisitions, rather than an
average rate (a token bucket would allow a burst of ``limit`` right after a full window). A small
``margin`` is added to the window to absorb network jitter between our clock and the server's.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque


class SlidingWindowLimiter:
    """At most ``limit`` acquisitions in any ``period``-second window (asyncio)."""

    def __init__(self, limit: int, period: float, *, margin: float = 0.0) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("limit must be >= 1 and period > 0")
        self.limit = limit
        self.period = period
        self.margin = margin
        self._stamps: deque[float] = deque()
        self._lock: asyncio.Lock | None = None
        self._paused_until = 0.0

    def _window(self) -> float:
        return self.period + self.margin

    async def acquire(self) -> None:
        """Wait until one more request fits in every window, then take the slot."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        # The lock makes waiters take slots in arrival order (FIFO), so no request starves.
        async with self._lock:
            while True:
                now = time.monotonic()
                if now < self._paused_until:
                    await asyncio.sleep(self._paused_until - now)
                    continue
                while self._stamps and now - self._stamps[0] >= self._window():
                    self._stamps.popleft()
                if len(self._stamps) < self.limit:
                    self._stamps.append(now)
                    return
                await asyncio.sleep(self._window() - (now - self._stamps[0]))

    def pause(self, seconds: float) -> None:
        """Take no slot for ``seconds`` (after a 429 that said Retry-After), for every caller."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
