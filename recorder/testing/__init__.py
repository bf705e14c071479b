"""Test support for bots and adapters: the Socket Mode simulator, a fake Slack
for HTTP-mode apps, the adapter conformance suite, fault injection for backends,
and a clock tests move by hand.

Names load lazily, so the conformance suite needs no Slack dependencies and
the simulator needs no pytest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Type checkers do not run __getattr__; these give users real types, not Any.
    # "X as X" marks them as re-exported under strict mypy (no implicit re-export).
    from recorder.testing.clock import ManualClock as ManualClock
    from recorder.testing.conformance import AdapterConformance as AdapterConformance
    from recorder.testing.conformance import CrossProcessConformance as CrossProcessConformance
    from recorder.testing.conformance import TTLConformance as TTLConformance
    from recorder.testing.faults import TcpProxy as TcpProxy
    from recorder.testing.recovery import RecoveryConformance as RecoveryConformance
    from recorder.testing.simulator import SocketModeSimulator as SocketModeSimulator
    from recorder.testing.slack_http import SlackHttpSender as SlackHttpSender

_EXPORTS = {
    "SocketModeSimulator": "recorder.testing.simulator",
    "AdapterConformance": "recorder.testing.conformance",
    "TTLConformance": "recorder.testing.conformance",
    "CrossProcessConformance": "recorder.testing.conformance",
    "RecoveryConformance": "recorder.testing.recovery",
    "TcpProxy": "recorder.testing.faults",
    "SlackHttpSender": "recorder.testing.slack_http",
    "ManualClock": "recorder.testing.clock",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
