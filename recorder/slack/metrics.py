"""Prometheus metrics for the Slack listeners (the ``metrics`` extra).

Without ``prometheus_client`` the listeners record nothing here: they take
:data:`NO_METRICS` unless given a :class:`RecorderMetrics`.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from recorder.errors import MissingDependency

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["LATENCY_BUCKETS", "NO_METRICS", "Metrics", "RecorderMetrics"]

#: Seconds; acks are expected in single-digit milliseconds.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class Metrics:
    """What the listeners report. This base class reports nowhere."""

    def envelope(self, result: str) -> None:
        """One envelope's fate: new, duplicate, spooled, nacked or rejected."""

    def storage_error(self) -> None:
        """The database did not answer a record (the storage policy then applied)."""

    def handler(self, result: str) -> None:
        """A handler run finished: ``ok`` or ``failed``; ``recovered`` for a recovery claim."""

    def spool_depth(self, depth: int) -> None:
        """Envelopes waiting in the local spool for the database."""

    def pending(self, count: int) -> None:
        """Envelopes recorded and not completed in the database."""

    def spool_quarantined(self) -> None:
        """The database refused a spooled envelope; it moved to the spool's quarantine."""

    def record_seconds(self, seconds: float) -> None:
        """Time to record one envelope (database, or spool on failure)."""

    def ack_seconds(self, seconds: float) -> None:
        """Time from the listener receiving an envelope to its ack being sent."""


NO_METRICS = Metrics()


class RecorderMetrics(Metrics):
    """Prometheus collectors for the listeners.

    Parameters
    ----------
    registry
        Where to register; defaults to ``prometheus_client.REGISTRY``. Use
        :meth:`default` to share one set between several listeners in a
        process (registering the same names twice is an error).

    Raises
    ------
    MissingDependency
        ``prometheus_client`` is not installed (``pip install 'envelope-recorder[metrics]'``).
    """

    _default: RecorderMetrics | None = None
    _default_lock = threading.Lock()

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        try:
            import prometheus_client as prom
        except ImportError as exc:
            raise MissingDependency("prometheus_client", "metrics") from exc
        options: dict[str, Any] = {} if registry is None else {"registry": registry}
        self._envelopes = prom.Counter(
            "recorder_envelopes",
            "Envelopes received, by what the recorder decided.",
            ["result"],
            **options,
        )
        self._storage_errors = prom.Counter(
            "recorder_storage_errors",
            "Records the database did not answer; the storage policy applied.",
            **options,
        )
        self._handlers = prom.Counter(
            "recorder_handler_runs",
            "Handler runs, by result (ok, failed) and recovery claims (recovered).",
            ["result"],
            **options,
        )
        self._spool_depth = prom.Gauge(
            "recorder_spool_depth", "Envelopes in the local spool, not yet drained.", **options
        )
        self._quarantined = prom.Counter(
            "recorder_spool_quarantined",
            "Spooled envelopes the database refused, moved to the spool's quarantine.",
            **options,
        )
        self._pending = prom.Gauge(
            "recorder_pending_envelopes",
            "Envelopes recorded and not completed in the database.",
            **options,
        )
        self._record = prom.Histogram(
            "recorder_record_seconds",
            "Time to record one envelope.",
            buckets=LATENCY_BUCKETS,
            **options,
        )
        self._ack = prom.Histogram(
            "recorder_ack_seconds",
            "Time from receiving an envelope to sending its ack.",
            buckets=LATENCY_BUCKETS,
            **options,
        )

    @classmethod
    def default(cls) -> RecorderMetrics:
        """One process-wide set on the default registry."""
        with cls._default_lock:
            if cls._default is None:
                cls._default = cls()
            return cls._default

    def envelope(self, result: str) -> None:
        self._envelopes.labels(result=result).inc()

    def storage_error(self) -> None:
        self._storage_errors.inc()

    def handler(self, result: str) -> None:
        self._handlers.labels(result=result).inc()

    def spool_depth(self, depth: int) -> None:
        self._spool_depth.set(depth)

    def pending(self, count: int) -> None:
        self._pending.set(count)

    def spool_quarantined(self) -> None:
        self._quarantined.inc()

    def record_seconds(self, seconds: float) -> None:
        self._record.observe(seconds)

    def ack_seconds(self, seconds: float) -> None:
        self._ack.observe(seconds)


def resolve_metrics(metrics: Metrics | bool | None) -> Metrics:
    """``True``: the process-wide :class:`RecorderMetrics`; ``None``/``False``: none."""
    if metrics is True:
        return RecorderMetrics.default()
    if metrics is None or metrics is False:
        return NO_METRICS
    return metrics
