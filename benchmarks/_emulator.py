"""Start the emulator as a separate process for benchmarks (so it does not share our GIL)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from collections.abc import Iterator

from kie_pipeline.emulator import wait_until_up


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def emulator_process(*args: str) -> Iterator[str]:
    """``python -m kie_pipeline.emulator`` on a free loopback port; yields its URL."""
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
