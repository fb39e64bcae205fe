"""A sliding-window rate limiter.

Kie's limits ("20 createTask per 10 s") may be counted over any window, so the limiter guarantees
that no window of ``period`` seconds ever holds more than ``limit`` acquisitions, rather than an
average rate (a token bucket would allow a burst of ``limit`` right after a full window). A small
``margin`` is added to the window to absorb network jitter between our clock and the server's.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import random
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


class SharedSlidingWindowLimiter:
    """The same guarantee as :class:`SlidingWindowLimiter`, shared by every process on one machine.

    The window's timestamps live in a small file, read and written under an exclusive ``flock``, so
    several runs (or executor processes) that use one Kie account pace together. Timestamps are
    ``time.monotonic()``, which on Linux is one clock for the whole machine.
    """

    def __init__(self, path: str, limit: int, period: float, *, margin: float = 0.0) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("limit must be >= 1 and period > 0")
        self.path = path
        self.limit = limit
        self.period = period
        self.margin = margin
        self._paused_until = 0.0
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)

    def _try_take(self) -> float | None:
        """Take a slot if one is free (None), else return how long to wait."""
        window = self.period + self.margin
        with open(self.path, "a+", encoding="ascii") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file is closed
            fh.seek(0)
            now = time.monotonic()
            # Stamps from the future belong to a previous boot of the machine: drop them.
            stamps = sorted(s for s in (_float(x) for x in fh.read().split()) if 0 <= now - s < window)
            if len(stamps) >= self.limit:
                return window - (now - stamps[-self.limit])
            stamps.append(now)
            fh.seek(0)
            fh.truncate()
            fh.write(" ".join(f"{s:.6f}" for s in stamps[-self.limit :]))
            return None

    async def acquire(self) -> None:
        """Wait until one more request fits in every window (across processes), then take the slot."""
        while True:
            now = time.monotonic()
            if now < self._paused_until:
                await asyncio.sleep(self._paused_until - now)
                continue
            wait = await asyncio.to_thread(self._try_take)
            if wait is None:
                return
            await asyncio.sleep(wait + random.uniform(0, 0.01))  # de-synchronise the waiting processes

    def pause(self, seconds: float) -> None:
        """Take no slot for ``seconds`` in this process (after a 429 that said Retry-After)."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return -1.0


def shared_limiter_path(directory: str, base_url: str, api_key: str, name: str) -> str:
    """The limiter file of one account: named by a hash of URL and key (never the key itself)."""
    account = hashlib.sha256(f"{base_url}\n{api_key}".encode()).hexdigest()[:16]
    return os.path.join(directory, f"kie-{account}-{name}.window")
