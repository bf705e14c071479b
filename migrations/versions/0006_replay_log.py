"""Replay log: replay_runs and the envelopes each run replayed (`recorder replay`).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Types spelled out rather than imported from recorder.schema (see 0001).
UTC_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "replay_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("started_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("finished_at", UTC_TIMESTAMP),
        sa.Column(
            "status",
            sa.Text(),
            nullable=False,
            comment="running (or killed while running), completed, interrupted; "
            "an unfinished run is resumed by the next replay with the same handler and filters",
        ),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("host", sa.Text()),
        sa.Column("handler", sa.Text(), nullable=False, comment="module:function"),
        sa.Column(
            "filters", sa.Text(), nullable=False, comment="the query filters, as canonical JSON"
        ),
        sa.CheckConstraint(
            "status IN ('running', 'completed', 'interrupted')",
            name=op.f("ck_replay_runs_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_replay_runs")),
        comment="`recorder replay` runs: who replayed what through which handler, and when",
    )
    op.create_index(op.f("ix_replay_runs_handler_filters"), "replay_runs", ["handler", "filters"])
    op.create_table(
        "replayed_envelopes",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("envelope_id", sa.Text(), nullable=False),
        sa.Column("replayed_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("error", sa.Text(), comment="the handler's exception; NULL when it succeeded"),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["replay_runs.id"],
            name=op.f("fk_replayed_envelopes_run_id_replay_runs"),
        ),
        sa.PrimaryKeyConstraint("run_id", "envelope_id", name=op.f("pk_replayed_envelopes")),
        comment="each envelope a replay run handed to its handler, and how that went",
    )


def downgrade() -> None:
    op.drop_table("replayed_envelopes")
    op.drop_index(op.f("ix_replay_runs_handler_filters"), table_name="replay_runs")
    op.drop_table("replay_runs")
