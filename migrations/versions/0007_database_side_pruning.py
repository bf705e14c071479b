"""Pruning inside PostgreSQL; a deletion guard that cannot be shadowed; sealed logs.

On PostgreSQL this installs, owned by the role that runs the migration (the
schema owner):

* ``recorder_deletion_is_logged()`` and its constraint trigger on
  ``envelopes``: a deletion by a role other than the owner must have its
  ``pruned_envelopes`` row by commit. Every name is schema-qualified and the
  ``search_path`` is pinned with ``pg_temp`` last, so a ``CREATE TEMP TABLE
  pruned_envelopes`` cannot stand in for the real log (it could before, when
  ``recorder db grant`` created an unqualified version).
* ``SECURITY DEFINER`` prune functions (``recorder_prune_begin``,
  ``_candidates``, ``_delete``, ``_batch``, ``_count``, ``_finish``,
  ``_locked_out``): they apply the retention policies and legal holds in the
  database and log what they remove, so the pruner role needs no ``DELETE``
  on ``envelopes`` and no write on the logs. ``EXECUTE`` is revoked from
  ``PUBLIC``; ``recorder db grant --pruner`` grants it.

On both engines: ``prune_runs.policies`` (the policies a run applies, with
their cutoffs), the removed envelope's team, channel and user and the time
of removal in ``pruned_envelopes`` (so ``recorder verify`` can check legal
holds against a deletion), and ``sealed_log_entries``.

The SQL below is frozen here, like every migration: a later change writes a
new migration rather than editing this one.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Types spelled out rather than imported from recorder.schema (see 0001).
UTC_TIMESTAMP = sa.DateTime(timezone=True)
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")

# @S@ is replaced by the quoted schema the migration runs in. Each function
# pins search_path (pg_catalog, then pg_temp last: unlisted, pg_temp would be
# searched first) and the time zone (cutoffs are written as UTC text).
PINNED = "SET search_path = pg_catalog, pg_temp SET timezone = 'UTC'"

HELD = (
    "EXISTS (SELECT 1 FROM @S@.legal_holds h WHERE h.released_at IS NULL"
    " AND (h.team_id IS NULL OR h.team_id = e.team_id)"
    " AND (h.channel_id IS NULL OR h.channel_id = e.channel_id)"
    " AND (h.user_id IS NULL OR h.user_id = e.user_id)"
    " AND (h.since IS NULL OR e.received_at >= h.since)"
    " AND (h.until IS NULL OR e.received_at < h.until))"
)

FUNCTIONS: dict[str, str] = {
    "recorder_deletion_is_logged()": f"""
CREATE OR REPLACE FUNCTION @S@.recorder_deletion_is_logged() RETURNS trigger
LANGUAGE plpgsql {PINNED} AS $$
BEGIN
    IF pg_catalog.pg_has_role(current_user,
            (SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid = TG_RELID), 'MEMBER') THEN
        RETURN NULL;
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM @S@.pruned_envelopes p
        WHERE p.envelope_id = OLD.envelope_id AND p.received_at = OLD.received_at
    ) THEN
        RAISE EXCEPTION 'envelope % was deleted without a pruned_envelopes row', OLD.envelope_id
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'only recorder prune may delete envelopes';
    END IF;
    RETURN NULL;
END
$$""",
    "recorder_prune_check_run(integer, boolean)": f"""
CREATE OR REPLACE FUNCTION @S@.recorder_prune_check_run(p_run integer, p_deleting boolean)
RETURNS void LANGUAGE plpgsql STABLE {PINNED} AS $$
DECLARE
    v_status text;
    v_dry boolean;
BEGIN
    SELECT r.status, r.dry_run INTO v_status, v_dry FROM @S@.prune_runs r WHERE r.id = p_run;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no prune run %', p_run USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_status <> 'running' THEN
        RAISE EXCEPTION 'prune run % is %, not running', p_run, v_status
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_deleting AND v_dry THEN
        RAISE EXCEPTION 'prune run % is a dry run: it deletes nothing', p_run
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$""",
    "recorder_prune_where(integer, text)": f"""
CREATE OR REPLACE FUNCTION @S@.recorder_prune_where(p_run integer, p_policy text)
RETURNS text LANGUAGE plpgsql STABLE {PINNED} AS $$
-- The condition (on alias e) for envelopes the run's policy p_policy decides
-- and has expired: it matches them, no policy ranked above it matches, and
-- received_at is before the run's cutoff for it. Holds are separate (HELD).
DECLARE
    v_policies jsonb;
    v_policy jsonb;
    v_column text;
    v_higher text;
    v_sql text := 'true';
    v_columns constant text[] :=
        ARRAY['team_id', 'channel_id', 'user_id', 'envelope_type', 'event_type'];
BEGIN
    SELECT r.policies INTO v_policies FROM @S@.prune_runs r WHERE r.id = p_run;
    FOR v_policy IN
        SELECT p.value FROM jsonb_array_elements(coalesce(v_policies, '[]'))
            WITH ORDINALITY AS p(value, n) ORDER BY p.n
    LOOP
        IF v_policy->>'name' = p_policy THEN
            FOREACH v_column IN ARRAY v_columns LOOP
                IF v_policy->>v_column IS NOT NULL THEN
                    v_sql := v_sql || format(' AND e.%I = %L', v_column, v_policy->>v_column);
                END IF;
            END LOOP;
            RETURN v_sql || format(' AND e.received_at < %L::timestamptz', v_policy->>'cutoff');
        END IF;
        v_higher := 'true';
        FOREACH v_column IN ARRAY v_columns LOOP
            IF v_policy->>v_column IS NOT NULL THEN
                v_higher := v_higher
                    || format(' AND e.%I IS NOT DISTINCT FROM %L', v_column, v_policy->>v_column);
            END IF;
        END LOOP;
        v_sql := v_sql || format(' AND NOT (%s)', v_higher);
    END LOOP;
    RAISE EXCEPTION 'prune run % applies no policy named %', p_run, p_policy
        USING ERRCODE = 'invalid_parameter_value';
END
$$""",
    "recorder_prune_begin(boolean, text, text, timestamp with time zone)": f"""
CREATE OR REPLACE FUNCTION @S@.recorder_prune_begin(
    p_dry_run boolean, p_actor text, p_host text, p_as_of timestamptz DEFAULT NULL
) RETURNS TABLE (run_id integer, started_at timestamptz, cutoffs jsonb)
LANGUAGE plpgsql SECURITY DEFINER {PINNED} AS $$
-- Start a run: fix its policies and cutoffs (as_of - keep) now. A caller may
-- date the run earlier than the database clock (fewer rows expire), never later.
DECLARE
    v_as_of constant timestamptz := coalesce(p_as_of, now());
    v_policies jsonb;
    v_cutoffs jsonb;
    v_id integer;
BEGIN
    IF v_as_of > now() THEN
        RAISE EXCEPTION 'a prune run cannot be dated after the database clock (% > %)',
            v_as_of, now() USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- A period longer than the calendar reaches (a bound, not an error) expires nothing.
    SELECT
        coalesce(jsonb_agg(jsonb_build_object(
            'name', p.name, 'keep_seconds', p.keep_seconds, 'priority', p.priority,
            'team_id', p.team_id, 'channel_id', p.channel_id, 'user_id', p.user_id,
            'envelope_type', p.envelope_type, 'event_type', p.event_type,
            'cutoff', p.cutoff
        ) ORDER BY p.priority DESC, p.name COLLATE "C"), '[]'),
        coalesce(jsonb_object_agg(p.name, p.cutoff), '{{}}')
    INTO v_policies, v_cutoffs
    FROM (
        SELECT r.*, CASE
            WHEN r.keep_seconds >= extract(epoch FROM v_as_of - '0001-01-01 00:00:00+00'::timestamptz)
            THEN '0001-01-01 00:00:00+00'::timestamptz
            ELSE v_as_of - make_interval(secs => r.keep_seconds)
        END AS cutoff
        FROM @S@.retention_policies r
    ) p;
    INSERT INTO @S@.prune_runs AS r
        (started_at, status, dry_run, cutoffs, policies, deleted_per_policy, deleted_total,
         actor, host)
    VALUES (v_as_of, 'running', p_dry_run, v_cutoffs, v_policies,
            CASE WHEN p_dry_run THEN NULL ELSE (
                SELECT coalesce(jsonb_object_agg(k, 0), '{{}}') FROM jsonb_object_keys(v_cutoffs) k
            ) END,
            0, p_actor, p_host)
    RETURNING r.id INTO v_id;
    RETURN QUERY SELECT v_id, v_as_of, v_cutoffs;
END
$$""",
    "recorder_prune_locked_out(boolean, text, text, text)": f"""
CREATE OR REPLACE FUNCTION @S@.recorder_prune_locked_out(
    p_dry_run boolean, p_actor text, p_host text, p_error text
) RETURNS integer LANGUAGE plpgsql SECURITY DEFINER {PINNED} AS $$
DECLARE
    v_id integer;
BEGIN
    INSERT INTO @S@.prune_runs AS r
        (started_at, finished_at, status, dry_run, deleted_total, error, actor, host)
    VALUES (now(), clock_timestamp(), 'locked_out', p_dry_run, 0, p_error, p_actor, p_host)
    RETURNING r.id INTO v_id;
    RETURN v_id;
END
$$""",
    "recorder_prune_candidates(integer, text, timestamp with time zone, text, integer)": f"""
CREATE OR REPLACE FUNCTION @S@.recorder_prune_candidates(
    p_run integer, p_policy text, p_after_at timestamptz, p_after_id text, p_limit integer
) RETURNS TABLE (envelope_id text, received_at timestamptz, envelope_sha256 text)
LANGUAGE plpgsql STABLE SECURITY DEFINER {PINNED} AS $$
-- The next envelopes (keyset order, after (p_after_at, p_after_id)) the run
-- may remove under p_policy: expired and not held. Lists, removes nothing.
BEGIN
    PERFORM @S@.recorder_prune_check_run(p_run, false);
    IF p_limit IS NULL OR p_limit < 1 OR p_limit > 100000 THEN
        RAISE EXCEPTION 'limit must be between 1 and 100000' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT e.envelope_id, e.received_at, e.envelope_sha256 FROM @S@.envelopes e'
        ' WHERE %s AND NOT %s %s ORDER BY e.received_at, e.envelope_id LIMIT $3',
        @S@.recorder_prune_where(p_run, p_policy), '{HELD}',
        CASE WHEN p_after_at IS NULL THEN ''
             ELSE 'AND e.received_at >= $1 AND (e.received_at > $1 OR e.envelope_id > $2)' END
    ) USING p_after_at, p_after_id, p_limit;
END
$$""",
    "recorder_prune_delete(integer, text, text[])": f"""
CREATE OR REPLACE FUNCTION @S@.recorder_prune_delete(p_run integer, p_policy text, p_ids text[])
RETURNS TABLE (envelope_id text, received_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER {PINNED} AS $$
-- Remove those of p_ids that the run's policy p_policy has expired and no
-- hold covers, checked here whatever the caller believes; log each in
-- pruned_envelopes and count it in the run, in this one transaction. Ids
-- that do not qualify are left alone; a row a writer holds locked is waited
-- for (briefly), so a listed row is not left behind by a passing update.
DECLARE
    v_ids text[];
    v_ats timestamptz[];
    v_n bigint;
BEGIN
    PERFORM @S@.recorder_prune_check_run(p_run, true);
    EXECUTE format(
        'WITH batch AS ('
        '  SELECT e.envelope_id FROM @S@.envelopes e'
        '  WHERE e.envelope_id = ANY($1) AND %s AND NOT %s FOR UPDATE'
        '), d AS ('
        '  DELETE FROM @S@.envelopes e USING batch b WHERE e.envelope_id = b.envelope_id'
        '  RETURNING e.envelope_id, e.envelope_sha256, e.received_at,'
        '            e.team_id, e.channel_id, e.user_id'
        '), logged AS ('
        '  INSERT INTO @S@.pruned_envelopes (prune_run_id, envelope_id, envelope_sha256,'
        '      received_at, policy_name, team_id, channel_id, user_id, pruned_at)'
        '  SELECT $2, d.envelope_id, d.envelope_sha256, d.received_at, $3,'
        '         d.team_id, d.channel_id, d.user_id, now() FROM d'
        '  RETURNING pruned_envelopes.envelope_id, pruned_envelopes.received_at'
        ') SELECT array_agg(l.envelope_id), array_agg(l.received_at), count(*) FROM logged l',
        @S@.recorder_prune_where(p_run, p_policy), '{HELD}'
    ) INTO v_ids, v_ats, v_n USING p_ids, p_run, p_policy;
    IF v_n > 0 THEN
        UPDATE @S@.prune_runs r SET
            deleted_total = r.deleted_total + v_n,
            deleted_per_policy = jsonb_set(
                coalesce(r.deleted_per_policy, '{{}}'), ARRAY[p_policy],
                to_jsonb(coalesce((r.deleted_per_policy->>p_policy)::bigint, 0) + v_n))
        WHERE r.id = p_run;
    END IF;
    RETURN QUERY SELECT u.id, u.at FROM unnest(v_ids, v_ats) AS u(id, at);
END
$$""",
    "recorder_prune_batch(integer, text, timestamp with time zone, text, integer)": f"""
CREATE OR REPLACE FUNCTION @S@.recorder_prune_batch(
    p_run integer, p_policy text, p_after_at timestamptz, p_after_id text, p_limit integer
) RETURNS TABLE (n bigint, received_at timestamptz, envelope_id text)
LANGUAGE plpgsql SECURITY DEFINER {PINNED} AS $$
-- One batch in one round trip: the next candidates (locked, skipping rows a
-- writer holds) go through recorder_prune_delete. Returns how many went and
-- the batch's last key, or no row when there was nothing left.
DECLARE
    v_ids text[];
    v_last_at timestamptz;
    v_last_id text;
    v_n bigint;
BEGIN
    PERFORM @S@.recorder_prune_check_run(p_run, true);
    IF p_limit IS NULL OR p_limit < 1 OR p_limit > 100000 THEN
        RAISE EXCEPTION 'limit must be between 1 and 100000' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    EXECUTE format(
        'SELECT array_agg(c.envelope_id),'
        '       (array_agg(c.received_at ORDER BY c.received_at DESC, c.envelope_id DESC))[1],'
        '       (array_agg(c.envelope_id ORDER BY c.received_at DESC, c.envelope_id DESC))[1]'
        ' FROM (SELECT e.envelope_id, e.received_at FROM @S@.envelopes e'
        '       WHERE %s AND NOT %s %s ORDER BY e.received_at, e.envelope_id LIMIT $3'
        '       FOR UPDATE SKIP LOCKED) c',
        @S@.recorder_prune_where(p_run, p_policy), '{HELD}',
        CASE WHEN p_after_at IS NULL THEN ''
             ELSE 'AND e.received_at >= $1 AND (e.received_at > $1 OR e.envelope_id > $2)' END
    ) INTO v_ids, v_last_at, v_last_id USING p_after_at, p_after_id, p_limit;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    SELECT count(*) INTO v_n FROM @S@.recorder_prune_delete(p_run, p_policy, v_ids);
    RETURN QUERY SELECT v_n, v_last_at, v_last_id;
END
$$""",
    "recorder_prune_count(integer, text, boolean)": f"""
CREATE OR REPLACE FUNCTION @S@.recorder_prune_count(p_run integer, p_policy text, p_held boolean)
RETURNS bigint LANGUAGE plpgsql STABLE SECURITY DEFINER {PINNED} AS $$
-- How many envelopes the run's policy p_policy has expired that are (p_held)
-- or are not held.
DECLARE
    v_n bigint;
BEGIN
    PERFORM @S@.recorder_prune_check_run(p_run, false);
    EXECUTE format(
        'SELECT count(*) FROM @S@.envelopes e WHERE %s AND %s %s',
        @S@.recorder_prune_where(p_run, p_policy),
        CASE WHEN p_held THEN '' ELSE 'NOT' END, '{HELD}'
    ) INTO v_n;
    RETURN v_n;
END
$$""",
    "recorder_prune_finish(integer, text, bigint, bigint, text, jsonb)": f"""
CREATE OR REPLACE FUNCTION @S@.recorder_prune_finish(
    p_run integer, p_status text, p_held bigint, p_skipped bigint, p_error text,
    p_would_delete jsonb DEFAULT NULL
) RETURNS timestamptz LANGUAGE plpgsql SECURITY DEFINER {PINNED} AS $$
-- End a running run. What a real run deleted is counted by
-- recorder_prune_delete, never taken from the caller; a dry run's
-- would-be counts (p_would_delete) are the caller's report.
DECLARE
    v_at constant timestamptz := clock_timestamp();
BEGIN
    IF p_status NOT IN ('completed', 'stopped', 'failed') THEN
        RAISE EXCEPTION 'a prune run ends completed, stopped or failed, not %', p_status
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM @S@.recorder_prune_check_run(p_run, false);
    UPDATE @S@.prune_runs r SET
        finished_at = v_at, status = p_status, held_count = p_held,
        skipped_count = p_skipped, error = p_error,
        deleted_per_policy = CASE WHEN r.dry_run THEN p_would_delete ELSE r.deleted_per_policy END,
        deleted_total = CASE WHEN r.dry_run THEN (
            SELECT coalesce(sum(v::bigint), 0) FROM jsonb_each_text(coalesce(p_would_delete, '{{}}')) AS w(k, v)
        ) ELSE r.deleted_total END
    WHERE r.id = p_run;
    RETURN v_at;
END
$$""",
}

TRIGGER = """
CREATE CONSTRAINT TRIGGER envelopes_deletion_is_logged
AFTER DELETE ON @S@.envelopes
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION @S@.recorder_deletion_is_logged()"""


def _schema() -> str:
    name = op.get_bind().execute(sa.text("SELECT current_schema()")).scalar_one()
    return '"' + str(name).replace('"', '""') + '"'


def _run_sql(statements: list[str]) -> None:
    # The DB-API cursor with no parameters: '%' is format()'s, not the driver's.
    schema = _schema()
    cursor = op.get_bind().connection.cursor()
    try:
        for statement in statements:
            cursor.execute(statement.replace("@S@", schema))
    finally:
        cursor.close()


def upgrade() -> None:
    op.add_column(
        "prune_runs",
        sa.Column(
            "policies",
            JSON_DOCUMENT,
            comment="the policies the run applies, in precedence order, each with its cutoff",
        ),
    )
    op.add_column(
        "pruned_envelopes",
        sa.Column(
            "team_id", sa.Text(), comment="the removed envelope's, for checking legal holds later"
        ),
    )
    op.add_column("pruned_envelopes", sa.Column("channel_id", sa.Text()))
    op.add_column("pruned_envelopes", sa.Column("user_id", sa.Text()))
    op.add_column(
        "pruned_envelopes",
        sa.Column("pruned_at", UTC_TIMESTAMP, comment="when the deleting transaction ran"),
    )
    op.create_table(
        "sealed_log_entries",
        sa.Column("block_no", sa.Integer(), nullable=False),
        sa.Column("log_name", sa.Text(), nullable=False, comment="which log: prune_runs, ..."),
        sa.Column("entry_key", sa.Text(), nullable=False, comment="the entry's key in its log"),
        sa.Column(
            "digest", sa.Text(), nullable=False, comment="hex SHA-256 of the entry as sealed"
        ),
        sa.ForeignKeyConstraint(
            ["block_no"],
            ["seal_blocks.block_no"],
            name=op.f("fk_sealed_log_entries_block_no_seal_blocks"),
        ),
        sa.PrimaryKeyConstraint("log_name", "entry_key", name=op.f("pk_sealed_log_entries")),
        comment="entries of the recorder's own logs (prune runs and what each removed, ...) "
        "sealed with a block; the block digest covers them",
    )
    op.create_index("ix_sealed_log_entries_block_no", "sealed_log_entries", ["block_no"])
    if op.get_bind().dialect.name != "postgresql":
        return
    _run_sql(
        [
            *FUNCTIONS.values(),
            *(f"REVOKE ALL ON FUNCTION @S@.{signature} FROM PUBLIC" for signature in FUNCTIONS),
            "DROP TRIGGER IF EXISTS envelopes_deletion_is_logged ON @S@.envelopes",
            TRIGGER,
        ]
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # Back to 0006's state, where `recorder db grant` installs the guard.
        _run_sql(
            [
                "DROP TRIGGER IF EXISTS envelopes_deletion_is_logged ON @S@.envelopes",
                *(f"DROP FUNCTION IF EXISTS @S@.{signature}" for signature in reversed(FUNCTIONS)),
            ]
        )
    op.drop_index("ix_sealed_log_entries_block_no", table_name="sealed_log_entries")
    op.drop_table("sealed_log_entries")
    op.drop_column("pruned_envelopes", "pruned_at")
    op.drop_column("pruned_envelopes", "user_id")
    op.drop_column("pruned_envelopes", "channel_id")
    op.drop_column("pruned_envelopes", "team_id")
    op.drop_column("prune_runs", "policies")
