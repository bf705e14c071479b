"""Engines under failure: a database that goes away and comes back, a busy SQLite
file, and a database with no schema.

PostgreSQL "goes away" through a TcpProxy that is cut and restored; the shared
server itself is never touched.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from recorder import RecordResult, SchemaMissing, StorageUnavailable
from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import create_engine
from recorder.schema import envelopes
from recorder.testing import TcpProxy
from tests.conftest import closed_port

# Generous: only there to catch a hang (a refused connection fails at once;
# the engine's connect timeout is 5 s). Not a performance assertion.
NO_HANG_SECONDS = 20.0


def envelope(envelope_id: str, event_id: str | None = None) -> dict[str, Any]:
    return {
        "envelope_id": envelope_id,
        "type": "events_api",
        "payload": {
            "team_id": "T0001",
            "event_id": event_id or f"Ev-{envelope_id}",
            "event": {"type": "message", "channel": "C0001", "user": "U0001", "text": "hi"},
        },
        "retry_attempt": 0,
        "retry_reason": "",
    }


@pytest.fixture
def proxy(pg_url: str) -> Iterator[TcpProxy]:
    target = make_url(pg_url)
    with TcpProxy(target.host or "127.0.0.1", target.port or 5432) as tcp_proxy:
        yield tcp_proxy


@pytest.fixture
def proxied_buffer(proxy: TcpProxy, pg_url: str) -> Iterator[SQLEventBuffer]:
    with SQLEventBuffer(proxy.url_for(pg_url)) as buffer:
        yield buffer


def count_rows(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(envelopes)).scalar_one())
    finally:
        engine.dispose()


# -- PostgreSQL goes away and comes back


def test_postgresql_cut_raises_storage_unavailable_then_recovers_on_the_same_buffer(
    proxy: TcpProxy, proxied_buffer: SQLEventBuffer, pg_url: str
) -> None:
    buffer = proxied_buffer
    assert buffer.record("before", envelope("before")) is RecordResult.NEW
    assert buffer.seen("before")

    proxy.cut()
    calls: dict[str, Callable[[], object]] = {
        "record": lambda: buffer.record("during", envelope("during")),
        "record a duplicate": lambda: buffer.record("before", envelope("before")),
        "seen": lambda: buffer.seen("before"),
        "pending": lambda: buffer.pending(),
        "complete": lambda: buffer.complete("before"),
        "delete": lambda: buffer.delete("before"),
    }
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(StorageUnavailable) as raised:
            call()
        assert not isinstance(raised.value, SchemaMissing), name
        assert time.monotonic() - started < NO_HANG_SECONDS, name
    # The failure reached the server through nothing: the real database is intact.
    assert count_rows(pg_url) == 1

    proxy.restore()
    # Same buffer, same engine, no restart: the pool's pre-ping replaces dead connections.
    assert buffer.record("before", envelope("before")) is RecordResult.DUPLICATE
    assert buffer.record("after", envelope("after")) is RecordResult.NEW
    assert [e["envelope_id"] for e in buffer.pending()] == ["before", "after"]
    buffer.complete("before")
    assert [e["envelope_id"] for e in buffer.pending()] == ["after"]
    assert not buffer.seen("during")


def test_postgresql_cut_and_restored_repeatedly(
    proxy: TcpProxy, proxied_buffer: SQLEventBuffer
) -> None:
    for round_ in range(3):
        assert proxied_buffer.record(f"r{round_}", envelope(f"r{round_}")) is RecordResult.NEW
        proxy.cut()
        with pytest.raises(StorageUnavailable):
            proxied_buffer.seen(f"r{round_}")
        proxy.restore()
        assert proxied_buffer.seen(f"r{round_}")


def test_postgresql_outage_while_idle_is_invisible_after_the_server_is_back(
    proxy: TcpProxy, proxied_buffer: SQLEventBuffer
) -> None:
    """Every pooled connection died while nobody was calling: the first calls
    after the restore succeed anyway, from several threads at once."""
    threads = 4
    barrier = threading.Barrier(threads)
    failures: list[BaseException] = []

    def record_together(name: str) -> None:
        try:
            # Waiting here makes every thread hold its own pooled connection.
            barrier.wait(timeout=30)
            assert proxied_buffer.record(name, envelope(name)) is RecordResult.NEW
            assert proxied_buffer.seen(name)
        except BaseException as exc:
            failures.append(exc)

    def round_of(prefix: str) -> None:
        workers = [
            threading.Thread(target=record_together, args=(f"{prefix}-{n}",))
            for n in range(threads)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)

    round_of("before")
    assert failures == []
    proxy.cut()
    proxy.restore()
    round_of("after")
    assert failures == []
    assert len(proxied_buffer.pending()) == 2 * threads


def test_postgresql_cut_mid_stream_never_reports_a_failure_as_a_result(
    proxy: TcpProxy, proxied_buffer: SQLEventBuffer, pg_url: str
) -> None:
    """Writers racing a cut see NEW, DUPLICATE or StorageUnavailable, nothing else;
    every NEW is really stored."""
    outcomes: dict[str, str] = {}
    unexpected: list[BaseException] = []
    stop = threading.Event()

    def writer(prefix: str) -> None:
        i = 0
        while not stop.is_set():
            envelope_id = f"{prefix}-{i}"
            i += 1
            try:
                outcomes[envelope_id] = proxied_buffer.record(
                    envelope_id, envelope(envelope_id)
                ).value
            except StorageUnavailable:
                outcomes[envelope_id] = "unavailable"
            except BaseException as exc:
                unexpected.append(exc)

    threads = [threading.Thread(target=writer, args=(f"w{n}",)) for n in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    proxy.cut()
    time.sleep(0.3)
    proxy.restore()
    time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)

    assert unexpected == []
    values = set(outcomes.values())
    assert "unavailable" in values
    assert "new" in values
    new_ids = {envelope_id for envelope_id, outcome in outcomes.items() if outcome == "new"}
    # Writes after the restore succeeded again.
    assert any(proxied_buffer.seen(envelope_id) for envelope_id in new_ids)
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            stored = set(conn.execute(sa.select(envelopes.c.envelope_id)).scalars())
    finally:
        engine.dispose()
    assert new_ids <= stored
    # An id reported unavailable may or may not be stored; nothing else is.
    assert stored <= set(outcomes)


def test_postgresql_that_never_answers_is_storage_unavailable() -> None:
    with SQLEventBuffer(f"postgresql://postgres@127.0.0.1:{closed_port()}/none") as buffer:
        with pytest.raises(StorageUnavailable) as raised:
            buffer.record("e1", envelope("e1"))
        assert not isinstance(raised.value, SchemaMissing)
        with pytest.raises(StorageUnavailable):
            buffer.pending()


# -- SQLite: writers wait for a long write transaction instead of failing, when
# their record_timeout allows it (the default, 1 s, gives up sooner: see
# test_record_timeouts.py)

WAITING = 60.0


def record_range(url: str, prefix: str, count: int, ready: Any, results: Any) -> None:
    """Worker process: record ``count`` envelopes; report NEW count and errors."""
    errors: list[str] = []
    new = 0
    with SQLEventBuffer(url, record_timeout=WAITING) as buffer:
        ready.set()
        for i in range(count):
            try:
                if buffer.record(f"{prefix}-{i}", envelope(f"{prefix}-{i}")) is RecordResult.NEW:
                    new += 1
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
    results.put((prefix, new, errors))


def test_sqlite_writers_wait_for_a_long_write_transaction(sqlite_url: str) -> None:
    path = make_url(sqlite_url).database
    assert path is not None
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    ready = [ctx.Event() for _ in range(2)]
    processes = [
        ctx.Process(target=record_range, args=(sqlite_url, f"proc{n}", 40, ready[n], results))
        for n in range(2)
    ]

    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute(
        "INSERT INTO envelopes (envelope_id, received_at, envelope, envelope_text, "
        "envelope_sha256) VALUES ('held', '2024-01-01 00:00:00', '{}', '{}', 'x')"
    )

    thread_errors: list[BaseException] = []
    thread_new: list[str] = []
    with SQLEventBuffer(sqlite_url, record_timeout=WAITING) as buffer:

        def thread_writer(name: str) -> None:
            try:
                for i in range(20):
                    if buffer.record(f"{name}-{i}", envelope(f"{name}-{i}")) is RecordResult.NEW:
                        thread_new.append(f"{name}-{i}")
            except BaseException as exc:
                thread_errors.append(exc)

        threads = [threading.Thread(target=thread_writer, args=(f"t{n}",)) for n in range(2)]
        try:
            for process in processes:
                process.start()
            for event in ready:
                assert event.wait(timeout=60)
            for thread in threads:
                thread.start()
            time.sleep(1.0)
            # Writers are queued behind the lock: nothing of theirs is committed yet.
            assert thread_new == []
            # Readers are not blocked by the writer (WAL, deferred read transactions).
            assert not buffer.seen("held")
            assert buffer.pending() == []
        finally:
            holder.execute("COMMIT")
            holder.close()
        for thread in threads:
            thread.join(timeout=120)
        reports = [results.get(timeout=120) for _ in processes]
        for process in processes:
            process.join(timeout=30)

        assert thread_errors == []
        assert sorted(thread_new) == sorted(f"t{n}-{i}" for n in range(2) for i in range(20))
        for prefix, new, errors in reports:
            assert errors == [], (prefix, errors[:3])
            assert new == 40
        assert buffer.seen("held")
    assert count_rows(sqlite_url) == 1 + 2 * 20 + 2 * 40


def test_sqlite_engine_uses_wal_and_a_busy_timeout(sqlite_url: str) -> None:
    engine = create_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert int(conn.exec_driver_sql("PRAGMA busy_timeout").scalar() or 0) >= 5000
    finally:
        engine.dispose()


# -- no schema


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    url: str = request.getfixturevalue("pg_empty_url")
    return url


def test_missing_schema_says_to_run_recorder_db_upgrade(empty_database_url: str) -> None:
    # upgrade=False: an SQLite file would otherwise be created and migrated on first use.
    with SQLEventBuffer(empty_database_url, upgrade=False) as buffer:
        for call in (
            lambda: buffer.record("e1", envelope("e1")),
            lambda: buffer.seen("e1"),
            lambda: buffer.pending(),
            lambda: buffer.complete("e1"),
            lambda: buffer.delete("e1"),
        ):
            with pytest.raises(SchemaMissing, match="run `recorder db upgrade`"):
                call()
        # A SchemaMissing is a StorageUnavailable: callers' policies cover it.
        with pytest.raises(StorageUnavailable):
            buffer.record("e1", envelope("e1"))


def test_upgrade_flag_creates_the_schema_then_records(empty_database_url: str) -> None:
    with SQLEventBuffer(empty_database_url, upgrade=True) as buffer:
        assert buffer.record("e1", envelope("e1")) is RecordResult.NEW
        assert buffer.record("e1", envelope("e1")) is RecordResult.DUPLICATE
