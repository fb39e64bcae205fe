"""Serving the emulator with uvicorn on 127.0.0.1: in a background thread (tests) or in the foreground."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import uvicorn

from .app import build_asgi
from .config import EmulatorConfig
from .state import Emulator


class EmulatorServer:
    """The emulator on a loopback port, in a background thread.

    >>> with EmulatorServer(EmulatorConfig(render_scale=0.1)) as server:
    ...     server.url  # http://127.0.0.1:PORT
    """

    def __init__(
        self, config: EmulatorConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.emulator = Emulator(config)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        cfg = uvicorn.Config(build_asgi(self.emulator), log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(cfg)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def config(self) -> EmulatorConfig:
        return self.emulator.config

    def start(self) -> EmulatorServer:
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="kie-emulator", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the Kie emulator did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sock.close()

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
