"""Where each envelope with a running handler lives, so its completion goes there.

An envelope is in flight from the moment it is recorded (or claimed by
recovery) until its completion has been written or handed over as owed.
While in flight its lease is renewed, recovery does not take it, and a
spooled one is not drained (its completion must land where its row is).
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterable

__all__ = ["InFlight", "Where"]


class Where(enum.Enum):
    """Where an in-flight envelope's row lives."""

    DATABASE = "database"
    """Recorded in the buffer: completions are batched there, leases renewed there."""
    SPOOL = "spool"
    """Recorded in the local spool during an outage: completed and renewed in the spool."""


class InFlight:
    """A thread-safe map of envelope id to :class:`Where`."""

    def __init__(self) -> None:
        self._where: dict[str, Where] = {}
        self._lock = threading.Lock()

    def add(self, envelope_id: str, where: Where) -> None:
        with self._lock:
            self._where[envelope_id] = where

    def add_new(self, envelope_id: str, where: Where) -> bool:
        """Add unless already in flight; return whether it was added."""
        with self._lock:
            if envelope_id in self._where:
                return False
            self._where[envelope_id] = where
            return True

    def where(self, envelope_id: str) -> Where | None:
        with self._lock:
            return self._where.get(envelope_id)

    def discard(self, envelope_ids: Iterable[str]) -> None:
        with self._lock:
            for envelope_id in envelope_ids:
                self._where.pop(envelope_id, None)

    def ids(self, where: Where | None = None) -> list[str]:
        with self._lock:
            return [key for key, value in self._where.items() if where is None or value is where]
