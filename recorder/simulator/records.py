"""What the Socket Mode simulator keeps: deliveries, acks, connections, tracked envelopes.

Plain records, written by the server (:mod:`recorder.simulator.server`) and
read through the public API (:class:`recorder.simulator.SocketModeSimulator`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal

from recorder.errors import MissingDependency

try:
    from aiohttp import web
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise MissingDependency("aiohttp", "slack") from exc

from recorder.simulator.envelopes import SimulatorError

__all__ = [
    "DEFAULT_APP_TOKEN",
    "DEFAULT_BOT_TOKEN",
    "Ack",
    "Connection",
    "ConnectionInfo",
    "Delivery",
    "DeliveryKind",
    "DisconnectReason",
    "SimulatorTimeout",
    "Tracked",
]

#: A syntactically valid app-level token, accepted by default.
DEFAULT_APP_TOKEN = "xapp-1-A0SIMAPP-1-simulated"
#: A bot token for clients that need one (slack_bolt's App calls ``auth.test``).
DEFAULT_BOT_TOKEN = "xoxb-0-simulated"

DisconnectReason = Literal["warning", "refresh_requested", "link_disabled"]
DeliveryKind = Literal["send", "broadcast", "retransmit", "retry", "redelivery"]


class SimulatorTimeout(SimulatorError, TimeoutError):
    """A wait ran out of time; the message says what was still missing."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One envelope frame written to one connection."""

    envelope_id: str
    connection_id: str
    sent_ns: int
    """``time.monotonic_ns()`` just before the frame was written."""
    kind: DeliveryKind
    """Why it was written: ``send``, ``broadcast``, ``retransmit``, ``retry`` or ``redelivery``."""


@dataclass(frozen=True, slots=True)
class Ack:
    """One acknowledgement received from a client."""

    envelope_id: str
    connection_id: str
    """The connection the ack came in on (not necessarily the one the envelope went out on)."""
    payload: dict[str, Any] | None
    """The response payload, when the ack carried one."""
    sent_ns: int
    """When the delivery it answers was written: the oldest unanswered delivery of
    the id on the ack's connection, else the oldest on any connection."""
    received_ns: int
    """``time.monotonic_ns()`` when the ack frame was read."""
    frame: dict[str, Any]
    """The whole ack frame as received."""

    @property
    def latency_ns(self) -> int:
        """Nanoseconds from the envelope frame written to the ack read."""
        return self.received_ns - self.sent_ns


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """One WebSocket connection, open or closed."""

    connection_id: str
    opened_ns: int
    closed_ns: int | None
    disconnect_reason: str | None
    """The reason of the ``disconnect`` frame sent on it, if any."""

    @property
    def open(self) -> bool:
        """Whether the connection is still open."""
        return self.closed_ns is None


@dataclass(eq=False)
class Connection:
    connection_id: str
    ws: web.WebSocketResponse
    opened_ns: int
    last_pong_ns: int | None = None
    greeted: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once ``hello`` is written (or the connection ended): nothing goes out before it."""
    closed_ns: int | None = None
    disconnect_reason: str | None = None

    def eligible(self) -> bool:
        return self.greeted.is_set() and self.closed_ns is None and self.disconnect_reason is None

    def info(self) -> ConnectionInfo:
        return ConnectionInfo(
            self.connection_id, self.opened_ns, self.closed_ns, self.disconnect_reason
        )


@dataclass(eq=False)
class Tracked:
    envelope: dict[str, Any]
    text: str
    chain: str
    """Envelopes with one chain key are one event: an ack of any settles them all."""
    outstanding: list[tuple[str, int]] = field(default_factory=list)
    """Deliveries not yet answered by an ack: (connection id, sent_ns), oldest first."""
    last_sent_ns: int | None = None
    acked: bool = False
    timer: asyncio.TimerHandle | None = None
