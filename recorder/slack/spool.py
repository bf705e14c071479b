"""The local spool: a SQLite file that holds envelopes while the database is away.

Spooled rows carry their processing state (a handler that ran from the spool
marks the row done there), and move into the main database with that state,
so an envelope handled from the spool is not handled again once drained.
Moving is idempotent: a row is inserted with ``ON CONFLICT DO NOTHING``, then
deleted from the spool; a crash in between only repeats a harmless insert.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from recorder import statements
from recorder.adapter import EventBufferAdapter, RecordResult
from recorder.adapters.sql import SQLEventBuffer, utc_now
from recorder.engine import read_only, storage_errors, write_statement
from recorder.envelope import parse_envelope
from recorder.schema import DONE, envelopes

__all__ = ["Spool", "SpooledRow", "move_rows"]


@dataclass(frozen=True, slots=True)
class SpooledRow:
    envelope_id: str
    envelope_text: str
    received_at: dt.datetime
    status: str
    completed_at: dt.datetime | None
    attempts: int
    claimed_at: dt.datetime | None


class Spool:
    """A SQLite spool file, created on first use.

    Parameters
    ----------
    path
        The file; kept across restarts, so envelopes spooled before a crash
        are drained by the next run.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.buffer = SQLEventBuffer(f"sqlite:///{self.path}", upgrade=False)
        # A private file: only the envelopes table is needed, and creating it
        # directly is far quicker than running the migrations while the
        # database is down and an ack is waiting.
        with storage_errors(f"creating the spool {self.path}"):
            envelopes.create(self.buffer.engine, checkfirst=True)

    def record(self, envelope_id: str, text: str) -> RecordResult:
        return self.buffer.record(envelope_id, text)

    def complete(self, envelope_id: str) -> None:
        self.buffer.complete(envelope_id)

    def renew(self, envelope_ids: Sequence[str]) -> None:
        self.buffer.renew(envelope_ids)

    def depth(self) -> int:
        """How many envelopes wait in the spool, handled or not."""
        with storage_errors("counting spooled envelopes"), read_only(self.buffer.engine) as conn:
            return int(conn.execute(statements.count_envelopes()).scalar_one())

    def keys(self) -> list[tuple[str, str | None]]:
        """``(envelope_id, event_id)`` of every spooled envelope, for dedupe on start."""
        with storage_errors("listing spooled envelopes"), read_only(self.buffer.engine) as conn:
            return [(row[0], row[1]) for row in conn.execute(statements.select_dedupe_keys())]

    def drainable(
        self, lease_seconds: float, exclude: Sequence[str], limit: int
    ) -> list[SpooledRow]:
        """Rows ready to move: handled, or pending with no live handler (see the module doc)."""
        cutoff = utc_now() - dt.timedelta(seconds=lease_seconds)
        stmt = statements.select_drainable(cutoff, list(exclude), limit)
        with storage_errors("reading the spool"), read_only(self.buffer.engine) as conn:
            return [
                SpooledRow(
                    envelope_id=row.envelope_id,
                    envelope_text=row.envelope_text,
                    received_at=row.received_at,
                    status=row.status,
                    completed_at=row.completed_at,
                    attempts=row.attempts,
                    claimed_at=row.claimed_at,
                )
                for row in conn.execute(stmt)
            ]

    def remove(self, envelope_ids: Sequence[str]) -> None:
        if not envelope_ids:
            return
        with (
            storage_errors("removing drained envelopes"),
            write_statement(self.buffer.engine) as conn,
        ):
            conn.execute(statements.delete_envelopes(list(envelope_ids)))

    def close(self) -> None:
        self.buffer.close()


def move_rows(rows: Sequence[SpooledRow], target: EventBufferAdapter) -> int:
    """Insert spooled rows into ``target``, keeping their state; return how many were new.

    An SQL target gets each row as it was (received_at, status, attempts); any
    other adapter gets ``record`` and, for handled rows, ``complete``.

    Raises
    ------
    StorageUnavailable
        The target did not answer; nothing is lost (the rows stay spooled).
    """
    if not rows:
        return 0
    if not isinstance(target, SQLEventBuffer):
        inserted = 0
        for row in rows:
            if target.record(row.envelope_id, row.envelope_text) is RecordResult.NEW:
                inserted += 1
                if row.status == DONE:
                    target.complete(row.envelope_id)
        return inserted
    params = []
    for row in rows:
        parsed = parse_envelope(
            row.envelope_id, row.envelope_text, max_bytes=target.max_envelope_bytes
        )
        values = statements.record_params(parsed, row.received_at)
        values.update(
            status=row.status,
            completed_at=row.completed_at,
            attempts=row.attempts,
            claimed_at=row.claimed_at,
        )
        params.append(values)
    stmt = statements.insert_drained(target.engine.dialect)
    with (
        storage_errors(f"draining {len(rows)} spooled envelopes"),
        target.engine.begin() as conn,
    ):
        return int(conn.execute(stmt, params).rowcount)
