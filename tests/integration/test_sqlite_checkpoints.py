"""SQLite's log is checkpointed in the background, and stays small while records keep coming."""

from __future__ import annotations

import gc
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from recorder.adapters.sql import SQLEventBuffer
from recorder.sqlite_checkpoints import FALLBACK_PAGES


def envelope(n: int) -> dict[str, Any]:
    # About 1.5 KB of JSON, as a message with blocks is: a dozen pages per record.
    return {
        "envelope_id": f"e{n}",
        "type": "events_api",
        "payload": {
            "event_id": f"Ev{n}",
            "team_id": "T1",
            "event": {"type": "message", "channel": "C1", "user": "U1", "text": "x" * 1500},
        },
    }


def test_the_log_starts_over_while_records_keep_coming(tmp_path: Path) -> None:
    path = tmp_path / "recorder.db"
    written = 0
    with SQLEventBuffer(f"sqlite:///{path}", upgrade=True) as buffer:
        # About 180 records/s for 3 s, a bot's pace: about 6,000 pages of log
        # in all, under the writers' own fallback (so only the background
        # thread copies it and lets it start over).
        for n in range(500):
            buffer.record(f"e{n}", envelope(n))
            time.sleep(0.005)
        with sqlite3.connect(path) as conn:
            _busy, log, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            written = conn.execute("SELECT count(*) FROM envelopes").fetchone()[0]
    assert written == 500
    # The log holds what came since the last background run started over it
    # (about 1,100 pages), well under the 500 records' pages (about 12 each).
    assert 0 < log < 500 * 12 / 2


def test_the_recorders_connections_leave_checkpoints_to_the_background(tmp_path: Path) -> None:
    path = tmp_path / "recorder.db"
    with SQLEventBuffer(f"sqlite:///{path}", upgrade=True) as buffer:
        buffer.record("e1", envelope(1))
        with buffer.engine.connect() as conn:
            pages = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one()
    assert pages == FALLBACK_PAGES


def checkpoint_thread(buffer: SQLEventBuffer) -> threading.Thread:
    checkpoints = buffer._writes._checkpoints
    assert checkpoints is not None
    thread = checkpoints._thread
    assert thread is not None
    return thread


def test_a_buffer_dropped_without_close_leaves_no_thread_behind(tmp_path: Path) -> None:
    buffers = [SQLEventBuffer(f"sqlite:///{tmp_path / f'r{n}.db'}", upgrade=True) for n in range(5)]
    for n, buffer in enumerate(buffers):
        buffer.record(f"e{n}", envelope(n))
    # These buffers' own threads: others' (earlier tests in this process) may
    # be ending meanwhile, so a count of every such thread would race them.
    threads = [checkpoint_thread(buffer) for buffer in buffers]
    assert all(thread.is_alive() for thread in threads)
    del buffers, buffer
    gc.collect()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)
    # Nothing recorded went with them.
    for n in range(5):
        with sqlite3.connect(tmp_path / f"r{n}.db") as conn:
            assert conn.execute("SELECT count(*) FROM envelopes").fetchone() == (1,)


def test_a_child_forked_while_the_writers_lock_was_held_can_write(tmp_path: Path) -> None:
    path = tmp_path / "recorder.db"
    with SQLEventBuffer(f"sqlite:///{path}", upgrade=True, record_timeout=2) as buffer:
        buffer.record("e0", envelope(0))
        # The fork lands while a thread of the parent holds the writers' lock
        # (a record in progress, or the background checkpoint's last pass):
        # no thread of the child would ever release that copy of it.
        lock = buffer._writes._sqlite_writer
        assert lock is not None
        with lock:
            pid = os.fork()
            if pid == 0:  # pragma: no cover (the child)
                code = 1
                try:
                    buffer.record("e1", envelope(1))
                    buffer.close()
                    code = 0
                finally:
                    os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        buffer.record("e2", envelope(2))
    with sqlite3.connect(path) as conn:
        ids = {r[0] for r in conn.execute("SELECT envelope_id FROM envelopes")}
    assert ids == {"e0", "e1", "e2"}


def wait_for(predicate: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def record_connection_pages(buffer: SQLEventBuffer) -> int:
    """``wal_autocheckpoint`` of the connection ``record`` writes with."""
    dedicated = buffer._writes._dedicated
    assert dedicated is not None
    assert dedicated._idle
    conn, _ = dedicated._idle[-1]
    return int(conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])


def test_a_readers_snapshot_leaves_the_backlog_to_the_background(tmp_path: Path) -> None:
    # A long reader (verify, an export) pins the log: what is written after its
    # snapshot cannot be copied until it ends, so the log grows. The first
    # commit after it ends must not copy all of that with the writers' lock
    # held (146 ms for a 20 s reader at 200 records/s): the thread does it.
    path = tmp_path / "recorder.db"
    with SQLEventBuffer(f"sqlite:///{path}", upgrade=True) as buffer:
        buffer.record("e0", envelope(0))
        checkpoints = buffer._writes._checkpoints
        assert checkpoints is not None
        assert record_connection_pages(buffer) == FALLBACK_PAGES
        reader = sqlite3.connect(path)
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM envelopes").fetchone() == (1,)
        for n in range(1, 40):
            buffer.record(f"e{n}", envelope(n))
        assert wait_for(lambda: checkpoints.writer_pages == 0)
        buffer.record("e40", envelope(40))
        assert record_connection_pages(buffer) == 0
        with buffer._writes.transaction() as conn:  # completions and other writes too
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == 0
        with buffer.engine.connect() as conn:  # any connection the pool hands out
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == 0
        reader.rollback()
        reader.close()
        # The thread copies the backlog itself, then gives the writers their fallback back.
        assert wait_for(lambda: checkpoints.writer_pages == FALLBACK_PAGES)
        buffer.record("e41", envelope(41))
        assert record_connection_pages(buffer) == FALLBACK_PAGES
        with buffer.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == FALLBACK_PAGES
        with sqlite3.connect(path) as conn:
            _busy, log, _copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            assert conn.execute("SELECT count(*) FROM envelopes").fetchone() == (42,)
    # The log started over after the backlog (40 records, about 12 pages each) was copied.
    assert 0 < log < 40 * 12 / 2
