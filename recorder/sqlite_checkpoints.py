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

A reader's snapshot (``recorder verify``, an export, an auditor's query)
pins the log: nothing written after it began can be copied until it ends,
so the log grows past :data:`FALLBACK_PAGES`. When the reader ended, the
next commit's own checkpoint would copy all of it, tens of megabytes, with
the writer's lock held (146 ms for a 20 s reader at 200 envelopes/s). So
while a pass finds the log pinned the thread tells the writers to leave
checkpoints alone (:attr:`Checkpoints.writer_pages` is 0; ``record``'s own
connection and every connection the engine's pool hands out take it as
``wal_autocheckpoint``), and it copies the
backlog itself, passively, once the reader is gone.
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

__all__ = ["CHECKPOINT_SECONDS", "FALLBACK_PAGES", "FREE_PASSES", "Checkpoints", "use_writer_pages"]

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
        self._threshold = _Threshold()

    @property
    def writer_pages(self) -> int:
        """``wal_autocheckpoint`` for the writers' connections now: 0 while a reader pins the log."""
        return self._threshold.pages

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
                    args=(
                        weakref.ref(self),
                        self._stop,
                        self._interval,
                        self._writer_lock,
                        self._threshold,
                    ),
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


class _Threshold:
    """What the thread tells the writers: the ``wal_autocheckpoint`` their connections use."""

    def __init__(self) -> None:
        self.pages = FALLBACK_PAGES


def _run(
    owner: weakref.ref[Checkpoints],
    stop: threading.Event,
    interval: float,
    writer_lock: threading.Lock,
    threshold: _Threshold,
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
            threshold.pages = 0 if _checkpoint(conn, writer_lock) else FALLBACK_PAGES
        _checkpoint(conn, writer_lock)
    finally:
        # Nobody checkpoints for the writers any more: their fallback is back.
        threshold.pages = FALLBACK_PAGES
        with contextlib.suppress(sqlite3.Error):
            conn.close()


def _checkpoint(conn: sqlite3.Connection, writer_lock: threading.Lock) -> bool:
    """One run of passes; whether a reader's snapshot pinned the log (True) or it caught up."""
    previous: Any = None
    try:
        for _ in range(FREE_PASSES):
            log, copied = _passive(conn)
            if log == copied and log in (0, previous):
                return False
            if copied < log:
                # Frames after a reader's snapshot: no pass can copy them until
                # it ends, and holding the writers' lock would only stall them.
                return True
            previous = log
        with writer_lock:
            _passive(conn)
    except sqlite3.Error as exc:
        # The next run tries again; the writers' fallback bounds the log meanwhile.
        logger.warning("background checkpoint failed: %s", exc)
    return False


def _passive(conn: sqlite3.Connection) -> tuple[int, int]:
    """Frames in the log and frames copied into the database, after one passive pass."""
    _busy, log, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return int(log), int(copied)


def use_writer_pages(driver: Any, applied: dict[str, Any], pages: int) -> None:
    """Set ``wal_autocheckpoint`` to ``pages`` on a writer's connection unless already set.

    ``applied`` is a dict kept with the connection (its pool record's
    ``info``, or the writer's own for a detached one).
    """
    if applied.get("recorder_autocheckpoint") != pages and isinstance(driver, sqlite3.Connection):
        driver.execute(f"PRAGMA wal_autocheckpoint = {int(pages)}")
        applied["recorder_autocheckpoint"] = pages
