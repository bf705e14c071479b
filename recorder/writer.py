"""The write path of one buffer: how every write reaches the database, in one object.

:class:`Writer` owns what ``record`` needs beyond the statement itself:

* **compiling and binding**: :meth:`Writer.prepare` compiles a statement once
  for the engine's dialect; :meth:`Writer.execute` binds values the way the
  driver takes them (only typed binds with a processor, such as
  ``received_at``, are converted);
* **choosing the connection**: ``record``'s single statement runs on a few
  dedicated connections (below); every other write takes the engine's pool
  through :meth:`Writer.statement` or :meth:`Writer.transaction`;
* **deciding a connection is alive**: :func:`recorder.engine.connection_alive`,
  the same poll-first check the engine's pre-ping makes;
* **the time bound of the record path**: ``record_timeout`` seconds at most
  waiting for a lock, running, or waiting for a free record connection, so
  ``record`` returns or raises :class:`~recorder.errors.StorageUnavailable`
  well inside Slack's 3 s ack window even when another session holds a lock
  on ``envelopes`` (a migration, ``VACUUM FULL``, an operator's transaction);
* **SQLite's single writer**: this process's writes queue on one lock here
  rather than in SQLite's busy handler, which sleeps 1 ms and then longer;
  and the log is checkpointed by a background thread
  (:mod:`recorder.sqlite_checkpoints`), not by whichever write crosses the
  log's size limit while holding that lock.

Why dedicated connections: on PostgreSQL ``record`` is one ``INSERT ... ON
CONFLICT DO NOTHING`` in autocommit, one round trip. Going through
SQLAlchemy's pool for it (checkout, pre-ping, autocommit on and off,
reset-on-return, check-in events) added about 90 µs of client CPU per call
in the benchmark, the whole gap to the raw driver (see BENCHMARKS.md, "Record
and import"). The dedicated connections stay in autocommit, with their
``lock_timeout`` and ``statement_timeout`` set once per session (on SQLite,
``busy_timeout``), so the time bound costs nothing per call. They come from
the engine's pool (its connect arguments and events), detached from it.
Engines on another pool (an external pooler behind ``NullPool``, SQLite
``:memory:`` on ``StaticPool``) or another driver run ``record`` through the
pool instead, with the timeouts set per transaction.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import QueuePool
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ClauseElement

from recorder.engine import (
    connection_alive,
    detached_connection,
    is_sqlite,
    storage_errors,
    write_statement,
)
from recorder.errors import StorageUnavailable
from recorder.sqlite_checkpoints import FALLBACK_PAGES, Checkpoints, use_writer_pages

#: Dedicated connections for ``record`` per buffer on PostgreSQL (idle and in
#: use together); more callers at once wait for one, within the time bound.
RECORD_CONNECTIONS = 5

_SET_TIMEOUTS = (
    "SELECT set_config('lock_timeout', %(ms)s, {local}),"
    " set_config('statement_timeout', %(ms)s, {local})"
)


class PreparedWrite:
    """A write statement compiled for one dialect, and how to bind its values."""

    def __init__(self, statement: ClauseElement, engine: Engine) -> None:
        dialect = engine.dialect
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        self.sql = str(compiled)
        self._positions = tuple(compiled.positiontup or ()) if compiled.positional else None
        self._processors = {
            name: processor
            for name, bind in compiled.binds.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }

    def bind(self, values: Mapping[str, Any]) -> Any:
        """The driver-ready parameters for ``values`` (keyed by bind name)."""
        if self._processors:
            values = dict(values)
            for name, processor in self._processors.items():
                values[name] = processor(values[name])
        if self._positions is None:
            return values
        return tuple(values[name] for name in self._positions)


class Writer:
    """Runs one buffer's writes: ``record``'s statement fast and bounded, the rest through the pool.

    Parameters
    ----------
    engine
        The buffer's engine.
    record_timeout
        Seconds :meth:`execute` may wait for a lock, run, or wait for a free
        record connection; ``None`` waits as long as the database does.
    """

    def __init__(self, engine: Engine, *, record_timeout: float | None) -> None:
        if record_timeout is not None and not record_timeout > 0:
            raise ValueError(f"record_timeout must be positive or None, not {record_timeout!r}")
        self.engine = engine
        self.record_timeout = record_timeout
        self._sqlite = is_sqlite(engine)
        # SQLite lets one writer in at a time: this process's writers queue here.
        self._sqlite_writer = threading.Lock() if self._sqlite else None
        self._lock_pid = os.getpid()
        self._dedicated: _DedicatedConnections | None = None
        self._checkpoints: Checkpoints | None = None
        if isinstance(engine.pool, QueuePool) and (
            (self._sqlite and engine.dialect.driver == "pysqlite")
            or (engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg")
        ):
            self._dedicated = _DedicatedConnections(
                engine, limit=1 if self._sqlite else RECORD_CONNECTIONS, timeout=record_timeout
            )
            if self._sqlite_writer is not None:
                # A file database (memory ones are not on QueuePool) in WAL mode.
                self._checkpoints = Checkpoints(engine, self._sqlite_writer)
                _follow_writer_pages(engine, self._checkpoints)

    def prepare(self, statement: ClauseElement) -> PreparedWrite:
        return PreparedWrite(statement, self.engine)

    def execute(self, write: PreparedWrite, values: Mapping[str, Any], *, action: str) -> int:
        """Run ``write`` atomically within the time bound; return its row count.

        Raises
        ------
        StorageUnavailable
            The database failed, or did not finish within ``record_timeout``
            (a lock held elsewhere, no record connection free).
        InvalidEnvelope
            The database refused a value.
        """
        params = write.bind(values)
        with self._storage_errors(action), self._sqlite_turn(bounded=True):
            count = None
            if self._dedicated is not None:
                count = self._dedicated.execute(write.sql, params, self._writer_pages())
            if count is None:
                count = self._through_pool(write.sql, params)
            return count

    @contextmanager
    def statement(self) -> Iterator[Connection]:
        """A connection for one atomic write statement (autocommit on PostgreSQL)."""
        with self._sqlite_turn(bounded=False), write_statement(self.engine) as conn:
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection in a transaction, committed when the block ends."""
        with self._sqlite_turn(bounded=False), self.engine.begin() as conn:
            yield conn

    def close(self) -> None:
        """Close the dedicated connections (busy ones when their call ends), then checkpoint."""
        if self._dedicated is not None:
            self._dedicated.close()
        if self._checkpoints is not None:
            self._checkpoints.close()

    def _writer_pages(self) -> int | None:
        """``wal_autocheckpoint`` for the connection about to write (None: leave it)."""
        return None if self._checkpoints is None else self._checkpoints.writer_pages

    @contextmanager
    def _sqlite_turn(self, *, bounded: bool) -> Iterator[None]:
        lock = self._sqlite_writer
        if lock is None:
            yield
            return
        if self._lock_pid != os.getpid():
            lock = self._fresh_lock_after_fork()
        if self._checkpoints is not None:
            self._checkpoints.start()
        timeout = self.record_timeout if bounded and self.record_timeout is not None else -1
        if not lock.acquire(timeout=timeout):
            raise StorageUnavailable(
                f"another write of this process held the SQLite database for over "
                f"{self.record_timeout} s (record_timeout)"
            )
        try:
            yield
        finally:
            lock.release()

    def _fresh_lock_after_fork(self) -> threading.Lock:
        """In a forked child: a lock of its own (the copy may be held by a parent's thread)."""
        self._sqlite_writer = threading.Lock()
        self._lock_pid = os.getpid()
        if self._checkpoints is not None:
            self._checkpoints.forked(self._sqlite_writer)
        return self._sqlite_writer

    @contextmanager
    def _storage_errors(self, action: str) -> Iterator[None]:
        try:
            with storage_errors(action):
                yield
        except StorageUnavailable as exc:
            if self.record_timeout is not None and _timed_out(exc.__cause__):
                raise StorageUnavailable(
                    f"{exc} (record_timeout {self.record_timeout} s; RECORDER_RECORD_TIMEOUT)"
                ) from exc.__cause__
            raise

    def _through_pool(self, sql: str, params: Any) -> int:
        timeout_ms = _milliseconds(self.record_timeout)
        if self._sqlite:
            return self._sqlite_through_pool(sql, params, timeout_ms)
        with self.engine.begin() as conn:
            if timeout_ms is not None and self.engine.dialect.name == "postgresql":
                # SET LOCAL: the pooled connection goes back with its own settings.
                conn.exec_driver_sql(_SET_TIMEOUTS.format(local="true"), {"ms": f"{timeout_ms}"})
            result = conn.execution_options(preserve_rowcount=True).exec_driver_sql(sql, params)
            return int(result.rowcount)

    def _sqlite_through_pool(self, sql: str, params: Any, timeout_ms: int | None) -> int:
        with self.engine.connect() as conn:
            driver = conn.connection.driver_connection
            restore = None
            if timeout_ms is not None and isinstance(driver, sqlite3.Connection):
                # Set before BEGIN IMMEDIATE (which waits for the lock), put back after.
                restore = driver.execute("PRAGMA busy_timeout").fetchone()[0]
                driver.execute(f"PRAGMA busy_timeout = {timeout_ms}")
            try:
                with conn.begin():
                    result = conn.execution_options(preserve_rowcount=True).exec_driver_sql(
                        sql, params
                    )
                    return int(result.rowcount)
            finally:
                if restore is not None and isinstance(driver, sqlite3.Connection):
                    driver.execute(f"PRAGMA busy_timeout = {int(restore)}")


def _follow_writer_pages(engine: Engine, checkpoints: Checkpoints) -> None:
    """Every connection this engine's pool hands out writes with the checkpointer's setting.

    A pool event rather than a call per write path: completions, imports and
    every other write through the pool get it, and once the checkpointer is
    closed or gone the next checkout puts the fallback back.
    """
    owner = weakref.ref(checkpoints)

    def on_checkout(driver: Any, record: Any, _proxy: Any) -> None:
        current = owner()
        pages = FALLBACK_PAGES if current is None else current.writer_pages
        use_writer_pages(driver, record.info, pages)

    event.listen(engine, "checkout", on_checkout)


def _milliseconds(seconds: float | None) -> int | None:
    return None if seconds is None else max(1, round(seconds * 1000))


def _timed_out(exc: BaseException | None) -> bool:
    """Whether a driver error is a lock or statement timeout (not an outage)."""
    orig = getattr(exc, "orig", exc)
    if isinstance(orig, psycopg.errors.LockNotAvailable | psycopg.errors.QueryCanceled):
        return True
    return isinstance(orig, sqlite3.OperationalError) and "locked" in str(orig)


class _DedicatedConnections:
    """Up to ``limit`` connections detached from ``engine``'s pool, reused LIFO, for one statement.

    PostgreSQL ones run in autocommit; SQLite ones wrap the statement in
    ``BEGIN IMMEDIATE`` ... ``COMMIT``. Either way the time bound is set once
    per session. Thread-safe: each call has a connection to itself; a call
    that finds all ``limit`` busy waits up to the time bound for one.
    :meth:`close` closes the idle ones at once and each busy one when its
    call ends.
    """

    def __init__(self, engine: Engine, *, limit: int, timeout: float | None) -> None:
        self._engine = engine
        self._sqlite = is_sqlite(engine)
        self._limit = limit
        self._timeout = timeout
        self._changed = threading.Condition()
        self._idle: list[tuple[Any, float]] = []
        self._open = 0
        self._closed = False
        self._pid = os.getpid()
        # Connections inherited across a fork: never used (the parent owns the
        # sessions) and never closed here, since closing would end the
        # parent's sessions; kept referenced so garbage collection leaves them be.
        self._inherited: list[Any] = []
        # Per open connection (by id): settings made on it, for use_writer_pages.
        self._applied: dict[int, dict[str, Any]] = {}

    def execute(self, sql: str, params: Any, sqlite_pages: int | None = None) -> int | None:
        """Run one statement; its row count, or None once closed (use the pool then).

        ``sqlite_pages``: the ``wal_autocheckpoint`` a SQLite connection
        writes with (:attr:`recorder.sqlite_checkpoints.Checkpoints.writer_pages`).
        Driver errors propagate (the caller translates them); a connection an
        error left unusable is closed, one a timeout merely cancelled is kept.
        """
        conn = self._take()
        if conn is None:
            return None
        try:
            if sqlite_pages is not None:
                use_writer_pages(conn, self._applied.setdefault(id(conn), {}), sqlite_pages)
            count = self._run(conn, sql, params)
        except BaseException:
            if self._reusable(conn):
                self._give_back(conn)
            else:
                self._discard(conn)
            raise
        self._give_back(conn)
        return count

    def close(self) -> None:
        with self._changed:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._changed.notify_all()
        for conn, _ in idle:
            conn.close()

    def _run(self, conn: Any, sql: str, params: Any) -> int:
        if not self._sqlite:
            return int(conn.execute(sql, params).rowcount)
        conn.execute("BEGIN IMMEDIATE")
        try:
            count = int(conn.execute(sql, params).rowcount)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return count

    def _reusable(self, conn: Any) -> bool:
        if self._sqlite:
            return not conn.in_transaction
        return bool(not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE)

    def _take(self) -> Any | None:
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            with self._changed:
                while True:
                    if self._closed:
                        return None
                    if self._pid != os.getpid():
                        self._forget_inherited()
                    if self._idle or self._open < self._limit:
                        break
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise StorageUnavailable(
                            f"no record connection came free within {self._timeout} s "
                            f"({self._limit} busy)"
                        )
                    self._changed.wait(remaining)
                if self._idle:
                    conn, since = self._idle.pop()
                else:
                    self._open += 1
                    break
            if self._alive(conn, since):
                return conn
            self._discard(conn)
        try:
            return self._connect()
        except BaseException:
            with self._changed:
                self._open -= 1
                self._changed.notify()
            raise

    def _alive(self, conn: Any, idle_since: float) -> bool:
        if self._sqlite:
            return True  # a local file: nothing to lose between calls
        return connection_alive(conn, time.monotonic() - idle_since, lambda: _ping(conn))

    def _connect(self) -> Any:
        # Out of the pool for good: this object closes it.
        driver = detached_connection(self._engine)
        try:
            timeout_ms = _milliseconds(self._timeout)
            if self._sqlite:
                assert isinstance(driver, sqlite3.Connection)
                # Also on engines the recorder did not create: checkpoints run
                # in the background (recorder.sqlite_checkpoints), not in record.
                driver.execute(f"PRAGMA wal_autocheckpoint = {FALLBACK_PAGES}")
                if timeout_ms is not None:
                    driver.execute(f"PRAGMA busy_timeout = {timeout_ms}")
            else:
                assert isinstance(driver, psycopg.Connection)
                driver.autocommit = True
                if timeout_ms is not None:
                    # Session settings: this connection serves record alone.
                    driver.execute(_SET_TIMEOUTS.format(local="false"), {"ms": f"{timeout_ms}"})
        except BaseException:
            driver.close()
            raise
        return driver

    def _give_back(self, conn: Any) -> None:
        with self._changed:
            if not self._closed and self._pid == os.getpid():
                self._idle.append((conn, time.monotonic()))
                self._changed.notify()
                return
        self._discard(conn)

    def _discard(self, conn: Any) -> None:
        with self._changed:
            if self._pid != os.getpid():
                self._inherited.append(conn)
                return
            self._open -= 1
            self._applied.pop(id(conn), None)
            self._changed.notify()
        # Already broken or not: nothing more to release either way.
        with contextlib.suppress(psycopg.Error, sqlite3.Error):
            conn.close()

    def _forget_inherited(self) -> None:
        """In a forked child: start with no connections (call with the lock held)."""
        self._inherited.extend(conn for conn, _ in self._idle)
        self._idle = []
        self._open = 0
        self._pid = os.getpid()


def _ping(conn: psycopg.Connection[Any]) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True
