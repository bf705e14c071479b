"""Handler completions, written to the buffer in batches by one background thread.

A commit per envelope would double the commits the database flushes, and the
ack path waits behind those flushes; so completions gathered over a few
milliseconds go out as one ``complete_many``. A batch the database does not
take is *owed* and retried on every tick. A completion that arrives after
:meth:`Completions.close` is written at once, in the caller's thread: it is
never left behind for recovery to run the handler again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

from recorder.adapter import EventBufferAdapter, RecoverableEventBuffer
from recorder.errors import StorageUnavailable

__all__ = ["COMPLETION_BATCH_SECONDS", "Completions"]

logger = logging.getLogger("recorder.slack")

#: How long the completer gathers finished envelopes into one statement. Every
#: completion statement is a write the next record may queue behind (SQLite
#: admits one writer; PostgreSQL flushes each commit): at 200 envelopes/s under
#: load, 0.25 s instead of 0.02 s halved the SQLite recorder's ack p99 (see
#: BENCHMARKS.md, "Ack latency"). Only recovery sees the delay, after a lease.
COMPLETION_BATCH_SECONDS = 0.25


class Completions:
    """Queue completions, write them in batches, keep and retry the owed ones.

    Parameters
    ----------
    buffer
        Where completions are written (``complete_many`` when it has it).
    settled
        Called with the ids of every batch once written or owed: they are
        no longer in flight.
    """

    def __init__(
        self,
        buffer: EventBufferAdapter,
        settled: Callable[[list[str]], None],
        *,
        batch_seconds: float = COMPLETION_BATCH_SECONDS,
    ) -> None:
        self._buffer = buffer
        self._settled = settled
        self._batch_seconds = batch_seconds
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._owed: set[str] = set()
        # Checked once: a runtime protocol check costs microseconds per call.
        self._many = buffer if isinstance(buffer, RecoverableEventBuffer) else None

    def add(self, envelope_id: str) -> None:
        """A handler succeeded: complete ``envelope_id`` soon (at once after close)."""
        with self._lock:
            closed = self._closed
            if not closed:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._loop, name="recorder-completer", daemon=True
                    )
                    self._thread.start()
                self._queue.put(envelope_id)
        if closed and not self._write([envelope_id]):
            logger.error(
                "envelope %s handled after close and not marked complete; "
                "it stays pending and recovery runs it again",
                envelope_id,
                extra={"envelope_id": envelope_id},
            )

    def owed(self) -> list[str]:
        with self._lock:
            return sorted(self._owed)

    def flush(self) -> None:
        """Write what is queued now, in the caller's thread (what fails is owed)."""
        self._write(self._take())

    def retry_owed(self) -> None:
        """Retry completions the database did not take. Raises StorageUnavailable."""
        owed = self.owed()
        if not owed:
            return
        self._complete(owed)
        with self._lock:
            self._owed.difference_update(owed)

    def close(self) -> None:
        """Stop the thread, writing everything queued; later completions are written at once."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join()
        self._write(self._take())

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            time.sleep(self._batch_seconds)
            self._write([first, *self._take()])

    def _take(self) -> list[str]:
        taken: list[str] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return taken
            if item is None:
                # Keep the stop request for the loop.
                self._queue.put(None)
                return taken
            taken.append(item)

    def _write(self, envelope_ids: list[str]) -> bool:
        """Write a batch; on failure it is owed. Return whether it was written."""
        if not envelope_ids:
            return True
        try:
            self._complete(envelope_ids)
            return True
        except StorageUnavailable as exc:
            logger.warning(
                "%d envelopes handled; completion deferred, the database is unavailable: %s",
                len(envelope_ids),
                exc,
                extra={"envelope_ids": envelope_ids},
            )
            with self._lock:
                self._owed.update(envelope_ids)
            return False
        finally:
            self._settled(envelope_ids)

    def _complete(self, envelope_ids: Sequence[str]) -> None:
        if self._many is not None:
            self._many.complete_many(envelope_ids)
            return
        for envelope_id in envelope_ids:
            self._buffer.complete(envelope_id)
