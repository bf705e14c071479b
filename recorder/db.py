"""Schema migrations as a library API: the CLI and the tests call these functions.

Migrations live in ``migrations/`` at the repository root and ship inside the
wheel as ``recorder/_migrations``, so ``recorder db upgrade`` works from an
installed package as well as from a checkout.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import URL, Connection, Engine

from recorder.engine import create_engine, is_sqlite, read_only, storage_errors
from recorder.errors import ConfigurationError


def migrations_dir() -> Path:
    """Where the Alembic scripts are: packaged in the wheel, else the checkout's."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise ConfigurationError(
        f"no migrations found beside {package}; the installation is incomplete"
    )


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for the recorder's migrations, bound to ``connection`` if given."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@contextmanager
def _connection(url_or_engine: str | URL | Engine, action: str) -> Iterator[Connection]:
    engine = url_or_engine if isinstance(url_or_engine, Engine) else create_engine(url_or_engine)
    try:
        with storage_errors(action), engine.begin() as conn:
            yield conn
    finally:
        if engine is not url_or_engine:
            engine.dispose()


def upgrade(url_or_engine: str | URL | Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision``. Idempotent; safe to run from several processes.

    Raises
    ------
    ConfigurationError
        ``revision`` is not one this version ships.
    """
    with _connection(url_or_engine, "upgrading the schema") as conn, _revision_errors():
        command.upgrade(alembic_config(conn), revision)


def downgrade(url_or_engine: str | URL | Engine, revision: str) -> None:
    """Revert migrations down to ``revision`` (``"base"`` removes every recorder table)."""
    with _connection(url_or_engine, "downgrading the schema") as conn, _revision_errors():
        command.downgrade(alembic_config(conn), revision)


@contextmanager
def _revision_errors() -> Iterator[None]:
    try:
        yield
    except CommandError as exc:
        raise ConfigurationError(f"{exc}; this version knows {', '.join(revisions())}") from exc


def revisions() -> list[str]:
    """Every revision this version ships, oldest first."""
    script = ScriptDirectory.from_config(alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def current_revision(url_or_engine: str | URL | Engine) -> str | None:
    """The revision the database is at, or None for an empty database.

    A read that never waits for writers (SQLite's deferred transaction), so
    checking the schema does not queue behind a long write.
    """
    engine = url_or_engine if isinstance(url_or_engine, Engine) else create_engine(url_or_engine)
    try:
        with storage_errors("reading the schema revision"), read_only(engine) as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        if engine is not url_or_engine:
            engine.dispose()


@functools.cache
def head_revision() -> str | None:
    """The newest revision this version of the recorder ships."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def ensure_sqlite_schema(engine: Engine) -> bool:
    """Bring an SQLite database to the newest revision; return True if it was migrated.

    The embedded database is created and migrated on first use. PostgreSQL
    is left alone (a shared production schema changes only through ``recorder
    db upgrade``), and so is an SQLite database already at the newest revision.
    """
    if not is_sqlite(engine) or current_revision(engine) == head_revision():
        return False
    upgrade(engine)
    return True
