"""Create the envelopes table and its reporting indexes.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Migrations spell types out rather than import recorder.schema, so that a
# later change to the schema module never rewrites history.
UTC_TIMESTAMP = sa.DateTime(timezone=True)
JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
PENDING_ONLY = sa.text("status = 'pending'")


def upgrade() -> None:
    op.create_table(
        "envelopes",
        sa.Column("envelope_id", sa.Text(), nullable=False),
        sa.Column(
            "envelope_type", sa.Text(), comment="events_api, slash_commands, interactive, ..."
        ),
        sa.Column(
            "received_at",
            UTC_TIMESTAMP,
            nullable=False,
            comment="when the recorder stored it (UTC)",
        ),
        sa.Column("team_id", sa.Text()),
        sa.Column("enterprise_id", sa.Text()),
        sa.Column("api_app_id", sa.Text()),
        sa.Column(
            "event_id",
            sa.Text(),
            comment="payload.event_id of events_api envelopes; a retry in a new envelope is a duplicate",
        ),
        sa.Column(
            "event_type",
            sa.Text(),
            comment="event type, slash command, or interactive payload type",
        ),
        sa.Column("channel_id", sa.Text()),
        sa.Column("user_id", sa.Text()),
        sa.Column("retry_attempt", sa.Integer()),
        sa.Column("retry_reason", sa.Text()),
        sa.Column(
            "envelope",
            JSON_DOCUMENT,
            nullable=False,
            comment="the envelope as queryable JSON; NUL and lone surrogates replaced by U+FFFD",
        ),
        sa.Column(
            "envelope_text",
            sa.Text(),
            nullable=False,
            comment="the exact JSON text as received; envelope_sha256 covers it",
        ),
        sa.Column(
            "envelope_sha256",
            sa.Text(),
            nullable=False,
            comment="hex SHA-256 of envelope_text (UTF-8)",
        ),
        sa.Column("status", sa.Text(), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("completed_at", UTC_TIMESTAMP),
        sa.Column(
            "attempts",
            sa.Integer(),
            server_default=sa.text("1"),
            nullable=False,
            comment="handler dispatches so far: 1 when recorded, +1 per recovery claim",
        ),
        sa.Column("claimed_at", UTC_TIMESTAMP, comment="when the current dispatch attempt started"),
        sa.CheckConstraint("status IN ('pending', 'done')", name=op.f("ck_envelopes_status")),
        sa.PrimaryKeyConstraint("envelope_id", name=op.f("pk_envelopes")),
        sa.UniqueConstraint("event_id", name=op.f("uq_envelopes_event_id")),
    )
    op.create_index("ix_envelopes_received_at", "envelopes", ["received_at"])
    op.create_index("ix_envelopes_team_id_received_at", "envelopes", ["team_id", "received_at"])
    op.create_index(
        "ix_envelopes_channel_id_received_at", "envelopes", ["channel_id", "received_at"]
    )
    op.create_index("ix_envelopes_user_id_received_at", "envelopes", ["user_id", "received_at"])
    op.create_index(
        "ix_envelopes_event_type_received_at", "envelopes", ["event_type", "received_at"]
    )
    op.create_index(
        "ix_envelopes_pending",
        "envelopes",
        ["received_at"],
        postgresql_where=PENDING_ONLY,
        sqlite_where=PENDING_ONLY,
    )


def downgrade() -> None:
    op.drop_table("envelopes")
