"""The account's sliding windows in PostgreSQL: the guarantee of :mod:`.ratelimit` across machines.

:class:`PostgresSlidingWindowLimiter` keeps the promise of
:class:`~.ratelimit.SharedSlidingWindowLimiter`: a request holds its slot from send until its answer,
and the slot then stays in the window for ``period`` seconds after the answer, so no window of
``period`` seconds at the server ever holds more than ``limit`` arrivals. It holds for any number of
processes on any number of machines that use one Kie account and one database
(``KIE_COORDINATION_URL``), and one process alone still gets the whole limit.

How:

- Each request is a row of ``kie_rate_slots``: account, window name, a token, its time, whether its
  answer is back, and its holder. The account is a hash of base URL and key, never the key.
- Times come from the database's clock (``clock_timestamp()``), so machines whose clocks disagree
  still share one timeline.
- Every decision is one transaction under ``pg_advisory_xact_lock`` of (account, window): one
  process at a time reads and writes a window, as under the file limiter's ``flock``, and the lock
  ends with the transaction (a process that dies mid-decision holds nothing).
- A slot is committed before its request is sent and marked answered (its time set to the
  database's now) after the answer is back, so ``sent(k + limit) >= answered(k) + period`` on the
  database's clock, and the proof of :mod:`.ratelimit` applies unchanged.
- A request whose holder died: each row keeps its holder connection's ``pg_backend_pid()`` and
  ``backend_start``. The server ends a backend when its connection drops (a killed process, a lost
  machine); once the backend is gone from ``pg_stat_activity``, its request counts as answered the
  moment that is seen and keeps its slot one more period (the file limiter's dead-process rule).
  :data:`~.ratelimit.STALE_AFTER` still ends any request whose answer never came.

Limits: a connection lost and made again while one of its requests is in flight makes that request
look answered to the others from then on (its old backend is gone), so the window holds as well as
the connection does: a database on a reliable network. Connect directly or through a session-mode
pooler; a transaction-mode pooler (PgBouncer's default) changes backends between transactions.

psycopg2 is imported when a window is first used (the ``cluster`` extra installs it), so importing
the client stays light. Calls run in worker threads (:func:`asyncio.to_thread`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

from .errors import KieCoordinationError
from .ratelimit import STALE_AFTER, window_wait

logger = logging.getLogger("kie_pipeline.client")

T = TypeVar("T")

#: Re-check interval while the window is full of requests still in flight (each check is a
#: transaction on a shared database, so less often than the file limiter's 20 ms; a request's
#: slot lasts a whole period after its answer, so learning of the answer later costs no throughput).
RECHECK = 0.05
#: Seconds to wait for the database when connecting.
CONNECT_TIMEOUT = 10
#: The advisory lock (bigint space) under which the tables are created: ``CREATE TABLE IF NOT
#: EXISTS`` alone fails when two processes race to create the same table.
_SCHEMA_LOCK = 0x6B69655F736368  # "kie_sch"

WINDOW_DDL = """
CREATE TABLE IF NOT EXISTS kie_rate_slots (
    account text NOT NULL,
    name text NOT NULL,
    token text NOT NULL,
    at double precision NOT NULL,
    done boolean NOT NULL,
    backend integer NOT NULL,
    backend_start timestamptz,
    PRIMARY KEY (account, name, token)
)
"""

# Under the window's lock: a request whose holder's backend is gone counts as answered now; one in
# flight past STALE_AFTER counts as answered then; a time ahead of the database's clock (the clock
# was stepped back) is brought to now; slots out of the window are dropped; then the rest is read.
_PRUNE_AND_READ = """
UPDATE kie_rate_slots s SET done = true, at = %(now)s
 WHERE s.account = %(account)s AND s.name = %(name)s AND NOT s.done
   AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = s.backend
                   AND (a.backend_start IS NULL OR s.backend_start IS NULL
                        OR a.backend_start = s.backend_start));
UPDATE kie_rate_slots SET done = true
 WHERE account = %(account)s AND name = %(name)s AND NOT done AND at <= %(now)s - %(stale)s;
UPDATE kie_rate_slots SET at = %(now)s
 WHERE account = %(account)s AND name = %(name)s AND at > %(now)s;
DELETE FROM kie_rate_slots
 WHERE account = %(account)s AND name = %(name)s AND done AND at <= %(now)s - %(period)s;
SELECT at, done FROM kie_rate_slots WHERE account = %(account)s AND name = %(name)s
"""

# ON CONFLICT: the same token again is a take whose commit's answer was lost with the connection.
_TAKE = """
INSERT INTO kie_rate_slots (account, name, token, at, done, backend, backend_start)
VALUES (%(account)s, %(name)s, %(token)s, %(now)s, false, pg_backend_pid(), %(backend_start)s)
ON CONFLICT (account, name, token) DO UPDATE
   SET at = EXCLUDED.at, done = false, backend = EXCLUDED.backend, backend_start = EXCLUDED.backend_start
"""

_FINISH = """
UPDATE kie_rate_slots SET done = true, at = extract(epoch FROM clock_timestamp())
 WHERE account = %(account)s AND name = %(name)s AND token = %(token)s
"""


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (a URL or a libpq ``key=value`` string)."""
    if "://" not in url:
        return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", url)
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:***@{host}" if ":" in userinfo else netloc
        query = re.sub(r"(password=)[^&]*", r"\1***", parts.query)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "(an unparsable database URL)"


def scrub(text: str, url: str) -> str:
    """``text`` (a database error's message) without ``url``'s password, raw or percent-decoded."""
    secrets = {url}
    if "://" in url:
        with contextlib.suppress(ValueError):
            netloc = urlsplit(url).netloc
            if "@" in netloc and ":" in netloc.rsplit("@", 1)[0]:
                raw = netloc.rsplit("@", 1)[0].split(":", 1)[1]
                secrets |= {raw, unquote(raw)}
        secrets |= set(re.findall(r"password=([^&]+)", url))
    else:
        secrets |= {m.strip("'") for m in re.findall(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", url)}
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def advisory_key(text: str) -> int:
    """A signed 64-bit advisory-lock key for ``text``."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


def _psycopg2() -> Any:
    try:
        import psycopg2
    except ImportError:
        raise KieCoordinationError(
            "KIE_COORDINATION_URL is set but psycopg2 is not installed: install kie-pipeline's "
            "'cluster' extra (pip install '.[cluster]' in its checkout) or psycopg2-binary."
        ) from None
    return psycopg2


class PgSession:
    """One connection to the coordination database, for short transactions run from worker threads.

    A thread lock runs one transaction at a time (a connection holds one transaction). A connection
    that breaks is made again once and the transaction run again; when the database cannot be
    reached, :class:`KieCoordinationError` says so, with the password masked.

    Args:
        url: a ``postgresql://`` URL or libpq connection string (a secret: never shown unmasked).
        purpose: named in the connection's ``application_name`` and in error messages.
        table: the table the session uses; created with ``ddl`` (under a lock) when missing.
        reconnect: make a broken connection again once (False where the connection itself holds
            something, such as a session advisory lock, that a new one would not).
    """

    def __init__(
        self,
        url: str,
        *,
        purpose: str,
        table: str = "kie_rate_slots",
        ddl: str = WINDOW_DDL,
        reconnect: bool = True,
    ) -> None:
        self._url = url
        self.purpose = purpose
        self._table = table
        self._ddl = ddl
        self._reconnect = reconnect
        self._lock = threading.Lock()
        self._conn: Any = None
        self._pid = os.getpid()
        #: When the current connection's backend started (with its pid, it names the backend).
        self.backend_start: Any = None

    def __repr__(self) -> str:
        return f"PgSession({mask_url(self._url)!r}, purpose={self.purpose!r})"

    @property
    def where(self) -> str:
        """The database, password masked (for messages)."""
        return mask_url(self._url)

    def _fail(self, doing: str, exc: BaseException) -> KieCoordinationError:
        detail = scrub(" ".join(str(exc).split()), self._url) or type(exc).__name__
        return KieCoordinationError(
            f"The coordination database {self.where} ({self.purpose}) failed while {doing}: "
            f"{type(exc).__name__}: {detail}"
        )

    def _open(self) -> Any:
        pg = _psycopg2()
        try:
            conn = pg.connect(
                self._url,
                connect_timeout=CONNECT_TIMEOUT,
                application_name=f"kie-pipeline {self.purpose}",
                # A database (or a network) that vanishes is noticed within about a minute, rather
                # than leaving a call hanging.
                keepalives=1,
                keepalives_idle=30,
                keepalives_interval=10,
                keepalives_count=3,
            )
        except pg.Error as exc:
            raise self._fail("connecting", exc) from None
        try:
            with conn.cursor() as cur:
                # A process frozen inside a transaction (stopped, swapped out) must not keep a
                # window's lock: the server ends such a transaction, and the session with it.
                cur.execute("SET idle_in_transaction_session_timeout = '30s'")
                # The server's side of the same: a client machine that vanished is noticed within
                # about a minute (the system default is two hours), which ends its backend and
                # releases its leases.
                cur.execute(
                    "SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; "
                    "SET tcp_keepalives_count = 3"
                )
                # Created only when missing: a user without CREATE on the schema (PostgreSQL 15's
                # default for public) can use tables made for it ahead of time.
                # Read once per connection: every slot taken on it records who holds it.
                cur.execute(
                    "SELECT to_regclass(%s) IS NULL, "
                    "(SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())",
                    (self._table,),
                )
                missing, self.backend_start = cur.fetchone()
                if missing:
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                    cur.execute(self._ddl)
            conn.commit()
        except pg.Error as exc:
            with contextlib.suppress(pg.Error):
                conn.close()
            raise self._fail("creating its tables", exc) from None
        return conn

    def run(self, work: Callable[[Any], T], doing: str = "updating a window") -> T:
        """Run ``work(cursor)`` in one transaction and commit; returns what ``work`` returns."""
        pg = _psycopg2()
        with self._lock:
            if self._pid != os.getpid():
                # A forked child must not use its parent's socket (nor close it: that would end
                # the parent's session).
                self._conn, self._pid = None, os.getpid()
            for attempt in (1, 2):
                fresh = self._conn is None
                if fresh:
                    self._conn = self._open()
                conn = self._conn
                try:
                    with conn.cursor() as cur:
                        result = work(cur)
                    conn.commit()
                    return result
                except pg.Error as exc:
                    if conn.closed:
                        self._conn = None
                        if attempt == 1 and not fresh and self._reconnect:
                            logger.info(
                                "The coordination database connection broke (%s); reconnecting", doing
                            )
                            continue
                    else:
                        with contextlib.suppress(pg.Error):
                            conn.rollback()
                    raise self._fail(doing, exc) from None
            raise AssertionError("unreachable")  # pragma: no cover

    @property
    def backend(self) -> int | None:
        """The server process of the current connection (None when not connected)."""
        conn = self._conn
        return None if conn is None or conn.closed else int(conn.get_backend_pid())

    def close(self) -> None:
        """Close the connection (the server then releases whatever it held)."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and self._pid == os.getpid():
                with contextlib.suppress(Exception):
                    conn.close()


class _Taking:
    """A take in a worker thread, and whether its caller is still there to use the slot."""

    __slots__ = ("abandoned", "lock", "taken")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.taken = False
        self.abandoned = False


_SESSIONS: dict[tuple[int, str], PgSession] = {}
_SESSIONS_LOCK = threading.Lock()


def shared_session(url: str) -> PgSession:
    """This process's connection for the rate windows of ``url`` (one, whatever the clients)."""
    with _SESSIONS_LOCK:
        key = (os.getpid(), url)
        session = _SESSIONS.get(key)
        if session is None:
            session = _SESSIONS[key] = PgSession(url, purpose="rate windows")
        return session


class PostgresSlidingWindowLimiter:
    """At most ``limit`` requests in any ``period``-second window at the server, for every process
    on every machine that uses the account ``account`` and the database at ``url``.

    The interface of :class:`~.ratelimit.SharedSlidingWindowLimiter` (:meth:`slot`,
    :meth:`acquire`, :meth:`pause`); see the module docstring for how it holds.

    Args:
        url: the coordination database (a secret: its repr and errors mask the password).
        account: the account's name in the table (:func:`~.ratelimit.account_id`: a hash).
        name: the window (``"create"``, ``"poll"``).
        limit: requests per window.
        period: the window (seconds).
        session: the connection to use (default: this process's one for ``url``).
    """

    def __init__(
        self,
        url: str,
        account: str,
        name: str,
        limit: int,
        period: float,
        *,
        session: PgSession | None = None,
    ) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("limit must be >= 1 and period > 0")
        self.account = account
        self.name = name
        self.limit = limit
        self.period = period
        self._session = session or shared_session(url)
        self._lock_key = advisory_key(f"kie-rate-window\n{account}\n{name}")
        self._paused_until = 0.0
        self._waiting: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return (
            f"PostgresSlidingWindowLimiter({self._session.where!r}, account={self.account!r}, "
            f"name={self.name!r}, limit={self.limit}, period={self.period:g})"
        )

    def _take(self, token: str) -> float | None:
        """(In a thread.) Take a slot for ``token`` (None), or say how long to wait first."""

        def work(cur: Any) -> float | None:
            cur.execute(
                "SELECT pg_advisory_xact_lock(%s); SELECT extract(epoch FROM clock_timestamp())::float8",
                (self._lock_key,),
            )
            now = float(cur.fetchone()[0])
            params = {
                "account": self.account,
                "name": self.name,
                "token": token,
                "now": now,
                "period": self.period,
                "stale": STALE_AFTER,
                "backend_start": self._session.backend_start,  # of the connection running this
            }
            cur.execute(_PRUNE_AND_READ, params)
            wait = window_wait(cur.fetchall(), self.limit, self.period, now, RECHECK)
            if wait is None:
                cur.execute(_TAKE, params)
            return wait

        return self._session.run(work, f"taking a slot of the {self.name} window")

    def _finish(self, token: str) -> None:
        """(In a thread.) The answer of ``token``'s request is back: its period starts now."""
        params = {"account": self.account, "name": self.name, "token": token}
        self._session.run(
            lambda cur: cur.execute(_FINISH, params), f"ending a slot of the {self.name} window"
        )

    def _finish_quietly(self, token: str) -> None:
        # Never raises: the request has been answered, and its answer (a task id that was paid
        # for) must reach the caller. The slot then ends when its connection's backend is gone
        # or after STALE_AFTER.
        try:
            self._finish(token)
        except KieCoordinationError as exc:
            logger.warning("Could not mark a request of the %s window answered: %s", self.name, exc)

    def _take_unless_abandoned(self, token: str, taking: _Taking) -> float | None:
        """(In a thread.) :meth:`_take`; a slot taken for a caller that has gone is ended at once."""
        wait = self._take(token)
        with taking.lock:
            taking.taken = wait is None
            abandoned = taking.abandoned
        if abandoned and wait is None:
            self._finish_quietly(token)
        return wait

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for one request (across machines); it ends when the answer is back.

        Raises:
            KieCoordinationError: the database could not be reached (nothing was sent).
        """
        token = uuid.uuid4().hex
        if self._waiting is None:
            self._waiting = asyncio.Lock()
        # One waiter per process asks the database (in arrival order); the others queue here, so a
        # process with hundreds of waiting requests costs the database one check at a time.
        async with self._waiting:
            while True:
                now = time.monotonic()
                if now < self._paused_until:
                    await asyncio.sleep(self._paused_until - now)
                    continue
                taking = _Taking()
                try:
                    wait = await asyncio.to_thread(self._take_unless_abandoned, token, taking)
                except asyncio.CancelledError:
                    # The thread cannot be stopped: whichever of it and us comes second ends a
                    # slot it took, so a cancelled request never holds one until STALE_AFTER.
                    with taking.lock:
                        taking.abandoned = True
                        taken = taking.taken
                    if taken:
                        threading.Thread(target=self._finish_quietly, args=(token,), daemon=True).start()
                    raise
                if wait is None:
                    break
                await asyncio.sleep(wait + random.uniform(0, 0.01))  # de-synchronise the machines
        try:
            yield
        finally:
            await asyncio.shield(asyncio.to_thread(self._finish_quietly, token))

    async def acquire(self) -> None:
        """Take a slot for a request that is over at once."""
        async with self.slot():
            pass

    def pause(self, seconds: float) -> None:
        """Take no slot for ``seconds`` in this process (after a 429 that said Retry-After)."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
