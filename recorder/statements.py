"""Every statement that touches the ``envelopes`` table, built by named functions.

A compliance reviewer reads this one file to know what the recorder does to
the audit table. Dialect differences sit side by side here and nowhere else.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.dml import Delete, Insert, Update

from recorder.envelope import ParsedEnvelope
from recorder.schema import DONE, PENDING, UTCDateTime, envelopes

#: Columns written on record, in the order the COPY import path sends them.
RECORD_COLUMNS: tuple[str, ...] = (
    "envelope_id",
    "envelope_type",
    "received_at",
    "team_id",
    "enterprise_id",
    "api_app_id",
    "event_id",
    "event_type",
    "channel_id",
    "user_id",
    "retry_attempt",
    "retry_reason",
    "envelope",
    "envelope_text",
    "envelope_sha256",
)


def record_params(parsed: ParsedEnvelope, received_at: dt.datetime) -> dict[str, Any]:
    """Bind parameters of :func:`insert_envelope` for one envelope."""
    params = parsed.row()
    params["received_at"] = received_at
    return params


def insert_envelope(dialect: Dialect) -> Insert:
    """``INSERT ... ON CONFLICT DO NOTHING`` with no conflict target.

    Without a target the statement skips a row that conflicts with *any*
    unique key, so one atomic statement dedupes on ``envelope_id`` and on
    ``event_id`` alike. A row count of 1 means NEW, 0 means DUPLICATE.
    """
    envelope_json = sa.bindparam("envelope_json", type_=sa.Text)
    values: dict[str, Any] = {
        name: sa.bindparam(name, type_=envelopes.c[name].type)
        for name in RECORD_COLUMNS
        if name != "envelope"
    }
    values["received_at"] = sa.bindparam("received_at", type_=UTCDateTime)
    stmt: Insert
    if dialect.name == "postgresql":
        # The text is already JSON: cast it server side rather than let the
        # JSON type serialise it a second time.
        values["envelope"] = sa.cast(envelope_json, postgresql.JSONB)
        stmt = postgresql.insert(envelopes).values(values).on_conflict_do_nothing()
    else:
        # SQLite's JSON is text; CAST(... AS JSON) would give it numeric affinity.
        values["envelope"] = envelope_json
        stmt = sqlite.insert(envelopes).values(values).on_conflict_do_nothing()
    # SQLAlchemy reads an INSERT's row count only when asked to.
    return stmt.execution_options(preserve_rowcount=True)


def select_seen(envelope_id: str) -> sa.Select[int]:
    return sa.select(sa.literal(1)).where(envelopes.c.envelope_id == envelope_id)


def delete_envelope(envelope_id: str) -> Delete:
    return sa.delete(envelopes).where(envelopes.c.envelope_id == envelope_id)


def select_pending(limit: int | None) -> sa.Select[str]:
    """Stored text of pending envelopes, oldest first (served by ``ix_envelopes_pending``)."""
    stmt = (
        sa.select(envelopes.c.envelope_text)
        .where(envelopes.c.status == PENDING)
        .order_by(envelopes.c.received_at, envelopes.c.envelope_id)
    )
    return stmt if limit is None else stmt.limit(limit)


def complete_envelope(envelope_id: str, completed_at: dt.datetime) -> Update:
    return (
        sa.update(envelopes)
        .where(envelopes.c.envelope_id == envelope_id, envelopes.c.status == PENDING)
        .values(status=DONE, completed_at=completed_at)
    )


# -- bulk import on PostgreSQL: COPY into a temporary table, then one INSERT ... SELECT

IMPORT_STAGING_TABLE = "recorder_import_staging"

CREATE_IMPORT_STAGING = f"""
CREATE TEMPORARY TABLE IF NOT EXISTS {IMPORT_STAGING_TABLE} (
    envelope_id text, envelope_type text, received_at timestamptz, team_id text,
    enterprise_id text, api_app_id text, event_id text, event_type text,
    channel_id text, user_id text, retry_attempt integer, retry_reason text,
    envelope text, envelope_text text, envelope_sha256 text
) ON COMMIT DELETE ROWS
"""

COPY_INTO_IMPORT_STAGING = f"COPY {IMPORT_STAGING_TABLE} ({', '.join(RECORD_COLUMNS)}) FROM STDIN"

# No conflict target, as in insert_envelope: both unique keys dedupe, and rows
# repeated inside one batch are skipped like any other duplicate.
INSERT_FROM_IMPORT_STAGING = f"""
INSERT INTO envelopes ({", ".join(RECORD_COLUMNS)})
SELECT {", ".join("envelope::jsonb" if c == "envelope" else c for c in RECORD_COLUMNS)}
FROM {IMPORT_STAGING_TABLE}
ON CONFLICT DO NOTHING
"""
