"""Leases that keep two runs from generating the same batch, or creating the same row, at once.

Two runs of one batch would each create every row (Kie has no idempotency key), so:

- a **batch lease** is held for the whole of a batch's generation: a second run of the same batch
  fails at once, naming the run that holds it;
- beneath it, a **row lease** is held around each createTask and its record: a process that got
  past the batch lease anyway re-reads the row's record under the lease and never creates a row that
  another process has created or is creating.

Where the batch lease lives depends on the store (:func:`batch_lease` dispatches):

- With a coordination database (``KIE_COORDINATION_URL``: the store is a
  :class:`~.coordination.CoordinatedTaskStore`), the batch lease is a PostgreSQL session advisory
  lock held on a connection of its own (:mod:`.coordination`): it holds across machines, and the
  server releases it when the holder's connection ends (a SIGKILLed run, a lost machine).
- Otherwise it is a ``flock`` lock on a file, which the operating system releases when the holder
  dies. The lock files live in ``{store}/locks`` for a local store, and in this machine's temporary
  folder for an object store (flock cannot lock an S3 object): there they guard the runs of one
  machine only, and without a coordination database, across machines, the ``kie`` pool and one run
  per batch at a time (docs/cluster.md) are the guard.

Row leases are always files, in the same folder. Under a batch lease that holds cluster-wide, all
the rows of a batch are created by the one run that holds it, on one machine, so the row leases
only have to guard the processes of that run there; a database round trip per row would add
latency to every createTask and guard nothing more. (If the batch lease's connection drops while a
run holds it, the server releases it; :mod:`.coordination` takes it again, or logs which run took it.)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Protocol

from .store import TaskStore


class BatchLeaseHeld(RuntimeError):
    """Another run is generating this batch right now."""


class HeldLease(Protocol):
    """A batch lease being held: ``problem`` is None while it holds, else why it does not."""

    problem: str | None


class _FileLease:
    problem: str | None = None  # the kernel holds a flock for as long as the process lives


def lock_dir(store: TaskStore) -> str:
    """Where the lock files of ``store`` live (see the module docstring)."""
    if store.is_local:
        return os.path.join(store.local_root, "locks")
    digest = hashlib.sha256(store.root.encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), "kie-pipeline", "locks", digest)


def _open(path: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


@contextlib.contextmanager
def batch_lease(store: TaskStore, batch: str, owner: str) -> Iterator[HeldLease]:
    """Hold the lease of ``batch`` for the duration; raise :class:`BatchLeaseHeld` if it is taken.

    Yields the held lease: its ``problem`` is None while the lease holds, else why it does not any
    more (a database lease lost with its connection; a lock file cannot be lost).

    ``owner`` (e.g. the Dagster run id) is written where the refused run can read it (the lock file,
    or the coordination database's ``kie_batch_leases``) so that it can say who holds the lease.
    A :class:`~.coordination.CoordinatedTaskStore` holds it in its database, across machines (and
    raises :class:`~kie_pipeline.client.errors.KieCoordinationError` when that is unreachable);
    any other store, in a lock file (see the module docstring).
    """
    url = getattr(store, "coordination_url", None)
    if url:
        # Imported here: the database's client (psycopg2) is needed only with a coordination URL.
        from .coordination import pg_batch_lease

        with pg_batch_lease(url, store.root, batch, owner) as held:
            yield held
        return
    path = os.path.join(lock_dir(store), f"batch-{batch}.lock")
    fd = _open(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise BatchLeaseHeld(held_message(batch, holder)) from None
        info = {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "since": _now()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        try:
            yield _FileLease()
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def held_message(batch: str, holder: str) -> str:
    """What a run refused the lease of ``batch`` is told; ``holder`` describes who holds it."""
    return (
        f"Batch {batch!r} is being generated by another run right now ({holder}). Two runs of "
        "one batch would pay twice for its rows: wait for that run to finish, then run again "
        "(finished rows cost nothing)."
    )


class RowLeaseHeld(RuntimeError):
    """Another process is creating this row's task right now."""


class RowLease:
    """The lease of one row (request key) while its task is created and recorded.

    :meth:`acquire` raises :class:`RowLeaseHeld` at once if another process holds it; it may be
    taken in one thread and released in another (``flock`` belongs to the open file). The holder
    re-reads the row's record under the lease before creating anything, so the lock file is removed
    on release: a process that locked the removed file finds the record written and creates nothing.
    """

    def __init__(self, store: TaskStore, key: str) -> None:
        self.key = key
        self.path = os.path.join(lock_dir(store), "rows", key[:2], f"{key}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = _open(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RowLeaseHeld(f"another run is creating the task of request {self.key} right now") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.remove(self.path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def row_lease(store: TaskStore, key: str) -> Iterator[None]:
    """Hold the lease of one row for the duration (see :class:`RowLease`)."""
    lease = RowLease(store, key)
    lease.acquire()
    try:
        yield
    finally:
        lease.release()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
