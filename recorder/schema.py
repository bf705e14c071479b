"""The one MetaData: every table the recorder owns, and nothing else defines them.

Table and column names are part of the public SQL reporting interface
(auditors' queries depend on them). Alembic migrations in ``migrations/``
create this schema; a test proves the two agree on PostgreSQL and SQLite.

Over 450 lines by design: one MetaData defines every table.
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
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import expression as sa_expression
from sqlalchemy.types import TypeDecorator

from recorder import adapter
from recorder import envelope as envelope_columns

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

# The processing states are part of the adapter contract; the column holds them.
PENDING = adapter.PENDING
DONE = adapter.DONE

#: The reporting columns extracted from every envelope, in the table's order
#: (what verify checks against the stored text); named in recorder.envelope.
REPORTING_COLUMNS = envelope_columns.REPORTING_COLUMNS

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
    # Rows up to 8 KB stay whole in the heap (migration 0011): at the default
    # target every 1 KB envelope, stored twice, paid a failed compression and
    # a TOAST insert, and every read of the copy a TOAST lookup.
    postgresql_with={"toast_tuple_target": 8160},
)


# ``recorder stats`` (by type, the default) and retention policies matching a
# type read this index alone, never the wide rows (the other reporting
# columns have theirs in the table definition above).
Index("ix_envelopes_envelope_type_received_at", envelopes.c.envelope_type, envelopes.c.received_at)


class message_author(sa_expression.FunctionElement[str]):
    """The author of a message an envelope carries when that is not its actor.

    A message shortcut's message (``payload.message.user``), or a shared
    message (``payload.event.attachments[0].author_id``). Erasure finds a
    user's envelopes by ``user_id`` and by this, each through its index
    (``ix_envelopes_message_author``), never by reading payloads. The SQL
    differs per engine (``#>>`` on jsonb, ``json_extract`` on SQLite) and must
    be written identically in the index and in queries for the index to
    serve them, hence one construct.
    """

    type = Text()
    inherit_cache = True
    name = "message_author"


@compiles(message_author, "postgresql")
def _message_author_postgresql(element: message_author, compiler: Any, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    return (
        f"COALESCE({column} #>> '{{payload,message,user}}', "
        f"{column} #>> '{{payload,event,attachments,0,author_id}}')"
    )


@compiles(message_author, "sqlite")
def _message_author_sqlite(element: message_author, compiler: Any, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    return (
        f"COALESCE(json_extract({column}, '$.payload.message.user'), "
        f"json_extract({column}, '$.payload.event.attachments[0].author_id'))"
    )


# Partial: only envelopes that carry such a message have an entry.
Index(
    "ix_envelopes_message_author",
    message_author(envelopes.c.envelope),
    postgresql_where=message_author(envelopes.c.envelope).is_not(None),
    sqlite_where=message_author(envelopes.c.envelope).is_not(None),
)

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
    Column(
        "archive_dir",
        Text,
        comment="when set, what the policy expires is archived (here, unless the prune "
        "names another archive) before it is deleted; never deleted unarchived",
    ),
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
    # No foreign key to seal_blocks (migration 0010): its per-row check cost
    # sealing a third of its time on PostgreSQL. Members are only written
    # with their block, in its transaction, and recorder.verify reports a
    # member listed under a block the chain does not hold.
    Column("block_no", Integer, primary_key=True, autoincrement=False),
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

# -- the cold archive: Parquet files written before a prune deletes (recorder.archive)

ARCHIVE_FILE_STATES = ("writing", "written", "complete", "abandoned")

archive_files = Table(
    "archive_files",
    metadata,
    Column("archive_id", Text, primary_key=True, comment="the archive directory's id"),
    Column("file_name", Text, primary_key=True, comment="path inside the archive directory"),
    Column(
        "state",
        Text,
        nullable=False,
        comment="writing: named, not yet complete on disk; written: complete and fsynced, "
        "its envelopes not yet all deleted; complete: deleted and logged; "
        "abandoned: never completed, no file",
    ),
    Column("policy_name", Text, nullable=False, comment="the retention policy that expired them"),
    Column("prune_run_id", Integer, nullable=False, comment="the prune run that wrote it"),
    Column("deleted_by_run_id", Integer, comment="the prune run that deleted its envelopes"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("written_at", UTCDateTime),
    Column("completed_at", UTCDateTime),
    Column("row_count", BigInteger),
    Column("deleted_count", BigInteger, comment="envelopes the live database removed"),
    Column("first_received_at", UTCDateTime),
    Column("last_received_at", UTCDateTime),
    Column("file_bytes", BigInteger),
    Column("file_sha256", Text, comment="hex SHA-256 of the file's bytes"),
    Column(
        "members_sha256",
        Text,
        comment="hex SHA-256 over (envelope_id, received_at, envelope_sha256) of each row, "
        "in file order",
    ),
    CheckConstraint(
        "state IN (" + ", ".join(f"'{s}'" for s in ARCHIVE_FILE_STATES) + ")", name="state"
    ),
    comment="the archive manifest: every Parquet file `recorder prune --archive` wrote",
)
Index("ix_archive_files_state", archive_files.c.state)


# -- erasure: `recorder erase` runs, and every envelope each erased, scrubbed or deferred

ERASURE_STATUSES = ("running", "completed", "deferred")
ERASURE_ACTIONS = ("erase", "scrub", "skip")
ERASED_KINDS = ("subject", "mention")
ERASED_STATES = ("done", "deferred", "gone", "spooled", "archived")

erasures = Table(
    "erasures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("requested_at", UTCDateTime, nullable=False),
    Column(
        "finished_at", UTCDateTime, comment="when the last envelope was done (NULL while deferred)"
    ),
    Column(
        "status",
        Text,
        nullable=False,
        comment="running; deferred: some envelopes wait for legal holds; completed",
    ),
    Column("user_id", Text, nullable=False, comment="the Slack user whose data was erased"),
    Column("team_id", Text, comment="only envelopes of this team; NULL: every team"),
    Column("reason", Text, nullable=False),
    Column("actor", Text, nullable=False, comment="who asked for it, as given (--actor)"),
    Column("db_user", Text, nullable=False, comment="the database role that ran it"),
    Column("subject_action", Text, nullable=False, comment="what was done to the user's envelopes"),
    Column(
        "mention_action", Text, nullable=False, comment="what was done to envelopes mentioning them"
    ),
    CheckConstraint(
        "status IN (" + ", ".join(f"'{s}'" for s in ERASURE_STATUSES) + ")", name="status"
    ),
    CheckConstraint("subject_action IN ('erase', 'skip')", name="subject_action"),
    CheckConstraint(
        "mention_action IN (" + ", ".join(f"'{a}'" for a in ERASURE_ACTIONS) + ")",
        name="mention_action",
    ),
    comment="one row per `recorder erase`: who asked, why, whose data",
)
Index("ix_erasures_user_id", erasures.c.user_id)

erased_envelopes = Table(
    "erased_envelopes",
    metadata,
    Column("erasure_id", Integer, primary_key=True, autoincrement=False, comment="erasures.id"),
    Column("envelope_id", Text, primary_key=True),
    Column("received_at", UTCDateTime, nullable=False),
    Column("kind", Text, nullable=False, comment="subject: the user's own; mention: mentions them"),
    Column("action", Text, nullable=False, comment="erase: tombstone; scrub: mentions replaced"),
    Column(
        "state",
        Text,
        nullable=False,
        comment="done; deferred under held_by; gone: pruned first; "
        "spooled: done in a spool file; archived: done in an archive file",
    ),
    Column("held_by", JSONDocument, comment="names of the legal holds that deferred it"),
    Column("original_sha256", Text, nullable=False, comment="digest of the text it replaced"),
    Column("replacement_sha256", Text, comment="digest of the text it wrote (NULL until done)"),
    Column("erased_at", UTCDateTime, comment="NULL until done"),
    CheckConstraint("kind IN ('subject', 'mention')", name="kind"),
    CheckConstraint("action IN ('erase', 'scrub')", name="action"),
    CheckConstraint("state IN (" + ", ".join(f"'{s}'" for s in ERASED_STATES) + ")", name="state"),
    comment="every envelope an erasure changed or deferred, with the digests `verify` checks",
)
Index("ix_erased_envelopes_envelope_id", erased_envelopes.c.envelope_id)
Index(
    "ix_erased_envelopes_deferred",
    erased_envelopes.c.erasure_id,
    postgresql_where=text("state = 'deferred'"),
    sqlite_where=text("state = 'deferred'"),
)

REPLAY_STATUSES = ("running", "completed", "interrupted")

replay_runs = Table(
    "replay_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column(
        "status",
        Text,
        nullable=False,
        comment="running (or killed while running), completed, interrupted; "
        "an unfinished run is resumed by the next replay with the same handler and filters",
    ),
    Column("actor", Text, nullable=False),
    Column("host", Text),
    Column("handler", Text, nullable=False, comment="module:function"),
    Column("filters", Text, nullable=False, comment="the query filters, as canonical JSON"),
    CheckConstraint(
        "status IN (" + ", ".join(f"'{s}'" for s in REPLAY_STATUSES) + ")", name="status"
    ),
    Index("ix_replay_runs_handler_filters", "handler", "filters"),
    comment="`recorder replay` runs: who replayed what through which handler, and when",
)

replayed_envelopes = Table(
    "replayed_envelopes",
    metadata,
    Column("run_id", Integer, ForeignKey("replay_runs.id"), primary_key=True),
    Column("envelope_id", Text, primary_key=True),
    Column("replayed_at", UTCDateTime, nullable=False),
    Column("error", Text, comment="the handler's exception; NULL when it succeeded"),
    comment="each envelope a replay run handed to its handler, and how that went",
)
