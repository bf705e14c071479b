"""Bulk import of JSON Lines, as ``recorder import`` does it.

Each line is parsed by :mod:`recorder.import_lines` (a plain envelope, or an
archive record from ``recorder query --format archive``), through the
buffer's own parser (strict JSON, size limit, redaction), as ``record`` does.

Imported envelopes are an archive, not work: they are stored as already
handled, so no bot's recovery ever dispatches them, unless the caller asks for
``pending`` (a backfill that bots should handle).

The input is cut into chunks of at most ``batch_size`` lines. With ``jobs``
above 1, worker processes parse, redact and hash the chunks (the CPU work),
and return finished rows (:mod:`recorder.copy_rows`: COPY text on
PostgreSQL); this process reads the input and writes the rows, one
transaction per chunk, strictly in input order, through
:meth:`SQLEventBuffer.import_rows` (the same ``ON CONFLICT DO NOTHING`` dedupe
as ``record``: a line seen before, in an earlier chunk, the same chunk or the
database, or a retry carrying a known ``event_id``, counts as a duplicate, and
the first line wins). Only a few chunks are in flight at once, so memory does
not grow with the input. A malformed line is rejected with its line number and
never costs the valid lines around it.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Final

from recorder.errors import InvalidEnvelope, RecorderError, SchemaMissing, StorageUnavailable
from recorder.import_lines import (
    ARCHIVE_FIELDS,
    RECEIVED_AT_CHOICES,
    Chunk,
    ChunkOptions,
    ImportItem,
    PreparedChunk,
    ReceivedAt,
    event_time,
    parse_line,
    parse_received_at,
    prepare_chunk,
    worker_ready,
)

if TYPE_CHECKING:  # the worker processes import this module's pool, never SQLAlchemy
    from recorder.adapters.sql import SQLEventBuffer

__all__ = [
    "ARCHIVE_FIELDS",
    "DEFAULT_BATCH_SIZE",
    "MAX_KEPT_ERRORS",
    "RECEIVED_AT_CHOICES",
    "ImportItem",
    "ImportParsers",
    "ImportReport",
    "ReceivedAt",
    "event_time",
    "import_envelopes",
    "parse_line",
    "parse_received_at",
]

DEFAULT_BATCH_SIZE = 500
#: Rejections beyond this many are counted but their messages are not kept.
MAX_KEPT_ERRORS = 10_000
#: A chunk also ends once its lines reach this many bytes, so that a file of
#: large envelopes keeps the same memory bound as one of small ones.
CHUNK_BYTES = 8 * 1024 * 1024

#: Connections a parallel import writes on at once (PostgreSQL).
WRITERS = 2

ProgressCallback = Callable[[int], None]
"""Called with the number of input bytes consumed since the previous call."""

ErrorCallback = Callable[[int, str], None]
"""Called with the line number (from 1) and the reason, as each line is rejected."""


@dataclass(slots=True)
class ImportReport:
    """What an import did."""

    new: int = 0
    """Envelopes stored for the first time."""
    duplicate: int = 0
    """Valid envelopes already stored (same envelope_id, or same event_id)."""
    rejected: int = 0
    """Lines that are not a valid envelope; nothing was stored for them."""
    errors: list[tuple[int, str]] = field(default_factory=list)
    """``(line number, reason)`` of rejected lines (the first MAX_KEPT_ERRORS)."""
    pending: bool = False
    """The new envelopes were stored pending (bots dispatch them), not as handled."""

    @property
    def lines(self) -> int:
        """Non-blank lines read."""
        return self.new + self.duplicate + self.rejected

    def counts(self) -> str:
        return f"imported: {self.new} new, {self.duplicate} duplicate, {self.rejected} rejected"

    def summary(self) -> str:
        """The counts, then how the new envelopes were stored."""
        if self.pending:
            how = "stored pending: a bot's recovery on this database will dispatch them"
        else:
            how = (
                "stored as handled (an archive): no bot dispatches them; --pending to backfill work"
            )
        return f"{self.counts()}\n{how}" if self.new else self.counts()


def import_envelopes(
    buffer: SQLEventBuffer,
    lines: Iterable[bytes],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: ProgressCallback | None = None,
    on_error: ErrorCallback | None = None,
    pending: bool = False,
    received_at: ReceivedAt = "now",
    jobs: int = 1,
    parsers: ImportParsers | None = None,
) -> ImportReport:
    """Record every envelope in ``lines`` (JSON Lines), in batches.

    Parameters
    ----------
    buffer
        Where to record; its size limit and redaction apply to every line (a
        line that redaction changes is stored re-encoded, as ``record`` does).
    lines
        The input, line by line, with or without line endings (a binary file
        object will do). Blank lines are skipped. Plain envelopes and archive
        records (see :func:`parse_line`) may be mixed.
    batch_size
        Lines per chunk, so at most this many envelopes per transaction
        (fewer when the chunk's lines pass :data:`CHUNK_BYTES`).
    on_progress, on_error
        Optional callbacks for progress (bytes consumed) and each rejected line.
    pending
        Store new envelopes pending, for bots to dispatch (a backfill of work).
        By default they are stored as already handled: recovery never runs
        handlers on an archive.
    received_at
        ``"now"`` (the import's time) or ``"event-time"`` (``payload.event_time``
        where present, else now) for plain envelopes. Archive records always
        keep their own ``received_at``.
    jobs
        Worker processes that parse the lines; 1 parses in this process
        (while a thread writes the previous batch). Above 1, the first
        chunks are parsed here while the workers start, and an input of two
        chunks or fewer never starts them. Ignored when ``parsers`` is given.
        See :class:`ImportParsers` for the ``__main__`` guard a script needs.
    parsers
        Worker processes to reuse (:class:`ImportParsers`), for a caller that
        imports many inputs; the import leaves them running.

    Returns
    -------
    ImportReport
        Counts of new, duplicate and rejected envelopes.

    Raises
    ------
    StorageUnavailable
        The database failed; batches before the failing one are committed,
        and running the import again is safe (they count as duplicates).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    if received_at not in RECEIVED_AT_CHOICES:
        raise ValueError(f"received_at must be one of {', '.join(RECEIVED_AT_CHOICES)}")
    report = ImportReport(pending=pending)
    lock = threading.Lock()
    options = ChunkOptions(
        max_bytes=buffer.max_envelope_bytes,
        redaction=buffer.redaction,
        received_at=received_at,
        row_format=buffer.import_row_format,
    )

    def reject(line_no: int, reason: str) -> None:
        with lock:
            report.rejected += 1
            if len(report.errors) < MAX_KEPT_ERRORS:
                report.errors.append((line_no, reason))
            if on_error is not None:
                on_error(line_no, reason)

    def write(ready: PreparedChunk) -> None:
        new, duplicate = _record_batch(buffer, ready, reject, handled=not pending)
        with lock:
            report.new += new
            report.duplicate += duplicate

    chunks = _chunks(lines, batch_size)
    if parsers is not None:
        prepared = parsers.prepare(chunks, options)
    elif jobs > 1:
        prepared = _prepare_with_own_workers(chunks, options, jobs)
    else:
        prepared = (prepare_chunk(chunk, options) for chunk in chunks)
    # closing: an error leaves the loop early, and the workers must stop then too.
    # Several writers only where they pay: PostgreSQL (SQLite has one writer
    # at a time) and workers that parse faster than one connection stores.
    writers = WRITERS if options.row_format == "copy" and (parsers or jobs > 1) else 1
    with contextlib.closing(prepared), _BatchWriter(write, writers) as writer:
        for ready in prepared:
            for line_no, reason in ready.errors:
                reject(line_no, reason)
            if ready.rows:
                writer.submit(ready)
            if on_progress is not None:
                on_progress(ready.size)
    return report


#: Inputs of at most this many chunks are parsed in the importing process:
#: starting worker processes costs more than parsing them.
_INLINE_CHUNKS = 2
#: Seconds between checks that every parsing worker is still alive.
_LIVENESS_POLL = 1.0


def _prepare_with_own_workers(
    chunks: Iterator[Chunk], options: ChunkOptions, jobs: int
) -> Generator[PreparedChunk, None, None]:
    """Prepared chunks, in order, from workers started for this import.

    A new interpreter takes a second or more to start on a loaded machine, so
    this process parses the first chunks itself until the workers are up,
    and a small input never starts them at all.
    """
    first = list(itertools.islice(chunks, _INLINE_CHUNKS + 1))
    if len(first) <= _INLINE_CHUNKS:
        for chunk in first:
            yield prepare_chunk(chunk, options)
        return
    rest = itertools.chain(first, chunks)
    with ImportParsers(jobs) as workers:
        for chunk in rest:
            yield prepare_chunk(chunk, options)
            if workers.ready():
                break
        yield from workers.prepare(rest, options)


def _chunks(lines: Iterable[bytes], batch_size: int) -> Iterator[Chunk]:
    """The input as consecutive chunks of at most ``batch_size`` lines (and about CHUNK_BYTES)."""
    first = 1
    batch: list[bytes] = []
    size = 0
    for raw in lines:
        batch.append(raw)
        size += len(raw)
        if len(batch) >= batch_size or size >= CHUNK_BYTES:
            yield Chunk(first, batch)
            first += len(batch)
            batch = []
            size = 0
    if batch:
        yield Chunk(first, batch)


class ImportParsers:
    """Worker processes that parse, redact and hash chunks of lines for an import.

    Parameters
    ----------
    jobs
        How many processes; the number of cores is the useful most (the
        importing process itself mostly waits on the database).

    Chunks come back in input order. At most two per worker are in flight,
    so a large input is never read far ahead of what is stored. Workers are
    started fresh (``spawn``): a fork would copy this process's database
    connections and threads. As with any ``spawn`` pool, a script that starts
    one must guard its own work with ``if __name__ == "__main__":`` (each
    worker imports the main module). Close when done (or use as a context
    manager).
    """

    #: Chunks in flight per worker: one being parsed, one waiting, so no worker idles.
    WINDOW_PER_JOB: Final = 2

    def __init__(self, jobs: int) -> None:
        if jobs < 1:
            raise ValueError("jobs must be at least 1")
        self.jobs = jobs
        self._pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
        # One task per worker starts them all now, in the background.
        self._started = [self._pool.submit(worker_ready) for _ in range(jobs)]
        self._used = False

    def ready(self) -> bool:
        """Whether every worker has started (:meth:`prepare` works either way)."""
        return all(started.done() for started in self._started)

    def prepare(
        self, chunks: Iterable[Chunk], options: ChunkOptions
    ) -> Generator[PreparedChunk, None, None]:
        """:func:`~recorder.import_lines.prepare_chunk` over ``chunks``, in order, in parallel.

        Raises
        ------
        RecorderError
            A worker process ended abruptly (killed, out of memory).
        """
        window: deque[tuple[int, Future[PreparedChunk]]] = deque()
        try:
            for chunk in chunks:
                self._used = True
                try:
                    future = self._pool.submit(prepare_chunk, chunk, options)
                except BrokenProcessPool as exc:  # a worker died since the last result
                    raise _worker_died(window[0][0] if window else chunk.first_line) from exc
                window.append((chunk.first_line, future))
                if len(window) >= self.WINDOW_PER_JOB * self.jobs:
                    yield self._result(*window.popleft())
            while window:
                yield self._result(*window.popleft())
        finally:
            for _, future in window:
                future.cancel()

    def _result(self, first_line: int, future: Future[PreparedChunk]) -> PreparedChunk:
        while True:
            try:
                return future.result(timeout=_LIVENESS_POLL)
            except BrokenProcessPool as exc:
                raise _worker_died(first_line) from exc
            except FuturesTimeout:
                # The pool itself may never notice (see _unjam): ask the processes.
                if self._died():
                    raise _worker_died(first_line) from None

    def _processes(self) -> list[BaseProcess]:
        return list((getattr(self._pool, "_processes", None) or {}).values())

    def _died(self) -> bool:
        return any(process.exitcode not in (None, 0) for process in self._processes())

    def _unjam(self) -> None:
        """Let a pool whose worker was killed mid-result shut down.

        A worker killed while it sends a result leaves half a message in the
        pool's result pipe and that pipe's lock held: CPython's pool thread
        (3.11) then waits for the rest forever, and so would shutdown. With
        the other workers ended and this process's end of the pipe closed,
        that thread reads end-of-file, declares the pool broken and exits.
        """
        processes = self._processes()
        for process in processes:
            if process.exitcode is None:
                process.kill()
        for process in processes:
            process.join(timeout=5)
        writer = getattr(getattr(self._pool, "_result_queue", None), "_writer", None)
        if writer is not None:
            writer.close()

    def close(self) -> None:
        if self._died():
            self._unjam()
        # Workers that never got a chunk (the input ended while they started)
        # are left to exit on their own: waiting for an interpreter to finish
        # starting would only delay the caller.
        self._pool.shutdown(wait=self._used, cancel_futures=True)

    def __enter__(self) -> ImportParsers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _worker_died(first_line: int) -> RecorderError:
    # Not a traceback: what happened, where, and that a rerun is the remedy.
    return RecorderError(
        f"import stopped at line {first_line}: a worker process of the import ended "
        "abruptly (killed, or out of memory); lines before it may be recorded, and "
        "importing the file again is safe"
    )


class _BatchWriter:
    """Records batches on background threads while the caller prepares the next.

    Preparing is CPU work (in this process or the workers) and recording
    mostly waits on the database, so overlapping them is where a bulk import
    gains over a plain loop. With ``writers`` above 1, batches are recorded
    on that many connections at once (the server's work per envelope, the
    ``jsonb`` parse and the index entries, then runs on several cores), but
    a batch that shares a key (:attr:`PreparedChunk.keys`) with an earlier
    batch still in flight waits for it to commit: for every envelope, the
    batches that hold it are committed in input order, so the first line
    still wins. At most two batches wait in the queue (bounded memory). The
    first error a writer meets stops them all, and is raised in the caller
    at the next :meth:`submit` or on leaving the ``with`` block.
    """

    _DONE: Final = None

    def __init__(self, write: Callable[[PreparedChunk], None], writers: int = 1) -> None:
        self._write = write
        self._queue: queue.Queue[
            tuple[PreparedChunk, list[threading.Event], threading.Event] | None
        ]
        self._queue = queue.Queue(2)
        self._lock = threading.Lock()
        self._errors: dict[int, BaseException] = {}
        """Failures by the first line of their batch."""
        self._failed_at: int | None = None
        """The first line of the earliest failed batch: later batches are not written."""
        self._in_flight: list[tuple[frozenset[str], threading.Event]] = []
        self._threads = [
            threading.Thread(target=self._run, name=f"recorder-import-{n}", daemon=True)
            for n in range(writers)
        ]

    def __enter__(self) -> _BatchWriter:
        for thread in self._threads:
            thread.start()
        return self

    def submit(self, batch: PreparedChunk) -> None:
        if self._failed_at is not None:
            raise self._errors[self._failed_at]
        self._in_flight = [(keys, done) for keys, done in self._in_flight if not done.is_set()]
        after = [done for keys, done in self._in_flight if not keys.isdisjoint(batch.keys)]
        done = threading.Event()
        if len(self._threads) > 1:
            self._in_flight.append((batch.keys, done))
        self._queue.put((batch, after, done))

    def _run(self) -> None:
        while (item := self._queue.get()) is not self._DONE:
            batch, after, done = item
            try:
                for earlier in after:
                    earlier.wait()
                # Batches before a failed one are still written, so that the
                # error's "the lines before it are recorded" holds.
                failed_at = self._failed_at
                if failed_at is None or batch.first_line < failed_at:
                    self._write(batch)
            except BaseException as exc:  # handed to the caller's thread
                with self._lock:
                    self._errors[batch.first_line] = exc
                    self._failed_at = min(self._errors)
            finally:
                done.set()

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        stopped_here = exc is not None and exc not in self._errors.values()
        if stopped_here:
            with self._lock:
                self._failed_at = 0  # the caller failed: write nothing more
        for _ in self._threads:
            self._queue.put(self._DONE)
        for thread in self._threads:
            thread.join()
        if self._errors and not stopped_here:
            earliest = self._errors[min(self._errors)]
            if earliest is not exc:
                raise earliest


def _record_batch(
    buffer: SQLEventBuffer,
    batch: PreparedChunk,
    reject: ErrorCallback,
    *,
    handled: bool,
) -> tuple[int, int]:
    """Record one batch; return (new, duplicate)."""
    try:
        new = buffer.import_rows(batch.rows, handled=handled)
    except InvalidEnvelope:
        # The database refused a value somewhere in the batch (jsonb cannot
        # hold 1e1000000): find the line one row at a time, in order, so the
        # others are still recorded and the first of repeated lines still wins.
        new = duplicate = 0
        for line_no, row in zip(batch.row_lines, batch.rows, strict=True):
            try:
                new_one = buffer.import_rows([row], handled=handled)
            except InvalidEnvelope as exc:
                reject(line_no, str(exc))
                continue
            new += new_one
            duplicate += 1 - new_one
        return new, duplicate
    except SchemaMissing:
        raise
    except StorageUnavailable as exc:
        raise StorageUnavailable(
            f"import stopped at line {batch.row_lines[0]}: {exc}; the lines before it are "
            "recorded (its own batch may be too, and with several writers later ones), and "
            "importing the file again is safe"
        ) from exc
    return new, len(batch.rows) - new
