"""Envelopes of up to about 8 KB stored in their row, uncompressed (PostgreSQL).

With the default ``toast_tuple_target`` (2,032 bytes), a row holding a 1 KB
envelope twice (its exact text and its ``jsonb`` copy) is over the threshold
on every insert: PostgreSQL tries ``pglz`` on both values, and when JSON with
varied text does not shrink by a quarter (the realistic envelopes of
``bench/`` do not), it moves the copy to the TOAST table, an index insert
more per row. Measured on 20,000 such envelopes (issue 13): 59-82 µs of
server time per row inserted with the default, 34-39 µs inline; the
queryable copy read back in 0.6 µs instead of 3-4 (no TOAST lookup), and
the table with its TOAST 55 MB instead of 61. Rows over 8,160 bytes are
still compressed and moved out as before. Existing rows keep their storage
until rewritten; nothing else changes. A catalog change only, under SHARE
UPDATE EXCLUSIVE: bots go on recording while it runs, nothing is rewritten.
SQLite has no such setting.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE envelopes SET (toast_tuple_target = 8160)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE envelopes RESET (toast_tuple_target)")
