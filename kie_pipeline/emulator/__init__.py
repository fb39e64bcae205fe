"""A local emulator of the Kie.ai jobs API (same endpoints, JSON shapes, codes and limits).

Run it with ``python -m kie_pipeline.emulator --port 8765`` or, in tests, ``EmulatorServer``.
"""

from .config import FAIL_MARKER, STUCK_MARKER, EmulatorConfig, Faults
from .server import EmulatorServer, wait_until_up
from .state import Emulator

__all__ = [
    "FAIL_MARKER",
    "STUCK_MARKER",
    "Emulator",
    "EmulatorConfig",
    "EmulatorServer",
    "Faults",
    "wait_until_up",
]
