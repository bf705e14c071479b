"""A clock that moves only when a test says so, for leases, recovery and renewals.

Pass :meth:`ManualClock.now` as a buffer's or front-end's ``clock`` (UTC wall
time: ``received_at``, claims, lease cutoffs) and :meth:`ManualClock.monotonic`
as a front-end's ``monotonic`` (when recovery and renewals are due); then
:meth:`ManualClock.advance` makes a lease expire without waiting for it. The
front-end's background thread still wakes on the real clock (every
``tick_seconds``), so a test waits for the effect of an advance with a
condition (``wait_until``), never for a fixed time.
"""

from __future__ import annotations

import datetime as dt
import threading

__all__ = ["ManualClock"]


class ManualClock:
    """UTC wall time and monotonic seconds that advance together, only when told to.

    Parameters
    ----------
    start
        The wall time to start at (timezone-aware); default: now.
    """

    def __init__(self, start: dt.datetime | None = None) -> None:
        self._lock = threading.Lock()
        self._start = start or dt.datetime.now(dt.timezone.utc)
        if self._start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self._elapsed = 0.0

    def now(self) -> dt.datetime:
        """The current wall time (UTC)."""
        with self._lock:
            return self._start + dt.timedelta(seconds=self._elapsed)

    def monotonic(self) -> float:
        """Seconds since the clock was made, like :func:`time.monotonic`."""
        with self._lock:
            return self._elapsed

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass (not negative: neither clock goes back)."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._elapsed += seconds

    def __call__(self) -> dt.datetime:
        return self.now()
