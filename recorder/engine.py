"""Engines for PostgreSQL and SQLite, and the translation of driver errors.

Everything that differs between the two engines at the connection level lives
here: URL defaults, pool settings, SQLite pragmas and ``BEGIN IMMEDIATE``, and
which connections run in autocommit.
"""

from __future__ import annotations

import re
import select
import sqlite3
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.errors
import sqlalchemy as sa
import sqlalchemy.exc as sa_exc
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url

from recorder.errors import ConfigurationError, InvalidEnvelope, SchemaMissing, StorageUnavailable

DEFAULT_DATABASE_URL = "sqlite:///recorder.db"
SQLITE_BUSY_TIMEOUT_SECONDS = 30.0

#: ``wal_autocheckpoint`` of the recorder's SQLite connections: the log size
#: (in pages, 40 MB) at which a committing connection checkpoints by itself,
#: should the background thread not keep up (or not run).
FALLBACK_PAGES = 10_000  # see recorder.sqlite_checkpoints
POSTGRES_CONNECT_TIMEOUT_SECONDS = 5
#: A pooled PostgreSQL connection idle longer than this gets a full pre-ping.
PING_AFTER_IDLE_SECONDS = 5.0

# Execution option: a read-only SQLite transaction begins DEFERRED so readers
# never queue behind writers (WAL lets them run side by side).
READ_ONLY = "recorder_read_only"


def database_url(url: str | URL) -> URL:
    """Parse ``url`` and pick the drivers the recorder supports.

    ``postgresql://`` means psycopg 3; ``sqlite://`` the standard library.
    """
    try:
        parsed = _password_in_place(make_url(url))
    except sa_exc.ArgumentError as exc:
        raise ConfigurationError(f"not a database URL: {mask_url(str(url))!r}") from exc
    except ValueError as exc:
        # make_url's int() of the port: "host:port", or an IPv6 host without its "]".
        raise ConfigurationError(
            f"not a database URL: {mask_url(str(url))!r}: its host or port cannot be read "
            "(a port is a number; an IPv6 host goes in brackets, [::1]:5432)"
        ) from exc
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
            parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend != "sqlite":
        raise ConfigurationError(
            f"unsupported database {backend!r} in {mask_url(parsed)}; use postgresql:// or sqlite://"
        )
    return parsed


_UNPARSED_PASSWORD = re.compile(r"^(?P<head>[^:/?#]*://[^:/?#@]*:)[^\s]*@")


def mask_url(url: str | URL) -> str:
    """The URL as text with its password hidden, for messages and logs."""
    try:
        return _password_in_place(make_url(url)).render_as_string(hide_password=True)
    except (sa_exc.ArgumentError, ValueError):
        # Unparseable: show it as given (so the user sees what was wrong),
        # with everything between "user:" and the last "@" hidden.
        return _UNPARSED_PASSWORD.sub(r"\g<head>***@", str(url))


def _password_in_place(url: URL) -> URL:
    """Put the whole password in the URL's password field, where it is masked.

    SQLAlchemy masks the password field wherever it prints a URL (``repr`` of
    engines included), but not the query string, where libpq also accepts
    ``?password=``; and its parser ends the password at the *first* ``@``, so
    ``bot:Sup3r@S3cretPW@db`` would leave ``S3cretPW@db`` as the host, printed
    and sent to DNS. The credentials end at the last ``@`` of the authority.
    """
    if url.host is not None and "@" in url.host:
        spill, _, host = url.host.rpartition("@")
        if url.password is not None:
            url = url.set(password=f"{url.password}@{spill}", host=host)
        else:
            # No ":" before the first "@": the user ends at the first ":" after it.
            userinfo = f"{url.username or ''}@{spill}"
            user, colon, secret = userinfo.partition(":")
            url = url.set(username=user, password=secret if colon else None, host=host)
    if "password" not in url.query:
        return url
    password = url.query["password"]
    value = password[-1] if isinstance(password, tuple) else password
    return url.difference_update_query(["password"]).set(password=value)


def create_engine(url: str | URL, **engine_options: Any) -> Engine:
    """An engine configured for the recorder's workload on PostgreSQL or SQLite."""
    parsed = database_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, engine_options)
    options: dict[str, Any] = {
        "pool_pre_ping": True,
        # Exception messages never carry bound values: envelope contents stay out of logs.
        "hide_parameters": True,
        "pool_size": 5,
        "max_overflow": 10,
        "pool_timeout": 10,
        "connect_args": {
            "connect_timeout": POSTGRES_CONNECT_TIMEOUT_SECONDS,
            # A peer that vanishes without a reset (a failover, a dropped
            # route) would otherwise leave a call waiting for the kernel's
            # default of many minutes; these bound it to well under a minute.
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
            "tcp_user_timeout": 30_000,
        },
    }
    options.update(engine_options)
    engine = sa.create_engine(parsed, **options)
    if options.get("pool_pre_ping"):
        _ping_only_when_in_doubt(engine)
    return engine


def _ping_only_when_in_doubt(engine: Engine) -> None:
    """Keep pre-ping's guarantee without a round trip on every checkout.

    Pre-ping exists to replace a pooled connection the server has dropped
    (restart, failover, idle kill) before a statement fails on it; the full
    ``SELECT 1`` runs only when :func:`connection_alive` is in doubt.
    """
    dialect = engine.dialect
    full_ping = dialect.do_ping
    idle_since: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    @event.listens_for(engine.pool, "checkin")
    def _checked_in(dbapi_connection: Any, _record: Any) -> None:
        if dbapi_connection is not None:
            idle_since[dbapi_connection] = time.monotonic()

    def do_ping(dbapi_connection: Any) -> bool:
        since = idle_since.get(dbapi_connection)
        idle = None if since is None else time.monotonic() - since
        return connection_alive(dbapi_connection, idle, lambda: bool(full_ping(dbapi_connection)))

    dialect.do_ping = do_ping  # type: ignore[method-assign]


def connection_alive(
    dbapi_connection: Any, idle_seconds: float | None, ping: Callable[[], bool]
) -> bool:
    """Whether a PostgreSQL connection about to be reused is alive, at the least cost.

    The one liveness rule of the recorder (the engine's pre-ping and
    ``record``'s own connections both use it). A server that drops a
    connection closes the socket, usually after a FATAL message, so the idle
    socket turns readable; a connection in steady use whose socket has nothing
    to read is alive as far as a ping could tell. So ``ping`` (a round trip)
    runs only when the socket has something to read, the connection's idle
    time is unknown, or it sat idle longer than :data:`PING_AFTER_IDLE_SECONDS`
    (a silent network drop); otherwise the check costs one ``poll``.
    """
    if (
        idle_seconds is None
        or idle_seconds > PING_AFTER_IDLE_SECONDS
        or getattr(dbapi_connection, "closed", False)
        or _socket_has_input(dbapi_connection)
    ):
        return ping()
    return True


def _socket_has_input(dbapi_connection: Any) -> bool:
    """True if an idle connection's socket is readable (data, EOF) or unusable."""
    try:
        poller = select.poll()
        poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg.Error):
        return True


def _sqlite_engine(url: URL, engine_options: dict[str, Any]) -> Engine:
    options: dict[str, Any] = {
        "connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
        "hide_parameters": True,
    }
    options.update(engine_options)
    engine = sa.create_engine(url, **options)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # The driver's own transaction handling would BEGIN DEFERRED lazily;
        # turning it off lets the "begin" hook below choose the lock mode.
        dbapi_connection.isolation_level = None
        busy_ms = int(SQLITE_BUSY_TIMEOUT_SECONDS * 1000)
        for pragma in (
            f"PRAGMA busy_timeout = {busy_ms}",
            "PRAGMA journal_mode = WAL",
            "PRAGMA synchronous = NORMAL",
            "PRAGMA foreign_keys = ON",
            # Writers' checkpoints run in a background thread (recorder.sqlite_checkpoints).
            f"PRAGMA wal_autocheckpoint = {FALLBACK_PAGES}",
        ):
            dbapi_connection.execute(pragma)

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # A writer that starts DEFERRED and upgrades later can fail with
        # "database is locked" without waiting; IMMEDIATE waits its turn.
        mode = "DEFERRED" if conn.get_execution_options().get(READ_ONLY) else "IMMEDIATE"
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def detached_connection(engine: Engine) -> Any:
    """A driver connection made by ``engine``'s pool (its connect arguments and
    events), taken out of the pool for good: the caller closes it."""
    pooled = engine.raw_connection()
    driver = pooled.driver_connection
    try:
        assert driver is not None
        pooled.detach()
    except BaseException:
        pooled.close()
        raise
    return driver


def is_sqlite(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "sqlite"


@contextmanager
def write_statement(engine: Engine) -> Iterator[Connection]:
    """A connection for one atomic write statement.

    PostgreSQL runs it in autocommit (one round trip: a single statement is
    atomic on its own); SQLite wraps it in ``BEGIN IMMEDIATE`` ... ``COMMIT``.
    """
    if is_sqlite(engine):
        with engine.begin() as conn:
            yield conn
    else:
        with engine.connect() as conn:
            yield conn.execution_options(isolation_level="AUTOCOMMIT")


@contextmanager
def read_only(engine: Engine) -> Iterator[Connection]:
    """A connection for reads that never blocks writers."""
    with engine.connect() as conn:
        conn = conn.execution_options(**{READ_ONLY: True})
        with conn.begin():
            yield conn


@contextmanager
def storage_errors(action: str) -> Iterator[None]:
    """Translate driver and SQLAlchemy errors into the recorder's own.

    The envelope's fault (a value the database refuses) becomes
    :class:`InvalidEnvelope`; every other database failure becomes
    :class:`StorageUnavailable`, so no failure is ever mistaken for a result.
    """
    try:
        yield
    except (sa_exc.DataError, psycopg.DataError) as exc:
        raise InvalidEnvelope(
            f"{action}: the database refused the value: {_first_line(exc)}"
        ) from exc
    except (sa_exc.SQLAlchemyError, psycopg.Error, sqlite3.Error) as exc:
        message = _first_line(exc)
        orig = getattr(exc, "orig", exc)
        if isinstance(orig, psycopg.errors.UndefinedTable) or "no such table" in message:
            raise SchemaMissing(
                f"{action}: the database has no recorder schema; run `recorder db upgrade` "
                f"({message})"
            ) from exc
        raise StorageUnavailable(f"{action}: {message}") from exc


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0] if text else type(orig).__name__
