"""Alembic environment: runs the recorder's migrations on PostgreSQL or SQLite.

``recorder.db.upgrade`` passes its own connection in ``config.attributes``;
plain ``alembic upgrade head`` from a checkout uses ``RECORDER_DATABASE_URL``
(or ``-x url=...``, or ``sqlalchemy.url`` in alembic.ini).
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from recorder.engine import DEFAULT_DATABASE_URL, create_engine
from recorder.schema import metadata

config = context.config
target_metadata = metadata

# Concurrent upgrades from several instances queue on this lock rather than
# racing to create the same tables.
_MIGRATION_LOCK_KEY = 0x7265636F  # "reco"


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
            )
        context.run_migrations()


def _url() -> str:
    return (
        context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("RECORDER_DATABASE_URL")
        or config.get_main_option("sqlalchemy.url")
        or DEFAULT_DATABASE_URL
    )


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    given = config.attributes.get("connection")
    if given is not None:
        _run(given)
    else:
        engine = create_engine(_url())
        try:
            with engine.begin() as conn:
                _run(conn)
        finally:
            engine.dispose()
