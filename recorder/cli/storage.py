"""Opening the configured database for a subcommand."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from sqlalchemy.engine import Engine

from recorder import db as db_api
from recorder.engine import create_engine, database_url
from recorder.errors import ConfigurationError
from recorder.settings import Settings


@contextmanager
def open_engine(
    settings: Settings, *, migrate_sqlite: bool = True, must_exist: bool = False
) -> Iterator[Engine]:
    """An engine for the configured database, disposed of afterwards.

    The embedded SQLite database is brought to the current schema on first
    use (``migrate_sqlite``), so ``recorder import`` works on a fresh machine
    with no set-up. PostgreSQL is never migrated implicitly: run
    ``recorder db upgrade`` (a missing schema is a SchemaMissing error saying so).
    Commands that only read pass ``must_exist``: a mistyped SQLite path is
    then an error instead of a new, empty database.
    """
    if must_exist:
        require_existing_database(settings)
    engine = create_engine(settings.database_url)
    try:
        if migrate_sqlite:
            db_api.ensure_sqlite_schema(engine)
        yield engine
    finally:
        engine.dispose()


def require_existing_database(settings: Settings) -> None:
    """Refuse a missing SQLite file, for commands that only read (no empty database appears)."""
    parsed = database_url(settings.database_url)
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or not path or path == ":memory:":
        return
    if not Path(path).exists():
        raise ConfigurationError(
            f"no database at {path}: record something first (recorder import, recorder demo), "
            "or check --database-url / RECORDER_DATABASE_URL"
        )


def stderr_is_terminal() -> bool:
    stream: IO[str] = sys.stderr
    return stream.isatty()
