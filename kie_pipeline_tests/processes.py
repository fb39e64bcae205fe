"""Servers and CLI runs as subprocesses, for tests and benchmarks that run Dagster as a user does.

Each process runs in its own session, so the cleanup reaches its children too (the code servers of a
webserver or daemon, the step process of a run); its output goes to ``{logs}/{name}.log``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.3) -> Any:
    """``condition()``'s first truthy value, polled every ``every`` s; fails after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Processes:
    """Subprocesses started in the repository, logs in files, all stopped by :meth:`stop_all`."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``args`` (``env``: the whole environment; None: this process's)."""
        with open(self.logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started.append(proc)
        return proc

    def log(self, name: str, chars: int = 4000) -> str:
        """The end of ``name``'s output."""
        return (self.logs / f"{name}.log").read_text(errors="replace")[-chars:]

    def stop_all(self) -> None:
        for proc in self.started:  # SIGTERM first: the daemon and the webserver stop cleanly
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            # The whole group: the code servers they started, the orphaned step process of a killed run.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
