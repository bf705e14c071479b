"""A retention policy may require archiving; the database-side prune never deletes such rows.

``retention_policies.archive_dir``: when set, the envelopes the policy
expires are written to the archive (``recorder prune`` archives them there
unless ``--archive`` or ``RECORDER_ARCHIVE_DIR`` names another directory)
before they are deleted. The database cannot write Parquet, so on
PostgreSQL the prune functions of migration 0007 are replaced (owned by the
schema owner, ``SECURITY DEFINER``, every name schema-qualified,
``search_path`` pinned with ``pg_temp`` last, ``EXECUTE`` revoked from
``PUBLIC``, as in 0007):

* ``recorder_prune_begin`` snapshots each policy's ``archive_dir`` with the
  run's policies;
* ``recorder_prune_batch`` and ``recorder_prune_delete`` refuse a policy
  whose snapshot requires archiving (``object_not_in_prerequisite_state``),
  so a pg_cron job or any other caller of them deletes none of its rows;
* ``recorder_prune_delete_archived(run, policy, archive_id, file_name, ids)``
  is how ``prune --archive`` deletes: it removes what
  ``recorder_prune_delete`` would, only while that file is in the manifest
  as ``written`` (complete, fsynced, digests recorded) for that policy;
* ``recorder_prune_remove`` (internal, granted to no role) holds the
  removal itself, and ``recorder_prune_requires_archive`` (internal) reads
  the snapshot.

Roles already granted ``EXECUTE`` on ``recorder_prune_delete`` (a pruner
set up by ``recorder db grant`` before this migration) are granted it on
``recorder_prune_delete_archived`` too, so ``prune --archive`` keeps working
after the upgrade without granting again.

The SQL below is frozen here, like every migration: a later change writes a
new migration rather than editing this one. Downgrading restores 0007's
definitions.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PINNED = "SET search_path = pg_catalog, pg_temp SET timezone = 'UTC'"

# The same hold condition as 0007's (frozen text, repeated rather than imported).
HELD = (
    "EXISTS (SELECT 1 FROM @S@.legal_holds h WHERE h.released_at IS NULL"
    " AND (h.team_id IS NULL OR h.team_id = e.team_id)"
    " AND (h.channel_id IS NULL OR h.channel_id = e.channel_id)"
    " AND (h.user_id IS NULL OR h.user_id = e.user_id)"
    " AND (h.since IS NULL OR e.received_at >= h.since)"
    " AND (h.until IS NULL OR e.received_at < h.until))"
)

REFUSE_ARCHIVED = """
    IF @S@.recorder_prune_requires_archive(p_run, p_policy) THEN
        RAISE EXCEPTION 'retention policy % requires archiving before delete; the database cannot archive, so none of its envelopes is deleted here', p_policy
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'run recorder prune, which archives them first';
    END IF;"""

#: Functions added by this migration (dropped on downgrade).
NEW_FUNCTIONS: dict[str, str] = {
    "recorder_prune_requires_archive(integer, text)": f"""
CREATE OR REPLACE FUNCTION @S@.recorder_prune_requires_archive(p_run integer, p_policy text)
RETURNS boolean LANGUAGE sql STABLE {PINNED} AS $$
-- Whether the run's snapshot of p_policy names an archive directory. A
-- policy the run did not snapshot answers false; recorder_prune_where refuses it.
    SELECT coalesce(bool_or(p.value->>'archive_dir' IS NOT NULL), false)
    FROM @S@.prune_runs r, jsonb_array_elements(coalesce(r.policies, '[]')) AS p(value)
    WHERE r.id = p_run AND p.value->>'name' = p_policy
$$""",
    "recorder_prune_remove(integer, text, text[])": f"""
CREATE OR REPLACE FUNCTION @S@.recorder_prune_remove(p_run integer, p_policy text, p_ids text[])
RETURNS TABLE (envelope_id text, received_at timestamptz)
LANGUAGE plpgsql {PINNED} AS $$
-- 0007's recorder_prune_delete body: remove those of p_ids that the run's
-- policy has expired and no hold covers, log and count each. Internal: only
-- the SECURITY DEFINER functions below call it, after their own checks.
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
    "recorder_prune_delete_archived(integer, text, text, text, text[])": f"""
CREATE OR REPLACE FUNCTION @S@.recorder_prune_delete_archived(
    p_run integer, p_policy text, p_archive_id text, p_file_name text, p_ids text[]
) RETURNS TABLE (envelope_id text, received_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER {PINNED} AS $$
-- What recorder_prune_delete removes, for a policy that requires archiving
-- too: only while the file that holds them is in the manifest as written
-- (complete, fsynced, its digests recorded) for this policy. The database
-- cannot read the file; recorder verify --archive checks it holds them.
BEGIN
    PERFORM @S@.recorder_prune_check_run(p_run, true);
    IF NOT EXISTS (
        SELECT 1 FROM @S@.archive_files f
        WHERE f.archive_id = p_archive_id AND f.file_name = p_file_name
          AND f.state = 'written' AND f.policy_name = p_policy
    ) THEN
        RAISE EXCEPTION 'archive file % of archive % is not in the manifest as written for policy %; nothing deleted',
            p_file_name, p_archive_id, p_policy
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN QUERY SELECT r.envelope_id, r.received_at
        FROM @S@.recorder_prune_remove(p_run, p_policy, p_ids) r;
END
$$""",
}

#: 0007's functions this migration replaces (same signatures).
REPLACED: dict[str, str] = {
    "recorder_prune_begin(boolean, text, text, timestamp with time zone)": f"""
CREATE OR REPLACE FUNCTION @S@.recorder_prune_begin(
    p_dry_run boolean, p_actor text, p_host text, p_as_of timestamptz DEFAULT NULL
) RETURNS TABLE (run_id integer, started_at timestamptz, cutoffs jsonb)
LANGUAGE plpgsql SECURITY DEFINER {PINNED} AS $$
-- Start a run: fix its policies (with their archive directories) and cutoffs
-- (as_of - keep) now. A caller may date the run earlier than the database
-- clock (fewer rows expire), never later.
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
    SELECT
        coalesce(jsonb_agg(jsonb_build_object(
            'name', p.name, 'keep_seconds', p.keep_seconds, 'priority', p.priority,
            'team_id', p.team_id, 'channel_id', p.channel_id, 'user_id', p.user_id,
            'envelope_type', p.envelope_type, 'event_type', p.event_type,
            'archive_dir', p.archive_dir, 'cutoff', p.cutoff
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
    "recorder_prune_delete(integer, text, text[])": f"""
CREATE OR REPLACE FUNCTION @S@.recorder_prune_delete(p_run integer, p_policy text, p_ids text[])
RETURNS TABLE (envelope_id text, received_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER {PINNED} AS $$
-- Remove those of p_ids that the run's policy p_policy has expired and no
-- hold covers (re-checked here), logged and counted; never for a policy
-- that requires archiving (recorder_prune_delete_archived is for those).
BEGIN
    PERFORM @S@.recorder_prune_check_run(p_run, true);{REFUSE_ARCHIVED}
    RETURN QUERY SELECT r.envelope_id, r.received_at
        FROM @S@.recorder_prune_remove(p_run, p_policy, p_ids) r;
END
$$""",
    "recorder_prune_batch(integer, text, timestamp with time zone, text, integer)": f"""
CREATE OR REPLACE FUNCTION @S@.recorder_prune_batch(
    p_run integer, p_policy text, p_after_at timestamptz, p_after_id text, p_limit integer
) RETURNS TABLE (n bigint, received_at timestamptz, envelope_id text)
LANGUAGE plpgsql SECURITY DEFINER {PINNED} AS $$
-- One batch in one round trip: the next candidates (locked, skipping rows a
-- writer holds) are removed. Returns how many went and the batch's last key,
-- or no row when there was nothing left. Refuses a policy that requires
-- archiving before it lists anything.
DECLARE
    v_ids text[];
    v_last_at timestamptz;
    v_last_id text;
    v_n bigint;
BEGIN
    PERFORM @S@.recorder_prune_check_run(p_run, true);{REFUSE_ARCHIVED}
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
    SELECT count(*) INTO v_n FROM @S@.recorder_prune_remove(p_run, p_policy, v_ids);
    RETURN QUERY SELECT v_n, v_last_at, v_last_id;
END
$$""",
}


# Who may delete through recorder_prune_delete may delete through the archived
# variant (narrower: it also needs a written manifest row); PUBLIC (0) and the
# owner are left out.
CARRY_GRANTS = """
DO $$
DECLARE
    v_role text;
BEGIN
    FOR v_role IN
        SELECT DISTINCT a.grantee::regrole::text
        FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
        WHERE p.oid = '@S@.recorder_prune_delete(integer, text, text[])'::regprocedure
          AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> p.proowner
    LOOP
        EXECUTE 'GRANT EXECUTE ON FUNCTION '
            '@S@.recorder_prune_delete_archived(integer, text, text, text, text[]) TO ' || v_role;
    END LOOP;
END
$$"""


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


def _revision_0007() -> ModuleType:
    """0007's module, for its frozen function definitions (restored on downgrade)."""
    path = Path(__file__).with_name("0007_database_side_pruning.py")
    spec = importlib.util.spec_from_file_location("recorder_migration_0007", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upgrade() -> None:
    op.add_column(
        "retention_policies",
        sa.Column(
            "archive_dir",
            sa.Text(),
            comment="when set, what the policy expires is archived (here, unless the prune "
            "names another archive) before it is deleted; never deleted unarchived",
        ),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    _run_sql(
        [
            # New functions first: the replaced ones call them.
            *NEW_FUNCTIONS.values(),
            *REPLACED.values(),
            *(f"REVOKE ALL ON FUNCTION @S@.{signature} FROM PUBLIC" for signature in NEW_FUNCTIONS),
            *(f"REVOKE ALL ON FUNCTION @S@.{signature} FROM PUBLIC" for signature in REPLACED),
            CARRY_GRANTS,
        ]
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        previous = _revision_0007().FUNCTIONS
        _run_sql(
            [
                *(previous[signature] for signature in REPLACED),
                *(
                    f"DROP FUNCTION IF EXISTS @S@.{signature}"
                    for signature in reversed(NEW_FUNCTIONS)
                ),
            ]
        )
    op.drop_column("retention_policies", "archive_dir")
