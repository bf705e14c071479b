"""record() on PostgreSQL through the buffer's own autocommit connections (recorder.writer)."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg

from recorder import RecordResult
from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import create_engine
from recorder.writer import RECORD_CONNECTIONS


def envelope(name: str) -> dict[str, Any]:
    return {
        "envelope_id": name,
        "type": "events_api",
        "payload": {"event_id": f"Ev{name}", "team_id": "T1", "event": {"type": "message"}},
    }


def other_backends(pg_url: str) -> set[int]:
    """PIDs of every client session on the test database but the one asking."""
    with psycopg.connect(pg_url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchall()
    return {row[0] for row in rows}


def no_backends_left(pg_url: str) -> set[int]:
    """The sessions still open, after giving closed ones time to leave.

    A backend leaves pg_stat_activity a moment after its client closed the
    connection, longer when the machine is busy.
    """
    deadline = time.monotonic() + 10
    while (left := other_backends(pg_url)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_records_share_one_connection_and_close_releases_it(pg_url: str) -> None:
    engine = create_engine(pg_url)
    try:
        buffer = SQLEventBuffer(engine)
        for n in range(3):
            assert buffer.record(f"e{n}", envelope(f"e{n}")) is RecordResult.NEW
        # One connection, out of the pool and reused: nothing else is open.
        assert len(other_backends(pg_url)) == 1
        buffer.close()
        # The engine is the caller's, yet the buffer's own connections are gone.
        assert no_backends_left(pg_url) == set()
    finally:
        engine.dispose()


def test_a_terminated_record_connection_is_replaced_before_the_next_record(
    pg_url: str,
) -> None:
    with SQLEventBuffer(pg_url) as buffer:
        assert buffer.record("e1", envelope("e1")) is RecordResult.NEW
        pids = other_backends(pg_url)
        assert pids
        with psycopg.connect(pg_url, autocommit=True) as admin:
            for pid in pids:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        time.sleep(0.2)  # let the FATAL message and FIN reach the client socket
        assert buffer.record("e2", envelope("e2")) is RecordResult.NEW
        assert buffer.record("e2", envelope("e2")) is RecordResult.DUPLICATE
        assert not pids & other_backends(pg_url)
    assert no_backends_left(pg_url) == set()


def test_more_threads_than_connections_record_each_id_new_exactly_once(pg_url: str) -> None:
    threads = 3 * RECORD_CONNECTIONS
    ids = [f"shared{n}" for n in range(40)]
    barrier = threading.Barrier(threads)
    results: list[tuple[str, RecordResult]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    with SQLEventBuffer(pg_url) as buffer:

        def race() -> None:
            try:
                barrier.wait(timeout=30)
                for name in ids:
                    result = buffer.record(name, envelope(name))
                    with lock:
                        results.append((name, result))
            except BaseException as exc:
                failures.append(exc)

        workers = [threading.Thread(target=race) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        assert failures == []
        # Callers beyond RECORD_CONNECTIONS at once took the engine's pool (5 + 10 overflow).
        assert len(other_backends(pg_url)) <= RECORD_CONNECTIONS + 15
        assert len(buffer.pending()) == len(ids)

    new = [name for name, result in results if result is RecordResult.NEW]
    assert sorted(new) == sorted(ids)
    assert len(results) == threads * len(ids)
    assert no_backends_left(pg_url) == set()
