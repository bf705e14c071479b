"""The database-side prune reads each batch through the received_at index (PostgreSQL).

A prune batch is the next expired rows in key order, ``ORDER BY received_at,
envelope_id LIMIT n``. On a table the planner has no statistics for (a bulk
import that autovacuum has not analyzed yet) it picked, for every batch, a
bitmap scan of every expired row and a sort of them all, so a prune slowed
with the square of what it had to delete: 1,000,000 expired envelopes took
312 s instead of 45 s (BENCHMARKS.md, "Before the table is analyzed").

``enable_bitmapscan`` off for the two functions that list a batch leaves the
planner the index scan that stops after the batch (on the received_at index,
or on a policy's own: channel, user, team, type or event type with
received_at). With statistics the plan was already that one, and stays so.
``enable_seqscan`` stays on: the legal-hold check's only plan is a scan of
``legal_holds``, and with that scan disabled every candidate plan carried the
same penalty, which led the planner to sort every expired row even with
statistics (26 s instead of 10 for 200,000).

A function's settings hold for the functions it calls: ``recorder_prune_remove``
runs with bitmap scans on, as before, since it finds the batch by id (without
them it walked the received_at index over every expired row). The settings
are function attributes (``ALTER FUNCTION ... SET``): a later revision that
replaces one of the three with ``CREATE OR REPLACE`` must repeat them.
SQLite has no such functions.

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

#: Each function and the ``enable_bitmapscan`` it runs with (see above for the "on").
FUNCTIONS = {
    "recorder_prune_batch(integer, text, timestamp with time zone, text, integer)": "off",
    "recorder_prune_candidates(integer, text, timestamp with time zone, text, integer)": "off",
    "recorder_prune_remove(integer, text, text[])": "on",
}


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for function, value in FUNCTIONS.items():
            op.execute(f"ALTER FUNCTION {function} SET enable_bitmapscan = {value}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for function in FUNCTIONS:
            op.execute(f"ALTER FUNCTION {function} RESET enable_bitmapscan")
