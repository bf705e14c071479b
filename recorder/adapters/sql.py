"""``SQLEventBuffer``: the durable adapter, on PostgreSQL (psycopg 3) or SQLite."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Literal

from sqlalchemy.engine import URL, Engine

from recorder import copy_rows, statements
from recorder.adapter import ClaimedEnvelope, EnvelopeInput, RecordResult, StoredEnvelope
from recorder.engine import create_engine, is_sqlite, read_only, storage_errors
from recorder.envelope import ParsedEnvelope, decode_stored, parse_envelope, validate_envelope_id
from recorder.redaction import DEFAULT_REDACTION, Redaction
from recorder.settings import (
    max_envelope_bytes_from_env,
    record_timeout_setting,
    resolve_redaction,
)
from recorder.writer import Writer

__all__ = ["ClaimedEnvelope", "SQLEventBuffer", "utc_now"]

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class SQLEventBuffer:
    """Records envelopes in the ``envelopes`` table; the dedupe window lasts until retention prunes.

    Parameters
    ----------
    url_or_engine
        A database URL (``postgresql://...``, ``sqlite:///recorder.db``) or an
        engine from :func:`recorder.engine.create_engine`. An engine passed in
        stays the caller's: :meth:`close` does not dispose of it.
    max_envelope_bytes
        Larger envelopes are :class:`~recorder.errors.InvalidEnvelope`. Defaults
        to ``RECORDER_MAX_ENVELOPE_BYTES`` or 1 MiB.
    redaction
        JSON paths masked or dropped in the stored copy
        (:class:`~recorder.redaction.Redaction`). By default ``payload.token``
        and the response URLs are masked, or what ``RECORDER_REDACT`` says;
        ``None`` or ``Redaction.none()`` stores envelopes as received. The
        caller's envelope is never modified.
    record_timeout
        Seconds ``record`` may wait for a lock, run, or wait for a free
        connection before it raises :class:`~recorder.errors.StorageUnavailable`
        (``lock_timeout`` and ``statement_timeout`` on PostgreSQL, the busy
        timeout on SQLite). Defaults to ``RECORDER_RECORD_TIMEOUT`` or 1 s,
        inside Slack's 3 s ack window; ``0`` for no limit. Other calls
        (``pending``, ``complete``, ...) keep the engine's own limits.
    upgrade
        Apply the schema migrations first. By default (``None``) an SQLite
        database is created and migrated on first use (and brought to the
        newest revision), while PostgreSQL is never migrated implicitly:
        production deployments run ``recorder db upgrade``, and a missing
        schema is a :class:`~recorder.errors.SchemaMissing` error that says so.
        ``False`` never migrates.
    """

    def __init__(
        self,
        url_or_engine: str | URL | Engine,
        *,
        max_envelope_bytes: int | None = None,
        redaction: Redaction | None = DEFAULT_REDACTION,
        record_timeout: float | None = None,
        upgrade: bool | None = None,
        clock: Clock = utc_now,
    ) -> None:
        if isinstance(url_or_engine, Engine):
            self._engine = url_or_engine
            self._owns_engine = False
        else:
            self._engine = create_engine(url_or_engine)
            self._owns_engine = True
        self.max_envelope_bytes = max_envelope_bytes or max_envelope_bytes_from_env()
        self.redaction = resolve_redaction(redaction)
        self._clock = clock
        self.record_timeout = record_timeout_setting(record_timeout)
        self._writes = Writer(self._engine, record_timeout=self.record_timeout)
        self._insert = self._writes.prepare(statements.insert_envelope(self._engine.dialect))
        self._imported = (
            self._writes.prepare(statements.insert_imported(self._engine.dialect))
            if is_sqlite(self._engine)
            else None
        )
        if upgrade is not False:
            # Imported here: alembic is loaded only by buffers that migrate.
            from recorder import db

            if upgrade:
                db.upgrade(self._engine)
            else:
                db.ensure_sqlite_schema(self._engine)

    @property
    def engine(self) -> Engine:
        return self._engine

    def parse(self, envelope_id: object, envelope: object) -> ParsedEnvelope:
        """Validate an envelope against this buffer's limits without storing it."""
        return parse_envelope(
            envelope_id, envelope, max_bytes=self.max_envelope_bytes, redaction=self.redaction
        )

    def record(self, envelope_id: str, envelope: EnvelopeInput) -> RecordResult:
        parsed = self.parse(envelope_id, envelope)
        values = statements.record_params(parsed, self._clock())
        inserted = self._writes.execute(
            self._insert, values, action=f"recording envelope {parsed.envelope_id}"
        )
        return RecordResult.NEW if inserted == 1 else RecordResult.DUPLICATE

    def record_many(
        self,
        parsed: Sequence[ParsedEnvelope],
        *,
        received_at: Sequence[dt.datetime | None] | None = None,
        handled: bool = False,
    ) -> int:
        """Record a batch atomically (one transaction); return how many were new.

        On PostgreSQL the batch goes through COPY into a temporary table and
        one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``; on SQLite through
        one executemany in ``BEGIN IMMEDIATE``. Envelopes repeated in the
        batch are stored once, the first one.

        Parameters
        ----------
        received_at
            One time per envelope (an archive's own times); ``None``, or no
            sequence at all, means now by this buffer's clock.
        handled
            Store the envelopes as already handled (``done``): recovery never
            dispatches them. By default they are pending, as ``record`` leaves them.
        """
        given = [None] * len(parsed) if received_at is None else received_at
        if len(given) != len(parsed):
            raise ValueError("received_at needs one time per envelope")
        make_row = copy_rows.copy_row if self.import_row_format == "copy" else copy_rows.bind_row
        return self.import_rows(
            [make_row(p, at) for p, at in zip(parsed, given, strict=True)], handled=handled
        )

    @property
    def import_row_format(self) -> Literal["copy", "bind"]:
        """What :meth:`import_rows` takes: ``copy`` rows (PostgreSQL) or ``bind`` rows (SQLite)."""
        return "bind" if is_sqlite(self._engine) else "copy"

    def import_rows(self, rows: Sequence[Any], *, handled: bool = False) -> int:
        """Store rows already built by :mod:`recorder.copy_rows`, in one transaction.

        The bulk path under :meth:`record_many` and ``recorder import``, whose
        worker processes build the rows (:func:`~recorder.copy_rows.copy_row`
        on PostgreSQL, :func:`~recorder.copy_rows.bind_row` on SQLite, as
        :attr:`import_row_format` says) from envelopes this buffer's parser
        accepted, with this buffer's limits and redaction. A row without a
        ``received_at`` gets now by this buffer's clock. Returns how many
        were new.
        """
        if not rows:
            return 0
        now = self._clock()
        state = statements.import_state(handled, now)
        with storage_errors(f"recording a batch of {len(rows)} envelopes"):
            if is_sqlite(self._engine):
                imported = self._imported
                assert imported is not None
                params = [
                    imported.bind({**row, "received_at": row["received_at"] or now, **state})
                    for row in rows
                ]
                with self._writes.transaction() as conn:
                    driver = conn.connection.driver_connection
                    assert isinstance(driver, sqlite3.Connection)
                    return int(driver.executemany(imported.sql, params).rowcount)
            return self._copy_rows(rows, {"now": now, **state})

    def _copy_rows(self, rows: Sequence[bytes], params: dict[str, Any]) -> int:
        with self._writes.transaction() as conn:
            raw = conn.connection.driver_connection
            assert raw is not None
            with raw.cursor() as cursor:
                if raw.info.encoding != "utf-8":
                    # The rows are UTF-8 bytes, sent as they are.
                    cursor.execute("SET LOCAL client_encoding TO 'UTF8'")
                cursor.execute(statements.CREATE_IMPORT_STAGING)
                with cursor.copy(statements.COPY_INTO_IMPORT_STAGING) as copy:
                    copy.write(b"".join(rows))
                cursor.execute(statements.INSERT_FROM_IMPORT_STAGING, params)
                return int(cursor.rowcount)

    def seen(self, envelope_id: str) -> bool:
        envelope_id = validate_envelope_id(envelope_id)
        with storage_errors(f"looking up envelope {envelope_id}"), read_only(self._engine) as conn:
            return conn.execute(statements.select_seen(envelope_id)).first() is not None

    def delete(self, envelope_id: str) -> None:
        envelope_id = validate_envelope_id(envelope_id)
        with (
            storage_errors(f"deleting envelope {envelope_id}"),
            self._writes.statement() as conn,
        ):
            conn.execute(statements.delete_envelope(envelope_id))

    def pending(self, limit: int | None = None) -> list[dict[str, Any]]:
        if limit is not None and limit < 0:
            raise ValueError("limit must be zero or more")
        with storage_errors("listing pending envelopes"), read_only(self._engine) as conn:
            texts = conn.execute(statements.select_pending(limit)).scalars().all()
        return [decode_stored(text) for text in texts]

    def complete(self, envelope_id: str) -> None:
        envelope_id = validate_envelope_id(envelope_id)
        with (
            storage_errors(f"completing envelope {envelope_id}"),
            self._writes.statement() as conn,
        ):
            conn.execute(statements.complete_envelope(envelope_id, self._clock()))

    def complete_many(self, envelope_ids: Sequence[str]) -> None:
        """:meth:`complete` for several envelopes in one statement (one commit)."""
        ids = [validate_envelope_id(envelope_id) for envelope_id in envelope_ids]
        if not ids:
            return
        with (
            storage_errors(f"completing {len(ids)} envelopes"),
            self._writes.statement() as conn,
        ):
            conn.execute(statements.complete_envelopes(ids, self._clock()))

    def claim_stale(
        self,
        lease: float | dt.timedelta,
        limit: int = 100,
        *,
        max_attempts: int | None = None,
    ) -> list[ClaimedEnvelope]:
        """Atomically claim pending envelopes whose current attempt is older than ``lease``.

        Each claim adds one to ``attempts`` and sets ``claimed_at`` to now, so
        the envelope is not stale again for another ``lease``. Two callers,
        in one process or in several sharing the database, never claim the
        same envelope (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, ``BEGIN
        IMMEDIATE`` on SQLite).

        Parameters
        ----------
        lease
            Seconds (or a timedelta) an attempt may run before it counts as
            abandoned: a crashed handler, a killed process.
        limit
            At most this many claims.
        max_attempts
            Envelopes dispatched this many times already are left alone
            (they stay pending, for an operator to look at).

        Returns
        -------
        list of ClaimedEnvelope
            Oldest first.
        """
        seconds = lease.total_seconds() if isinstance(lease, dt.timedelta) else float(lease)
        if seconds < 0 or limit < 0:
            raise ValueError("lease and limit must be zero or more")
        now = self._clock()
        stmt = statements.claim_stale(
            self._engine.dialect,
            cutoff=now - dt.timedelta(seconds=seconds),
            now=now,
            limit=limit,
            max_attempts=max_attempts,
        )
        with storage_errors("claiming stale envelopes"), self._writes.statement() as conn:
            rows = conn.execute(stmt).all()
        # RETURNING gives no order: restore the oldest-first order of the pick.
        rows = sorted(rows, key=lambda row: (row.received_at, row.envelope_id))
        return [
            ClaimedEnvelope(row.envelope_id, decode_stored(row.envelope_text), int(row.attempts))
            for row in rows
        ]

    def renew(self, envelope_ids: Sequence[str]) -> None:
        """Restart the lease of envelopes whose handler is still running."""
        ids = [validate_envelope_id(envelope_id) for envelope_id in envelope_ids]
        if not ids:
            return
        with (
            storage_errors(f"renewing {len(ids)} claims"),
            self._writes.statement() as conn,
        ):
            conn.execute(statements.renew_claims(ids, self._clock()))

    def restore(self, envelopes: Sequence[StoredEnvelope]) -> int:
        """Store envelopes with their processing state (the Slack spool's drain).

        Each is parsed by this buffer's own parser (limits, redaction); the
        batch is one transaction, so a refused envelope stores nothing of it.
        """
        if not envelopes:
            return 0
        params = []
        for stored in envelopes:
            values = statements.record_params(
                self.parse(stored.envelope_id, stored.envelope_text), stored.received_at
            )
            values.update(
                status=stored.status,
                completed_at=stored.completed_at,
                attempts=stored.attempts,
                claimed_at=stored.claimed_at,
            )
            params.append(values)
        stmt = statements.insert_drained(self._engine.dialect)
        with (
            storage_errors(f"restoring {len(params)} envelopes"),
            self._writes.transaction() as conn,
        ):
            return int(conn.execute(stmt, params).rowcount)

    def count_pending(self) -> int:
        """How many envelopes are recorded and not completed."""
        with storage_errors("counting pending envelopes"), read_only(self._engine) as conn:
            return int(conn.execute(statements.count_pending()).scalar_one())

    def close(self) -> None:
        self._writes.close()
        if self._owns_engine:
            self._engine.dispose()

    def __enter__(self) -> SQLEventBuffer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
