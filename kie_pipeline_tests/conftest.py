"""Shared fixtures: a Kie emulator on a loopback port, fast clients, temporary stores."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import dagster as dg
import pytest

from kie_pipeline.client import AsyncKieClient, PollPolicy, RetryPolicy
from kie_pipeline.emulator import EmulatorConfig, EmulatorServer

from .postgres import PostgresServer, running_postgres, why_no_postgres

#: Client settings that keep tests fast: quick polls and backoffs (never wall-clock assertions).
FAST_POLL = PollPolicy(initial_s=0.02, max_s=0.1)
FAST_RETRY = RetryPolicy(backoff_initial_s=0.01, backoff_max_s=0.2)
FAST = {"poll": FAST_POLL, "retry": FAST_RETRY}


@pytest.fixture(scope="session", autouse=True)
def session_tmpdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The temporary folder of this session (of this xdist worker: each has its own session) for
    the project and the subprocesses the tests start: what the code writes under
    ``tempfile.gettempdir()/kie-pipeline`` (rate-limit windows, lock files, the fallback file of
    unrecorded tasks) is never shared with another worker or with another checkout's tests on the
    same machine. The ``env`` fixture narrows it to each test's folder."""
    tmp = tmp_path_factory.mktemp("tmp")
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = str(tmp)
    try:
        yield tmp
    finally:
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    """A fresh emulator: small images, fast tasks, Kie's documented limits."""
    with EmulatorServer(EmulatorConfig(render_scale=1 / 16, latency=(0.02, 0.1))) as server:
        yield server


def make_client(server: EmulatorServer, **options: object) -> AsyncKieClient:
    """An async client of ``server`` with fast polling (override anything with ``options``)."""
    return AsyncKieClient(server.config.api_key, server.url, **{**FAST, **options})  # type: ignore[arg-type]


@dataclass
class CallbackSink:
    """A plain HTTP server on loopback that keeps every POST body (a stand-in for a callback URL)."""

    url: str
    received: list[bytes]


@pytest.fixture
def callback_sink() -> Iterator[CallbackSink]:
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    # serve_forever checks for shutdown every poll_interval (0.5 s by default): each test's teardown
    # waited that long.
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        yield CallbackSink(f"http://127.0.0.1:{server.server_port}/cb", received)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def env(tmp_path: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    """KIE_* pointing at the emulator; the sample manifest, the store and DAGSTER_HOME in tmp_path."""
    from .pipeline_helpers import SAMPLE, write_manifest

    write_manifest(str(tmp_path / "prompts.csv"), SAMPLE)
    # Everything the project writes to the temporary folder (rate-limit windows, lock files, the
    # fallback file of unrecorded tasks) lands in this test's folder, is scanned by the key-leak
    # test, and is removed with it.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("KIE_API_KEY", emulator.config.api_key)
    monkeypatch.setenv("KIE_BASE_URL", emulator.url)
    monkeypatch.setenv("KIE_MANIFEST", str(tmp_path / "prompts.csv"))
    monkeypatch.setenv("KIE_STORE", str(tmp_path / "store"))
    (tmp_path / "home").mkdir()
    return tmp_path


@pytest.fixture(scope="session")
def empty_instance_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Dagster instance folder with its sqlite schemas created, made once: each test's instance
    starts as a copy (creating the schemas takes ~0.4 s, copying them ~0.05 s)."""
    home = tmp_path_factory.mktemp("empty_instance_home")
    with dg.DagsterInstance.local_temp(tempdir=str(home)) as inst:
        inst.get_dynamic_partitions("batches")  # touches every storage
    return home


@pytest.fixture
def instance(env: Path, empty_instance_home: Path) -> Iterator[dg.DagsterInstance]:
    """A real Dagster instance (sqlite) in ``env / "home"``, which subprocesses can open too."""
    shutil.copytree(empty_instance_home, env / "home", dirs_exist_ok=True)
    with dg.DagsterInstance.local_temp(tempdir=str(env / "home")) as inst:
        yield inst


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server on loopback for the whole session (skipped where none can start)."""
    reason = why_no_postgres()
    if reason:
        pytest.skip(reason)
    with running_postgres() as server:
        yield server


@pytest.fixture
def s3_endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real S3 protocol server (moto) on loopback with a bucket ``datasets``; yields its URL.

    Test credentials are in the environment (inherited by every process the test starts), and the
    default endpoint is a closed port: whatever does not get the store's options (``endpoint_url``)
    fails instead of reaching moto, or AWS.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1",
    }.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("FSSPEC_S3_ENDPOINT_URL", raising=False)
    # moto's backends are per process, not per server: without a reset a test would see the buckets
    # and objects of the tests before it in this process (or xdist worker).
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST")).close()
    boto3.client("s3", endpoint_url=url).create_bucket(Bucket="datasets")
    try:
        yield url
    finally:
        server.stop()
