"""The database-side prune reads each batch through the received_at index (PostgreSQL).

A prune batch is the next expired rows in key order, ``ORDER BY received_at,
envelope_id LIMIT n``. On a table the planner has no statistics for (a bulk
import that autovacuum has not analyzed yet) it picked, for every batch, a
bitmap scan of every expired row and a sort of them all, so a prune slowed
with the square of what it had to delete: 1,000,000 expired envelopes took
312 s, and 36-45 s once analyzed; 41 s with this revision, unanalyzed
(BENCHMARKS.md, "Before the table is analyzed").

``enable_bitmapscan`` off for the two functions that list a batch
(``recorder_prune_batch``, ``recorder_prune_candidates``) leaves the planner
the index scan that stops after the batch (on the received_at index, or on
a policy's own: channel, user, team, type or event type with received_at).
``recorder_prune_remove``, which removes a batch by id, runs with it off
too: it combined the primary key with a bitmap of the received_at index
over every expired row, once per batch (16 ms a batch at 200,000 expired
rows, growing with them); now it looks the ids up in the primary key. With
statistics the plans were already these. ``enable_seqscan`` stays on: the
legal-hold check's only plan is a scan of ``legal_holds``, and with that
scan disabled every candidate plan carried the same penalty, which led the
planner to sort every expired row even with statistics (26 s instead of 10
for 200,000).

The settings are function attributes (``ALTER FUNCTION ... SET``; they hold
for the functions each calls): a later revision that replaces one of the
three with ``CREATE OR REPLACE`` must repeat them. SQLite has no such
functions.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The functions that list a batch, and the one they call to remove it.
FUNCTIONS = (
    "recorder_prune_batch(integer, text, timestamp with time zone, text, integer)",
    "recorder_prune_candidates(integer, text, timestamp with time zone, text, integer)",
    "recorder_prune_remove(integer, text, text[])",
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for function in FUNCTIONS:
            op.execute(f"ALTER FUNCTION {function} SET enable_bitmapscan = off")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for function in FUNCTIONS:
            op.execute(f"ALTER FUNCTION {function} RESET enable_bitmapscan")
