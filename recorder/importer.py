"""Bulk import of JSON Lines envelopes, as ``recorder import`` does it.

Each line is one envelope whose exact text (the line without its line ending)
becomes ``envelope_text``. Valid lines are recorded in batches through
:meth:`SQLEventBuffer.record_many` (the same ``ON CONFLICT DO NOTHING``
dedupe as ``record``: a line seen before, or a retry carrying a known
``event_id``, counts as a duplicate). A malformed line is rejected with its
line number and never costs the valid lines around it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from recorder.adapters.sql import SQLEventBuffer
from recorder.envelope import ParsedEnvelope, parse_envelope_text
from recorder.errors import InvalidEnvelope, SchemaMissing, StorageUnavailable

DEFAULT_BATCH_SIZE = 500
#: Rejections beyond this many are counted but their messages are not kept.
MAX_KEPT_ERRORS = 10_000

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

    @property
    def lines(self) -> int:
        """Non-blank lines read."""
        return self.new + self.duplicate + self.rejected

    def summary(self) -> str:
        return f"imported: {self.new} new, {self.duplicate} duplicate, {self.rejected} rejected"


def import_envelopes(
    buffer: SQLEventBuffer,
    lines: Iterable[bytes],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: ProgressCallback | None = None,
    on_error: ErrorCallback | None = None,
) -> ImportReport:
    """Record every envelope in ``lines`` (JSON Lines), in batches.

    Parameters
    ----------
    buffer
        Where to record; its size limit and redaction apply to every line (a
        line that redaction changes is stored re-encoded, as ``record`` does).
    lines
        The input, line by line, with or without line endings (a binary file
        object will do). Blank lines are skipped.
    batch_size
        Envelopes per transaction.
    on_progress, on_error
        Optional callbacks for progress (bytes consumed) and each rejected line.

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
    report = ImportReport()
    lock = threading.Lock()

    def reject(line_no: int, reason: str) -> None:
        with lock:
            report.rejected += 1
            if len(report.errors) < MAX_KEPT_ERRORS:
                report.errors.append((line_no, reason))
            if on_error is not None:
                on_error(line_no, reason)

    def write(batch: list[tuple[int, ParsedEnvelope]]) -> None:
        new, duplicate = _record_batch(buffer, batch, reject)
        with lock:
            report.new += new
            report.duplicate += duplicate

    batch: list[tuple[int, ParsedEnvelope]] = []
    pending_bytes = 0
    with _BatchWriter(write) as writer:
        for line_no, raw in enumerate(lines, start=1):
            pending_bytes += len(raw)
            text = _strip_line_ending(raw)
            if not text or text.isspace():
                continue
            try:
                parsed = parse_envelope_text(
                    text, max_bytes=buffer.max_envelope_bytes, redaction=buffer.redaction
                )
            except InvalidEnvelope as exc:
                reject(line_no, str(exc))
                continue
            batch.append((line_no, parsed))
            if len(batch) >= batch_size:
                writer.submit(batch)
                batch = []
                if on_progress is not None:
                    on_progress(pending_bytes)
                    pending_bytes = 0
        if batch:
            writer.submit(batch)
    if on_progress is not None and pending_bytes:
        on_progress(pending_bytes)
    return report


class _BatchWriter:
    """Records batches on one background thread, in order, while the caller parses the next.

    Parsing is CPU work in this process and recording mostly waits on the
    database, so overlapping them is where a bulk import gains over a plain
    loop. At most two batches wait in the queue (bounded memory). The first
    error the writer meets stops it, and is raised in the caller at the next
    :meth:`submit` or on leaving the ``with`` block.
    """

    _DONE: Final = None

    def __init__(self, write: Callable[[list[tuple[int, ParsedEnvelope]]], None]) -> None:
        self._write = write
        self._queue: queue.Queue[list[tuple[int, ParsedEnvelope]] | None] = queue.Queue(2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="recorder-import", daemon=True)

    def __enter__(self) -> _BatchWriter:
        self._thread.start()
        return self

    def submit(self, batch: list[tuple[int, ParsedEnvelope]]) -> None:
        self._raise_error()
        self._queue.put(batch)

    def _run(self) -> None:
        while (batch := self._queue.get()) is not self._DONE:
            if self._error is not None:
                continue  # drain without writing after a failure
            try:
                self._write(batch)
            except BaseException as exc:  # handed to the caller's thread
                self._error = exc

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc is not None:
            self._error = self._error or RuntimeError("import interrupted")
        self._queue.put(self._DONE)
        self._thread.join()
        if exc is None:
            self._raise_error()


def _strip_line_ending(raw: bytes) -> bytes:
    if raw.endswith(b"\r\n"):
        return raw[:-2]
    if raw.endswith((b"\n", b"\r")):
        return raw[:-1]
    return raw


def _record_batch(
    buffer: SQLEventBuffer,
    batch: list[tuple[int, ParsedEnvelope]],
    reject: ErrorCallback,
) -> tuple[int, int]:
    """Record one batch; return (new, duplicate)."""
    first_line = batch[0][0]
    try:
        new = buffer.record_many([parsed for _, parsed in batch])
    except InvalidEnvelope:
        # The database refused a value somewhere in the batch: find the line
        # one envelope at a time so the others are still recorded.
        new = duplicate = 0
        for line_no, parsed in batch:
            try:
                new_one = buffer.record_many([parsed])
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
            f"import stopped at line {first_line}: {exc}; the lines before it are recorded "
            "(its own batch may be too), and importing the file again is safe"
        ) from exc
    return new, len(batch) - new
