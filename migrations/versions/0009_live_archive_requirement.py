"""A policy's archive requirement binds a prune run from the moment it is set.

0008 read whether a policy requires archiving from the run's snapshot only,
so a run that began before ``retention set NAME --archive DIR`` (a pg_cron
job working through a large backlog) went on deleting that policy's
envelopes unarchived for as long as it ran. ``recorder_prune_requires_archive``
now answers true when either the snapshot or the policy as it stands
requires archiving, and takes a share lock on the policy's row, so a
``retention set`` waits for a batch in flight and every later batch sees it.
Dropping the requirement still does not open up a run that began with it.

PostgreSQL only (SQLite prunes through Python, which checks the same in
each batch's transaction); no table or column changes. The SQL below is
frozen here, like every migration. Downgrading restores 0008's definition.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PINNED = "SET search_path = pg_catalog, pg_temp SET timezone = 'UTC'"
SIGNATURE = "recorder_prune_requires_archive(integer, text)"

# VOLATILE: a function that locks rows may not be STABLE.
REQUIRES_ARCHIVE = f"""
CREATE OR REPLACE FUNCTION @S@.recorder_prune_requires_archive(p_run integer, p_policy text)
RETURNS boolean LANGUAGE plpgsql VOLATILE {PINNED} AS $$
-- Whether the run's snapshot of p_policy, or the policy as it stands now,
-- names an archive directory. The share lock makes a concurrent change of
-- the policy wait until the caller's batch commits.
DECLARE
    v_live boolean;
BEGIN
    IF EXISTS (
        SELECT 1 FROM @S@.prune_runs r, jsonb_array_elements(coalesce(r.policies, '[]')) AS p(value)
        WHERE r.id = p_run AND p.value->>'name' = p_policy AND p.value->>'archive_dir' IS NOT NULL
    ) THEN
        RETURN true;
    END IF;
    SELECT rp.archive_dir IS NOT NULL INTO v_live
    FROM @S@.retention_policies rp WHERE rp.name = p_policy FOR SHARE;
    RETURN coalesce(v_live, false);
END
$$"""


def _schema() -> str:
    name = op.get_bind().execute(sa.text("SELECT current_schema()")).scalar_one()
    return '"' + str(name).replace('"', '""') + '"'


def _run_sql(statements: list[str]) -> None:
    # The DB-API cursor with no parameters, as 0008 does.
    schema = _schema()
    cursor = op.get_bind().connection.cursor()
    try:
        for statement in statements:
            cursor.execute(statement.replace("@S@", schema))
    finally:
        cursor.close()


def _revision_0008_requires_archive() -> str:
    """0008's frozen definition of the function (restored on downgrade)."""
    path = Path(__file__).with_name("0008_policy_archive.py")
    spec = importlib.util.spec_from_file_location("recorder_migration_0008", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.NEW_FUNCTIONS[SIGNATURE])


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _run_sql([REQUIRES_ARCHIVE, f"REVOKE ALL ON FUNCTION @S@.{SIGNATURE} FROM PUBLIC"])


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # 0008's definition is STABLE: replacing a function keeps its owner and grants.
    _run_sql([_revision_0008_requires_archive()])
