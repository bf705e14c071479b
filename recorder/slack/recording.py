"""What every Slack listener does with an envelope, written once, free of slack_sdk.

:class:`EnvelopeRecorder` decides an envelope's fate before the ack (record
it, or apply the storage policy), tracks which envelopes have a handler
running, marks them complete, and does the background work: draining the
spool, renewing the claims of long handlers, retrying owed completions,
and claiming abandoned envelopes for recovery. The sync and async listeners
and the Bolt handlers are thin layers over it. It is thread-safe.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import logging
import queue
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from recorder.adapter import EventBufferAdapter, RecordResult
from recorder.adapters.sql import ClaimedEnvelope
from recorder.errors import ConfigurationError, InvalidEnvelope, StorageUnavailable
from recorder.slack.metrics import Metrics, resolve_metrics
from recorder.slack.spool import Spool, move_rows

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "DEFAULT_RECOVERY_INTERVAL",
    "DEFAULT_SPOOL_PATH",
    "EnvelopeRecorder",
    "OnStorageError",
    "Outcome",
    "RecorderFront",
    "RecorderStats",
]

logger = logging.getLogger("recorder.slack")

OnStorageError = Literal["spool", "nack", "raise"]
POLICIES: tuple[str, ...] = ("spool", "nack", "raise")

DEFAULT_SPOOL_PATH = "recorder-spool.db"
DEFAULT_LEASE_SECONDS = 300.0
DEFAULT_RECOVERY_INTERVAL = 30.0
DEFAULT_MAX_ATTEMPTS = 5
#: How long this process remembers ids it recorded, to drop retransmits
#: without a database round trip (and while the database is away).
RECENT_TTL_SECONDS = 900.0
RECENT_MAX_KEYS = 100_000
DRAIN_BATCH = 500
#: At most one warning per background action this often while the database is away.
BACKGROUND_WARNING_SECONDS = 30.0
#: How long the completer gathers finished envelopes into one statement.
COMPLETION_BATCH_SECONDS = 0.02
RECOVERY_BATCH = 100


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


class _RecentKeys:
    """A bounded, expiring set of envelope and event ids this process has recorded."""

    def __init__(self, ttl: float, max_keys: int) -> None:
        self._ttl = ttl
        self._max = max_keys
        self._expiry: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._pinned: set[str] = set()
        self._lock = threading.Lock()

    def any_of(self, keys: Iterable[str]) -> bool:
        now = time.monotonic()
        with self._lock:
            for key in keys:
                if key in self._pinned:
                    return True
                expiry = self._expiry.get(key)
                if expiry is not None and expiry > now:
                    return True
        return False

    def add(self, keys: Iterable[str]) -> None:
        expiry = time.monotonic() + self._ttl
        with self._lock:
            for key in keys:
                self._expiry[key] = expiry
                self._expiry.move_to_end(key)
            while len(self._expiry) > self._max:
                self._expiry.popitem(last=False)

    def pin(self, keys: Iterable[str]) -> None:
        """Remember until :meth:`unpin` (spooled envelopes, however long the outage)."""
        with self._lock:
            self._pinned.update(keys)

    def unpin_all_but(self, keep: set[str]) -> None:
        """Stop pinning keys not in ``keep``; they stay remembered for the TTL."""
        expiry = time.monotonic() + self._ttl
        with self._lock:
            for key in self._pinned - keep:
                self._expiry[key] = expiry
                self._expiry.move_to_end(key)
            self._pinned &= keep


def _writer_lock(buffer: EventBufferAdapter) -> contextlib.AbstractContextManager[Any]:
    # SQLEventBuffer queues its own writers on SQLite (recorder.writer), with
    # record's time bound; a second, unbounded lock here would hold the ack.
    return contextlib.nullcontext()


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


class EnvelopeRecorder:
    """Record-before-ack, the storage policy, completion and recovery for one listener.

    Parameters
    ----------
    buffer
        Where envelopes are recorded. Recovery needs an adapter with
        ``claim_stale`` and ``renew`` (:class:`~recorder.adapters.sql.SQLEventBuffer`);
        with any other adapter it is off.
    on_storage_error
        ``"spool"``, ``"nack"`` or ``"raise"`` (see :class:`~recorder.slack.RecordingListener`).
    spool_path
        The SQLite spool file for ``"spool"``.
    lease_seconds
        How long a dispatch may go without a sign of life (claims of running
        handlers are renewed every third of it) before recovery takes it over.
    max_attempts
        Recovery leaves an envelope alone once dispatched this many times.
    """

    def __init__(
        self,
        buffer: EventBufferAdapter,
        *,
        on_storage_error: OnStorageError = "spool",
        spool_path: str | Path = DEFAULT_SPOOL_PATH,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        recovery_interval: float = DEFAULT_RECOVERY_INTERVAL,
        max_attempts: int | None = DEFAULT_MAX_ATTEMPTS,
        metrics: Metrics | bool | None = None,
    ) -> None:
        if on_storage_error not in POLICIES:
            raise ConfigurationError(
                f"on_storage_error must be one of {', '.join(POLICIES)}, not {on_storage_error!r}"
            )
        if lease_seconds <= 0 or recovery_interval <= 0:
            raise ConfigurationError("lease_seconds and recovery_interval must be positive")
        self.buffer = buffer
        self.policy: OnStorageError = on_storage_error
        self.spool_path = Path(spool_path)
        self.lease_seconds = float(lease_seconds)
        self.recovery_interval = float(recovery_interval)
        self.max_attempts = max_attempts
        self.metrics = resolve_metrics(metrics)
        self.stats = RecorderStats()
        self._recent = _RecentKeys(RECENT_TTL_SECONDS, RECENT_MAX_KEYS)
        self._lock = threading.Lock()
        # envelope id -> True when its row lives in the spool
        self._inflight: dict[str, bool] = {}
        self._owed: set[str] = set()
        self._completions: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._completer: threading.Thread | None = None
        self._closed = False
        self._spool: Spool | None = None
        self._spool_lock = threading.Lock()
        self._next_recovery = 0.0
        self._next_renewal = time.monotonic() + self.lease_seconds / 3
        self._next_gauges = 0.0
        self._last_warned: dict[str, float] = {}
        self.recovery_supported = hasattr(buffer, "claim_stale") and hasattr(buffer, "renew")
        self._db_writes: contextlib.AbstractContextManager[Any] = _writer_lock(buffer)
        self._spool_writes = threading.Lock()

    # -- the receive path

    def record(self, envelope_id: str, text: str, frame: Mapping[str, Any]) -> Outcome:
        """Decide one envelope's fate; the caller acks when ``outcome.ack``.

        Raises
        ------
        StorageUnavailable
            Only under the ``"raise"`` policy, when the database did not answer.
        """
        self._count_received()
        keys = dedupe_keys(envelope_id, event_id_of(frame))
        if self._recent.any_of(keys):
            return self._decided(envelope_id, frame, Outcome.DUPLICATE)
        started = time.perf_counter()
        try:
            with self._db_writes:
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
        self._recent.add(keys)
        if result is RecordResult.DUPLICATE:
            return self._decided(envelope_id, frame, Outcome.DUPLICATE)
        with self._lock:
            self._inflight[envelope_id] = False
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
        with self._lock:
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
        if self.policy == "nack":
            return self._decided(envelope_id, frame, Outcome.NACKED)
        try:
            spool = self._open_spool()
            with self._spool_writes:
                result = spool.record(envelope_id, text)
        except InvalidEnvelope:
            return self._decided(envelope_id, frame, Outcome.REJECTED)
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
        self._recent.pin(keys)
        with self._lock:
            self._inflight[envelope_id] = True
        return self._decided(envelope_id, frame, Outcome.SPOOLED)

    def _decided(
        self, envelope_id: str, frame: Mapping[str, Any], outcome: Outcome, *, log: bool = True
    ) -> Outcome:
        self.metrics.envelope(outcome.value)
        with self._lock:
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

    def _count_received(self) -> None:
        with self._lock:
            self.stats.received += 1

    def acked(self, seconds: float) -> None:
        self.metrics.ack_seconds(seconds)

    # -- handler results

    def finish(self, envelope_id: str, ok: bool) -> None:
        """A handler run ended. On success the envelope is completed where its row lives.

        Completions in the database are batched (a few milliseconds' worth per
        statement): a commit per envelope would double the commits the
        database flushes, and the ack path waits behind those flushes.
        """
        with self._lock:
            spooled = self._inflight.get(envelope_id, False)
            if ok:
                self.stats.handled += 1
            else:
                self.stats.failed += 1
        self.metrics.handler("ok" if ok else "failed")
        if ok and not spooled:
            self._start_completer()
            self._completions.put(envelope_id)
            return
        try:
            if ok:
                self._complete_spooled(envelope_id)
        finally:
            # Only now: the drain skips in-flight rows, so a spooled row is
            # never moved between the handler finishing and it being marked.
            with self._lock:
                self._inflight.pop(envelope_id, None)

    def _complete_spooled(self, envelope_id: str) -> None:
        try:
            spool = self._open_spool()
            with self._spool_writes:
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

    def _start_completer(self) -> None:
        with self._lock:
            if self._completer is not None or self._closed:
                return
            self._completer = threading.Thread(
                target=self._complete_loop, name="recorder-completer", daemon=True
            )
            self._completer.start()

    def _complete_loop(self) -> None:
        while True:
            first = self._completions.get()
            if first is None:
                return
            time.sleep(COMPLETION_BATCH_SECONDS)
            self._complete_batch([first, *self._take_completions()])

    def _take_completions(self) -> list[str]:
        taken: list[str] = []
        while True:
            try:
                item = self._completions.get_nowait()
            except queue.Empty:
                return taken
            if item is None:
                # Keep the stop request for the loop.
                self._completions.put(None)
                return taken
            taken.append(item)

    def _complete_batch(self, envelope_ids: list[str]) -> None:
        if not envelope_ids:
            return
        try:
            with self._db_writes:
                complete_many = getattr(self.buffer, "complete_many", None)
                if complete_many is not None:
                    complete_many(envelope_ids)
                else:
                    for envelope_id in envelope_ids:
                        self.buffer.complete(envelope_id)
        except StorageUnavailable as exc:
            logger.warning(
                "%d envelopes handled; completion deferred, the database is unavailable: %s",
                len(envelope_ids),
                exc,
                extra={"envelope_ids": envelope_ids},
            )
            with self._lock:
                self._owed.update(envelope_ids)
        finally:
            with self._lock:
                for envelope_id in envelope_ids:
                    self._inflight.pop(envelope_id, None)

    # -- recovery and background work

    def claim_stale(self, limit: int = RECOVERY_BATCH) -> list[ClaimedEnvelope]:
        """Claim envelopes abandoned for longer than the lease, for dispatch here.

        Raises
        ------
        StorageUnavailable
            The database did not answer.
        """
        if not self.recovery_supported:
            return []
        with self._db_writes:
            claims: list[ClaimedEnvelope] = self.buffer.claim_stale(  # type: ignore[attr-defined]
                self.lease_seconds, limit, max_attempts=self.max_attempts
            )
        taken = []
        with self._lock:
            for claim in claims:
                # Running here already (its renewals missed while the database
                # was away): the claim keeps it alive, a second run would not.
                if claim.envelope_id in self._inflight:
                    continue
                self._inflight[claim.envelope_id] = False
                self.stats.recovered += 1
                taken.append(claim)
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
        now = time.monotonic()
        claims: list[ClaimedEnvelope] = []
        self._safely("retrying completions", self._retry_owed)
        if now >= self._next_renewal:
            self._next_renewal = now + self.lease_seconds / 3
            self._safely("renewing claims", self._renew)
        self._safely("draining the spool", self.drain)
        if force_recovery or now >= self._next_recovery:
            self._next_recovery = now + self.recovery_interval
            claims = self._safely("recovering envelopes", self.claim_stale) or []
        if now >= self._next_gauges:
            self._next_gauges = now + 5.0
            self._safely("updating gauges", self._update_gauges)
        return claims

    def flush(self) -> None:
        """Write queued completions, settle owed ones, and drain what can be drained."""
        self._complete_batch(self._take_completions())
        self._safely("retrying completions", self._retry_owed)
        self._safely("draining the spool", self.drain)

    def _safely(self, action: str, fn: Any) -> Any:
        try:
            result = fn()
        except StorageUnavailable as exc:
            # Every tick retries; during an outage say so once in a while, not twice a second.
            now = time.monotonic()
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

    def _retry_owed(self) -> None:
        with self._lock:
            owed = sorted(self._owed)
        for envelope_id in owed:
            with self._db_writes:
                self.buffer.complete(envelope_id)
            with self._lock:
                self._owed.discard(envelope_id)

    def _renew(self) -> None:
        with self._lock:
            main = [key for key, spooled in self._inflight.items() if not spooled]
            spooled = [key for key, spooled in self._inflight.items() if spooled]
        if main and self.recovery_supported:
            with self._db_writes:
                self.buffer.renew(main)  # type: ignore[attr-defined]
        if spooled:
            spool = self._open_spool()
            with self._spool_writes:
                spool.renew(spooled)

    def drain(self) -> int:
        """Move spooled envelopes that are done with (or abandoned) into the database.

        Returns how many rows left the spool.
        """
        if self._spool is None and not self.spool_path.exists():
            return 0
        spool = self._open_spool()
        moved = 0
        while True:
            with self._lock:
                running = [key for key, spooled in self._inflight.items() if spooled]
            rows = spool.drainable(self.lease_seconds, running, DRAIN_BATCH)
            if not rows:
                break
            with self._db_writes:
                move_rows(rows, self.buffer)
            ids = [row.envelope_id for row in rows]
            with self._spool_writes:
                spool.remove(ids)
            moved += len(rows)
            for row in rows:
                logger.info(
                    "envelope %s drained from the spool (%s)",
                    row.envelope_id,
                    row.status,
                    extra={"envelope_id": row.envelope_id, "status": row.status},
                )
            if len(rows) < DRAIN_BATCH:
                break
        if moved:
            with self._lock:
                self.stats.drained += moved
            # The database now answers for these ids; keep them recent, no longer pinned.
            self._repin_from_spool(spool)
            self.metrics.spool_depth(spool.depth())
        return moved

    def _repin_from_spool(self, spool: Spool) -> None:
        keys = spool.keys()
        self._recent.unpin_all_but(
            {key for envelope_id, event_id in keys for key in dedupe_keys(envelope_id, event_id)}
        )

    def _open_spool(self) -> Spool:
        with self._spool_lock:
            if self._spool is None:
                existed = self.spool_path.exists()
                self._spool = Spool(self.spool_path)
                if existed:
                    # Envelopes spooled by an earlier run: retransmits of them
                    # are duplicates until they are drained.
                    spooled = self._spool.keys()
                    self._recent.pin(
                        key
                        for envelope_id, event_id in spooled
                        for key in dedupe_keys(envelope_id, event_id)
                    )
            return self._spool

    def open_existing_spool(self) -> None:
        """At start: take over envelopes an earlier run left in the spool."""
        if self.policy == "spool" and self.spool_path.exists():
            self._safely("opening the spool", self._open_spool)

    def _update_gauges(self) -> None:
        if self._spool is not None:
            self.metrics.spool_depth(self._spool.depth())
        count = getattr(self.buffer, "count_pending", None)
        if count is not None:
            self.metrics.pending(count())

    def inflight(self) -> list[str]:
        with self._lock:
            return list(self._inflight)

    def close(self) -> None:
        """Stop the completer (writing what it holds) and close the spool."""
        with self._lock:
            self._closed = True
            completer = self._completer
        if completer is not None:
            self._completions.put(None)
            completer.join()
        self._complete_batch(self._take_completions())
        with self._spool_lock:
            if self._spool is not None:
                self._spool.close()
                self._spool = None


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
