"""Attack: hold the ack hostage by locking ``envelopes`` (a migration, VACUUM FULL, an operator).

With the table locked by another session, ``record`` must return or raise
StorageUnavailable within its ``record_timeout`` (default 1 s), well inside
Slack's 3 s ack window, and the Slack listener then applies its storage-error
policy: spool and ack, or leave unacked. Bounds asserted here are generous
multiples of the timeout (the machine is shared), never exact timings.
"""

from __future__ import annotations

import collections
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from recorder import RecordResult, StorageUnavailable
from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import database_url as engine_url
from recorder.errors import ConfigurationError
from recorder.settings import DEFAULT_RECORD_TIMEOUT_SECONDS, Settings, record_timeout_setting
from recorder.testing import SocketModeSimulator
from recorder.writer import RECORD_CONNECTIONS
from tests.integration.slack_bots import Calls, RecordingBot, recording_handler, wait_until

TIMEOUT = 0.5
#: A record under a lock must be done well before this (2x the timeout at
#: most in theory: waiting for a connection, then for the lock; plus load).
BOUND = 4 * TIMEOUT + 1.0


def envelope(name: str) -> dict[str, Any]:
    return {
        "envelope_id": name,
        "type": "events_api",
        "payload": {"event_id": f"Ev{name}", "team_id": "T1", "event": {"type": "message"}},
    }


@contextmanager
def pg_table_locked(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """Another session holds ACCESS EXCLUSIVE on envelopes until the block ends."""
    with psycopg.connect(pg_url) as holder:
        holder.execute("LOCK TABLE envelopes IN ACCESS EXCLUSIVE MODE")
        try:
            yield holder
        finally:
            holder.rollback()


@contextmanager
def sqlite_locked(sqlite_url: str) -> Iterator[sqlite3.Connection]:
    """Another connection holds SQLite's write lock until the block ends."""
    path = make_url(sqlite_url).database
    assert path is not None
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield holder
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@contextmanager
def locked(database_url: str) -> Iterator[None]:
    if database_url.startswith("sqlite"):
        with sqlite_locked(database_url):
            yield
    else:
        with pg_table_locked(database_url):
            yield


def timed_record(buffer: SQLEventBuffer, name: str) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        buffer.record(name, envelope(name))
    except StorageUnavailable as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


def test_record_gives_up_on_a_locked_table_within_its_timeout(database_url: str) -> None:
    with SQLEventBuffer(database_url, record_timeout=TIMEOUT) as buffer:
        assert buffer.record("before", envelope("before")) is RecordResult.NEW
        with locked(database_url):
            elapsed, error = timed_record(buffer, "during")
        assert isinstance(error, StorageUnavailable)
        assert "record_timeout" in str(error)
        assert TIMEOUT * 0.8 <= elapsed < BOUND
        # The lock is gone: the same envelope is recorded, on the same buffer.
        assert buffer.record("during", envelope("during")) is RecordResult.NEW
        assert {e["envelope_id"] for e in buffer.pending()} == {"before", "during"}


def test_many_callers_on_a_locked_table_all_return_within_the_bound(database_url: str) -> None:
    callers = 3 * RECORD_CONNECTIONS
    results: list[tuple[float, BaseException | None]] = []
    lock = threading.Lock()
    with SQLEventBuffer(database_url, record_timeout=TIMEOUT) as buffer:
        buffer.record("warm", envelope("warm"))
        with locked(database_url):

            def call(n: int) -> None:
                outcome = timed_record(buffer, f"c{n}")
                with lock:
                    results.append(outcome)

            threads = [threading.Thread(target=call, args=(n,)) for n in range(callers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
        assert len(results) == callers
        assert all(isinstance(error, StorageUnavailable) for _, error in results)
        assert max(elapsed for elapsed, _ in results) < BOUND
        # Every connection survives the timeouts: recording goes on at once.
        assert buffer.record("after", envelope("after")) is RecordResult.NEW


def test_through_another_pool_the_timeout_holds_too(pg_url: str) -> None:
    """A caller's NullPool: record sets the timeouts per transaction (SET LOCAL)."""
    engine = sa.create_engine(engine_url(pg_url), poolclass=NullPool)
    try:
        with SQLEventBuffer(engine, record_timeout=TIMEOUT) as buffer:
            with pg_table_locked(pg_url):
                elapsed, error = timed_record(buffer, "during")
            assert isinstance(error, StorageUnavailable)
            assert elapsed < BOUND
            # SET LOCAL ended with the transaction: a long statement on a new
            # pooled connection is not cut short.
            with engine.connect() as conn:
                assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == "0"
            assert buffer.record("during", envelope("during")) is RecordResult.NEW
    finally:
        engine.dispose()


def test_other_calls_keep_the_engines_limits(pg_url: str) -> None:
    """Only record's own connections carry the bound: pooled ones are untouched."""
    with SQLEventBuffer(pg_url, record_timeout=TIMEOUT) as buffer:
        buffer.record("e1", envelope("e1"))
        with buffer.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar_one() == "0"
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar_one() == "0"


def test_no_timeout_waits_for_the_lock(database_url: str) -> None:
    with SQLEventBuffer(database_url, record_timeout=0) as buffer:
        assert buffer.record_timeout is None
        buffer.record("warm", envelope("warm"))
        result: list[RecordResult] = []
        with locked(database_url):
            waiter = threading.Thread(
                target=lambda: result.append(buffer.record("w", envelope("w")))
            )
            waiter.start()
            waiter.join(timeout=2 * DEFAULT_RECORD_TIMEOUT_SECONDS + 0.5)
            assert waiter.is_alive(), "without a bound, record waits for the lock"
        waiter.join(timeout=30)
        assert result == [RecordResult.NEW]


def test_record_timeout_from_argument_environment_and_settings(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RECORDER_RECORD_TIMEOUT", raising=False)
    assert record_timeout_setting() == DEFAULT_RECORD_TIMEOUT_SECONDS == 1.0
    monkeypatch.setenv("RECORDER_RECORD_TIMEOUT", "0.25")
    with SQLEventBuffer(sqlite_url) as buffer:
        assert buffer.record_timeout == 0.25
    with SQLEventBuffer(sqlite_url, record_timeout=2) as buffer:
        assert buffer.record_timeout == 2
    assert Settings.load(environ={"RECORDER_RECORD_TIMEOUT": "off"}).record_timeout is None
    assert Settings.load(environ={"RECORDER_RECORD_TIMEOUT": "0"}).record_timeout is None
    assert Settings.load(record_timeout=3, environ={}).record_timeout == 3
    for bad in ("soon", "-1", "inf", "nan"):
        with pytest.raises(ConfigurationError, match="RECORDER_RECORD_TIMEOUT"):
            Settings.load(environ={"RECORDER_RECORD_TIMEOUT": bad})
    monkeypatch.setenv("RECORDER_RECORD_TIMEOUT", "soon")
    with pytest.raises(ConfigurationError, match="RECORDER_RECORD_TIMEOUT"):
        SQLEventBuffer(sqlite_url)


# -- the Slack listener, with a real slack_sdk client, while envelopes is locked


@pytest.mark.parametrize(
    ("kind", "backend"),
    [("builtin", "pg_url"), ("aiohttp", "pg_url"), ("builtin", "sqlite_url")],
)
def test_listener_spools_and_acks_in_time_while_the_table_is_locked(
    kind: str, backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue(backend)
    calls = Calls()
    spool = tmp_path / "spool.db"
    with (
        SocketModeSimulator(redeliver_after=None, seed=21) as sim,
        SQLEventBuffer(url, record_timeout=TIMEOUT) as buffer,
    ):
        bot = RecordingBot(
            kind,
            sim,
            buffer,
            recording_handler(calls),
            spool_path=spool,
            recovery_interval=0.3,
        )
        with bot:
            sim.wait_for_connections(1)
            first = sim.envelopes.message("first")
            sim.send(first)
            sim.wait_for_acks(1)
            locked_envelopes = [sim.envelopes.message(f"locked {n}") for n in range(3)]
            with locked(url):
                sent = time.monotonic()
                for item in locked_envelopes:
                    sim.send(item)
                sim.wait_for_acks(4, timeout=10)
                acked_after = time.monotonic() - sent
                # Acked while the lock is still held: from the spool.
                assert bot.listener.stats.outcomes["spooled"] == 3
            assert acked_after < 3.0, "acked inside Slack's ack window"
            calls.wait_for(4)
            wait_until(
                lambda: buffer.count_pending() == 0 and len(buffer_ids(buffer)) == 4,
                timeout=15,
                what="the spool to drain once the lock is gone",
            )
    assert collections.Counter(a.envelope_id for a in sim.acks) == {
        e["envelope_id"]: 1 for e in [first, *locked_envelopes]
    }
    assert len(calls) == 4


def test_listener_nacks_while_the_table_is_locked(pg_url: str, tmp_path: Path) -> None:
    calls = Calls()
    with (
        SocketModeSimulator(redeliver_after=None, seed=22) as sim,
        SQLEventBuffer(pg_url, record_timeout=TIMEOUT) as buffer,
        RecordingBot(
            "builtin",
            sim,
            buffer,
            recording_handler(calls),
            on_storage_error="nack",
            spool_path=tmp_path / "spool.db",
        ) as bot,
    ):
        sim.wait_for_connections(1)
        item = sim.envelopes.message("locked")
        with pg_table_locked(pg_url):
            sent = time.monotonic()
            sim.send(item)
            wait_until(
                lambda: bot.listener.stats.outcomes["nacked"] == 1,
                timeout=10,
                what="the envelope to be refused",
            )
            assert time.monotonic() - sent < 3.0
            assert sim.acks == []
        # Slack redelivers; the table is free again: recorded, acked, handled once.
        sim.retransmit(item["envelope_id"])
        sim.wait_for_acks(1)
        calls.wait_for(1)
    assert len(calls) == 1
    assert not (tmp_path / "spool.db").exists()


def buffer_ids(buffer: SQLEventBuffer) -> set[str]:
    with buffer.engine.connect() as conn:
        return set(conn.exec_driver_sql("SELECT envelope_id FROM envelopes").scalars())
