"""A real PostgreSQL server for tests and benchmarks: ``initdb`` and ``pg_ctl`` in a temporary folder.

The machine has Debian's PostgreSQL binaries (``/usr/lib/postgresql/<version>/bin``). PostgreSQL
refuses to run as root, and CI runs as root: there the server runs as the ``postgres`` user (through
``runuser``), in a folder that user owns. It listens on 127.0.0.1 only, on a free port, with
``trust`` authentication (loopback, one test's throwaway cluster).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

#: The database every server starts with (the Dagster instance and the coordination tables share it).
DB_NAME = "dagster"


def postgres_bin() -> str | None:
    """The folder of the newest PostgreSQL server binaries on this machine, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    if found:
        return os.path.dirname(found[-1])
    on_path = shutil.which("pg_ctl")
    return os.path.dirname(on_path) if on_path else None


def why_no_postgres() -> str | None:
    """None when a server can be started here, else the reason (for ``pytest.skip``)."""
    if postgres_bin() is None:
        return "no PostgreSQL server binaries (initdb/pg_ctl) on this machine"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


@dataclass(frozen=True)
class PostgresServer:
    """A running server: connect with :attr:`url` (``postgresql://postgres@127.0.0.1:port/dagster``)."""

    host: str
    port: int
    user: str
    db: str
    data_dir: str

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.db}"

    def env(self) -> dict[str, str]:
        """The variables deploy/dagster-postgres.yaml (and dagster-cluster.yaml) read."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": "",
            "DAGSTER_PG_DB": self.db,
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_postgres(parent: str | None = None) -> Iterator[PostgresServer]:
    """Start a throwaway server (``initdb`` + ``pg_ctl start``), yield it, stop it and delete its data."""
    reason = why_no_postgres()
    if reason:
        raise RuntimeError(reason)
    bindir = postgres_bin()
    assert bindir is not None
    as_root = os.geteuid() == 0
    # As root the server's user must reach its folder, and pytest's tmp_path parents are 0700 for
    # root: the cluster then lives directly under /tmp.
    base = tempfile.mkdtemp(prefix="kie-pg-", dir="/tmp" if as_root else parent)
    data = os.path.join(base, "data")
    user = "postgres"
    prefix: list[str] = []
    if as_root:
        pg = pwd.getpwnam("postgres")
        os.chown(base, pg.pw_uid, pg.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    log = os.path.join(base, "server.log")
    try:
        subprocess.run(
            [*prefix, f"{bindir}/initdb", "-D", data, "-U", user, "-A", "trust", "-E", "UTF8", "--no-sync"],
            check=True,
            capture_output=True,
        )
        # The free port is free when picked, not when the server binds it: another pytest-xdist worker
        # (each starts its own server) or any process may take it in between; then another port.
        for attempt in range(5):
            options = (
                f"-h 127.0.0.1 -p {port} -k {base} -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=200"
            )
            start = [*prefix, f"{bindir}/pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", "60"]
            started = subprocess.run([*start, "start"], capture_output=True)
            if started.returncode == 0:
                break
            with open(log, errors="replace") as fh:
                taken = "could not bind" in fh.read()
            if not taken or attempt == 4:
                raise subprocess.CalledProcessError(started.returncode, start, started.stdout, started.stderr)
            port = _free_port()
        server = PostgresServer("127.0.0.1", port, user, DB_NAME, data)
        _create_db(bindir, prefix, server)
        yield server
    finally:
        subprocess.run(
            [*prefix, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
            capture_output=True,
        )
        shutil.rmtree(base, ignore_errors=True)


def _create_db(bindir: str, prefix: list[str], server: PostgresServer) -> None:
    for attempt in range(50):
        done = subprocess.run(
            [
                *prefix,
                f"{bindir}/createdb",
                *("-h", server.host, "-p", str(server.port), "-U", server.user),
                server.db,
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode == 0 or "already exists" in done.stderr:
            return
        time.sleep(0.1 * (attempt + 1))
    raise RuntimeError(f"could not create database {server.db!r}: {done.stderr.strip()}")
