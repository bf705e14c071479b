"""Tamper evidence: the sealed hash chain (seal_blocks) and each sealed envelope's digest.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Types spelled out rather than imported from recorder.schema (see 0001).
UTC_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "seal_blocks",
        sa.Column("block_no", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column(
            "kind",
            sa.Text(),
            nullable=False,
            comment="range: the next envelopes in (received_at, envelope_id) order; "
            "late: envelopes adopted after their range was sealed",
        ),
        sa.Column("sealed_at", UTC_TIMESTAMP, nullable=False),
        sa.Column(
            "cutoff", UTC_TIMESTAMP, comment="range blocks: envelopes received up to this time"
        ),
        sa.Column("first_received_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("first_envelope_id", sa.Text(), nullable=False),
        sa.Column("last_received_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("last_envelope_id", sa.Text(), nullable=False),
        sa.Column("envelope_count", sa.Integer(), nullable=False),
        sa.Column(
            "prev_digest",
            sa.Text(),
            nullable=False,
            comment="digest of the block before (zeros first)",
        ),
        sa.Column(
            "digest",
            sa.Text(),
            nullable=False,
            comment="hex SHA-256 over this block's header, prev_digest and its envelopes' digests",
        ),
        sa.CheckConstraint("kind IN ('range', 'late')", name=op.f("ck_seal_blocks_kind")),
        sa.PrimaryKeyConstraint("block_no", name=op.f("pk_seal_blocks")),
        sa.UniqueConstraint("digest", name=op.f("uq_seal_blocks_digest")),
        comment="the hash chain of `recorder seal`; `recorder verify` recomputes it",
    )
    op.create_table(
        "sealed_envelopes",
        sa.Column("block_no", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("position", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("envelope_id", sa.Text(), nullable=False),
        sa.Column("received_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("envelope_sha256", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["block_no"],
            ["seal_blocks.block_no"],
            name=op.f("fk_sealed_envelopes_block_no_seal_blocks"),
        ),
        sa.PrimaryKeyConstraint("block_no", "position", name=op.f("pk_sealed_envelopes")),
        comment="each sealed envelope's digest as sealed; kept after pruning, as the proof",
    )
    op.create_index("ix_sealed_envelopes_envelope_id", "sealed_envelopes", ["envelope_id"])


def downgrade() -> None:
    op.drop_table("sealed_envelopes")
    op.drop_table("seal_blocks")
