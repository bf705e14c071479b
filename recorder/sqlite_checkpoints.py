"""SQLite WAL checkpoints off the write path: one background thread per writer.

In WAL mode with ``synchronous = NORMAL`` a commit appends to the log and
does not sync; the syncs happen at checkpoints, when the log is copied back
into the database file. SQLite's automatic checkpoint runs in the connection
that just committed, once the log passes 1,000 pages. A recorded envelope
writes about a dozen pages (the exact text, the queryable copy, the reporting
columns' indexes), so about one record in eighty paid for a checkpoint and
its two syncs, 4 to 6 ms, and every other write of the process queued behind
it on the writer's lock: that was the SQLite recorder's ack p99 (BENCHMARKS.md,
"Ack latency").

So the recorder's connections checkpoint themselves only as a fallback, past
:data:`FALLBACK_PAGES`, and :class:`Checkpoints` runs *passive* checkpoints
from its own thread and connection: a passive checkpoint never waits for and
never blocks a reader or a writer. One detail decides whether the log file
stays small: SQLite starts the log over only when a writer begins while the
whole log has been copied. Records that commit while a checkpoint runs leave
a few pages uncopied, so a pass is repeated until one finds nothing new (a
few milliseconds). When writes are so dense that :data:`FREE_PASSES` passes
never catch up (a bulk import), the last pass holds the writer's lock: it
copies only what the previous pass missed, so writes wait a millisecond or
two once per run, and the log still starts over.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import weakref
from typing import Any

from sqlalchemy.engine import Engine

from recorder.engine import FALLBACK_PAGES, detached_connection

__all__ = ["CHECKPOINT_SECONDS", "FALLBACK_PAGES", "FREE_PASSES", "Checkpoints"]

logger = logging.getLogger("recorder")

#: How often the background thread copies the log into the database. At 200
#: envelopes/s the log holds about 1,300 pages (5 MB) between two runs.
CHECKPOINT_SECONDS = 0.5


#: Passes per run that leave writers alone; at 200 envelopes/s four were the
#: most a run needed to catch up.
FREE_PASSES = 10


class Checkpoints:
    """Run passive checkpoints of ``engine``'s SQLite database every ``interval`` seconds.

    ``writer_lock`` is the lock this process's writers of the database hold
    while they write (:class:`recorder.writer.Writer`'s).

    The thread starts at :meth:`start` (the writer calls it at its first
    write) and stops at :meth:`close`, which runs a last checkpoint, or once
    this object is garbage (a buffer dropped without ``close``): the thread
    holds it only weakly, so it never keeps a buffer, its engine and a
    thread alive for good. Forked children start their own thread at their
    first write; the parent's connection is never used or closed in a child.
    """

    def __init__(
        self,
        engine: Engine,
        writer_lock: threading.Lock,
        *,
        interval: float = CHECKPOINT_SECONDS,
    ) -> None:
        self._engine = engine
        self._writer_lock = writer_lock
        self._interval = interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False

    def start(self) -> None:
        """Start the thread unless it runs (cheap: called on every write)."""
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._closed:
                return
            if self._pid != os.getpid():
                # The thread did not survive the fork; its connection is the parent's.
                self._pid = os.getpid()
                self._thread = None
                self._stop = threading.Event()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=_run,
                    args=(weakref.ref(self), self._stop, self._interval, self._writer_lock),
                    name="recorder-checkpoints",
                    daemon=True,
                )
                self._thread.start()

    def forked(self, writer_lock: threading.Lock) -> None:
        """In a forked child, before :meth:`start`: the writers' lock the child made."""
        self._writer_lock = writer_lock

    def close(self) -> None:
        """Stop the thread; its last checkpoint runs before this returns."""
        with self._lock:
            self._closed = True
            thread = self._thread if self._pid == os.getpid() else None
            self._stop.set()
        if thread is not None:
            thread.join()

    def _connect(self) -> sqlite3.Connection:
        # Out of the pool for good: the thread closes it.
        driver = detached_connection(self._engine)
        assert isinstance(driver, sqlite3.Connection)
        return driver


def _run(
    owner: weakref.ref[Checkpoints],
    stop: threading.Event,
    interval: float,
    writer_lock: threading.Lock,
) -> None:
    """The thread: its owner only weakly, so dropping the owner stops it (a last pass first)."""
    checkpoints = owner()
    if checkpoints is None:
        return
    try:
        conn = checkpoints._connect()
    except Exception:
        logger.warning(
            "no connection for background checkpoints; SQLite checkpoints in the writer",
            exc_info=True,
        )
        return
    del checkpoints
    try:
        while not stop.wait(interval) and owner() is not None:
            _checkpoint(conn, writer_lock)
        _checkpoint(conn, writer_lock)
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.close()


def _checkpoint(conn: sqlite3.Connection, writer_lock: threading.Lock) -> None:
    previous: Any = None
    try:
        for _ in range(FREE_PASSES):
            log, copied = _passive(conn)
            if log == copied and log in (0, previous):
                return
            previous = log
        with writer_lock:
            _passive(conn)
    except sqlite3.Error as exc:
        # The next run tries again; the writers' fallback bounds the log meanwhile.
        logger.warning("background checkpoint failed: %s", exc)


def _passive(conn: sqlite3.Connection) -> tuple[int, int]:
    """Frames in the log and frames copied into the database, after one passive pass."""
    _busy, log, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(log), int(copied)
