"""The one MetaData: every table the recorder owns, and nothing else defines them.

Table and column names are part of the public SQL reporting interface
(auditors' queries depend on them). Alembic migrations in ``migrations/``
create this schema; a test proves the two agree on PostgreSQL and SQLite.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    PostgreSQL stores ``timestamptz``; SQLite stores naive ISO text, so values
    are converted to UTC on the way in and marked UTC on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where a UTC time is required")
        value = value.astimezone(dt.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)  # type: ignore[no-any-return]
        return value.astimezone(dt.timezone.utc)  # type: ignore[no-any-return]


#: ``jsonb`` on PostgreSQL, JSON text elsewhere.
JSONDocument = JSON().with_variant(JSONB(), "postgresql")

PENDING = "pending"
DONE = "done"

envelopes = Table(
    "envelopes",
    metadata,
    Column("envelope_id", Text, primary_key=True),
    Column("envelope_type", Text, comment="events_api, slash_commands, interactive, ..."),
    Column("received_at", UTCDateTime, nullable=False, comment="when the recorder stored it (UTC)"),
    Column("team_id", Text),
    Column("enterprise_id", Text),
    Column("api_app_id", Text),
    Column(
        "event_id",
        Text,
        unique=True,
        comment="payload.event_id of events_api envelopes; a retry in a new envelope is a duplicate",
    ),
    Column("event_type", Text, comment="event type, slash command, or interactive payload type"),
    Column("channel_id", Text),
    Column("user_id", Text),
    Column("retry_attempt", Integer),
    Column("retry_reason", Text),
    Column(
        "envelope",
        JSONDocument,
        nullable=False,
        comment="the envelope as queryable JSON; NUL and lone surrogates replaced by U+FFFD",
    ),
    Column(
        "envelope_text",
        Text,
        nullable=False,
        comment="the exact JSON text as received; envelope_sha256 covers it",
    ),
    Column("envelope_sha256", Text, nullable=False, comment="hex SHA-256 of envelope_text (UTF-8)"),
    Column("status", Text, nullable=False, server_default=text("'pending'")),
    Column("completed_at", UTCDateTime),
    Column(
        "attempts",
        Integer,
        nullable=False,
        server_default=text("1"),
        comment="handler dispatches so far: 1 when recorded, +1 per recovery claim",
    ),
    Column("claimed_at", UTCDateTime, comment="when the current dispatch attempt started"),
    CheckConstraint(f"status IN ('{PENDING}', '{DONE}')", name="status"),
    Index("ix_envelopes_received_at", "received_at"),
    Index("ix_envelopes_team_id_received_at", "team_id", "received_at"),
    Index("ix_envelopes_channel_id_received_at", "channel_id", "received_at"),
    Index("ix_envelopes_user_id_received_at", "user_id", "received_at"),
    Index("ix_envelopes_event_type_received_at", "event_type", "received_at"),
    Index(
        "ix_envelopes_pending",
        "received_at",
        postgresql_where=text("status = 'pending'"),
        sqlite_where=text("status = 'pending'"),
    ),
)


# ``recorder stats`` (by type, the default) and retention policies matching a
# type read this index alone, never the wide rows (the other reporting
# columns have theirs in the table definition above).
Index("ix_envelopes_envelope_type_received_at", envelopes.c.envelope_type, envelopes.c.received_at)

# -- retention: policies, legal holds, the prune log, the change log

retention_policies = Table(
    "retention_policies",
    metadata,
    Column("name", Text, primary_key=True),
    Column("keep_seconds", BigInteger, nullable=False, comment="records older than this expire"),
    Column("team_id", Text, comment="match: NULL matches any value"),
    Column("channel_id", Text),
    Column("user_id", Text),
    Column("envelope_type", Text),
    Column("event_type", Text),
    Column(
        "priority",
        Integer,
        nullable=False,
        server_default=text("0"),
        comment="the matching policy with the highest priority decides; ties go to the name first in order",
    ),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    CheckConstraint("keep_seconds > 0", name="keep_positive"),
)

legal_holds = Table(
    "legal_holds",
    metadata,
    Column("name", Text, primary_key=True),
    Column("reason", Text, nullable=False),
    Column("team_id", Text, comment="match: NULL matches any value"),
    Column("channel_id", Text),
    Column("user_id", Text),
    Column("since", UTCDateTime, comment="holds records received at or after this time"),
    Column("until", UTCDateTime, comment="holds records received before this time"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", Text, nullable=False),
    Column("released_at", UTCDateTime, comment="NULL while the hold is in force"),
    Column("released_by", Text),
)

PRUNE_STATUSES = ("running", "completed", "stopped", "failed", "locked_out")

prune_runs = Table(
    "prune_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("status", Text, nullable=False),
    Column("dry_run", Boolean, nullable=False),
    Column("cutoffs", JSONDocument, comment="policy name -> ISO cutoff time"),
    Column(
        "deleted_per_policy",
        JSONDocument,
        comment="policy name -> rows deleted (would be deleted, for a dry run)",
    ),
    Column("deleted_total", BigInteger, nullable=False, server_default=text("0")),
    Column("held_count", BigInteger, comment="expired rows kept because a legal hold covers them"),
    Column(
        "skipped_count",
        BigInteger,
        comment="expired, unheld rows left for a later run (time budget, rows locked by writers)",
    ),
    Column("error", Text),
    Column("actor", Text),
    Column("host", Text),
    Column(
        "policies",
        JSONDocument,
        comment="the policies the run applies, in precedence order, each with its cutoff",
    ),
    CheckConstraint(
        "status IN (" + ", ".join(f"'{s}'" for s in PRUNE_STATUSES) + ")", name="status"
    ),
    Index("ix_prune_runs_started_at", "started_at"),
)

pruned_envelopes = Table(
    "pruned_envelopes",
    metadata,
    Column(
        "prune_run_id",
        Integer,
        primary_key=True,
        comment="prune_runs.id; no foreign key, whose per-row check would slow every prune batch",
    ),
    Column("envelope_id", Text, primary_key=True),
    Column("envelope_sha256", Text, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("policy_name", Text, nullable=False),
    Column("team_id", Text, comment="the removed envelope's, for checking legal holds later"),
    Column("channel_id", Text),
    Column("user_id", Text),
    Column("pruned_at", UTCDateTime, comment="when the deleting transaction ran"),
    comment="one row per envelope a prune run removed, written in the deleting transaction",
)
Index("ix_pruned_envelopes_envelope_id", pruned_envelopes.c.envelope_id)

change_log = Table(
    "change_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False, comment="create, update, remove, add, release"),
    Column("object_kind", Text, nullable=False, comment="retention_policy or legal_hold"),
    Column("object_name", Text, nullable=False),
    Column("details", JSONDocument),
    Index("ix_change_log_at", "at"),
)


# -- tamper evidence: sealed blocks, each chaining the previous one's digest

SEAL_KINDS = ("range", "late")

seal_blocks = Table(
    "seal_blocks",
    metadata,
    Column("block_no", Integer, primary_key=True, autoincrement=False),
    Column(
        "kind",
        Text,
        nullable=False,
        comment="range: the next envelopes in (received_at, envelope_id) order; "
        "late: envelopes adopted after their range was sealed",
    ),
    Column("sealed_at", UTCDateTime, nullable=False),
    Column("cutoff", UTCDateTime, comment="range blocks: envelopes received up to this time"),
    Column("first_received_at", UTCDateTime, nullable=False),
    Column("first_envelope_id", Text, nullable=False),
    Column("last_received_at", UTCDateTime, nullable=False),
    Column("last_envelope_id", Text, nullable=False),
    Column("envelope_count", Integer, nullable=False),
    Column("prev_digest", Text, nullable=False, comment="digest of the block before (zeros first)"),
    Column(
        "digest",
        Text,
        nullable=False,
        unique=True,
        comment="hex SHA-256 over this block's header, prev_digest and its envelopes' digests",
    ),
    CheckConstraint("kind IN (" + ", ".join(f"'{k}'" for k in SEAL_KINDS) + ")", name="kind"),
    comment="the hash chain of `recorder seal`; `recorder verify` recomputes it",
)

sealed_envelopes = Table(
    "sealed_envelopes",
    metadata,
    Column(
        "block_no",
        Integer,
        ForeignKey("seal_blocks.block_no"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("position", Integer, primary_key=True, autoincrement=False),
    Column("envelope_id", Text, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("envelope_sha256", Text, nullable=False),
    comment="each sealed envelope's digest as sealed; kept after pruning, as the proof",
)
Index("ix_sealed_envelopes_envelope_id", sealed_envelopes.c.envelope_id)

sealed_log_entries = Table(
    "sealed_log_entries",
    metadata,
    Column(
        "block_no",
        Integer,
        ForeignKey("seal_blocks.block_no"),
        nullable=False,
    ),
    Column("log_name", Text, primary_key=True, comment="which log: prune_runs, ..."),
    Column("entry_key", Text, primary_key=True, comment="the entry's key in its log"),
    Column("digest", Text, nullable=False, comment="hex SHA-256 of the entry as sealed"),
    comment="entries of the recorder's own logs (prune runs and what each removed, ...) "
    "sealed with a block; the block digest covers them",
)
Index("ix_sealed_log_entries_block_no", sealed_log_entries.c.block_no)
