"""record() on PostgreSQL: the pooled psycopg fast path and the poll-first pre-ping."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.pool import NullPool, QueuePool

from recorder import RecordResult
from recorder import engine as engine_module
from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import create_engine


def envelope(n: int) -> dict[str, Any]:
    return {
        "envelope_id": f"e{n}",
        "type": "events_api",
        "payload": {"event_id": f"Ev{n}", "team_id": "T1", "event": {"type": "message"}},
    }


def backend_pids(engine: sa.Engine) -> set[int]:
    """PIDs of the server backends behind every connection now idle in the pool."""
    pool = engine.pool
    assert isinstance(pool, QueuePool)  # only a queue pool counts its idle connections
    held = [engine.raw_connection() for _ in range(pool.checkedin())]
    try:
        pids = set()
        for pooled in held:
            driver = pooled.driver_connection
            assert isinstance(driver, psycopg.Connection)
            pids.add(driver.info.backend_pid)
        return pids
    finally:
        for pooled in held:
            pooled.close()


def test_terminated_backends_are_replaced_before_the_next_pooled_call(pg_url: str) -> None:
    """The server drops every pooled connection (a restart, an idle kill): the
    next call through the pool (seen, pending, complete) still succeeds at once,
    because the dropped socket is readable and so gets a full ping. (record's
    own connections are covered in test_record_connections.py.)"""
    with SQLEventBuffer(pg_url) as buffer:
        assert buffer.record("e1", envelope(1)) is RecordResult.NEW
        assert buffer.seen("e1")
        pids = backend_pids(buffer.engine)
        assert pids
        with psycopg.connect(pg_url, autocommit=True) as admin:
            for pid in pids:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        time.sleep(0.2)  # let the FATAL message and FIN reach the client sockets
        assert buffer.seen("e1")
        assert [e["envelope_id"] for e in buffer.pending()] == ["e1"]
        assert not pids & backend_pids(buffer.engine)


def test_full_pre_ping_runs_only_when_in_doubt(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    full_pings: list[bool] = []
    # SQLAlchemy leaves do_ping unannotated; the dialect returns a bool-like value
    original: Callable[[PGDialect_psycopg, Any], object] = PGDialect_psycopg.do_ping

    def counting_ping(self: PGDialect_psycopg, dbapi_connection: Any) -> bool:
        try:
            alive = bool(original(self, dbapi_connection))
        except psycopg.Error:
            alive = False
            raise
        finally:
            full_pings.append(alive)
        return alive

    monkeypatch.setattr(PGDialect_psycopg, "do_ping", counting_ping)
    engine = create_engine(pg_url, pool_size=1, max_overflow=0)

    def use() -> int:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())

    try:
        first_pid = use()
        assert use() == first_pid
        assert full_pings == [], "a quiet connection just checked in needs no round trip"

        monkeypatch.setattr(engine_module, "PING_AFTER_IDLE_SECONDS", 0.0)
        assert use() == first_pid
        assert full_pings == [True], "a connection idle past the limit gets a full ping"
        monkeypatch.undo()
        monkeypatch.setattr(PGDialect_psycopg, "do_ping", counting_ping)

        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (first_pid,))
        time.sleep(0.2)
        assert use() != first_pid, "a dropped connection is replaced, not used"
        assert full_pings[1:] == [False]
    finally:
        engine.dispose()


def test_record_keeps_times_in_utc_whatever_the_clock_zone(pg_url: str) -> None:
    zone = dt.timezone(dt.timedelta(hours=5))
    moment = dt.datetime(2026, 4, 1, 17, 0, tzinfo=zone)
    with SQLEventBuffer(pg_url, clock=lambda: moment) as buffer:
        buffer.record("e1", envelope(1))
        with buffer.engine.connect() as conn:
            stored = conn.execute(sa.text("SELECT received_at FROM envelopes")).scalar_one()
    assert stored == moment
    assert stored.astimezone(dt.timezone.utc).hour == 12


def test_record_with_a_naive_clock_is_refused(pg_url: str) -> None:
    with (
        SQLEventBuffer(pg_url, clock=lambda: dt.datetime(2026, 1, 1)) as buffer,
        pytest.raises(ValueError, match="naive"),
    ):
        buffer.record("e1", envelope(1))


def test_engines_on_another_pool_record_through_it(database_url: str) -> None:
    """A caller's NullPool (an external pooler) keeps its own connection policy:
    record takes a pooled connection per call, with the same results."""
    engine = sa.create_engine(engine_module.database_url(database_url), poolclass=NullPool)
    try:
        with SQLEventBuffer(engine) as buffer:
            assert buffer.record("e1", envelope(1)) is RecordResult.NEW
            assert buffer.record("e1", envelope(1)) is RecordResult.DUPLICATE
            assert buffer.record("e2", {**envelope(2), "payload": envelope(1)["payload"]}) is (
                RecordResult.DUPLICATE
            )
            assert buffer.seen("e1")
            assert not buffer.seen("e2")
    finally:
        engine.dispose()
