"""``MemoryEventBuffer``: an in-process adapter with a TTL dedupe window.

For a single bot process, tests, and development. Nothing survives a restart
and nothing is shared between processes: use :class:`~recorder.adapters.sql.SQLEventBuffer`
or :class:`~recorder.adapters.redis.RedisEventBuffer` when several instances
share one Socket Mode stream.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from recorder.adapter import DONE, ClaimedEnvelope, EnvelopeInput, RecordResult, StoredEnvelope
from recorder.envelope import ParsedEnvelope, decode_stored, parse_envelope, validate_envelope_id
from recorder.errors import ConfigurationError, StorageUnavailable
from recorder.redaction import DEFAULT_REDACTION, Redaction
from recorder.settings import max_envelope_bytes_from_env, resolve_redaction

__all__ = ["MemoryEventBuffer"]


@dataclass(slots=True)
class _Entry:
    text: str
    event_id: str | None
    expires_at: float
    attempts: int
    attempt_started: float
    """Clock reading when the current attempt started (record, claim or renewal)."""


class MemoryEventBuffer:
    """Records envelopes in a dict guarded by one lock; entries expire after ``ttl_seconds``.

    Expired entries are swept from the front of an insertion-ordered dict on
    every call (amortised O(1) per call), so memory stays bounded by the
    envelopes of the last ``ttl_seconds`` under a steady stream. An expired
    envelope is forgotten entirely: ``seen`` is false, it leaves ``pending``,
    and recording it again (or a retry with its event id) is ``NEW``.

    It implements recovery (:class:`~recorder.adapter.RecoverableEventBuffer`)
    on the same clock: leases are measured in ``clock`` seconds, so tests of
    recovery logic move a fake clock instead of sleeping.

    After :meth:`close` the stored envelopes are dropped and every call raises
    :class:`~recorder.errors.StorageUnavailable`, so a closed buffer can never
    report an envelope as ``NEW``.

    Parameters
    ----------
    ttl_seconds
        The dedupe window, in seconds (positive).
    max_envelope_bytes
        Larger envelopes are :class:`~recorder.errors.InvalidEnvelope`. Defaults
        to ``RECORDER_MAX_ENVELOPE_BYTES`` or 1 MiB.
    redaction
        JSON paths masked or dropped in the stored copy
        (:class:`~recorder.redaction.Redaction`). By default ``payload.token``
        and the response URLs are masked, or what ``RECORDER_REDACT`` says;
        ``None`` or ``Redaction.none()`` stores envelopes as received. The
        caller's envelope is never modified.
    clock
        Monotonic seconds, for the TTL and recovery leases; injectable so
        tests can move time forward.

    Raises
    ------
    ConfigurationError
        ``ttl_seconds`` is not a positive number.
    """

    def __init__(
        self,
        ttl_seconds: float = 300,
        *,
        max_envelope_bytes: int | None = None,
        redaction: Redaction | None = DEFAULT_REDACTION,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int | float):
            raise ConfigurationError(f"ttl_seconds must be a number, not {ttl_seconds!r}")
        if not ttl_seconds > 0:
            raise ConfigurationError(f"ttl_seconds must be positive, not {ttl_seconds!r}")
        self.ttl_seconds = float(ttl_seconds)
        self.max_envelope_bytes = max_envelope_bytes or max_envelope_bytes_from_env()
        self.redaction = resolve_redaction(redaction)
        self._clock = clock
        self._lock = threading.Lock()
        self._closed = False
        # Insertion order is expiry order (one TTL, a monotonic clock), so the
        # sweep only ever looks at the front.
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._event_ids: dict[str, str] = {}
        # Insertion order is recording order: pending lists it oldest first.
        self._pending: OrderedDict[str, None] = OrderedDict()

    def parse(self, envelope_id: object, envelope: object) -> ParsedEnvelope:
        """Validate an envelope against this buffer's limits without storing it."""
        return parse_envelope(
            envelope_id, envelope, max_bytes=self.max_envelope_bytes, redaction=self.redaction
        )

    def record(self, envelope_id: str, envelope: EnvelopeInput) -> RecordResult:
        parsed = self.parse(envelope_id, envelope)
        with self._lock:
            now = self._open_and_swept()
            stored = self._store(parsed, now, attempts=1, done=False)
        return RecordResult.NEW if stored else RecordResult.DUPLICATE

    def _store(self, parsed: ParsedEnvelope, now: float, *, attempts: int, done: bool) -> bool:
        """Add one envelope unless its id or event id is held. Needs the lock."""
        event_id = parsed.columns["event_id"]
        if parsed.envelope_id in self._entries or (
            event_id is not None and event_id in self._event_ids
        ):
            return False
        self._entries[parsed.envelope_id] = _Entry(
            text=parsed.text,
            event_id=event_id,
            expires_at=now + self.ttl_seconds,
            attempts=attempts,
            attempt_started=now,
        )
        if event_id is not None:
            self._event_ids[event_id] = parsed.envelope_id
        if not done:
            self._pending[parsed.envelope_id] = None
        return True

    def seen(self, envelope_id: str) -> bool:
        envelope_id = validate_envelope_id(envelope_id)
        with self._lock:
            self._open_and_swept()
            return envelope_id in self._entries

    def delete(self, envelope_id: str) -> None:
        envelope_id = validate_envelope_id(envelope_id)
        with self._lock:
            self._open_and_swept()
            self._forget(envelope_id)

    def pending(self, limit: int | None = None) -> list[dict[str, Any]]:
        if limit is not None and limit < 0:
            raise ValueError("limit must be zero or more")
        with self._lock:
            self._open_and_swept()
            texts: list[str] = []
            for envelope_id in self._pending:
                if limit is not None and len(texts) >= limit:
                    break
                texts.append(self._entries[envelope_id].text)
        # Decoded outside the lock, and afresh each time: callers may mutate them.
        return [decode_stored(text) for text in texts]

    def complete(self, envelope_id: str) -> None:
        envelope_id = validate_envelope_id(envelope_id)
        with self._lock:
            self._open_and_swept()
            self._pending.pop(envelope_id, None)

    def complete_many(self, envelope_ids: Sequence[str]) -> None:
        ids = [validate_envelope_id(envelope_id) for envelope_id in envelope_ids]
        with self._lock:
            self._open_and_swept()
            for envelope_id in ids:
                self._pending.pop(envelope_id, None)

    def claim_stale(
        self, lease: float | dt.timedelta, limit: int = 100, *, max_attempts: int | None = None
    ) -> list[ClaimedEnvelope]:
        """Claim pending envelopes whose attempt started more than ``lease`` clock seconds ago."""
        seconds = lease.total_seconds() if isinstance(lease, dt.timedelta) else float(lease)
        if seconds < 0 or limit < 0:
            raise ValueError("lease and limit must be zero or more")
        claimed: list[tuple[str, str, int]] = []
        with self._lock:
            now = self._open_and_swept()
            for envelope_id in self._pending:
                if len(claimed) >= limit:
                    break
                entry = self._entries[envelope_id]
                if entry.attempt_started >= now - seconds:
                    continue
                if max_attempts is not None and entry.attempts >= max_attempts:
                    continue
                entry.attempts += 1
                entry.attempt_started = now
                claimed.append((envelope_id, entry.text, entry.attempts))
        return [ClaimedEnvelope(i, decode_stored(text), attempts) for i, text, attempts in claimed]

    def renew(self, envelope_ids: Sequence[str]) -> None:
        ids = [validate_envelope_id(envelope_id) for envelope_id in envelope_ids]
        with self._lock:
            now = self._open_and_swept()
            for envelope_id in ids:
                if envelope_id in self._pending:
                    self._entries[envelope_id].attempt_started = now

    def count_pending(self) -> int:
        with self._lock:
            self._open_and_swept()
            return len(self._pending)

    def restore(self, envelopes: Sequence[StoredEnvelope]) -> int:
        """Store envelopes with their state; their TTL starts now (this buffer's clock)."""
        parsed = [(self.parse(e.envelope_id, e.envelope_text), e) for e in envelopes]
        with self._lock:
            now = self._open_and_swept()
            return sum(
                self._store(p, now, attempts=e.attempts, done=e.status == DONE) for p, e in parsed
            )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._entries.clear()
            self._event_ids.clear()
            self._pending.clear()

    def __len__(self) -> int:
        """How many envelopes are held (unexpired), completed or not."""
        with self._lock:
            self._open_and_swept()
            return len(self._entries)

    def __enter__(self) -> MemoryEventBuffer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _open_and_swept(self) -> float:
        """Raise if closed, drop expired entries, and return the current time. Needs the lock."""
        if self._closed:
            raise StorageUnavailable("the memory event buffer is closed")
        now = self._clock()
        entries = self._entries
        while entries:
            envelope_id, entry = next(iter(entries.items()))
            if entry.expires_at > now:
                break
            self._forget(envelope_id)
        return now

    def _forget(self, envelope_id: str) -> None:
        entry = self._entries.pop(envelope_id, None)
        if entry is None:
            return
        if entry.event_id is not None and self._event_ids.get(entry.event_id) == envelope_id:
            del self._event_ids[entry.event_id]
        self._pending.pop(envelope_id, None)
