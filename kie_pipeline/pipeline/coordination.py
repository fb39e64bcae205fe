"""The batch lease across machines: a PostgreSQL session advisory lock (``KIE_COORDINATION_URL``).

A file lock guards the runs of one machine only; with the store on S3, runs on two machines could
generate one batch at once and pay twice for its rows. With a coordination database, the batch
lease is ``pg_try_advisory_lock`` on a connection of its own, held for the batch's generation:

- the lock's key is a hash of the store's root and the batch, so one batch of one store is one
  lease wherever the run is;
- the server releases the lock when the holder's connection ends: a finished run, a killed
  process, a lost machine (noticed by TCP keepalives within about a minute), so there is nothing
  to clean up;
- the holder writes its name (owner, e.g. the Dagster run id; host; pid; since, on the database's
  clock) to ``kie_batch_leases``, so a refused run names it, as with the file lease. A row is
  trusted only while its backend holds the lock (``pg_locks``): a dead holder's row names nobody.

While it holds the lease, a thread checks the connection every :data:`CHECK_EVERY` seconds. If the
connection dropped (the server then released the lock), it takes the lock again on a new
connection. Until it holds it again, or for good once another run took it (an error names that
run), :attr:`_Lease.problem` says why, and the batch submits no new row: what it already created is
waited for and recorded, and a rerun continues the batch.

:class:`CoordinatedTaskStore` is a :class:`~.store.TaskStore` that carries the database's URL, so
``lease.batch_lease`` dispatches on the store it is given and callers need no change.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

from kie_pipeline.client.errors import KieCoordinationError
from kie_pipeline.client.pg_window import PgSession, advisory_key

from .store import TaskStore

log = logging.getLogger("kie_pipeline.pipeline")

#: Seconds between checks that the lease's connection (and so the lock) is still there.
CHECK_EVERY = 10.0

LEASE_DDL = """
CREATE TABLE IF NOT EXISTS kie_batch_leases (
    lease_key bigint PRIMARY KEY,
    store text NOT NULL,
    batch text NOT NULL,
    owner text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    since timestamptz NOT NULL,
    backend integer NOT NULL,
    released_at timestamptz
)
"""

_CLAIM = """
INSERT INTO kie_batch_leases (lease_key, store, batch, owner, host, pid, since, backend)
VALUES (%(key)s, %(store)s, %(batch)s, %(owner)s, %(host)s, %(pid)s, now(), pg_backend_pid())
ON CONFLICT (lease_key) DO UPDATE SET
    store = EXCLUDED.store, batch = EXCLUDED.batch, owner = EXCLUDED.owner, host = EXCLUDED.host,
    pid = EXCLUDED.pid, since = EXCLUDED.since, backend = EXCLUDED.backend, released_at = NULL
"""

# The holder named by its row, if that row's backend is the one holding the lock now. A bigint
# advisory key shows in pg_locks as its high half (classid), low half (objid) and objsubid 1.
_HOLDER = """
SELECT l.owner, l.host, l.pid, to_char(l.since AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"+00:00"')
  FROM kie_batch_leases l
  JOIN pg_locks k ON k.pid = l.backend AND k.locktype = 'advisory' AND k.granted
       AND k.classid = %(hi)s::bigint::oid AND k.objid = %(lo)s::bigint::oid AND k.objsubid = 1
 WHERE l.lease_key = %(key)s
"""

_RELEASE = """
UPDATE kie_batch_leases SET released_at = now() WHERE lease_key = %(key)s AND backend = pg_backend_pid();
SELECT pg_advisory_unlock(%(key)s)
"""


class CoordinatedTaskStore(TaskStore):
    """A :class:`~.store.TaskStore` whose batch leases are held in the coordination database at
    ``coordination_url`` (a secret: never shown; see :func:`pg_batch_lease`)."""

    def __init__(
        self, root: str, *, storage_options: dict[str, Any] | None = None, coordination_url: str
    ) -> None:
        super().__init__(root, storage_options=storage_options)
        self.coordination_url = coordination_url

    def __repr__(self) -> str:
        return f"CoordinatedTaskStore({self.root!r}, coordination_url='***')"


def lease_key(store_root: str, batch: str) -> int:
    """The advisory-lock key of ``batch`` in the store at ``store_root``."""
    return advisory_key(f"kie-batch-lease\n{store_root}\n{batch}")


class _Lease:
    """One held batch lease: its connection, and the thread that keeps it."""

    def __init__(self, url: str, store_root: str, batch: str, owner: str) -> None:
        self.url = url
        self.batch = batch
        self.key = lease_key(store_root, batch)
        self.params = {
            "key": self.key,
            "hi": (self.key >> 32) & 0xFFFFFFFF,
            "lo": self.key & 0xFFFFFFFF,
            # The store's root may name a bucket or a path: the table keeps a hash of it.
            "store": hashlib.sha256(store_root.encode()).hexdigest()[:16],
            "batch": batch,
            "owner": owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        self.session = self._session()
        #: Whether :attr:`session`'s connection holds the lock.
        self.held = False
        #: Why the lease is not held any more (None while it is): the batch then submits nothing new.
        self.problem: str | None = None
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    def _session(self) -> PgSession:
        # Never made again behind our back: a new connection does not hold the lock.
        return PgSession(
            self.url,
            purpose=f"batch lease {self.batch}",
            table="kie_batch_leases",
            ddl=LEASE_DDL,
            reconnect=False,
        )

    def try_take(self, session: PgSession) -> str | None:
        """Take the lock and write our name (None), or the holder's description when it is taken."""

        def work(cur: Any) -> str | None:
            cur.execute("SELECT pg_try_advisory_lock(%(key)s)", self.params)
            if cur.fetchone()[0]:
                cur.execute(_CLAIM, self.params)
                return None
            cur.execute(_HOLDER, self.params)
            found = cur.fetchone()
            if found is None:  # it has just taken the lock and not yet written its name
                return "another run"
            owner, host, pid, since = found
            return json.dumps({"owner": owner, "host": host, "pid": pid, "since": since})

        holder = session.run(work, "taking a batch lease")
        self.held = holder is None  # only once committed: a connection that broke holds nothing
        return holder

    def keep(self) -> None:
        self._keeper = threading.Thread(target=self._keep, name=f"kie-lease-{self.batch}", daemon=True)
        self._keeper.start()

    def _keep(self) -> None:
        while not self._stop.wait(CHECK_EVERY) and self.check():
            pass

    def check(self) -> bool:
        """Check that the lease is still held, taking it again if its connection dropped; False
        once another run holds it (there is nothing left to keep)."""
        if self.held:
            try:
                self.session.run(lambda cur: cur.execute("SELECT 1"), "checking a batch lease")
                return True
            except KieCoordinationError as exc:
                log.warning("The lease of batch %r was lost: %s", self.batch, exc)
                self.held = False
        # The connection is gone, and with it the lock: take it again on a new one.
        self.session.close()
        self.session = self._session()
        try:
            holder = self.try_take(self.session)
        except KieCoordinationError as exc:
            log.error("The lease of batch %r could not be taken again: %s", self.batch, exc)
            self.problem = f"the lease of batch {self.batch!r} was lost with its database connection ({exc})"
            return True
        if holder is None:
            log.warning("The lease of batch %r has been taken again.", self.batch)
            self.problem = None
            return True
        log.error(
            "The lease of batch %r is held by another run now (%s): two runs may be generating this batch.",
            self.batch,
            holder,
        )
        self.problem = f"the lease of batch {self.batch!r} is held by another run now ({holder})"
        return False

    def release(self) -> None:
        self._stop.set()
        if self._keeper is not None:
            self._keeper.join()
        if not self.held:  # lost with its connection: the server has released it already
            self.session.close()
            return
        try:
            self.session.run(lambda cur: cur.execute(_RELEASE, self.params), "releasing a batch lease")
        except KieCoordinationError as exc:
            # The connection is gone, so the server has released the lock already.
            log.info("Releasing the lease of batch %r: %s", self.batch, exc)
        finally:
            self.session.close()


@contextlib.contextmanager
def pg_batch_lease(url: str, store_root: str, batch: str, owner: str) -> Iterator[_Lease]:
    """Hold the lease of ``batch`` (of the store at ``store_root``) in the database at ``url``.

    Raises:
        BatchLeaseHeld: another run holds it (named in the message: owner, host, pid, since).
        KieCoordinationError: the database could not be reached (nothing was generated).
    """
    from .lease import BatchLeaseHeld, held_message

    lease = _Lease(url, store_root, batch, owner)
    try:
        holder = lease.try_take(lease.session)
    except BaseException:
        lease.session.close()
        raise
    if holder is not None:
        lease.session.close()
        raise BatchLeaseHeld(held_message(batch, holder))
    lease.keep()
    try:
        yield lease
    finally:
        lease.release()
