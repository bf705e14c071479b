"""The archive manifest: every Parquet file `recorder prune --archive` wrote.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Types spelled out rather than imported from recorder.schema (see 0001).
UTC_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "archive_files",
        sa.Column("archive_id", sa.Text(), nullable=False, comment="the archive directory's id"),
        sa.Column(
            "file_name", sa.Text(), nullable=False, comment="path inside the archive directory"
        ),
        sa.Column(
            "state",
            sa.Text(),
            nullable=False,
            comment="writing: named, not yet complete on disk; written: complete and fsynced, "
            "its envelopes not yet all deleted; complete: deleted and logged; "
            "abandoned: never completed, no file",
        ),
        sa.Column(
            "policy_name",
            sa.Text(),
            nullable=False,
            comment="the retention policy that expired them",
        ),
        sa.Column(
            "prune_run_id", sa.Integer(), nullable=False, comment="the prune run that wrote it"
        ),
        sa.Column(
            "deleted_by_run_id",
            sa.Integer(),
            comment="the prune run that deleted its envelopes",
        ),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("written_at", UTC_TIMESTAMP),
        sa.Column("completed_at", UTC_TIMESTAMP),
        sa.Column("row_count", sa.BigInteger()),
        sa.Column("deleted_count", sa.BigInteger(), comment="envelopes the live database removed"),
        sa.Column("first_received_at", UTC_TIMESTAMP),
        sa.Column("last_received_at", UTC_TIMESTAMP),
        sa.Column("file_bytes", sa.BigInteger()),
        sa.Column("file_sha256", sa.Text(), comment="hex SHA-256 of the file's bytes"),
        sa.Column(
            "members_sha256",
            sa.Text(),
            comment="hex SHA-256 over (envelope_id, received_at, envelope_sha256) of each row, "
            "in file order",
        ),
        sa.CheckConstraint(
            "state IN ('writing', 'written', 'complete', 'abandoned')",
            name=op.f("ck_archive_files_state"),
        ),
        sa.PrimaryKeyConstraint("archive_id", "file_name", name=op.f("pk_archive_files")),
        comment="the archive manifest: every Parquet file `recorder prune --archive` wrote",
    )
    op.create_index("ix_archive_files_state", "archive_files", ["state"])


def downgrade() -> None:
    op.drop_index("ix_archive_files_state", table_name="archive_files")
    op.drop_table("archive_files")
