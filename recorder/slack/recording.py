"""What every Slack front-end does with an envelope, written once, free of slack_sdk.

:class:`EnvelopeRecorder` decides an envelope's fate before the ack (record
it, or apply the storage policy) and tracks where each envelope with a
running handler lives (:class:`~recorder.slack.inflight.Where`), so its
completion goes there. It composes three parts, each in its own module:

* :class:`~recorder.slack.recent.RecentKeys`: ids recorded lately, so
  retransmits are dropped without a database call;
* :class:`~recorder.slack.completions.Completions`: batched completions, owed
  ones retried;
* :class:`~recorder.slack.draining.SpoolDrain`: the local spool during an
  outage, drained (and poison rows quarantined) afterwards.

:meth:`EnvelopeRecorder.tick` does the background work that is due;
:mod:`recorder.slack.background` runs it for the front-ends. Recovery uses
only the :class:`~recorder.adapter.RecoverableEventBuffer` protocol; with an
adapter that does not implement it, recovery is off. It is thread-safe.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from recorder.adapter import (
    ClaimedEnvelope,
    EventBufferAdapter,
    ParsingEventBuffer,
    RecordResult,
    RecoverableEventBuffer,
)
from recorder.errors import InvalidEnvelope, StorageUnavailable
from recorder.slack.completions import Completions
from recorder.slack.draining import SpoolDrain
from recorder.slack.inflight import InFlight, Where
from recorder.slack.metrics import resolve_metrics
from recorder.slack.options import (
    DEFAULT_LEASE_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_RECOVERY_INTERVAL,
    DEFAULT_SPOOL_PATH,
    OnStorageError,
    RecorderOptions,
)
from recorder.slack.outcomes import Outcome, RecorderStats
from recorder.slack.recent import RecentKeys, dedupe_keys, event_id_of
from recorder.slack.spool import utc_now

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_RECOVERY_INTERVAL",
    "DEFAULT_SPOOL_PATH",
    "EnvelopeRecorder",
    "OnStorageError",
    "Outcome",
    "RecorderFront",
    "RecorderOptions",
    "RecorderStats",
]

logger = logging.getLogger("recorder.slack")

_T = TypeVar("_T")

#: At most one warning per background action this often while the database is away.
BACKGROUND_WARNING_SECONDS = 30.0
GAUGE_SECONDS = 5.0
RECOVERY_BATCH = 100


class EnvelopeRecorder:
    """Record-before-ack, the storage policy, completion and recovery for one front-end.

    Parameters
    ----------
    buffer
        Where envelopes are recorded. Recovery needs a
        :class:`~recorder.adapter.RecoverableEventBuffer`; with any other
        adapter it is off.
    options
        The recording options (:class:`~recorder.slack.options.RecorderOptions`).
    monotonic, clock
        The clocks: monotonic seconds for the background cadence and the
        recent-ids window, UTC wall time for the spool. Injectable for tests.

    Raises
    ------
    ConfigurationError
        ``"spool"`` with an adapter that has no ``parse``.
    """

    def __init__(
        self,
        buffer: EventBufferAdapter,
        options: RecorderOptions | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.buffer = buffer
        self.options = options or RecorderOptions()
        self.metrics = resolve_metrics(self.options.metrics)
        self.stats = RecorderStats()
        self._monotonic = monotonic
        self._stats_lock = threading.Lock()
        # Checked once: a runtime protocol check costs microseconds per call.
        # (Writers of one SQLite database queue inside the buffer, with
        # record's time bound: recorder.writer.)
        self._recoverable = buffer if isinstance(buffer, RecoverableEventBuffer) else None
        self.recent = RecentKeys(clock=monotonic)
        self.inflight = InFlight()
        self.completions = Completions(buffer, self.inflight.discard)
        self.spool: SpoolDrain | None = None
        if self.options.on_storage_error == "spool" or isinstance(buffer, ParsingEventBuffer):
            # Also under "nack" and "raise": a spool an earlier run left is drained.
            self.spool = SpoolDrain(
                self.spool_path,
                buffer,
                recent=self.recent,
                inflight=self.inflight,
                metrics=self.metrics,
                lease_seconds=self.lease_seconds,
                clock=clock,
            )
        now = monotonic()
        self._next_recovery = now
        self._next_renewal = now + self.options.renew_seconds
        self._next_gauges = now
        self._last_warned: dict[str, float] = {}

    # -- options, for the front-ends and tests

    @property
    def policy(self) -> OnStorageError:
        return self.options.on_storage_error

    @property
    def spool_path(self) -> Path:
        return Path(self.options.spool_path)

    @property
    def lease_seconds(self) -> float:
        return float(self.options.lease_seconds)

    @property
    def recovery_interval(self) -> float:
        return float(self.options.recovery_interval)

    @property
    def recovery_supported(self) -> bool:
        """Whether :meth:`claim_stale` can claim anything: a recoverable buffer, recovery on."""
        return self._recoverable is not None and self.options.recover

    # -- the receive path

    def record(self, envelope_id: str, text: str, frame: Mapping[str, Any]) -> Outcome:
        """Decide one envelope's fate; the caller acks when ``outcome.ack``.

        Raises
        ------
        StorageUnavailable
            Only under the ``"raise"`` policy, when the database did not answer.
        """
        with self._stats_lock:
            self.stats.received += 1
        keys = dedupe_keys(envelope_id, event_id_of(frame))
        if self.recent.any_of(keys):
            return self._decided(envelope_id, frame, Outcome.DUPLICATE)
        started = time.perf_counter()
        try:
            result = self.buffer.record(envelope_id, text)
        except InvalidEnvelope as exc:
            logger.error(
                "envelope %s rejected, not acked: %s",
                envelope_id,
                exc,
                extra=_extra(envelope_id, frame, Outcome.REJECTED),
            )
            return self._decided(envelope_id, frame, Outcome.REJECTED, log=False)
        except StorageUnavailable as exc:
            return self._storage_failed(envelope_id, text, frame, keys, exc)
        finally:
            self.metrics.record_seconds(time.perf_counter() - started)
        self.recent.add(keys)
        if result is RecordResult.DUPLICATE:
            return self._decided(envelope_id, frame, Outcome.DUPLICATE)
        self.inflight.add(envelope_id, Where.DATABASE)
        return self._decided(envelope_id, frame, Outcome.NEW)

    def _storage_failed(
        self,
        envelope_id: str,
        text: str,
        frame: Mapping[str, Any],
        keys: list[str],
        exc: StorageUnavailable,
    ) -> Outcome:
        self.metrics.storage_error()
        with self._stats_lock:
            self.stats.storage_errors += 1
        logger.warning(
            "database unavailable for envelope %s (policy %s): %s",
            envelope_id,
            self.policy,
            exc,
            extra=_extra(envelope_id, frame, None),
        )
        if self.policy == "raise":
            raise exc
        if self.policy == "nack" or self.spool is None:
            return self._decided(envelope_id, frame, Outcome.NACKED)
        try:
            result = self.spool.record(envelope_id, text)
        except InvalidEnvelope as invalid:
            logger.error(
                "envelope %s rejected, not acked: %s",
                envelope_id,
                invalid,
                extra=_extra(envelope_id, frame, Outcome.REJECTED),
            )
            return self._decided(envelope_id, frame, Outcome.REJECTED, log=False)
        except StorageUnavailable as spool_exc:
            logger.error(
                "envelope %s not acked: neither the database nor the spool %s answered: %s",
                envelope_id,
                self.spool_path,
                spool_exc,
                extra=_extra(envelope_id, frame, Outcome.NACKED),
            )
            return self._decided(envelope_id, frame, Outcome.NACKED, log=False)
        if result is RecordResult.DUPLICATE:
            return self._decided(envelope_id, frame, Outcome.DUPLICATE)
        # Pinned, not merely remembered: a retransmit must stay a duplicate
        # until the row is in the database, however long the outage lasts.
        self.recent.pin(keys)
        self.inflight.add(envelope_id, Where.SPOOL)
        return self._decided(envelope_id, frame, Outcome.SPOOLED)

    def _decided(
        self, envelope_id: str, frame: Mapping[str, Any], outcome: Outcome, *, log: bool = True
    ) -> Outcome:
        self.metrics.envelope(outcome.value)
        with self._stats_lock:
            self.stats.outcomes[outcome.value] += 1
            if outcome.dispatch:
                self.stats.dispatched += 1
        if log and logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "envelope %s: %s",
                envelope_id,
                outcome.value,
                extra=_extra(envelope_id, frame, outcome),
            )
        return outcome

    def acked(self, seconds: float) -> None:
        self.metrics.ack_seconds(seconds)

    # -- handler results

    def finish(self, envelope_id: str, ok: bool) -> None:
        """A handler run ended. On success the envelope is completed where its row lives.

        Completions in the database are batched (see
        :mod:`recorder.slack.completions`); one that arrives after
        :meth:`close` is written at once.
        """
        where = self.inflight.where(envelope_id)
        with self._stats_lock:
            if ok:
                self.stats.handled += 1
            else:
                self.stats.failed += 1
        self.metrics.handler("ok" if ok else "failed")
        if ok and where is not Where.SPOOL:
            # Leaves the in-flight map once written (or owed): until then its
            # lease is renewed and recovery leaves it alone.
            self.completions.add(envelope_id)
            return
        try:
            if ok and self.spool is not None:
                self._complete_spooled(self.spool, envelope_id)
        finally:
            # Only now: the drain skips in-flight rows, so a spooled row is
            # never moved between the handler finishing and it being marked.
            self.inflight.discard([envelope_id])

    def _complete_spooled(self, spool: SpoolDrain, envelope_id: str) -> None:
        try:
            spool.complete(envelope_id)
        except StorageUnavailable as exc:
            # The spool file itself failed: the row stays pending there and is
            # recovered after the drain; nothing better is possible.
            logger.error(
                "envelope %s handled but not marked complete in the spool: %s",
                envelope_id,
                exc,
                extra={"envelope_id": envelope_id},
            )

    # -- recovery and background work

    def claim_stale(self, limit: int = RECOVERY_BATCH) -> list[ClaimedEnvelope]:
        """Claim envelopes abandoned for longer than the lease, for dispatch here.

        Raises
        ------
        StorageUnavailable
            The database did not answer.
        """
        if self._recoverable is None or not self.options.recover:
            return []
        claims = self._recoverable.claim_stale(
            self.lease_seconds, limit, max_attempts=self.options.max_attempts
        )
        # One running here already (its renewals missed while the database was
        # away) keeps its claim alive; a second run would not.
        taken = [c for c in claims if self.inflight.add_new(c.envelope_id, Where.DATABASE)]
        with self._stats_lock:
            self.stats.recovered += len(taken)
        for claim in taken:
            self.metrics.handler("recovered")
            logger.info(
                "recovering envelope %s (attempt %d)",
                claim.envelope_id,
                claim.attempts,
                extra={"envelope_id": claim.envelope_id, "attempt": claim.attempts},
            )
        return taken

    def tick(self, *, force_recovery: bool = False) -> list[ClaimedEnvelope]:
        """Do the background work that is due; return claims for the caller to dispatch.

        Never raises for an unavailable database: it is logged, and retried
        on the next tick.
        """
        now = self._monotonic()
        claims: list[ClaimedEnvelope] = []
        self._safely("retrying completions", self.completions.retry_owed)
        if now >= self._next_renewal:
            self._next_renewal = now + self.options.renew_seconds
            self._safely("renewing claims", self._renew)
        self._safely("draining the spool", self.drain)
        if force_recovery or now >= self._next_recovery:
            self._next_recovery = now + self.recovery_interval
            claims = self._safely("recovering envelopes", self.claim_stale) or []
        if now >= self._next_gauges:
            self._next_gauges = now + GAUGE_SECONDS
            self._safely("updating gauges", self._update_gauges)
        return claims

    def drain(self) -> int:
        """Move spooled envelopes that are done with (or abandoned) into the database.

        Returns how many rows left the spool for the database.
        """
        if self.spool is None:
            return 0
        moved = self.spool.drain()
        if moved:
            with self._stats_lock:
                self.stats.drained += moved
        return moved

    def open_existing_spool(self) -> None:
        """At start: take over envelopes an earlier run left in the spool."""
        if self.spool is not None and self.policy == "spool":
            self._safely("opening the spool", self.spool.open_existing)

    def flush(self) -> None:
        """Write queued completions, settle owed ones, and drain what can be drained."""
        self.completions.flush()
        self._safely("retrying completions", self.completions.retry_owed)
        self._safely("draining the spool", self.drain)

    def _safely(self, action: str, fn: Callable[[], _T]) -> _T | None:
        try:
            result = fn()
        except StorageUnavailable as exc:
            # Every tick retries; during an outage say so once in a while, not twice a second.
            now = self._monotonic()
            if now - self._last_warned.get(action, -BACKGROUND_WARNING_SECONDS) >= (
                BACKGROUND_WARNING_SECONDS
            ):
                self._last_warned[action] = now
                logger.warning("%s failed; will retry: %s", action, exc)
            return None
        except Exception:
            logger.exception("%s failed; will retry", action)
            return None
        if self._last_warned.pop(action, None) is not None:
            logger.info("%s works again", action)
        return result

    def _renew(self) -> None:
        main = self.inflight.ids(Where.DATABASE)
        if main and self._recoverable is not None:
            self._recoverable.renew(main)
        if self.spool is not None:
            self.spool.renew(self.inflight.ids(Where.SPOOL))

    def _update_gauges(self) -> None:
        if self.spool is not None and (depth := self.spool.depth()) is not None:
            self.metrics.spool_depth(depth)
        if self._recoverable is not None:
            self.metrics.pending(self._recoverable.count_pending())

    def close(self) -> None:
        """Write every completion (waiting for the completer), drain once more, close the spool.

        A completion that arrives later is written at once by :meth:`finish`.
        """
        self.completions.close()
        self._safely("retrying completions", self.completions.retry_owed)
        self._safely("draining the spool", self.drain)
        owed = self.completions.owed()
        if owed:
            logger.error(
                "%d handled envelopes could not be marked complete before close; "
                "they stay pending and recovery runs them again",
                len(owed),
                extra={"envelope_ids": owed},
            )
        if self.spool is not None:
            self.spool.close()


def _extra(envelope_id: str, frame: Mapping[str, Any], outcome: Outcome | None) -> dict[str, Any]:
    extra: dict[str, Any] = {"envelope_id": envelope_id, "envelope_type": frame.get("type")}
    if outcome is not None:
        extra["outcome"] = outcome.value
    return extra


class RecorderFront:
    """What every listener and Bolt handler exposes of its :class:`EnvelopeRecorder`."""

    recorder: EnvelopeRecorder

    @property
    def buffer(self) -> EventBufferAdapter:
        return self.recorder.buffer

    @property
    def stats(self) -> RecorderStats:
        """Counts since start: received, outcomes, dispatched, handled, failed, recovered."""
        return self.recorder.stats
