"""Serving the emulator with uvicorn on 127.0.0.1: in a background thread (tests) or in the foreground."""

from __future__ import annotations

import time

import httpx
import uvicorn

from kie_pipeline.serving import ThreadedServer

from .app import build_asgi
from .config import EmulatorConfig
from .state import Emulator


class EmulatorServer(ThreadedServer):
    """The emulator on a loopback port, in a background thread.

    >>> with EmulatorServer(EmulatorConfig(render_scale=0.1)) as server:
    ...     server.url  # http://127.0.0.1:PORT
    """

    name = "Kie emulator"

    def __init__(
        self, config: EmulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.emulator = Emulator(config)
        super().__init__(build_asgi(self.emulator), host=host, port=port)

    @property
    def config(self) -> EmulatorConfig:
        return self.emulator.config


def serve(config: EmulatorConfig, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Run the emulator in the foreground until interrupted."""
    uvicorn.run(build_asgi(Emulator(config)), host=host, port=port, log_level="warning", access_log=False)


def wait_until_up(url: str, timeout: float = 20.0) -> None:
    """Block until an emulator answers at ``url`` (for scripts that start it as a process)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            httpx.get(f"{url}/emulator/stats", timeout=1).raise_for_status()
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
