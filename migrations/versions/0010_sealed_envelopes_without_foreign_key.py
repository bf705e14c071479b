"""Sealed members without a foreign key to their block.

``sealed_envelopes.block_no`` referenced ``seal_blocks``: a check per member
row, about 2.5 µs of server CPU each on PostgreSQL, a third of what sealing
a block costs (issue 13: `recorder seal` at 100,000 envelopes/s). Members are
only ever written with their block, in the same transaction (the same
statement on PostgreSQL), and nothing deletes either; ``recorder verify``
reports a member listed under a block the chain does not hold, which the
constraint prevented before. No table or column changes; downgrading adds
the constraint back (it fails if such a member exists).

SQLite rebuilds the table (batch mode) to drop the constraint.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "fk_sealed_envelopes_block_no_seal_blocks"


def upgrade() -> None:
    with op.batch_alter_table("sealed_envelopes") as batch:
        batch.drop_constraint(NAME, type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("sealed_envelopes") as batch:
        batch.create_foreign_key(NAME, "seal_blocks", ["block_no"], ["block_no"])
