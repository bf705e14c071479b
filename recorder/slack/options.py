"""The recording options every Slack front-end takes, defined once.

:class:`RecorderOptions` holds them with their defaults and checks;
:class:`~recorder.slack.RecordingListener`, the async listener and the Bolt
handlers take the same keyword arguments and build one of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recorder.errors import ConfigurationError
from recorder.settings import DEFAULT_SPOOL_PATH, STORAGE_ERROR_POLICIES, OnStorageError
from recorder.slack.metrics import Metrics

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_RECOVERY_INTERVAL",
    "DEFAULT_SPOOL_PATH",
    "POLICIES",
    "TICK_SECONDS",
    "OnStorageError",
    "RecorderOptions",
]

# What a front-end does when the database does not answer a record, and the
# spool's default file, are settings: one definition for the library, the CLI
# and the environment (RECORDER_ON_STORAGE_ERROR, RECORDER_SPOOL_PATH).
POLICIES: tuple[str, ...] = STORAGE_ERROR_POLICIES
DEFAULT_LEASE_SECONDS = 300.0
DEFAULT_RECOVERY_INTERVAL = 30.0
DEFAULT_MAX_ATTEMPTS = 5
#: How often the background work looks for due work (completions owed, the
#: spool's drain); renewals and recovery run on their own, longer cadence.
TICK_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class RecorderOptions:
    """How a front-end records, and what it does when the database is away.

    Raises
    ------
    ConfigurationError
        An unknown policy, or a lease or interval that is not positive.
    """

    on_storage_error: OnStorageError = "spool"
    """``"spool"``, ``"nack"`` or ``"raise"`` (see :class:`~recorder.slack.RecordingListener`)."""
    spool_path: str | Path = DEFAULT_SPOOL_PATH
    """The SQLite spool file for ``"spool"``; kept across restarts, drained by the next run."""
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    """How long a dispatch may go without a sign of life before recovery takes it over;
    claims of running handlers are renewed every third of it."""
    recovery_interval: float = DEFAULT_RECOVERY_INTERVAL
    """Seconds between recovery runs (one runs at start)."""
    max_attempts: int | None = DEFAULT_MAX_ATTEMPTS
    """Recovery leaves an envelope alone once dispatched this many times."""
    metrics: Metrics | bool | None = None
    """``True`` for Prometheus metrics (the ``metrics`` extra), or a :class:`Metrics`."""
    recover: bool = True
    """Claim abandoned envelopes for another dispatch. Off where nothing could
    dispatch them again (HTTP mode: the request is gone)."""

    def __post_init__(self) -> None:
        if self.on_storage_error not in POLICIES:
            raise ConfigurationError(
                f"on_storage_error must be one of {', '.join(POLICIES)}, "
                f"not {self.on_storage_error!r}"
            )
        if not self.lease_seconds > 0 or not self.recovery_interval > 0:
            raise ConfigurationError("lease_seconds and recovery_interval must be positive")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigurationError("max_attempts must be at least 1, or None")

    @property
    def tick_seconds(self) -> float:
        """Seconds between two looks for due background work."""
        return min(TICK_SECONDS, self.recovery_interval)

    @property
    def renew_seconds(self) -> float:
        return self.lease_seconds / 3
