"""A sliding-window rate limiter that holds at the server, whatever the network does.

Kie's limits ("20 createTask per 10 s") may be counted over any window, so the limiter guarantees
that no window of ``period`` seconds ever holds more than ``limit`` requests, rather than an average
rate (a token bucket would allow a burst of ``limit`` right after a full window).

The server counts a request when it *arrives*, which is some time after we send it (a queue for a
connection, a busy machine, the network) and before its answer comes back. So each request holds its
slot from the moment it is sent until its answer is back (:meth:`slot`), and its slot then stays in
the window for ``period`` seconds after the answer. For requests ``k`` and ``k + limit`` this gives
``arrival(k + limit) >= sent(k + limit) >= answered(k) + period >= arrival(k) + period``: no window
at the server can hold more than ``limit`` arrivals, however late or jittery the requests are.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterable

#: A request whose answer never came back (its process died) stops holding its slot after this long.
STALE_AFTER = 120.0
#: Re-check interval while the window is full of requests still in flight.
_RECHECK = 0.02


def window_wait(
    entries: Iterable[tuple[float, bool]], limit: int, period: float, now: float, recheck: float
) -> float | None:
    """None if a window of ``limit`` per ``period`` has room now for one more request, else how
    long to wait before looking again.

    ``entries`` are the requests still in the window: (time, answered). The window frees when the
    limit-th newest one leaves it, ``period`` after its answer; one still in flight leaves only
    after its answer, so then look again after ``recheck``. Shared by every limiter here and by
    the PostgreSQL one, so that the rule is written once.
    """
    ends = sorted(at + period if done else float("inf") for at, done in entries)
    if len(ends) < limit:
        return None
    end = ends[len(ends) - limit]
    return recheck if end == float("inf") else max(0.0, end - now)


class _Stamp:
    __slots__ = ("at", "done")

    def __init__(self, at: float) -> None:
        self.at = at
        self.done = False


class SlidingWindowLimiter:
    """At most ``limit`` requests in any ``period``-second window at the server (asyncio)."""

    def __init__(self, limit: int, period: float) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("limit must be >= 1 and period > 0")
        self.limit = limit
        self.period = period
        self._stamps: list[_Stamp] = []
        self._lock: asyncio.Lock | None = None
        self._paused_until = 0.0

    def _wait(self, now: float) -> float | None:
        """None if a slot is free now, else how long to wait before looking again."""
        if len(self._stamps) < self.limit:
            return None  # fewer requests than the limit ever: nothing to prune or count
        live = []
        for st in self._stamps:
            if not st.done and now - st.at >= STALE_AFTER:
                st.done = True
            if not st.done or now - st.at < self.period:
                live.append(st)
        self._stamps = live
        return window_wait(((st.at, st.done) for st in live), self.limit, self.period, now, _RECHECK)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for one request: wait for room, send inside, and the slot ends at the answer."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        # The lock makes waiters take slots in arrival order (FIFO), so no request starves.
        async with self._lock:
            while True:
                now = time.monotonic()
                if now < self._paused_until:
                    await asyncio.sleep(self._paused_until - now)
                    continue
                wait = self._wait(now)
                if wait is None:
                    stamp = _Stamp(now)
                    self._stamps.append(stamp)
                    break
                await asyncio.sleep(wait)
        try:
            yield
        finally:
            stamp.at = time.monotonic()  # the window of this request starts at its answer
            stamp.done = True

    async def acquire(self) -> None:
        """Take a slot for a request that is over at once (kept for simple callers and tests)."""
        async with self.slot():
            pass

    def pause(self, seconds: float) -> None:
        """Take no slot for ``seconds`` (after a 429 that said Retry-After), for every caller."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)


class SharedSlidingWindowLimiter:
    """The same guarantee as :class:`SlidingWindowLimiter`, shared by every process on one machine.

    The window lives in a small file, read and written under an exclusive ``flock``, so several runs
    (or executor processes) that use one Kie account pace together. Each line is one request: a
    token, its time (``time.monotonic()``, one clock for the whole machine on Linux), whether its
    answer is back, and the process that sent it. A request whose process died before its answer
    came (a killed run) counts as answered when the death is seen: it may have reached Kie, so it
    keeps its slot for one more period, but it does not hold it until :data:`STALE_AFTER`.
    """

    def __init__(self, path: str, limit: int, period: float) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("limit must be >= 1 and period > 0")
        self.path = path
        self.limit = limit
        self.period = period
        self._paused_until = 0.0
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)

    def _update(self, take: str | None = None, finish: str | None = None) -> float | None:
        """Under the file lock: drop old entries, then take a slot (None) or say how long to wait,
        or mark ``finish`` as answered now."""
        with open(self.path, "a+", encoding="ascii") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file is closed
            fh.seek(0)
            now = time.monotonic()
            me = os.getpid()
            entries: list[tuple[str, float, bool, int]] = []
            for line in fh.read().split():
                parsed = _parse(line)
                if parsed is None:
                    continue
                token, at, done, pid = parsed
                if at > now:  # from a previous boot of the machine
                    continue
                if token == finish or (not done and pid != me and not _alive(pid)):
                    at, done = now, True
                elif not done and now - at >= STALE_AFTER:
                    done = True
                if not done or now - at < self.period:
                    entries.append((token, at, done, pid))
            wait: float | None = None
            if take is not None:
                window = ((at, done) for _, at, done, _ in entries)
                wait = window_wait(window, self.limit, self.period, now, _RECHECK)
                if wait is None:
                    entries.append((take, now, False, me))
            fh.seek(0)
            fh.truncate()
            fh.write("\n".join(f"{t},{at:.6f},{int(done)},{pid}" for t, at, done, pid in entries))
            return wait

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for one request (across processes); it ends when the answer is back."""
        token = uuid.uuid4().hex[:12]
        while True:
            now = time.monotonic()
            if now < self._paused_until:
                await asyncio.sleep(self._paused_until - now)
                continue
            wait = await asyncio.to_thread(self._update, token)
            if wait is None:
                break
            await asyncio.sleep(wait + random.uniform(0, 0.01))  # de-synchronise the waiting processes
        try:
            yield
        finally:
            await asyncio.to_thread(self._update, None, token)

    async def acquire(self) -> None:
        """Take a slot for a request that is over at once."""
        async with self.slot():
            pass

    def pause(self, seconds: float) -> None:
        """Take no slot for ``seconds`` in this process (after a 429 that said Retry-After)."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)


def _parse(line: str) -> tuple[str, float, bool, int] | None:
    parts = line.split(",")
    if len(parts) not in (3, 4):
        return None
    try:
        # A line without a process (written by an older version) waits for STALE_AFTER.
        return parts[0], float(parts[1]), parts[2] == "1", int(parts[3]) if len(parts) == 4 else 0
    except ValueError:
        return None


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (the window file is local to it)."""
    if pid <= 0:
        return True  # unknown
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def account_id(base_url: str, api_key: str) -> str:
    """The name of one Kie account in shared windows: a hash of URL and key (never the key itself)."""
    return hashlib.sha256(f"{base_url}\n{api_key}".encode()).hexdigest()[:16]


def shared_limiter_path(directory: str, base_url: str, api_key: str, name: str) -> str:
    """The limiter file of one account: named by a hash of URL and key (never the key itself)."""
    return os.path.join(directory, f"kie-{account_id(base_url, api_key)}-{name}.window")
