"""The local spool: a SQLite file that holds envelopes while the database is away.

What goes in was parsed by the target buffer's own parser first (its size
limit and redaction), so the spool file never holds what the database would
not. Spooled rows carry their processing state (a handler that ran from the
spool marks the row done there) and move into the database with it
(:meth:`~recorder.adapter.RecoverableEventBuffer.restore`), so an envelope
handled from the spool is not handled again once drained. Moving is
idempotent: a row is inserted with ``ON CONFLICT DO NOTHING``, then deleted
from the spool; a crash in between only repeats a harmless insert.

A row the database refuses (over its size limit, a number PostgreSQL's
``jsonb`` cannot hold) moves to the file's quarantine table with the reason,
so it never holds the others back; ``recorder spool`` lists, retries and
drops quarantined rows. The quarantine table is the spool file's own, not
one of the recorder's tables, so its statements live here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from recorder import statements
from recorder.adapter import RecordResult, StoredEnvelope
from recorder.engine import create_engine, read_only, storage_errors, write_statement
from recorder.envelope import ParsedEnvelope
from recorder.schema import UTCDateTime, envelopes

__all__ = ["QuarantinedEnvelope", "Spool"]

Clock = Callable[[], dt.datetime]

_spool_metadata = sa.MetaData()
#: Spooled rows the database refused: they stay in ``envelopes`` (so
#: retransmits stay duplicates and nothing is lost) and the drain skips them.
quarantine = sa.Table(
    "spool_quarantine",
    _spool_metadata,
    sa.Column("envelope_id", sa.Text, primary_key=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("quarantined_at", UTCDateTime, nullable=False),
)
_not_quarantined = ~sa.exists().where(quarantine.c.envelope_id == envelopes.c.envelope_id)


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass(frozen=True, slots=True)
class QuarantinedEnvelope:
    """A spooled envelope the database refused, and why."""

    stored: StoredEnvelope
    reason: str
    quarantined_at: dt.datetime

    @property
    def envelope_id(self) -> str:
        return self.stored.envelope_id


class Spool:
    """A SQLite spool file, created on first use.

    Parameters
    ----------
    path
        The file; kept across restarts, so envelopes spooled before a crash
        are drained by the next run.
    clock
        UTC wall clock for ``received_at`` and leases; injectable for tests.
    """

    def __init__(self, path: str | Path, *, clock: Clock = utc_now) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self.engine = create_engine(f"sqlite:///{self.path}")
        self._insert = statements.insert_envelope(self.engine.dialect)
        # A private file: only these tables are needed, and creating them
        # directly is far quicker than running the migrations while the
        # database is down and an ack is waiting.
        with storage_errors(f"creating the spool {self.path}"):
            envelopes.create(self.engine, checkfirst=True)
            quarantine.create(self.engine, checkfirst=True)

    def record(self, parsed: ParsedEnvelope) -> RecordResult:
        """Keep an envelope the target buffer has parsed (its limits and redaction applied)."""
        params = statements.record_params(parsed, self._clock())
        with (
            storage_errors(f"spooling envelope {parsed.envelope_id}"),
            write_statement(self.engine) as conn,
        ):
            inserted = conn.execute(self._insert, params).rowcount
        return RecordResult.NEW if inserted == 1 else RecordResult.DUPLICATE

    def complete(self, envelope_id: str) -> None:
        with storage_errors("completing a spooled envelope"), write_statement(self.engine) as conn:
            conn.execute(statements.complete_envelope(envelope_id, self._clock()))

    def renew(self, envelope_ids: Sequence[str]) -> None:
        if not envelope_ids:
            return
        with storage_errors("renewing spooled claims"), write_statement(self.engine) as conn:
            conn.execute(statements.renew_claims(list(envelope_ids), self._clock()))

    def depth(self) -> int:
        """How many envelopes wait in the spool, handled or not (quarantined ones excluded)."""
        stmt = statements.count_envelopes().where(_not_quarantined)
        with storage_errors("counting spooled envelopes"), read_only(self.engine) as conn:
            return int(conn.execute(stmt).scalar_one())

    def dedupe_keys(self) -> list[tuple[str, str | None]]:
        """``(envelope_id, event_id)`` of every spooled envelope, quarantined ones included."""
        with storage_errors("listing spooled envelopes"), read_only(self.engine) as conn:
            return [(row[0], row[1]) for row in conn.execute(statements.select_dedupe_keys())]

    def drainable(
        self, lease_seconds: float, exclude: Sequence[str], limit: int
    ) -> list[StoredEnvelope]:
        """Rows ready to move: handled, or pending with no live handler (see the module doc)."""
        cutoff = self._clock() - dt.timedelta(seconds=lease_seconds)
        stmt = statements.select_drainable(cutoff, list(exclude), limit).where(_not_quarantined)
        with storage_errors("reading the spool"), read_only(self.engine) as conn:
            return [_stored(row) for row in conn.execute(stmt)]

    def remove(self, envelope_ids: Sequence[str]) -> None:
        if not envelope_ids:
            return
        with storage_errors("removing drained envelopes"), write_statement(self.engine) as conn:
            conn.execute(statements.delete_envelopes(list(envelope_ids)))

    # -- quarantine

    def quarantine(self, envelope_id: str, reason: str) -> None:
        """Hold a refused row out of the drain's way, keeping it and the reason."""
        stmt = sqlite.insert(quarantine).on_conflict_do_update(
            index_elements=[quarantine.c.envelope_id],
            set_={"reason": reason, "quarantined_at": self._clock()},
        )
        params = {"envelope_id": envelope_id, "reason": reason, "quarantined_at": self._clock()}
        with (
            storage_errors("quarantining a spooled envelope"),
            write_statement(self.engine) as conn,
        ):
            conn.execute(stmt, params)

    def quarantined(self) -> list[QuarantinedEnvelope]:
        """Quarantined rows, oldest first."""
        stmt = (
            sa.select(envelopes, quarantine.c.reason, quarantine.c.quarantined_at)
            .join(quarantine, quarantine.c.envelope_id == envelopes.c.envelope_id)
            .order_by(quarantine.c.quarantined_at, quarantine.c.envelope_id)
        )
        with storage_errors("listing quarantined envelopes"), read_only(self.engine) as conn:
            return [
                QuarantinedEnvelope(_stored(row), row.reason, row.quarantined_at)
                for row in conn.execute(stmt)
            ]

    def retry(self, envelope_ids: Sequence[str] | None = None) -> int:
        """Put quarantined rows (all when ``None``) back in line for the next drain."""
        with storage_errors("retrying quarantined envelopes"), write_statement(self.engine) as conn:
            return int(conn.execute(sa.delete(quarantine).where(_picked(envelope_ids))).rowcount)

    def drop(self, envelope_ids: Sequence[str] | None = None) -> int:
        """Delete quarantined rows (all when ``None``) for good; return how many."""
        held = sa.select(quarantine.c.envelope_id).where(_picked(envelope_ids))
        with storage_errors("dropping quarantined envelopes"), self.engine.begin() as conn:
            dropped = conn.execute(
                sa.delete(envelopes).where(envelopes.c.envelope_id.in_(held))
            ).rowcount
            conn.execute(sa.delete(quarantine).where(_picked(envelope_ids)))
            return int(dropped)

    def close(self) -> None:
        self.engine.dispose()


def _picked(envelope_ids: Sequence[str] | None) -> sa.ColumnElement[bool]:
    if envelope_ids is None:
        return sa.true()
    return quarantine.c.envelope_id.in_(list(envelope_ids))


def _stored(row: Any) -> StoredEnvelope:
    """A row of ``envelopes`` or of the quarantine: both carry the state columns."""
    return StoredEnvelope(
        envelope_id=row.envelope_id,
        envelope_text=row.envelope_text,
        received_at=row.received_at,
        status=row.status,
        completed_at=row.completed_at,
        attempts=int(row.attempts),
        claimed_at=row.claimed_at,
    )
