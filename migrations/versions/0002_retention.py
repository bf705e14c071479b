"""Retention policies, legal holds, the prune log with the envelopes each run removed, the change log;
an (envelope_type, received_at) index for stats by type.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Types spelled out rather than imported from recorder.schema (see 0001).
UTC_TIMESTAMP = sa.DateTime(timezone=True)
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_index(
        "ix_envelopes_envelope_type_received_at", "envelopes", ["envelope_type", "received_at"]
    )
    op.create_table(
        "retention_policies",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column(
            "keep_seconds",
            sa.BigInteger(),
            nullable=False,
            comment="records older than this expire",
        ),
        sa.Column("team_id", sa.Text(), comment="match: NULL matches any value"),
        sa.Column("channel_id", sa.Text()),
        sa.Column("user_id", sa.Text()),
        sa.Column("envelope_type", sa.Text()),
        sa.Column("event_type", sa.Text()),
        sa.Column(
            "priority",
            sa.Integer(),
            server_default=sa.text("0"),
            nullable=False,
            comment="the matching policy with the highest priority decides; ties go to the name first in order",
        ),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("updated_at", UTC_TIMESTAMP, nullable=False),
        sa.CheckConstraint("keep_seconds > 0", name=op.f("ck_retention_policies_keep_positive")),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_retention_policies")),
    )
    op.create_table(
        "legal_holds",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("team_id", sa.Text(), comment="match: NULL matches any value"),
        sa.Column("channel_id", sa.Text()),
        sa.Column("user_id", sa.Text()),
        sa.Column("since", UTC_TIMESTAMP, comment="holds records received at or after this time"),
        sa.Column("until", UTC_TIMESTAMP, comment="holds records received before this time"),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.Column("released_at", UTC_TIMESTAMP, comment="NULL while the hold is in force"),
        sa.Column("released_by", sa.Text()),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_legal_holds")),
    )
    op.create_table(
        "prune_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("started_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("finished_at", UTC_TIMESTAMP),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("cutoffs", JSON_DOCUMENT, comment="policy name -> ISO cutoff time"),
        sa.Column(
            "deleted_per_policy",
            JSON_DOCUMENT,
            comment="policy name -> rows deleted (would be deleted, for a dry run)",
        ),
        sa.Column("deleted_total", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "held_count",
            sa.BigInteger(),
            comment="expired rows kept because a legal hold covers them",
        ),
        sa.Column(
            "skipped_count",
            sa.BigInteger(),
            comment="expired, unheld rows left for a later run (time budget, rows locked by writers)",
        ),
        sa.Column("error", sa.Text()),
        sa.Column("actor", sa.Text()),
        sa.Column("host", sa.Text()),
        sa.CheckConstraint(
            "status IN ('running', 'completed', 'stopped', 'failed', 'locked_out')",
            name=op.f("ck_prune_runs_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prune_runs")),
    )
    op.create_index("ix_prune_runs_started_at", "prune_runs", ["started_at"])
    op.create_table(
        "pruned_envelopes",
        sa.Column(
            "prune_run_id",
            sa.Integer(),
            nullable=False,
            comment="prune_runs.id; no foreign key, whose per-row check would slow every prune batch",
        ),
        sa.Column("envelope_id", sa.Text(), nullable=False),
        sa.Column("envelope_sha256", sa.Text(), nullable=False),
        sa.Column("received_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("policy_name", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("prune_run_id", "envelope_id", name=op.f("pk_pruned_envelopes")),
        comment="one row per envelope a prune run removed, written in the deleting transaction",
    )
    op.create_index("ix_pruned_envelopes_envelope_id", "pruned_envelopes", ["envelope_id"])
    op.create_table(
        "change_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", UTC_TIMESTAMP, nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column(
            "action",
            sa.Text(),
            nullable=False,
            comment="create, update, remove, add, release",
        ),
        sa.Column(
            "object_kind",
            sa.Text(),
            nullable=False,
            comment="retention_policy or legal_hold",
        ),
        sa.Column("object_name", sa.Text(), nullable=False),
        sa.Column("details", JSON_DOCUMENT),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_change_log")),
    )
    op.create_index("ix_change_log_at", "change_log", ["at"])


def downgrade() -> None:
    op.drop_table("change_log")
    op.drop_table("pruned_envelopes")
    op.drop_table("prune_runs")
    op.drop_table("legal_holds")
    op.drop_table("retention_policies")
    op.drop_index("ix_envelopes_envelope_type_received_at", table_name="envelopes")
