"""What the recorder decided about an envelope, and the counts a front-end keeps."""

from __future__ import annotations

import collections
import enum
from dataclasses import dataclass, field

__all__ = ["Outcome", "RecorderStats"]


class Outcome(enum.Enum):
    """What a listener does with one envelope."""

    NEW = "new"
    """Recorded in the database: ack, then dispatch."""
    DUPLICATE = "duplicate"
    """Seen before: ack, do not dispatch."""
    SPOOLED = "spooled"
    """The database was away; recorded in the local spool: ack, then dispatch."""
    NACKED = "nacked"
    """Not recorded anywhere: no ack (Slack redelivers), no dispatch."""
    REJECTED = "rejected"
    """The envelope cannot be stored (InvalidEnvelope): no ack, no dispatch; logged."""

    @property
    def ack(self) -> bool:
        return self in (Outcome.NEW, Outcome.DUPLICATE, Outcome.SPOOLED)

    @property
    def dispatch(self) -> bool:
        return self in (Outcome.NEW, Outcome.SPOOLED)


@dataclass
class RecorderStats:
    """Counts since start, for ``recorder demo`` and for tests."""

    received: int = 0
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    dispatched: int = 0
    handled: int = 0
    failed: int = 0
    recovered: int = 0
    drained: int = 0
    storage_errors: int = 0
