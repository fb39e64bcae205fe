"""Kie's callbacks, kept in the store: where they go, how their URL and signature are checked.

Each createTask carries a callback URL that names the row's request key and a token only we can make
(``{base}/kie/callback/{request_key}/{token}``, token = HMAC of the key with the callback secret), so
a callback finds its row even when createTask's answer never arrived. The receiver
(:mod:`kie_pipeline.receiver`) writes each delivery whole to
``{store}/callbacks/{request_key}/{received}.{task_id}.json`` (``received``: the UTC time it came,
to the nanosecond, so the names sort in order of arrival); generation reads them there (see
:class:`CallbackWaiter` and the adoption of lost task ids). Files of the earlier layout,
``{task_id}.json`` (one per task, later bodies under ``later``), are still read.

Kie's optional webhook signature: ``X-Webhook-Timestamp`` (unix seconds) and ``X-Webhook-Signature``
= base64(HMAC-SHA256(webhook key, ``taskId + "." + timestamp``)).
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import contextlib
import hashlib
import hmac
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kie_pipeline.client import AsyncKieClient, KieTaskTimeoutError, PollingWaiter, TaskRecord
from kie_pipeline.client.families import callback_task_id
from kie_pipeline.client.registry import JOBS, get_model

from .store import TaskStore, atomic_write, join

log = logging.getLogger(__name__)

#: A request key as the manifest makes it; a task id as Kie's are spelled. Anything else is refused
#: before it can name a file.
REQUEST_KEY = re.compile(r"^[0-9a-f]{32}$")
TASK_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
#: How far a signed callback's timestamp may be from our clock (either way): a replay of a captured
#: callback older than this is refused. Kie retries a failed delivery within about a minute.
REPLAY_WINDOW_S = 300.0


@dataclass(frozen=True)
class CallbackSettings:
    """Where Kie should send callbacks (the receiver's public base URL) and the secret of the tokens."""

    base_url: str
    secret: str

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("the callback secret must not be empty")

    def url_for(self, request_key: str) -> str:
        """The callback URL of one row (its request key and token)."""
        return f"{self.base_url.rstrip('/')}/kie/callback/{request_key}/{token_for(self.secret, request_key)}"

    def __repr__(self) -> str:  # never show the secret
        return f"CallbackSettings(base_url={self.base_url!r})"


def token_for(secret: str, request_key: str) -> str:
    """The unguessable token of a row's callback URL (stable across runs, so a task created by a run
    that was killed is still accepted when its callback arrives later)."""
    return hmac.new(secret.encode(), request_key.encode(), hashlib.sha256).hexdigest()[:32]


def sign(webhook_key: str, task_id: str, timestamp: int) -> str:
    """Kie's webhook signature of a callback."""
    mac = hmac.new(webhook_key.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode()


def signature_problem(
    webhook_key: str,
    task_id: str,
    timestamp: str | None,
    signature: str | None,
    *,
    now: float | None = None,
    window_s: float = REPLAY_WINDOW_S,
) -> str | None:
    """Why a callback's signature is not acceptable, or None when it is."""
    if not timestamp or not signature:
        return "missing X-Webhook-Timestamp or X-Webhook-Signature"
    try:
        stamp = int(timestamp)
    except ValueError:
        return "X-Webhook-Timestamp is not a unix time"
    if abs((time.time() if now is None else now) - stamp) > window_s:
        return f"X-Webhook-Timestamp is more than {window_s:.0f} s away (a replay?)"
    if not hmac.compare_digest(sign(webhook_key, task_id, stamp), signature.strip()):
        return "X-Webhook-Signature does not match"
    return None


def task_id_of(payload: Any) -> str | None:
    """The task id of any family's callback body (``data.taskId``, ``data.task_id`` or a top-level
    ``taskId``: the receiver stores payloads without knowing their family)."""
    return callback_task_id(payload)


def decode(payload: dict[str, Any], model: str | None = None) -> TaskRecord:
    """The task record a callback carries, read the way ``model``'s family shapes its callbacks
    (None: the jobs API, whose callback is shaped like its status response)."""
    family = get_model(model).family if model else JOBS
    return family.decode_callback(payload)


#: The time of arrival in a delivery's name: ``20261124T215445123456789Z`` (UTC, to the nanosecond;
#: fixed width, so names sort in order of arrival).
_RECEIVED = re.compile(r"^\d{8}T\d{15}Z$")


def _received_stamp(ns: int) -> str:
    return datetime.fromtimestamp(ns // 10**9, UTC).strftime("%Y%m%dT%H%M%S") + f"{ns % 10**9:09d}Z"


def _received_ns(stamp: str) -> int:
    return calendar.timegm(time.strptime(stamp[:15], "%Y%m%dT%H%M%S")) * 10**9 + int(stamp[15:24])


def _parse_name(name: str) -> tuple[str, int | None] | None:
    """(task id, arrival in ns) of a delivery's file name; arrival None for the earlier layout's
    ``{task_id}.json``; None for anything else (a temporary ``.part`` file, a stranger)."""
    if not name.endswith(".json"):
        return None
    stamp, dot, task_id = name[: -len(".json")].partition(".")
    if not dot:
        return (stamp, None) if TASK_ID.match(stamp) else None
    if _RECEIVED.match(stamp) and TASK_ID.match(task_id):
        return task_id, _received_ns(stamp)
    return None


def _mtime_ns(info: dict[str, Any]) -> int:
    """A listed file's modification time in ns (only the earlier layout needs it: its name has no time)."""
    value = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or 0
    if isinstance(value, datetime):
        return int(value.timestamp() * 10**9)
    try:
        return int(float(value) * 10**9)
    except (TypeError, ValueError):
        return 0


@dataclass(frozen=True, order=True)
class Delivery:
    """One callback file as a listing shows it: ordered by arrival (then by path)."""

    at_ns: int
    path: str
    task_id: str
    #: What tells a rewrite of an earlier-layout file (size, mtime); None for the current layout,
    #: whose files are never rewritten.
    version: tuple[Any, ...] | None = None


def _bodies(entry: Any) -> list[dict[str, Any]]:
    if not isinstance(entry, dict) or "payload" not in entry:
        return []
    return [entry["payload"], *entry.get("later", [])]


class CallbackBox:
    """Callbacks received for a store: ``callbacks/{request_key}/{received}.{task_id}.json``, one file
    per distinct body, written whole and never rewritten (see the module's doc)."""

    def __init__(self, store: TaskStore) -> None:
        self.store = store
        # One receiver process delivers one body at a time (a duplicate is found before writing).
        self._lock = threading.Lock()
        self._last_ns = 0

    def _root(self) -> str:
        return self.store.normalize(join(self.store.root, "callbacks"))

    def _folder(self, request_key: str) -> str:
        return self.store.normalize(join(self.store.root, "callbacks", request_key))

    def deliver(self, request_key: str, task_id: str, payload: dict[str, Any]) -> bool:
        """Keep one delivery; False when this body of this task was already kept (a duplicate).

        A task may send several different callbacks (Suno: ``text``, ``first``, ``complete``): each
        distinct body is kept in its own file, named by its time of arrival; a repeated body changes
        nothing.
        """
        with self._lock:
            if payload in self.payloads(request_key, task_id):
                return False
            now = max(time.time_ns(), self._last_ns + 1)
            self._last_ns = now
            path = f"{self._folder(request_key)}/{_received_stamp(now)}.{task_id}.json"
            entry = {"received_at": datetime.fromtimestamp(now / 10**9, UTC).isoformat(), "payload": payload}
            atomic_write(self.store.fs, path, json.dumps(entry, sort_keys=True).encode())
            return True

    def scan(self) -> dict[str, list[Delivery]]:
        """Every delivery in the store by request key, oldest first: one listing of ``callbacks/``."""
        return self._scan(self._root())

    def _scan(self, folder: str) -> dict[str, list[Delivery]]:
        fs = self.store.fs
        # fsspec's walk leaves out a folder it cannot list unless told to raise: an unreadable store
        # must not look like an empty one. (Object stores' own listings raise their errors.)
        options = {"on_error": "raise"} if self.store.is_local else {}
        try:
            found = fs.find(folder, detail=True, **options)
        except FileNotFoundError:
            return {}
        by_key: dict[str, list[Delivery]] = {}
        for path, info in found.items():
            parent, _, name = path.rpartition("/")
            parsed = _parse_name(name)
            if parsed is None:
                continue
            task_id, at_ns = parsed
            version = None
            if at_ns is None:  # the earlier layout: its time is the file's, and it may be rewritten
                at_ns = _mtime_ns(info)
                version = (info.get("size"), at_ns)
            by_key.setdefault(parent.rsplit("/", 1)[-1], []).append(Delivery(at_ns, path, task_id, version))
        for deliveries in by_key.values():
            deliveries.sort()
        return by_key

    def read(self, paths: list[str]) -> dict[str, list[dict[str, Any]]]:
        """The bodies of each delivery file (one batched read); a file gone or not JSON gives none."""
        if not paths:
            return {}
        found = self.store.fs.cat(list(paths), on_error="return")
        if not isinstance(found, dict):  # one path: fsspec answers with its bytes
            found = {paths[0]: found}
        out: dict[str, list[dict[str, Any]]] = {}
        for path in paths:
            data = found.get(self.store.fs._strip_protocol(path), found.get(path))
            if isinstance(data, FileNotFoundError) or data is None:
                out[path] = []
                continue
            if isinstance(data, BaseException):
                raise data
            try:
                out[path] = _bodies(json.loads(data))
            except ValueError:
                out[path] = []
        return out

    def _of_task(self, request_key: str, task_id: str) -> list[Delivery]:
        return [d for d in self._scan(self._folder(request_key)).get(request_key, []) if d.task_id == task_id]

    def get(self, request_key: str, task_id: str) -> dict[str, Any] | None:
        """The first callback body of one task, or None before it arrives."""
        bodies = self.payloads(request_key, task_id)
        return bodies[0] if bodies else None

    def payloads(self, request_key: str, task_id: str) -> list[dict[str, Any]]:
        """Every distinct callback body of one task, first delivery first."""
        deliveries = self._of_task(request_key, task_id)
        read = self.read([d.path for d in deliveries])
        out: list[dict[str, Any]] = []
        for d in deliveries:
            out.extend(b for b in read.get(d.path, []) if b not in out)
        return out

    def prune(self, settled: Callable[[list[str]], list[str]], keys: Iterable[str]) -> int:
        """Remove the callbacks of the rows among ``keys`` that ``settled`` says are finished for good
        (their final record is written, copies included); return how many rows were cleared.

        The watcher lists the whole box on every tick, so the box must hold only rows still in play,
        not every callback ever received. ``settled`` gets the keys that have callbacks and answers
        with those safe to clear: a row that may still need its callback (its task id unknown, its
        wait given up) keeps it.
        """
        wanted = set(keys)
        boxed = [k for k in self.scan() if k in wanted]
        done = settled(boxed) if boxed else []
        if done:
            self.store.fs.rm([self._folder(k) for k in done], recursive=True)
        return len(done)

    def task_ids(self, request_key: str) -> list[str]:
        """Every task id a callback delivered for a row, oldest delivery first (by the time of
        arrival in the file names: one listing, no file read)."""
        deliveries = self._scan(self._folder(request_key)).get(request_key, [])
        return list(dict.fromkeys(d.task_id for d in deliveries))


@dataclass(eq=False)
class _Watch:
    """What one waiter waits for: the bodies of ``task_id`` under ``key``, or (``task_id`` None) any
    task id under ``key`` not in ``known``. The watcher fills it and sets ``event``."""

    key: str
    task_id: str | None
    known: frozenset[str] = frozenset()
    event: asyncio.Event = field(default_factory=asyncio.Event)
    #: Deliveries already handed over (path, version): each file is read once per waiter.
    seen: set[tuple[str, Any]] = field(default_factory=set)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    error: BaseException | None = None
    #: Whether a listing has been made since the watch began (what was already there is known).
    looked: bool = False

    def take(self) -> list[dict[str, Any]]:
        """The bodies that arrived since the last call (and the event cleared)."""
        self.event.clear()
        bodies, self.bodies = self.bodies, []
        return bodies

    def raise_error(self, store: str) -> None:
        if self.error is not None:
            raise OSError(f"listing the callbacks of the store {store} failed: {self.error}") from self.error


class CallbackWatcher:
    """One watcher for every waiter of a batch: each tick lists ``callbacks/`` once, reads only the
    files that appeared for someone waiting, and wakes those waiters.

    It starts with the first watch and stops (its task is cancelled) when the last one leaves. An
    error listing or reading the store is handed to every waiter of that tick, which raises it.
    """

    def __init__(self, box: CallbackBox, check_s: float) -> None:
        self.box = box
        self.check_s = check_s
        self._watches: set[_Watch] = set()
        self._task: asyncio.Task[None] | None = None
        #: Ticks completed (one listing each): what the store's operations are counted against.
        self.ticks = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def watch(self, key: str, task_id: str | None, known: list[str] | tuple[str, ...] = ()) -> _Watch:
        w = _Watch(key, task_id, frozenset(known))
        self._watches.add(w)
        if not self.running:
            self._task = asyncio.create_task(self._run(), name="callback watcher")
        return w

    def unwatch(self, w: _Watch) -> None:
        self._watches.discard(w)
        if not self._watches and self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._tick()
            await asyncio.sleep(self.check_s)

    async def _tick(self) -> None:
        watches = list(self._watches)
        try:
            found = await asyncio.to_thread(self.box.scan)
            self.ticks += 1
            wanted: dict[str, list[tuple[_Watch, Delivery]]] = {}
            for w in watches:
                deliveries = found.get(w.key, [])
                if w.task_id is None:
                    fresh = [t for t in dict.fromkeys(d.task_id for d in deliveries) if t not in w.known]
                    if fresh:
                        w.fresh = fresh
                        w.event.set()
                    continue
                for d in deliveries:
                    if d.task_id == w.task_id and (d.path, d.version) not in w.seen:
                        wanted.setdefault(d.path, []).append((w, d))
            read = await asyncio.to_thread(self.box.read, list(wanted)) if wanted else {}
            # In order of arrival, so that a waiter sees a task's bodies as they were sent.
            for path in sorted(wanted, key=lambda p: wanted[p][0][1]):
                for w, d in wanted[path]:
                    w.seen.add((d.path, d.version))
                    w.bodies.extend(read.get(path, []))
                    w.event.set()
            for w in watches:  # each has now seen what was in the box when it began
                if not w.looked:
                    w.looked = True
                    w.event.set()
        except Exception as exc:  # the store could not be listed or read: every waiter is told
            log.warning("Listing the callbacks of %s failed: %s", self.box.store.root, exc)
            for w in watches:
                w.error = exc
                w.event.set()


class CallbackWaiter:
    """Waits on callbacks, polling recordInfo only as a slow fallback (a lost callback still ends).

    One :class:`CallbackWatcher` per waiter object (one per batch) lists the box every ``check_s``
    (one listing for every task waiting, no request to Kie) and wakes the tasks whose callbacks
    arrived; recordInfo is asked every ``fallback_poll_s`` (default: the poll policy's
    ``callback_fallback_s``), the first time that long after the wait starts (or after
    ``first_delay``: a resumed task is asked at once).
    """

    def __init__(
        self,
        client: AsyncKieClient,
        box: CallbackBox,
        *,
        check_s: float = 0.25,
        fallback_poll_s: float | None = None,
    ) -> None:
        self.client, self.box = client, box
        self.check_s = check_s
        # Default: the client's PollPolicy.callback_fallback_s (one place for every wait setting).
        self.fallback_poll_s = client.poll.callback_fallback_s if fallback_poll_s is None else fallback_poll_s
        self._polling = PollingWaiter(client)
        self.watcher = CallbackWatcher(box, check_s)

    async def wait(
        self,
        task_id: str,
        *,
        key: str | None = None,
        model: str | None = None,
        timeout: float | None = None,
        first_delay: float | None = None,
    ) -> TaskRecord:
        if key is None:  # nothing to look up callbacks by: poll as usual
            return await self._polling.wait(task_id, model=model, timeout=timeout, first_delay=first_delay)
        timeout = self.client.poll.timeout_s if timeout is None else timeout
        started = time.monotonic()
        deadline = started + timeout
        next_poll = started + (self.fallback_poll_s if first_delay is None else first_delay)
        last_state: str | None = None
        watch = self.watcher.watch(key, task_id)
        try:
            while True:
                # A family may report stages before the end (Suno): the first terminal body ends it.
                for payload in watch.take():
                    record = decode(payload, model)
                    if record.is_terminal:
                        return record
                watch.raise_error(self.box.store.root)
                # Not before the box was looked at once: a resumed task's callback may be there.
                if watch.looked and time.monotonic() >= next_poll:
                    record = await self.client.get_task(task_id, model=model)
                    last_state = record.state.value
                    if record.is_terminal:
                        return record
                    next_poll = time.monotonic() + self.fallback_poll_s
                now = time.monotonic()
                if now >= deadline:
                    raise KieTaskTimeoutError(task_id, timeout, last_state)
                await _until(watch.event, (min(next_poll, deadline) if watch.looked else deadline) - now)
        finally:
            self.watcher.unwatch(watch)

    async def task_id_for(self, key: str, *, known: list[str], timeout: float) -> str | None:
        """A task id delivered by callback for ``key`` that is not in ``known``, waiting up to
        ``timeout`` seconds (a createTask whose answer was lost: its callback names the task)."""
        deadline = time.monotonic() + timeout
        watch = self.watcher.watch(key, None, known)
        try:
            while True:
                if watch.fresh:
                    return watch.fresh[0]
                watch.raise_error(self.box.store.root)
                now = time.monotonic()
                if now >= deadline:
                    return None
                watch.event.clear()
                await _until(watch.event, deadline - now)
        finally:
            self.watcher.unwatch(watch)


async def _until(event: asyncio.Event, seconds: float) -> None:
    """Wait for ``event``, at most ``seconds``."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), max(0.0, seconds))
