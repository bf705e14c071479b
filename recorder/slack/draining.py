"""The spool side of the recorder: record there during an outage, drain back after.

:class:`SpoolDrain` opens the spool file on first need (or at start, when an
earlier run left one), records envelopes there through the target buffer's
own parser, marks them complete or renews their claims there, and drains
rows that are done with into the buffer. A row the buffer refuses is
quarantined in the spool file with its reason and reported once (an error
log line and the ``recorder_spool_quarantined_total`` metric); it never holds
the other rows back.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from recorder.adapter import (
    DONE,
    EventBufferAdapter,
    ParsingEventBuffer,
    RecordResult,
    RecoverableEventBuffer,
    StoredEnvelope,
)
from recorder.errors import ConfigurationError, InvalidEnvelope
from recorder.slack.inflight import InFlight, Where
from recorder.slack.metrics import Metrics
from recorder.slack.recent import RecentKeys, dedupe_keys
from recorder.slack.spool import Spool, utc_now

__all__ = ["DRAIN_BATCH", "SpoolDrain", "move"]

logger = logging.getLogger("recorder.slack")

DRAIN_BATCH = 500

Refused = list[tuple[StoredEnvelope, str]]


def move(rows: Sequence[StoredEnvelope], target: EventBufferAdapter) -> tuple[list[str], Refused]:
    """Store spooled rows in ``target``; return the ids stored (or already there) and the refused.

    A recoverable target gets each row with its state (``restore``); any
    other adapter gets ``record`` and, for handled rows, ``complete``. When a
    batch is refused, its rows are tried one by one, so one bad row costs
    the others nothing.

    Raises
    ------
    StorageUnavailable
        The target did not answer; the rows stay spooled (moving is idempotent).
    """
    if not rows:
        return [], []
    try:
        _store(rows, target)
        return [row.envelope_id for row in rows], []
    except InvalidEnvelope as exc:
        if len(rows) == 1:
            return [], [(rows[0], str(exc))]
    stored: list[str] = []
    refused: Refused = []
    for row in rows:
        try:
            _store([row], target)
        except InvalidEnvelope as exc:
            refused.append((row, str(exc)))
        else:
            stored.append(row.envelope_id)
    return stored, refused


def _store(rows: Sequence[StoredEnvelope], target: EventBufferAdapter) -> None:
    if isinstance(target, RecoverableEventBuffer):
        target.restore(rows)
        return
    for row in rows:
        if target.record(row.envelope_id, row.envelope_text) is RecordResult.NEW and (
            row.status == DONE
        ):
            target.complete(row.envelope_id)


class SpoolDrain:
    """The spool file, opened lazily, and the drain back into the buffer.

    Raises
    ------
    ConfigurationError
        ``buffer`` has no ``parse`` (:class:`~recorder.adapter.ParsingEventBuffer`):
        the spool could not apply its limits and redaction.
    """

    def __init__(
        self,
        path: Path,
        buffer: EventBufferAdapter,
        *,
        recent: RecentKeys,
        inflight: InFlight,
        metrics: Metrics,
        lease_seconds: float,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        if not isinstance(buffer, ParsingEventBuffer):
            raise ConfigurationError(
                f"on_storage_error='spool' needs an adapter with parse() (its limits and "
                f"redaction apply to spooled envelopes); {type(buffer).__name__} has none: "
                f"add it, or use on_storage_error='nack'"
            )
        self.path = path
        self._parse = buffer.parse
        self._buffer = buffer
        self._recent = recent
        self._inflight = inflight
        self._metrics = metrics
        self._lease_seconds = lease_seconds
        self._clock = clock
        self._spool: Spool | None = None
        self._open_lock = threading.Lock()
        self._writes = threading.Lock()
        self._closed = False

    # -- the spool file

    def _open(self) -> Spool:
        with self._open_lock:
            if self._spool is None:
                existed = self.path.exists()
                self._spool = Spool(self.path, clock=self._clock)
                if existed:
                    # Envelopes spooled by an earlier run: retransmits of them
                    # are duplicates until they are drained.
                    self._recent.pin(self._pinned_keys(self._spool))
            return self._spool

    def open_existing(self) -> None:
        """At start: take over envelopes an earlier run left in the spool."""
        if self.path.exists():
            self._open()

    @staticmethod
    def _pinned_keys(spool: Spool) -> set[str]:
        return {
            key
            for envelope_id, event_id in spool.dedupe_keys()
            for key in dedupe_keys(envelope_id, event_id)
        }

    def record(self, envelope_id: str, text: str) -> RecordResult:
        """Spool an envelope, parsed by the buffer's own parser first.

        Raises
        ------
        InvalidEnvelope
            The buffer would refuse it; nothing touched the disk.
        StorageUnavailable
            The spool file failed.
        """
        parsed = self._parse(envelope_id, text)
        spool = self._open()
        with self._writes:
            return spool.record(parsed)

    def complete(self, envelope_id: str) -> None:
        if self._closed:
            # A handler that outlived close(): mark its row all the same.
            late = Spool(self.path, clock=self._clock)
            try:
                late.complete(envelope_id)
            finally:
                late.close()
            return
        spool = self._open()
        with self._writes:
            spool.complete(envelope_id)

    def renew(self, envelope_ids: Sequence[str]) -> None:
        if envelope_ids:
            spool = self._open()
            with self._writes:
                spool.renew(envelope_ids)

    def depth(self) -> int | None:
        """Envelopes waiting in the spool, or None when it is not open."""
        return None if self._spool is None else self._spool.depth()

    # -- the drain

    def drain(self) -> int:
        """Move rows that are done with (or abandoned) into the buffer; return how many left.

        Raises
        ------
        StorageUnavailable
            The buffer or the spool did not answer; the next tick retries.
        """
        if self._spool is None and not self.path.exists():
            return 0
        spool = self._open()
        moved = quarantined = 0
        while True:
            running = self._inflight.ids(Where.SPOOL)
            rows = spool.drainable(self._lease_seconds, running, DRAIN_BATCH)
            if not rows:
                break
            stored, refused = move(rows, self._buffer)
            with self._writes:
                spool.remove(stored)
                for row, reason in refused:
                    spool.quarantine(row.envelope_id, reason)
            self._report(rows, stored, refused)
            moved += len(stored)
            quarantined += len(refused)
            if len(rows) < DRAIN_BATCH:
                break
        if moved or quarantined:
            # The database now answers for the drained ids: keep them recent,
            # no longer pinned. Quarantined ones stay pinned (still spooled).
            self._recent.unpin_all_but(self._pinned_keys(spool))
            self._metrics.spool_depth(spool.depth())
        return moved

    def _report(self, rows: Sequence[StoredEnvelope], stored: list[str], refused: Refused) -> None:
        status = {row.envelope_id: row.status for row in rows}
        for envelope_id in stored:
            logger.info(
                "envelope %s drained from the spool (%s)",
                envelope_id,
                status[envelope_id],
                extra={"envelope_id": envelope_id, "status": status[envelope_id]},
            )
        for row, reason in refused:
            self._metrics.spool_quarantined()
            logger.error(
                "envelope %s quarantined in the spool %s, the database refused it: %s "
                "(see `recorder spool list`)",
                row.envelope_id,
                self.path,
                reason,
                extra={"envelope_id": row.envelope_id, "reason": reason},
            )

    def close(self) -> None:
        with self._open_lock:
            self._closed = True
            if self._spool is not None:
                self._spool.close()
                self._spool = None
