"""Every statement on the recorder's tables, built by named functions.

A compliance reviewer reads this one file to know what the recorder does to
the audit table, its retention rules and its logs. Dialect differences sit
side by side here and nowhere else. Sections: envelopes (record, pending,
recovery, spool, import, audit queries), policies and holds, the change
log, prune, reporting.

Over 450 lines by design: the catalogue is one file, so a reviewer reads
every statement in one place (DESIGN.md, "SQL in one place").
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Collection, Sequence
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.dml import Delete, Insert, ReturningDelete, Update

from recorder import copy_rows
from recorder.envelope import MAX_COLUMN_LENGTH, MAX_ENVELOPE_ID_LENGTH, ParsedEnvelope
from recorder.schema import (
    DONE,
    PENDING,
    REPORTING_COLUMNS,
    UTCDateTime,
    change_log,
    envelopes,
    erased_envelopes,
    legal_holds,
    prune_runs,
    pruned_envelopes,
    replay_runs,
    replayed_envelopes,
    retention_policies,
    seal_blocks,
    sealed_envelopes,
)

#: Columns written on record, in the order the COPY import path sends them.
RECORD_COLUMNS: tuple[str, ...] = copy_rows.STAGED_COLUMNS


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


#: Processing-state columns an import writes beside RECORD_COLUMNS.
IMPORT_STATE_COLUMNS: tuple[str, ...] = ("status", "completed_at")


def insert_imported(dialect: Dialect) -> Insert:
    """:func:`insert_envelope` that also sets ``status`` and ``completed_at``.

    ``recorder import`` stores an archive as already handled (``done``), so
    that recovery never dispatches it; ``--pending`` stores ``pending``.
    """
    stmt = insert_envelope(dialect)
    return stmt.values(
        {name: sa.bindparam(name, type_=envelopes.c[name].type) for name in IMPORT_STATE_COLUMNS}
    )


def import_state(handled: bool, now: dt.datetime) -> dict[str, Any]:
    """Values of :data:`IMPORT_STATE_COLUMNS` for an imported envelope."""
    return (
        {"status": DONE, "completed_at": now}
        if handled
        else {"status": PENDING, "completed_at": None}
    )


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


def complete_envelopes(envelope_ids: list[str], completed_at: dt.datetime) -> Update:
    """:func:`complete_envelope` for a batch, in one statement (one commit)."""
    return (
        sa.update(envelopes)
        .where(envelopes.c.envelope_id.in_(envelope_ids), envelopes.c.status == PENDING)
        .values(status=DONE, completed_at=completed_at)
    )


# -- recovery of envelopes whose handler never finished (recorder.slack)


def _claimed_or_received() -> sa.ColumnElement[dt.datetime]:
    """When the current dispatch attempt started: the last claim, else the recording."""
    return sa.func.coalesce(envelopes.c.claimed_at, envelopes.c.received_at, type_=UTCDateTime)


def claim_stale(
    dialect: Dialect,
    *,
    cutoff: dt.datetime,
    now: dt.datetime,
    limit: int,
    max_attempts: int | None,
) -> Update:
    """Claim pending envelopes whose attempt started before ``cutoff``, oldest first.

    One statement picks and claims (``attempts + 1``, ``claimed_at = now``), so
    two instances never claim one envelope: on PostgreSQL the picking subquery
    locks with ``FOR UPDATE SKIP LOCKED`` (a row another claimer holds is
    skipped, and one it has just claimed is no longer stale on the re-check);
    on SQLite the caller runs it inside ``BEGIN IMMEDIATE``, which serialises
    writers. Returns ``envelope_id, envelope_text, attempts, received_at`` of
    each claim, in no particular order.
    """
    conditions: list[sa.ColumnElement[bool]] = [
        envelopes.c.status == PENDING,
        _claimed_or_received() < sa.bindparam("cutoff", cutoff, type_=UTCDateTime),
    ]
    if max_attempts is not None:
        conditions.append(envelopes.c.attempts < max_attempts)
    stale = (
        sa.select(envelopes.c.envelope_id)
        .where(*conditions)
        .order_by(envelopes.c.received_at, envelopes.c.envelope_id)
        .limit(limit)
    )
    if dialect.name == "postgresql":
        stale = stale.with_for_update(skip_locked=True)
    return (
        sa.update(envelopes)
        .where(envelopes.c.envelope_id.in_(stale))
        .values(attempts=envelopes.c.attempts + 1, claimed_at=now)
        .returning(
            envelopes.c.envelope_id,
            envelopes.c.envelope_text,
            envelopes.c.attempts,
            envelopes.c.received_at,
        )
    )


def renew_claims(envelope_ids: list[str], now: dt.datetime) -> Update:
    """Extend the lease of envelopes still being handled, so recovery leaves them alone."""
    return (
        sa.update(envelopes)
        .where(envelopes.c.envelope_id.in_(envelope_ids), envelopes.c.status == PENDING)
        .values(claimed_at=now)
    )


def count_pending() -> sa.Select[int]:
    return sa.select(sa.func.count()).select_from(envelopes).where(envelopes.c.status == PENDING)


# -- the local spool (recorder.slack): SQLite rows moved into the main database

#: Processing-state columns a drained row keeps, beside RECORD_COLUMNS.
STATE_COLUMNS: tuple[str, ...] = ("status", "completed_at", "attempts", "claimed_at")


def select_drainable(cutoff: dt.datetime, exclude: list[str], limit: int) -> sa.Select[Any]:
    """Spooled rows ready to move: finished, or pending and not claimed since ``cutoff``.

    Rows whose handler is still running (``exclude``, and any claim renewed
    after ``cutoff``) stay, so their completion is recorded where they are.
    """
    ready = sa.or_(
        envelopes.c.status == DONE,
        _claimed_or_received() < sa.bindparam("cutoff", cutoff, type_=UTCDateTime),
    )
    stmt = sa.select(
        envelopes.c.envelope_id,
        envelopes.c.envelope_text,
        envelopes.c.received_at,
        *(envelopes.c[name] for name in STATE_COLUMNS),
    ).where(ready)
    if exclude:
        stmt = stmt.where(envelopes.c.envelope_id.not_in(exclude))
    return stmt.order_by(envelopes.c.received_at, envelopes.c.envelope_id).limit(limit)


def insert_drained(dialect: Dialect) -> Insert:
    """:func:`insert_envelope` plus the processing state the row had in the spool.

    A row already present (another instance recorded the envelope, or an
    earlier drain got this far) is skipped: draining is idempotent.
    """
    stmt = insert_envelope(dialect)
    return stmt.values(
        {name: sa.bindparam(name, type_=envelopes.c[name].type) for name in STATE_COLUMNS}
    )


def delete_envelopes(envelope_ids: list[str]) -> Delete:
    return sa.delete(envelopes).where(envelopes.c.envelope_id.in_(envelope_ids))


def count_envelopes() -> sa.Select[int]:
    return sa.select(sa.func.count()).select_from(envelopes)


def select_dedupe_keys() -> sa.Select[Any]:
    """``envelope_id, event_id`` of every row: the keys a duplicate would match."""
    return sa.select(envelopes.c.envelope_id, envelopes.c.event_id)


# -- bulk import on PostgreSQL: COPY into a temporary table, then one INSERT ... SELECT

IMPORT_STAGING_TABLE = "recorder_import_rows"

CREATE_IMPORT_STAGING = f"""
CREATE TEMPORARY TABLE IF NOT EXISTS {IMPORT_STAGING_TABLE} (
    envelope_id text, envelope_type text, received_at timestamptz, team_id text,
    enterprise_id text, api_app_id text, event_id text, event_type text,
    channel_id text, user_id text, retry_attempt integer, retry_reason text,
    envelope text, envelope_text text, envelope_sha256 text
) ON COMMIT DELETE ROWS
"""

COPY_INTO_IMPORT_STAGING = (
    f"COPY {IMPORT_STAGING_TABLE} ({', '.join(copy_rows.STAGED_COLUMNS)}) FROM STDIN"
)

# No conflict target, as in insert_envelope: both unique keys dedupe, and rows
# repeated inside one batch are skipped like any other duplicate. The first
# of them wins: a temporary table just filled by COPY is read back in the
# order it was written (one backend's local buffers, no synchronized scans).
# A staged NULL received_at is the time of this write; a NULL envelope means
# the queryable copy is the exact text.
_STAGED_VALUES = ", ".join(
    "COALESCE(envelope, envelope_text)::jsonb"
    if c == "envelope"
    else "COALESCE(received_at, %(now)s::timestamptz)"
    if c == "received_at"
    else c
    for c in copy_rows.STAGED_COLUMNS
)
INSERT_FROM_IMPORT_STAGING = f"""
INSERT INTO envelopes ({", ".join(copy_rows.STAGED_COLUMNS)}, {", ".join(IMPORT_STATE_COLUMNS)})
SELECT {_STAGED_VALUES}, %(status)s::text, %(completed_at)s::timestamptz
FROM {IMPORT_STAGING_TABLE}
ON CONFLICT DO NOTHING
"""


# -- audit queries (recorder query): keyset pagination on (received_at, envelope_id)

Keyset = tuple[dt.datetime, str]
"""``(received_at, envelope_id)`` of the last row a page or batch returned."""


def keyset_after(after: Keyset | None) -> list[sa.ColumnElement[bool]]:
    """Conditions for rows after ``after`` in ``(received_at, envelope_id)`` order.

    The one keyset of audit pages and prune batches. Spelled ``received_at >=
    t AND (received_at > t OR envelope_id > id)`` rather than as a row
    comparison so that both engines bound the scan of the ``(column,
    received_at)`` indexes by time.
    """
    if after is None:
        return []
    received_at = envelopes.c.received_at
    after_at = sa.bindparam("after_at", after[0], type_=UTCDateTime)
    return [
        received_at >= after_at,
        sa.or_(received_at > after_at, envelopes.c.envelope_id > after[1]),
    ]


#: Columns an audit query returns, in output order; envelope_text last.
AUDIT_COLUMNS: tuple[str, ...] = (
    "received_at",
    "envelope_id",
    "envelope_type",
    "event_type",
    "team_id",
    "enterprise_id",
    "api_app_id",
    "channel_id",
    "user_id",
    "event_id",
    "retry_attempt",
    "retry_reason",
    "status",
    "envelope_sha256",
    "envelope_text",
)


def select_envelopes_page(
    *,
    page_size: int,
    after: Keyset | None = None,
    team_id: str | None = None,
    channel_id: str | None = None,
    user_id: str | None = None,
    envelope_type: str | None = None,
    event_type: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> sa.Select[Any]:
    """One page of matching envelopes, oldest first, after the keyset ``after``.

    ``since`` is inclusive and ``until`` exclusive.
    """
    received_at = envelopes.c.received_at
    conditions: list[sa.ColumnElement[bool]] = []
    for column, value in (
        ("team_id", team_id),
        ("channel_id", channel_id),
        ("user_id", user_id),
        ("envelope_type", envelope_type),
        ("event_type", event_type),
    ):
        if value is not None:
            conditions.append(envelopes.c[column] == value)
    if since is not None:
        conditions.append(received_at >= sa.bindparam("since", since, type_=UTCDateTime))
    if until is not None:
        conditions.append(received_at < sa.bindparam("until", until, type_=UTCDateTime))
    conditions.extend(keyset_after(after))
    return (
        sa.select(*(envelopes.c[name] for name in AUDIT_COLUMNS))
        .where(*conditions)
        .order_by(received_at, envelopes.c.envelope_id)
        .limit(page_size)
    )


# -- policies and holds (recorder.policies, recorder.holds)


def select_policies() -> sa.Select[Any]:
    return sa.select(retention_policies)


def select_policy_for_update(name: str) -> sa.Select[Any]:
    """The policy ``name``, locked until the transaction ends (set_policy's read-modify-write)."""
    return select_policies().where(retention_policies.c.name == name).with_for_update()


def insert_policy(values: dict[str, Any]) -> Insert:
    return sa.insert(retention_policies).values(values)


def update_policy(name: str, values: dict[str, Any]) -> Update:
    return sa.update(retention_policies).where(retention_policies.c.name == name).values(values)


def delete_policy(name: str) -> ReturningDelete[Any]:
    """Delete the policy ``name``, returning the row it had (none when there was no such policy)."""
    return (
        sa.delete(retention_policies)
        .where(retention_policies.c.name == name)
        .returning(*retention_policies.c)
    )


def select_holds(*, include_released: bool = True) -> sa.Select[Any]:
    """Holds in order of creation."""
    stmt = sa.select(legal_holds).order_by(legal_holds.c.created_at, legal_holds.c.name)
    if not include_released:
        stmt = stmt.where(legal_holds.c.released_at.is_(None))
    return stmt


def select_hold_released_at(name: str) -> sa.Select[Any]:
    """``released_at`` of the hold ``name`` (NULL while in force); no row when none exists."""
    return sa.select(legal_holds.c.released_at).where(legal_holds.c.name == name)


def select_hold_for_update(name: str) -> sa.Select[Any]:
    return sa.select(legal_holds).where(legal_holds.c.name == name).with_for_update()


def insert_hold(values: dict[str, Any]) -> Insert:
    return sa.insert(legal_holds).values(values)


def release_hold(name: str, *, at: dt.datetime, actor: str) -> Update:
    return (
        sa.update(legal_holds)
        .where(legal_holds.c.name == name)
        .values(released_at=at, released_by=actor)
    )


# -- the change log: one row per change to a policy or a hold, in the changing transaction


def insert_change(
    *, at: dt.datetime, actor: str, action: str, kind: str, name: str, details: dict[str, Any]
) -> Insert:
    return sa.insert(change_log).values(
        at=at, actor=actor, action=action, object_kind=kind, object_name=name, details=details
    )


def select_change_log(limit: int | None) -> sa.Select[Any]:
    """Changes, newest first (the newest ``limit`` when given)."""
    stmt = sa.select(change_log).order_by(change_log.c.id.desc())
    return stmt if limit is None else stmt.limit(limit)


# -- prune: the run log, the batch, the counts a prune run reports, legal holds


def insert_prune_run(values: dict[str, Any]) -> Insert:
    """Start (or, locked out, record at once) a prune run, returning its id."""
    return sa.insert(prune_runs).values(values).returning(prune_runs.c.id)


def finish_prune_run(run_id: int, values: dict[str, Any]) -> Update:
    return sa.update(prune_runs).where(prune_runs.c.id == run_id).values(values)


def select_prune_run_policies(run_id: int) -> sa.Select[Any]:
    """The policies a run applies, in precedence order, each with its cutoff."""
    return sa.select(prune_runs.c.policies).where(prune_runs.c.id == run_id)


def select_prune_runs(limit: int | None) -> sa.Select[Any]:
    """Prune runs, newest first (the newest ``limit`` when given)."""
    stmt = sa.select(prune_runs).order_by(prune_runs.c.id.desc())
    return stmt if limit is None else stmt.limit(limit)


#: Columns a retention policy or a legal hold can match on, NULL meaning "any".
POLICY_MATCH_COLUMNS: tuple[str, ...] = (
    "team_id",
    "channel_id",
    "user_id",
    "envelope_type",
    "event_type",
)
HOLD_MATCH_COLUMNS: tuple[str, ...] = ("team_id", "channel_id", "user_id")

Match = dict[str, str | None]
"""Column name -> required value; a missing or None value matches anything."""


def _matches(match: Match) -> sa.ColumnElement[bool]:
    """True where a row has every value ``match`` requires (never NULL, so NOT works)."""
    terms = [
        envelopes.c[name].is_not_distinct_from(value)
        for name, value in match.items()
        if value is not None
    ]
    return sa.and_(sa.true(), *terms)


def held() -> sa.Exists:
    """True for an envelope that a legal hold in force covers.

    Evaluated inside every prune statement, so a hold placed while a prune
    run is going protects its records from the next batch on.
    """
    h = legal_holds.c
    e = envelopes.c
    return sa.exists().where(
        h.released_at.is_(None),
        *(sa.or_(h[name].is_(None), h[name] == e[name]) for name in HOLD_MATCH_COLUMNS),
        sa.or_(h.since.is_(None), e.received_at >= h.since),
        sa.or_(h.until.is_(None), e.received_at < h.until),
    )


def expired_under(
    match: Match, outranked_by: list[Match], cutoff: dt.datetime
) -> list[sa.ColumnElement[bool]]:
    """Conditions for rows a policy decides, and has expired, whether held or not.

    A row is decided by the policy when it matches it and matches none of the
    policies that outrank it (``outranked_by``, listed in precedence order).
    The positive match is spelled with ``=`` so that the
    ``(column, received_at)`` indexes serve it.
    """
    conditions: list[sa.ColumnElement[bool]] = [
        envelopes.c[name] == value for name, value in match.items() if value is not None
    ]
    conditions.extend(sa.not_(_matches(higher)) for higher in outranked_by)
    conditions.append(envelopes.c.received_at < sa.bindparam("cutoff", cutoff, type_=UTCDateTime))
    return conditions


def count_expired(conditions: list[sa.ColumnElement[bool]], *, is_held: bool) -> sa.Select[Any]:
    """How many rows meet ``conditions`` (from :func:`expired_under`) and are (not) held."""
    hold = held() if is_held else sa.not_(held())
    return sa.select(sa.func.count()).select_from(envelopes).where(*conditions, hold)


def select_prune_batch(
    conditions: list[sa.ColumnElement[bool]],
    *,
    batch_size: int,
    after: Keyset | None,
) -> sa.Select[Any]:
    """The next batch of expired, unheld rows, oldest first, after the keyset ``after``.

    Walking the keyset means held rows (never deleted) are passed over once,
    not rescanned by every batch.
    """
    return (
        sa.select(envelopes.c.envelope_id, envelopes.c.received_at)
        .where(*conditions, sa.not_(held()), *keyset_after(after))
        .order_by(envelopes.c.received_at, envelopes.c.envelope_id)
        .limit(batch_size)
    )


def _pruned_row(
    source: Any, prune_run_id: int, policy_name: str, pruned_at: sa.ColumnElement[Any]
) -> tuple[list[str], sa.Select[Any]]:
    """The ``pruned_envelopes`` row of each envelope in ``source``."""
    columns = [
        "prune_run_id",
        "envelope_id",
        "envelope_sha256",
        "received_at",
        "policy_name",
        *HOLD_MATCH_COLUMNS,
        "pruned_at",
    ]
    return columns, sa.select(
        sa.literal(prune_run_id, sa.Integer),
        source.c.envelope_id,
        source.c.envelope_sha256,
        source.c.received_at,
        sa.literal(policy_name, sa.Text),
        *(source.c[name] for name in HOLD_MATCH_COLUMNS),
        pruned_at,
    )


def prune_batch_postgresql(
    conditions: list[sa.ColumnElement[bool]],
    *,
    prune_run_id: int,
    policy_name: str,
    batch_size: int,
    after: Keyset | None,
) -> sa.Select[Any]:
    """One statement that deletes a batch and logs it: the benchmark's one-statement baseline.

    (`recorder prune` calls the database-side functions on PostgreSQL now.)

    ``WITH batch AS (SELECT ... FOR UPDATE SKIP LOCKED), d AS (DELETE ...
    RETURNING ...), logged AS (INSERT INTO pruned_envelopes SELECT ... FROM d
    RETURNING ...) SELECT ...``: the delete and its record commit together or
    not at all. Rows a writer holds locked (a concurrent ``complete``) are
    skipped, not waited for. Returns one row, ``n, received_at,
    envelope_id``: how many rows went and the last of them in keyset order
    (no row at all when the batch was empty), so a batch costs one round trip
    whatever its size.
    """
    batch = (
        select_prune_batch(conditions, batch_size=batch_size, after=after)
        .with_for_update(skip_locked=True)
        .cte("batch")
    )
    removed = (
        sa.delete(envelopes)
        .where(envelopes.c.envelope_id == batch.c.envelope_id)
        .returning(
            envelopes.c.envelope_id,
            envelopes.c.envelope_sha256,
            envelopes.c.received_at,
            *(envelopes.c[name] for name in HOLD_MATCH_COLUMNS),
        )
        .cte("d")
    )
    columns, rows = _pruned_row(removed, prune_run_id, policy_name, sa.func.now())
    logged = (
        sa.insert(pruned_envelopes)
        .from_select(columns, rows)
        .returning(pruned_envelopes.c.envelope_id, pruned_envelopes.c.received_at)
        .cte("logged")
    )
    count = sa.select(sa.func.count()).select_from(logged).scalar_subquery()
    return (
        sa.select(
            count.label("n"),
            sa.type_coerce(logged.c.received_at, UTCDateTime).label("received_at"),
            logged.c.envelope_id,
        )
        .order_by(logged.c.received_at.desc(), logged.c.envelope_id.desc())
        .limit(1)
    )


def _ids_param() -> sa.Select[Any]:
    """``SELECT value FROM json_each(:ids)``: a batch of ids as one parameter."""
    ids = sa.func.json_each(sa.bindparam("ids", type_=sa.Text)).table_valued("value")
    return sa.select(ids.c.value)


def log_pruned_sqlite(*, prune_run_id: int, policy_name: str, pruned_at: dt.datetime) -> Insert:
    """Copy the batch's rows (ids as a JSON array in ``:ids``) into ``pruned_envelopes``.

    Runs in the same ``BEGIN IMMEDIATE`` transaction as
    :func:`delete_pruned_sqlite`, which follows it.
    """
    columns, rows = _pruned_row(
        envelopes, prune_run_id, policy_name, sa.literal(pruned_at, UTCDateTime)
    )
    return sa.insert(pruned_envelopes).from_select(
        columns, rows.where(envelopes.c.envelope_id.in_(_ids_param()))
    )


def delete_pruned_sqlite() -> Delete:
    """Delete the batch whose ids are the JSON array ``:ids``."""
    return sa.delete(envelopes).where(envelopes.c.envelope_id.in_(_ids_param()))


# -- prune on PostgreSQL: calls of the database-side functions (migrations 0007, 0008)
#
# They run as the schema owner (SECURITY DEFINER) and apply the run's policies
# and the legal holds themselves, so a pruner role needs EXECUTE on them and
# no DELETE on envelopes, no write on the logs.

#: Signatures of the functions ``recorder db grant --pruner`` grants EXECUTE on.
PRUNER_FUNCTIONS: tuple[str, ...] = (
    "recorder_prune_begin(boolean, text, text, timestamp with time zone)",
    "recorder_prune_locked_out(boolean, text, text, text)",
    "recorder_prune_candidates(integer, text, timestamp with time zone, text, integer)",
    "recorder_prune_delete(integer, text, text[])",
    "recorder_prune_delete_archived(integer, text, text, text, text[])",
    "recorder_prune_batch(integer, text, timestamp with time zone, text, integer)",
    "recorder_prune_count(integer, text, boolean)",
    "recorder_prune_finish(integer, text, bigint, bigint, text, jsonb)",
)


def _ts(name: str, value: dt.datetime | None) -> sa.BindParameter[dt.datetime]:
    return sa.bindparam(name, value, type_=UTCDateTime)


def prune_begin(
    *, dry_run: bool, actor: str, host: str, as_of: dt.datetime | None
) -> sa.Select[Any]:
    """Start a run: ``run_id, started_at, cutoffs`` (policy name -> ISO cutoff)."""
    call = sa.func.recorder_prune_begin(dry_run, actor, host, _ts("as_of", as_of))
    run = call.table_valued(
        sa.column("run_id", sa.Integer),
        sa.column("started_at", UTCDateTime),
        sa.column("cutoffs", postgresql.JSONB),
    )
    return sa.select(run.c.run_id, run.c.started_at, run.c.cutoffs)


def prune_locked_out(*, dry_run: bool, actor: str, host: str, error: str) -> sa.Select[Any]:
    """Record a run that found another holding the lock; returns its id."""
    return sa.select(sa.func.recorder_prune_locked_out(dry_run, actor, host, error))


def prune_candidates(
    *, run_id: int, policy_name: str, after: Keyset | None, limit: int
) -> sa.Select[Any]:
    """The next envelopes the run may remove under a policy (keyset order); removes nothing."""
    call = sa.func.recorder_prune_candidates(
        run_id,
        policy_name,
        _ts("after_at", after[0] if after else None),
        sa.bindparam("after_id", after[1] if after else None, type_=sa.Text),
        limit,
    ).table_valued(
        sa.column("envelope_id", sa.Text),
        sa.column("received_at", UTCDateTime),
        sa.column("envelope_sha256", sa.Text),
    )
    return sa.select(call.c.envelope_id, call.c.received_at, call.c.envelope_sha256)


def prune_delete(*, run_id: int, policy_name: str, envelope_ids: list[str]) -> sa.Select[Any]:
    """Remove those of ``envelope_ids`` the run's policy allows; returns the removed ones."""
    call = sa.func.recorder_prune_delete(
        run_id,
        policy_name,
        sa.bindparam("ids", envelope_ids, type_=postgresql.ARRAY(sa.Text)),
    ).table_valued(sa.column("envelope_id", sa.Text), sa.column("received_at", UTCDateTime))
    return sa.select(call.c.envelope_id, call.c.received_at)


def prune_delete_archived(
    *, run_id: int, policy_name: str, archive_id: str, file_name: str, envelope_ids: list[str]
) -> sa.Select[Any]:
    """:func:`prune_delete` for envelopes in an archive file the manifest has as ``written``.

    The one way to delete under a policy that requires archiving (migration 0008).
    """
    call = sa.func.recorder_prune_delete_archived(
        run_id,
        policy_name,
        archive_id,
        file_name,
        sa.bindparam("ids", envelope_ids, type_=postgresql.ARRAY(sa.Text)),
    ).table_valued(sa.column("envelope_id", sa.Text), sa.column("received_at", UTCDateTime))
    return sa.select(call.c.envelope_id, call.c.received_at)


def prune_batch(
    *, run_id: int, policy_name: str, after: Keyset | None, limit: int
) -> sa.Select[Any]:
    """One batch, one round trip: ``n, received_at, envelope_id`` (the last key), or no row."""
    call = sa.func.recorder_prune_batch(
        run_id,
        policy_name,
        _ts("after_at", after[0] if after else None),
        sa.bindparam("after_id", after[1] if after else None, type_=sa.Text),
        limit,
    ).table_valued(
        sa.column("n", sa.BigInteger),
        sa.column("received_at", UTCDateTime),
        sa.column("envelope_id", sa.Text),
    )
    return sa.select(call.c.n, call.c.received_at, call.c.envelope_id)


def prune_count(*, run_id: int, policy_name: str, held: bool) -> sa.Select[Any]:
    """Envelopes the run's policy has expired that are (``held``) or are not held."""
    return sa.select(sa.func.recorder_prune_count(run_id, policy_name, held))


def prune_finish(
    *,
    run_id: int,
    status: str,
    held: int,
    skipped: int,
    error: str | None,
    would_delete: dict[str, int] | None,
) -> sa.Select[Any]:
    """End a running run; returns its finish time (the database's clock)."""
    return sa.select(
        sa.func.recorder_prune_finish(
            run_id,
            status,
            sa.bindparam("held", held, type_=sa.BigInteger),
            sa.bindparam("skipped", skipped, type_=sa.BigInteger),
            sa.bindparam("error", error, type_=sa.Text),
            sa.bindparam("would_delete", would_delete, type_=postgresql.JSONB),
            type_=UTCDateTime,
        )
    )


# -- archive before delete (recorder.archive): list whole rows, then delete the listed ids


def select_archive_batch(
    conditions: list[sa.ColumnElement[bool]],
    *,
    batch_size: int,
    after: tuple[dt.datetime, str] | None,
    before: dt.datetime | None,
) -> sa.Select[Any]:
    """The next expired, unheld rows with every audit column, oldest first.

    ``before`` (exclusive) keeps one archive file inside one time partition.
    """
    bound = (
        []
        if before is None
        else [envelopes.c.received_at < sa.bindparam("before", before, type_=UTCDateTime)]
    )
    return (
        sa.select(*(envelopes.c[name] for name in AUDIT_COLUMNS))
        .where(*conditions, sa.not_(held()), *keyset_after(after), *bound)
        .order_by(envelopes.c.received_at, envelopes.c.envelope_id)
        .limit(batch_size)
    )


def _listed_ids() -> sa.ColumnElement[bool]:
    return envelopes.c.envelope_id.in_(_ids_param())


def log_archived_sqlite(
    conditions: list[sa.ColumnElement[bool]],
    *,
    prune_run_id: int,
    policy_name: str,
    pruned_at: dt.datetime,
) -> Insert:
    """Log the archived ids in ``:ids`` (a JSON array) that are still expired and unheld.

    Runs in one ``BEGIN IMMEDIATE`` transaction with :func:`delete_archived_sqlite`.
    On PostgreSQL the archiver calls :func:`prune_delete` instead.
    """
    columns, rows = _pruned_row(
        envelopes, prune_run_id, policy_name, sa.literal(pruned_at, UTCDateTime)
    )
    return sa.insert(pruned_envelopes).from_select(
        columns, rows.where(_listed_ids(), *conditions, sa.not_(held()))
    )


def delete_archived_sqlite(conditions: list[sa.ColumnElement[bool]]) -> Delete:
    return sa.delete(envelopes).where(_listed_ids(), *conditions, sa.not_(held()))


def naive_prune_delete(conditions: list[sa.ColumnElement[bool]]) -> Delete:
    """One unbatched ``DELETE`` of everything expired and unheld: the benchmark's baseline."""
    return sa.delete(envelopes).where(*conditions, sa.not_(held()))


# -- reporting: counts per day and dimension (recorder stats, recorder report)

#: Dimensions ``recorder stats --by`` accepts, by the column each counts.
STATS_DIMENSIONS: tuple[str, ...] = ("envelope_type", "event_type", "channel_id", "user_id")


def received_day(dialect: Dialect) -> sa.ColumnElement[Any]:
    """The UTC calendar day of ``received_at``.

    PostgreSQL: ``timezone('UTC', received_at)::date`` (independent of the
    session time zone); SQLite stores UTC text, so ``date(received_at)``.
    """
    if dialect.name == "postgresql":
        return sa.cast(sa.func.timezone("UTC", envelopes.c.received_at), sa.Date)
    return sa.func.date(envelopes.c.received_at)


def _received_between(
    since: dt.datetime | None, until: dt.datetime | None
) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = []
    if since is not None:
        conditions.append(
            envelopes.c.received_at >= sa.bindparam("since", since, type_=UTCDateTime)
        )
    if until is not None:
        conditions.append(envelopes.c.received_at < sa.bindparam("until", until, type_=UTCDateTime))
    return conditions


def select_daily_counts(
    dialect: Dialect, by: str, since: dt.datetime | None, until: dt.datetime | None
) -> sa.Select[Any]:
    """``day, key, count`` of envelopes per UTC day and value of the ``by`` column."""
    day = received_day(dialect).label("day")
    key = envelopes.c[by].label("key")
    return (
        sa.select(day, key, sa.func.count().label("n"))
        .where(*_received_between(since, until))
        .group_by(day, key)
        .order_by(day, key)
    )


def select_top_values(
    column: str, since: dt.datetime | None, until: dt.datetime | None, limit: int
) -> sa.Select[Any]:
    """The ``limit`` most frequent non-empty values of ``column``, most frequent first."""
    key = envelopes.c[column].label("key")
    count = sa.func.count().label("n")
    return (
        sa.select(key, count)
        .where(envelopes.c[column].is_not(None), *_received_between(since, until))
        .group_by(key)
        .order_by(count.desc(), key)
        .limit(limit)
    )


def select_daily_retries(
    dialect: Dialect, since: dt.datetime | None, until: dt.datetime | None
) -> sa.Select[Any]:
    """``day, retry_reason, count, max_attempt`` of envelopes Slack delivered as retries.

    A retry (``retry_attempt > 0``) is recorded only when its earlier
    delivery was not (same ``event_id`` dedupes), so these rows are the
    retries that reached the recorder first-hand.
    """
    day = received_day(dialect).label("day")
    reason = sa.func.coalesce(envelopes.c.retry_reason, "").label("retry_reason")
    return (
        sa.select(
            day,
            reason,
            sa.func.count().label("n"),
            sa.func.max(envelopes.c.retry_attempt).label("max_attempt"),
        )
        .where(envelopes.c.retry_attempt > 0, *_received_between(since, until))
        .group_by(day, reason)
        .order_by(day, reason)
    )


def count_erased(since: dt.datetime | None, until: dt.datetime | None) -> sa.Select[Any]:
    """Envelopes received in the period that logged erasures erased or scrubbed."""
    q = erased_envelopes.c
    terms: list[sa.ColumnElement[bool]] = [q.state == "done"]
    if since is not None:
        terms.append(q.received_at >= sa.bindparam("erased_since", since, type_=UTCDateTime))
    if until is not None:
        terms.append(q.received_at < sa.bindparam("erased_until", until, type_=UTCDateTime))
    return sa.select(sa.func.count(sa.distinct(q.envelope_id))).where(*terms)


def select_totals(since: dt.datetime | None, until: dt.datetime | None) -> sa.Select[Any]:
    """Envelope count, first and last ``received_at``, and distinct channels and users."""
    e = envelopes.c
    stmt = sa.select(
        sa.func.count().label("envelopes"),
        sa.func.min(e.received_at).label("first"),
        sa.func.max(e.received_at).label("last"),
        sa.func.count(sa.distinct(e.channel_id)).label("channels"),
        sa.func.count(sa.distinct(e.user_id)).label("users"),
    ).where(*_received_between(since, until))
    return cast("sa.Select[Any]", stmt)


# -- tamper evidence: the seal chain (recorder.seal) and its verification (recorder.verify)


def seal_id_key(dialect: Dialect) -> sa.ColumnElement[str]:
    """``envelope_id`` in byte order on every engine, as the chain orders it.

    Byte order, not the database's locale: a restore onto a server with
    another collation must order (and so seal and verify) the same way.
    """
    if dialect.name == "sqlite":
        return envelopes.c.envelope_id
    return envelopes.c.envelope_id.collate("C")


def _seal_key(dialect: Dialect) -> Any:
    return sa.tuple_(envelopes.c.received_at, seal_id_key(dialect))


def key_after(dialect: Dialect, at: dt.datetime, envelope_id: str) -> sa.ColumnElement[bool]:
    """Rows after the key ``(at, envelope_id)`` in seal order."""
    # The plain received_at bound lets the planner use ix_envelopes_received_at.
    return sa.and_(
        envelopes.c.received_at >= at,
        _seal_key(dialect) > sa.tuple_(sa.literal(at, UTCDateTime), envelope_id),
    )


def sealed_through(
    dialect: Dialect, cutoff: dt.datetime | None, last: tuple[dt.datetime, str] | None
) -> sa.ColumnElement[bool]:
    """Rows at or before the point the range blocks have sealed everything up to.

    That point is a cutoff (every row received up to it was sealed) or, when
    a seal run stopped between blocks, the last sealed key.
    """
    if cutoff is not None:
        return envelopes.c.received_at <= sa.literal(cutoff, UTCDateTime)
    if last is None:
        return sa.false()
    at, envelope_id = last
    return sa.and_(
        envelopes.c.received_at <= at,
        _seal_key(dialect) <= sa.tuple_(sa.literal(at, UTCDateTime), envelope_id),
    )


def _seal_row_columns() -> list[sa.ColumnElement[Any]]:
    return [envelopes.c.envelope_id, envelopes.c.received_at, envelopes.c.envelope_text]


def select_next_range(
    dialect: Dialect, after: sa.ColumnElement[bool] | None, cutoff: dt.datetime, limit: int
) -> sa.Select[Any]:
    """The next ``limit`` rows to seal in order: received by ``cutoff``, after ``after``."""
    stmt = sa.select(*_seal_row_columns()).where(
        envelopes.c.received_at <= sa.literal(cutoff, UTCDateTime)
    )
    if after is not None:
        stmt = stmt.where(after)
    return stmt.order_by(envelopes.c.received_at, seal_id_key(dialect)).limit(limit)


def is_sealed() -> sa.Exists:
    """The row is a member of some block (same id and received_at)."""
    return sa.exists().where(
        sealed_envelopes.c.envelope_id == envelopes.c.envelope_id,
        sealed_envelopes.c.received_at == envelopes.c.received_at,
    )


def select_unsealed_behind(
    dialect: Dialect,
    through: sa.ColumnElement[bool],
    columns: list[sa.ColumnElement[Any]] | None = None,
    envelope_ids: list[str] | None = None,
) -> sa.Select[Any]:
    """Rows the range blocks passed over (at or before ``through``) that no block holds."""
    stmt = sa.select(*(columns or _seal_row_columns())).where(through, ~is_sealed())
    if envelope_ids is not None:
        stmt = stmt.where(envelopes.c.envelope_id.in_(envelope_ids))
    return stmt.order_by(envelopes.c.received_at, seal_id_key(dialect))


def select_last_block(kind: str | None = None) -> sa.Select[Any]:
    """The newest block (of ``kind``, if given)."""
    stmt = sa.select(seal_blocks)
    if kind is not None:
        stmt = stmt.where(seal_blocks.c.kind == kind)
    return stmt.order_by(seal_blocks.c.block_no.desc()).limit(1)


def select_blocks() -> sa.Select[Any]:
    return sa.select(seal_blocks).order_by(seal_blocks.c.block_no)


def select_block_members(block_no: int) -> sa.Select[Any]:
    return (
        sa.select(sealed_envelopes)
        .where(sealed_envelopes.c.block_no == block_no)
        .order_by(sealed_envelopes.c.position)
    )


def insert_block() -> Insert:
    return sa.insert(seal_blocks)


#: One statement over arrays on PostgreSQL: a block of 10,000 members in one round trip.
def select_stray_members(block_nos: Sequence[int]) -> sa.Select[Any]:
    """Members listed under a block number not in ``block_nos`` (the chain's): block_no, count.

    Nothing else stops such a row (sealed_envelopes has no foreign key: its
    per-row check slowed sealing). With the usual chain, numbered from 1
    without gaps, two ranges of the primary key are read.
    """
    no = sealed_envelopes.c.block_no
    condition: sa.ColumnElement[bool] = sa.true()
    if block_nos:
        first, last = min(block_nos), max(block_nos)
        condition = sa.or_(no < first, no > last)
        if last - first + 1 != len(set(block_nos)):  # gaps: check against the table itself
            condition = ~sa.exists().where(seal_blocks.c.block_no == no)
    return sa.select(no, sa.func.count().label("n")).where(condition).group_by(no).order_by(no)


INSERT_MEMBERS_POSTGRESQL = sa.text(
    """
    INSERT INTO sealed_envelopes (block_no, position, envelope_id, received_at, envelope_sha256)
    SELECT :block_no, m.ord - 1, m.envelope_id, m.received_at, m.envelope_sha256
    FROM unnest(CAST(:ids AS text[]), CAST(:ats AS timestamptz[]), CAST(:shas AS text[]))
        WITH ORDINALITY AS m(envelope_id, received_at, envelope_sha256, ord)
    """
)


def insert_members() -> Insert:
    """Member rows, one parameter set each (SQLite)."""
    return sa.insert(sealed_envelopes)


def select_pruned_log(envelope_ids: list[str]) -> sa.Select[Any]:
    return sa.select(
        pruned_envelopes.c.envelope_id,
        pruned_envelopes.c.envelope_sha256,
        pruned_envelopes.c.received_at,
        pruned_envelopes.c.prune_run_id,
    ).where(pruned_envelopes.c.envelope_id.in_(envelope_ids))


# -- replay (recorder.replaying): the run log and the envelopes each run replayed


def select_unfinished_replay(handler: str, filters: str) -> sa.Select[Any]:
    """The newest run of ``handler`` over ``filters`` that did not complete, if any."""
    return (
        sa.select(replay_runs.c.id)
        .where(
            replay_runs.c.handler == handler,
            replay_runs.c.filters == filters,
            replay_runs.c.status != "completed",
        )
        .order_by(replay_runs.c.id.desc())
        .limit(1)
    )


def select_replayed_ids(run_id: int) -> sa.Select[Any]:
    return sa.select(replayed_envelopes.c.envelope_id).where(replayed_envelopes.c.run_id == run_id)


def insert_replay_run(values: dict[str, Any]) -> Any:
    return sa.insert(replay_runs).values(values).returning(replay_runs.c.id)


def insert_replayed_envelope(
    *, run_id: int, envelope_id: str, replayed_at: dt.datetime, error: str | None
) -> Insert:
    return sa.insert(replayed_envelopes).values(
        run_id=run_id, envelope_id=envelope_id, replayed_at=replayed_at, error=error
    )


def finish_replay_run(run_id: int, status: str, finished_at: dt.datetime) -> Update:
    """Close a run; a resumed run that completes is marked completed too."""
    return (
        sa.update(replay_runs)
        .where(replay_runs.c.id == run_id)
        .values(status=status, finished_at=finished_at)
    )


# PostgreSQL: a whole range block in one statement. The server reads the next
# rows in seal order, hashes each text, numbers the members, builds the block
# digest from the header parts the caller renders (recorder.seal.header_parts)
# and inserts the block and its members; only the block comes back. Ids that
# JSON would escape (and years the two clocks spell differently) make
# ``plain`` false: nothing is written then, and the caller seals that block
# in Python.
_PG_TIMESTAMP = """to_char({0} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
#: The years ``_PG_TIMESTAMP`` spells as ``recorder.timespec.timestamp_text`` does.
_PG_SPELLABLE_TIME = (
    "{0} >= TIMESTAMPTZ '1000-01-01 00:00:00+00' AND {0} < TIMESTAMPTZ '9999-01-01 00:00:00+00'"
)
#: Printable ASCII but the quote and the backslash: what json.dumps copies as is.
_PG_JSON_PLAIN = r"""{0} !~ '[^ !#-\[\]-~]'"""


def _pg_seal_after(through: str | None) -> str:
    """The condition for rows after the sealed point ("cutoff", "key" or None: all)."""
    return {
        None: "",
        "cutoff": "AND received_at > CAST(:through_cutoff AS timestamptz)",
        # received_at >= bounds the index scan; the row comparison does the rest.
        "key": "AND received_at >= CAST(:through_at AS timestamptz) "
        'AND (received_at, envelope_id COLLATE "C") '
        '> (CAST(:through_at AS timestamptz), CAST(:through_id AS text) COLLATE "C")',
    }[through]


def seal_probe_postgresql(through: str | None) -> sa.TextClause:
    """Whether any row waits to be sealed: one index probe (parameters as below).

    The order makes it one: the first row of the index range, where an
    unordered LIMIT 1 may be planned as a scan through every sealed row.
    """
    return sa.text(
        "SELECT 1 FROM envelopes "
        f"WHERE received_at <= CAST(:cutoff AS timestamptz) {_pg_seal_after(through)} "
        "ORDER BY received_at LIMIT 1"
    )


def seal_range_block_postgresql(through: str | None) -> sa.TextClause:
    """The statement for the next range block; ``through`` is None, "cutoff" or "key".

    Parameters: ``cutoff``, ``lookahead`` (block size + 1), ``block_size``,
    ``block_no``, ``sealed_at``, ``prev_digest``, the header parts ``head``,
    ``mid_final``, ``mid_open``, ``mid_last``, ``tail``; ``through_cutoff``
    or ``through_at`` and ``through_id`` as ``through`` says.
    """
    after = _pg_seal_after(through)
    ts = _PG_TIMESTAMP.format("received_at")
    plain = _PG_JSON_PLAIN.format("envelope_id")
    # One pass in key order numbers the rows as it reads them (no second
    # sort); the aggregate takes the block's rows (position < block_size)
    # and sees the lookahead row only to count it.
    return sa.text(
        f"""
WITH picked AS MATERIALIZED (
    SELECT (row_number() OVER (ORDER BY received_at, envelope_id COLLATE "C") - 1)::int
               AS position,
           envelope_id, received_at,
           encode(sha256(convert_to(envelope_text, 'UTF8')), 'hex') AS sha
    FROM envelopes
    WHERE received_at <= CAST(:cutoff AS timestamptz) {after}
    ORDER BY received_at, envelope_id COLLATE "C"
    LIMIT :lookahead
),
summary AS (
    SELECT count(*) FILTER (WHERE position < :block_size) AS n,
           count(*) <= :block_size AS final,
           coalesce(bool_and({plain} AND {_PG_SPELLABLE_TIME.format("received_at")})
               FILTER (WHERE position < :block_size), false) AS plain,
           string_agg('["' || envelope_id || '","' || {ts} || '","' || sha || E'"]\\n', ''
                      ORDER BY position) FILTER (WHERE position < :block_size) AS lines,
           max(position) FILTER (WHERE position < :block_size) AS last_position
    FROM picked
),
ends AS (
    SELECT f.envelope_id AS first_id, f.received_at AS first_at,
           {_PG_TIMESTAMP.format("f.received_at")} AS first_ts,
           l.envelope_id AS last_id, l.received_at AS last_at,
           {_PG_TIMESTAMP.format("l.received_at")} AS last_ts
    FROM summary s
    JOIN picked f ON f.position = 0
    JOIN picked l ON l.position = s.last_position
),
digested AS (
    SELECT s.n, s.final, e.*,
           encode(sha256(convert_to(
               CAST(:head AS text) || s.n
               || CASE WHEN s.final THEN CAST(:mid_final AS text) ELSE CAST(:mid_open AS text) END
               || '["' || e.first_ts || '","' || e.first_id || '"]'
               || CAST(:mid_last AS text)
               || '["' || e.last_ts || '","' || e.last_id || '"]'
               || CAST(:tail AS text) || E'\\n' || s.lines, 'UTF8')), 'hex') AS digest
    FROM summary s CROSS JOIN ends e
    WHERE s.n > 0 AND s.plain
),
block AS (
    INSERT INTO seal_blocks (block_no, kind, sealed_at, cutoff, first_received_at,
                             first_envelope_id, last_received_at, last_envelope_id,
                             envelope_count, prev_digest, digest)
    SELECT :block_no, 'range', CAST(:sealed_at AS timestamptz),
           CASE WHEN final THEN CAST(:cutoff AS timestamptz) END,
           first_at, first_id, last_at, last_id, n, :prev_digest, digest
    FROM digested
    RETURNING *
),
added AS (
    INSERT INTO sealed_envelopes (block_no, position, envelope_id, received_at, envelope_sha256)
    SELECT :block_no, position, envelope_id, received_at, sha
    FROM picked
    WHERE position < :block_size AND EXISTS (SELECT 1 FROM block)
)
SELECT s.n, s.plain, b.*
FROM summary s LEFT JOIN block b ON true
"""
    )


# PostgreSQL verification: the per-row checks of recorder.verify in one scan.
#
# The SQL below certifies a row only where it is sure the Python check would
# find nothing (recorder.envelope.stored_columns / extract_columns, jsonb
# equality); everything it cannot certify comes back by id and is checked in
# Python. Rows whose text has a \u escape (NUL, lone surrogates, escaped key
# names), nesting deep enough to trouble Python's decoder, or a 4,300-digit
# integer (Python refuses those) are never certified here. Each jsonb path is
# read once, in lateral columns, from the parsed text.


def _pg_text(value: str) -> str:
    """recorder.envelope._text: a non-empty string of at most 255 characters, else NULL."""
    return (
        f"(CASE WHEN jsonb_typeof({value}) = 'string' "
        f"AND length({value} #>> '{{}}') BETWEEN 1 AND {MAX_COLUMN_LENGTH} "
        f"THEN {value} #>> '{{}}' END)"
    )


def _pg_id_of(value: str) -> str:
    """recorder.envelope._id_of: an id string, or an object's ``id``."""
    return (
        f"(CASE WHEN jsonb_typeof({value}) = 'object' THEN {_pg_text(f'({value}) -> {chr(39)}id{chr(39)}')} "
        f"ELSE {_pg_text(value)} END)"
    )


def _pg_coalesce(*values: str) -> str:
    return "COALESCE(" + ", ".join(values) + ")"


def _pg_by_type(events_api: str, slash_commands: str, other: str) -> str:
    return (
        f"(CASE e.type WHEN 'events_api' THEN {events_api} "
        f"WHEN 'slash_commands' THEN {slash_commands} ELSE {other} END)"
    )


# Python truthiness of the decoded event.message (edits carry the author there).
_PG_TRUTHY_MESSAGE = (
    "(e.message IS NOT NULL AND e.message NOT IN ('null', 'false', '\"\"', '{}', '[]') "
    "AND NOT (jsonb_typeof(e.message) = 'number' AND e.message = '0'))"
)

_PG_EXPECTED_COLUMNS = {
    "envelope_type": "e.type",
    "api_app_id": _pg_text("e.p -> 'api_app_id'"),
    "retry_reason": _pg_text("e.c -> 'retry_reason'"),
    "team_id": _pg_by_type(
        _pg_coalesce(_pg_text("e.p -> 'team_id'"), _pg_text("e.auth -> 'team_id'")),
        _pg_text("e.p -> 'team_id'"),
        _pg_coalesce(_pg_id_of("e.team"), _pg_text("e.p -> 'team_id'")),
    ),
    "enterprise_id": _pg_by_type(
        _pg_coalesce(_pg_text("e.p -> 'enterprise_id'"), _pg_text("e.auth -> 'enterprise_id'")),
        _pg_text("e.p -> 'enterprise_id'"),
        _pg_coalesce(
            _pg_id_of("e.p -> 'enterprise'"),
            _pg_text("e.team -> 'enterprise_id'"),
            _pg_text("e.p -> 'enterprise_id'"),
        ),
    ),
    "event_id": _pg_by_type(_pg_text("e.p -> 'event_id'"), "NULL", "NULL"),
    "event_type": _pg_by_type(
        _pg_text("e.event -> 'type'"), _pg_text("e.p -> 'command'"), _pg_text("e.p -> 'type'")
    ),
    "channel_id": _pg_by_type(
        _pg_coalesce(
            _pg_id_of("e.event -> 'channel'"),
            _pg_text("e.event -> 'item' -> 'channel'"),
            _pg_text("e.event -> 'channel_id'"),
        ),
        _pg_text("e.p -> 'channel_id'"),
        _pg_coalesce(_pg_id_of("e.p -> 'channel'"), _pg_text("e.p -> 'channel_id'")),
    ),
    "user_id": _pg_by_type(
        _pg_coalesce(
            _pg_id_of("e.event -> 'user'"),
            _pg_text("e.event -> 'user_id'"),
            _pg_id_of(
                f"(CASE WHEN {_PG_TRUTHY_MESSAGE} THEN e.message "
                "ELSE e.event -> 'previous_message' END) -> 'user'"
            ),
        ),
        _pg_text("e.p -> 'user_id'"),
        _pg_coalesce(_pg_id_of("e.p -> 'user'"), _pg_text("e.p -> 'user_id'")),
    ),
}

# retry_attempt: Python keeps an int literal and drops 1.0 or 1e0, which jsonb
# cannot tell from 1; so an integer is certified only when the text spells it
# as a plain literal, in the only "retry_attempt" key the text has.
_PG_RETRY_OK = """(CASE
    WHEN jsonb_typeof(e.retry) = 'number' AND (e.retry #>> '{}') ~ '^-?[0-9]+$'
         AND (e.retry #>> '{}')::numeric BETWEEN -2147483647 AND 2147483647
    THEN e.retry_attempt IS NOT DISTINCT FROM (e.retry #>> '{}')::int
         AND length(e.envelope_text) - length(replace(e.envelope_text, '"retry_attempt"', '')) = 15
         AND (strpos(e.envelope_text, '"retry_attempt":' || (e.retry #>> '{}') || ',') > 0
              OR strpos(e.envelope_text, '"retry_attempt":' || (e.retry #>> '{}') || '}') > 0)
    ELSE e.retry_attempt IS NULL END)"""

_PG_CERTIFIABLE = f"""(strpos(e.envelope_text, '\\u') = 0
    AND length(e.envelope_id) BETWEEN 1 AND {MAX_ENVELOPE_ID_LENGTH}
    AND (octet_length(e.envelope_text) < 1000
         OR (length(e.envelope_text) - length(translate(e.envelope_text, '[{{', '')) < 500
             AND (octet_length(e.envelope_text) < 4300
                  OR e.envelope_text !~ '[0-9]{{4300}}'))))"""


# The exact expressions above read the parsed text through these shorthands;
# spelled out here so that nothing is extracted for the (nearly all) rows the
# quick test below certifies.
_PG_SHORTHANDS = {
    "p": "(e.c -> 'payload')",
    "event": "(e.c -> 'payload' -> 'event')",
    "team": "(e.c -> 'payload' -> 'team')",
    "auth": "(e.c -> 'payload' -> 'authorizations' -> 0)",
    "message": "(e.c -> 'payload' -> 'event' -> 'message')",
    "type": _pg_text("e.c -> 'type'"),
    "retry": "(e.c -> 'retry_attempt')",
}


def _spelled_out(sql: str) -> str:
    return re.sub(
        r"\be\.(" + "|".join(_PG_SHORTHANDS) + r")\b",
        lambda m: _PG_SHORTHANDS[m.group(1)],
        sql,
    )


_PG_EXACT_COLUMNS = _spelled_out(
    " AND ".join(
        [
            *(f"e.{name} IS NOT DISTINCT FROM {sql}" for name, sql in _PG_EXPECTED_COLUMNS.items()),
            _PG_RETRY_OK,
        ]
    )
)


# The quick test: a sufficient condition, cheap because each value is one
# path lookup in the parsed text compared with the stored column. A column
# passes when the first place extract_columns looks holds exactly its value
# (a JSON string equal to it, which also makes it a string of that length),
# or when the column is NULL and no place it looks holds anything. Whatever
# fails this (another place holds the value, odd types, tombstones) is
# decided by the exact expressions, so the test only ever saves work.
#: Where the quick test's paths start: the scan takes the payload and the event
#: out of the parsed text once a row, so each lookup walks from there.
_PG_QUICK_ROOTS = (("payload,event,", "e.ev"), ("payload,", "e.p"), ("", "e.c"))


def _pg_lookup(path: str, operator: str) -> str:
    """``operator`` (``->`` or ``->>``) applied along ``path`` from the nearest taken-out root."""
    root, rest = next((r, path[len(p) :]) for p, r in _PG_QUICK_ROOTS if path.startswith(p))
    if "," not in rest:  # one key: no path array to take apart on every row
        return f"({root} {operator} '{rest}')"
    return f"({root} #{operator[1:]} '{{{rest}}}')"


def _pg_at(path: str) -> str:
    return _pg_lookup(path, "->")


def _pg_is(column: str, path: str) -> str:
    """The value at ``path`` is a string and the (non-NULL, storable-length) column's value."""
    # Text and type compared apart: cheaper than building a jsonb of the column.
    return f"({_pg_lookup(path, '->>')} = e.{column} AND jsonb_typeof({_pg_at(path)}) = 'string')"


def _pg_id_is(column: str, path: str) -> str:
    """recorder.envelope._id_of at ``path`` gives the column's value."""
    return f"({_pg_is(column, path)} OR {_pg_is(column, path + ',id')})"


def _pg_quick(column: str, first: str, *places: str, id_of: bool = False) -> str:
    hit = _pg_id_is(column, first) if id_of else _pg_is(column, first)
    absent = " AND ".join(f"{_pg_at(p)} IS NULL" for p in (first, *places))
    return (
        f"(CASE WHEN e.{column} IS NULL THEN {absent} "
        f"ELSE length(e.{column}) BETWEEN 1 AND {MAX_COLUMN_LENGTH} AND {hit} END)"
    )


def _pg_quick_by_type(events_api: str, slash_commands: str, other: str) -> str:
    # Dispatched on the stored envelope_type, which the same test checks.
    return (
        f"(CASE e.envelope_type WHEN 'events_api' THEN {events_api} "
        f"WHEN 'slash_commands' THEN {slash_commands} ELSE {other} END)"
    )


# retry_attempt: NULL when the text holds no number there; else the text has
# the key once (so the one jsonb and Python read) and spells the value as
# the column's integer literal, which Python keeps as that int (1.0, 1e0 or
# a second key would not be).
_PG_QUICK_RETRY = """(CASE WHEN e.retry_attempt IS NULL
    THEN e.c -> 'retry_attempt' IS NULL OR jsonb_typeof(e.c -> 'retry_attempt') <> 'number'
    ELSE e.retry_attempt BETWEEN -2147483647 AND 2147483647
         AND e.c -> 'retry_attempt' IS NOT NULL
         AND octet_length(e.envelope_text)
             - octet_length(replace(e.envelope_text, '"retry_attempt"', '')) = 15
         AND (strpos(e.envelope_text, '"retry_attempt":' || e.retry_attempt || ',') > 0
              OR strpos(e.envelope_text, '"retry_attempt":' || e.retry_attempt || '}') > 0)
    END)"""

_PG_QUICK_COLUMNS = " AND ".join(
    [
        "NOT (e.c ? 'recorder_erasure')",
        _pg_quick("envelope_type", "type"),
        _pg_quick("api_app_id", "payload,api_app_id"),
        # An empty reason (Slack sends "" on first deliveries) gives NULL too.
        "(CASE WHEN e.retry_reason IS NULL THEN "
        f"{_pg_at('retry_reason')} IS NULL OR {_pg_at('retry_reason')} = '\"\"' "
        f"ELSE {_pg_quick('retry_reason', 'retry_reason')} END)",
        _pg_quick_by_type(
            _pg_quick("team_id", "payload,team_id", "payload,authorizations,0,team_id"),
            _pg_quick("team_id", "payload,team_id"),
            _pg_quick("team_id", "payload,team", "payload,team_id", id_of=True),
        ),
        _pg_quick_by_type(
            _pg_quick(
                "enterprise_id", "payload,enterprise_id", "payload,authorizations,0,enterprise_id"
            ),
            _pg_quick("enterprise_id", "payload,enterprise_id"),
            _pg_quick(
                "enterprise_id",
                "payload,enterprise",
                "payload,team,enterprise_id",
                "payload,enterprise_id",
                id_of=True,
            ),
        ),
        _pg_quick_by_type(
            _pg_quick("event_id", "payload,event_id"), "e.event_id IS NULL", "e.event_id IS NULL"
        ),
        _pg_quick_by_type(
            _pg_quick("event_type", "payload,event,type"),
            _pg_quick("event_type", "payload,command"),
            _pg_quick("event_type", "payload,type"),
        ),
        _pg_quick_by_type(
            _pg_quick(
                "channel_id",
                "payload,event,channel",
                "payload,event,item,channel",
                "payload,event,channel_id",
                id_of=True,
            ),
            _pg_quick("channel_id", "payload,channel_id"),
            _pg_quick("channel_id", "payload,channel", "payload,channel_id", id_of=True),
        ),
        _pg_quick_by_type(
            _pg_quick(
                "user_id",
                "payload,event,user",
                "payload,event,user_id",
                "payload,event,message",
                "payload,event,previous_message",
                id_of=True,
            ),
            _pg_quick("user_id", "payload,user_id"),
            _pg_quick("user_id", "payload,user", "payload,user_id", id_of=True),
        ),
        _PG_QUICK_RETRY,
    ]
)

_PG_CONSISTENT = " AND ".join(
    [
        "e.c IS NOT NULL",
        # The same bytes are the same value: a cheap test first (a copy
        # written from another spelling, 1.0 for 1, still compares equal).
        "((ROW(e.c))::record *= (ROW(e.envelope))::record OR e.envelope = e.c)",
        "jsonb_typeof(e.c) = 'object'",
        "(e.c -> 'envelope_id' IS NULL OR e.c -> 'envelope_id' = to_jsonb(e.envelope_id))",
        f"(({_PG_QUICK_COLUMNS}) OR ({_PG_EXACT_COLUMNS}))",
    ]
)


def verify_rows_postgresql(
    through: str | None, lo: bool = False, hi: bool = False, pages: bool = False
) -> sa.TextClause:
    """Classify every envelope row (and the sealed member it matches) in one scan.

    One row: ``matched`` (rows that are sealed members), ``unsealed`` (rows
    not sealed, not behind the sealed range, consistent), the ``block_no``
    and ``position`` of the members Python must check (``check_blocks``,
    ``check_positions``) and the ids and kinds (``inserted`` behind the
    sealed range, ``future``, ``check``) of the unsealed rows it must judge
    (``row_ids``, ``row_kinds``). ``through`` is None, "cutoff" or "key" (see
    :func:`sealed_through`); ``lo`` and ``hi`` limit the scan to
    ``lo <= received_at`` and ``received_at < hi``; ``pages`` to the heap
    pages from ``first_tid`` (when given) up to ``end_tid`` (when given), so
    that several connections sharing one snapshot can each read a part of
    the table, and only that part.
    """
    behind = {
        None: "false",
        "cutoff": "e.received_at <= CAST(:through_cutoff AS timestamptz)",
        "key": '(e.received_at, e.envelope_id COLLATE "C") '
        '<= (CAST(:through_at AS timestamptz), CAST(:through_id AS text) COLLATE "C")',
    }[through]
    if pages:  # a tid range scan reads only those pages
        column, first, end = "e.ctid", "CAST(:first_tid AS tid)", "CAST(:end_tid AS tid)"
    else:
        column, first, end = "e.received_at", "CAST(:lo AS timestamptz)", "CAST(:hi AS timestamptz)"
    bounds = [
        *([f"{column} >= {first}"] if lo else []),
        *([f"{column} < {end}"] if hi else []),
    ]
    where = f"WHERE {' AND '.join(bounds)}" if bounds else ""
    sealed_where = "" if pages else where.replace("e.received_at", "s.received_at")
    # Each level is kept apart by OFFSET 0: the innermost computes the digest
    # and the parsed text once per row, the next takes the payload and the
    # event out of it (where the quick test's lookups start), the next reduces each row to whether
    # it is sound (digest column and text agree, columns and copy agree with
    # the text), so only narrow rows meet the sealed members in the join.
    # One aggregate row, no grouping: nothing to sort.
    return sa.text(
        f"""
SELECT count(*) FILTER (WHERE member_kind IS NOT NULL) AS matched,
       count(*) FILTER (WHERE row_kind = 'unsealed') AS unsealed,
       array_agg(block_no) FILTER (WHERE member_kind = 'check') AS check_blocks,
       array_agg(position) FILTER (WHERE member_kind = 'check') AS check_positions,
       array_agg(envelope_id) FILTER (WHERE row_kind <> 'unsealed') AS row_ids,
       array_agg(row_kind) FILTER (WHERE row_kind <> 'unsealed') AS row_kinds
FROM (
    SELECT e.envelope_id, s.block_no, s.position,
        CASE
            WHEN s.block_no IS NULL THEN NULL
            WHEN e.sound AND e.envelope_sha256 = s.sealed_sha256 THEN 'ok'
            ELSE 'check'
        END AS member_kind,
        CASE
            WHEN {behind} THEN CASE WHEN s.block_no IS NULL THEN 'inserted' END
            WHEN s.block_no IS NOT NULL THEN 'check'
            WHEN e.received_at > CAST(:latest_plausible AS timestamptz) THEN 'future'
            WHEN e.sound THEN 'unsealed'
            ELSE 'check'
        END AS row_kind
    FROM (
        SELECT e.envelope_id, e.received_at, e.envelope_sha256,
               (e.sha = e.envelope_sha256 AND {_PG_CONSISTENT}) IS TRUE AS sound
        FROM (
            SELECT e.*, e.c -> 'payload' AS p, e.c #> '{{payload,event}}' AS ev
            FROM (
                SELECT e.envelope_id, e.received_at, e.envelope, e.envelope_text,
                       e.envelope_sha256, {", ".join("e." + c for c in REPORTING_COLUMNS)},
                       encode(sha256(convert_to(e.envelope_text, 'UTF8')), 'hex') AS sha,
                       CASE WHEN {_PG_CERTIFIABLE} THEN e.envelope_text::jsonb END AS c
                FROM envelopes e
                {where}
                OFFSET 0
            ) e
            OFFSET 0
        ) e
        OFFSET 0
    ) e
    LEFT JOIN (
        SELECT s.block_no, s.position, s.envelope_id, s.received_at,
               s.envelope_sha256 AS sealed_sha256
        FROM sealed_envelopes s {sealed_where}
    ) s ON s.envelope_id = e.envelope_id AND s.received_at = e.received_at
    OFFSET 0
) classified
"""
    )


def chain_blocks_postgresql() -> sa.TextClause:
    """Each block's member count, first and last keys and recomputed digest, for a run of blocks.

    One statement for the blocks numbered ``first_block`` to ``last_block``,
    whose header parts (recorder.seal.header_parts) come as the arrays
    ``block_nos``, ``heads``, ``mids``, ``mid_lasts``, ``tails``; one row per
    block listed. ``plain`` is false when an id needs JSON escapes, NULL when
    the block has no members (the block is then checked in Python).
    """
    ts = _PG_TIMESTAMP.format("{0}.received_at")
    plain = _PG_JSON_PLAIN.format("m.envelope_id || m.envelope_sha256")
    return sa.text(
        f"""
WITH h AS (
    SELECT * FROM unnest(CAST(:block_nos AS int[]), CAST(:heads AS text[]),
                         CAST(:mids AS text[]), CAST(:mid_lasts AS text[]),
                         CAST(:tails AS text[])) AS h(block_no, head, mid, mid_last, tail)
),
agg AS (
    SELECT m.block_no, count(*) AS n,
           coalesce(bool_and({plain} AND {_PG_SPELLABLE_TIME.format("m.received_at")}),
                    false) AS plain,
           string_agg('["' || m.envelope_id || '","' || {ts.format("m")} || '","'
                      || m.envelope_sha256 || E'"]\\n', '' ORDER BY m.position) AS lines,
           min(m.position) AS first_position, max(m.position) AS last_position
    FROM sealed_envelopes m
    WHERE m.block_no BETWEEN :first_block AND :last_block
    GROUP BY m.block_no
)
SELECT h.block_no, coalesce(a.n, 0) AS n, a.plain,
       f.envelope_id AS first_id, f.received_at AS first_at,
       l.envelope_id AS last_id, l.received_at AS last_at,
       encode(sha256(convert_to(
           h.head || a.n || h.mid
           || '["' || {ts.format("f")} || '","' || f.envelope_id || '"]' || h.mid_last
           || '["' || {ts.format("l")} || '","' || l.envelope_id || '"]' || h.tail
           || E'\\n' || a.lines, 'UTF8')), 'hex') AS digest
FROM h
LEFT JOIN agg a ON a.block_no = h.block_no
LEFT JOIN sealed_envelopes f ON f.block_no = h.block_no AND f.position = a.first_position
LEFT JOIN sealed_envelopes l ON l.block_no = h.block_no AND l.position = a.last_position
ORDER BY h.block_no
"""
    )


#: How many sealed members the prune log lists (``logged``), and of those how many still
#: have their row (same id and received_at: pruned, then the same row written again).
COUNT_LOGGED_MEMBERS_POSTGRESQL = sa.text(
    """
SELECT count(*) AS logged,
       count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM envelopes e
           WHERE e.envelope_id = s.envelope_id AND e.received_at = s.received_at)) AS matched
FROM sealed_envelopes s
WHERE EXISTS (
    SELECT 1 FROM pruned_envelopes p
    WHERE p.envelope_id = s.envelope_id AND p.received_at = s.received_at
      AND p.envelope_sha256 = s.envelope_sha256)
"""
)


#: Sealed members with neither their row (same id and received_at) nor a matching prune log row.
SELECT_UNACCOUNTED_MEMBERS_POSTGRESQL = sa.text(
    """
SELECT s.block_no, s.position, s.envelope_id, s.received_at, s.envelope_sha256
FROM sealed_envelopes s
WHERE NOT EXISTS (
    SELECT 1 FROM envelopes e
    WHERE e.envelope_id = s.envelope_id AND e.received_at = s.received_at)
  AND NOT EXISTS (
    SELECT 1 FROM pruned_envelopes p
    WHERE p.envelope_id = s.envelope_id AND p.received_at = s.received_at
      AND p.envelope_sha256 = s.envelope_sha256)
ORDER BY s.block_no, s.position
"""
)


def uncertified_deletions(match_columns: Sequence[str]) -> sa.TextClause:
    """Deletion log rows PostgreSQL cannot certify (``recorder.prune_checks``), in key order.

    Parameters: ``run_ids``, ``policies``, ``cutoffs``, ``started`` (parallel
    arrays: the (run, policy) pairs that pass, the policy's cutoff and the
    run's start), ``in_force_after`` and ``released_before`` (intervals: how
    long after it was placed a hold counts, how long before its release it
    stops counting).
    """
    matched = " ".join(f"AND (h.{name} IS NULL OR h.{name} = p.{name})" for name in match_columns)
    extra = "".join(f", p.{name}" for name in match_columns)
    return sa.text(
        f"""
SELECT p.prune_run_id, p.envelope_id, p.received_at, p.policy_name, p.pruned_at{extra}
FROM pruned_envelopes p
LEFT JOIN unnest(CAST(:run_ids AS integer[]), CAST(:policies AS text[]),
                 CAST(:cutoffs AS timestamptz[]), CAST(:started AS timestamptz[]))
          AS ok(run_id, policy, cutoff, started_at)
       ON ok.run_id = p.prune_run_id AND ok.policy = p.policy_name
WHERE ok.run_id IS NULL
   OR (p.received_at < ok.cutoff) IS NOT TRUE
   OR EXISTS (
       SELECT 1 FROM legal_holds h
       WHERE h.created_at + CAST(:in_force_after AS interval) <= coalesce(p.pruned_at, ok.started_at)
         AND (h.released_at IS NULL
              OR h.released_at - CAST(:released_before AS interval)
                 > coalesce(p.pruned_at, ok.started_at))
         {matched}
         AND (h.since IS NULL OR p.received_at >= h.since)
         AND (h.until IS NULL OR p.received_at < h.until))
ORDER BY p.prune_run_id, p.envelope_id
"""
    )


def _pg_json_value(column: str, *, timestamp: bool = False) -> str:
    """A nullable column as ``recorder.sealed_logs._line`` spells it (plain values only)."""
    value = _PG_TIMESTAMP.format(column) if timestamp else column
    return f"""CASE WHEN {column} IS NULL THEN 'null' ELSE '"' || {value} || '"' END"""


def _pg_plain_value(column: str, *, timestamp: bool = False) -> str:
    """Whether :func:`_pg_json_value` spells the column exactly as json.dumps would."""
    if timestamp:
        return f"({column} IS NULL OR ({_PG_SPELLABLE_TIME.format(column)}))"
    return f"coalesce({_PG_JSON_PLAIN.format(column)}, true)"


def pruned_rows_lines(
    row_columns: Sequence[str], timestamps: Collection[str], *, chunked: bool
) -> sa.TextClause:
    """One prune run's deletion log rows in ``envelope_id`` order, with their digest lines.

    Not ``chunked``: one row per logged deletion, its ``line`` (the row's line
    of the run's sealed-log digest, rendered by the server) beside its
    columns; ``line`` is NULL where a value is not plain (json.dumps would
    escape it), for the caller to spell. ``chunked``: the same lines joined
    in ``chunk`` rows of ``chunk_size`` deletions, in order, each with
    ``plain``, whether every line of the chunk could be rendered (when one
    could not, the caller takes the rows instead). Parameters: ``run_id``,
    ``chunk_size`` (chunked).
    """
    values = [_pg_json_value(c, timestamp=c in timestamps) for c in row_columns]
    plain = " AND ".join(_pg_plain_value(c, timestamp=c in timestamps) for c in row_columns)
    line = f"""CASE WHEN {plain} THEN '[' || {" || ',' || ".join(values)} || E']\\n' END"""
    if not chunked:
        return sa.text(
            f"""
SELECT {line} AS line, {", ".join(row_columns)}
FROM pruned_envelopes
WHERE prune_run_id = :run_id
ORDER BY envelope_id
"""
        )
    return sa.text(
        f"""
SELECT chunk, bool_and(line IS NOT NULL) AS plain, string_agg(line, '' ORDER BY n) AS lines
FROM (
    SELECT row_number() OVER (ORDER BY envelope_id) AS n,
           (row_number() OVER (ORDER BY envelope_id) - 1) / :chunk_size AS chunk,
           {line} AS line
    FROM pruned_envelopes
    WHERE prune_run_id = :run_id
) numbered
GROUP BY chunk
ORDER BY chunk
"""
    )
