"""verify on SQLite split over worker processes: every part checked, one snapshot for all.

The fast walk's parts are ranges (of blocks for the sealed members, of rowids
for the rows), each scanned by its own process on its own connection; the
snapshot is shared by holding the write lock while every reader begins
(recorder.verify_sqlite.Helpers). These tests attack that on real files:
tampering inside each part must be named, a commit landing while the
readers begin must be seen by all of them or by none, and a database that
is not a WAL file must still verify, on one process.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from recorder import db
from recorder.adapters.sql import SQLEventBuffer
from recorder.engine import create_engine
from recorder.seal import DEFAULT_MARGIN, seal
from recorder.verify import verify
from recorder.verify_sqlite import PARALLEL_FROM, default_processes

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 1, tzinfo=UTC)
ROWS = 3000
NOW = T0 + dt.timedelta(days=1)


def envelope(n: int) -> dict[str, Any]:
    return {
        "envelope_id": f"e{n:05d}",
        "type": "events_api",
        "payload": {
            "team_id": "T1",
            "event_id": f"Ev{n:05d}",
            "event": {"type": "message", "user": f"U{n % 7}", "channel": f"C{n % 5}"},
        },
    }


def at(n: int) -> dt.datetime:
    return T0 + dt.timedelta(seconds=n)


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    engine = create_engine(sqlite_url)
    yield engine
    engine.dispose()


def load(engine: Engine, rows: int = ROWS, sealed: int | None = None) -> None:
    """``rows`` envelopes, one a second; the first ``sealed`` of them sealed (in blocks of 250)."""
    buffer = SQLEventBuffer(engine)
    parsed = [buffer.parse(f"e{n:05d}", envelope(n)) for n in range(rows)]
    for start in range(0, rows, 500):
        buffer.record_many(
            parsed[start : start + 500], received_at=[at(n) for n in range(start, start + 500)]
        )
    if sealed:
        seal(engine, block_size=250, now=at(sealed - 1) + DEFAULT_MARGIN)


def keys(report: Any) -> set[tuple[str, str | None, int | None]]:
    return {(f.kind, f.envelope_id, f.block_no) for f in report.findings}


def test_tampering_in_every_part_is_found(engine: Engine) -> None:
    load(engine, sealed=ROWS // 2)  # blocks 1-6 sealed, the rest waiting
    # Three processes: members split by blocks (1-2, 3-4, 5-6), rows by rowid
    # (the verifier's part the smallest: it digests the chain too).
    sealed_ids = [10, 700, 1400]  # in blocks 1, 3 and 6
    unsealed_ids = [1600, 2200, 2900]  # the rows pass: in the second and third parts
    with engine.begin() as conn:
        for n in sealed_ids:
            conn.execute(
                sa.text("UPDATE envelopes SET channel_id = 'C-moved' WHERE envelope_id = :id"),
                {"id": f"e{n:05d}"},
            )
        for n in unsealed_ids:
            conn.execute(
                sa.text(
                    "UPDATE envelopes SET envelope = json_set(envelope, '$.type', 'x') "
                    "WHERE envelope_id = :id"
                ),
                {"id": f"e{n:05d}"},
            )
        # A member deleted without a logged prune, and a forged row behind the sealed point.
        conn.execute(sa.text("DELETE FROM envelopes WHERE envelope_id = 'e01000'"))
    forger = SQLEventBuffer(engine, clock=lambda: at(5) + dt.timedelta(microseconds=1))
    forger.record("forged", {"type": "events_api", "payload": {}})

    one = verify(engine, now=NOW, workers=1)
    three = verify(engine, now=NOW, workers=3)
    expected = {
        *(("modified", f"e{n:05d}", n // 250 + 1) for n in sealed_ids),
        *(("modified", f"e{n:05d}", None) for n in unsealed_ids),
        ("deleted", "e01000", 5),
        ("inserted", "forged", None),
    }
    assert keys(one) == expected
    assert keys(three) == expected
    assert [f.line() for f in three.findings] == [f.line() for f in one.findings]
    assert (three.sealed, three.unsealed, three.pruned) == (one.sealed, one.unsealed, one.pruned)
    assert (one.sealed, one.unsealed) == (ROWS // 2, ROWS // 2 + 1)


def test_tampering_in_every_part_of_the_rows_pass_is_found(engine: Engine) -> None:
    load(engine)  # nothing sealed: every row is in the rows pass
    tampered = [5, 1500, 2995]  # the first, middle and last rowids
    with engine.begin() as conn:
        for n in tampered:
            conn.execute(
                sa.text("UPDATE envelopes SET user_id = 'U-moved' WHERE envelope_id = :id"),
                {"id": f"e{n:05d}"},
            )
    for workers in (1, 2, 3, 4):
        report = verify(engine, now=NOW, workers=workers)
        assert keys(report) == {("modified", f"e{n:05d}", None) for n in tampered}, workers
        assert report.unsealed == ROWS


def test_more_workers_than_blocks_and_an_empty_archive(engine: Engine) -> None:
    assert verify(engine, now=NOW, workers=3).ok
    load(engine, rows=500, sealed=250)  # one block
    report = verify(engine, now=NOW, workers=4)
    assert report.ok, report.findings[:3]
    assert (report.sealed, report.unsealed) == (250, 250)


def _move_rows(path: str, stop: threading.Event, moved: list[int]) -> None:
    """Commit, back to back, transactions that each move one row from the start of the
    table to its end (delete and insert it again: a new, highest rowid). Every
    committed state holds the same rows; a reader of the first part at one commit and
    of the last at another would see one row twice, or not at all."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("CREATE TEMP TABLE moving AS SELECT * FROM envelopes WHERE 0")
    while not stop.is_set():
        conn.execute("BEGIN IMMEDIATE")
        first = "(SELECT min(rowid) FROM envelopes)"
        conn.execute(f"INSERT INTO moving SELECT * FROM envelopes WHERE rowid = {first}")
        conn.execute(f"DELETE FROM envelopes WHERE rowid = {first}")
        conn.execute("INSERT INTO envelopes SELECT * FROM moving")
        conn.execute("DELETE FROM moving")
        conn.execute("COMMIT")
        moved[0] += 1
    conn.close()


def test_a_commit_during_the_snapshot_handshake_is_seen_whole(
    engine: Engine, tmp_path: Path
) -> None:
    load(engine, rows=2000)  # nothing sealed: every row is in the rows pass
    path = str(tmp_path / "recorder.db")
    stop = threading.Event()
    moved = [0]
    writer = threading.Thread(target=_move_rows, args=(path, stop, moved))
    writer.start()
    try:
        for _ in range(4):
            before = moved[0]
            report = verify(engine, now=NOW, workers=3)
            assert report.ok, report.findings[:3]
            assert report.unsealed == 2000
            assert moved[0] > before  # the writer kept committing around each verify
    finally:
        stop.set()
        writer.join()


def test_a_database_that_is_no_wal_file_verifies_on_one_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    db.upgrade(url)
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _rollback_journal(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA journal_mode = DELETE")

    try:
        engine.dispose()  # connections from here on are made with the listener
        load(engine, rows=1000, sealed=500)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "delete"
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE envelopes SET team_id = 'T9' WHERE envelope_id = 'e00003'")
            )
        report = verify(engine, now=NOW, workers=3)
        assert keys(report) == {("modified", "e00003", 1)}
        assert (report.sealed, report.unsealed) == (500, 500)
    finally:
        engine.dispose()


def test_an_in_memory_database_verifies_on_one_process() -> None:
    engine = create_engine("sqlite://")
    try:
        db.upgrade(engine)
        load(engine, rows=500, sealed=250)
        report = verify(engine, now=NOW, workers=2)
        assert report.ok, report.findings[:3]
        assert (report.sealed, report.unsealed) == (250, 250)
    finally:
        engine.dispose()


def test_recorder_verify_stays_on_one_process_below_the_threshold(engine: Engine) -> None:
    load(engine, rows=500)
    assert PARALLEL_FROM > 500
    assert default_processes(engine) == 1


def test_workers_that_cannot_start_leave_verify_to_one_process(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    load(engine, rows=500, sealed=250)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE envelopes SET team_id = 'T9' WHERE envelope_id = 'e00400'"))
    monkeypatch.setattr("sys.executable", "/nonexistent/python")  # an embedded interpreter
    report = verify(engine, now=NOW, workers=3)
    assert keys(report) == {("modified", "e00400", None)}
