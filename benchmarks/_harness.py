"""What the benchmark scripts share: the emulator as a separate process, its settings, a manifest."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pandas as pd

from kie_pipeline.emulator import wait_until_up

#: Kie's documented limit (20 createTask per 10 s) and a 5-15 s generation latency.
KIE_LIMITS = ("--create-limit", "20", "--create-period", "10", "--latency", "5,15", "--render-scale", "0.05")
#: No latency and no limits: what is measured is our own overhead.
UNLIMITED = (
    "--latency",
    "0,0",
    "--create-limit",
    "1000000",
    "--poll-limit",
    "1000000",
    "--render-scale",
    "0.02",
)
#: Dagster's console logger at ERROR: the scripts print their own reports.
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def emulator_process(*args: str) -> Iterator[str]:
    """``python -m kie_pipeline.emulator`` on a free loopback port (so it does not share our GIL)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kie_pipeline.emulator", "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, timeout=60)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def point_at(url: str, work: str, rows: int, batches: int = 1) -> None:
    """Write a manifest of ``rows`` rows in ``batches`` batches and point KIE_* at it and the emulator."""
    pd.DataFrame(
        {
            "id": [f"r{i:05d}" for i in range(rows)],
            "batch": [f"part{i % batches:02d}" for i in range(rows)],
            "prompt": [f"benchmark image {i}" for i in range(rows)],
        }
    ).to_csv(f"{work}/prompts.csv", index=False)
    os.environ.update(
        KIE_API_KEY="emulator-key",
        KIE_BASE_URL=url,
        KIE_MANIFEST=f"{work}/prompts.csv",
        KIE_STORE=f"{work}/store",
    )


def materialize(
    instance: dg.DagsterInstance, selection: str, partition: str | None = None, **kie: Any
) -> dict:
    """Materialize one asset (or partition) quietly; returns its materialization metadata."""
    from kie_pipeline.definitions import ASSETS, build_resources

    result = dg.materialize(
        ASSETS,
        selection=[selection],
        partition_key=partition,
        resources=build_resources(rate_limit_dir=None, **kie),
        instance=instance,
        run_config=QUIET,
    )
    md = result.asset_materializations_for_node(selection)[0].metadata
    return {k: getattr(v, "value", v) for k, v in md.items()}
