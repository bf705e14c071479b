"""A few dedicated autocommit psycopg connections for ``record``'s single-statement writes.

``SQLEventBuffer.record`` on PostgreSQL is one ``INSERT ... ON CONFLICT DO
NOTHING`` in autocommit: one round trip. Going through SQLAlchemy's pool for
it (checkout, pre-ping, autocommit on and off, reset-on-return, check-in
events) added about 90 µs of client CPU per call in the benchmark: the code
runs cold, right after the process woke from waiting on the server, so it
costs several times what a tight loop suggests. That was the whole gap to the
raw driver (0.83x; see BENCHMARKS.md, "Record and import"). Here the
connections stay in autocommit in a small LIFO list, and a call costs two
lock acquisitions and one ``poll``.

The guarantees stay the pool's: a connection is checked the same way as the
engine's poll-first pre-ping (:func:`recorder.engine._ping_only_when_in_doubt`)
before use, one that raised anything is closed rather than reused, and new
ones come from the engine's pool (its connect arguments, timeouts, pre-ping
and events), detached from it.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any

import psycopg
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

from recorder import engine as engine_module

#: Connections kept for ``record`` per buffer (idle and in use together);
#: callers beyond this many at once take the engine's pool instead.
RECORD_CONNECTIONS = 5


def supports(engine: Engine) -> bool:
    """Whether :class:`AutocommitConnections` may take connections from ``engine``.

    Only psycopg on a queue pool (what :func:`recorder.engine.create_engine`
    makes): a caller's ``NullPool`` (an external pooler) or ``StaticPool``
    (one shared connection) keeps its own connection policy.
    """
    return (
        engine.dialect.name == "postgresql"
        and engine.dialect.driver == "psycopg"
        and isinstance(engine.pool, QueuePool)
    )


class AutocommitConnections:
    """Up to ``limit`` autocommit connections taken from ``engine``, reused LIFO.

    Thread-safe: each call has a connection to itself. :meth:`close` closes
    the idle ones at once and each busy one when its call ends.
    """

    def __init__(self, engine: Engine, limit: int = RECORD_CONNECTIONS) -> None:
        self._engine = engine
        self._limit = limit
        self._lock = threading.Lock()
        self._idle: list[tuple[psycopg.Connection[Any], float]] = []
        self._open = 0
        self._closed = False
        self._pid = os.getpid()
        # Connections inherited across a fork: never used (the parent owns the
        # sessions) and never closed here, since closing would end the
        # parent's sessions; kept referenced so garbage collection leaves them be.
        self._inherited: list[psycopg.Connection[Any]] = []

    def execute(self, sql: str, params: Any) -> int | None:
        """Run one statement in autocommit; its row count, or None if no connection is free.

        Driver errors propagate (wrap the call in
        :func:`recorder.engine.storage_errors`); the connection is closed.
        """
        conn = self._take()
        if conn is None:
            return None
        try:
            count = int(conn.execute(sql, params).rowcount)
        except BaseException:
            self._discard(conn)
            raise
        self._give_back(conn)
        return count

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
        for conn, _ in idle:
            conn.close()

    def _take(self) -> psycopg.Connection[Any] | None:
        while True:
            with self._lock:
                if self._closed:
                    return None
                if self._pid != os.getpid():
                    self._forget_inherited()
                if self._idle:
                    conn, since = self._idle.pop()
                elif self._open < self._limit:
                    self._open += 1
                    break
                else:
                    return None
            if self._alive(conn, since):
                return conn
            self._discard(conn)
        try:
            return self._connect()
        except BaseException:
            with self._lock:
                self._open -= 1
            raise

    def _alive(self, conn: psycopg.Connection[Any], idle_since: float) -> bool:
        # The engine's poll-first pre-ping: a dropped connection's socket is
        # readable (FATAL message, EOF); one idle for long gets a real ping.
        if conn.closed or engine_module._socket_has_input(conn):
            return False
        if time.monotonic() - idle_since <= engine_module.PING_AFTER_IDLE_SECONDS:
            return True
        try:
            conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def _connect(self) -> psycopg.Connection[Any]:
        pooled = self._engine.raw_connection()
        driver = pooled.driver_connection
        try:
            assert isinstance(driver, psycopg.Connection)
            # Out of the pool for good: this list closes it.
            pooled.detach()
        except BaseException:
            pooled.close()
            raise
        try:
            driver.autocommit = True
        except BaseException:
            driver.close()
            raise
        return driver

    def _give_back(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            if not self._closed and self._pid == os.getpid():
                self._idle.append((conn, time.monotonic()))
                return
        self._discard(conn)

    def _discard(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            if self._pid != os.getpid():
                self._inherited.append(conn)
                return
            self._open -= 1
        # Already broken or not: nothing more to release either way.
        with contextlib.suppress(psycopg.Error):
            conn.close()

    def _forget_inherited(self) -> None:
        """In a forked child: start with no connections (call with the lock held)."""
        self._inherited.extend(conn for conn, _ in self._idle)
        self._idle = []
        self._open = 0
        self._pid = os.getpid()
