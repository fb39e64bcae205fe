"""Coordination across machines through PostgreSQL (``KIE_COORDINATION_URL``): the account-wide rate
windows (kie_pipeline/client/pg_window.py) and the batch lease (kie_pipeline/pipeline/coordination.py).

Separate OS processes stand in for machines: each has its own connection and its own limiter, and
they meet only in the database (a real PostgreSQL server on loopback, the ``postgres`` fixture) and
at the emulator, which counts every createTask's arrival. Each test uses its own account (the
emulator's URL is new per test) or its own random account name, so tests never share a window.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest

from kie_pipeline.client.errors import KieCoordinationError
from kie_pipeline.client.pg_window import RECHECK, PgSession, PostgresSlidingWindowLimiter, mask_url, scrub
from kie_pipeline.client.ratelimit import STALE_AFTER, account_id

#: One "machine": its own client and limiter on the shared database; createTask calls, each with
#: the time it was sent and the time its answer came back (recorded at the transport, inside the
#: limiter's slot), printed as JSON.
SENDER = """
import asyncio, json, sys, time
import httpx
from kie_pipeline.client import AsyncKieClient, RateLimits, RetryPolicy

url, key, db, count, limit, period = sys.argv[1:7]

class Recording(httpx.AsyncBaseTransport):
    def __init__(self):
        self.inner = httpx.AsyncHTTPTransport()
        self.times = []

    async def handle_async_request(self, request):
        sent = time.time()
        response = await self.inner.handle_async_request(request)
        if request.url.path.endswith("createTask"):
            self.times.append((sent, time.time()))
        return response

async def main():
    transport = Recording()
    client = AsyncKieClient(
        key, url, limits=RateLimits(create_limit=int(limit), create_period_s=float(period)),
        retry=RetryPolicy(max_attempts=1), shared_limit_url=db, transport=transport,
    )
    await asyncio.to_thread(client.create_limiter._session.run, lambda cur: None)  # connected
    print("ready", flush=True)
    sys.stdin.readline()  # every machine starts at once
    async with client:
        await asyncio.gather(
            *(client.create_task("nano-banana-pro", {"prompt": f"p{i}"}) for i in range(int(count)))
        )
    print(json.dumps(transport.times), flush=True)

asyncio.run(main())
"""


def _run_machines(emulator: Any, db: str, counts: list[int], limit: int, period: float) -> list[tuple]:
    """Start one process per count, release them together, return every (sent, answered) pair."""
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                SENDER,
                emulator.url,
                emulator.config.api_key,
                db,
                *map(str, (n, limit, period)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in counts
    ]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        times = []
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err[-2000:]
            times += [tuple(t) for t in json.loads(out.strip().splitlines()[-1])]
        return times
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _most_arrivals_in_a_window(times: list[tuple], period: float) -> int:
    """The most requests that could have arrived at the server within one window shorter than
    ``period``: a request arrives somewhere between its send and its answer, so a set of requests
    fits in such a window exactly when its latest send is less than ``period`` after its earliest
    answer. Anchored at each answer in turn, this counts the largest such set."""
    return max(
        (
            sum(1 for sent, answered in times if answered >= first and sent < first + period)
            for _, first in times
        ),
        default=0,
    )


@pytest.mark.parametrize("counts", [[5], [3, 3, 2]], ids=["one machine", "three machines"])
def test_machines_sharing_the_database_keep_the_account_within_its_window(postgres, emulator, counts) -> None:
    """Any number of processes, each its own limiter: no 429, no window over the limit (by the
    server's count and by the recorded times), and the busiest window holds the whole limit."""
    limit, period = 4, 1.0
    emulator.config.create_limit, emulator.config.create_period = limit, period
    times = _run_machines(emulator, postgres.url, counts, limit, period)
    stats = emulator.emulator.snapshot()
    assert stats["created"] == sum(counts) == len(times)
    assert stats["rate_limited"].get("createTask", 0) == 0
    assert stats["max_create_arrivals_in_window"] == limit  # the limit, used whole, never exceeded
    assert _most_arrivals_in_a_window(times, period) <= limit


def test_the_arrival_count_flags_a_window_over_the_limit() -> None:
    """The check above can fail: a request sent less than a period after an answer shares its window."""
    paced = [(0.0, 0.1), (0.0, 0.1), (0.5, 0.6), (1.2, 1.3)]
    assert _most_arrivals_in_a_window(paced, 1.0) == 3
    assert _most_arrivals_in_a_window([*paced, (1.05, 1.2)], 1.0) == 4
    assert _most_arrivals_in_a_window([(0.0, 0.1), (1.1, 1.2)], 1.0) == 1
    assert _most_arrivals_in_a_window([], 1.0) == 0


def _window_rows(db: str, account: str) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(db) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT name, done, backend FROM kie_rate_slots WHERE account = %s ORDER BY name, at", (account,)
        )
        rows = cur.fetchall()
    conn.close()
    return rows


def test_a_limiter_that_sent_nothing_leaves_no_trace(postgres, emulator) -> None:
    """Zero requests: a client with the URL that sent nothing writes no slot of its account."""
    from kie_pipeline.client import AsyncKieClient

    async def nothing() -> None:
        async with AsyncKieClient(emulator.config.api_key, emulator.url, shared_limit_url=postgres.url) as c:
            assert isinstance(c.create_limiter, PostgresSlidingWindowLimiter)
            assert isinstance(c.poll_limiter, PostgresSlidingWindowLimiter)

    asyncio.run(nothing())
    PostgresSlidingWindowLimiter(postgres.url, "other", "create", 1, 1.0)._finish("x")  # tables exist
    assert _window_rows(postgres.url, account_id(emulator.url, emulator.config.api_key)) == []


HOLDER = """
import asyncio, sys
from kie_pipeline.client.pg_window import PostgresSlidingWindowLimiter
async def main():
    async with PostgresSlidingWindowLimiter(sys.argv[1], sys.argv[2], "create", 1, float(sys.argv[3])).slot():
        print("in flight", flush=True)
        await asyncio.sleep(3600)
asyncio.run(main())
"""


def test_a_killed_holder_frees_its_in_flight_slot_one_period_after_its_death_is_seen(postgres) -> None:
    """A process SIGKILLed with a request in flight: its slot counts as answered when its backend
    is seen gone, and is free one period later (not after STALE_AFTER)."""
    account, period = uuid.uuid4().hex[:12], 0.3
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, postgres.url, account, str(period)], stdout=subprocess.PIPE, text=True
    )
    limiter = PostgresSlidingWindowLimiter(postgres.url, account, "create", 1, period)
    try:
        assert proc.stdout.readline().strip() == "in flight"
        assert limiter._take("probe-1") == RECHECK  # a live request in flight holds the slot
        (row,) = _window_rows(postgres.url, account)
        assert row[1] is False  # in flight
    finally:
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    # The server ends the dead process's backend shortly after its socket closes.
    deadline = time.monotonic() + 20
    while (wait := limiter._take("probe-2")) == RECHECK and time.monotonic() < deadline:
        time.sleep(0.02)
    assert wait is not None and wait <= period < STALE_AFTER / 10
    assert [done for _, done, _ in _window_rows(postgres.url, account)] == [True]  # answered, kept
    time.sleep(wait)
    assert limiter._take("probe-3") is None  # and the slot is free again


def _with_password(url: str, password: str) -> str:
    # The test server trusts loopback: a password in the URL is accepted and never checked, which
    # is all a leak test needs.
    return url.replace("postgres@", f"postgres:{password}@", 1)


def _everything_shown_or_written(env: Any, instance: Any, runs: list[Any], caplog: Any) -> str:
    """Every event, log message and file of the runs (the store, the tables, Dagster's storage,
    the temporary folder), and what pytest captured from the loggers."""
    shown = [str(e) for run in runs for e in run.all_events]
    shown += [e.message for run in runs for e in instance.all_logs(run.run_id)]
    written = b"".join(p.read_bytes() for p in env.rglob("*") if p.is_file())
    assert len(written) > 10_000  # the store, the tables, Dagster's event logs and runs
    return "\n".join([*shown, caplog.text, written.decode(errors="replace")])


def test_generated_images_with_kie_coordination_url_paces_and_leases_in_the_database(
    env, instance, emulator, postgres, monkeypatch, caplog
) -> None:
    """A batch materialized with KIE_COORDINATION_URL set (assets unchanged): its createTask and poll
    slots are rows of its account, its batch lease a row in the run's name, no window or lock file
    is written, and the URL's password is in no log, event, metadata, repr or file."""
    from .pipeline_helpers import Pipeline, metadata

    caplog.set_level(logging.DEBUG)
    password = "pw-LEAKCHECK-" + uuid.uuid4().hex
    monkeypatch.setenv("KIE_COORDINATION_URL", _with_password(postgres.url, password))
    pipe = Pipeline(instance)
    assert pipe.resources["kie"].rate_limit_url is not None
    assert pipe.resources["dataset"].store.coordination_url is not None
    pipe.manifest()
    run = pipe.batch("animals")
    md = metadata(run)
    assert md["images_succeeded"] == 3 and md["rate_limited_429"] == 0
    rows = _window_rows(postgres.url, account_id(emulator.url, emulator.config.api_key))
    # The 3 createTask slots are still in their 10-s window; polls may have been pruned down to
    # those of the last second.
    assert [name for name, _, _ in rows].count("create") == 3
    assert "poll" in {name for name, _, _ in rows} and all(done for _, done, _ in rows)
    leases = _lease_rows(postgres.url, "animals", f"Dagster run {run.run_id}")
    assert [(pid, released) for _, pid, released in leases] == [(os.getpid(), True)]
    assert not list((env / "tmp").rglob("*.window"))
    assert not list((env / "store" / "locks").glob("batch-*"))  # (row leases stay files: lease.py)
    everything = _everything_shown_or_written(env, instance, [run], caplog)
    everything += repr(pipe.resources["kie"]) + repr(pipe.resources["dataset"])
    everything += repr(pipe.resources["dataset"].task_store())
    assert password not in everything


def test_a_coordination_database_that_is_down_fails_the_batch_naming_it_masked(
    env, instance, emulator, monkeypatch, caplog
) -> None:
    """Nothing is generated without the database (never unlimited requests): the run fails, is
    retried by Dagster (the database may be restarting), and names the database, password masked."""
    import dagster as dg

    from kie_pipeline.assets import build_pipeline_assets

    from .pipeline_helpers import Pipeline

    caplog.set_level(logging.DEBUG)
    password = "pw-LEAKCHECK-" + uuid.uuid4().hex
    with socket.socket() as s:  # a port where no database listens
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    down_url = f"postgresql://postgres:{password}@127.0.0.1:{closed}/dagster"
    monkeypatch.setenv("KIE_COORDINATION_URL", down_url)
    quick = build_pipeline_assets(retry_policy=dg.RetryPolicy(max_retries=1, delay=0.01))
    pipe = Pipeline(instance, quick.assets)
    pipe.manifest()
    failed = pipe.batch("cities", raise_on_error=False)
    assert not failed.success and emulator.emulator.snapshot()["created"] == 0
    retried = [e for e in failed.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert len(retried) == 1
    # Each attempt's error (the last one's is the cause of "Exceeded max_retries") names it.
    errors = [
        str(e.event_specific_data) for e in failed.all_events if e.is_step_failure or e.is_step_up_for_retry
    ]
    assert errors and all(
        "KieCoordinationError" in error and f"postgresql://postgres:***@127.0.0.1:{closed}/dagster" in error
        for error in errors
    )
    with pytest.raises(KieCoordinationError) as caught:
        PostgresSlidingWindowLimiter(down_url, "acct", "create", 1, 1.0)._take("t")
    assert f"postgresql://postgres:***@127.0.0.1:{closed}/dagster (rate windows)" in str(caught.value)
    everything = _everything_shown_or_written(env, instance, [failed], caplog)
    everything += str(caught.value) + repr(PostgresSlidingWindowLimiter(down_url, "acct", "create", 1, 1.0))
    assert password not in everything


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://u:p%40ss@h:5432/db", "postgresql://u:***@h:5432/db"),
        (
            "postgresql://u@h/db?password=secret&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require",
        ),
        ("host=h user=u password='se cret' dbname=db", "host=h user=u password=*** dbname=db"),
        ("postgresql://h/db", "postgresql://h/db"),
    ],
)
def test_mask_url_hides_every_form_of_password(url, masked) -> None:
    assert mask_url(url) == masked
    secret = "p%40ss" if "p%40ss" in url else "secret" if "secret" in url else "se cret"
    assert secret not in scrub(f"FATAL: bad connection string {url} (p@ss)", url)


LEASE_HOLDER = """
import sys, time
from kie_pipeline.pipeline.coordination import CoordinatedTaskStore
from kie_pipeline.pipeline.lease import batch_lease
store = CoordinatedTaskStore(sys.argv[1], coordination_url=sys.argv[2])
with batch_lease(store, "animals", "Dagster run first-run"):
    print("held", flush=True)
    time.sleep(3600)
"""


def test_the_batch_lease_refuses_a_second_holder_by_name_until_the_first_is_killed(postgres) -> None:
    """Two "machines" (processes, each with its own store object on a shared store root): the second
    is refused, naming the first; another batch, or the same batch of another store, is free; once
    the first is SIGKILLed, the server releases its lease and the second gets it."""
    from kie_pipeline.pipeline.coordination import CoordinatedTaskStore
    from kie_pipeline.pipeline.lease import BatchLeaseHeld, batch_lease, lock_dir

    root = f"memory://bucket-{uuid.uuid4().hex[:8]}/kie"  # an object store of this test only
    store = CoordinatedTaskStore(root, coordination_url=postgres.url)
    proc = subprocess.Popen(
        [sys.executable, "-c", LEASE_HOLDER, root, postgres.url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(BatchLeaseHeld) as refused, batch_lease(store, "animals", "Dagster run second"):
            pytest.fail("the second holder got the lease")
        holder = json.loads(str(refused.value).split("(", 1)[1].split(")", 1)[0])
        assert holder["owner"] == "Dagster run first-run" and holder["pid"] == proc.pid
        assert holder["host"] == socket.gethostname() and holder["since"].endswith("+00:00")
        with batch_lease(store, "cities", "Dagster run second"):
            pass  # another batch of the same store
        other = CoordinatedTaskStore(f"{root}-other", coordination_url=postgres.url)
        with batch_lease(other, "animals", "Dagster run second"):
            pass  # the same batch name in another store
    finally:
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    deadline = time.monotonic() + 20
    while True:  # the server notices the closed socket and ends the dead holder's backend
        try:
            with batch_lease(store, "animals", "Dagster run second"):
                break
        except BatchLeaseHeld:
            assert time.monotonic() < deadline, "the killed holder's lease was never released"
            time.sleep(0.05)
    assert _lease_rows(postgres.url, "animals", "Dagster run second")  # named, then released
    assert not os.path.exists(lock_dir(store))  # no lock file was involved


def _lease_rows(db: str, batch: str, owner: str) -> list[tuple]:
    import psycopg2

    conn = psycopg2.connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT host, pid, released_at IS NOT NULL FROM kie_batch_leases "
                "WHERE batch = %s AND owner = %s",
                (batch, owner),
            )
            return cur.fetchall()
    finally:
        conn.close()


def test_the_batch_lease_fails_clearly_when_the_database_is_down(tmp_path) -> None:
    from kie_pipeline.pipeline.coordination import CoordinatedTaskStore
    from kie_pipeline.pipeline.lease import batch_lease

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    url = f"postgresql://kie:hunter2-secret@127.0.0.1:{closed}/dagster"
    store = CoordinatedTaskStore(str(tmp_path / "store"), coordination_url=url)
    with pytest.raises(KieCoordinationError) as caught, batch_lease(store, "animals", "run"):
        pytest.fail("generated without a lease")
    assert f"postgresql://kie:***@127.0.0.1:{closed}/dagster (batch lease animals)" in str(caught.value)
    assert "hunter2" not in str(caught.value) + repr(store)


def _terminate(db: str, backend: int | None) -> None:
    """End a server process as a dropped connection would, and wait until it is gone."""
    import psycopg2

    assert backend is not None
    conn = psycopg2.connect(db)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (backend,))
            deadline = time.monotonic() + 20
            while True:
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,))
                if cur.fetchone()[0] == 0:
                    return
                assert time.monotonic() < deadline, f"backend {backend} never ended"
                time.sleep(0.01)
    finally:
        conn.close()


def test_a_limiter_whose_connection_dropped_reconnects_once_and_keeps_the_window(postgres) -> None:
    """A dropped connection is made again within the call; the request taken on the old one
    counts as answered when its backend is seen gone, and keeps its slot one more period."""
    account, period = uuid.uuid4().hex[:12], 5.0
    session = PgSession(postgres.url, purpose="rate windows")
    limiter = PostgresSlidingWindowLimiter(postgres.url, account, "create", 2, period, session=session)
    assert limiter._take("a") is None
    old = session.backend
    _terminate(postgres.url, old)
    assert limiter._take("b") is None  # no error: reconnected once
    assert session.backend not in (None, old)
    assert [(done, backend == old) for _, done, backend in _window_rows(postgres.url, account)] == [
        (True, True),  # a: its backend is gone, answered when seen
        (False, False),  # b: in flight on the new connection
    ]
    wait = limiter._take("c")
    assert wait is not None and RECHECK < wait <= period  # a leaves the window one period after


def test_a_lease_whose_connection_dropped_is_taken_again_or_names_the_run_that_took_it(
    postgres, caplog
) -> None:
    from kie_pipeline.pipeline.coordination import _Lease

    root = f"memory://bucket-{uuid.uuid4().hex[:8]}/kie"
    first = _Lease(postgres.url, root, "animals", "Dagster run first")
    second = _Lease(postgres.url, root, "animals", "Dagster run second")
    try:
        assert first.try_take(first.session) is None
        assert first.check() and first.held  # nothing to do
        _terminate(postgres.url, first.session.backend)
        assert first.check() and first.held  # taken again on a new connection
        assert '"owner": "Dagster run first"' in second.try_take(second.session)  # its new row
        _terminate(postgres.url, first.session.backend)
        assert second.try_take(second.session) is None  # another run takes it meanwhile
        assert not first.check() and not first.held  # and the first knows, and says so
        assert '"owner": "Dagster run second"' in caplog.text and "two runs may be generating" in caplog.text
    finally:
        first.release()
        second.release()
    assert second.try_take(second.session) is None  # released
    second.release()


def test_the_client_and_the_pipeline_core_import_psycopg2_only_when_a_database_is_used() -> None:
    code = (
        "import sys, kie_pipeline.client, kie_pipeline.pipeline.lease, kie_pipeline.pipeline.coordination\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('psycopg2', 'dagster')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_a_request_cancelled_while_its_slot_is_being_taken_does_not_keep_it_in_flight(postgres) -> None:
    """Cancelled while the database takes its slot (the thread cannot be stopped): the slot it got
    is ended at once, not left in flight until STALE_AFTER."""
    import threading

    account = uuid.uuid4().hex[:12]
    limiter = PostgresSlidingWindowLimiter(postgres.url, account, "create", 1, 0.2)
    taking, take = threading.Event(), limiter._take

    def slow_take(token: str) -> float | None:
        taking.set()
        time.sleep(0.2)
        return take(token)

    limiter._take = slow_take  # type: ignore[method-assign]

    async def cancelled() -> None:
        waiter = asyncio.create_task(limiter.acquire())
        await asyncio.to_thread(taking.wait)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    asyncio.run(cancelled())
    deadline = time.monotonic() + 10
    while [done for _, done, _ in _window_rows(postgres.url, account)] != [True]:
        assert time.monotonic() < deadline, _window_rows(postgres.url, account)
        time.sleep(0.02)


def test_a_database_user_without_create_rights_uses_the_tables_made_for_it(postgres) -> None:
    """PostgreSQL 15 gives ordinary users no CREATE on the public schema: a user granted rows only
    paces and leases with tables an administrator made ahead; and, not allowed to see when other
    users' backends started, it still takes another user's request in flight for a live one."""
    import psycopg2

    from kie_pipeline.pipeline.coordination import _Lease

    account = uuid.uuid4().hex[:12]
    admin = PostgresSlidingWindowLimiter(postgres.url, account, "create", 1, 0.2)
    assert admin._take("admin") is None  # in flight, held by the superuser's backend
    root = f"memory://bucket-{uuid.uuid4().hex[:8]}/kie"
    made = _Lease(postgres.url, root, "setup", "setup")
    assert made.try_take(made.session) is None  # both tables exist now
    made.release()
    conn = psycopg2.connect(postgres.url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = 'kie_rows_only'")
        if cur.fetchone() is None:
            cur.execute("CREATE ROLE kie_rows_only LOGIN")
        cur.execute(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON kie_rate_slots, kie_batch_leases TO kie_rows_only"
        )
    conn.close()
    url = postgres.url.replace("postgres@", "kie_rows_only@", 1)
    limited = PostgresSlidingWindowLimiter(
        url, account, "create", 1, 0.2, session=PgSession(url, purpose="t")
    )
    assert limited._take("limited") == RECHECK  # the superuser's request is in flight, not dead
    admin._finish("admin")
    lease = _Lease(url, root, "animals", "Dagster run limited")
    try:
        assert lease.try_take(lease.session) is None
    finally:
        lease.release()
    with pytest.raises(KieCoordinationError, match="permission denied"):
        PgSession(url, purpose="t", table="kie_not_made_yet").run(lambda cur: None)


def test_the_cluster_extra_brings_psycopg2_at_the_pinned_versions() -> None:
    """`pip install -c constraints.txt '.[cluster]'` gives the coordination its database client."""
    import importlib.metadata
    import tomllib
    from pathlib import Path

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    repo = Path(__file__).resolve().parent.parent
    extras = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    pins = dict(
        (canonicalize_name(name), version.strip())
        for name, _, version in (
            line.partition("==") for line in (repo / "constraints.txt").read_text().splitlines()
        )
        if version
    )
    (cluster,) = [Requirement(r) for r in extras["cluster"]]
    assert cluster.name == "dagster-postgres" and cluster.specifier.contains(pins["dagster-postgres"])
    brings = [Requirement(r) for r in importlib.metadata.requires("dagster-postgres") or []]
    assert "psycopg2-binary" in {canonicalize_name(r.name) for r in brings} and pins["psycopg2-binary"]


def test_a_batch_whose_lease_another_run_took_submits_nothing_more(
    postgres, emulator, tmp_path, monkeypatch
) -> None:
    """The lease's connection drops mid-batch and another run takes the lease before it is taken
    again: the batch stops creating tasks (the other run may be creating the same rows), waits for
    and records what it created, and says why; a rerun continues the batch."""
    import pandas as pd

    from kie_pipeline.client import RateLimits
    from kie_pipeline.pipeline import coordination
    from kie_pipeline.pipeline.coordination import CoordinatedTaskStore, _Lease
    from kie_pipeline.pipeline.generation import generate_batch
    from kie_pipeline.pipeline.manifest import validate_manifest
    from kie_pipeline.pipeline.outcome import SystemicError

    from .conftest import make_client

    monkeypatch.setattr(coordination, "CHECK_EVERY", 0.05)
    store = CoordinatedTaskStore(str(tmp_path / "store"), coordination_url=postgres.url)
    rows = validate_manifest(pd.DataFrame([{"id": f"r{i}", "prompt": f"image {i}"} for i in range(12)]))
    held: list[_Lease] = []
    real_keep, real_check = _Lease.keep, _Lease.check
    stolen = threading.Event()

    def keep(self: _Lease) -> None:  # the lease the batch holds, to cut its connection below
        held.append(self)
        real_keep(self)

    def check(self: _Lease) -> bool:  # the batch's keeper looks only once the lease was taken
        stolen.wait(30)
        return real_check(self)

    monkeypatch.setattr(_Lease, "keep", keep)
    monkeypatch.setattr(_Lease, "check", check)
    thief = _Lease(postgres.url, store.root, "default", "Dagster run thief")

    async def go():
        # One createTask per 0.5 s: the lease is checked every 0.05 s, ten times between two.
        limits = RateLimits(create_limit=1, create_period_s=0.5)
        async with make_client(emulator, limits=limits) as client:
            batch = asyncio.create_task(generate_batch(client, store, rows, progress_interval=60))
            while emulator.emulator.snapshot()["created"] < 2:
                await asyncio.sleep(0.01)
            [lease] = held
            backend = lease.session.backend
            await asyncio.to_thread(_terminate, postgres.url, backend)
            # Another run takes the lease before the keeper can take it again.
            assert await asyncio.to_thread(thief.try_take, thief.session) is None
            stolen.set()
            with pytest.raises(SystemicError) as caught:
                await batch
            return caught.value

    try:
        error = asyncio.run(go())
    finally:
        thief.release()
    created = emulator.emulator.snapshot()["created"]
    assert 2 <= created < len(rows)
    summary = error.summary
    assert "held by another run" in str(error) and "Dagster run thief" in str(error)
    assert summary.succeeded == created and summary.not_submitted == len(rows) - created
    # Every task created before the stop is recorded.
    records = store.load_many(rows["request_key"].tolist())
    assert sum(r.task_id is not None for r in records.values()) == created
