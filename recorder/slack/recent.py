"""The ids this process has recorded lately, to drop retransmits without a database call.

Slack retransmits an envelope it has no ack for, and retries an event in a
new envelope with the same ``payload.event_id``; both are duplicates. Keys
are ``envelope:<id>`` and ``event:<id>``. Spooled envelopes are *pinned*:
remembered however long the outage lasts, until the database answers for them.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["RECENT_MAX_KEYS", "RECENT_TTL_SECONDS", "RecentKeys", "dedupe_keys", "event_id_of"]

#: How long this process remembers ids it recorded.
RECENT_TTL_SECONDS = 900.0
RECENT_MAX_KEYS = 100_000


def dedupe_keys(envelope_id: str, event_id: str | None) -> list[str]:
    keys = [f"envelope:{envelope_id}"]
    if event_id:
        keys.append(f"event:{event_id}")
    return keys


def event_id_of(frame: Mapping[str, Any]) -> str | None:
    """``payload.event_id`` of an ``events_api`` frame (the key Slack's retries share)."""
    if frame.get("type") != "events_api":
        return None
    payload = frame.get("payload")
    value = payload.get("event_id") if isinstance(payload, Mapping) else None
    return value if isinstance(value, str) and value else None


class RecentKeys:
    """A bounded, expiring set of dedupe keys, plus pinned keys that never expire."""

    def __init__(
        self,
        ttl: float = RECENT_TTL_SECONDS,
        max_keys: int = RECENT_MAX_KEYS,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max = max_keys
        self._clock = clock
        self._expiry: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._pinned: set[str] = set()
        self._lock = threading.Lock()

    def any_of(self, keys: Iterable[str]) -> bool:
        now = self._clock()
        with self._lock:
            for key in keys:
                if key in self._pinned:
                    return True
                expiry = self._expiry.get(key)
                if expiry is not None and expiry > now:
                    return True
        return False

    def add(self, keys: Iterable[str]) -> None:
        expiry = self._clock() + self._ttl
        with self._lock:
            for key in keys:
                self._expiry[key] = expiry
                self._expiry.move_to_end(key)
            while len(self._expiry) > self._max:
                self._expiry.popitem(last=False)

    def pin(self, keys: Iterable[str]) -> None:
        """Remember until :meth:`unpin_all_but` lets go (spooled envelopes)."""
        with self._lock:
            self._pinned.update(keys)

    def unpin_all_but(self, keep: set[str]) -> None:
        """Stop pinning keys not in ``keep``; they stay remembered for the TTL."""
        expiry = self._clock() + self._ttl
        with self._lock:
            for key in self._pinned - keep:
                self._expiry[key] = expiry
                self._expiry.move_to_end(key)
            self._pinned &= keep
