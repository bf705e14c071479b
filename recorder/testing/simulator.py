"""The Socket Mode simulator, for tests: :mod:`recorder.simulator`, re-exported here.

The simulator lives outside the test kit so that ``recorder demo`` can use it
without importing test support; its guide is ``docs/testing.md``.
"""

from __future__ import annotations

from recorder.simulator import (
    Ack,
    ConnectionInfo,
    Delivery,
    EnvelopeFactory,
    SimulatorError,
    SimulatorTimeout,
    SocketModeSimulator,
)

__all__ = [
    "Ack",
    "ConnectionInfo",
    "Delivery",
    "EnvelopeFactory",
    "SimulatorError",
    "SimulatorTimeout",
    "SocketModeSimulator",
]
